// The new-referral wizard: condition and specialty, the ranked hospitals with the reasons of each rank, the
// patient's consent and the records to share; then the referral is sent once (Idempotency-Key).
import { $, announce, api, codeOf, codeText, config, el, empty, failed, fhir, fmtDate, humanName, loading, page,
  routeReason, t } from './qilu.js';

const ICD10 = 'http://hl7.org/fhir/sid/icd-10';
const SPECIALTY_SYSTEM = config.systems.specialty;
const patientId = page.patient;
const patientRef = `Patient/${patientId}`;
const idempotencyKey = crypto.randomUUID();
const message = $('#wizard-message');
let services = [];
let route = null;

function say(text, kind = 'error') {
  announce(message, text, kind);
}

function showStep(n) {
  message.hidden = true;
  for (const form of document.querySelectorAll('form[data-step]')) form.hidden = form.dataset.step !== String(n);
  for (const li of document.querySelectorAll('.steps li')) {
    if (li.dataset.step === String(n)) li.setAttribute('aria-current', 'step');
    else li.removeAttribute('aria-current');
  }
  $(`#step${n} h2`).focus();
}

function specialtiesOf(service) {
  return (service.specialty || []).flatMap((s) => (s.coding || []).filter((c) => !c.system || c.system === SPECIALTY_SYSTEM)
    .map((c) => ({ code: c.code, display: c.display || s.text || c.code })));
}

async function loadStep1() {
  const reason = $('#reason');
  const specialty = $('#specialty');
  reason.replaceChildren(el('option', { value: '' }, t('state.loading')));
  specialty.replaceChildren(el('option', { value: '' }, t('state.loading')));
  try {
    const [patient, conditions, found] = await Promise.all([
      fhir.read('Patient', patientId),
      fhir.search('Condition', [['patient', patientRef], ['_count', '100']]),
      fhir.searchAll('HealthcareService', [['active', 'true'], ['_count', '500']]),
    ]);
    $('#patient-line').textContent = `${t('new.patient')}：${humanName(patient)}`;
    const coded = conditions.filter((c) => codeOf(c.code, ICD10))
      .sort((a, b) => (codeOf(a.clinicalStatus) === 'active' ? 0 : 1) - (codeOf(b.clinicalStatus) === 'active' ? 0 : 1));
    if (!coded.length) {
      reason.replaceChildren(el('option', { value: '' }, t('new.reason_none')));
      say(t('new.reason_none'));
    } else {
      reason.replaceChildren(...coded.map((c) => el('option', { value: `Condition/${c.id}` },
        `${codeText(c.code)} (ICD-10 ${codeOf(c.code, ICD10)})`)));
    }
    services = found;
    const seen = new Map();
    for (const s of services) for (const sp of specialtiesOf(s)) if (!seen.has(sp.code)) seen.set(sp.code, sp.display);
    const displays = [...seen.values()];
    const options = [...seen.entries()].sort((a, b) => a[1].localeCompare(b[1], 'zh')).map(([code, display]) => {
      // The same name under two codes (a test or a pilot directory): show the code too.
      const label = displays.filter((d) => d === display).length > 1 ? `${display} (${code})` : display;
      return el('option', { value: code }, label);
    });
    specialty.replaceChildren(el('option', { value: '' }, '—'), ...options);
    drawCapabilities();
  } catch (error) {
    failed($('#patient-line'), error, loadStep1);
  }
}

// Capability codes -> their words, as the departments of the chosen specialty name them (for the reasons too).
let capabilities = new Map();

function drawCapabilities() {
  const code = $('#specialty').value;
  const list = $('#capability-list');
  capabilities = new Map();
  for (const s of services) {
    if (!specialtiesOf(s).some((sp) => sp.code === code)) continue;
    for (const ch of s.characteristic || []) {
      for (const c of ch.coding || []) {
        if (c.system === config.systems.capability) capabilities.set(c.code, c.display || ch.text || c.code);
      }
    }
  }
  if (!capabilities.size) return empty(list, t('new.capabilities_none'));
  list.replaceChildren(...[...capabilities.entries()].map(([value, label]) => el('label', { class: 'check' },
    el('input', { type: 'checkbox', name: 'capability', value }), ` ${label}`)));
  return null;
}

function choices() {
  const form = $('#step1');
  return {
    patient: patientRef,
    reason: form.reason.value,
    direction: form.querySelector('input[name="direction"]:checked').value,
    specialty: form.specialty.value,
    priority: form.querySelector('input[name="priority"]:checked').value,
    capabilities: [...form.querySelectorAll('input[name="capability"]:checked')].map((i) => i.value),
  };
}

function drawCandidates(result) {
  const holder = $('#candidates');
  if (!result.candidates.length) {
    empty(holder, t('new.no_candidates'));
  } else {
    holder.replaceChildren(el('ul', { class: 'candidates', id: 'candidate-list' }, result.candidates.map((c, i) => {
      const id = `candidate-${i}`;
      return el('li', { class: 'candidate', 'data-hospital': c.hospital },
        el('label', { for: id },
          el('input', { type: 'radio', name: 'target', id, value: c.hospital, checked: i === 0,
            'data-service': c.service }),
          el('span', {}, el('strong', {}, c.name), ' ', el('span', { class: 'muted' }, t('new.rank', { n: c.rank }))),
          el('span', { class: 'score' }, t('new.score', { score: c.score }))),
        el('ul', { class: 'reasons' }, c.parts.map((p) => el('li', {}, t('new.part', {
          reason: routeReason(p.reason, p.code, p.values), points: p.points, weight: p.weight })))));
    })));
  }
  if ((result.excluded || []).length) {
    holder.append(el('details', {}, el('summary', {}, t('new.excluded')),
      el('ul', {}, result.excluded.map((x) => el('li', {}, `${x.name}：${x.reasons.map((reason, i) => {
        const { code, values = {} } = (x.explained || [])[i] || {};
        const named = values.capability ? { ...values, capability: capabilities.get(values.capability)
          || values.capability } : values;
        return routeReason(reason, code, named);
      }).join('；')}`)))));
  }
}

