// shmpipe live view: one WebSocket for the frames, the HTTP API for traces, pixels and raw modules.
// Everything shown is driven by /api/outputs: images, profiles and traces are whatever the chain
// declares. No library: plain canvas drawing.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  outputs: {}, colormaps: {}, paused: false, image: null, zoom: null, drag: null,
  reference: null, lastProfile: null, waterfall: [], wfMax: 200, traces: {}, raw: null,
  connected: false, lastStatus: null,
};
const COLORS = ["#8ab4f8", "#ffd866", "#f28b82", "#81c995", "#c58af9", "#fdd663", "#78d9ec"];

function fmt(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}
function tick(v, step) {
  // Enough digits to tell neighbouring ticks apart (a sum of 6.95e5 varying by 100).
  if (v === 0) return "0";
  const digits = Math.max(2, Math.min(10, Math.ceil(Math.log10(Math.abs(v) / Math.abs(step || 1))) + 1));
  const a = Math.abs(v);
  return a >= 1e6 || a < 1e-3 ? v.toExponential(Math.max(1, digits - 1)) : Number(v.toPrecision(digits)).toString();
}
function label(name) {
  const o = state.outputs[name];
  if (!o) return name;
  const ln = o.long_name && o.long_name !== name ? `${o.long_name} (${name})` : name;
  return o.unit ? `${ln} [${o.unit}]` : ln;
}

// -- set-up -----------------------------------------------------------------------------
async function init() {
  const [outs, cmaps] = await Promise.all([
    fetch("/api/outputs").then((r) => r.json()),
    fetch("/api/colormaps").then((r) => r.json()),
  ]);
  state.outputs = outs.outputs;
  state.colormaps = cmaps;
  state.history = outs.history;
  const images = Object.keys(state.outputs).filter((n) => state.outputs[n].kind === "image");
  fill($("img-name"), images, outs.default_image);
  fill($("img-cmap"), Object.keys(cmaps), "viridis");
  const profiles = Object.keys(state.outputs).filter((n) => state.outputs[n].kind === "profile");
  const preferred = profiles.find((n) => state.outputs[n].errors) || profiles[0];
  fill($("prof-name"), profiles, preferred);
  if (!profiles.length) $("profile-panel").hidden = true;
  const raw = state.outputs.raw;
  const mods = raw && raw.modules ? [...Array(raw.modules).keys()].map(String) : [];
  fill($("raw-module"), mods, "0");
  if (!mods.length) $("raw-panel").hidden = true;
  const traces = Object.keys(state.outputs).filter(
    (n) => state.outputs[n].kind === "trace" && state.history.includes(n));
  const tc = $("trace-choice");
  traces.forEach((n, i) => {
    const l = document.createElement("label");
    l.innerHTML = `<input type="checkbox" value="${n}" ${i === 0 ? "checked" : ""}> ${n}`;
    tc.appendChild(l);
  });
  if (!traces.length) $("trace-panel").hidden = true;
  for (const id of ["img-name", "img-scale", "img-cmap", "img-binning", "img-vmin", "img-vmax"]) {
    $(id).addEventListener("change", () => { if (id === "img-name") resetZoom(); sendWanted(); });
  }
  $("prof-name").addEventListener("change", () => { state.waterfall = []; state.reference = null;
    $("prof-unpin").disabled = true; drawProfile(); });
  $("prof-logy").addEventListener("change", () => { drawProfile(); drawWaterfall(); });
  $("prof-pin").addEventListener("click", () => {
    if (state.lastProfile) { state.reference = state.lastProfile; $("prof-unpin").disabled = false; }
    drawProfile();
  });
  $("prof-unpin").addEventListener("click", () => { state.reference = null;
    $("prof-unpin").disabled = true; drawProfile(); });
  $("pause").addEventListener("click", togglePause);
  $("img-unzoom").addEventListener("click", () => { resetZoom(); sendWanted(); });
  tc.addEventListener("change", drawTraces);
  $("hit-threshold").addEventListener("change", drawTraces);
  $("trace-window").addEventListener("change", drawTraces);
  setupZoom();
  drawColorbar();
  connect();
  setInterval(pollTraces, 1000);
  setInterval(pollRaw, 1000);
  pollTraces();
  window.addEventListener("resize", () => { drawProfile(); drawTraces(); drawWaterfall(); });
}

