// The accounts an administrator manages through the users API: doctors and administrators found by role and
// hospital, paged, created, disabled or enabled, unlocked, given a password; and at the help desk one resident's
// account, found by the ID number they show (never listed), unlocked or given a password.
import { $, announce, api, displayOf, el, empty, failed, fhir, fmtDateTime, loading, scrollBox, t } from './qilu.js';

const PAGE = 50;
const holder = $('#users');
const message = $('#users-message');
let offset = 0;
let organizations = []; // the hospitals the name filter matched, as Organization/{id}

async function hospitalsNamed(name) {
  const found = await fhir.search('Organization', [['name', name], ['_count', '50']]);
  return found.map((o) => ({ reference: `Organization/${o.id}`, name: o.name || o.id }));
}

function statusText(user) {
  if (!user.active) return t('users.disabled');
  if (user.lockedUntil) return t('users.locked', { when: fmtDateTime(user.lockedUntil) });
  return t('users.active');
}

async function change(user, action, button, then) {
  button.disabled = true;
  try {
    await api(`/api/users/${encodeURIComponent(user.id)}/${action}`, { json: {} });
    announce(message, t(`users.done.${action}`, { name: user.name }), 'ok');
    await then();
  } catch (error) {
    announce(message, error.message, 'error');
    button.disabled = false;
  }
}

function passwordForm(user, then) {
  // A disclosure per row: the field is only there when the administrator asks for it.
  const id = `password-${user.id}`;
  const input = el('input', { type: 'password', id, required: true, autocomplete: 'new-password', maxlength: '128',
    'aria-describedby': 'new-password-hint' });
  const form = el('form', { class: 'stack' }, el('label', { for: id }, t('users.new_password', { name: user.name })),
    input, el('button', { type: 'submit' }, t('action.save')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('button');
    button.disabled = true;
    try {
      await api(`/api/users/${encodeURIComponent(user.id)}/password`, { json: { password: input.value } });
      input.value = '';
      announce(message, t('users.done.password', { name: user.name }), 'ok');
      await then();
    } catch (error) {
      announce(message, error.message, 'error');
      button.disabled = false;
      input.focus();
    }
  });
  return el('details', { class: 'reset-password' }, el('summary', {}, t('users.reset')), form);
}

function actionButton(user, action, then) {
  const button = el('button', { type: 'button', class: action === 'disable' ? 'danger' : '',
    'data-action': action, 'aria-label': `${t(`users.${action}`)} ${user.name}` }, t(`users.${action}`));
  button.addEventListener('click', () => change(user, action, button, then));
  return button;
}

function row(user) {
  const hospital = el('td', {}, user.organization ? '…' : '—');
  if (user.organization) displayOf(user.organization).then((name) => { hospital.textContent = name; });
  const actions = [actionButton(user, user.active ? 'disable' : 'enable', load)];
  if (user.lockedUntil) actions.push(' ', actionButton(user, 'unlock', load));
  return el('tr', { 'data-user': user.id, 'data-active': String(user.active) },
    el('th', { scope: 'row' }, user.name),
    el('td', {}, user.login),
    el('td', {}, t(`users.role.${user.role}`)),
    hospital,
    el('td', { class: user.active ? '' : 'overdue' }, statusText(user)),
    el('td', {}, el('div', { class: 'row' }, actions), passwordForm(user, load)));
}

let loads = 0;

async function load() {
  const call = ++loads;
  if (!holder.querySelector('table')) loading(holder);
  const query = new URLSearchParams({ limit: String(PAGE), offset: String(offset) });
  if ($('#users-role').value) query.set('role', $('#users-role').value);
  if (organizations.length) query.set('organization', organizations.join(','));
  try {
    const found = await api(`/api/users?${query}`);
    if (call !== loads) return null; // a newer load is under way: it draws
    const pages = $('#users-pages');
    pages.hidden = found.total <= PAGE;
    $('#users-range').textContent = t('users.range', { from: found.total ? offset + 1 : 0,
      to: offset + found.entries.length, total: found.total });
    $('#users-prev').disabled = offset === 0;
    $('#users-next').disabled = offset + found.entries.length >= found.total;
    if (!found.entries.length) return empty(holder, t('users.none'));
    holder.replaceChildren(scrollBox(t('users.title'), el('table', { id: 'users-table' },
      el('caption', { class: 'visually-hidden' }, t('users.title')),
      el('thead', {}, el('tr', {}, ['users.name', 'users.login', 'users.role', 'users.org', 'users.status',
        'users.actions'].map((k) => el('th', { scope: 'col' }, t(k))))),
      el('tbody', {}, found.entries.map(row)))));
  } catch (error) {
    failed(holder, error, load);
  }
  return null;
}

