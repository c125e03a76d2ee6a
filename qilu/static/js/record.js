// A patient's record on a page: summary, problems, medications, allergies, encounter timeline, and the
// vital-sign and lab charts drawn from Observations. Used by the doctor's chart and the patient's own record.

import { lineChart } from './chart.js';
import { $, ageOf, codeOf, codeText, config, displayOf, el, empty, failed, fhir, fill, fmtDate, fmtDateTime, humanName,
  inReadersLanguage, loading, maskId, t, tOr } from './qilu.js';

const LOINC = 'http://loinc.org';
const ICD10 = 'http://hl7.org/fhir/sid/icd-10';
const BP_PANEL = ['85354-9', '55284-4'];
const SYSTOLIC = '8480-6';
const DIASTOLIC = '8462-4';
const GLUCOSE = { '15074-8': 1, '14749-6': 1, '2339-0': 1 / 18, '2345-7': 1 / 18 }; // to mmol/L
const HBA1C = ['4548-4', '17856-6'];

function when(observation) {
  return new Date(observation.effectiveDateTime || observation.effectivePeriod?.start || observation.issued);
}

function quantity(q) {
  return typeof q?.value === 'number' ? q.value : undefined;
}

/** {bp: {systolic, diastolic}, glucose, hba1c} points, from the patient's Observations. */
export function seriesOf(observations) {
  const systolic = [];
  const diastolic = [];
  const glucose = [];
  const hba1c = [];
  for (const o of observations) {
    if (o.status === 'entered-in-error' || o.status === 'cancelled') continue;
    const at = when(o);
    if (Number.isNaN(at.getTime())) continue;
    const code = codeOf(o.code, LOINC);
    if (BP_PANEL.includes(code)) {
      for (const c of o.component || []) {
        const v = quantity(c.valueQuantity);
        const part = codeOf(c.code, LOINC);
        if (v === undefined) continue;
        if (part === SYSTOLIC) systolic.push({ t: at, v });
        if (part === DIASTOLIC) diastolic.push({ t: at, v });
      }
    } else if (code === SYSTOLIC && quantity(o.valueQuantity) !== undefined) {
      systolic.push({ t: at, v: quantity(o.valueQuantity) });
    } else if (code === DIASTOLIC && quantity(o.valueQuantity) !== undefined) {
      diastolic.push({ t: at, v: quantity(o.valueQuantity) });
    } else if (code in GLUCOSE && quantity(o.valueQuantity) !== undefined) {
      const unit = o.valueQuantity.code || o.valueQuantity.unit || '';
      const factor = /mg/i.test(unit) ? 1 / 18 : 1;
      glucose.push({ t: at, v: Math.round(quantity(o.valueQuantity) * factor * 10) / 10 });
    } else if (HBA1C.includes(code) && quantity(o.valueQuantity) !== undefined) {
      hba1c.push({ t: at, v: quantity(o.valueQuantity) });
    }
  }
  const byTime = (a, b) => a.t - b.t;
  return { systolic: systolic.sort(byTime), diastolic: diastolic.sort(byTime), glucose: glucose.sort(byTime),
    hba1c: hba1c.sort(byTime) };
}

function seriesSummary(points, unit) {
  const last = points[points.length - 1];
  const values = points.map((p) => p.v);
  return t('chart.series_summary', { n: points.length, date: fmtDate(last.t), value: last.v, unit,
    min: Math.min(...values), max: Math.max(...values) });
}

// Drawn at the width they get, so the labels keep their size on a phone.
const widthOf = (node) => Math.max(300, Math.min(720, Math.round(node.clientWidth || 640)));

