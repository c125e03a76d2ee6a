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

async function readQr(file) {
  // The browser's own barcode reader where it has one; otherwise the doctor pastes the code's text.
  if (!('BarcodeDetector' in window)) throw new Error(t('patients.card_no_reader'));
  const detector = new window.BarcodeDetector({ formats: ['qr_code'] });
  const codes = await detector.detect(await createImageBitmap(file));
  if (!codes.length) throw new Error(t('patients.card_unreadable'));
  return codes[0].rawValue;
}

const cardResult = $('#card-result');
$('#card-image').addEventListener('change', async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  try {
    $('#card-code').value = await readQr(file);
    cardResult.hidden = true;
  } catch (error) {
    cardResult.hidden = false;
    cardResult.className = 'alert error';
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