$('#users-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  offset = 0;
  const name = $('#users-org').value.trim();
  organizations = [];
  if (name) {
    loading(holder);
    try {
      organizations = (await hospitalsNamed(name)).map((h) => h.reference);
    } catch (error) {
      failed(holder, error, load);
      return;
    }
    if (!organizations.length) {
      empty(holder, t('users.none'));
      $('#users-pages').hidden = true;
      return;
    }
  }
  load();
});

$('#users-prev').addEventListener('click', () => { offset = Math.max(0, offset - PAGE); load(); });
$('#users-next').addEventListener('click', () => { offset += PAGE; load(); });

// --- a new account ---------------------------------------------------------------------------------------

const orgSelect = $('#new-org');
let orgLookup;
$('#new-org-name').addEventListener('input', (event) => {
  clearTimeout(orgLookup);
  const name = event.target.value.trim();
  // Looked up once the typing pauses, not on every key.
  orgLookup = setTimeout(async () => {
    if (!name) {
      orgSelect.replaceChildren(el('option', { value: '' }, t('users.org_type')));
      return;
    }
    try {
      const found = await hospitalsNamed(name);
      orgSelect.replaceChildren(...(found.length ? found.map((h) => el('option', { value: h.reference }, h.name))
        : [el('option', { value: '' }, t('users.org_none'))]));
    } catch (error) {
      orgSelect.replaceChildren(el('option', { value: '' }, error.message));
    }
  }, 300);
});

const showPractitionerFields = () => { $('#new-practitioner').hidden = $('#new-role').value !== 'practitioner'; };
$('#new-role').addEventListener('change', showPractitionerFields);
showPractitionerFields();

$('#new-user-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('#new-user-result');
  const role = $('#new-role').value;
  const body = { role, login: $('#new-login').value.trim(), name: $('#new-name').value.trim(),
    password: $('#new-password').value };
  if (role === 'practitioner') {
    if (!orgSelect.value) {
      announce(result, t('users.need_org'), 'error');
      $('#new-org-name').focus();
      return;
    }
    body.organization = orgSelect.value;
    body.specialty = $('#new-specialty').value.trim() || null;
  }
  const button = $('#new-user-submit');
  button.disabled = true;
  try {
    const created = await api('/api/users', { json: body });
    announce(result, t('users.created', { name: created.name }), 'ok');
    event.target.reset();
    orgSelect.replaceChildren(el('option', { value: '' }, t('users.org_type')));
    showPractitionerFields();
    offset = 0;
    await load();
  } catch (error) {
    announce(result, error.message, 'error');
  } finally {
    button.disabled = false;
  }
});

// --- the help desk: one resident's account -----------------------------------------------------------------

const resident = $('#resident');
let residentLogin = '';

async function showResident() {
  loading(resident);
  try {
    // In the body, not the address: the ID number stays out of histories and logs.
    const user = await api('/api/users/lookup', { json: { login: residentLogin } });
    const facts = el('dl', { class: 'facts', 'data-user': user.id },
      el('dt', {}, t('users.name')), el('dd', {}, user.name),
      el('dt', {}, t('users.resident_id')), el('dd', {}, user.login),
      el('dt', {}, t('users.role')), el('dd', {}, t(`users.role.${user.role}`)),
      el('dt', {}, t('users.status')), el('dd', { id: 'resident-status' }, statusText(user)));
    const actions = user.lockedUntil ? [el('div', { class: 'row' }, actionButton(user, 'unlock', showResident))] : [];
    resident.replaceChildren(facts, ...actions, passwordForm(user, showResident));
  } catch (error) {
    if (error.status === 404) empty(resident, t('users.resident_none'));
    else failed(resident, error, showResident);
  }
}

$('#resident-form').addEventListener('submit', (event) => {
  event.preventDefault();
  residentLogin = $('#resident-id').value.trim();
  if (residentLogin) showResident();
});

load();
