// The live plots of mmdemo's studio (runs in the browser, loaded by app.py with gr.HTML(js_on_load=...)).
// Builds the figure once, then extends it with each one-point payload (Plotly.extendTraces)
// instead of receiving whole figures; keeps the last 600 points.
const el = element.querySelector('.mm-live-plot');
const C = __COLORS__;  // filled in by app.py
const L = {text: 'words', audio: 'voice', vision: 'face'};
const M = ['text', 'audio', 'vision'];
const N = 600;
window.mmLive = {points: 0, latencies: [], framePlots: [], draws: [], fusion: null, ema: null, lastT: -1};
function init() {
  const traces = [
    {x: [], y: [], mode: 'markers', name: 'prediction', marker: {size: 4, color: '#555'}, xaxis: 'x', yaxis: 'y'},
    {x: [], y: [], mode: 'lines', name: 'smoothed', line: {color: '#111', width: 2}, xaxis: 'x', yaxis: 'y'},
  ];
  for (const m of M) traces.push({x: [], y: [], mode: 'lines', name: L[m] + ' contribution', fill: 'tozeroy',
                                  line: {color: C[m], width: 1.5}, xaxis: 'x', yaxis: 'y2'});
  for (const m of M) traces.push({x: [], y: [], mode: 'lines', name: L[m] + ' weight', stackgroup: 'w',
                                  line: {color: C[m], width: 0.5}, xaxis: 'x', yaxis: 'y3', showlegend: false});
  const band = (y0, y1, c) => ({type: 'rect', xref: 'paper', yref: 'y', x0: 0, x1: 1, y0: y0, y1: y1, fillcolor: c, line: {width: 0}, layer: 'below'});
  const layout = {
    height: 580, margin: {l: 45, r: 10, t: 20, b: 55}, showlegend: true, legend: {orientation: 'h', y: -0.14},
    xaxis: {title: {text: 'time (s)'}, anchor: 'y3'},
    yaxis: {domain: [0.58, 1], range: [-3.1, 3.1], title: {text: 'sentiment'}},
    yaxis2: {domain: [0.24, 0.54], title: {text: 'Shapley'}, zeroline: true},
    yaxis3: {domain: [0, 0.18], range: [0, 1], title: {text: 'weights'}},
    shapes: [band(-3.1, -0.5, 'rgba(198,40,40,0.09)'), band(-0.5, 0.5, 'rgba(97,97,97,0.07)'), band(0.5, 3.1, 'rgba(46,125,50,0.09)')],
    annotations: [],
  };
  Plotly.newPlot(el, traces, layout, {displayModeBar: false, responsive: true});
}
const pending = {x: [[], [], [], [], [], [], [], []], y: [[], [], [], [], [], [], [], []]};
// raw points (one SVG node each, the costly part of a redraw) for the last 15 s; lines for 60 s
const KEEP = {x: [150, N, N, N, N, N, N, N], y: [150, N, N, N, N, N, N, N]};
let scheduled = false, lastDraw = 0, drawMs = 20;
// Redraw as soon as a point arrives unless redraws would take more than two thirds of the page's
// time: then points arriving meanwhile are drawn together in one call (slow machines, many points).
const gap = () => Math.max(30, 1.5 * drawMs);
function draw() {
  scheduled = false;
  if (!pending.x[0].length) return;
  const t0 = performance.now();
  Plotly.extendTraces(el, {x: pending.x, y: pending.y}, [0, 1, 2, 3, 4, 5, 6, 7], KEEP);
  for (let i = 0; i < 8; i++) { pending.x[i] = []; pending.y[i] = []; }
  lastDraw = performance.now();
  drawMs = 0.8 * drawMs + 0.2 * (lastDraw - t0);
  window.mmLive.drawMs = drawMs;
  window.mmLive.draws.push(Date.now());
  if (window.mmLive.draws.length > 5000) window.mmLive.draws.shift();
}
function push() {
  if (!props.value) return;
  let d; try { d = JSON.parse(props.value); } catch (e) { return; }
  feed(d);
}
// one point: from this component's value (HTTP streaming) or from the WebRTC data channel (webrtc.js)
function feed(d) {
  if (d.reset) {
    window.mmLive.ema = null; window.mmLive.lastT = -1;
    for (let i = 0; i < 8; i++) { pending.x[i] = []; pending.y[i] = []; }  // nothing of the old session is drawn
    init(); return;
  }
  if (d.t < window.mmLive.lastT) return;  // two streams: keep time order
  window.mmLive.lastT = d.t;
  const a = 0.3;
  window.mmLive.ema = window.mmLive.ema === null ? d.pred : a * d.pred + (1 - a) * window.mmLive.ema;
  const ys = [d.pred, window.mmLive.ema].concat(M.map(m => d.shap[m]), M.map(m => d.w ? d.w[m] : null));
  for (let i = 0; i < 8; i++) { pending.x[i].push(d.t); pending.y[i].push(ys[i]); }
  if (!scheduled) {
    scheduled = true;
    const wait = gap() - (performance.now() - lastDraw);
    if (wait <= 0) requestAnimationFrame(draw); else setTimeout(() => requestAnimationFrame(draw), wait);
  }
  if (window.mmLive.fusion !== null && window.mmLive.fusion !== d.fusion) {
    const anns = (el.layout.annotations || []).concat([{x: d.t, y: 3, xref: 'x', yref: 'y', text: d.fusion, showarrow: true, arrowhead: 0, ay: -18, font: {size: 10}}]);
    Plotly.relayout(el, {annotations: anns.slice(-8)});
  }
  window.mmLive.fusion = d.fusion;
  window.mmLive.points += 1;
  window.mmLive.latencies.push(Date.now() - d.sent);
  if (window.mmLive.latencies.length > 2000) window.mmLive.latencies.shift();
  if (d.recv) { window.mmLive.recv = window.mmLive.recv || []; window.mmLive.recv.push([d.recv, d.sent, Date.now()]); if (window.mmLive.recv.length > 2000) window.mmLive.recv.shift(); }
  if (d.src === 'frame') { window.mmLive.framePlots.push(Date.now()); if (window.mmLive.framePlots.length > 5000) window.mmLive.framePlots.shift(); }
}
if (typeof Plotly === 'undefined') {
  el.innerHTML = '<p>plotly.js did not load: live plots are unavailable.</p>';
} else {
  init();
  window.mmLive.feed = feed;
  watch('value', push);
}
