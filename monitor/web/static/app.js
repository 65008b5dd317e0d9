// The live page: one panel per room, fed by Server-Sent Events from /api/stream. No framework.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const W = 600, H = 100;  // chart viewBox; stretched to the panel's width
let state = { mode: "live", history_s: 600, status: {}, finished: false, rooms: {} };
let dirty = new Set();

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function clock(t) {
  return new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function span(seconds) {  // a recording's length: 20.0 s, 4 min 05 s, 1 h 02 min
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const whole = Math.round(seconds), h = Math.floor(whole / 3600), m = Math.floor(whole % 3600 / 60);
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h} h ${two(m)} min` : `${m} min ${two(whole % 60)} s`;
}

function value(rule, pair) {
  return rule.use === "lift" ? pair[1] : pair[0];
}

// ---------------------------------------------------------------- drawing

function renderAll() {
  const main = document.getElementById("rooms");
  main.replaceChildren(...Object.values(state.rooms).map(roomPanel));
  for (const id of Object.keys(state.rooms)) { drawSwitches(id); drawRoom(id); drawEvents(id); drawLabels(id); }
  renderStatus();
}

function roomPanel(room) {
  const panel = el("section", { class: "room", id: `room-${room.id}`, "data-room": room.id });
  const mute = el("button", { id: `mute-${room.id}`, class: "mute" });
  mute.addEventListener("click", () => post("api/mute", { target: room.id, on: !roomMuted(room.id) }));
  panel.append(el("div", { class: "room-head" }, el("h2", { text: room.name }), mute));
  panel.append(el("div", { class: "room-state", id: `state-${room.id}` }));
  panel.append(el("div", { class: "meter", title: "level" }, el("div", { id: `meter-${room.id}`, "data-dbfs": "" })));
  for (const rule of room.rules) {
    const box = el("div", { class: "rule", id: `rule-${room.id}-${rule.id}` });
    const head = el("div", { class: "rule-head" }, el("span", { text: rule.name }),
                    el("span", { class: "state", id: `rstate-${room.id}-${rule.id}` }));
    head.append(ruleSwitch(room, rule));
    box.append(head);
    if (rule.kind === "yes_no") {
      box.append(el("svg:svg", { class: "chart", id: `chart-${room.id}-${rule.id}`, viewBox: `0 0 ${W} ${H}`,
                                 preserveAspectRatio: "none", "data-points": "0" }));
      box.append(el("div", { class: "labels dim", id: `labels-${room.id}-${rule.id}` }));
    } else if (rule.kind === "text") {
      box.append(el("div", { class: "transcript", id: `text-${room.id}-${rule.id}` }));
    }
    panel.append(box);
  }
  const yesNo = room.rules.filter((r) => r.kind === "yes_no");
  if (state.mode === "live" && yesNo.length) panel.append(missedForm(room, yesNo));
  panel.append(el("ul", { class: "events", id: `events-${room.id}` }));
  return panel;
}

// "It missed something": the last N seconds of the room, kept as a positive of the chosen rule.
function missedForm(room, rules) {
  const rule = el("select", { id: `missed-rule-${room.id}`, title: "the rule that should have fired" },
                  ...rules.map((r) => el("option", { value: r.id, text: r.name })));
  const seconds = el("input", { id: `missed-seconds-${room.id}`, type: "number", min: "1", max: "600", step: "1",
                                value: "30", title: "how far back, in seconds" });
  const button = el("button", { id: `missed-${room.id}`, class: "missed", text: "It missed something" });
  const said = el("span", { class: "dim label-result", id: `missed-result-${room.id}` });
  button.addEventListener("click", () => label(said, { room: room.id, rule: rule.value,
                                                       missed_seconds: Number(seconds.value) || 30 }));
  return el("div", { class: "missed-form" }, button, rule, el("span", { class: "dim", text: "last" }), seconds,
            el("span", { class: "dim", text: "s" }), said);
}

// Per rule: the labels kept, and how the current threshold does on them (from the scores kept with each).
function drawLabels(id) {
  const room = state.rooms[id];
  for (const rule of room.rules) {
    const line = document.getElementById(`labels-${id}-${rule.id}`);
    const l = (room.labels || {})[rule.id];
    if (!line || !l) continue;
    let text = `labels: ${l.positive} positive, ${l.negative} false alarm${l.negative === 1 ? "" : "s"}`;
    if (l.positive_scored || l.negative_scored) {
      text += ` · at threshold ${l.threshold}: ${l.hits} of ${l.positive_scored} scored positives reach it (hits), ` +
        `${l.false_alarms} of ${l.negative_scored} negatives reach it (false alarms)`;
      const unscored = l.positive - l.positive_scored;
      if (unscored) text += `; ${unscored} missed sound${unscored === 1 ? "" : "s"} without a score`;
    }
    if (l.compare && l.compare.best) {
      const b = l.compare.best;
      text += ` · last comparison ${l.compare.time.slice(0, 16).replace("T", " ")}: best #${b.n} “${b.ask}” ` +
        `AUC ${b.auc.toFixed(2)}` + (l.compare.current_auc != null ? ` (current ${l.compare.current_auc.toFixed(2)})` : "");
    }
    line.textContent = text;
    line.dataset.positive = String(l.positive);
    line.dataset.negative = String(l.negative);
  }
}