function fill(select, names, chosen) {
  select.innerHTML = "";
  for (const n of names) {
    const o = document.createElement("option");
    o.value = n; o.textContent = n; if (n === chosen) o.selected = true;
    select.appendChild(o);
  }
}

function togglePause() {
  state.paused = !state.paused;
  $("pause").textContent = state.paused ? "Resume" : "Pause";
  $("pause").classList.toggle("on", state.paused);
  sendWanted();
}

// -- the WebSocket ------------------------------------------------------------------------
let ws = null;
function connect() {
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`);
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { state.connected = true; $("s-conn").hidden = true; sendWanted(); };
  ws.onclose = () => { state.connected = false; $("s-conn").hidden = false; setTimeout(connect, 1000); };
  ws.onmessage = (ev) => onFrame(ev.data);
}

function wanted() {
  const img = { name: $("img-name").value, width: imageWidth(), scale: $("img-scale").value,
    cmap: $("img-cmap").value, binning: $("img-binning").value };
  const vmin = $("img-vmin").value.trim(), vmax = $("img-vmax").value.trim();
  if (vmin !== "") img.vmin = vmin;
  if (vmax !== "") img.vmax = vmax;
  if (state.zoom) Object.assign(img, state.zoom);
  return { image: img, paused: state.paused };
}
function sendWanted() {
  drawColorbar();
  if (ws && ws.readyState === 1) ws.send(JSON.stringify(wanted()));
}
function imageWidth() {
  const w = $("img").parentElement.clientWidth || 800;
  return Math.max(64, Math.min(4096, Math.round(w * (window.devicePixelRatio || 1))));
}

async function onFrame(buf) {
  const n = new DataView(buf).getUint32(0);
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buf, 4, n)));
  showStatus(header.status);
  if (state.paused || header.message_id === undefined) return;
  if (header.profiles) onProfiles(header);
  if (header.image_error) $("img-title").textContent = header.image_error;
  if (header.image && buf.byteLength > 4 + n) {
    const blob = new Blob([new Uint8Array(buf, 4 + n)], { type: "image/png" });
    const bmp = await createImageBitmap(blob);
    const c = $("img");
    c.width = bmp.width; c.height = bmp.height;
    c.getContext("2d").drawImage(bmp, 0, 0);
    const h = header.image;
    const region = h["X-Region"].split(",").map(Number);
    state.image = { name: h.name, region, factor: Number(h["X-Factor"]),
      vmin: Number(h["X-Vmin"]), vmax: Number(h["X-Vmax"]), stream: h["X-Stream"],
      mid: Number(h["X-Message-Id"]), shape: h["X-Shape"].split(",").map(Number) };
    $("cb-min").textContent = fmt(state.image.vmin);
    $("cb-max").textContent = fmt(state.image.vmax);
    const zoomed = state.zoom ? ` · zoom x ${region[0]}–${region[2]}, y ${region[1]}–${region[3]}` : "";
    $("img-title").textContent = `${label(h.name)} · stream ${h["X-Stream"]} · message ` +
      `${h["X-Message-Id"]} · ${state.image.shape[1]} × ${state.image.shape[0]} px` +
      (state.image.factor > 1 ? ` · ${$("img-binning").value} of ${state.image.factor}×${state.image.factor}` : "") + zoomed;
    c.dataset.mid = h["X-Message-Id"];
  }
}

function showStatus(s) {
  if (!s) return;
  state.lastStatus = s;
  $("s-run").textContent = s.run || "–";
  $("s-stream").textContent = s.stream ?? "–";
  $("s-mid").textContent = s.message_id ?? "–";
  $("s-rate").textContent = fmt(s.rate, 3);
  $("s-rate-in").textContent = fmt(s.rate_in, 3);
  $("s-frames").textContent = `${s.frames_in} in / ${s.frames_out} out`;
  $("s-ring").textContent = `${s.ring_used}/${s.ring_slots}`;
  $("s-workers").textContent = `${s.workers_busy}/${s.workers}`;
  $("s-errors").textContent = s.errors;
  $("s-errors").style.color = s.errors ? "#f28b82" : "";
  $("s-stale").hidden = !s.stale;
  $("s-age").textContent = s.age_s === null ? "ever" : `${fmt(s.age_s, 3)} s`;
}

// -- image: colour bar, zoom, pixel value -------------------------------------------------
function drawColorbar() {
  const lut = state.colormaps[$("img-cmap").value];
  if (!lut) return;
  const c = $("cb"), g = c.getContext("2d");
  for (let i = 0; i < 256; i++) {
    const [r, gg, b] = lut[255 - i];
    g.fillStyle = `rgb(${r},${gg},${b})`;
    g.fillRect(0, i, 16, 1);
  }
}

function toFull(ev) {
  const c = $("img"), rect = c.getBoundingClientRect(), im = state.image;
  if (!im) return null;
  const fx = (ev.clientX - rect.left) / rect.width, fy = (ev.clientY - rect.top) / rect.height;
  const [x0, y0, x1, y1] = im.region;
  return { x: Math.min(x1 - 1, Math.max(x0, Math.floor(x0 + fx * (x1 - x0)))),
    y: Math.min(y1 - 1, Math.max(y0, Math.floor(y0 + fy * (y1 - y0)))), fx, fy };
}

function setupZoom() {
  const c = $("img"), box = $("zoombox");
  let pending = null;
  c.addEventListener("mousedown", (ev) => { state.drag = { start: toFull(ev), sx: ev.offsetX, sy: ev.offsetY }; });
  c.addEventListener("mousemove", (ev) => {
    const p = toFull(ev);
    if (!p) return;
    if (state.drag) {
      box.hidden = false;
      const l = Math.min(state.drag.sx, ev.offsetX), t = Math.min(state.drag.sy, ev.offsetY);
      Object.assign(box.style, { left: `${l}px`, top: `${t}px`,
        width: `${Math.abs(ev.offsetX - state.drag.sx)}px`, height: `${Math.abs(ev.offsetY - state.drag.sy)}px` });
    }
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      const im = state.image;
      const r = await fetch(`/api/pixel/${im.name}?x=${p.x}&y=${p.y}`);
      const d = await r.json();
      $("img-cursor").textContent = r.ok
        ? `x ${p.x}, y ${p.y}: ${fmt(d.value, 6)} (message ${d.message_id})` : d.error;
    }, 80);
  });
  window.addEventListener("mouseup", (ev) => {
    if (!state.drag) return;
    const a = state.drag.start, b = toFull(ev);
    state.drag = null; box.hidden = true;
    if (!a || !b || Math.abs(a.x - b.x) < 4 || Math.abs(a.y - b.y) < 4) return;
    state.zoom = { x0: Math.min(a.x, b.x), y0: Math.min(a.y, b.y),
      x1: Math.max(a.x, b.x) + 1, y1: Math.max(a.y, b.y) + 1 };
    $("img-unzoom").disabled = false;
    sendWanted();
  });
}
function resetZoom() { state.zoom = null; $("img-unzoom").disabled = true; }

// -- plots ----------------------------------------------------------------------------------
function fitCanvas(c) {
  const w = c.clientWidth || c.width, h = c.height;
  if (c.width !== w) c.width = w;
  return { g: c.getContext("2d"), w, h };
}

function axes(g, w, h, xr, yr, xlab, ylab, logy) {
  const m = { l: 64, r: 12, t: 10, b: 34 };
  g.fillStyle = "#11131a"; g.fillRect(0, 0, w, h);
  g.strokeStyle = "#555c6a"; g.fillStyle = "#aab2c0"; g.font = "11px system-ui";
  g.strokeRect(m.l, m.t, w - m.l - m.r, h - m.t - m.b);
  const X = (x) => m.l + (x - xr[0]) / (xr[1] - xr[0] || 1) * (w - m.l - m.r);
  const ty = (y) => (logy ? Math.log10(Math.max(y, 1e-12)) : y);
  const Y = (y) => h - m.b - (ty(y) - yr[0]) / (yr[1] - yr[0] || 1) * (h - m.t - m.b);
  g.textAlign = "center";
  for (let i = 0; i <= 5; i++) {
    const x = xr[0] + (i / 5) * (xr[1] - xr[0]);
    // Message ids are whole numbers: no tick at 8.2.
    const xv = xlab === "message id" ? Math.round(x) : x;
    g.fillText(tick(xv, (xr[1] - xr[0]) / 5), X(xv), h - m.b + 13);
  }
  g.textAlign = "right";
  for (let i = 0; i <= 4; i++) {
    const v = yr[0] + (i / 4) * (yr[1] - yr[0]);
    const py = h - m.b - (i / 4) * (h - m.t - m.b);
    g.fillText(logy ? fmt(10 ** v, 3) : tick(v, (yr[1] - yr[0]) / 4), m.l - 4, py + 4);
  }
  g.textAlign = "center"; g.fillText(xlab, (m.l + w - m.r) / 2, h - 4);
  g.save(); g.translate(12, (m.t + h - m.b) / 2); g.rotate(-Math.PI / 2); g.fillText(ylab, 0, 0); g.restore();
  return { X, Y, m };
}

function range(vals, logy, pad = 0.05) {
  let lo = Infinity, hi = -Infinity;
  for (const v of vals) {
    if (v === null || !Number.isFinite(v) || (logy && v <= 0)) continue;
    const t = logy ? Math.log10(v) : v;
    if (t < lo) lo = t; if (t > hi) hi = t;
  }
  if (lo === Infinity) return [0, 1];
  if (lo === hi) return [lo - 1, hi + 1];
  return [lo - (hi - lo) * pad, hi + (hi - lo) * pad];
}

function onProfiles(header) {
  const p = header.profiles[$("prof-name").value];
  if (!p) return;
  p.stream = header.stream; p.message_id = header.message_id;
  state.lastProfile = p;
  state.waterfall.push(p.y);
  if (state.waterfall.length > state.wfMax) state.waterfall.shift();
  drawProfile(); drawWaterfall();
}

function drawProfile() {
  const p = state.lastProfile, c = $("profile");
  const { g, w, h } = fitCanvas(c);
  if (!p) { g.fillStyle = "#11131a"; g.fillRect(0, 0, w, h); return; }
  const logy = $("prof-logy").checked;
  const all = [...p.y];
  if (p.sigma) p.y.forEach((v, i) => { if (v !== null && p.sigma[i] !== null) all.push(v + p.sigma[i], v - p.sigma[i]); });
  if (state.reference) all.push(...state.reference.y);
  const xr = range(p.x, false, 0), yr = range(all, logy);
  const xlab = p.x_unit ? `${p.x_name} [${p.x_unit}]` : p.x_name;
  const { X, Y } = axes(g, w, h, xr, yr, xlab, label(p.name), logy);
  const line = (xs, ys, color, dash) => {
    g.strokeStyle = color; g.setLineDash(dash || []); g.beginPath();
    let up = false;
    ys.forEach((v, i) => {
      if (v === null || xs[i] === null || (logy && v <= 0)) { up = false; return; }
      if (up) g.lineTo(X(xs[i]), Y(v)); else g.moveTo(X(xs[i]), Y(v));
      up = true;
    });
    g.stroke(); g.setLineDash([]);
  };
  if (state.reference) line(state.reference.x, state.reference.y, "#f28b82", [5, 4]);
  if (p.sigma) {
    g.strokeStyle = "rgba(138,180,248,0.45)";
    p.y.forEach((v, i) => {
      const s = p.sigma[i];
      if (v === null || s === null || p.x[i] === null) return;
      const lo = logy && v - s <= 0 ? v : v - s;
      g.beginPath(); g.moveTo(X(p.x[i]), Y(lo)); g.lineTo(X(p.x[i]), Y(v + s)); g.stroke();
    });
  }
  line(p.x, p.y, "#8ab4f8");
  let t = `${label(p.name)} · stream ${p.stream} · message ${p.message_id}`;
  if (p.sigma) t += " · bars: ±1σ";
  if (state.reference) t += ` · dashed red: reference (message ${state.reference.message_id})`;
  $("prof-title").textContent = t;
}

function drawWaterfall() {
  const c = $("waterfall"), rows = state.waterfall;
  $("wf-n").textContent = rows.length;
  if (!rows.length) return;
  const n = rows[0].length, logy = $("prof-logy").checked;
  const lut = state.colormaps[$("img-cmap").value] || state.colormaps.viridis;
  const vals = rows.flat().filter((v) => v !== null && (!logy || v > 0)).map((v) => (logy ? Math.log10(v) : v));
  if (!vals.length) return;
  vals.sort((a, b) => a - b);
  const lo = vals[Math.floor(vals.length * 0.01)], hi = vals[Math.floor(vals.length * 0.99)] || lo + 1;
  c.width = n; c.height = rows.length;
  const g = c.getContext("2d"), img = g.createImageData(n, rows.length);
  const off = 0;
  rows.forEach((row, r) => {
    row.forEach((v, i) => {
      let k = 0;
      if (v !== null && (!logy || v > 0)) {
        const t = ((logy ? Math.log10(v) : v) - lo) / (hi - lo || 1);
        k = Math.max(0, Math.min(255, Math.round(t * 255)));
      }
      const o = ((off + r) * n + i) * 4, [R, G, B] = lut[k];
      img.data[o] = R; img.data[o + 1] = G; img.data[o + 2] = B; img.data[o + 3] = 255;
    });
  });
  g.putImageData(img, 0, 0);
}

// -- traces --------------------------------------------------------------------------------
async function pollTraces() {
  if (state.paused) return;
  const names = [...document.querySelectorAll("#trace-choice input:checked")].map((e) => e.value);
  await Promise.all(names.map(async (n) => {
    const r = await fetch(`/api/trace/${n}?last=2000`);
    if (r.ok) state.traces[n] = await r.json();
  }));
  drawTraces();
}

function drawTraces() {
  // One strip per selected trace, each on its own scale (a sum and a maximum differ by 10^4).
  const c = $("trace");
  const names = [...document.querySelectorAll("#trace-choice input:checked")].map((e) => e.value)
    .filter((n) => state.traces[n] && state.traces[n].values.length);
  const strip = 150;
  c.height = strip * Math.max(1, names.length);
  const { g, w } = fitCanvas(c);
  g.fillStyle = "#11131a"; g.fillRect(0, 0, w, c.height);
  if (!names.length) { $("trace-title").textContent = ""; return; }
  const win = Math.max(1, parseInt($("trace-window").value, 10) || 50);
  const thr = parseFloat($("hit-threshold").value) || 0;
  const ids = names.flatMap((n) => state.traces[n].message_id);
  const xr = [Math.min(...ids), Math.max(...ids)];
  const parts = [];
  names.forEach((n, k) => {
    const t = state.traces[n], color = COLORS[k % COLORS.length];
    g.save(); g.translate(0, k * strip);
    const { X, Y } = axes(g, w, strip, xr, range(t.values, false), "message id", label(n), false);
    g.strokeStyle = color; g.globalAlpha = 0.4; g.beginPath();
    t.values.forEach((v, i) => { if (v !== null) (i ? g.lineTo : g.moveTo).call(g, X(t.message_id[i]), Y(v)); });
    g.stroke(); g.globalAlpha = 1;
    // The running mean: what a scientist reads as "the rate" through the noise.
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    let sum = 0; const q = [];
    t.values.forEach((v, i) => {
      q.push(v ?? 0); sum += v ?? 0;
      if (q.length > win) sum -= q.shift();
      (i ? g.lineTo : g.moveTo).call(g, X(t.message_id[i]), Y(sum / q.length));
    });
    g.stroke(); g.lineWidth = 1; g.restore();
    const recent = t.values.slice(-win);
    const hits = recent.filter((v) => v !== null && v > thr).length;
    parts.push(`<span style="color:${color}">■ ${label(n)}: last ${fmt(t.values[t.values.length - 1], 6)}, ` +
      `running mean ${fmt(sum / q.length, 5)}, hit rate ${fmt(100 * hits / recent.length, 3)} %</span>`);
  });
  $("trace-title").innerHTML = parts.join(" &nbsp; ") +
    ` <span class="hint">(thin: every frame; thick: running mean of ${win}; hit rate: share of the last ${win} frames above ${thr})</span>`;
}

// -- raw modules ---------------------------------------------------------------------------
async function pollRaw() {
  if (state.paused || $("raw-panel").hidden) return;
  const m = $("raw-module").value;
  const q = `module=${m}&width=${Math.max(64, $("raw").clientWidth || 600)}&scale=${$("img-scale").value}&cmap=${$("img-cmap").value}`;
  const r = await fetch(`/api/image/raw.png?${q}`);
  if (!r.ok) { $("raw-title").textContent = (await r.json()).error; return; }
  const bmp = await createImageBitmap(await r.blob());
  const c = $("raw"); c.width = bmp.width; c.height = bmp.height;
  c.getContext("2d").drawImage(bmp, 0, 0);
  $("raw-title").textContent = `module ${m} · stream ${r.headers.get("X-Stream")} · message ` +
    `${r.headers.get("X-Message-Id")} · ${r.headers.get("X-Shape").replace(",", " × ")} px ` +
    `· colours span ${fmt(Number(r.headers.get("X-Vmin")))} … ${fmt(Number(r.headers.get("X-Vmax")))} counts`;
}

init();
