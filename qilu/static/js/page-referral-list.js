// Inbox (receiving hospital) and outbox (referring hospital): urgent first, deadlines counting down, a link into
// the open consults about them, and updated live from the referral events feed without reloading the page.
import { $, api, countdownText, displayOf, el, empty, failed, fmtDateTime, liveReferrals, loading, page,
  scrollBox, t } from './qilu.js';

const box = page.box;
const holder = $('#referrals');
const news = $('#news');
const WAITING = ['requested', 'received'];
let fresh = new Set();

function statusWords(r) {
  const words = t(`referral.status.${r.status}`);
  return r.businessStatus && r.status === 'accepted' ? `${words} · ${t(`referral.business.${r.businessStatus}`)}` : words;
}

function deadlineCell(r) {
  if (!WAITING.includes(r.status) || !r.deadline) return el('td', {}, '—');
  const overdue = new Date(r.deadline) < new Date();
  return el('td', { 'data-deadline': r.deadline, class: overdue ? 'overdue' : '' },
    el('time', { datetime: r.deadline }, countdownText(r.deadline)));
}

// The open consults the caller holds or is invited to, by referral: their rows get a link into the room.
let openConsults = new Map();

function row(r) {
  const patient = el('span', {}, box === 'outbox' ? '…' : '—');
  if (box === 'outbox') displayOf(r.patient).then((name) => { patient.textContent = name; });
  const other = box === 'inbox' ? (r.originName || r.origin) : (r.targetName || r.target);
  return el('tr', { 'data-referral': r.id, 'data-status': r.status, class: fresh.has(r.id) ? 'fresh' : '' },
    el('td', {}, el('span', { class: `pill ${r.priority}` }, t(`referral.priority.${r.priority}`))),
    el('td', {}, el('a', { href: `/referrals/${encodeURIComponent(r.id)}`, class: 'referral-link' },
      r.reason?.display || r.reason?.code || r.specialty), r.reason?.code ? el('span', { class: 'muted small' },
      ` ${r.reason.code}`) : null),
    box === 'outbox' ? el('td', {}, patient) : null,
    el('td', {}, other),
    el('td', {}, el('span', { class: `status ${r.status}` }, statusWords(r)), openConsults.has(r.id) ? [' ',
      el('a', { class: 'button small', href: `/consults/${encodeURIComponent(openConsults.get(r.id))}` },
        t('detail.consult_join'))] : null),
    deadlineCell(r),
    el('td', {}, fmtDateTime(r.created)));
}

let loads = 0;

async function load() {
  const call = ++loads;
  if (!holder.querySelector('table')) loading(holder);
  const status = $('#filter').value;
  try {
    const [found, consults] = await Promise.all([
      api(`/api/referrals?box=${box}&limit=100${status ? `&status=${status}` : ''}`),
      api('/api/consults?status=open&limit=100')]);
    if (call !== loads) return null; // a newer load is under way: it draws
    openConsults = new Map(consults.entries.filter((c) => c.referral).reverse().map((c) => [c.referral, c.id]));
    if (!found.entries.length) return empty(holder, t(box === 'inbox' ? 'list.empty_inbox' : 'list.empty_outbox'));
    const headers = ['list.priority', 'list.reason', ...(box === 'outbox' ? ['list.patient'] : []),
      box === 'inbox' ? 'list.from' : 'list.to', 'list.status', 'list.deadline', 'list.created'];
    holder.replaceChildren(scrollBox(t(`list.${box}`), el('table', { id: `${box}-table` },
      el('caption', { class: 'visually-hidden' }, t(`list.${box}`)),
      el('thead', {}, el('tr', {}, headers.map((h) => el('th', { scope: 'col' }, t(h))))),
      el('tbody', {}, found.entries.map(row)))));
  } catch (error) {
    failed(holder, error, load);
  }
  return null;
}

// The countdowns tick every second; the list itself changes only on events.
setInterval(() => {
  for (const cell of holder.querySelectorAll('[data-deadline]')) {
    const overdue = new Date(cell.dataset.deadline) < new Date();
    cell.classList.toggle('overdue', overdue);
    cell.firstChild.textContent = countdownText(cell.dataset.deadline);
  }
}, 1000);

$('#filter').addEventListener('change', load);

// A specialist keeps the inbox in a background tab: its title counts what arrived unseen ("(2) 转入的转诊").
const title = document.title;
let unseen = 0;
document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'visible') {
    unseen = 0;
    document.title = title;
  }
});

liveReferrals(async (event) => {
  if (document.visibilityState === 'hidden') {
    unseen += 1;
    document.title = `(${unseen}) ${title}`;
  }
  fresh = new Set([event.referral]);
  await load();
  const what = t(`referral.event.${event.type}`);
  const r = holder.querySelector(`tr[data-referral="${CSS.escape(event.referral)}"] .referral-link`);
  news.hidden = false;
  news.textContent = t('list.new_event', { what, reason: r ? r.textContent : '' });
}, $('#live-status'), load); // back after a gap the feed no longer keeps: look again

load();
