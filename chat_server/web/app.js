// The web chat page: the TypeScript client (served from clients/js/dist) for the
// WebSocket, REST for the team and the conversation list. Model output is untrusted:
// Markdown is rendered with raw HTML escaped, then sanitised by DOMPurify.
import { ChatClient, activeBranch } from "/client/client.js";
import { marked } from "/web/vendor/marked.esm.js";
import DOMPurify from "/web/vendor/purify.es.mjs";

const $ = (id) => document.getElementById(id);
const escape = (s) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
marked.use({ renderer: { html: ({ text }) => escape(text) } }); // raw HTML stays text
DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") node.setAttribute("rel", "noopener noreferrer");
});
const markdown = (text) => DOMPurify.sanitize(marked.parse(text, { async: false }));

let client = null;
let voiceOn = false;
let token = localStorage.getItem("chat-token") || "";
let current = null; // conversation id
let assistants = []; // the team, from REST
const rendered = new Map(); // message key → { li, text }

async function api(method, path, body) {
  const response = await fetch(`/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json();
  if (!response.ok) throw new Error(data.message || response.statusText);
  return data;
}

// ---------------------------------------------------------------- sign in

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  token = $("token").value.trim();
  if (token) start();
});
$("signout").addEventListener("click", () => {
  localStorage.removeItem("chat-token");
  location.reload();
});

async function start() {
  localStorage.setItem("chat-token", token);
  $("signin").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  client = new ChatClient({
    url: document.body.dataset.ws,
    token,
    storage: localStorage,
    client: "web",
    // Voice: replies arrive in phrase-sized chunks to speak, and the user speaking over a
    // reply (the first partial transcript) interrupts it where it was heard.
    options: voiceOn
      ? { speech_chunks: true, interrupt_on: "partial", early_routing: true }
      : { smooth_streaming: true, thoughts: true }, // text flows word by word; thinking shown apart
  });
  client.on("delta", speak);
  client.on("status", showStatus);
  client.on("state", () => render());
  client.on("error", (e) => showStatus(`error: ${e.message}`));
  client.on("conversation", (e) => {
    if (e.conversation_id === current) $("title").textContent = e.conversation.title || "Untitled";
    loadConversations();
  });
  try {
    await client.connect();
  } catch (error) {
    showStatus(`closed: ${client.state.error?.message ?? error.message}`);
    return;
  }
  $("who").textContent = client.state.userId ?? "";
  await loadTeam();
  const list = await loadConversations();
  const wanted = sessionStorage.getItem("chat-current");
  const first = list.find((c) => c.id === wanted) ?? list[0];
  if (first) await openConversation(first.id);
}

function showStatus(status) {
  $("status").textContent = status === "open" ? "connected" : status;
  $("status").dataset.status = status;
}

// ---------------------------------------------------------------- conversations

async function loadConversations() {
  const page = await api("GET", "/conversations?limit=100");
  const ul = $("conversations");
  ul.replaceChildren();
  for (const c of page.items) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = c.title || "Untitled";
    button.dataset.id = c.id;
    button.setAttribute("aria-current", String(c.id === current));
    button.addEventListener("click", () => openConversation(c.id));
    li.append(button);
    ul.append(li);
  }
  return page.items;
}

$("new").addEventListener("click", async () => {
  const title = prompt("Title of the new conversation", "New conversation");
  if (title === null) return;
  const info = await client.create(title || null);
  await loadConversations();
  await openConversation(info.id);
});

$("rename").addEventListener("click", async () => {
  if (!current) return;
  const title = prompt("New title", $("title").textContent);
  if (title === null) return;
  await api("PATCH", `/conversations/${current}`, { title: title.trim() || null });
});

$("delete").addEventListener("click", async () => {
  if (!current || !confirm("Delete this conversation and its messages?")) return;
  await api("DELETE", `/conversations/${current}`);
  await client.leave(current).catch(() => {});
  current = null;
  sessionStorage.removeItem("chat-current");
  const list = await loadConversations();
  if (list[0]) await openConversation(list[0].id);
  else render();
});

async function openConversation(id) {
  current = id;
  sessionStorage.setItem("chat-current", id);
  rendered.clear();
  $("messages").replaceChildren();
  const info = await client.join(id);
  $("title").textContent = info.title || "Untitled";
  for (const b of $("conversations").querySelectorAll("button")) {
    b.setAttribute("aria-current", String(b.dataset.id === id));
  }
  await olderHistory();
  render();
  scrollDown();
}

/** History paging: the page before the oldest message shown (scrolling up loads more).
 * Returns how many messages it added. */
async function olderHistory() {
  const c = client.state.conversations[current];
  if (!c) return 0;
  const branch = activeBranch(c);
  const oldest = branch[0];
  if (oldest && !oldest.parentId) return 0; // the branch's first turn is shown
  const page = await client.history(current, oldest?.seq, 50); // joins the client's state
  return page.messages.length;
}

$("messages").addEventListener("scroll", async (event) => {
  if (event.target.scrollTop > 0 || !current) return;
  const height = event.target.scrollHeight;
  if ((await olderHistory()) > 0) {
    render();
    event.target.scrollTop = event.target.scrollHeight - height;
  }
});

// ---------------------------------------------------------------- the chat

function render() {
  if (!client || !current) return;
  const c = client.state.conversations[current];
  if (!c) return;
  $("presence").textContent = c.devices ? `${c.devices} device${c.devices > 1 ? "s" : ""} here` : "";
  // Only the branch shown: regenerated replies and edited turns are its alternatives.
  const items = activeBranch(c).map((b) => ({
    key: b.id, seq: b.seq, role: b.role, text: b.message ? b.text : b.reply.text,
    message: b.message, reply: b.reply, streaming: !b.message && !b.reply.done, branch: b,
  }));
  const list = $("messages");
  const keys = new Set(items.map((i) => i.key));
  for (const li of [...list.children]) if (!keys.has(li.dataset.key)) li.remove();
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  let previous = null;
  for (const item of items) {
    let entry = rendered.get(item.key);
    if (!entry) {
      entry = { li: document.createElement("li"), text: null, meta: null };
      entry.li.className = `msg ${item.role}`;
      entry.li.dataset.key = item.key;
      entry.li.innerHTML =
        '<div class="meta"></div><details class="thoughts" hidden><summary>Thinking</summary><div></div></details><ul class="calls" hidden></ul><div class="body"></div>';
      rendered.set(item.key, entry);
    }
    const reply = item.reply ?? c.replies[item.message?.id];
    const meta = metaOf(item, reply);
    if (entry.meta !== meta) {
      entry.meta = meta;
      fillMeta(entry.li.firstChild, item, reply);
    }
    const thoughts = reply?.thoughts ?? "";
    if (entry.thoughts !== thoughts) {
      entry.thoughts = thoughts; // the model's thought summary: apart, never the reply
      const details = entry.li.querySelector(".thoughts");
      details.hidden = !thoughts;
      details.lastChild.innerHTML = markdown(thoughts);
    }
    const calls = item.message?.tools ?? reply?.tools ?? [];
    const callsKey = JSON.stringify(calls);
    if (entry.calls !== callsKey) {
      entry.calls = callsKey; // the tools the reply called, as they run and end
      const ul = entry.li.querySelector(".calls");
      ul.hidden = calls.length === 0;
      ul.replaceChildren(...calls.map(callItem));
    }
    if (entry.text !== item.text) {
      entry.text = item.text;
      const body = entry.li.lastChild;
      if (item.role === "user") body.textContent = item.text;
      else body.innerHTML = markdown(item.text);
    }
    entry.li.dataset.streaming = String(Boolean(item.streaming));
    const anchor = previous ? previous.nextSibling : list.firstChild;
    if (entry.li !== anchor) list.insertBefore(entry.li, anchor);
    previous = entry.li;
  }
  const streaming = items.some((i) => i.streaming);
  $("stop").disabled = !streaming;
  if (atBottom) scrollDown();
}

/** One tool call: its name and arguments, then its outcome once it is in. */
function callItem(call) {
  const li = document.createElement("li");
  const state = call.ok ? "ok" : call.error ? "failed" : "running";
  li.dataset.state = state;
  const args = Object.entries(call.arguments ?? {}).map(([k, v]) => `${k}: ${JSON.stringify(v)}`);
  const outcome = call.ok
    ? ` → ${JSON.stringify(call.result)}`
    : call.error
      ? ` → ${call.error.code}: ${call.error.message}`
      : " …";
  li.textContent = `${call.name}(${args.join(", ")})${outcome}`; // text only: untrusted
  return li;
}

const scrollDown = () => ($("messages").scrollTop = $("messages").scrollHeight);

function metaOf(item, reply) {
  const place = `${item.branch.alternative}/${item.branch.alternatives}|${item.streaming}`;
  if (item.role === "user") return `you|${place}`;
  return `${reply?.assistant?.name}|${reply?.route?.why}|${item.message?.assistant_id}|${reply?.finishReason}|${place}`;
}

/** A small button in a message's meta line. */
function action(label, title, run) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "action";
  button.textContent = label;
  button.title = title;
  button.setAttribute("aria-label", title);
  button.addEventListener("click", () => run().catch((error) => showStatus(`failed: ${error.message}`)));
  return button;
}

/** "‹ 2/3 ›" for a message with alternatives: switch the branch shown. */
function alternatives(item) {
  const { id, alternative, alternatives: count } = item.branch;
  const nav = document.createElement("span");
  nav.className = "alternatives";
  const go = (n) => () => client.switch(current, id, n);
  const previous = action("‹", "Previous version", go(alternative - 1));
  const next = action("›", "Next version", go(alternative + 1));
  previous.disabled = alternative <= 1;
  next.disabled = alternative >= count;
  const where = document.createElement("span");
  where.className = "place";
  where.textContent = `${alternative}/${count}`;
  nav.append(previous, where, next);
  return nav;
}

function fillMeta(meta, item, reply) {
  meta.replaceChildren();
  if (item.branch.alternatives > 1) meta.append(alternatives(item));
  if (item.role === "user") {
    meta.append("you");
    // Edit: the corrected turn starts a new branch from this one's parent.
    meta.append(action("Edit", "Edit and resend", async () => {
      const text = prompt("Edit your message", item.text);
      if (text === null || !text.trim() || text.trim() === item.text) return;
      await client.send(current, text.trim(), undefined, item.key);
    }));
    return;
  }
  const who = document.createElement("strong");
  who.textContent = reply?.assistant?.name ?? nameOf(item.message?.assistant_id);
  meta.append(who);
  if (reply?.route?.why) {
    const why = document.createElement("span");
    why.className = "why";
    why.textContent = reply.route.why;
    meta.append(why);
  }
  if (reply?.finishReason && reply.finishReason !== "stop") meta.append(` (${reply.finishReason})`);
  if (!item.streaming && item.branch.parentId) {
    meta.append(action("Regenerate", "Regenerate this reply", () => client.regenerate(current, item.branch.parentId)));
  }
  const replyId = item.message?.id ?? reply?.turnId;
  if (!replyId) return;
  const select = document.createElement("select");
  select.setAttribute("aria-label", "Should have gone to…");
  select.innerHTML = '<option value="">Should have gone to…</option>';
  for (const a of assistants) select.append(new Option(a.name, a.id));
  select.addEventListener("change", async () => {
    if (!select.value) return;
    await api("POST", "/feedback", { message_id: replyId, assistant_id: select.value });
    select.replaceWith(document.createTextNode(" · thanks, noted"));
  });
  meta.append(select);
}

const nameOf = (id) => assistants.find((a) => a.id === id)?.name ?? "assistant";

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  sendText();
});
$("text").addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition
  // (Japanese input: isComposing, or keyCode 229 in some browsers) must not send.
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  sendText();
});

function sendText() {
  const text = $("text").value.trim();
  if (!text || !current) return;
  $("text").value = "";
  client.send(current, text).catch((error) => showStatus(`not sent: ${error.message}`));
}

$("stop").addEventListener("click", () => {
  const c = client?.state.conversations[current];
  const streaming = Object.values(c?.replies ?? {}).filter((r) => !r.done);
  for (const r of streaming) client.cancel(current, r.turnId);
});

// ---------------------------------------------------------------- the team

async function loadTeam() {
  assistants = await api("GET", "/assistants");
  const ul = $("assistants");
  ul.replaceChildren();
  const select = $("skill-assistant");
  select.replaceChildren();
  $("tool-assistant").replaceChildren();
  for (const a of assistants) {
    const li = document.createElement("li");
    li.className = "assistant";
    const name = document.createElement("span");
    name.textContent = a.name;
    const budget = a.thinking_budget ?? null; // tokens to think on complex turns
    if (budget !== null) name.title = `thinking budget ${budget}`;
    li.append(
      name,
      editButton("Rename", `Rename ${a.name}`, a.name, (v) => api("PATCH", `/assistants/${a.id}`, { name: v })),
      editButton("Thinking", `Thinking tokens for ${a.name}'s complex turns (0: off, -1: the model decides)`, String(budget ?? -1), (v) => {
        if (!/^-?\d+$/.test(v)) throw new Error("a whole number, -1 or more");
        return api("PATCH", `/assistants/${a.id}`, { thinking_budget: Number(v) });
      }),
    );
    const tools = await api("GET", `/assistants/${a.id}/tools`);
    if (tools.length) {
      const sub = document.createElement("ul");
      for (const t of tools) {
        const item = document.createElement("li");
        item.className = "tool";
        const text = document.createElement("span");
        text.textContent = `tool ${t.name}: ${t.url}`;
        text.title = t.description;
        item.append(text, editButton("Delete", null, null, () => api("DELETE", `/tools/${t.id}`)));
        sub.append(item);
      }
      li.append(sub);
    }
    const skills = await api("GET", `/assistants/${a.id}/skills`);
    if (skills.length) {
      const sub = document.createElement("ul");
      for (const s of skills) {
        const item = document.createElement("li");
        item.className = "skill";
        const text = document.createElement("span");
        text.textContent = `${s.name}: ${s.description}`;
        item.append(
          text,
          editButton("Edit", `Describe ${s.name}`, s.description, (v) => api("PATCH", `/skills/${s.id}`, { description: v })),
          editButton("Delete", null, null, () => api("DELETE", `/skills/${s.id}`)),
        );
        sub.append(item);
      }
      li.append(sub);
    }
    ul.append(li);
    select.append(new Option(a.name, a.id));
    $("tool-assistant").append(new Option(a.name, a.id));
  }
}

