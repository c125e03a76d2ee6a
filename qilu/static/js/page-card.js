// The patient's e-health card: its number and a QR code that renews itself shortly before it expires.
import { $, ApiError, api, el, failed, loading, t } from './qilu.js';

const holder = $('#card');
let timer;
let objectUrl;

async function showQr(card, area, note) {
  clearInterval(timer);
  note.textContent = t('card.refreshing');
  let response;
  try {
    response = await api(`/api/cards/${encodeURIComponent(card.id)}/qr`, { accept: 'image/svg+xml', raw: true });
  } catch (error) {
    failed(area, error, () => showQr(card, area, note));
    return;
  }
  const expires = Number(response.headers.get('X-Card-Token-Expires')) * 1000;
  const blob = await response.blob();
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(blob);
  area.replaceChildren(el('img', { src: objectUrl, alt: t('card.qr_alt'), id: 'card-qr', 'data-expires': String(expires) }));
  // Renew ten seconds before the code expires, so the one on screen always scans.
  const renewAt = expires - 10000;
  const tick = () => {
    const left = Math.max(0, Math.round((renewAt - Date.now()) / 1000));
    note.textContent = t('card.refresh_in', { n: left });
    if (Date.now() >= renewAt) showQr(card, area, note);
  };
  tick();
  timer = setInterval(tick, 1000);
}

function drawCard(card) {
  const area = el('div', { class: 'qr' });
  const note = el('p', { class: 'muted', id: 'qr-note', role: 'status', 'aria-live': 'off' });
  holder.replaceChildren(el('div', { class: 'cardface' },
    el('div', {}, t('patients.card')),
    el('div', { class: 'number' }, `${t('card.number')} ${card.number}`),
    el('div', {}, `${t('card.status')}：${t(`card.status_${card.status}`)}`)),
  el('div', { class: 'card' }, area, note, el('p', { class: 'small muted' }, t('card.shown_once'))));
  if (card.status === 'active') showQr(card, area, note);
  else area.append(el('p', { class: 'state' }, t('card.no_qr')));
}

async function load() {
  loading(holder);
  try {
    drawCard(await api('/api/cards/mine'));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      holder.replaceChildren(el('p', { class: 'state empty', role: 'status' }, t('card.none')));
      $('#apply-form').hidden = false;
      return;
    }
    failed(holder, error, load);
  }
}

$('#apply-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('#apply-result');
  result.hidden = false;
  result.className = 'state';
  result.textContent = t('state.loading');
  try {
    const me = await api('/api/me');
    await api('/api/cards', { json: { patient: me.fhirUser, name: $('#apply-name').value.trim(),
      national_id: $('#apply-id').value.trim() } });
    $('#apply-form').hidden = true;
    load();
  } catch (error) {
    result.className = 'alert error';
    result.setAttribute('role', 'alert');
    result.textContent = error.message;
  }
});

window.addEventListener('pagehide', () => clearInterval(timer));
load();