function drawCharts(series) {
  const bp = $('#chart-bp');
  if (series.systolic.length || series.diastolic.length) {
    const sys = series.systolic;
    const dia = series.diastolic;
    const lastSys = sys[sys.length - 1];
    const lastDia = dia[dia.length - 1];
    bp.append(lineChart({
      title: t('chart.bp'), unit: 'mmHg', width: widthOf(bp),
      series: [{ label: t('chart.systolic'), points: sys }, { label: t('chart.diastolic'), points: dia }],
      band: { low: 90, high: 140, label: t('chart.bp_band') },
      summary: t('chart.bp_summary', { n: sys.length, date: fmtDate(lastSys?.t || lastDia?.t), sys: lastSys?.v ?? '–',
        dia: lastDia?.v ?? '–', max: sys.length ? Math.max(...sys.map((p) => p.v)) : '–' }),
    }));
  } else {
    empty(bp, t('chart.no_bp'));
  }
  const glucose = $('#chart-glucose');
  if (series.glucose.length) {
    glucose.append(lineChart({ title: t('chart.glucose'), unit: 'mmol/L', width: widthOf(glucose),
      series: [{ label: t('chart.glucose'), points: series.glucose }],
      band: { low: 3.9, high: 6.1, label: t('chart.glucose_band') },
      summary: seriesSummary(series.glucose, 'mmol/L') }));
  } else {
    empty(glucose, t('chart.no_glucose'));
  }
  const hba1c = $('#chart-hba1c');
  if (series.hba1c.length) {
    hba1c.append(lineChart({ title: t('chart.hba1c'), unit: '%', width: widthOf(hba1c),
      series: [{ label: 'HbA1c', points: series.hba1c }],
      band: { low: 4, high: 6, label: t('chart.hba1c_band') },
      summary: seriesSummary(series.hba1c, '%') }));
  } else {
    empty(hba1c, t('chart.no_hba1c'));
  }
}

function drawSummary(node, patient) {
  const id = (patient.identifier || []).find((i) => i.system === config.systems.nationalId)?.value;
  const phone = (patient.telecom || []).find((c) => c.system === 'phone')?.value;
  const address = (patient.address || [])[0]?.text;
  const heading = $('#patient-heading');
  if (heading && config.me?.role === 'practitioner') heading.textContent = `${t('chart.title')}：${humanName(patient)}`;
  const facts = el('dl', { class: 'facts' },
    el('dt', {}, t('chart.name')), el('dd', { id: 'patient-name' }, humanName(patient)),
    el('dt', {}, t('chart.gender')), el('dd', {}, t(`gender.${patient.gender || 'unknown'}`)),
    el('dt', {}, t('chart.birth')), el('dd', {}, `${patient.birthDate || ''} (${ageOf(patient.birthDate)})`),
    id ? [el('dt', {}, t('chart.id_number')), el('dd', {}, maskId(id))] : null,
    phone ? [el('dt', {}, t('chart.phone')), el('dd', {}, phone)] : null,
    address ? [el('dt', {}, t('chart.address')), el('dd', {}, address)] : null);
  node.append(facts);
  const org = patient.managingOrganization?.reference;
  if (org) {
    const dd = el('dd', {}, '…');
    facts.append(el('dt', {}, t('chart.managed_by')), dd);
    displayOf(org).then((name) => { dd.textContent = name; });
  }
}

function drawProblems(node, conditions) {
  if (!conditions.length) return empty(node, t('chart.no_problems'));
  const order = (c) => (codeOf(c.clinicalStatus) === 'active' ? 0 : 1);
  node.append(el('ul', { class: 'plain' }, [...conditions].sort((a, b) => order(a) - order(b)).map((c) => {
    const status = codeOf(c.clinicalStatus) || '';
    const icd = codeOf(c.code, ICD10);
    return el('li', {}, el('strong', {}, codeText(c.code)), icd ? ` (ICD-10 ${icd})` : '',
      el('br'), el('span', { class: 'muted small' },
        [status === 'active' ? t('chart.status_active') : status === 'resolved' ? t('chart.status_resolved') : status,
          c.onsetDateTime ? t('chart.since', { date: fmtDate(c.onsetDateTime) }) : ''].filter(Boolean).join(' · ')));
  })));
  return null;
}

