// The administrator's dashboard: referral flows up and down per city and month, acceptance times, SLA breaches.
import { barChart } from './chart.js';
import { $, api, displayOf, el, empty, failed, fhir, fmtDateTime, loading, scrollBox, t } from './qilu.js';

async function cityNames() {
  // The directory's hospitals say which city a division code belongs to.
  const names = new Map();
  try {
    const orgs = await fhir.searchAll('Organization', [['_count', '500']], 4);
    for (const o of orgs) {
      const division = (o.extension || []).find((x) => x.url.endsWith('/division-code'));
      const code = division?.valueCode || division?.valueString;
      const city = (o.address || [])[0]?.city;
      if (code && city) names.set(`${code.slice(0, 4)}00`, city);
    }
  } catch {
    // Codes are shown instead of names.
  }
  return names;
}

function flowsByMonth(stats) {
  const holder = $('#flows');
  const months = [...new Set(stats.flows.map((f) => f.month))].sort();
  if (!months.length) return empty(holder, t('admin.no_data'));
  const sum = (direction) => Object.fromEntries(months.map((m) => [m, stats.flows
    .filter((f) => f.month === m && f.direction === direction).reduce((a, f) => a + f.count, 0)]));
  const up = sum('up');
  const down = sum('down');
  holder.replaceChildren(barChart({ title: t('admin.flows'), unit: t('admin.count'), categories: months,
    series: [{ label: t('admin.up'), values: up }, { label: t('admin.down'), values: down }],
    summary: months.map((m) => `${m}: ${t('admin.up')} ${up[m]}, ${t('admin.down')} ${down[m]}`).join('; ') }));
  return null;
}

function flowsByCity(stats, names) {
  const holder = $('#flows-city');
  if (!stats.flows.length) return empty(holder, t('admin.no_data'));
  const months = [...new Set(stats.flows.map((f) => f.month))].sort();
  const cities = [...new Set(stats.flows.map((f) => f.city))].sort();
  const cell = (city, month, direction) => stats.flows.filter((f) => f.city === city && f.month === month &&
    f.direction === direction).reduce((a, f) => a + f.count, 0);
  holder.replaceChildren(scrollBox(t('admin.flows_city'), el('table', { id: 'flows-table' },
    el('caption', {}, t('admin.flows_city')),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, t('admin.city')),
      months.map((m) => el('th', { scope: 'col' }, `${m} ${t('admin.up')}/${t('admin.down')}`)))),
    el('tbody', {}, cities.map((c) => el('tr', {}, el('th', { scope: 'row' }, names.get(c) || c),
      months.map((m) => el('td', {}, `${cell(c, m, 'up')} / ${cell(c, m, 'down')}`))))))));
  return null;
}

async function acceptTimes(stats) {
  const holder = $('#accept');
  const a = stats.accept_minutes;
  if (!a.count) return empty(holder, t('admin.no_data'));
  const targets = Object.entries(stats.accept_by_target || {});
  const labels = await Promise.all(targets.map(([ref]) => displayOf(ref)));
  holder.replaceChildren(el('div', {}, el('p', {}, [t('admin.accepted_count', { n: a.count }),
    t('admin.median', { n: a.median }), t('admin.p90', { n: a.p90 })].join(' · ')),
  targets.length ? barChart({ title: t('admin.by_target'), unit: t('time.minutes', { n: '' }).trim(),
    categories: labels, series: [{ label: t('admin.by_target'), values: Object.fromEntries(targets.map(([, v], i) =>
      [labels[i], v.median])) }],
    summary: targets.map(([, v], i) => `${labels[i]}: ${v.median}`).join('; ') }) : null));
  return null;
}

function sla(stats) {
  const holder = $('#sla');
  const months = Object.keys(stats.sla_breaches.escalated_by_month || {}).sort();
  holder.replaceChildren(el('p', {}, t('admin.failed', { n: stats.sla_breaches.failed })),
    months.length ? barChart({ title: t('admin.escalated'), unit: t('admin.count'), categories: months,
      series: [{ label: t('admin.escalated'), values: stats.sla_breaches.escalated_by_month }],
      summary: months.map((m) => `${m}: ${stats.sla_breaches.escalated_by_month[m]}`).join('; ') })
      : el('p', { class: 'state empty' }, t('state.empty')));
}

function rejections(stats) {
  const holder = $('#rejections');
  if (!stats.rejection_reasons.length) return empty(holder);
  holder.replaceChildren(el('table', {}, el('caption', { class: 'visually-hidden' }, t('admin.rejections')),
    el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, t('detail.reject_reason')),
      el('th', { scope: 'col' }, t('admin.count')))),
    el('tbody', {}, stats.rejection_reasons.map((r) => el('tr', {}, el('td', {}, r.reason || '—'),
      el('td', {}, String(r.count)))))));
  return null;
}

async function load() {
  ['#flows', '#flows-city', '#accept', '#sla', '#rejections'].forEach((s) => loading($(s)));
  try {
    const [stats, names] = await Promise.all([api('/api/referrals/stats'), cityNames()]);
    $('#computed').textContent = t('admin.computed', { when: fmtDateTime(stats.computed) });
    flowsByMonth(stats);
    flowsByCity(stats, names);
    await acceptTimes(stats);
    sla(stats);
    rejections(stats);
  } catch (error) {
    ['#flows', '#flows-city', '#accept', '#sla', '#rejections'].forEach((s) => failed($(s), error, load));
  }
}

load();
