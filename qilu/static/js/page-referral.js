// One referral, as either side sees it: what was asked and why, the records the patient consented to share,
// what can be done next (accept, reject with a reason, schedule, arrive, complete with the discharge summary,
// cancel, refer back), the consults about it, and the outcome. Updated live from the referral events feed.
import { $, announce, ApiError, api, codeText, config, countdownText, displayOf, el, empty, failed, fhir, fmtDate,
  fmtDateTime, humanName, inReadersLanguage, liveReferrals, loading, me, page, readOnce, routeReason, t,
  tOr } from './qilu.js';

const id = page.referral;
const message = $('#action-message');
let referral = null;
let countdown;

function say(text, kind = 'ok') {
  announce(message, text, kind);
}

const side = () => (me.organization === referral.target ? 'target' : me.organization === referral.origin ? 'origin'
  : 'other');

function statusWords(r) {
  const words = t(`referral.status.${r.status}`);
  return r.businessStatus && !['completed'].includes(r.status) ? `${words} · ${t(`referral.business.${r.businessStatus}`)}`
    : words;
}

function drawOverview() {
  const r = referral;
  const holder = $('#overview');
  $('#referral-heading').textContent = `${t('detail.title')}：${r.reason?.display || r.specialty}`;
  const deadline = el('dd', { id: 'deadline' });
  const facts = el('dl', { class: 'facts' },
    el('dt', {}, t('list.status')), el('dd', {}, el('span', { class: `status ${r.status}`, id: 'referral-status',
      'data-status': r.status }, statusWords(r))),
    el('dt', {}, t('list.priority')), el('dd', {}, el('span', { class: `pill ${r.priority}` },
      t(`referral.priority.${r.priority}`)), ' ', t(`referral.direction.${r.direction}`)),
    el('dt', {}, t('list.from')), el('dd', {}, r.originName || r.origin),
    el('dt', {}, t('list.to')), el('dd', { id: 'referral-target' }, r.targetName || r.target),
    el('dt', {}, t('detail.reason')), el('dd', {}, `${r.reason?.display || ''} ${r.reason?.code ? `(ICD-10 ${r.reason.code})`
      : ''}`),
    el('dt', {}, t('detail.specialty')), specialtyOf(r),
    el('dt', {}, t('detail.created')), el('dd', {}, fmtDateTime(r.created)),
    ['requested', 'received'].includes(r.status) && r.deadline ? [el('dt', {}, t('detail.deadline')), deadline] : null,
    r.scheduledStart ? [el('dt', {}, t('detail.scheduled')), el('dd', {}, fmtDateTime(r.scheduledStart))] : null,
    r.statusReason ? [el('dt', {}, t('detail.reject_reason')), el('dd', {}, r.statusReason)] : null,
    r.note ? [el('dt', {}, t('detail.note')), el('dd', {}, r.note)] : null);
  holder.replaceChildren(facts);
  clearInterval(countdown);
  if (deadline.isConnected) {
    const tick = () => {
      deadline.textContent = `${fmtDateTime(r.deadline)} · ${countdownText(r.deadline)}`;
      deadline.classList.toggle('overdue', new Date(r.deadline) < new Date());
    };
    tick();
    countdown = setInterval(tick, 1000);
  }
  if (r.routing?.reasons?.length) {
    const explained = r.routing.explained || [];
    holder.append(el('h3', {}, t('detail.routing')), el('ul', { id: 'routing-reasons' }, r.routing.reasons.map((x, i) =>
      el('li', {}, routeReason(x, explained[i]?.code, explained[i]?.values)))));
  }
}

async function act(action, body, done) {
  try {
    let updated;
    if (action === 'accept' && referral.status === 'requested') {
      // Accepting straight from the inbox: it is received first, as the workflow requires.
      await api(`/api/referrals/${encodeURIComponent(id)}/receive`, { json: {} });
    }
    if (action === 'reject' && referral.status === 'requested') {
      await api(`/api/referrals/${encodeURIComponent(id)}/receive`, { json: {} });
    }
    updated = await api(`/api/referrals/${encodeURIComponent(id)}/${action}`, { json: body || {} });
    referral = updated;
    say(t('detail.done', { what: done }));
    drawAll();
  } catch (error) {
    say(error.message, 'error');
    drawActions();
    load();
  }
}

