// The users an administrator manages: practitioners with their role, hospital and specialty (directory data).
import { $, codeText, displayOf, el, empty, failed, fhir, loading, scrollBox, t } from './qilu.js';

async function load() {
  const holder = $('#users');
  loading(holder);
  const orgName = $('#users-org').value.trim();
  try {
    let params = [['_count', '200']];
    if (orgName) {
      const orgs = await fhir.search('Organization', [['name', orgName], ['_count', '50']]);
      if (!orgs.length) return empty(holder, t('users.none'));
      params = [['organization', orgs.map((o) => `Organization/${o.id}`).join(',')], ['_count', '200']];
    }
    const roles = await fhir.search('PractitionerRole', params);
    if (!roles.length) return empty(holder, t('users.none'));
    const rows = await Promise.all(roles.map(async (r) => el('tr', {},
      el('th', { scope: 'row' }, r.practitioner?.display || await displayOf(r.practitioner?.reference)),
      el('td', {}, await displayOf(r.organization?.reference)),
      el('td', {}, (r.specialty || []).map(codeText).join('、')),
      el('td', {}, (r.code || []).map(codeText).join('、')),
      el('td', {}, r.active === false ? '✗' : '✓'))));
    holder.replaceChildren(scrollBox(t('users.title'), el('table', { id: 'users-table' },
      el('caption', { class: 'visually-hidden' }, t('users.title')),
      el('thead', {}, el('tr', {}, ['users.name', 'users.org', 'users.specialty', 'users.role', 'directory.active']
        .map((k) => el('th', { scope: 'col' }, t(k))))),
      el('tbody', {}, rows))));
  } catch (error) {
    failed(holder, error, load);
  }
  return null;
}

$('#users-form').addEventListener('submit', (event) => {
  event.preventDefault();
  load();
});
load();
