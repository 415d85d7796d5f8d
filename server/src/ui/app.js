"use strict";
const $ = (id) => document.getElementById(id);
const text = (value) => (value === null || value === undefined ? "–" : String(value));
let apiKey = sessionStorage.getItem("ollamamax-key") || "";
const headers = () => (apiKey ? { Authorization: "Bearer " + apiKey } : {});

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = text(value);
  if (className) td.className = className;
  return td;
}

function render(view) {
  $("node").textContent = view.cluster ? text(view.node) : "single server";
  $("leader").textContent = text(view.leader);
  $("term").textContent = text(view.term);
  $("replication").textContent = text(view.replication);
  const members = $("members");
  members.replaceChildren();
  for (const m of view.members || []) {
    const row = members.insertRow();
    row.dataset.memberId = m.id;
    row.dataset.health = m.health;
    // A member's load is current only while it is alive; otherwise the server sends null and the report's age.
    const current = m.running !== null && m.running !== undefined;
    row.dataset.load = current ? "current" : "stale";
    cell(row, m.id + (m.leader ? " ★" : ""), m.leader ? "leader" : "");
    cell(row, m.role);
    const health = cell(row, "");
    const badge = document.createElement("span");
    badge.className = "badge " + m.health;
    badge.textContent = m.health;
    health.appendChild(badge);
    if (current) {
      cell(row, (m.running + m.queued) + "/" + m.slots, "num load");
      cell(row, (m.loaded || []).join(", ") || "–");
    } else {
      cell(row, "—", "num load stale").title = reportAge(m);
      cell(row, "— " + reportAge(m), "stale");
    }
    cell(row, m.api_address);
  }
  renderRequests(view);
  const models = $("models");
  models.replaceChildren();
  for (const model of view.models || []) {
    const row = models.insertRow();
    row.dataset.model = model.name;
    row.dataset.replicas = model.replicas;
    cell(row, model.name);
    const wanted = Math.min(view.replication, (view.members || []).filter((m) => m.health !== "dead").length);
    const live = model.live_nodes === undefined ? model.replicas : model.live_nodes;
    cell(row, live + " / " + view.replication + (live < model.replicas ? " (+" + (model.replicas - live) + " on dead nodes)" : ""),
         live < wanted ? "num deficit" : "num");
    cell(row, (model.nodes || []).join(", "));
  }
  if (!(view.models || []).length) {
    cell(models.insertRow(), view.cluster ? "no models yet" : "see /api/tags", "muted").colSpan = 3;
  }
  const local = $("local");
  local.replaceChildren();
  for (const model of view.local_models || []) {
    const row = local.insertRow();
    cell(row, model.name);
    cell(row, model.context_length, "num");
    cell(row, new Date(model.expires_at).toLocaleTimeString());
  }
  if (!(view.local_models || []).length) cell(local.insertRow(), "nothing loaded", "muted").colSpan = 3;
}

// "(last report 12 s ago)", or "(no report yet)".
function reportAge(member) {
  if (member.report_age_ms === null || member.report_age_ms === undefined) return "(no report yet)";
  return "(last report " + Math.round(member.report_age_ms / 1000) + " s ago)";
}

const STATES = { queued: "queued", prompt_eval: "prompt eval", generating: "generating" };

// Every alive member's requests, one row each; a member that is not alive gets one row saying they are unknown.
function renderRequests(view) {
  const requests = $("requests");
  requests.replaceChildren();
  for (const r of view.requests || []) {
    const row = requests.insertRow();
    row.dataset.requestId = r.id;
    row.dataset.node = r.node;
    row.dataset.state = r.state;
    row.dataset.tokensPerS = r.tokens_per_s === null || r.tokens_per_s === undefined ? "" : r.tokens_per_s;
    cell(row, r.id || "–");
    cell(row, r.model);
    cell(row, r.node);
    cell(row, r.accepted_by === r.node ? "same" : r.accepted_by);
    cell(row, STATES[r.state] || r.state);
    cell(row, r.tokens, "num");
    cell(row, r.tokens_per_s === null || r.tokens_per_s === undefined ? "…" : r.tokens_per_s.toFixed(1), "num");
    cell(row, (r.age_ms / 1000).toFixed(1) + " s", "num");
  }
  if (view.requests_more > 0) {
    cell(requests.insertRow(), "… and " + view.requests_more + " more", "muted").colSpan = 8;
  }
  for (const m of view.members || []) {
    if (m.running !== null && m.running !== undefined) continue;
    const row = requests.insertRow();
    row.dataset.staleNode = m.id;
    cell(row, "node " + m.id + " (" + m.health + "): requests unknown " + reportAge(m), "stale").colSpan = 8;
  }
  if (!requests.rows.length) cell(requests.insertRow(), "none", "muted").colSpan = 8;
}