function formWith(idPrefix, fields, buttonText, onSubmit, kind = '') {
  const form = el('form', { class: 'stack', id: `${idPrefix}-form` }, fields,
    el('button', { type: 'submit', class: kind || 'primary', id: `${idPrefix}-button` }, buttonText));
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    form.querySelector('button[type="submit"]').disabled = true;
    onSubmit(form);
  });
  return form;
}

function localInput(date) {
  const d = new Date(date.getTime() - date.getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 16);
}

function drawActions() {
  const r = referral;
  const holder = $('#actions');
  const parts = [];
  if (side() === 'target') {
    if (['requested', 'received'].includes(r.status)) {
      const accept = el('button', { type: 'button', class: 'primary', id: 'accept-button' }, t('detail.accept'));
      accept.addEventListener('click', () => { accept.disabled = true; act('accept', {}, t('detail.accept')); });
      parts.push(accept);
      if (r.status === 'requested') {
        const receive = el('button', { type: 'button', id: 'receive-button' }, t('detail.receive'));
        receive.addEventListener('click', () => { receive.disabled = true; act('receive', {}, t('detail.receive')); });
        parts.push(' ', receive);
      }
      parts.push(formWith('reject', [el('label', { for: 'reject-reason' }, t('detail.reject_reason')),
        el('textarea', { id: 'reject-reason', required: true, rows: 2 })], t('detail.reject'),
      (form) => act('reject', { reason: form.querySelector('textarea').value.trim() }, t('detail.reject')), 'danger'));
    }
    if (r.status === 'accepted' && r.businessStatus !== 'scheduled') {
      const soon = new Date(Date.now() + 3600 * 1000);
      parts.push(formWith('schedule', [el('label', { for: 'schedule-at' }, t('detail.schedule_at')),
        el('input', { id: 'schedule-at', type: 'datetime-local', required: true, value: localInput(soon) })],
      t('detail.schedule'), (form) => act('schedule', {
        start: new Date(form.querySelector('input').value).toISOString() }, t('detail.schedule'))));
    }
    if (r.status === 'accepted' && (r.businessStatus === 'scheduled' || ['stat', 'asap'].includes(r.priority))) {
      const arrive = el('button', { type: 'button', class: 'primary', id: 'arrive-button' }, t('detail.arrive'));
      arrive.addEventListener('click', () => { arrive.disabled = true; act('arrive', {}, t('detail.arrive')); });
      parts.push(arrive);
    }
    if (r.status === 'in-progress') {
      parts.push(formWith('complete', [el('label', { for: 'summary-text' }, t('detail.summary_text')),
        el('textarea', { id: 'summary-text', required: true, rows: 6 })], t('detail.complete'), (form) => {
        const text = form.querySelector('textarea').value.trim();
        const div = document.createElement('div');
        div.setAttribute('xmlns', 'http://www.w3.org/1999/xhtml');
        for (const line of text.split('\n').filter((l) => l.trim())) div.append(el('p', {}, line));
        act('complete', { summary: {
          resourceType: 'Composition', status: 'final',
          type: { coding: [{ system: 'http://loinc.org', code: '18842-5', display: 'Discharge summary' }] },
          date: new Date().toISOString(), title: t('detail.summary_title'),
          section: [{ title: t('detail.summary_text'), text: { status: 'generated', div: div.outerHTML } }],
        } }, t('detail.complete'));
      }));
    }
    if (r.status === 'completed' && r.direction === 'up' && !r.referredBackAs) {
      parts.push(formWith('refer-back', [el('label', { for: 'refer-back-note' }, t('detail.refer_back_note')),
        el('textarea', { id: 'refer-back-note', rows: 2 })], t('detail.refer_back'),
      (form) => act('refer-back', { note: form.querySelector('textarea').value.trim() || null }, t('detail.refer_back'))));
    }
  }
  if (side() === 'origin' && ['requested', 'received', 'accepted'].includes(r.status)) {
    parts.push(formWith('cancel', [el('label', { for: 'cancel-reason' }, t('detail.cancel_reason')),
      el('textarea', { id: 'cancel-reason', rows: 2 })], t('detail.cancel'),
    (form) => act('cancel', { reason: form.querySelector('textarea').value.trim() || null }, t('detail.cancel')),
    'danger'));
  }
  if (!parts.length) return empty(holder, t('detail.no_actions'));
  holder.replaceChildren(...parts);
  return null;
}

