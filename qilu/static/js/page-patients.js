// Patient search for doctors: by name, by ID number, or by the patient's e-health card QR code.
import { $, ageOf, api, config, el, empty, failed, fhir, humanName, loading, maskId, t } from './qilu.js';

const results = $('#results');

function patientList(patients) {
  if (!patients.length) return empty(results, t('patients.none'));
  results.replaceChildren(el('ul', { class: 'plain', id: 'patient-results' }, patients.map((p) => {
    const id = (p.identifier || []).find((i) => i.system === config.systems.nationalId)?.value;
    return el('li', {},
      el('a', { href: `/patients/${encodeURIComponent(p.id)}`, class: 'patient-link' }, humanName(p) || p.id),
      ' ', el('span', { class: 'muted' }, [t(`gender.${p.gender || 'unknown'}`), ageOf(p.birthDate), maskId(id)]
        .filter(Boolean).join(' · ')));
  })));
  return null;
}

async function search(params) {
  loading(results);
  try {
    patientList(await fhir.search('Patient', [...params, ['_count', '50']]));
  } catch (error) {
    failed(results, error, () => search(params));
  }
}

$('#search-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const name = $('#q-name').value.trim();
  const number = $('#q-id').value.trim().toUpperCase();
  if (!name && !number) return empty(results, t('patients.need_query'));
  const params = [];
  if (name) params.push(['name', name]);
  if (number) params.push(['identifier', `${config.systems.nationalId}|${number}`]);
  search(params);
  return null;
});

// The bundled decoder, loaded only when a picture must be read without the browser's own reader.
let bundledDecoder = null;
function loadDecoder() {
  if (!bundledDecoder) {
    bundledDecoder = new Promise((resolve, reject) => {
      const script = el('script', { src: '/static/vendor/jsqr/jsQR.js' });
      script.addEventListener('load', () => resolve(window.jsQR));
      script.addEventListener('error', () => { bundledDecoder = null; reject(new Error(t('patients.card_no_reader'))); });
      document.head.append(script);
    });
  }
  return bundledDecoder;
}

const MAX_SIDE = 1600; // a phone photo is scaled down first: the code is still readable, the decoding quick

async function readQr(file) {
  let image;
  try {
    image = await createImageBitmap(file);
  } catch {
    throw new Error(t('patients.card_unreadable'));
  }
  // The browser's own barcode reader where it has one (not Chromium on Linux); otherwise the bundled jsQR.
  if ('BarcodeDetector' in window) {
    const codes = await new window.BarcodeDetector({ formats: ['qr_code'] }).detect(image);
    if (!codes.length) throw new Error(t('patients.card_unreadable'));
    return { text: codes[0].rawValue, by: 'BarcodeDetector' };
  }
  const decode = await loadDecoder();
  const scale = Math.min(1, MAX_SIDE / Math.max(image.width, image.height));
  const canvas = el('canvas', { width: Math.round(image.width * scale), height: Math.round(image.height * scale) });
  const context = canvas.getContext('2d', { willReadFrequently: true });
  context.drawImage(image, 0, 0, canvas.width, canvas.height);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height);
  const code = decode(pixels.data, pixels.width, pixels.height);
  if (!code || !code.data) throw new Error(t('patients.card_unreadable'));
  return { text: code.data, by: 'jsQR' };
}

const cardResult = $('#card-result');
$('#card-image').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    const code = await readQr(file);
    $('#card-code').value = code.text;
    $('#card-code').dataset.readBy = code.by;
    cardResult.hidden = true;
  } catch (error) {
    cardResult.hidden = false;
    cardResult.className = 'alert error';
    cardResult.setAttribute('role', 'alert');
    cardResult.textContent = error.message;
  }
});

$('#card-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const token = $('#card-code').value.trim();
  if (!token) return;
  cardResult.hidden = false;
  cardResult.className = 'state';
  cardResult.textContent = t('state.loading');
  try {
    const found = await api('/api/cards/verify', { json: { token } });
    cardResult.className = 'alert ok';
    cardResult.setAttribute('role', 'status');
    cardResult.textContent = t('patients.card_ok', { name: found.name, gender: t(`gender.${found.gender || 'unknown'}`),
      birth: found.birthDate || '', id: found.nationalId || '' });
    const id = found.patient.replace('Patient/', '');
    try {
      patientList([await fhir.read('Patient', id)]);
    } catch {
      patientList([{ id, name: [{ text: found.name }], gender: found.gender, birthDate: found.birthDate }]);
    }
  } catch (error) {
    cardResult.className = 'alert error';
    cardResult.setAttribute('role', 'alert');
    cardResult.textContent = error.message;
  }
});
