// The live plots of mmdemo's studio (runs in the browser, loaded by app.py with gr.HTML(js_on_load=...)).
// Builds the figure once, then extends it with each one-point payload (Plotly.extendTraces)
// instead of receiving whole figures; keeps the last N points. A Plotly redraw of the figure
// costs 100 ms or more, so redraws are batched (see gap()); meanwhile each new point is drawn at once on
// a transparent canvas over the figure (the "live edge": the prediction's dot, the smoothed line,
// the contributions and the weights, at their places on the axes), until the next redraw takes them in.
// The time axis is set here, not autoranged: the last 60 s and LEAD s ahead, where new points land.
const el = element.querySelector('.mm-live-plot');
const C = __COLORS__;  // filled in by app.py
const L = {text: 'words', audio: 'voice', vision: 'face'};
const M = ['text', 'audio', 'vision'];
const N = 1200;  // points kept: 60 s at 20 updates/s
window.mmLive = {points: 0, latencies: [], framePlots: [], draws: [], shown: [], fusion: null, ema: null, lastT: -1};
const WINDOW = 60, LEAD = 8;
let edge = null, edgePoints = [], tmax = 0;
function edgeCanvas() {
  if (edge && edge.isConnected) return edge;
  edge = document.createElement('canvas');
  edge.className = 'mm-live-edge';
  el.parentElement.style.position = 'relative';
  el.parentElement.appendChild(edge);
  return edge;
}
let edgeDone = 0;  // how many of edgePoints the canvas shows
function drawEdge(full) {
  // the points not yet in the figure, on the canvas over it (Plotly's own axis mapping): the
  // prediction's dot and the smoothed line in the sentiment panel, each modality's contribution
  // line and the top of each stacked weight. The axes change only when the figure is redrawn, so
  // between redraws only the new points are drawn (full: start again, after a redraw or a resize)
  const fl = el._fullLayout;
  if (!fl || !fl.xaxis || !fl.yaxis || !fl.xaxis.l2p) return false;
  const cv = edgeCanvas();
  if (cv.width !== el.clientWidth || cv.height !== el.clientHeight) { cv.width = el.clientWidth; cv.height = el.clientHeight; full = true; }
  cv.style.left = el.offsetLeft + 'px'; cv.style.top = el.offsetTop + 'px';
  const g = cv.getContext('2d');
  if (full || edgeDone > edgePoints.length) { g.clearRect(0, 0, cv.width, cv.height); edgeDone = 0; }
  const xa = fl.xaxis, X = t => xa._offset + xa.l2p(t);
  const mapY = ax => {
    if (!ax || !ax.l2p || !ax.range) return null;
    const lo = Math.min(ax.range[0], ax.range[1]), hi = Math.max(ax.range[0], ax.range[1]);
    return v => ax._offset + ax.l2p(Math.max(lo, Math.min(hi, v)));
  };
  const Y = mapY(fl.yaxis), Y2 = fl.yaxis2 && fl.yaxis2.l2p ? (v => fl.yaxis2._offset + fl.yaxis2.l2p(v)) : null, Y3 = mapY(fl.yaxis3);
  if (!Y) return false;
  const seg = (x0, y0, x1, y1, color, width) => {
    g.strokeStyle = color; g.lineWidth = width; g.beginPath(); g.moveTo(x0, y0); g.lineTo(x1, y1); g.stroke();
  };
  const stack = q => { let c = 0; return M.map(m => (c += (q.w && typeof q.w[m] === 'number') ? q.w[m] : 0)); };
  const right = xa._offset + xa._length;
  let prev = edgeDone ? edgePoints[edgeDone - 1] : lastDrawn, all = true;
  for (let i = edgeDone; i < edgePoints.length; i++) {
    const q = edgePoints[i];
    if (X(q.t) > right) { all = false; break; }
    if (prev) {
      const x0 = X(prev.t), x1 = X(q.t);
      seg(x0, Y(prev.ema), x1, Y(q.ema), '#111', 2);
      if (Y2) {
        // the contributions' axis follows the data at each redraw: a value beyond its last range
        // is cut at the panel's edge (not flattened onto it) until the next redraw re-ranges it
        const ya2 = fl.yaxis2;
        g.save(); g.beginPath(); g.rect(xa._offset, ya2._offset, xa._length, ya2._length); g.clip();
        for (const m of M) {
          if (typeof prev.shap[m] === 'number' && typeof q.shap[m] === 'number') seg(x0, Y2(prev.shap[m]), x1, Y2(q.shap[m]), C[m], 1.5);
        }
        g.restore();
      }
      if (Y3 && prev.w && q.w) {
        const a = stack(prev), b = stack(q);
        M.forEach((m, i) => seg(x0, Y3(a[i]), x1, Y3(b[i]), C[m], 1));
      }
    }
    g.fillStyle = '#555'; g.beginPath(); g.arc(X(q.t), Y(q.pred), 2, 0, 2 * Math.PI); g.fill();
    prev = q; edgeDone = i + 1;
  }
  return all;
}
let lastDrawn = null;  // the newest point the figure itself shows
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
    xaxis: {title: {text: 'time (s)'}, anchor: 'y3', autorange: false, range: [0, WINDOW + LEAD]},
    yaxis: {domain: [0.58, 1], range: [-3.1, 3.1], title: {text: 'sentiment'}},
    yaxis2: {domain: [0.24, 0.54], title: {text: 'Shapley'}, zeroline: true},
    yaxis3: {domain: [0, 0.18], range: [0, 1], title: {text: 'weights'}},
    shapes: [band(-3.1, -0.5, 'rgba(198,40,40,0.09)'), band(-0.5, 0.5, 'rgba(97,97,97,0.07)'), band(0.5, 3.1, 'rgba(46,125,50,0.09)')],
    annotations: [],
  };
  Plotly.newPlot(el, traces, layout, {displayModeBar: false, responsive: true});
  // whenever Plotly draws the figure (a redraw, a relayout, a resize, a zoom) the axes may have
  // moved: the next point redraws the whole edge
  el.on('plotly_afterplot', () => { edgeDone = Infinity; });
  edgePoints = []; lastDrawn = null; tmax = 0; edgeDone = 0;
  if (edge) edge.getContext('2d').clearRect(0, 0, edge.width, edge.height);
}
const pending = {x: [[], [], [], [], [], [], [], []], y: [[], [], [], [], [], [], [], []]};
// raw points (one SVG node each, the costly part of a redraw): the last 300 (15-40 s); lines for 60 s
const KEEP = {x: [300, N, N, N, N, N, N, N], y: [300, N, N, N, N, N, N, N]};
let scheduled = false, lastDraw = 0, drawMs = 20;
// The canvas draws every new point of every panel at once, so the figure itself is redrawn only
// every few seconds (1-6 s: for at most a fortieth of the page's time while a redraw takes under
// 150 ms); LEAD s ahead on the time axis leave room for the points of the seconds in between. A
// redraw holds the page's only thread (100-150 ms on a busy 2-core machine): a result arriving
// meanwhile waits for it. At a redraw a second, one result in ten was held back, enough to set
// the 95th percentile of the latency.
const gap = () => Math.min(6000, Math.max(1000, 40 * drawMs));
function draw() {
  scheduled = false;
  if (!pending.x[0].length) return;
  const t0 = performance.now();
  const drawn = edgePoints.length;
  const lo = Math.max(0, tmax - WINDOW);
  el.layout.xaxis.range = [lo, lo + WINDOW + LEAD];  // taken by the redraw extendTraces makes
  Plotly.extendTraces(el, {x: pending.x, y: pending.y}, [0, 1, 2, 3, 4, 5, 6, 7], KEEP);
  for (let i = 0; i < 8; i++) { pending.x[i] = []; pending.y[i] = []; }
  if (drawn) lastDrawn = edgePoints[drawn - 1];
  edgePoints = edgePoints.slice(drawn);
  drawEdge(true);
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
  tmax = Math.max(tmax, d.t);
  edgePoints.push({t: d.t, pred: d.pred, ema: window.mmLive.ema, shap: d.shap, w: d.w || null});
  if (drawEdge(false)) {
    window.mmLive.shown.push(Date.now());
    if (window.mmLive.shown.length > 5000) window.mmLive.shown.shift();
  }
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