function compositionText(resource) {
  // The narrative is XHTML written by another hospital: parsed inertly, shown as text only.
  const sections = (resource.section || []).map((s) => {
    const doc = new DOMParser().parseFromString(s.text?.div || '', 'text/html');
    return { title: s.title, text: doc.body.textContent.trim() };
  });
  return sections;
}

async function drawDocument(holder, reference, heading) {
  const box = el('div', { class: 'document' });
  holder.append(box);
  loading(box);
  try {
    const resource = await fhir.readRef(reference);
    const parts = resource.resourceType === 'Composition' ? compositionText(resource)
      : [{ title: resource.description || '', text: (resource.content || []).map((c) => c.attachment?.title).join(', ') }];
    box.replaceChildren(el('h3', {}, heading || inReadersLanguage(resource.title) || codeText(resource.type)),
      el('p', { class: 'muted small' }, fmtDateTime(resource.date)),
      ...parts.map((p) => ({ ...p, title: tOr(`section.${p.title}`, p.title) })).map((p) => el('div', {},
        p.title && p.title !== heading ? el('h4', {}, p.title) : null,
        el('p', { class: 'document-text' }, p.text))));
  } catch (error) {
    failed(box, error, () => { box.remove(); drawDocument(holder, reference, heading); });
  }
}

function drawOutcome() {
  const holder = $('#outcome');
  holder.replaceChildren();
  const opinions = (referral.history || []).filter((h) => h.action === 'consult-opinion' && h.opinion);
  if (!referral.outcome && !opinions.length) return empty(holder, t('detail.outcome_none'));
  if (referral.outcome) drawDocument(holder, referral.outcome, t('detail.summary_text'));
  for (const h of opinions) drawDocument(holder, h.opinion, t('detail.opinion'));
  return null;
}

function historyWords(action) {
  const key = `detail.history_action.${action}`;
  const own = t(key);
  if (own !== key) return own;
  const event = t(`referral.event.${{ receive: 'received', accept: 'accepted', reject: 'rejected', schedule: 'scheduled',
    arrive: 'arrived', complete: 'completed', cancel: 'cancelled', escalate: 'escalated' }[action] || action}`);
  return event.startsWith('referral.event.') ? action : event;
}

/** Why a step happened: the system's own reasons (they carry a code) in the reader's words, a person's as typed. */
function whyWords(step) {
  return step.why_code ? tOr(`why.${step.why_code}`, step.why, step.why_values || {}) : step.why;
}

/** The specialty and capabilities asked for, in the words of the receiving department's own codings. */
function specialtyOf(r) {
  const node = el('dd', { id: 'referral-specialty' }, r.specialty,
    r.capabilities?.length ? ` · ${r.capabilities.join(', ')}` : '');
  if (r.targetService) {
    readOnce(`HealthcareService/${r.targetService}`).then((service) => {
      const words = new Map();
      for (const concept of [...(service.specialty || []), ...(service.characteristic || [])]) {
        for (const c of concept.coding || []) {
          if ([config.systems.specialty, config.systems.capability].includes(c.system) && c.display) {
            words.set(c.code, inReadersLanguage(c.display));
          }
        }
      }
      const capabilities = (r.capabilities || []).map((c) => words.get(c) || c);
      node.textContent = (words.get(r.specialty) || r.specialty) + (capabilities.length ? ` · ${capabilities.join('、')}`
        : '');
    }).catch(() => null); // the codes stay: still true, only less friendly
  }
  return node;
}

