// The client's guarantees against real servers started by tests/test_js_client.py:
// CHAT_WS_A and CHAT_WS_B are two replicas (shared Redis and Postgres), CHAT_PID_A the
// first one's process, CHAT_WS_JWT a server that requires signed tokens.
import { test } from "node:test";
import assert from "node:assert/strict";
import { ChatClient, activeBranch } from "../dist/client.js";

const A = process.env.CHAT_WS_A;
const B = process.env.CHAT_WS_B;
const httpOf = (ws) => ws.replace("ws://", "http://").replace(/\/ws$/, "");
const slow = (tokens, tps = 40) => `[[sim tps=${tps} tokens=${tokens}]]`;
const user = () => `js-${Math.random().toString(36).slice(2, 10)}`;

function until(client, type, check = () => true, timeoutMs = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} in ${timeoutMs} ms`)), timeoutMs);
    timer.unref(); // a wait nobody needs any more does not hold the test run open
    const off = client.on(type, (m) => {
      if (check(m)) {
        clearTimeout(timer);
        off();
        resolve(m);
      }
    });
  });
}

async function stored(ws, token, conversationId) {
  const response = await fetch(`${httpOf(ws)}/api/v1/conversations/${conversationId}/messages`, {
    headers: { Authorization: `Bearer ${token}` },
  });
  assert.equal(response.status, 200);
  return (await response.json()).messages;
}

test("a reply streams in and equals the stored reply", async () => {
  const token = user();
  const client = new ChatClient({ url: A, token });
  await client.connect();
  const conversation = await client.create("streams");
  const ended = until(client, "turn_end");
  const ack = await client.send(conversation.id, `hello ${slow(20, 200)}`);
  assert.equal(ack.duplicate ?? false, false);
  const end = await ended;
  const reply = client.state.conversations[conversation.id].replies[end.turn_id];
  assert.equal(reply.done, true);
  assert.equal(reply.text, end.message.text);
  assert.ok(reply.text.split(" ").length >= 20);
  const rows = await stored(A, token, conversation.id);
  assert.deepEqual(rows.map((m) => m.role), ["user", "assistant"]);
  client.close();
});

test("a socket dropped mid-reply resumes with no repeated and no missing character", async () => {
  const token = user();
  const client = new ChatClient({ url: A, token, backoffBaseMs: 50 });
  await client.connect();
  const conversation = await client.create("drop");
  // Waits start before the send: an ack and a turn_start that arrive in one read are
  // handled in one task, before the code after `await send` runs.
  const started = until(client, "turn_start");
  const streaming = until(client, "delta", (d) => d.offset > 0);
  await client.send(conversation.id, `long ${slow(80, 40)}`);
  const start = await started;
  await streaming;
  const seen = [];
  client.on("delta", (d) => seen.push(d));
  client.ws.close(4000, "test drop"); // a real close mid-reply; 4000 means resume
  await until(client, "status", (s) => s === "open");
  const end = await until(client, "turn_end", (e) => e.turn_id === start.turn_id);
  const reply = client.state.conversations[conversation.id].replies[start.turn_id];
  assert.equal(reply.text, end.message.text, "the streamed text is the stored reply");
  const resumed = seen.filter((d) => d.turn_id === start.turn_id);
  for (let i = 1; i < resumed.length; i++) {
    assert.ok(resumed[i].offset >= resumed[i - 1].offset, "offsets never go back");
  }
  client.close();
});

test("a send not yet acked when the socket drops is resent and stored once", async () => {
  const token = user();
  const client = new ChatClient({ url: A, token, backoffBaseMs: 50 });
  await client.connect();
  const conversation = await client.create("outbox");
  // The short reply may end while the client is away: then the resume brings it stored.
  const live = until(client, "turn_end");
  const stored_ = until(client, "message", (m) => m.message.role === "assistant");
  const answered = Promise.any([live, stored_]);
  const acked = client.send(conversation.id, `remember me ${slow(3, 200)}`);
  client.ws.close(4000, "test drop"); // before the ack can arrive
  const ack = await acked;
  assert.equal(client.state.outbox.length, 0, "the outbox is empty once acked");
  await answered;
  live.catch(() => {});
  stored_.catch(() => {});
  const rows = await stored(A, token, conversation.id);
  assert.equal(rows.filter((m) => m.role === "user").length, 1, "stored exactly once");
  assert.equal(rows[0].id, ack.message_id);
  client.close();
});

test("the outbox survives a restart of the client (persistent storage)", async () => {
  const token = user();
  const data = new Map();
  const storage = {
    getItem: (k) => data.get(k) ?? null,
    setItem: (k, v) => void data.set(k, v),
    removeItem: (k) => void data.delete(k),
  };
  const first = new ChatClient({ url: A, token, storage });
  await first.connect();
  const conversation = await first.create("reload");
  first.close(); // a page reload before the send went out
  first.send(conversation.id, "sent while offline").catch(() => {});
  assert.equal(JSON.parse(data.get(`chat-outbox:${token}`)).length, 1);
  const second = new ChatClient({ url: A, token, storage });
  const acked = until(second, "ack");
  await second.connect(); // rejoins the outbox's conversation and resends the turn
  await acked;
  assert.equal(data.get(`chat-outbox:${token}`), undefined, "the outbox is empty once acked");
  const rows = await stored(A, token, conversation.id);
  assert.equal(rows.filter((m) => m.text === "sent while offline").length, 1);
  second.close();
});

test("a 4401 close stops reconnecting and surfaces the error", async () => {
  const client = new ChatClient({ url: process.env.CHAT_WS_JWT, token: "not-a-jwt", backoffBaseMs: 20 });
  const closed = until(client, "status", (s) => s === "closed");
  await client.connect().catch(() => {});
  await closed;
  assert.equal(client.state.status, "closed");
  assert.equal(client.state.error.code, 4401);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(client.state.status, "closed", "no reconnect after 4401");
});

test("regenerate, edit and switch: devices on two replicas show the same branch", async () => {
  const token = user();
  const phone = new ChatClient({ url: A, token });
  const laptop = new ChatClient({ url: B, token });
  await phone.connect();
  await laptop.connect();
  const conversation = await phone.create("branches");
  const cid = conversation.id;
  await laptop.join(cid);
  const ended = (id) => until(laptop, "turn_end", (e) => e.turn_id === id || e.message.reply_to === id);
  const first = await phone.send(cid, `plan my week ${slow(20, 100)}`);
  await ended(first.message_id);

  const again = await phone.regenerate(cid, first.message_id);
  assert.equal(again.seq, 3);
  await ended(again.message_id);
  const branchOf = (client) => activeBranch(client.state.conversations[cid]);
  assert.deepEqual(branchOf(laptop).map((m) => m.id), [first.message_id, again.message_id]);
  assert.deepEqual([branchOf(laptop)[1].alternative, branchOf(laptop)[1].alternatives], [2, 2]);

  const edit = await phone.send(cid, `plan my month ${slow(20, 100)}`, undefined, first.message_id);
  await ended(edit.message_id);
  const edited = branchOf(laptop);
  assert.deepEqual(edited.map((m) => m.role), ["user", "assistant"]);
  assert.equal(edited[0].id, edit.message_id);
  assert.deepEqual([edited[0].alternative, edited[0].alternatives], [2, 2]);
  assert.deepEqual(branchOf(phone).map((m) => m.id), edited.map((m) => m.id));

  // Back to the first turn, from the laptop: the phone follows.
  const heard = until(phone, "conversation", (e) => e.conversation.leaf_id === again.message_id);
  const page = await laptop.switch(cid, edit.message_id, 1);
  assert.deepEqual(page.messages.map((m) => m.id), [first.message_id, again.message_id]);
  await heard;
  for (const client of [phone, laptop]) {
    assert.deepEqual(branchOf(client).map((m) => m.id), [first.message_id, again.message_id]);
  }
  phone.close();
  laptop.close();
});

test("a tool call and its result are kept with the reply, live and stored", async () => {
  const token = user();
  const headers = { Authorization: `Bearer ${token}`, "Content-Type": "application/json" };
  const client = new ChatClient({ url: A, token });
  await client.connect();
  const [assistant] = await (await fetch(`${httpOf(A)}/api/v1/assistants`, { headers })).json();
  const tool = {
    name: "echo", description: "echoes", url: process.env.CHAT_TOOL_URL,
    parameters: { type: "object", properties: { word: { type: "string" } } },
  };
  const made = await fetch(`${httpOf(A)}/api/v1/assistants/${assistant.id}/tools`, {
    method: "POST", headers, body: JSON.stringify(tool),
  });
  assert.equal(made.status, 201, await made.text());
  const conversation = await client.create("tools");
  const seen = until(client, "tool_result");
  const ended = until(client, "turn_end");
  await client.send(conversation.id, `say it [[sim call=echo args='{"word": "hi"}']]`);
  const result = await seen;
  const live = client.state.conversations[conversation.id].replies[result.turn_id];
  assert.deepEqual(live.tools.map((t) => [t.name, t.ok, t.result]), [["echo", true, { echo: { word: "hi" } }]]);
  const end = await ended;
  assert.deepEqual(end.message.tools.map((t) => t.arguments), [{ word: "hi" }]);
  assert.match(end.message.text, /echo/);
  client.close();
});

test("go_away reconnects to the other replica and the reply continues exactly", async () => {
  const token = user();
  const client = new ChatClient({ url: [A, B], token, backoffBaseMs: 50 });
  await client.connect();
  const conversation = await client.create("go away");
  const started = until(client, "turn_start");
  const streaming = until(client, "delta");
  await client.send(conversation.id, `drain ${slow(60, 30)}`);
  const start = await started;
  await streaming;
  const goAway = until(client, "go_away");
  process.kill(Number(process.env.CHAT_PID_A), "SIGTERM");
  await goAway;
  const end = await until(client, "turn_end", (e) => e.turn_id === start.turn_id, 30000);
  const reply = client.state.conversations[conversation.id].replies[start.turn_id];
  assert.equal(reply.text, end.message.text);
  assert.equal(end.finish_reason, "stop");
  const rows = await stored(B, token, conversation.id);
  assert.equal(rows.at(-1).text, reply.text);
  client.close();
});