/** A small button that asks for a new value (or a confirmation) and saves it. */
function editButton(label, question, value, save) {
  const button = document.createElement("button");
  button.type = "button";
  button.textContent = label;
  button.addEventListener("click", async () => {
    const answer = question ? prompt(question, value) : confirm(`${label}?`) ? "" : null;
    if (answer === null || (question && !answer.trim())) return;
    try {
      await save(answer.trim());
    } catch (error) {
      showStatus(`not saved: ${error.message}`);
    }
    await loadTeam();
  });
  return button;
}

$("new-assistant").addEventListener("submit", async (event) => {
  event.preventDefault();
  await api("POST", "/assistants", { name: $("assistant-name").value.trim() });
  $("assistant-name").value = "";
  await loadTeam();
});

$("new-tool").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("POST", `/assistants/${$("tool-assistant").value}/tools`, {
      name: $("tool-name").value.trim(),
      description: $("tool-description").value.trim(),
      url: $("tool-url").value.trim(),
      parameters: JSON.parse($("tool-parameters").value || '{"type": "object"}'),
    });
  } catch (error) {
    showStatus(`tool not saved: ${error.message}`);
    return;
  }
  for (const id of ["tool-name", "tool-description", "tool-url"]) $(id).value = "";
  await loadTeam();
});