function drawMedications(node, requests) {
  const current = requests.filter((m) => !['cancelled', 'entered-in-error', 'stopped'].includes(m.status));
  if (!current.length) return empty(node, t('chart.no_medications'));
  node.append(el('ul', { class: 'plain' }, current.map((m) => el('li', {},
    el('strong', {}, codeText(m.medicationCodeableConcept) || m.medicationReference?.display || ''),
    el('br'), el('span', { class: 'muted small' }, (m.dosageInstruction || []).map((d) => d.text).filter(Boolean)
      .join('; '))))));
  return null;
}

function drawAllergies(node, allergies) {
  if (!allergies.length) return empty(node, t('chart.no_allergies'));
  node.append(el('ul', { class: 'plain' }, allergies.map((a) => el('li', {},
    el('strong', {}, codeText(a.code)), a.criticality ? ` (${tOr(`allergy.criticality.${a.criticality}`, a.criticality)})` : '',
    (a.reaction || []).length ? el('div', { class: 'muted small' }, t('chart.reaction', {
      text: a.reaction.flatMap((r) => (r.manifestation || []).map(codeText)).join('、') })) : null))));
  return null;
}

function encounterClass(coding) {
  if (!coding) return '';
  return tOr(`encounter.class.${coding.code}`, inReadersLanguage(coding.display || coding.code || ''));
}

function drawTimeline(node, encounters) {
  if (!encounters.length) return empty(node, t('chart.no_encounters'));
  const list = el('ol', { class: 'timeline' });
  for (const e of encounters) {
    const where = el('span', { class: 'muted' });
    if (e.serviceProvider?.reference) displayOf(e.serviceProvider.reference).then((n) => { where.textContent = n; });
    list.append(el('li', {},
      el('time', { datetime: e.period?.start || '' }, fmtDateTime(e.period?.start)), ' ',
      el('strong', {}, (e.type || []).map(codeText).join('、') || encounterClass(e.class)), ' ',
      where,
      (e.reasonCode || []).length ? el('div', { class: 'small' }, e.reasonCode.map(codeText).join('、')) : null));
  }
  node.append(list);
  return null;
}

/** Fill the record sections of the page for `patientId`; each section loads on its own. */
export function loadRecord(patientId) {
  const patient = `Patient/${patientId}`;
  fill($('#summary'), () => fhir.read('Patient', patientId), (p) => drawSummary($('#summary'), p));
  const codes = [...BP_PANEL, SYSTOLIC, DIASTOLIC, ...Object.keys(GLUCOSE), ...HBA1C].map((c) => `${LOINC}|${c}`);
  const charts = ['#chart-bp', '#chart-glucose', '#chart-hba1c'].map((s) => $(s));
  const loadCharts = async () => {
    charts.forEach(loading);
    try {
      const observations = await fhir.search('Observation', [['patient', patient], ['code', codes.join(',')],
        ['_sort', 'date'], ['_count', '500']]);
      charts.forEach((c) => c.replaceChildren());
      drawCharts(seriesOf(observations));
    } catch (error) {
      charts.forEach((c) => failed(c, error, loadCharts));
    }
  };
  loadCharts();
  fill($('#problems'), () => fhir.search('Condition', [['patient', patient], ['_count', '100']]),
    (list) => drawProblems($('#problems'), list));
  fill($('#medications'), () => fhir.search('MedicationRequest', [['patient', patient], ['_count', '100']]),
    (list) => drawMedications($('#medications'), list));
  fill($('#allergies'), () => fhir.search('AllergyIntolerance', [['patient', patient], ['_count', '100']]),
    (list) => drawAllergies($('#allergies'), list));
  fill($('#timeline'), () => fhir.search('Encounter', [['patient', patient], ['_sort', '-date'], ['_count', '50']]),
    (list) => drawTimeline($('#timeline'), list));
}
