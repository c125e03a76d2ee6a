// "Who looked at my records": the patient's access log, newest first, in words. One person's accesses from one
// hospital, for one purpose, within half an hour, are one visit (even when others looked in between): a line naming
// what they did, with counts, and when; visits are in the order of their latest access.
import { $, api, el, empty, failed, fmtDate, fmtDateTime, inReadersLanguage, loading, t, tOr } from './qilu.js';

const holder = $('#access');
const more = $('#more');
const VISIT_MS = 30 * 60 * 1000;
let offset = 0;
let list;
const visits = new Map(); // per person, hospital, outcome and purpose: the visit older entries may still join

function interaction(code) {
  return tOr(`interaction.${code}`, t('interaction.other'));
}


function drawVisit(visit) {
  visit.what.textContent = [...visit.actions].map(([words, n]) => (n > 1 ? `${words} ×${n}` : words))
    .join(t('access.and'));
  const from = fmtDateTime(visit.earliest);
  const to = fmtDateTime(visit.newest);
  // Same day: the second time without its date ("2026/11/28 08:20–08:22").
  const until = fmtDate(visit.earliest) === fmtDate(visit.newest) ? to.slice(fmtDate(visit.newest).length).replace(/^[\s,]+/, '')
    : to;
  visit.time.textContent = from === to ? from : `${from}–${until}`;
  visit.time.setAttribute('datetime', new Date(visit.newest).toISOString());
}

function add(entry) {
  const when = Date.parse(entry.when);
  const who = [entry.who, entry.organization, entry.outcome, entry.purpose].join('|');
  const words = interaction(entry.action);
  const visit = visits.get(who);
  if (visit && visit.earliest - when <= VISIT_MS) {
    visit.earliest = when;
    visit.actions.set(words, (visit.actions.get(words) || 0) + 1);
    drawVisit(visit);
    return;
  }
  const what = el('span', { class: 'access-what' });
  const time = el('time');
  list.append(el('li', { class: 'access-entry' },
    el('div', {}, el('strong', { class: 'access-who' }, entry.who || ''), ' · ', entry.organization || ''),
    el('div', {}, what, entry.outcome === 'refused' ? ` ${t('access.refused')}` : ''),
    el('div', { class: 'muted small' }, time, ' · ', t('access.why'), '：', inReadersLanguage(entry.purpose))));
  const started = { earliest: when, newest: when, actions: new Map([[words, 1]]), what, time };
  visits.set(who, started);
  drawVisit(started);
}

async function load() {
  if (!list) loading(holder);
  try {
    const page = await api(`/api/me/access-log?count=100&offset=${offset}`);
    if (!list) {
      if (!page.entries.length) return empty(holder, t('access.none'));
      list = el('ul', { class: 'plain', id: 'access-log', 'aria-label': t('access.title') });
      holder.replaceChildren(list);
    }
    page.entries.forEach(add);
    offset += page.entries.length;
    more.hidden = offset >= page.total;
  } catch (error) {
    failed(holder, error, load);
  }
  return null;
}

more.addEventListener('click', load);
load();
