// The patient's referrals (where they go, how far they are, the discharge summary) and remote consults.
import { $, api, codeText, el, empty, failed, fhir, fmtDateTime, inReadersLanguage, liveReferrals, loading,
  readOnce, t } from './qilu.js';

function statusWords(r) {
  const words = t(`referral.status.${r.status}`);
  return r.businessStatus && r.status === 'accepted' ? `${words} · ${t(`referral.business.${r.businessStatus}`)}` : words;
}

async function outcomeOf(reference, holder) {
  try {
    const doc = await fhir.readRef(reference);
    const text = (doc.section || []).map((s) => new DOMParser().parseFromString(s.text?.div || '', 'text/html')
      .body.textContent.trim()).join('\n');
    holder.replaceChildren(el('h4', {}, inReadersLanguage(doc.title) || codeText(doc.type)),
      el('p', { class: 'document-text' }, text));
  } catch (error) {
    failed(holder, error);
  }
}

/** Where the receiving hospital is and how to call it, from its directory entry: what a patient needs to get there. */
async function contactOf(reference, holder) {
  try {
    const org = await readOnce(reference);
    const address = (org.address || [])[0];
    const where = address ? address.text || [address.state, address.city, address.district, ...(address.line || [])]
      .filter(Boolean).join('') : '';
    const phone = (org.telecom || []).find((c) => c.system === 'phone' && c.value)?.value;
    holder.replaceChildren(...[
      where ? el('span', {}, `${t('my.address')}：${where}`) : null,
      where && phone ? ' · ' : null,
      phone ? el('a', { href: `tel:${phone.replace(/[^0-9+]/g, '')}`, class: 'phone' }, `${t('my.phone')}：${phone}`)
        : null,
    ].filter(Boolean));
  } catch {
    holder.remove(); // only the hospital's name then, as before
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
      const contact = el('p', { class: 'small contact' });
      contactOf(r.target, contact);
      return el('li', { class: 'card', 'data-referral': r.id },
        el('h3', {}, `${t(`referral.direction.${r.direction}`)}：${r.targetName || r.target}`),
        contact,
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
