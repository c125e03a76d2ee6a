// The consult room: the browser's camera and microphone go to the server's media hub over one RTCPeerConnection
// and everyone else's come back on it; signaling, chat and shared records travel over the room's WebSocket.
// The server makes every offer; this page answers (see teleconsult/api.py for the messages).
import { $, announce, api, codeText, el, fhir, fmtDate, fmtDateTime, me, page, renewSession, t } from './qilu.js';

const consultId = page.consult;
const message = $('#room-message');
const tiles = new Map(); // peer id -> {tile, video, tracks}
let consult = null;
let ws = null;
let pc = null;
let local = null;
let streams = {}; // mid -> {peer, kind, live}
let names = {}; // peer id -> name
let myPeer = null;
let negotiation = Promise.resolve();
let sending = false;
let finished = false;

function say(text, kind = 'info') {
  announce(message, text, kind);
}

function send(body) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(body));
}

// --- the consult and what can be shared ------------------------------------------------------------------

function recordLabel(r) {
  const date = r.effectiveDateTime || r.authoredOn || r.recordedDate || r.date || r.issued;
  let what = codeText(r.code || r.medicationCodeableConcept || r.type) || r.resourceType;
  if (r.valueQuantity) what += ` ${r.valueQuantity.value} ${r.valueQuantity.unit || ''}`;
  if (r.component) what += ` ${r.component.map((c) => c.valueQuantity?.value).filter((v) => v !== undefined).join('/')}`;
  return `${what}${date ? ` (${fmtDate(date)})` : ''}`;
}

async function loadShareable() {
  const select = $('#share-ref');
  select.replaceChildren(el('option', { value: '' }, t('state.loading')));
  try {
    const patient = consult.patient;
    const [observations, conditions, reports] = await Promise.all([
      fhir.search('Observation', [['patient', patient], ['_sort', '-date'], ['_count', '20']]),
      fhir.search('Condition', [['patient', patient], ['_count', '20']]),
      fhir.search('DiagnosticReport', [['patient', patient], ['_sort', '-date'], ['_count', '10']]),
    ]);
    const records = [...conditions, ...observations, ...reports];
    if (!records.length) {
      select.replaceChildren(el('option', { value: '' }, t('room.share_none')));
      return;
    }
    select.replaceChildren(...records.map((r) => el('option', { value: `${r.resourceType}/${r.id}` }, recordLabel(r))));
  } catch (error) {
    select.replaceChildren(el('option', { value: '' }, error.message));
  }
}

async function loadConsult() {
  try {
    consult = await api(`/api/consults/${encodeURIComponent(consultId)}`);
  } catch (error) {
    say(error.message, 'error');
    $('#join-form').hidden = true;
    return;
  }
  $('#room-about').textContent = [t('room.about'), fmtDateTime(consult.scheduled), consult.reason].filter(Boolean)
    .join(' · ');
  const back = $('#back-link');
  back.href = me.role === 'patient' ? '/me/referrals' : consult.referral
    ? `/referrals/${encodeURIComponent(consult.referral)}` : '/';
  back.hidden = false;
  const hosting = me.role === 'practitioner' && consult.host === me.fhirUser;
  // The opinion is written by any practitioner of the consult: whoever holds it, or one invited.
  if (hosting || (me.role === 'practitioner' && consult.invited.includes(me.fhirUser))) {
    $('#opinion-section').hidden = false;
  }
  if (hosting) $('#end').hidden = false;
  if (consult.status === 'ended') {
    say(t('room.ended'));
    $('#join-form').hidden = true;
  }
  loadShareable();
}

// --- media ---------------------------------------------------------------------------------------------

async function openCamera() {
  try {
    // Small video: the hub decodes and re-encodes every stream, and phones are on mobile data.
    local = await navigator.mediaDevices.getUserMedia({ audio: true,
      video: { width: { ideal: 320 }, height: { ideal: 240 }, frameRate: { ideal: 15 } } });
    $('#local-video').srcObject = local;
  } catch (error) {
    local = null;
    say(t('room.no_camera', { detail: error.message || error.name }), 'error');
  }
}

function tileFor(peer) {
  if (tiles.has(peer)) return tiles.get(peer);
  const name = names[peer] || '';
  const video = el('video', { class: 'remote', autoplay: true, playsinline: true, 'data-peer': peer,
    'aria-label': t('room.remote_video', { name }) });
  const label = el('span', { class: 'label' }, name);
  const tile = el('div', { class: 'tile', 'data-peer': peer }, video, label);
  $('#videos').append(tile);
  const entry = { tile, video, label, tracks: [] };
  tiles.set(peer, entry);
  return entry;
}

