// The appliance playground: a plain client of the public /v1 API (no framework, no network
// beyond this origin). The key lives in sessionStorage only.
"use strict";

const KEY_ITEM = "appliance.key";
const $ = (id) => document.getElementById(id);

let speechModels = [];  // the models of kind "speech", for the chat answer's Speak button

function key() { return sessionStorage.getItem(KEY_ITEM) || ""; }

function say(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(isError));
}

async function failure(response) {
  let message = `HTTP ${response.status}`;
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) message += `: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return new Error(message);
}

async function api(path, options) {
  if (!key()) throw new Error("Paste an API key first.");
  const opts = options || {};
  const headers = Object.assign({ Authorization: `Bearer ${key()}` }, opts.headers || {});
  const response = await fetch(path, Object.assign({}, opts, { headers }));
  if (!response.ok) throw await failure(response);
  return response;
}

// ---- tabs (arrow keys move between tabs, as the ARIA tabs pattern does) ----
function setupTabs() {
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  const select = (tab) => {
    for (const other of tabs) {
      const chosen = other === tab;
      other.setAttribute("aria-selected", String(chosen));
      other.tabIndex = chosen ? 0 : -1;
      $(other.getAttribute("aria-controls")).hidden = !chosen;
    }
    if (tab.id === "tab-usage" && key()) loadUsage().catch((e) => say(e.message, true));
  };
  tabs.forEach((tab, index) => {
    tab.addEventListener("click", () => select(tab));
    tab.addEventListener("keydown", (event) => {
      let next = null;
      if (event.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
      if (event.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
      if (event.key === "Home") next = tabs[0];
      if (event.key === "End") next = tabs[tabs.length - 1];
      if (next) { event.preventDefault(); next.focus(); select(next); }
    });
  });
}

// ---- models ----
// /v1/models says each model's kind; the menus offer the models of their kind. A chat model
// that reasons says `reasoning` too: its option remembers it, for the effort selector; one
// whose `input_modalities` include "image" takes pictures: its option remembers that, for the
// attach button.
const MENUS = [["chat", "chat-model"], ["transcription", "transcribe-model"],
               ["image", "images-model"], ["speech", "speak-model"]];

function fill(select, models) {
  const previous = select.value;
  select.replaceChildren(...models.map((m) => {
    const option = new Option(m.id, m.id);
    if (m.reasoning) option.dataset.reasoning = m.reasoning;
    if ((m.input_modalities || []).includes("image")) option.dataset.vision = "yes";
    return option;
  }));
  if (models.some((m) => m.id === previous)) select.value = previous;
}

// The effort selector is offered only for a model that reasons (others refuse the field),
// the image input only for a model that takes images (others refuse image parts).
function showEffort() {
  const chosen = $("chat-model").selectedOptions[0];
  const reasons = Boolean(chosen && chosen.dataset.reasoning);
  $("chat-effort").hidden = !reasons;
  $("chat-effort-label").hidden = !reasons;
  $("chat-image-row").hidden = !(chosen && chosen.dataset.vision);
}

// The attached picture as a data URL (the server takes no file uploads in chat: the picture
// travels in the JSON body, as OpenAI's image_url part).
function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`Could not read ${file.name}.`));
    reader.readAsDataURL(file);
  });
}

// The user turn: its text alone, or its text and the attached picture as content parts.
async function userTurn() {
  const text = $("chat-prompt").value;
  const file = $("chat-image").files[0];
  if ($("chat-image-row").hidden || !file) return { role: "user", content: text };
  const url = await readAsDataURL(file);
  return { role: "user", content: [{ type: "text", text },
                                   { type: "image_url", image_url: { url } }] };
}

async function loadModels() {
  const body = await (await api("/v1/models")).json();
  for (const [kind, select] of MENUS) {
    const matching = body.data.filter((m) => m.kind === kind);
    fill($(select), matching.length ? matching : body.data);
  }
  showEffort();
  speechModels = body.data.filter((m) => m.kind === "speech").map((m) => m.id);
  $("chat-speak").disabled = !speechModels.length || !$("chat-output").textContent.trim();
  say(`Key accepted: ${body.data.length} model names.`);
}

function setupKey() {
  $("key").value = key();
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, $("key").value.trim());
    loadModels().catch((e) => say(e.message, true));
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_ITEM);
    $("key").value = "";
    say("Key forgotten.");
  });
  if (key()) loadModels().catch((e) => say(e.message, true));
}

// ---- chat: SSE over fetch, rendered as it arrives ----
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:"))
        .map((l) => l.slice(5).trimStart()).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

// A reasoning model's thinking, shown apart from the answer in a collapsed block that says
// "Thinking…" while it streams and how long it was once the answer begins.
function reasoningView() {
  const block = $("chat-reasoning");
  const summary = $("chat-reasoning-summary");
  const text = $("chat-reasoning-text");
  return {
    reset() {
      block.hidden = true;
      block.open = false;
      text.textContent = "";
      summary.textContent = "Thinking…";
      block.dataset.state = "";
    },
    add(piece) {
      block.hidden = false;
      block.dataset.state = "thinking";
      text.textContent += piece;
    },
    // The answer began or the stream ended: the thinking is over (its length in tokens once
    // the usage chunk says it).
    end(tokens) {
      if (block.hidden) return;
      block.dataset.state = "done";
      summary.textContent = tokens ? `Thought for ${tokens} tokens` : "Thought";
    },
  };
}

function setupChat() {
  let controller = null;
  const output = $("chat-output");
  const stats = $("chat-stats");
  const thinking = reasoningView();
  $("chat-model").addEventListener("change", showEffort);
  $("chat-image-clear").addEventListener("click", () => { $("chat-image").value = ""; });
  $("chat-stop").addEventListener("click", () => { if (controller) controller.abort(); });
  $("chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const messages = [];
    const system = $("chat-system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    try {
      messages.push(await userTurn());
    } catch (error) {
      say(error.message, true);
      return;
    }
    const body = {
      model: $("chat-model").value, messages, stream: true,
      stream_options: { include_usage: true },
      temperature: Number($("chat-temperature").value),
      max_tokens: Number($("chat-max-tokens").value),
    };
    if ($("chat-json").checked) body.response_format = { type: "json_object" };
    if (!$("chat-effort").hidden && $("chat-effort").value) {
      body.reasoning_effort = $("chat-effort").value;
    }
    controller = new AbortController();
    $("chat-send").disabled = true;
    $("chat-stop").disabled = false;
    output.textContent = "";
    stats.textContent = "";
    thinking.reset();
    output.dataset.state = "streaming";
    const started = performance.now();
    let firstToken = null;
    let usage = null;
    let finish = null;
    try {
      const response = await api("/v1/chat/completions", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body), signal: controller.signal,
      });
      say("Streaming…");
      for await (const chunk of sseEvents(response)) {
        if (chunk.usage) usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          const delta = choice.delta || {};
          // The server sends reasoning_content, reasoning or both (its reasoning_field).
          const thought = delta.reasoning_content || delta.reasoning;
          if (thought) {
            if (firstToken === null) firstToken = performance.now() - started;
            thinking.add(thought);
          }
          const text = delta.content;
          if (text) {
            if (firstToken === null) firstToken = performance.now() - started;
            thinking.end();
            output.textContent += text;
          }
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
      output.dataset.state = "done";
      say("Done.");
      $("chat-speak").disabled = !speechModels.length || !output.textContent.trim();
    } catch (error) {
      if (error.name === "AbortError") {
        output.dataset.state = "stopped";
        say("Stopped.");
      } else {
        output.dataset.state = "error";
        say(error.message, true);
      }
    } finally {
      thinking.end();  // a stopped or failed stream: "Thought", no longer "Thinking…"
      const details = usage && usage.completion_tokens_details;
      if (details && details.reasoning_tokens) thinking.end(details.reasoning_tokens);
      controller = null;
      $("chat-send").disabled = false;
      $("chat-stop").disabled = true;
    }
    const parts = [];
    if (usage) parts.push(`${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens`);
    const pictured = usage && usage.prompt_tokens_details
      && usage.prompt_tokens_details.image_tokens;
    if (pictured) parts.push(`${pictured} prompt tokens from the image`);
    const reasoned = usage && usage.completion_tokens_details
      && usage.completion_tokens_details.reasoning_tokens;
    if (reasoned) parts.push(`of them ${reasoned} reasoning`);
    if (firstToken !== null) parts.push(`first token after ${Math.round(firstToken)} ms`);
    parts.push(`total ${Math.round(performance.now() - started)} ms`);
    if (finish) parts.push(`finish: ${finish}`);
    if (output.dataset.state === "stopped") parts.push("stopped by you");
    stats.textContent = parts.join(" · ");
  });
}

// ---- speak: POST /v1/audio/speech, played as it streams where the browser can ----
// mp3 streams into a MediaSource (Chrome and Firefox take audio/mpeg there), so playback
// starts with the first sentence; other formats play once the whole file is in.
function appendTo(buffer, bytes) {
  return new Promise((resolve, reject) => {
    buffer.addEventListener("updateend", resolve, { once: true });
    buffer.addEventListener("error", reject, { once: true });
    buffer.appendBuffer(bytes);
  });
}

async function speak(body, audio, onFirstByte) {
  const response = await api("/v1/audio/speech", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "application/octet-stream";
  const reader = response.body.getReader();
  const chunks = [];
  let source = null;
  let buffer = null;
  audio.hidden = false;
  if (type === "audio/mpeg" && window.MediaSource && MediaSource.isTypeSupported(type)) {
    source = new MediaSource();
    audio.src = URL.createObjectURL(source);
    await new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));
    buffer = source.addSourceBuffer(type);
  }
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    if (!chunks.length) onFirstByte();
    chunks.push(value);
    if (buffer) {
      await appendTo(buffer, value);
      if (audio.paused && chunks.length === 1) audio.play().catch(() => {});
    }
  }
  const blob = new Blob(chunks, { type });
  if (source) source.endOfStream();
  else if (type !== "audio/pcm") {
    audio.src = URL.createObjectURL(blob);
    audio.play().catch(() => {});
  } else audio.hidden = true;  // raw samples: no browser plays them
  return blob;
}

function setupSpeak() {
  $("speak-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const format = $("speak-format").value;
    const body = { model: $("speak-model").value, voice: $("speak-voice").value.trim(),
                   input: $("speak-input").value, response_format: format,
                   speed: Number($("speak-speed").value) };
    const started = performance.now();
    let first = null;
    $("speak-send").disabled = true;
    $("speak-download").hidden = true;
    $("speak-stats").textContent = "";
    say("Speaking…");
    try {
      const blob = await speak(body, $("speak-audio"), () => { first = performance.now() - started; });
      const link = $("speak-download");
      link.href = URL.createObjectURL(blob);
      link.download = `speech.${format}`;
      link.textContent = `Download speech.${format} (${Math.round(blob.size / 1024)} KiB)`;
      link.hidden = false;
      $("speak-stats").textContent = `first audio after ${Math.round(first)} ms · ` +
        `total ${Math.round(performance.now() - started)} ms`;
      say("Done.");
    } catch (error) {
      say(error.message, true);
    } finally {
      $("speak-send").disabled = false;
    }
  });
  $("chat-speak").addEventListener("click", async () => {
    const text = $("chat-output").textContent.trim().slice(0, 4096);
    if (!text || !speechModels.length) return;
    $("chat-speak").disabled = true;
    say("Speaking the answer…");
    try {
      await speak({ model: speechModels[0], voice: "alloy", input: text, response_format: "mp3" },
                  $("chat-audio"), () => {});
      say("Done.");
    } catch (error) {
      say(error.message, true);
    } finally {
      $("chat-speak").disabled = false;
    }
  });
}

// ---- transcribe ----
function showTranscript(format, payload) {
  const table = $("transcribe-segments");
  const rows = table.querySelector("tbody");
  rows.replaceChildren();
  if (typeof payload === "string") {
    $("transcribe-output").textContent = payload;
    table.hidden = true;
    return;
  }
  $("transcribe-output").textContent = payload.text;
  const segments = payload.segments || [];
  for (const segment of segments) {
    const row = rows.insertRow();
    row.insertCell().textContent = Number(segment.start).toFixed(2);
    row.insertCell().textContent = Number(segment.end).toFixed(2);
    row.insertCell().textContent = segment.text;
  }
  table.hidden = segments.length === 0;
}

async function transcribe(file, name) {
  const format = $("transcribe-format").value;
  const form = new FormData();
  form.append("file", file, name);
  form.append("model", $("transcribe-model").value);
  form.append("response_format", format);
  $("transcribe-send").disabled = true;
  say("Transcribing…");
  try {
    const response = await api("/v1/audio/transcriptions", { method: "POST", body: form });
    const json = format === "json" || format === "verbose_json";
    showTranscript(format, json ? await response.json() : await response.text());
    say("Transcribed.");
  } finally {
    $("transcribe-send").disabled = false;
  }
}

function setupTranscribe() {
  $("transcribe-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const file = $("transcribe-file").files[0];
    if (!file) { say("Choose an audio file first.", true); return; }
    transcribe(file, file.name).catch((e) => say(e.message, true));
  });
  const button = $("transcribe-record");
  if (!(navigator.mediaDevices && window.MediaRecorder)) return;
  button.hidden = false;
  let recorder = null;
  button.addEventListener("click", async () => {
    if (recorder) { recorder.stop(); return; }
    try {
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
      const chunks = [];
      recorder = new MediaRecorder(stream);
      recorder.addEventListener("dataavailable", (e) => chunks.push(e.data));
      recorder.addEventListener("stop", () => {
        stream.getTracks().forEach((t) => t.stop());
        recorder = null;
        button.textContent = "Record";
        transcribe(new Blob(chunks, { type: "audio/webm" }), "recording.webm")
          .catch((e) => say(e.message, true));
      });
      recorder.start();
      button.textContent = "Stop recording";
      say("Recording… press Stop recording to transcribe.");
    } catch (error) {
      say(`Microphone unavailable: ${error.message}`, true);
    }
  });
}

// ---- images ----
function setupImages() {
  $("images-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = { model: $("images-model").value, prompt: $("images-prompt").value,
                   n: Number($("images-n").value), response_format: "b64_json" };
    const size = $("images-size").value.trim();
    if (size) body.size = size;
    $("images-send").disabled = true;
    say("Generating…");
    try {
      const response = await api("/v1/images/generations", {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      const result = await response.json();
      const gallery = $("images-output");
      gallery.replaceChildren();
      result.data.forEach((image, index) => {
        const url = `data:image/png;base64,${image.b64_json}`;
        const figure = document.createElement("figure");
        const img = document.createElement("img");
        img.src = url;
        img.alt = `Image ${index + 1} for: ${body.prompt}`;
        const link = document.createElement("a");
        link.href = url;
        link.download = `image-${index + 1}.png`;
        link.textContent = `Download image ${index + 1}`;
        const caption = document.createElement("figcaption");
        caption.append(link);
        figure.append(img, caption);
        gallery.append(figure);
      });
      say(`${result.data.length} image(s).`);
    } catch (error) {
      say(error.message, true);
    } finally {
      $("images-send").disabled = false;
    }
  });
}

// ---- usage: /v1/usage for a key's own usage; the organization routes for admin keys ----
const USAGE_KINDS = ["completions", "embeddings", "audio_transcriptions", "audio_speeches",
                     "images"];

async function adminUsage(days) {
  const now = Math.floor(Date.now() / 1000);
  const start = now - (now % 86400) - (days - 1) * 86400;
  const query = `start_time=${start}&bucket_width=1d&limit=${days}&group_by=api_key_id`;
  const rows = new Map();
  const row = (bucket, keyId, model) => {
    const id = `${bucket.start_time}|${keyId}|${model}`;
    if (!rows.has(id)) {
      const date = new Date(bucket.start_time * 1000).toISOString().slice(0, 10);
      rows.set(id, { date, key: keyId || "", model: model || "", requests: 0, cost: 0 });
    }
    return rows.get(id);
  };
  for (const kind of USAGE_KINDS) {
    const page = await (await api(`/v1/organization/usage/${kind}?${query}&group_by=model`)).json();
    for (const bucket of page.data) {
      for (const r of bucket.results) row(bucket, r.api_key_id, r.model).requests += r.num_model_requests;
    }
  }
  const costs = await (await api(`/v1/organization/costs?${query}&group_by=line_item`)).json();
  let currency = "";
  for (const bucket of costs.data) {
    for (const r of bucket.results) {
      if (!r.line_item) continue;
      row(bucket, r.api_key_id, r.line_item).cost += r.amount.value;
      currency = r.amount.currency;
    }
  }
  return { rows: Array.from(rows.values()), currency, scope: "Admin key: every key's usage." };
}

async function ownUsage(days) {
  const body = await (await api(`/v1/usage?days=${days}`)).json();
  const rows = body.data.map((r) => ({ date: r.date, key: body.api_key_name, model: r.model,
                                       requests: r.requests, cost: r.cost }));
  return { rows, currency: body.currency, scope: `Usage of key “${body.api_key_name}” only.` };
}

const SVG = "http://www.w3.org/2000/svg";
const COLOURS = ["#0b5cad", "#d9480f", "#2b8a3e", "#862e9c", "#e67700", "#0c8599"];

function svg(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) element.setAttribute(k, String(v));
  return element;
}

function drawChart(rows, days) {
  const today = Date.now() - (Date.now() % 86400000);
  const dates = [];
  for (let i = days - 1; i >= 0; i -= 1) dates.push(new Date(today - i * 86400000).toISOString().slice(0, 10));
  const models = Array.from(new Set(rows.map((r) => r.model))).sort();
  const totals = dates.map((d) => rows.filter((r) => r.date === d).reduce((s, r) => s + r.requests, 0));
  const peak = Math.max(1, ...totals);
  const width = 600, height = 220, left = 36, bottom = 28, top = 24;
  const slot = (width - left - 8) / dates.length;
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
                             "aria-label": `Requests per day for the last ${days} days` });
  chart.append(svg("line", { x1: left, y1: height - bottom, x2: width - 4, y2: height - bottom, stroke: "#888" }));
  const peakLabel = svg("text", { x: 2, y: top + 4 });
  peakLabel.textContent = String(peak);
  chart.append(peakLabel);
  dates.forEach((date, i) => {
    let y = height - bottom;
    models.forEach((model, m) => {
      const count = rows.filter((r) => r.date === date && r.model === model).reduce((s, r) => s + r.requests, 0);
      if (!count) return;
      const h = (count / peak) * (height - bottom - top);
      y -= h;
      const bar = svg("rect", { x: left + i * slot + slot * 0.15, y, width: slot * 0.7, height: h,
                                fill: COLOURS[m % COLOURS.length], "data-model": model, "data-count": count });
      const tip = svg("title", {});
      tip.textContent = `${date} ${model}: ${count} requests`;
      bar.append(tip);
      chart.append(bar);
    });
    const label = svg("text", { x: left + i * slot + slot / 2, y: height - 10, "text-anchor": "middle" });
    label.textContent = date.slice(5);
    chart.append(label);
  });
  models.forEach((model, m) => {
    const x = left + m * 150;
    chart.append(svg("rect", { x, y: 4, width: 10, height: 10, fill: COLOURS[m % COLOURS.length] }));
    const name = svg("text", { x: x + 14, y: 13 });
    name.textContent = model;
    chart.append(name);
  });
  $("usage-chart").replaceChildren(chart);
}

async function loadUsage() {
  const days = Math.min(31, Math.max(1, Number($("usage-days").value) || 7));
  let usage;
  try {
    usage = await ownUsage(days);
  } catch (error) {
    if (!/^HTTP 403/.test(error.message)) throw error;
    usage = await adminUsage(days);  // admin keys may not call /v1/usage, only /organization
  }
  $("usage-scope").textContent = usage.scope;
  const body = $("usage-table").querySelector("tbody");
  body.replaceChildren();
  for (const r of usage.rows) {
    const row = body.insertRow();
    for (const value of [r.date, r.key, r.model, r.requests,
                         `${r.cost.toFixed(4)} ${usage.currency.toUpperCase()}`]) {
      row.insertCell().textContent = String(value);
    }
  }
  drawChart(usage.rows, days);
  say(`Usage: ${usage.rows.reduce((s, r) => s + r.requests, 0)} requests in ${days} day(s).`);
}

function setupUsage() {
  $("usage-form").addEventListener("submit", (event) => {
    event.preventDefault();
    loadUsage().catch((e) => say(e.message, true));
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setupTabs();
  setupKey();
  setupChat();
  setupTranscribe();
  setupSpeak();
  setupImages();
  setupUsage();
});