$("new-skill").addEventListener("submit", async (event) => {
  event.preventDefault();
  await api("POST", `/assistants/${$("skill-assistant").value}/skills`, {
    name: $("skill-name").value.trim(),
    description: $("skill-description").value.trim(),
  });
  $("skill-name").value = $("skill-description").value = "";
  await loadTeam();
});

// ---------------------------------------------------------------- voice mode

const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;
let recognition = null;
let utterance = null; // the input being spoken: { id }
const speaking = { turnId: null, heard: 0, queued: 0 }; // the reply being read aloud

$("voice").addEventListener("click", async () => {
  if (!Recognition || !window.speechSynthesis) {
    showStatus("voice needs the Web Speech API (Chrome, Edge, Safari)");
    return;
  }
  voiceOn = !voiceOn;
  $("voice").setAttribute("aria-pressed", String(voiceOn));
  client.close(); // the session options change: reconnect with them (same conversation)
  rendered.clear();
  await start();
  if (voiceOn) listen();
  else {
    recognition?.stop();
    recognition = null;
    speechSynthesis.cancel();
  }
});

function listen() {
  recognition = new Recognition();
  recognition.continuous = true;
  recognition.interimResults = true;
  recognition.lang = navigator.language || "en-US";
  recognition.onresult = (event) => {
    for (let i = event.resultIndex; i < event.results.length; i++) {
      const result = event.results[i];
      const text = result[0].transcript.trim();
      if (!text || !current) continue;
      utterance ??= { id: crypto.randomUUID() };
      // Talking over the reply: stop reading it, and tell the server how much was heard.
      const heard = speaking.turnId && speaking.queued > 0 ? speaking.heard : undefined;
      if (heard !== undefined) {
        speechSynthesis.cancel();
        speaking.queued = 0;
      }
      client.input(current, utterance.id, text, result.isFinal, heard);
      if (result.isFinal) utterance = null;
    }
  };
  recognition.onend = () => voiceOn && recognition && recognition.start(); // keep listening
  recognition.start();
}

/** In voice mode every delta is a phrase (speech_chunks): read it aloud in order. */
function speak(delta) {
  if (!voiceOn || delta.conversation_id !== current || !delta.text.trim()) return;
  if (speaking.turnId !== delta.turn_id) Object.assign(speaking, { turnId: delta.turn_id, heard: 0, queued: 0 });
  const phrase = new SpeechSynthesisUtterance(delta.text);
  speaking.queued += 1;
  phrase.onend = () => {
    if (speaking.turnId !== delta.turn_id) return;
    speaking.heard = delta.offset + delta.text.length; // heard up to here
    speaking.queued = Math.max(0, speaking.queued - 1);
  };
  speechSynthesis.speak(phrase);
}

if (token) start();
