// Directory editing for administrators: hospitals (name, active), their departments (HealthcareService) with
// capabilities, daily referral capacity and whether they take referrals now. Writes go through the FHIR API.
import { $, announce, codeText, config, el, empty, failed, fhir, loading, scrollBox, t } from './qilu.js';

const SPECIALTY_SYSTEM = 'https://qilu.example.org/fhir/CodeSystem/specialty';
const message = $('#directory-message');

function say(text, kind = 'ok') {
  announce(message, text, kind);
}

function extension(resource, url) {
  return (resource.extension || []).find((x) => x.url === url);
}

function withExtension(resource, url, value) {
  const others = (resource.extension || []).filter((x) => x.url !== url);
  return { ...resource, extension: [...others, { url, ...value }] };
}

function tierOf(org) {
  const tier = extension(org, config.systems.tier);
  const parts = Object.fromEntries((tier?.extension || []).map((x) => [x.url, x.valueInteger ?? x.valueCode ??
    x.valueString]));
  const level = parts.level ?? tier?.valueCodeableConcept?.coding?.[0]?.code ?? '';
  const grade = parts.grade ?? '';
  return level ? `${level}${grade}` : '';
}

async function save(type, resource, button) {
  button.disabled = true;
  try {
    const { meta, ...body } = resource;
    await fhir.update(type, resource.id, body, meta?.versionId);
    say(t('state.saved'));
    return true;
  } catch (error) {
    say(error.message, 'error');
    return false;
  } finally {
    button.disabled = false;
  }
}

function serviceRow(service) {
  const capacity = extension(service, config.systems.capacity)?.valueInteger;
  const accepting = extension(service, config.systems.accepting)?.valueBoolean;
  const idBase = `svc-${service.id}`;
  const capacityInput = el('input', { type: 'number', min: '0', step: '1', id: `${idBase}-capacity`,
    value: capacity ?? '' });
  const acceptingInput = el('input', { type: 'checkbox', id: `${idBase}-accepting`, checked: accepting !== false });
  const activeInput = el('input', { type: 'checkbox', id: `${idBase}-active`, checked: service.active !== false });
  const button = el('button', { type: 'button', id: `${idBase}-save` }, t('action.save'));
  button.addEventListener('click', async () => {
    let updated = { ...service, active: activeInput.checked };
    if (capacityInput.value !== '') {
      updated = withExtension(updated, config.systems.capacity, { valueInteger: Number(capacityInput.value) });
    }
    updated = withExtension(updated, config.systems.accepting, { valueBoolean: acceptingInput.checked });
    if (await save('HealthcareService', updated, button)) {
      Object.assign(service, await fhir.read('HealthcareService', service.id));
    }
  });
  const capabilities = (service.characteristic || []).map(codeText).join('、');
  return el('tr', { 'data-service': service.id },
    el('th', { scope: 'row' }, service.name || (service.specialty || []).map(codeText).join('、')),
    el('td', {}, capabilities || '—'),
    el('td', {}, el('label', { for: `${idBase}-capacity`, class: 'visually-hidden' }, t('directory.capacity')),
      capacityInput),
    el('td', {}, el('label', { for: `${idBase}-accepting`, class: 'visually-hidden' }, t('directory.accepting')),
      acceptingInput),
    el('td', {}, el('label', { for: `${idBase}-active`, class: 'visually-hidden' }, t('directory.active')),
      activeInput),
    el('td', {}, button));
}

async function showServices(org) {
  const holder = $('#services');
  const heading = $('#h-services');
  heading.textContent = t('directory.services', { name: org.name });
  heading.focus();
  loading(holder);
  try {
    const services = await fhir.searchAll('HealthcareService', [['organization', `Organization/${org.id}`],
      ['_count', '200']], 3);
    const nameInput = el('input', { id: 'org-name', value: org.name || '' });
    const orgActive = el('input', { type: 'checkbox', id: 'org-active', checked: org.active !== false });
    const orgSave = el('button', { type: 'button', id: 'org-save' }, t('action.save'));
    orgSave.addEventListener('click', async () => {
      if (await save('Organization', { ...org, name: nameInput.value.trim(), active: orgActive.checked }, orgSave)) {
        Object.assign(org, await fhir.read('Organization', org.id));
        loadHospitals();
      }
    });
    const table = services.length ? scrollBox(t('directory.service'), el('table', { id: 'services-table' },
      el('caption', { class: 'visually-hidden' }, t('directory.services', { name: org.name })),
      el('thead', {}, el('tr', {}, ['directory.service', 'directory.capabilities', 'directory.capacity',
        'directory.accepting', 'directory.active', 'directory.edit'].map((k) => el('th', { scope: 'col' }, t(k))))),
      el('tbody', {}, services.map(serviceRow)))) : el('p', { class: 'state empty' }, t('state.empty'));
    const specialty = el('input', { id: 'new-specialty', required: true, pattern: '[a-z0-9-]+' });
    const serviceName = el('input', { id: 'new-service-name', required: true });
    const capacity = el('input', { id: 'new-capacity', type: 'number', min: '0', value: '10' });
    const add = el('form', { class: 'stack card', id: 'add-service' }, el('h3', {}, t('directory.add_service')),
      el('label', { for: 'new-specialty' }, t('directory.specialty_code')), specialty,
      el('label', { for: 'new-service-name' }, t('directory.service_name')), serviceName,
      el('label', { for: 'new-capacity' }, t('directory.capacity')), capacity,
      el('button', { type: 'submit' }, t('directory.add_service')));
    add.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        await fhir.create('HealthcareService', { resourceType: 'HealthcareService', active: true,
          providedBy: { reference: `Organization/${org.id}` }, name: serviceName.value.trim(),
          specialty: [{ coding: [{ system: SPECIALTY_SYSTEM, code: specialty.value.trim() }] }],
          extension: [{ url: config.systems.capacity, valueInteger: Number(capacity.value || 0) },
            { url: config.systems.accepting, valueBoolean: true }] });
        say(t('state.saved'));
        showServices(org);
      } catch (error) {
        say(error.message, 'error');
      }
    });
    holder.replaceChildren(el('div', { class: 'stack' },
      el('label', { for: 'org-name' }, t('directory.hospital_name')), nameInput,
      el('label', { class: 'check', for: 'org-active' }, orgActive, ` ${t('directory.active')}`), orgSave),
    el('h3', {}, t('directory.service')), table, add);
  } catch (error) {
    failed(holder, error, () => showServices(org));
  }
}

async function loadHospitals() {
  const holder = $('#hospitals');
  loading(holder);
  const name = $('#find-name').value.trim();
  try {
    const orgs = await fhir.search('Organization', [...(name ? [['name', name]] : []), ['_count', '100'],
      ['_sort', 'name']]);
    if (!orgs.length) return empty(holder, t('directory.none'));
    holder.replaceChildren(el('ul', { class: 'plain', id: 'hospital-list' }, orgs.map((org) => {
      const open = el('button', { type: 'button', class: 'link' }, org.name || org.id);
      open.addEventListener('click', () => showServices(org));
      return el('li', { 'data-org': org.id }, open, ' ', el('span', { class: 'muted small' },
        [tierOf(org), org.active === false ? `(${t('directory.active')}: ✗)` : ''].filter(Boolean).join(' ')));
    })));
  } catch (error) {
    failed(holder, error, loadHospitals);
  }
  return null;
}

$('#find-form').addEventListener('submit', (event) => {
  event.preventDefault();
  loadHospitals();
});
loadHospitals();
