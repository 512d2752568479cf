// MiniMind chat page: talks to the server's own OpenAI-compatible API with streaming.
// No build step, no dependencies. State: the conversation (`history`) and the settings,
// which persist in localStorage. When /health lists tools (the server was started with
// --tools) and "Tools" is on, requests carry those tools and `execute_tools: true`: the server
// runs its agent loop, and each call and its result show as a small collapsible block.
"use strict";

const $ = (id) => document.getElementById(id);
const SETTINGS = ["temperature", "top_p", "max_tokens", "system", "api_key", "thinking", "use_tools"];
let history = [];        // [{role, content, tool_calls?, tool_call_id?}] of finished turns
let serverTools = [];    // OpenAI function specs the server runs itself (GET /health)
let controller = null;   // AbortController of the reply being streamed

function loadSettings() {
  for (const key of SETTINGS) {
    const saved = localStorage.getItem("minimind." + key);
    if (saved === null) continue;
    if ($(key).type === "checkbox") $(key).checked = saved === "true"; else $(key).value = saved;
  }
}
function saveSettings() {
  for (const key of SETTINGS) {
    const el = $(key);
    localStorage.setItem("minimind." + key, el.type === "checkbox" ? el.checked : el.value);
  }
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  div.textContent = text;  // textContent, never innerHTML: model output is untrusted text
  $("messages").appendChild(div);
  div.scrollIntoView({block: "end"});
  return div;
}

// One block per tool call: its name and arguments, then (once the server ran it) its result.
function addToolCall(node, call) {
  const block = $("tool-template").content.firstElementChild.cloneNode(true);
  block.dataset.id = call.id;
  block.querySelector(".tool-name").textContent = call.function.name;
  block.querySelector(".tool-args").textContent = call.function.arguments || "";
  node.querySelector(".tools").appendChild(block);
  return block;
}
function addToolResult(node, result) {
  const block = [...node.querySelectorAll(".tool-call")].find((b) => b.dataset.id === result.tool_call_id);
  if (!block) return;
  block.querySelector(".tool-result").textContent = result.content;
  block.classList.add("done");
}

function headers() {
  const h = {"Content-Type": "application/json"};
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

// Parse a server-sent-event stream: yields the JSON payload of each `data:` line until [DONE].
async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder("utf-8");  // {stream: true} keeps split UTF-8 bytes for the next chunk
  let buffer = "";
  while (true) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, {stream: true});
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
    }
  }
}

async function send(text) {
  const messages = [];
  const system = $("system").value.trim();
  if (system) messages.push({role: "system", content: system});
  messages.push(...history, {role: "user", content: text});
  addMessage("user", text);

  const node = $("assistant-template").content.firstElementChild.cloneNode(true);
  $("messages").appendChild(node);
  const think = node.querySelector(".thinking"), reasoning = node.querySelector(".reasoning");
  const content = node.querySelector(".content"), stats = node.querySelector(".stats");
  const body = {
    messages, stream: true, stream_options: {include_usage: true},
    temperature: parseFloat($("temperature").value), top_p: parseFloat($("top_p").value),
    max_tokens: parseInt($("max_tokens").value, 10), enable_thinking: $("thinking").checked,
  };
  const useTools = serverTools.length > 0 && $("use_tools").checked;
  if (useTools) Object.assign(body, {tools: serverTools, execute_tools: true});
  const turns = [];                       // finished assistant + tool messages of this reply
  let turnContent = "", turnCalls = [];   // the model reply being streamed
  controller = new AbortController();
  setBusy(true);
  const t0 = performance.now();
  let tFirst = null, tThinkEnd = null, answer = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
    });
    if (!response.ok) {
      const err = await response.json().catch(() => ({}));
      throw new Error((err.error && err.error.message) || response.statusText);
    }
    for await (const chunk of sseEvents(response)) {
      if (chunk.usage) {
        const secs = (performance.now() - (tFirst || t0)) / 1000;
        const n = chunk.usage.completion_tokens;
        stats.textContent = `${n} tokens · ${(n / Math.max(secs, 1e-3)).toFixed(1)} tokens/s`;
      }
      const delta = (chunk.choices[0] || {}).delta || {};
      if (tFirst === null && (delta.content || delta.reasoning_content)) tFirst = performance.now();
      if (delta.reasoning_content) {
        think.hidden = false;
        reasoning.textContent += delta.reasoning_content;
      }
      for (const d of delta.tool_calls || []) {
        if (d.id) {
          turnCalls.push({id: d.id, type: "function", function: {name: d.function.name, arguments: ""}});
          addToolCall(node, turnCalls[turnCalls.length - 1]);
        }
        const call = turnCalls[turnCalls.length - 1];
        if (call && d.function && d.function.arguments) {
          call.function.arguments += d.function.arguments;
          node.querySelector(`.tool-call[data-id="${call.id}"] .tool-args`).textContent = call.function.arguments;
        }
      }
      if (delta.tool_result) {
        if (turnCalls.length) {  // the reply that made these calls is finished: keep it in the history
          turns.push({role: "assistant", content: turnContent, tool_calls: turnCalls});
          turnContent = "", turnCalls = [];
        }
        turns.push({role: "tool", tool_call_id: delta.tool_result.tool_call_id, content: delta.tool_result.content});
        addToolResult(node, delta.tool_result);
      }
      if (delta.content) {
        turnContent += delta.content;
        if (tThinkEnd === null && !think.hidden) {
          tThinkEnd = performance.now();
          think.open = false;  // collapse the reasoning once the answer starts
          think.querySelector("summary").textContent = `Thought for ${((tThinkEnd - t0) / 1000).toFixed(1)} s`;
        }
        answer += delta.content;
        content.textContent = answer;
      }
      node.scrollIntoView({block: "end"});
    }
    if (!think.hidden && tThinkEnd === null) think.querySelector("summary").textContent = "Thoughts";
    history.push({role: "user", content: text}, ...turns, {role: "assistant", content: turnContent});
  } catch (err) {
    if (err.name === "AbortError") {
      stats.textContent = "stopped";
      history.push({role: "user", content: text}, ...turns, {role: "assistant", content: turnContent});
    } else {
      node.remove();
      addMessage("error", "Error: " + err.message);
    }
  } finally {
    controller = null;
    setBusy(false);
  }
}

function setBusy(busy) {
  $("send").disabled = busy;
  $("stop").hidden = !busy;
  document.body.dataset.busy = busy ? "1" : "";
}

function newChat() {
  if (controller) controller.abort();
  history = [];
  $("messages").replaceChildren();
  $("input").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  loadSettings();
  for (const key of SETTINGS) $(key).addEventListener("change", saveSettings);
  $("toggle-settings").addEventListener("click", () => {
    const panel = $("settings");
    panel.hidden = !panel.hidden;
    $("toggle-settings").setAttribute("aria-expanded", String(!panel.hidden));
  });
  $("new-chat").addEventListener("click", newChat);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    const text = $("input").value.trim();
    if (!text || controller) return;
    $("input").value = "";
    send(text);
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {  // isComposing: Chinese IME in progress
      e.preventDefault();
      $("composer").requestSubmit();
    }
  });
  fetch("/health").then((r) => r.json()).then((h) => {
    serverTools = h.tools || [];
    $("tools-setting").hidden = serverTools.length === 0;
    $("tools-setting").title = serverTools.map((t) => t.function.name).join(", ");
  }).catch(() => {});
  fetch("/v1/models", {headers: headers()}).then((r) => r.json()).then((m) => {
    if (m.data && m.data.length) $("model-name").textContent = m.data[0].id;
  }).catch(() => {});
  $("input").focus();
});
