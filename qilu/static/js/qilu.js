// What every portal page shares: its words, calls to the JSON and FHIR APIs, small DOM builders, live updates.

const messages = JSON.parse(document.getElementById('qilu-messages').textContent);
export const config = JSON.parse(document.getElementById('qilu-config').textContent);
export const lang = config.lang;
export const me = config.me;
export const page = config.page || {};
const LOCALE = lang === 'zh' ? 'zh-CN' : 'en-GB';
const ZONE = 'Asia/Shanghai';

export function t(key, values = {}) {
  const text = messages[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (values[name] ?? `{${name}}`));
}

/** The words for `key` (with `values`) when there are some, else `fallback` (for codes that may have no words yet). */
export function tOr(key, fallback, values = {}) {
  return key in messages ? t(key, values) : fallback;
}

// --- calling the server -----------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(status, words, code) {
    super(words);
    this.status = status;
    this.code = code;
  }
}

function goLogin() {
  const here = location.pathname + location.search;
  location.assign(`/login?expired=1&next=${encodeURIComponent(here)}`);
}

async function errorOf(response) {
  // Problem JSON or an OperationOutcome: keep its human sentence, never the JSON itself.
  let detail = '';
  let code;
  try {
    const body = await response.json();
    code = body.code || body.error;
    if (body.resourceType === 'OperationOutcome') {
      detail = (body.issue || []).map((i) => i.diagnostics || i.details?.text || i.code).filter(Boolean).join('; ');
    } else {
      detail = body.detail || body.title || '';
    }
  } catch {
    detail = '';
  }
  const status = response.status;
  let words;
  if (status === 404 || status === 410) words = t('state.not_found');
  else if (status === 403) words = detail ? `${t('state.forbidden')} (${detail})` : t('state.forbidden');
  else if (status >= 500) words = t('state.server');
  else words = t('state.error', { detail: detail || response.statusText || String(status) });
  return new ApiError(status, words, code);
}

// One renewal at a time: the refresh token is single-use, so parallel calls share the first one's answer.
let renewing = null;
export function renewSession() {
  if (!renewing) {
    renewing = fetch('/session/refresh', { method: 'POST', credentials: 'same-origin' })
      .then((r) => r.status === 204).catch(() => false)
      .finally(() => setTimeout(() => { renewing = null; }, 2000));
  }
  return renewing;
}

export async function api(path, options = {}) {
  const headers = { Accept: options.accept || 'application/json', ...(options.headers || {}) };
  let body = options.body;
  if (options.json !== undefined) {
    body = JSON.stringify(options.json);
    headers['Content-Type'] = options.contentType || 'application/json';
  }
  const init = { method: options.method || (body !== undefined ? 'POST' : 'GET'), headers, body,
    credentials: 'same-origin' };
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, t('state.offline'));
  }
  if (response.status === 401 && !options.retried) {
    // The access token in the cookie expired: renew it once with the refresh cookie, then ask again.
    if (await renewSession()) return api(path, { ...options, retried: true });
    goLogin();
    throw new ApiError(401, t('state.session'));
  }
  if (!response.ok) throw await errorOf(response);
  if (options.raw) return response;
  if (response.status === 204) return null;
  const type = response.headers.get('content-type') || '';
  return type.includes('json') ? response.json() : response.text();
}

const FHIR = 'application/fhir+json';

