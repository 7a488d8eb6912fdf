"use strict";
function text(v) { return v === null || v === undefined ? "-" : String(v); }
function exitText(e) {
  if (!e) return "-";
  const parts = [];
  if (e.code !== undefined) parts.push("code " + e.code);
  if (e.signal) parts.push("SIG" + e.signal);
  if (e.reason) parts.push("(" + e.reason + ")");
  if (e.error) parts.push(e.error);
  return parts.join(" ");
}
function dur(s) {
  if (s === null || s === undefined) return "-";
  s = Math.floor(s);
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h" + String(Math.floor(s / 60) % 60).padStart(2, "0") + "m";
}
function mib(b) { return b ? (b / 1048576).toFixed(1) + " MiB" : "-"; }
// A preloader in words, as `drover status` says it (api/preloader_words.rs): never a null.
function preloaderText(pre) {
  const about = [];
  if (pre.pid !== null && pre.pid !== undefined) about.push("pid " + pre.pid);
  const what = pre.state === "loading" ? "loading the app" : pre.state;
  if (pre.since_s !== null && pre.since_s !== undefined) about.push((pre.state === "ready" ? "up " : "for ") + dur(pre.since_s));
  let out = "preloader " + what + (about.length ? " (" + about.join(", ") + ")" : "");
  if (pre.state === "failed") out += (pre.error ? ": " + pre.error : "") + "; tried again after its backoff";
  else if (pre.state === "loading" && pre.error) out += "; the last one failed: " + pre.error;
  return out;
}
function cell(tr, v, cls) { const td = document.createElement("td"); td.textContent = v; if (cls) td.className = cls; tr.appendChild(td); return td; }
function render(s) {
  document.getElementById("state").textContent = s.state + (s.ready ? " · ready" : " · not ready");
  document.getElementById("state").className = "state " + (s.ready ? "running" : "starting");
  document.getElementById("meta").textContent =
    "pid " + s.pid + (s.pid1 ? " (PID 1)" : "") + " · up " + dur(s.uptime_s) + " · config " + s.config +
    " · control API: " + s.control +
    (s.last_reload ? " · last reload: " + (s.last_reload.ok ? "ok" : "failed: " + s.last_reload.message) : "");
  const root = document.getElementById("programs");
  root.textContent = "";
  for (const p of s.programs) {
    const h = document.createElement("h2");
    h.textContent = p.name + " — " + p.ready_workers + "/" + p.desired + " ready (min " + p.min_ready + ")" +
      (p.rolling ? " · rolling restart" : "") + (p.crash_looping ? " · CRASH LOOP" : "") + (p.health ? " · " + p.health : "");
    if (p.crash_looping || p.health) h.className = "bad";
    root.appendChild(h);
    if (p.preloader) {
      const pre = document.createElement("p");
      pre.className = "preloader " + (p.preloader.state === "ready" ? "meta" : p.preloader.state === "failed" ? "bad" : "starting");
      pre.textContent = preloaderText(p.preloader);
      root.appendChild(pre);
    }
    if (p.waiting_for || p.will_not_start) {
      const g = document.createElement("p");
      g.className = p.waiting_for ? "starting gate" : "bad gate";
      g.textContent = p.waiting_for ? "waiting for " + p.waiting_for : "will not start: " + p.will_not_start;
      root.appendChild(g);
    }
    if (p.roll) {
      const r = document.createElement("p");
      r.className = "meta roll";
      r.textContent = "rolling " + p.roll.reason + ": " + p.roll.replaced + " of " + p.roll.of + " replaced" +
        (p.roll.waiting_for ? ", waiting for " + p.roll.waiting_for : "");
      root.appendChild(r);
    }
    if (p.last_roll && p.last_roll.outcome === "abandoned") {
      const r = document.createElement("p");
      r.className = "bad roll-abandoned";
      r.textContent = "last roll abandoned " + dur(Date.now() / 1000 - p.last_roll.ended_at) + " ago: " + p.last_roll.message;
      root.appendChild(r);
    }
    const t = document.createElement("table");
    t.className = "workers";
    t.innerHTML = "<thead><tr><th>#</th><th>pid</th><th>state</th><th>restarts</th><th>uptime</th><th>memory</th><th>last exit</th></tr></thead>";
    const tb = document.createElement("tbody");
    for (const w of p.workers) {
      const tr = document.createElement("tr");
      cell(tr, w.index);
      cell(tr, text(w.pid), "pid");
      cell(tr, w.state, "state " + w.state);
      cell(tr, w.restarts);
      cell(tr, dur(w.uptime_s));
      cell(tr, mib(w.memory_bytes));
      cell(tr, exitText(w.last_exit));
      tb.appendChild(tr);
      const words = w.last_exit && w.last_exit.last_words;
      if (words && words.length && w.state !== "running") {
        // what a worker printed is text, never markup
        const wr = document.createElement("tr");
        const td = cell(wr, "", "last-words");
        td.colSpan = 7;
        const pre = document.createElement("pre");
        pre.textContent = words.join("\n");
        td.appendChild(pre);
        tb.appendChild(wr);
      }
    }
    t.appendChild(tb);
    root.appendChild(t);
  }
  const kb = document.querySelector("#sockets tbody");
  kb.textContent = "";
  for (const so of s.sockets) {
    const tr = document.createElement("tr");
    cell(tr, so.name); cell(tr, so.listen);
    const full = so.queue !== null && so.queue_max && so.queue >= so.queue_max;
    cell(tr, so.queue === null ? "unknown: " + text(so.queue_unknown) : so.queue + " waiting of " + so.queue_max, full ? "bad" : "");
    kb.appendChild(tr);
  }
  document.getElementById("node").textContent = s.node ?
    "listen-queue overflows " + s.node.listen_overflows + ", drops " + s.node.listen_drops + " (" + s.node.scope + ")" : "";
  const sb = document.querySelector("#steps tbody");
  sb.textContent = "";
  for (const st of s.steps) {
    const tr = document.createElement("tr");
    cell(tr, st.name); cell(tr, st.state, "state " + (st.state === "succeeded" ? "running" : st.state));
    cell(tr, exitText(st.exit)); cell(tr, st.attempts); cell(tr, st.duration_s === null ? "-" : st.duration_s.toFixed(2) + "s");
    sb.appendChild(tr);
  }
}
const SVG = "http://www.w3.org/2000/svg";
const W = 300, H = 80, PAD = 4;
function svgEl(name, attrs) {
  const e = document.createElementNS(SVG, name);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}