function renderRemotes() {
  if (!pc) return;
  const byPeer = new Map();
  for (const transceiver of pc.getTransceivers()) {
    const stream = streams[transceiver.mid];
    if (!stream || !stream.live || !transceiver.receiver.track) continue;
    if (!byPeer.has(stream.peer)) byPeer.set(stream.peer, []);
    byPeer.get(stream.peer).push(transceiver.receiver.track);
  }
  for (const [peer, tracks] of byPeer) {
    const entry = tileFor(peer);
    const same = tracks.length === entry.tracks.length && tracks.every((tr) => entry.tracks.includes(tr));
    if (!same) {
      entry.tracks = tracks;
      entry.video.srcObject = new MediaStream(tracks);
      entry.video.play().catch(() => {
        // Autoplay with sound refused: one click plays it.
        const play = el('button', { type: 'button', class: 'primary' }, t('room.play', { name: names[peer] || '' }));
        play.addEventListener('click', () => { entry.video.play(); play.remove(); });
        entry.tile.append(play);
      });
    }
  }
  for (const [peer, entry] of tiles) {
    if (!byPeer.has(peer)) {
      entry.tile.remove();
      tiles.delete(peer);
    }
  }
  $('#media-state').textContent = byPeer.size ? $('#media-state').textContent : t('room.waiting');
}

async function answer(offer) {
  Object.assign(streams, offer.streams || {});
  await pc.setRemoteDescription({ type: 'offer', sdp: offer.sdp });
  if (!sending && local) {
    // The hub's first two m-lines receive what this participant sends: put the camera and microphone on them.
    for (const track of local.getTracks()) {
      const line = pc.getTransceivers().find((tr) => tr.receiver.track?.kind === track.kind && !(tr.mid in streams)
        && !tr.sender.track);
      if (line) {
        line.direction = 'sendonly';
        await line.sender.replaceTrack(track);
        line.sender.setStreams?.(local);
      }
    }
    sending = true;
  }
  await pc.setLocalDescription(await pc.createAnswer());
  send({ type: 'answer', sdp: pc.localDescription.sdp });
  renderRemotes();
}

function createConnection(iceServers) {
  pc = new RTCPeerConnection({ iceServers: iceServers || [], bundlePolicy: 'max-bundle' });
  pc.addEventListener('icecandidate', (event) => {
    send({ type: 'candidate', candidate: event.candidate ? event.candidate.candidate : '',
      sdpMid: event.candidate?.sdpMid ?? null, sdpMLineIndex: event.candidate?.sdpMLineIndex ?? null });
  });
  pc.addEventListener('track', renderRemotes);
  pc.addEventListener('connectionstatechange', () => {
    const state = pc.connectionState;
    $('#media-state').textContent = state === 'connected' ? t('room.media_ok')
      : state === 'failed' ? t('room.error', { detail: state }) : t('room.media_connecting');
  });
}

// --- people, chat, shares -------------------------------------------------------------------------------

function updatePeers(peers, recording) {
  names = Object.fromEntries(peers.map((p) => [p.peer, p.name || p.who]));
  $('#people').replaceChildren(...peers.map((p) => el('li', { 'data-peer': p.peer },
    p.peer === myPeer ? `${p.name} (${t('room.you')})` : p.name || p.who, p.host ? ' ★' : '')));
  const state = $('#recording-state');
  state.textContent = recording ? t('room.recording_on') : t('room.recording_off');
  state.className = recording ? 'recording-on' : 'muted';
  for (const [peer, entry] of tiles) {
    entry.label.textContent = names[peer] || '';
    entry.video.setAttribute('aria-label', t('room.remote_video', { name: names[peer] || '' }));
  }
}

function appendChat(item) {
  const log = $('#chat-log');
  log.append(item);
  log.scrollTop = log.scrollHeight;
}

async function shareLine(msg) {
  const item = el('li', { class: 'share' }, t('room.shared', { name: msg.from?.name || '', what: msg.reference }),
    msg.note ? ` — ${msg.note}` : '');
  appendChat(item);
  try {
    const record = await fhir.readRef(msg.reference);
    item.firstChild.textContent = t('room.shared', { name: msg.from?.name || '', what: recordLabel(record) });
  } catch {
    // The reference stays as the words.
  }
}