function logEvent(line) {
  const item = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString();
  item.append(time, line);
  $("events").prepend(item);
}

async function loadModels() {
  try {
    const response = await fetch("/api/tags", { headers: headers() });
    if (response.status === 401 || response.status === 403) { $("auth").style.display = "flex"; return; }
    const body = await response.json();
    const select = $("model");
    const current = select.value;
    select.replaceChildren();
    for (const model of body.models || []) {
      const option = document.createElement("option");
      option.value = option.textContent = model.name;
      select.appendChild(option);
    }
    if (current) select.value = current;
  } catch (error) { /* the event stream shows the connection state */ }
}

let events = null;
function connect() {
  // EventSource cannot send headers: the key goes as `?key=`, which the server takes on this route only.
  if (events) events.close();
  events = new EventSource("/api/ui/events" + (apiKey ? "?key=" + encodeURIComponent(apiKey) : ""));
  events.addEventListener("open", () => { $("conn").className = "badge alive"; $("conn").textContent = "live"; });
  events.addEventListener("error", () => { $("conn").className = "badge dead"; $("conn").textContent = "reconnecting"; });
  events.addEventListener("status", (message) => render(JSON.parse(message.data)));
  events.addEventListener("event", (message) => { logEvent(message.data); loadModels(); });
}

$("chat").addEventListener("submit", async (submit) => {
  submit.preventDefault();
  const answer = $("answer");
  const prompt = $("prompt").value.trim();
  if (!prompt || !$("model").value) return;
  answer.className = "";
  answer.textContent = "";
  answer.dataset.state = "streaming";
  const body = { model: $("model").value, messages: [{ role: "user", content: prompt }], stream: true };
  const limit = parseInt($("num_predict").value, 10);
  if (limit > 0) body.options = { num_predict: limit };
  $("send").disabled = true;
  try {
    const response = await fetch("/api/chat", {
      method: "POST",
      headers: Object.assign({ "Content-Type": "application/json" }, headers()),
      body: JSON.stringify(body),
    });
    answer.dataset.requestId = response.headers.get("X-Request-Id") || "";
    if (!response.ok) {
      answer.textContent = "error: " + ((await response.json()).error || response.status);
      answer.dataset.state = "error";
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffered = "";
    let tokens = 0;
    const started = performance.now();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffered += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffered.indexOf("\n")) >= 0) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (!line) continue;
        const chunk = JSON.parse(line);
        if (chunk.error) { answer.append("\n[error: " + chunk.error + "]"); answer.dataset.state = "error"; continue; }
        if (chunk.message && chunk.message.content) { answer.append(chunk.message.content); tokens += 1; }
        if (chunk.done) {
          const seconds = (performance.now() - started) / 1000;
          const stats = document.createElement("span");
          stats.className = "stats";
          stats.textContent = tokens + " tokens in " + seconds.toFixed(2) + " s (" + (tokens / seconds).toFixed(1) + " tokens/s)";
          answer.appendChild(stats);
          answer.dataset.state = "done";
        }
      }
    }
  } catch (error) {
    answer.append("\n[error: " + error + "]");
    answer.dataset.state = "error";
  } finally {
    $("send").disabled = false;
  }
});

$("auth").addEventListener("submit", (submit) => {
  submit.preventDefault();
  apiKey = $("key").value;
  sessionStorage.setItem("ollamamax-key", apiKey);
  $("auth").style.display = "none";
  connect();
  loadModels();
});

// `?model=NAME&prompt=TEXT` fills the chat box and sends it once the models are known (links and tests).
const params = new URLSearchParams(location.search);
connect();
loadModels().then(() => {
  if (params.get("model")) $("model").value = params.get("model");
  if (params.get("prompt")) { $("prompt").value = params.get("prompt"); $("chat").requestSubmit(); }
});
setInterval(loadModels, 10000);