// A rule's switch: unticked, the rule is not asked (the same as its switch in Home Assistant).
function ruleSwitch(room, rule) {
  const input = el("input", { type: "checkbox", class: "switch", id: `enabled-${room.id}-${rule.id}` });
  input.addEventListener("change", () => post("api/enabled", { room: room.id, rule: rule.id, on: input.checked }));
  return el("label", { class: "switch", title: `ask “${rule.name}”`, hidden: "" }, input, "enabled");
}

function ruleOff(room, ruleId) {
  return (room.off || []).includes(ruleId);
}

function drawSwitches(id) {
  const room = state.rooms[id];
  for (const rule of room.rules) {
    const off = ruleOff(room, rule.id);
    const input = document.getElementById(`enabled-${id}-${rule.id}`);
    if (input) {
      input.checked = !off;
      input.dataset.enabled = off ? "off" : "on";
      input.parentElement.hidden = state.mode !== "live";
    }
    const box = document.getElementById(`rule-${id}-${rule.id}`);
    if (box) box.classList.toggle("off", off);
  }
}

function drawMeter(id) {
  const points = state.rooms[id].points;
  const last = points.length ? points[points.length - 1] : null;
  const meter = document.getElementById(`meter-${id}`);
  if (meter && last) {
    meter.style.width = `${Math.max(0, Math.min(100, (last.dbfs + 80) / 80 * 100))}%`;
    meter.dataset.dbfs = String(last.dbfs);
    meter.parentElement.title = `level ${last.dbfs.toFixed(1)} dBFS`;
  }
}

function drawRoom(id) {
  drawMeter(id);
  const room = state.rooms[id];
  const points = room.points;
  const last = points.length ? points[points.length - 1] : null;
  const tEnd = last ? last.t : Date.now() / 1000;
  const tStart = state.history_s ? tEnd - state.history_s : (points.length ? points[0].t : tEnd - 1);
  const x = (t) => ((t - tStart) / Math.max(1e-6, tEnd - tStart)) * W;
  for (const rule of room.rules) {
    const spans = room.spans[rule.id] || [];
    const on = spans.length > 0 && spans[spans.length - 1][1] === null;
    const label = document.getElementById(`rstate-${id}-${rule.id}`);
    if (label && rule.kind === "yes_no") {
      label.textContent = on ? "ON" : ruleOff(room, rule.id) ? "OFF (switched off)" : "OFF";
      label.classList.toggle("on", on);
    }
    const text = document.getElementById(`text-${id}-${rule.id}`);
    if (text) {
      const tr = room.transcripts[rule.id];
      text.textContent = tr ? `“${tr.text}” (${clock(tr.t)})` : "no speech yet";
    }
    const svg = document.getElementById(`chart-${id}-${rule.id}`);
    if (!svg) continue;
    const mine = points.filter((p) => p.s[rule.id]);
    const values = mine.map((p) => value(rule, p.s[rule.id]));
    let lo = 0, hi = 1;
    if (rule.use === "lift") {
      lo = Math.max(-1, Math.min(-0.1, rule.release - 0.1, ...values));
      hi = Math.min(1, Math.max(0.1, rule.threshold + 0.1, ...values));
    }
    const y = (v) => H - ((v - lo) / (hi - lo)) * H;
    const parts = [];
    for (const [a, b] of spans) {
      const x0 = Math.max(0, x(a)), x1 = Math.min(W, x(b === null ? tEnd : b));
      if (x1 > x0) parts.push(el("svg:rect", { class: "span", x: x0, y: 0, width: x1 - x0, height: H }));
    }
    parts.push(el("svg:line", { class: "rel", x1: 0, x2: W, y1: y(rule.release), y2: y(rule.release) }));
    parts.push(el("svg:line", { class: "thr", x1: 0, x2: W, y1: y(rule.threshold), y2: y(rule.threshold) }));
    const coords = mine.map((p, i) => `${x(p.t).toFixed(1)},${y(values[i]).toFixed(1)}`).join(" ");
    parts.push(el("svg:polyline", { class: "line", points: coords }));
    parts.push(el("svg:title", { text: `${rule.name}: ${rule.use} ` +
      (values.length ? values[values.length - 1].toFixed(3) : "–") + ` (threshold ${rule.threshold}, release ${rule.release})` }));
    svg.replaceChildren(...parts);
    svg.dataset.points = String(mine.length);
    svg.dataset.last = values.length ? String(values[values.length - 1]) : "";
  }
}

