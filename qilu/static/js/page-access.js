// "Who looked at my records": the patient's access log, newest first, in words. Accesses by the same person,
// from the same hospital, for the same thing within one minute are shown as one line with a count.
import { $, api, el, empty, failed, fmtDateTime, lang, loading, t } from './qilu.js';

const holder = $('#access');
const more = $('#more');
let offset = 0;
let list;
let last = null; // the line the next entries may join

function interaction(code) {
  const key = `interaction.${code}`;
  const words = t(key);
  return words === key ? code : words;
}

function purpose(text) {
  // The purposes are recorded in both languages ("治疗 Treatment"): show the reader's.
  if (!text) return '';
  const [zh, ...en] = text.split(' ');
  return lang === 'zh' || !en.length ? zh : en.join(' ');
}

function add(entry) {
  const minute = fmtDateTime(entry.when);
  const key = [minute, entry.who, entry.organization, entry.action, entry.outcome].join('|');
  if (last && last.key === key) {
    last.count += 1;
    last.times.textContent = ` ×${last.count}`;
    return;
  }
  const times = el('span', { class: 'muted' });
  list.append(el('li', { class: 'access-entry' },
    el('div', {}, el('strong', { class: 'access-who' }, entry.who || ''), ' · ', entry.organization || ''),
    el('div', {}, interaction(entry.action), times, entry.outcome === 'refused' ? ` ${t('access.refused')}` : ''),
    el('div', { class: 'muted small' }, el('time', { datetime: entry.when }, minute), ' · ', t('access.why'), '：',
      purpose(entry.purpose))));
  last = { key, count: 1, times };
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
