// The patient's referrals (where they go, how far they are, the discharge summary) and remote consults.
import { $, api, codeText, el, empty, failed, fhir, fmtDateTime, liveReferrals, loading, t } from './qilu.js';

function statusWords(r) {
  const words = t(`referral.status.${r.status}`);
  return r.businessStatus && r.status === 'accepted' ? `${words} · ${t(`referral.business.${r.businessStatus}`)}` : words;
}

async function outcomeOf(reference, holder) {
  try {
    const doc = await fhir.readRef(reference);
    const text = (doc.section || []).map((s) => new DOMParser().parseFromString(s.text?.div || '', 'text/html')
      .body.textContent.trim()).join('\n');
    holder.replaceChildren(el('h4', {}, doc.title || codeText(doc.type)), el('p', { class: 'document-text' }, text));
  } catch (error) {
    failed(holder, error);
  }
}

let loads = 0;

async function loadReferrals() {
  const call = ++loads;
  const holder = $('#my-referrals');
  if (!holder.childElementCount) loading(holder);
  try {
    const found = await api('/api/referrals?limit=50');
    if (call !== loads) return null; // a newer load is under way: it draws
    if (!found.entries.length) return empty(holder, t('my.none'));
    holder.replaceChildren(el('ul', { class: 'plain', id: 'my-referral-list' }, found.entries.map((r) => {
      const outcome = el('div');
      if (r.outcome) outcomeOf(r.outcome, outcome);
      return el('li', { class: 'card', 'data-referral': r.id },
        el('h3', {}, `${t(`referral.direction.${r.direction}`)}：${r.targetName || r.target}`),
        el('p', {}, el('span', { class: `status ${r.status}` }, statusWords(r)), ' · ', r.reason?.display || ''),
        el('p', { class: 'muted small' }, `${t('list.from')}：${r.originName || r.origin} · ${fmtDateTime(r.created)}`),
        r.scheduledStart ? el('p', {}, `${t('detail.scheduled')}：${fmtDateTime(r.scheduledStart)}`) : null,
        outcome);
    })));
  } catch (error) {
    failed(holder, error, loadReferrals);
  }
  return null;
}

async function loadConsults() {
  const holder = $('#my-consults');
  if (!holder.childElementCount) loading(holder);
  try {
    const consults = (await api('/api/consults?limit=50')).entries;
    if (!consults.length) return empty(holder, t('my.consults_none'));
    holder.replaceChildren(el('ul', { class: 'plain', id: 'my-consult-list' }, consults.map((c) => {
      const status = { scheduled: 'planned', live: 'in-progress', ended: 'finished' }[c.status];
      // Every consult about the patient is shown; joining takes an invitation.
      const joinable = c.invitePatient && c.status !== 'ended';
      return el('li', { 'data-consult': c.id }, `${fmtDateTime(c.started || c.scheduled)} · `
        + `${t(`detail.consult_status.${status}`)} `, c.reason || '', ' ',
      joinable ? el('a', { class: 'button primary', href: `/consults/${encodeURIComponent(c.id)}` }, t('my.join'))
        : null);
    })));
  } catch (error) {
    failed(holder, error, loadConsults);
  }
  return null;
}

liveReferrals((event) => {
  loadReferrals();
  if (event.type.startsWith('consult-')) loadConsults();
}, $('#live-status'), loadConsults);
loadReferrals();
loadConsults();