export const fhir = {
  read: (type, id) => api(`/fhir/${type}/${encodeURIComponent(id)}`, { accept: FHIR }),
  readRef: (reference) => {
    const [type, id] = reference.split('/');
    return fhir.read(type, id);
  },
  async search(type, params) {
    const query = new URLSearchParams(params);
    const bundle = await api(`/fhir/${type}?${query}`, { accept: FHIR });
    return (bundle.entry || []).filter((e) => !e.search || e.search.mode === 'match').map((e) => e.resource);
  },
  /** Every match across pages (following the bundle's next links), at most `pages` pages. */
  async searchAll(type, params, pages = 10) {
    let url = `/fhir/${type}?${new URLSearchParams(params)}`;
    const found = [];
    for (let i = 0; url && i < pages; i += 1) {
      const bundle = await api(url, { accept: FHIR });
      found.push(...(bundle.entry || []).filter((e) => !e.search || e.search.mode === 'match').map((e) => e.resource));
      const next = (bundle.link || []).find((l) => l.relation === 'next')?.url;
      url = next ? (() => { const u = new URL(next, location.href); return u.pathname + u.search; })() : null;
    }
    return found;
  },
  create: (type, resource) => api(`/fhir/${type}`, { json: resource, contentType: FHIR, accept: FHIR }),
  update: (type, id, resource, version) => api(`/fhir/${type}/${encodeURIComponent(id)}`, {
    method: 'PUT', json: resource, contentType: FHIR, accept: FHIR,
    headers: version ? { 'If-Match': `W/"${version}"` } : {},
  }),
};

// Directory entries (hospitals, departments, doctors) read once per page, however often a page redraws.
const entries = new Map();
export function readOnce(reference) {
  if (!entries.has(reference)) {
    const reading = fhir.readRef(reference);
    reading.catch(() => entries.delete(reference)); // a failed read is tried again next time
    entries.set(reference, reading);
  }
  return entries.get(reference);
}

export function displayOf(reference) {
  if (!reference) return Promise.resolve('');
  return readOnce(reference).then((r) => {
    if (r.resourceType === 'PractitionerRole') return r.practitioner?.display || reference;
    if (r.resourceType === 'Patient' || r.resourceType === 'Practitioner') return humanName(r);
    return r.name || reference;
  }).catch(() => reference);
}

// --- words for FHIR values ------------------------------------------------------------------------------

// "慢病随访 chronic disease follow-up": Chinese first, then an English part with no Chinese in it.
const BILINGUAL = /^(\p{Script=Han}[^]*?)\s+([A-Za-z][^\p{Script=Han}]*)$/u;

/** Text the record keeps in both languages ("治疗 Treatment") in the reader's one; any other text as it is. */
export function inReadersLanguage(text) {
  const parts = BILINGUAL.exec(text || '');
  if (!parts) return text || '';
  return lang === 'zh' ? parts[1] : parts[2];
}

/** One reason of a routing score in the reader's words: from its code and values when the portal knows the code,
 *  else the English the server wrote. */
export function routeReason(reason, code, values = {}) {
  if (!code || !(`route.${code}` in messages)) return reason;
  const words = t(`route.${code}`, { ...values, anchor: t(`route.anchor.${values.anchor || 'origin'}`) });
  return values.homeUnknown ? words + t('route.home-unknown') : words;
}

export function codeText(concept) {
  if (!concept) return '';
  const coding = (concept.coding || [])[0] || {};
  return inReadersLanguage(concept.text || coding.display || coding.code || '');
}

export function codeOf(concept, system) {
  return (concept?.coding || []).find((c) => !system || c.system === system)?.code;
}

export function humanName(resource) {
  const name = (resource?.name || [])[0];
  if (!name) return '';
  if (typeof name === 'string') return name;
  return name.text || `${name.family || ''}${(name.given || []).join('')}`;
}

export function maskId(number) {
  if (!number) return '';
  return number.length > 10 ? `${number.slice(0, 6)}********${number.slice(-4)}` : number;
}

export function ageOf(birthDate) {
  if (!birthDate) return '';
  const born = new Date(birthDate);
  const now = new Date();
  let years = now.getFullYear() - born.getFullYear();
  if (now.getMonth() < born.getMonth() || (now.getMonth() === born.getMonth() && now.getDate() < born.getDate())) {
    years -= 1;
  }
  return t('unit.years', { n: years });
}

export function fmtDate(value) {
  if (!value) return '';
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return new Intl.DateTimeFormat(LOCALE, { timeZone: ZONE, year: 'numeric', month: '2-digit', day: '2-digit' })
    .format(date);
}

export function fmtDateTime(value) {
  if (!value) return '';
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return new Intl.DateTimeFormat(LOCALE, { timeZone: ZONE, year: 'numeric', month: '2-digit', day: '2-digit',
    hour: '2-digit', minute: '2-digit' }).format(date);
}

