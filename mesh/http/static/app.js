// The mesh dashboard: reads /api/events (server-sent events, over fetch so an API key
// can be sent) and renders peers, totals and recent requests; the prompt box streams
// from POST /api/ask. Everything the network sent is put in the page as text, never HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "mesh.apiKey";
let names = {};          // peer id -> name, from the latest snapshot
let lastSeq = 0;         // newest request shown, to highlight fresh rows
let lastEventAt = 0;
let threshold = 0.7;     // this peer's confidence threshold, from the latest snapshot
let uptime = null;       // this peer's uptime in seconds, from the latest snapshot

// -- small helpers ---------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "style") el.setAttribute("style", v);
    else if (k.startsWith("data-") || k === "title") el.setAttribute(k, v);
    else el[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmtInt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString());
const fmtPct = (x) => (x === null || x === undefined ? "–" : `${Math.round(x * 100)}%`);

function fmtSecs(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function fmtAgo(s) {
  if (s === null || s === undefined) return "–";
  if (s < 1) return "just now";
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function fmtParams(n) {
  if (!n) return null;
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}B`;
  if (n >= 1e6) return `${Math.round(n / 1e6)}M`;
  return fmtInt(n);
}

function fmtMB(mb) {
  if (mb === null || mb === undefined) return "–";
  return mb >= 1024 ? `${(mb / 1024).toFixed(1)} GB` : `${mb} MB`;
}

const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
const shortId = (id) => (id ? id.slice(0, 10) : "");
const who = (peer) => (peer === "cloud" ? "cloud" : names[peer] || shortId(peer) || "–");

function battery(v) {
  if (v === true) return "on battery";
  if (v === false) return "plugged in";
  return "no battery";
}

function confClass(c, threshold) {
  if (c === null || c === undefined) return "";
  if (c >= threshold) return "high";
  return c >= threshold * 0.6 ? "mid" : "low";
}

function confidenceCell(c, threshold) {
  if (c === null || c === undefined) return h("span", { class: "muted" }, "–");
  return h("div", { class: `conf ${confClass(c, threshold)}` },
    h("div", { class: "meter" }, h("i", { style: `width:${Math.max(2, Math.round(c * 100))}%` })),
    c.toFixed(2));
}

// -- API access (a key only when the peer asks for one) ---------------------------------

function headers(extra) {
  const out = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY_STORE);
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

function askForKey() {
  return new Promise((resolve) => {
    const dlg = $("key-dialog");
    if (dlg.open) { resolve(); return; }
    dlg.addEventListener("close", () => {
      const v = $("key-input").value.trim();
      if (v) sessionStorage.setItem(KEY_STORE, v);
      resolve();
    }, { once: true });
    dlg.showModal();
  });
}

// Read a text/event-stream body, calling onEvent(name, data) per event.
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

// -- the live view ------------------------------------------------------------------------

function setConn(state, text) {
  $("conn").dataset.state = state;
  $("conn-text").textContent = text;
}

async function follow() {
  for (;;) {
    try {
      const r = await fetch("/api/events", { headers: headers(), cache: "no-store" });
      if (r.status === 401 || r.status === 403) {
        setConn("down", r.status === 403 ? "refused" : "key needed");
        if (r.status === 401) await askForKey();
        else { await new Promise((ok) => setTimeout(ok, 5000)); }
        continue;
      }
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      setConn("live", "live");
      await readEvents(r, (name, data) => { if (name === "mesh") render(data); });
      setConn("down", "peer stopped streaming; reconnecting");
    } catch (e) {
      setConn("down", "disconnected; reconnecting");
    }
    await new Promise((ok) => setTimeout(ok, 2000));
  }
}

setInterval(() => {
  if (lastEventAt && Date.now() - lastEventAt > 5000 && $("conn").dataset.state === "live") {
    setConn("down", "no updates for 5 s");
  }
}, 1000);

function render(snap) {
  lastEventAt = Date.now();
  if ($("conn").dataset.state !== "live") setConn("live", "live");
  names = {};
  threshold = snap.self.threshold;
  uptime = snap.self.uptime_s;
  for (const m of snap.members) names[m.peer_id] = m.name;
  renderSelf(snap);
  renderStats(snap);
  renderPeers(snap);
  renderCharts(snap);
  renderRecent(snap);
}

function renderSelf(snap) {
  const s = snap.self;
  $("self-name").textContent = s.name || shortId(s.peer_id);
  document.title = `mesh · ${s.name || shortId(s.peer_id)}`;
  const meta = $("self-meta");
  meta.replaceChildren(
    h("span", {}, "model ", h("b", {}, s.model || "–")),
    h("span", {}, "mesh ", h("b", { title: s.mesh || "" }, shortId(s.mesh))),
    h("span", {}, "threshold ", h("b", {}, s.threshold.toFixed(2))),
    h("span", {}, "cloud ", h("b", {}, s.cloud || "none")),
    h("span", {}, "v", s.version),
  );
}

function renderStats(snap) {
  const st = snap.states;
  const live = (st.alive || 0);
  $("stat-peers").textContent = fmtInt(live);
  const bits = [`${live} alive`];
  if (st.suspect) bits.push(`${st.suspect} suspect`);
  if (st.dead) bits.push(`${st.dead} dead`);
  if (st.left) bits.push(`${st.left} left`);
  $("stat-peers-sub").textContent = bits.join(" · ");
  const t = snap.totals;
  $("stat-requests").textContent = fmtInt(t.requests);
  $("stat-requests-sub").textContent = t.requests
    ? `${fmtPct(t.ok / t.requests)} answered · ${fmtInt(t.requests - t.ok)} not`
    : "none yet";
  $("stat-tokens").textContent = fmtInt(t.tokens);
  $("stat-escalated").textContent = fmtInt(t.escalated);
  $("stat-escalated-sub").textContent = t.ok ? `${fmtPct(t.escalated / t.ok)} of answers` : "";
}

function loadBar(load) {
  const par = Math.max(1, load.parallel || 1);
  const cap = par + Math.max(0, load.queue_limit || 0);
  const run = Math.min(100, ((load.running || 0) / cap) * 100);
  const wait = Math.min(100 - run, ((load.waiting || 0) / cap) * 100);
  return h("div", { class: "bar", title: `${load.running || 0} running, ${load.waiting || 0} waiting` },
    h("i", { class: "run", style: `width:${run}%` }), h("i", { class: "wait", style: `width:${wait}%` }));
}

function renderPeers(snap) {
  const box = $("peers");
  if (!snap.members.length) { box.replaceChildren(h("div", { class: "empty" }, "no members")); return; }
  box.replaceChildren(...snap.members.map((m) => {
    const load = m.load || {};
    const model = m.model
      ? h("div", { class: "peer-model" }, m.model, " ",
        h("span", { class: "muted" }, [fmtParams(m.parameters), m.quantisation].filter(Boolean).join(" · ")))
      : h("div", { class: "peer-model muted" }, "model unknown yet");
    return h("article", { class: "peer", "data-state": m.state, "data-peer-name": m.name, "data-peer-id": m.peer_id },
      h("div", { class: "peer-head" },
        h("div", { class: "peer-name", title: m.peer_id }, m.name, m.self ? h("span", { class: "peer-you" }, "this peer") : null),
        h("span", { class: `badge state-${m.state}`, "data-role": "state" }, m.state)),
      h("div", { class: "peer-id" }, shortId(m.peer_id), m.address ? ` · ${m.address.replace("tcp://", "")}` : ""),
      model,
      loadBar(load),
      h("div", { class: "kv" },
        h("span", {}, "load"), h("span", {}, `${fmtInt(load.running)} running · ${fmtInt(load.waiting)} waiting`),
        h("span", {}, "speed"), h("span", {}, m.tokens_per_s ? `${m.tokens_per_s.toFixed(1)} tok/s` : "–"),
        h("span", {}, "power"), h("span", {}, battery(m.on_battery)),
        h("span", {}, "cpu · ram"), h("span", {}, `${fmtInt(m.cpu_count)} cores · ${fmtMB(m.ram_available_mb)} free`),
        h("span", {}, "routed here"), h("span", {}, fmtInt(m.chosen)),
        ...(m.layers && m.layers.length ? [h("span", {}, "layers"),
          h("span", { "data-role": "layers" }, m.layers.map((p) => `${p.name} ${p.layers}`).join(" · "))] : []),
        ...(m.lends ? [h("span", {}, "lends"),
          h("span", { "data-role": "lends" }, `${fmtInt(m.lends.free_mb)} of ${fmtInt(m.lends.offer_mb)} MB free`)] : []),
        h("span", {}, m.self ? "up" : "last heard"),
        h("span", {}, m.self ? fmtSecs(uptime) : fmtAgo(m.last_heard_s)),
      ));
  }));
}

function pathChips(r) {
  if (!r.path || !r.path.length) return r.error ? h("span", { class: "answer-error", title: r.error }, r.error.slice(0, 60)) : "–";
  return h("div", { class: "path" }, r.path.map((p, i) => h("span", {
    class: `chip${i ? " up" : ""}`,
    title: `${p.reason}${p.confidence !== null && p.confidence !== undefined ? ` → ${p.confidence.toFixed(2)}` : ""}`,
  }, `${i ? "↑ " : ""}${p.cloud ? "cloud" : who(p.peer)}${p.model ? ` · ${p.model}` : ""}`)));
}

// -- charts: the last minutes, per answering peer (tokens/s, latency) and for this peer
// (requests and escalations), from the server's time buckets (mesh/http/timeline.py)

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

function sparkline(values, cls) {
  const box = svg("svg", { viewBox: "0 0 100 40", preserveAspectRatio: "none", role: "img" });
  const known = values.filter((v) => v !== null && v !== undefined);
  if (!known.length) return box;
  const max = Math.max(...known) || 1;
  const step = values.length > 1 ? 100 / (values.length - 1) : 100;
  let d = "";
  let pen = false;
  values.forEach((v, i) => {
    if (v === null || v === undefined) { pen = false; return; }
    d += `${pen ? "L" : "M"}${(i * step).toFixed(2)},${(38 - (36 * v) / max).toFixed(2)} `;
    pen = true;
  });
  box.append(svg("path", { d: d.trim(), class: `line ${cls}` }));
  return box;
}

function bars(requests, escalated) {
  const box = svg("svg", { viewBox: "0 0 100 40", preserveAspectRatio: "none", role: "img" });
  const max = Math.max(1, ...requests);
  const w = 100 / requests.length;
  requests.forEach((n, i) => {
    const hgt = (38 * n) / max;
    box.append(svg("rect", { x: (i * w).toFixed(2), y: (40 - hgt).toFixed(2), width: (w * 0.8).toFixed(2), height: hgt.toFixed(2), class: "bar" }));
    const e = (38 * escalated[i]) / max;
    if (e > 0) box.append(svg("rect", { x: (i * w).toFixed(2), y: (40 - e).toFixed(2), width: (w * 0.8).toFixed(2), height: e.toFixed(2), class: "bar escalated" }));
  });
  return box;
}

const lastOf = (xs) => { for (let i = xs.length - 1; i >= 0; i--) if (xs[i] !== null && xs[i] !== undefined) return xs[i]; return null; };

function renderCharts(snap) {
  const c = snap.charts;
  const box = $("charts");
  if (!c || !c.requests.some((n) => n > 0)) { box.replaceChildren(h("div", { class: "empty" }, "no requests in the last minutes")); return; }
  const minutes = Math.round((c.times.length * c.bucket_s) / 60);
  $("charts-hint").textContent = `last ${minutes} min, ${c.bucket_s} s buckets; requests entered at this peer, by who answered`;
  const total = c.requests.reduce((a, b) => a + b, 0);
  const esc = c.escalated.reduce((a, b) => a + b, 0);
  const cards = [h("div", { class: "chart", "data-chart": "escalations" },
    h("div", { class: "chart-title" }, h("span", {}, "requests · escalations"), h("span", { class: "muted" }, `${fmtInt(total)} · ${fmtInt(esc)} escalated`)),
    bars(c.requests, c.escalated))];
  for (const [peer, s] of Object.entries(c.peers)) {
    const who = peer === "cloud" ? "cloud" : (names[peer] || shortId(peer));
    const tps = lastOf(s.tokens_per_s);
    const lat = lastOf(s.latency_p50_s);
    cards.push(h("div", { class: "chart", "data-chart": "peer", "data-peer": peer },
      h("div", { class: "chart-title" }, h("span", {}, who), h("span", { class: "muted" }, tps === null ? "–" : `${tps.toFixed(1)} tok/s`)),
      sparkline(s.tokens_per_s, "tps"),
      h("div", { class: "chart-title" }, h("span", { class: "muted" }, "latency p50"), h("span", { class: "muted" }, fmtSecs(lat))),
      sparkline(s.latency_p50_s, "latency")));
  }
  box.replaceChildren(...cards);
}

function renderRecent(snap) {
  const body = $("recent");
  const rows = snap.requests;
  if (!rows.length) { body.replaceChildren(h("tr", { class: "empty-row" }, h("td", { colSpan: 8 }, "no requests yet"))); return; }
  const prev = lastSeq;
  body.replaceChildren(...rows.map((r) => h("tr", { class: prev && r.seq > prev ? "fresh" : "", "data-seq": r.seq },
    h("td", { class: "time" }, fmtTime(r.time)),
    h("td", { class: "via" }, r.entry),
    h("td", { class: "prompt", title: r.prompt }, r.prompt),
    h("td", { class: "who" }, r.peer ? who(r.peer) : "–", r.model ? h("small", {}, r.model) : null),
    h("td", {}, confidenceCell(r.confidence, snap.self.threshold)),
    h("td", {}, pathChips(r)),
    h("td", { class: "num" }, fmtSecs(r.latency_s)),
    h("td", { class: `outcome-${r.outcome}` }, r.outcome.replace("_", " ")),
  )));
  lastSeq = Math.max(lastSeq, rows[0].seq);
}

// -- the prompt box -----------------------------------------------------------------------

async function ask(ev) {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) return;
  const button = $("ask-button");
  const text = $("answer-text");
  const route = $("answer-route");
  const meta = $("answer-meta");
  button.disabled = true;
  $("answer").hidden = false;
  text.textContent = "";
  text.className = "answer-text streaming";
  route.textContent = "routing…";
  meta.replaceChildren();
  delete meta.dataset.done;
  const started = performance.now();
  const body = {
    prompt,
    max_tokens: Number($("max-tokens").value) || 96,
    local_only: $("local-only").checked,
    no_escalate: $("no-escalate").checked,
  };
  try {
    let r = await fetch("/api/ask", { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) });
    if (r.status === 401) { await askForKey(); r = await fetch("/api/ask", { method: "POST", headers: headers({ "Content-Type": "application/json" }), body: JSON.stringify(body) }); }
    if (!r.ok) {
      const err = await r.json().catch(() => ({}));
      throw new Error((err.error && (err.error.message || err.error)) || `HTTP ${r.status}`);
    }
    await readEvents(r, (name, data) => {
      if (name === "step") {
        if (data.restart) text.textContent = "";
        const target = data.kind === "cloud" ? `the cloud (${data.model})` : `${data.name || shortId(data.peer)}${data.model ? ` · ${data.model}` : ""}`;
        route.textContent = data.no_route ? `no route: ${data.no_route}` : `asking ${target} — ${data.reason}`;
      } else if (name === "t") {
        text.append(data.t);
      } else if (name === "final") {
        text.className = "answer-text";
        const conf = data.confidence;
        route.textContent = data.escalated ? `escalated: ${data.path.map((p) => p.reason).join(" → ")}` : (data.stopped || "");
        meta.replaceChildren(
          h("span", {}, "answered by ", h("b", {}, who(data.peer))),
          h("span", {}, "model ", h("b", {}, data.model || "–")),
          h("span", {}, "confidence ", h("b", { class: `conf-text ${confClass(conf, threshold)}` }, conf === null || conf === undefined ? "–" : conf.toFixed(2))),
          h("span", {}, "tokens ", h("b", {}, fmtInt(data.completion_tokens))),
          h("span", {}, "time ", h("b", {}, fmtSecs((performance.now() - started) / 1000))),
        );
        meta.dataset.done = "1";
      } else if (name === "error") {
        throw new Error(data.error);
      }
    });
  } catch (e) {
    text.className = "answer-text";
    meta.replaceChildren(h("span", { class: "answer-error" }, String(e.message || e)));
  } finally {
    button.disabled = false;
  }
}

$("ask-form").addEventListener("submit", ask);
$("prompt").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("ask-form").requestSubmit();
});

follow();