function onMessage(msg) {
  switch (msg.type) {
    case 'joined':
      myPeer = msg.peer;
      createConnection(msg.iceServers);
      updatePeers(msg.peers || [], msg.recording);
      $('#join-form').hidden = true;
      $('#room').hidden = false;
      say(t('room.joined'), 'ok');
      $('#media-state').textContent = t('room.media_connecting');
      break;
    case 'offer':
      negotiation = negotiation.then(() => answer(msg)).catch((error) => say(t('room.error', { detail: error.message }),
        'error'));
      break;
    case 'peers':
      updatePeers(msg.peers || [], msg.recording);
      break;
    case 'chat':
      appendChat(el('li', { class: 'chat' }, el('strong', {}, msg.from?.peer === myPeer ? t('room.you')
        : msg.from?.name || ''), '：', msg.text));
      break;
    case 'share':
      shareLine(msg);
      break;
    case 'ended':
      finished = true;
      say(t('room.ended'), 'info');
      break;
    case 'error':
      say(t('room.error', { detail: msg.message || msg.error }), 'error');
      break;
    default:
      break;
  }
}

function stopMedia() {
  pc?.close();
  pc = null;
  sending = false;
  streams = {};
  for (const entry of tiles.values()) entry.tile.remove();
  tiles.clear();
}

function connect(renewed) {
  const button = $('#join-button');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  // The socket carries the page's session cookie (same origin): no token is ever put in the page.
  ws = new WebSocket(`${scheme}://${location.host}/api/consults/${encodeURIComponent(consultId)}/ws`);
  ws.addEventListener('open', () => send({ type: 'join', consent: $('#record-consent').checked }));
  ws.addEventListener('message', (e) => onMessage(JSON.parse(e.data)));
  ws.addEventListener('close', async (e) => {
    stopMedia();
    if (e.code === 4401 && !renewed && !myPeer && await renewSession()) {
      connect(true); // the session's access token had expired: renewed, join again once
      return;
    }
    button.disabled = false;
    $('#room').hidden = true;
    if (finished) {
      say(t('room.ended'));
      return;
    }
    $('#join-form').hidden = false;
    if (e.code !== 1000) say(t('room.closed', { detail: e.reason || e.code }), 'error');
  });
}

async function join(event) {
  event.preventDefault();
  $('#join-button').disabled = true;
  say(t('room.joining'));
  if (!local) await openCamera();
  myPeer = null;
  connect(false);
}

$('#join-form').addEventListener('submit', join);

$('#mute').addEventListener('click', (event) => {
  const track = local?.getAudioTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  event.target.setAttribute('aria-pressed', String(!track.enabled));
  event.target.textContent = track.enabled ? t('room.mute') : t('room.unmute');
});

$('#camera').addEventListener('click', (event) => {
  const track = local?.getVideoTracks()[0];
  if (!track) return;
  track.enabled = !track.enabled;
  event.target.setAttribute('aria-pressed', String(!track.enabled));
  event.target.textContent = track.enabled ? t('room.camera_off') : t('room.camera_on');
});

$('#leave').addEventListener('click', () => {
  send({ type: 'leave' });
  say(t('room.left'));
});

$('#end').addEventListener('click', async (event) => {
  event.target.disabled = true;
  try {
    await api(`/api/consults/${encodeURIComponent(consultId)}/end`, { json: {} });
  } catch (error) {
    say(error.message, 'error');
    event.target.disabled = false;
  }
});

$('#chat-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const input = $('#chat-text');
  const text = input.value.trim();
  if (!text) return;
  send({ type: 'chat', text });
  input.value = '';
});

$('#share-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const reference = $('#share-ref').value;
  if (!reference) return;
  send({ type: 'share', reference, note: $('#share-note').value.trim() || null });
  $('#share-note').value = '';
});

$('#opinion-form').addEventListener('submit', async (event) => {
  event.preventDefault();
  const result = $('#opinion-result');
  const button = $('#opinion-submit');
  button.disabled = true;
  result.hidden = false;
  result.className = 'state';
  result.textContent = t('state.loading');
  try {
    await api(`/api/consults/${encodeURIComponent(consultId)}/opinion`, { json: {
      text: $('#opinion-text').value.trim(), status: $('#opinion-final').checked ? 'final' : 'preliminary' } });
    result.className = 'alert ok';
    result.setAttribute('role', 'status');
    result.textContent = t('room.opinion_saved');
  } catch (error) {
    result.className = 'alert error';
    result.setAttribute('role', 'alert');
    result.textContent = error.message;
    button.disabled = false;
  }
});

window.addEventListener('pagehide', () => {
  send({ type: 'leave' });
  local?.getTracks().forEach((track) => track.stop());
});

loadConsult();