export function span(ms) {
  const seconds = Math.max(0, Math.round(Math.abs(ms) / 1000));
  const days = Math.floor(seconds / 86400);
  const hours = Math.floor((seconds % 86400) / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  if (days) return `${t('time.days', { n: days })} ${t('time.hours', { n: hours })}`;
  if (hours) return `${t('time.hours', { n: hours })} ${t('time.minutes', { n: minutes })}`;
  if (minutes) return `${t('time.minutes', { n: minutes })} ${t('time.seconds', { n: seconds % 60 })}`;
  return t('time.seconds', { n: seconds });
}

export function countdownText(deadline) {
  const left = new Date(deadline).getTime() - Date.now();
  return left >= 0 ? t('time.left', { span: span(left) }) : t('time.overdue', { span: span(left) });
}

// --- building the page ----------------------------------------------------------------------------------

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on') && typeof value === 'function') node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A wide table in a box that scrolls sideways on a phone, reachable and named for keyboard users. */
export function scrollBox(label, table) {
  return el('div', { class: 'table-wrap', tabindex: '0', role: 'region', 'aria-label': label }, table);
}

export function $(selector, root = document) {
  return root.querySelector(selector);
}

// Loading, empty and error states: always a sentence, in a live region a screen reader announces.
export function showState(node, kind, text, retry) {
  node.replaceChildren(el('p', { class: `state ${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text,
    retry ? el('button', { type: 'button', class: 'link', onclick: retry }, t('action.retry')) : null));
}

export const loading = (node) => showState(node, 'loading', t('state.loading'));
export const empty = (node, text) => showState(node, 'empty', text || t('state.empty'));
export const failed = (node, error, retry) => showState(node, 'error',
  error instanceof ApiError ? error.message : t('state.error', { detail: error?.message || String(error) }), retry);

/** Fill `node` from `load()`: loading first, then `draw(result)`, or the error in words with a retry button. */
export async function fill(node, load, draw) {
  loading(node);
  try {
    const result = await load();
    node.replaceChildren();
    draw(result);
  } catch (error) {
    console.warn(error);
    failed(node, error, () => fill(node, load, draw));
  }
}

/** A message in words in `node`: announced at once when it is an error, politely otherwise. */
export function announce(node, text, kind = 'info') {
  node.textContent = text;
  node.className = `alert ${kind}`;
  node.setAttribute('role', kind === 'error' ? 'alert' : 'status');
  node.hidden = false;
}

// --- live updates (server-sent events of referrals) ------------------------------------------------------

/** Call `onEvent` for each referral event of the caller's. The feed takes up where it left off after a loss (the
 *  events of the gap are replayed); `onResume` is called when that gap is no longer kept, so a page looks again. */
export function liveReferrals(onEvent, statusNode, onResume) {
  const seen = new Set();
  let source;
  let position = null; // the id of the last event heard: where to take up again
  const connect = () => {
    source = new EventSource(position ? `/api/referrals/events?after=${encodeURIComponent(position)}`
      : '/api/referrals/events');
    source.addEventListener('ready', (message) => {
      position = message.lastEventId || position;
      if (statusNode) statusNode.textContent = t('state.live');
    });
    source.addEventListener('resync', () => {
      if (onResume) onResume();
    });
    source.addEventListener('referral', (message) => {
      position = message.lastEventId || position;
      const event = JSON.parse(message.data);
      if (seen.has(event.id)) return; // delivered at least once: the same event may come twice
      seen.add(event.id);
      onEvent(event);
    });
    source.addEventListener('error', async () => {
      if (leaving) return;
      if (statusNode) statusNode.textContent = t('state.live_lost');
      if (source.readyState === EventSource.CLOSED) {
        // Refused, perhaps for an expired token: a plain call renews it if so; then listen again.
        await api('/api/me').catch(() => null);
        if (!leaving) setTimeout(connect, 3000);
      }
    });
  };
  let leaving = false;
  connect();
  const leave = () => {
    leaving = true;
    source?.close();
  };
  window.addEventListener('pagehide', leave);
  window.addEventListener('beforeunload', leave);
  return () => source?.close();
}