function drawEvents(id) {
  // Existing items are kept (by event id), so a clip that is playing goes on playing as events arrive.
  const list = document.getElementById(`events-${id}`);
  if (!list) return;
  const old = new Map([...list.children].map((li) => [li.dataset.id, li]));
  const items = state.rooms[id].events.slice().reverse().map((e) => old.get(e.id) || eventItem(id, e));
  items.forEach((li, i) => { if (list.children[i] !== li) list.insertBefore(li, list.children[i] || null); });
  while (list.children.length > items.length) list.lastElementChild.remove();
}

function eventItem(roomId, e) {
  const li = el("li", { class: `event ${e.kind}`, "data-id": e.id, "data-rule": e.rule, "data-kind": e.kind });
  li.append(el("span", { class: "dim", text: clock(e.t) }), el("span", { text: `${e.name} ${e.kind}` }));
  if (e.score !== null && e.score !== undefined) li.append(el("span", { text: `score ${e.score.toFixed(3)}` }));
  if (e.text) li.append(el("span", { class: "transcript", text: `“${e.text}”` }));
  if (e.reason) li.append(el("span", { class: "dim", text: e.reason }));
  if (e.clip) li.append(el("audio", { controls: "", preload: "metadata", src: e.clip }));
  if (e.description) describe(li, e.description);
  const rule = (state.rooms[roomId].rules || []).find((r) => r.id === e.rule);
  if (state.mode === "live" && e.kind === "on" && rule && rule.kind === "yes_no") {
    const said = el("span", { class: "dim label-result" });
    for (const [verdict, text] of [["right", "right"], ["wrong", "false alarm"]]) {
      const button = el("button", { class: `label ${verdict}`, "data-verdict": verdict, text });
      button.addEventListener("click", () => label(said, { room: roomId, rule: e.rule, event: e.id, verdict }));
      li.append(button);
    }
    li.append(said);
  }
  return li;
}

function describe(li, text) {  // what was heard, in words, beside the ON event of its incident
  const old = li.querySelector(".description");
  const line = el("span", { class: "description", text: `“${text}”` });
  if (old) old.replaceWith(line); else li.append(line);
}

function described(d) {  // a description came: every room's ON event of that incident shows it
  for (const room of Object.values(state.rooms)) {
    for (const e of room.events) {
      if (e.kind !== "on" || !d.incident || e.incident !== d.incident) continue;
      e.description = d.text;
      const li = document.querySelector(`#events-${room.id} li[data-id="${e.id}"]`);
      if (li) describe(li, d.text);
    }
  }
}

function roomMuted(id) {
  const s = (state.status.rooms || {})[id];
  return Boolean(s && s.muted_own);
}

function renderStatus() {
  const s = state.status;
  const head = document.getElementById("status");
  if (state.mode === "replay") {
    const length = typeof s.duration_s === "number" ? `${span(s.duration_s)} of audio, ` : "";
    head.textContent = `replay of ${s.recording || "a recording"}` + (state.finished ? " finished: " : ": ") +
      `${length}${s.windows || 0} windows`;
  } else if (s.rooms) {
    const skipped = Object.values(s.rooms).reduce((n, r) => n + (r.skipped || 0), 0);
    head.textContent = `MQTT ${s.mqtt}, ${s.windows_per_s} windows/s, skipped ${skipped}` +
      (s.rules_reload_message ? `, ${s.rules_reload_message}` : "");
  }
  document.getElementById("title").textContent = s.name || "audio-monitor";
  const live = state.mode === "live";
  document.getElementById("reload").hidden = !live;
  const all = document.getElementById("mute-all");
  all.hidden = !(live && s.multi_room);
  all.textContent = s.muted_all ? "Unmute all" : "Mute all";
  all.classList.toggle("on", Boolean(s.muted_all));
  for (const [id, r] of Object.entries(s.rooms || {})) {
    const line = document.getElementById(`state-${id}`);
    if (line) line.textContent = `${r.state} · capture ${r.capture} · skipped ${r.skipped} · windows ${r.processed}`;
    const button = document.getElementById(`mute-${id}`);
    if (button) {
      button.hidden = !live;
      button.textContent = r.muted_own ? "Unmute" : "Mute";
      button.classList.toggle("on", Boolean(r.muted_own));
      button.dataset.muted = r.muted_own ? "on" : "off";
    }
  }
}

