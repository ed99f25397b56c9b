// mmdemo's WebRTC transport (runs in the browser; loaded by app.py with gr.HTML(js_on_load=...) when
// the app runs with --transport webrtc). The camera and microphone go to the server as media tracks
// of one RTCPeerConnection; every update comes back over its data channel and feeds the live plot
// (window.mmLive.feed), the readout, the status and a face box drawn over the local video.
// props.value is this page's session token (set when the page loads).
const video = element.querySelector('.mm-rtc-video');
const overlay = element.querySelector('.mm-rtc-overlay');
const startBtn = element.querySelector('.mm-rtc-start');
const stopBtn = element.querySelector('.mm-rtc-stop');
const state = element.querySelector('.mm-rtc-state');
let pc = null, stream = null, dc = null, stopped = null, serverWhy = null;
window.mmRtc = {messages: 0, frames: [], faces: [], state: 'idle', error: null, lastWord: false};

function say(text) { state.textContent = text; window.mmRtc.state = text; }

function replace(selector, html) {
  const el = document.querySelector(selector);
  if (el && html) el.outerHTML = html;
}

function drawBox(m) {
  const w = video.clientWidth, h = video.clientHeight;
  if (overlay.width !== w || overlay.height !== h) { overlay.width = w; overlay.height = h; }  // (a resize reallocates it)
  const g = overlay.getContext('2d');
  g.clearRect(0, 0, w, h);
  if (!m.box || !m.size) return;
  const sx = w / m.size[0], sy = h / m.size[1];
  const [x0, y0, x1, y1] = m.box;
  // the local video is mirrored (as a mirror would show you): mirror the box too
  const left = w - x1 * sx;
  g.strokeStyle = '#50c850'; g.lineWidth = 2;
  g.strokeRect(left, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
  if (m.expression) { g.fillStyle = '#50c850'; g.font = '13px sans-serif'; g.fillText(m.expression, left, Math.max(12, y0 * sy - 5)); }
}

// the readout, status and transcript are redrawn at most 5 times a second (the newest wins); the
// plot point and the face box go out with every message
let panel = null, panelTimer = null;
function showPanel() {
  panelTimer = null;
  const m = panel; panel = null;
  if (!m) return;
  replace('#readout .mm-readout', m.readout);
  replace('#status .mm-status-rows', m.status);
  if (typeof m.transcript === 'string') {
    const t = document.querySelector('#transcript textarea');
    if (t && t.value !== m.transcript) t.value = m.transcript;
  }
}

function handle(m) {
  const arrived = Date.now();  // before the plot draws it (the app bench matches the two)
  window.mmRtc.messages += 1;
  if (m.feed && window.mmLive && window.mmLive.feed) window.mmLive.feed(m.feed);
  panel = m;
  if ((m.feed && m.feed.src) === 'stopped') {  // the server's last word: shown at once
    clearTimeout(panelTimer); showPanel(); drawBox(m);
    window.mmRtc.lastWord = true;
    if (stopped) stopped();
    else if (typeof m.why === 'string') { serverWhy = m.why; stop(m.why); }  // the server ended the connection (say, no media came for a minute)
    return;
  }
  if (!panelTimer) panelTimer = setTimeout(showPanel, 200);
  if (m.pts !== undefined) {
    window.mmRtc.frames.push([m.pts, arrived, m.recv, m.feed ? m.feed.sent : null, !!m.face_read]);
    if (window.mmRtc.frames.length > 5000) window.mmRtc.frames.shift();
    drawBox(m);
  } else if (m.face_pts !== undefined) {  // a face read beside the frames: its box and label
    window.mmRtc.faces.push([m.face_pts, arrived, m.recv, m.feed ? m.feed.sent : null]);
    if (window.mmRtc.faces.length > 5000) window.mmRtc.faces.shift();
    drawBox(m);
  }
}

function gathered(conn) {
  if (conn.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise(resolve => {
    const check = () => { if (conn.iceGatheringState === 'complete') { conn.removeEventListener('icegatheringstatechange', check); resolve(); } };
    conn.addEventListener('icegatheringstatechange', check);
    setTimeout(resolve, 3000);  // on a LAN the host candidates are enough
  });
}

async function start() {
  if (pc) return;
  window.mmRtc.lastWord = false;
  serverWhy = null;
  startBtn.disabled = true;
  for (let i = 0; i < 150 && !props.value; i++) {  // the session token arrives with the page's load event
    say('waiting for the session…');
    await new Promise(r => setTimeout(r, 100));
  }
  const token = props.value;
  if (!token) { startBtn.disabled = false; say('the session is not ready: reload the page'); return; }
  try {
    say('asking for the camera and microphone…');
    stream = await navigator.mediaDevices.getUserMedia({
      // a face at arm's length is ~100 px: 320x240 is enough and cheap to encode; 30 frames/s so that the
      // newest frame, which the server takes whenever it is free, is at most 33 ms old
      video: {width: {ideal: 320}, height: {ideal: 240}, frameRate: {ideal: 30}},
      audio: {channelCount: 1, echoCancellation: true, noiseSuppression: false},
    });
    video.srcObject = stream;
    pc = new RTCPeerConnection({iceServers: []});
    dc = pc.createDataChannel('results', {ordered: true, maxRetransmits: 0});
    dc.onmessage = e => { try { handle(JSON.parse(e.data)); } catch (err) { console.warn('mmdemo: bad message', err); } };
    // the server closed the channel (its last message, sent without retransmits, may not have come): say so at once
    dc.onclose = () => { if (pc) stop(serverWhy || 'the server closed the connection'); };
    pc.addEventListener('connectionstatechange', () => {
      say('WebRTC: ' + pc.connectionState);
      if (pc && (pc.connectionState === 'failed' || pc.connectionState === 'disconnected')) stop('the connection was lost (' + pc.connectionState + ')');
    });
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    say('connecting…');
    const r = await fetch(new URL('mmdemo/rtc/offer', window.location.href), {
      method: 'POST', headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({token: token, sdp: pc.localDescription.sdp, type: 'offer'}),
    });
    const answer = await r.json();
    if (!r.ok) throw new Error(answer.error || ('the server refused the connection (' + r.status + ')'));
    await pc.setRemoteDescription(answer);
    stopBtn.disabled = false;
  } catch (err) {
    window.mmRtc.error = String(err && err.message || err);
    stop('could not start: ' + window.mmRtc.error);
  }
}

async function stop(why) {
  if (stream) { for (const t of stream.getTracks()) t.stop(); stream = null; }
  if (why === 'stopped' && pc && dc && dc.readyState === 'open') {
    // ask the server for its last update (camera and microphone stopped) before hanging up
    say('stopping…'); stopBtn.disabled = true;
    await new Promise(resolve => { stopped = resolve; dc.send(JSON.stringify({stop: true})); setTimeout(resolve, 3000); });
    stopped = null;
  }
  if (pc) { pc.close(); pc = null; dc = null; }
  video.srcObject = null;
  overlay.getContext('2d').clearRect(0, 0, overlay.width, overlay.height);
  startBtn.disabled = false; stopBtn.disabled = true;
  say(typeof why === 'string' ? why : 'stopped');
}

watch('value', () => { window.mmRtc.ready = !!props.value; });
window.mmRtc.ready = !!props.value;
startBtn.addEventListener('click', start);
stopBtn.addEventListener('click', () => stop('stopped'));
window.addEventListener('beforeunload', () => { if (pc) pc.close(); });
say(window.RTCPeerConnection ? 'WebRTC: not connected' : 'this browser has no WebRTC: run the app with --transport http');
if (!window.RTCPeerConnection) startBtn.disabled = true;