$('#specialty').addEventListener('change', drawCapabilities);

$('#step1').addEventListener('submit', async (event) => {
  event.preventDefault();
  const asked = choices();
  if (!asked.reason || !asked.specialty) return say(t('new.need_fields'));
  const button = $('#find');
  button.disabled = true;
  showStep(2);
  loading($('#candidates'));
  try {
    const { reason, ...body } = asked;
    route = await api('/api/referrals/route?explain=all', { json: body });
    drawCandidates(route);
  } catch (error) {
    failed($('#candidates'), error);
  } finally {
    button.disabled = false;
  }
  return null;
});

$('#back2').addEventListener('click', () => showStep(1));
$('#back3').addEventListener('click', () => showStep(2));

function recordLabel(resource) {
  const date = resource.effectiveDateTime || resource.authoredOn || resource.recordedDate || resource.date ||
    resource.period?.start || resource.issued;
  let what = codeText(resource.code || resource.medicationCodeableConcept || resource.type);
  if (resource.valueQuantity) what += ` ${resource.valueQuantity.value} ${resource.valueQuantity.unit || ''}`;
  if (resource.component) {
    what += ` ${resource.component.map((c) => c.valueQuantity?.value).filter((v) => v !== undefined).join('/')}`;
  }
  return `${what} ${date ? `(${fmtDate(date)})` : ''}`.trim();
}

async function loadStep3() {
  const consents = $('#consents');
  const attachments = $('#attachments');
  loading(consents);
  loading(attachments);
  try {
    const [active, observations, reports, medications] = await Promise.all([
      fhir.search('Consent', [['patient', patientRef], ['status', 'active']]),
      fhir.search('Observation', [['patient', patientRef], ['_sort', '-date'], ['_count', '12']]),
      fhir.search('DiagnosticReport', [['patient', patientRef], ['_sort', '-date'], ['_count', '5']]),
      fhir.search('MedicationRequest', [['patient', patientRef], ['_count', '20']]),
    ]);
    if (active.length) {
      consents.replaceChildren(el('p', {}, t('new.consent_existing')), ...active.map((c, i) => el('label',
        { class: 'check' }, el('input', { type: 'radio', name: 'consent', value: `Consent/${c.id}`, checked: i === 0 }),
        ` ${c.policyRule?.text || codeText(c.policyRule) || c.id} (${fmtDate(c.dateTime)})`)));
    } else {
      consents.replaceChildren(el('label', { class: 'check' },
        el('input', { type: 'checkbox', id: 'record-consent', name: 'record_consent' }), ` ${t('new.consent_record')}`));
    }
    const records = [...observations, ...reports, ...medications];
    if (!records.length) {
      empty(attachments, t('new.attachments_none'));
    } else {
      attachments.replaceChildren(...records.map((r, i) => el('label', { class: 'check' },
        el('input', { type: 'checkbox', name: 'supporting', value: `${r.resourceType}/${r.id}`, checked: i < 3 }),
        ` ${recordLabel(r)}`)));
    }
  } catch (error) {
    failed(consents, error, loadStep3);
    attachments.replaceChildren();
  }
}

$('#step2').addEventListener('submit', (event) => {
  event.preventDefault();
  if (!document.querySelector('input[name="target"]:checked')) return say(t('new.choose_hospital'));
  showStep(3);
  loadStep3();
  return null;
});

async function consentReference() {
  const chosen = document.querySelector('input[name="consent"]:checked');
  if (chosen) return chosen.value;
  if (!$('#record-consent')?.checked) return null;
  // The doctor records the patient's agreement, as the patient gave it in the consulting room.
  const written = await fhir.create('Consent', {
    resourceType: 'Consent', status: 'active',
    scope: { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/consentscope', code: 'patient-privacy' }] },
    category: [{ coding: [{ system: 'http://loinc.org', code: '59284-0', display: 'Patient Consent' }] }],
    patient: { reference: patientRef }, dateTime: new Date().toISOString(),
    policyRule: { text: '转诊时共享病历 share records with the hospital a referral goes to' },
    provision: { type: 'permit',
      purpose: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }] },
  });
  return `Consent/${written.id}`;
}

$('#step3').addEventListener('submit', async (event) => {
  event.preventDefault();
  const button = $('#submit-referral');
  button.disabled = true;
  say(t('new.sending'), 'info');
  try {
    const consent = await consentReference();
    if (!consent) {
      say(t('new.consent_required'));
      return;
    }
    const target = document.querySelector('input[name="target"]:checked');
    const body = { ...choices(), consent, target: target.value,
      supporting: [...document.querySelectorAll('input[name="supporting"]:checked')].map((i) => i.value),
      note: $('#note').value.trim() || null };
    const referral = await api('/api/referrals', { json: body, headers: { 'Idempotency-Key': idempotencyKey } });
    location.assign(`/referrals/${encodeURIComponent(referral.id)}`);
  } catch (error) {
    say(error.message);
  } finally {
    button.disabled = false;
  }
});

loadStep1();