// ---------------------------------------------------------------- commands

async function post(path, body) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json", "X-Audio-Monitor": "1" },
    body: JSON.stringify(body), credentials: "same-origin",
  });
  if (!response.ok) document.getElementById("status").textContent = `${path}: ${response.status}`;
}

// A label's outcome is shown beside its button: saved, or the daemon's one line (e.g. 410: the clip is gone).
async function label(said, body) {
  said.textContent = "…";
  try {
    const response = await fetch("api/label", {
      method: "POST", headers: { "Content-Type": "application/json", "X-Audio-Monitor": "1" },
      body: JSON.stringify(body), credentials: "same-origin",
    });
    said.textContent = response.ok ? "saved" : (await response.text()).trim();
    said.dataset.status = String(response.status);
  } catch (err) {
    said.textContent = `not saved: ${err}`;
    said.dataset.status = "error";
  }
}

document.getElementById("reload").addEventListener("click", () => post("api/reload", {}));
document.getElementById("mute-all").addEventListener("click", () =>
  post("api/mute", { target: state.status.node, on: !state.status.muted_all }));

// ---------------------------------------------------------------- the stream

function prune(room) {
  if (!state.history_s || !room.points.length) return;
  const limit = room.points[room.points.length - 1].t - state.history_s;
  let drop = 0;
  while (drop < room.points.length && room.points[drop].t < limit) drop++;
  if (drop) room.points.splice(0, drop);
}

// Charts span minutes: redrawn at most once a second (a phone's battery, twenty pages on one box);
// the level meter follows every window.
const CHART_EVERY_MS = 1000;
const lastDrawn = {};
function schedule(id) {
  if (dirty.has(id)) return;
  dirty.add(id);
  const wait = Math.max(0, (lastDrawn[id] || 0) + CHART_EVERY_MS - Date.now());
  setTimeout(() => requestAnimationFrame(() => {
    dirty.delete(id);
    lastDrawn[id] = Date.now();
    drawRoom(id);
  }), wait);
}

const source = new EventSource("api/stream");
source.addEventListener("snapshot", (m) => {
  const data = JSON.parse(m.data);
  state = { mode: data.mode, history_s: data.history_s, status: data.status, finished: data.finished, rooms: {} };
  for (const room of data.rooms) state.rooms[room.id] = room;
  renderAll();
});
source.addEventListener("window", (m) => {
  const p = JSON.parse(m.data);
  const room = state.rooms[p.room];
  if (!room) return;
  room.points.push(p);
  prune(room);
  drawMeter(p.room);
  schedule(p.room);
});
source.addEventListener("event", (m) => {
  const e = JSON.parse(m.data);
  const room = state.rooms[e.room];
  if (!room) return;
  if (e.kind === "described") { described(e); return; }
  room.events.push(e);
  if (room.events.length > 20) room.events.shift();
  const spans = room.spans[e.rule] || (room.spans[e.rule] = []);
  const open = spans.length > 0 && spans[spans.length - 1][1] === null;
  if (e.kind === "on" && !open) spans.push([e.t, null]);
  if (e.kind === "off" && open) spans[spans.length - 1][1] = e.t;
  if (e.kind === "text" && e.text) room.transcripts[e.rule] = { text: e.text, t: e.t };
  drawEvents(e.room);
  schedule(e.room);
});
source.addEventListener("rules", (m) => {
  const r = JSON.parse(m.data);
  const room = state.rooms[r.room];
  if (!room) return;
  room.rules = r.rules;
  room.spans = r.spans;
  renderAll();
});
source.addEventListener("switches", (m) => {
  const r = JSON.parse(m.data);
  const room = state.rooms[r.room];
  if (!room) return;
  room.off = r.off;
  drawSwitches(r.room);
  drawRoom(r.room);
});
source.addEventListener("labels", (m) => {
  const r = JSON.parse(m.data);
  const room = state.rooms[r.room];
  if (!room) return;
  room.labels = r.labels;
  drawLabels(r.room);
});
source.addEventListener("status", (m) => {
  state.status = JSON.parse(m.data);
  renderStatus();
});
// A finished replay has nothing more to send: the server ends its stream after `end`, and the page
// stops listening (it is complete, not cut off). Only a live page that loses its stream reconnects.
source.addEventListener("end", () => {
  source.close();
  state.finished = true;
  renderStatus();
});
source.addEventListener("error", () => {
  if (state.finished) return;
  document.getElementById("status").textContent = "connection lost; reconnecting…";
});