function fmtNum(v) {
  if (v === null || v === undefined) return "-";
  if (v >= 100) return Math.round(v).toString();
  return (Math.round(v * 10) / 10).toString();
}
// One chart: `series` is [{values, cls}] over the same time axis `ts`; null values leave gaps.
function chart(title, ts, series, unit) {
  const box = document.createElement("div");
  box.className = "chart";
  box.dataset.series = title;
  const t = document.createElement("div");
  t.className = "title";
  const last = series[0].values[series[0].values.length - 1];
  t.textContent = title + ": " + fmtNum(last) + unit;
  box.appendChild(t);
  const svg = svgEl("svg", { width: W, height: H, viewBox: "0 0 " + W + " " + H, role: "img" });
  let max = 0;
  for (const s of series) for (const v of s.values) if (v !== null && v > max) max = v;
  if (max <= 0) max = 1;
  const t0 = ts[0], span = Math.max(1, ts[ts.length - 1] - t0);
  svg.appendChild(svgEl("line", { class: "axis", x1: PAD, y1: H - PAD, x2: W - PAD, y2: H - PAD }));
  for (const s of series) {
    let pts = [];
    const flush = () => {
      if (pts.length) svg.appendChild(svgEl("polyline", { class: s.cls, points: pts.join(" ") }));
      pts = [];
    };
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { flush(); return; }
      const x = PAD + (ts[i] - t0) / span * (W - 2 * PAD);
      const y = H - PAD - v / max * (H - 2 * PAD - 10);
      pts.push(x.toFixed(1) + "," + y.toFixed(1));
    });
    flush();
  }
  const top = svgEl("text", { x: PAD, y: 10 });
  top.textContent = "max " + fmtNum(max) + unit;
  svg.appendChild(top);
  const ago = svgEl("text", { x: W - PAD, y: 10, "text-anchor": "end" });
  ago.textContent = "last " + dur(span);
  svg.appendChild(ago);
  box.appendChild(svg);
  return box;
}
function renderHistory(h) {
  const root = document.getElementById("charts");
  document.getElementById("history-title").textContent =
    "History (last " + dur(h.window_s) + ", a sample every " + dur(h.interval_s) + ")";
  const ts = h.samples.map(s => s.t);
  const charts = [];
  if (ts.length >= 2) {
    const names = new Set();
    for (const s of h.samples) for (const p of s.programs) names.add(p.name);
    for (const name of names) {
      const pick = f => h.samples.map(s => { const p = s.programs.find(p => p.name === name); return p ? f(p) : null; });
      const restarts = pick(p => p.restarts);
      const perInterval = restarts.map((v, i) => (i === 0 || v === null || restarts[i - 1] === null) ? null : Math.max(0, v - restarts[i - 1]));
      charts.push(chart(name + " ready workers", ts, [{ values: pick(p => p.ready), cls: "line" }, { values: pick(p => p.desired), cls: "line2" }], ""));
      charts.push(chart(name + " restarts", ts, [{ values: perInterval, cls: "line" }], ""));
      charts.push(chart(name + " CPU", ts, [{ values: pick(p => p.cpu_percent), cls: "line" }], "%"));
      charts.push(chart(name + " memory", ts, [{ values: pick(p => p.memory_bytes === null ? null : p.memory_bytes / 1048576), cls: "line" }], " MiB"));
    }
    const socks = new Set();
    for (const s of h.samples) for (const so of s.sockets) socks.add(so.name);
    for (const name of socks) {
      const pick = f => h.samples.map(s => { const so = s.sockets.find(so => so.name === name); return so ? f(so) : null; });
      charts.push(chart("socket " + name + " queue", ts, [{ values: pick(so => so.queue), cls: "line" }], ""));
    }
  }
  root.replaceChildren(...charts);
  if (!charts.length) root.textContent = "collecting: the first chart appears after two samples";
}
async function refresh() {
  try {
    const r = await fetch("status", { cache: "no-store" });
    render(await r.json());
    const h = await fetch("history", { cache: "no-store" });
    if (h.ok) {
      renderHistory(await h.json());
    } else {
      document.getElementById("charts").textContent = (await h.json()).error;
    }
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot reach drover: " + e;
  }
}
// Refresh as soon as something happens (GET /events; a burst of events is one refresh), and
// every 15 s for what changes without an event (CPU, memory, ages, history). Poll every 2 s
// instead while the stream is down, where the browser has no EventSource, or with ?poll in
// the page's address (a headless browser's virtual time stands still while a stream is open).
const EVENT_TYPES = ["worker_started", "worker_restarted", "worker_ready", "worker_exited",
  "roll_started", "roll_finished", "scaled", "budget_recycle", "budget_kill", "shedding_on",
  "shedding_off", "reload_applied", "reload_rejected", "dependency_waiting",
  "dependency_satisfied", "shutting_down", "events_lost"];
let polling = null, soon = null;
function every(ms) {
  if (polling) clearInterval(polling);
  polling = setInterval(refresh, ms);
}
function refreshSoon() {
  if (!soon) soon = setTimeout(() => { soon = null; refresh(); }, 100);
}
function follow() {
  if (!window.EventSource || new URLSearchParams(location.search).has("poll")) return every(2000);
  const es = new EventSource("events");
  es.onopen = () => { every(15000); refresh(); };
  es.onerror = () => every(2000);
  for (const t of EVENT_TYPES) es.addEventListener(t, refreshSoon);
}
refresh();
follow();