function drawHistory() {
  const holder = $('#history');
  const list = el('ol', { class: 'timeline', id: 'history-list' });
  for (const h of referral.history || []) {
    const who = el('span', { class: 'muted' });
    if (h.by) displayOf(h.by).then((name) => { who.textContent = name; });
    list.append(el('li', { 'data-action': h.action }, el('time', { datetime: h.at }, fmtDateTime(h.at)), ' ',
      el('strong', {}, historyWords(h.action)), ' ', who, h.why ? el('div', { class: 'small' }, whyWords(h)) : null));
  }
  holder.replaceChildren(list);
}

// Sections redrawn on every change load on their own; only the latest load of a section may draw it.
const calls = {};
const newest = (section) => {
  calls[section] = (calls[section] || 0) + 1;
  const call = calls[section];
  return () => call === calls[section];
};

async function drawPatient() {
  const holder = $('#patient');
  const current = newest('patient');
  loading(holder);
  try {
    const patient = await fhir.readRef(referral.patient);
    if (!current()) return null;
    holder.replaceChildren(el('p', {}, el('strong', { id: 'referral-patient' }, humanName(patient)), ' ',
      t(`gender.${patient.gender || 'unknown'}`), ' ', patient.birthDate || ''));
    if (side() === 'origin') {
      holder.append(el('a', { href: `/patients/${encodeURIComponent(patient.id)}` }, t('patients.open_chart')));
    }
  } catch (error) {
    if (!current()) return null;
    if (error instanceof ApiError && error.status === 404) return empty(holder, t('detail.patient_hidden'));
    failed(holder, error, drawPatient);
  }
  return null;
}

function recordLine(resource) {
  const date = resource.effectiveDateTime || resource.authoredOn || resource.recordedDate || resource.date ||
    resource.issued;
  let what = codeText(resource.code || resource.medicationCodeableConcept || resource.type) || resource.resourceType;
  if (resource.valueQuantity) what += `：${resource.valueQuantity.value} ${resource.valueQuantity.unit || ''}`;
  if (resource.component) {
    what += `：${resource.component.map((c) => c.valueQuantity?.value).filter((v) => v !== undefined).join('/')} `
      + `${resource.component[0]?.valueQuantity?.unit || ''}`;
  }
  return `${what}${date ? ` (${fmtDate(date)})` : ''}`;
}

async function drawShared() {
  const holder = $('#shared');
  const refs = referral.supporting || [];
  if (!refs.length) return empty(holder, t('detail.shared_none'));
  const current = newest('shared');
  loading(holder);
  const results = await Promise.allSettled(refs.map((ref) => fhir.readRef(ref)));
  if (!current()) return null;
  if (results.every((r) => r.status === 'rejected' && r.reason?.status === 404)) {
    return empty(holder, t('detail.shared_hidden'));
  }
  holder.replaceChildren(el('ul', { class: 'plain', id: 'shared-list' }, results.map((r, i) => el('li', {},
    r.status === 'fulfilled' ? recordLine(r.value) : `${refs[i]}: ${r.reason?.message || ''}`))));
  return null;
}

// --- consults about this referral ---------------------------------------------------------------------

let consultsDrawn = '';

function accepter() {
  const accepted = [...(referral.history || [])].reverse().find((h) => h.action === 'accept');
  return accepted?.by;
}

// Either side may hold a consult: the receiving specialist invites the referring doctor, the referring doctor
// invites the specialist who accepted.
const counterpart = () => (side() === 'target' ? referral.requester : side() === 'origin' ? accepter() : null);

async function startConsult(button) {
  button.disabled = true;
  try {
    const consult = await api('/api/consults', { json: { referral: id, invite: [counterpart()],
      scheduled: new Date().toISOString(), reason: referral.reason?.display || null } });
    location.assign(`/consults/${encodeURIComponent(consult.id)}`);
  } catch (error) {
    say(error.message, 'error');
    button.disabled = false;
  }
}

let consultCalls = 0;

function consultLine(c) {
  const status = { scheduled: 'planned', live: 'in-progress', ended: 'finished' }[c.status];
  const who = el('span', { class: 'muted' });
  displayOf(c.host).then((name) => { who.textContent = name; });
  return el('li', { 'data-consult': c.id, 'data-status': c.status },
    `${fmtDateTime(c.started || c.scheduled)} · ${t(`detail.consult_status.${status}`)} · `, who, ' ',
    c.status !== 'ended' ? el('a', { class: 'button', href: `/consults/${encodeURIComponent(c.id)}`,
      id: `join-${c.id}` }, t(c.host === me.fhirUser ? 'detail.consult_enter' : 'detail.consult_join')) : null);
}

async function drawConsults() {
  const call = ++consultCalls;
  const holder = $('#consults');
  if (!holder.childElementCount) {
    loading(holder);
    consultsDrawn = '';
  }
  let consults;
  try {
    consults = (await api(`/api/consults?referral=${encodeURIComponent(id)}&limit=20`)).entries;
  } catch (error) {
    if (call === consultCalls) failed(holder, error, drawConsults);
    return;
  }
  // Only the latest look draws, from the referral as it is now (an older one may answer last).
  if (call !== consultCalls) return;
  // Redrawn only when something changed, so a link being clicked is never swapped under the pointer.
  const signature = JSON.stringify([side(), referral.status, counterpart(), consults.map((c) => [c.id, c.status])]);
  if (signature === consultsDrawn && !holder.querySelector('.loading')) return;
  consultsDrawn = signature;
  const parts = [];
  const open = consults.some((c) => c.status !== 'ended');
  if (['accepted', 'in-progress'].includes(referral.status) && counterpart() && !open) {
    const start = el('button', { type: 'button', class: 'primary', id: 'start-consult' }, t('detail.consult_start'));
    start.addEventListener('click', () => startConsult(start));
    parts.push(start);
  } else if (side() === 'origin' && ['requested', 'received'].includes(referral.status)) {
    parts.push(el('p', { class: 'muted' }, t('detail.consult_after_accept')));
  }
  if (consults.length) {
    parts.push(el('ul', { class: 'plain', id: 'consult-list' }, consults.map(consultLine)));
  } else if (!parts.length) {
    parts.push(el('p', { class: 'state empty' }, t('detail.consult_none')));
  }
  holder.replaceChildren(...parts);
}

function drawAll({ actions = true } = {}) {
  drawOverview();
  if (actions) drawActions();
  drawOutcome();
  drawHistory();
  drawPatient();
  drawShared();
  drawConsults();
}

async function load() {
  try {
    const fresh = await api(`/api/referrals/${encodeURIComponent(id)}`);
    // The event of this page's own action brings nothing new: keep what the user is typing in the forms.
    if (referral && fresh.version === referral.version) return;
    // A note that moves nothing (a consult started, under way, ended; an opinion) leaves the action forms as
    // they are, with what the user is typing in them; they are drawn again only when the state moved.
    const moved = !referral || fresh.status !== referral.status;
    referral = fresh;
    drawAll({ actions: moved });
  } catch (error) {
    failed($('#overview'), error, load);
  }
}

// A consult started about this referral comes as an event too ("consult-started"): the invited see it appear.
liveReferrals(async (event) => {
  if (event.referral !== id) return;
  const before = referral?.version;
  await load();
  if (referral?.version !== before) say(t(`referral.event.${event.type}`), 'info');
}, $('#live-status'), () => {
  // Back after a gap the feed no longer keeps: what happened meanwhile was not heard, so look again.
  if (referral) drawConsults();
  load();
});
window.addEventListener('pagehide', () => clearInterval(countdown));
load();
