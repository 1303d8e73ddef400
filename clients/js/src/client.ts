// A chat client that never loses a turn: every send waits in an outbox (kept in
// `storage`, localStorage in a browser) until the server's ack, and is resent with the
// same id after any reconnect, so the server stores it exactly once. Reconnects use
// jittered exponential backoff and obey the close-code table; a resume asks for what was
// missed (after_seq) and for each streaming reply only the text it lacks (offsets), and
// deltas are applied by offset, so a repeated or overlapping delta changes nothing.
// No runtime dependencies: the platform's WebSocket (browsers, Node >= 22, or Node 20
// with --experimental-websocket).
import {
  CLOSE_CODES,
  PROTOCOL_VERSION,
  type Ack,
  type AssistantRef,
  type ClientMessage,
  type ConversationInfo,
  type ErrorFrame,
  type FinishReason,
  type HistoryPage,
  type Joined,
  type MessageInfo,
  type RouteInfo,
  type ServerMessage,
  type SessionOptions,
  type ToolCallInfo,
  type Usage,
} from "./protocol.js";

export * from "./protocol.js";

/** The part of the Web Storage API the outbox uses (localStorage fits). */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface ChatClientOptions {
  /** The server, or several replicas: a reconnect moves on to the next one. */
  url: string | string[];
  token: string;
  storage?: StorageLike;
  options?: SessionOptions;
  client?: string;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
  WebSocket?: typeof WebSocket;
}

export type Status = "connecting" | "open" | "reconnecting" | "closed";

export interface Reply {
  turnId: string;
  seq: number;
  replyTo: string;
  alternatives: number; // replies to replyTo, this one the newest (regenerated ones)
  assistant: AssistantRef;
  model: string;
  route: RouteInfo;
  text: string;
  thoughts: string; // the model's thought summary (hello.options.thoughts), never stored
  tools: ToolCallInfo[]; // the tools it called, in order, with their outcomes once in
  done: boolean;
  finishReason?: FinishReason;
  usage?: Usage;
}

export interface ConversationState {
  info: ConversationInfo;
  lastSeq: number; // the highest seq received: a resume asks for what follows
  messages: Record<number, MessageInfo>; // stored messages by seq
  replies: Record<string, Reply>; // replies by turn id, streaming or done
  devices: number;
  users: string[];
}

export interface ClientState {
  status: Status;
  userId?: string;
  conversations: Record<string, ConversationState>;
  outbox: OutboxEntry[];
  error?: { code: string | number; message: string };
}

/** A turn waiting for its ack: a send (maybe an edit) or a regenerate. */
export interface OutboxEntry {
  type: "send" | "regenerate";
  id: string;
  conversation_id: string;
  text?: string;
  assistant_id?: string | null;
  edit_of?: string | null; // send: the user turn this one corrects
  reply_to?: string; // regenerate: the user turn to answer again
}

/** One message of the branch shown: stored, or a reply still streaming. */
export interface BranchItem {
  id: string;
  seq: number;
  role: "user" | "assistant";
  text: string;
  parentId: string | null;
  alternative: number;
  alternatives: number;
  message?: MessageInfo; // stored (complete, interrupted, error)
  reply?: Reply; // seen streaming on this device
}

/** The branch a conversation shows, oldest first: up from its leaf by parent links, as
 * far as this device holds messages (older ones come with history pages). */
export function activeBranch(c: ConversationState): BranchItem[] {
  const byId = new Map<string, BranchItem>();
  for (const m of Object.values(c.messages)) {
    byId.set(m.id, {
      id: m.id, seq: m.seq, role: m.role, text: m.text, parentId: m.parent_id ?? null,
      alternative: m.alternative ?? 1, alternatives: m.alternatives ?? 1, message: m,
    });
  }
  for (const r of Object.values(c.replies)) {
    const item = byId.get(r.turnId);
    if (item) item.reply = r;
    else byId.set(r.turnId, {
      id: r.turnId, seq: r.seq, role: "assistant", text: r.text, parentId: r.replyTo,
      alternative: r.alternatives, alternatives: r.alternatives, reply: r,
    });
  }
  const branch: BranchItem[] = [];
  let at = c.info.leaf_id ? byId.get(c.info.leaf_id) : undefined;
  while (at) {
    branch.push(at);
    at = at.parentId ? byId.get(at.parentId) : undefined;
  }
  return branch.reverse();
}

/** The server answered a request with an error frame that must not be retried. */
export class ChatError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryable = false,
  ) {
    super(message);
  }
}

type Listener = (message: any) => void;
interface Pending {
  resolve: (value: any) => void;
  reject: (error: Error) => void;
}

const memoryStorage = (): StorageLike => {
  const data = new Map<string, string>();
  return {
    getItem: (k) => data.get(k) ?? null,
    setItem: (k, v) => void data.set(k, v),
    removeItem: (k) => void data.delete(k),
  };
};

const newId = (): string =>
  globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random().toString(36).slice(2)}`;

export class ChatClient {
  readonly state: ClientState = { status: "closed", conversations: {}, outbox: [] };
  private ws?: WebSocket;
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly pending = new Map<string, Pending>(); // request id → its promise
  private readonly sends = new Map<string, Pending>(); // outbox id → send() promise
  private readonly joined = new Set<string>(); // conversations to rejoin on reconnect
  private readonly storage: StorageLike;
  private readonly outboxKey: string;
  private attempt = 0;
  private retryAfterMs = 0;
  private stopped = false;
  private timer?: ReturnType<typeof setTimeout>;
  private ready?: Promise<void>;
  private urlIndex = 0;

  constructor(private readonly opts: ChatClientOptions) {
    this.storage = opts.storage ?? memoryStorage();
    this.outboxKey = `chat-outbox:${opts.token}`;
    const saved = this.storage.getItem(this.outboxKey);
    // Entries saved before regenerate existed have no type: they are sends.
    this.state.outbox = saved ? (JSON.parse(saved) as OutboxEntry[]).map((e) => ({ ...e, type: e.type ?? "send" })) : [];
  }

  /** Listen to a server message type ("delta", "turn_end", …), or "status"/"state". */
  on(type: string, listener: Listener): () => void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  /** Connect (and reconnect until close() or a close code that says stop). */
  connect(): Promise<void> {
    this.stopped = false;
    return this.open();
  }

  close(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.setStatus("closed");
    this.ws?.close(1000);
  }

  /** Join a conversation (kept joined across reconnects). */
  async join(conversationId: string): Promise<ConversationInfo> {
    const joined = await this.request<Joined>({
      type: "join",
      conversation_id: conversationId,
      ...this.resumeOf(conversationId),
    });
    this.joined.add(joined.conversation.id);
    return joined.conversation;
  }

  async create(title?: string, assistantId?: string): Promise<ConversationInfo> {
    const joined = await this.request<Joined>({
      type: "join",
      create: { title: title ?? null, assistant_id: assistantId ?? null },
    });
    this.joined.add(joined.conversation.id);
    return joined.conversation;
  }

  async leave(conversationId: string): Promise<void> {
    this.joined.delete(conversationId);
    await this.request({ type: "leave", conversation_id: conversationId });
    delete this.state.conversations[conversationId];
    this.emit("state", this.state);
  }

  /** Send a user turn (with editOf: a corrected version of an earlier one, on a new
   * branch); resolves with the server's ack (the turn is stored). */
  send(conversationId: string, text: string, assistantId?: string, editOf?: string): Promise<Ack> {
    const entry: OutboxEntry = { type: "send", id: newId(), conversation_id: conversationId, text };
    if (assistantId) entry.assistant_id = assistantId;
    if (editOf) entry.edit_of = editOf;
    return this.enqueue(entry);
  }

  /** A new reply to the user turn replyTo (the earlier ones stay, as alternatives);
   * resolves with the ack naming the new reply. Kept in the outbox like a send. */
  regenerate(conversationId: string, replyTo: string, assistantId?: string): Promise<Ack> {
    const entry: OutboxEntry = { type: "regenerate", id: newId(), conversation_id: conversationId, reply_to: replyTo };
    if (assistantId) entry.assistant_id = assistantId;
    return this.enqueue(entry);
  }

  /** Show the branch through messageId, or through its alternative-th sibling; every
   * device of the conversation follows. Resolves with a history page of that branch. */
  async switch(conversationId: string, messageId: string, alternative?: number): Promise<HistoryPage> {
    const page = await this.request<HistoryPage>({
      type: "switch",
      conversation_id: conversationId,
      message_id: messageId,
      alternative: alternative ?? null,
    });
    this.absorb(page);
    return page;
  }

  private enqueue(entry: OutboxEntry): Promise<Ack> {
    this.state.outbox.push(entry);
    this.saveOutbox();
    const acked = new Promise<Ack>((resolve, reject) => this.sends.set(entry.id, { resolve, reject }));
    if (this.state.status === "open") this.transmit(entry as ClientMessage);
    return acked;
  }

  cancel(conversationId: string, turnId?: string, heardChars?: number): void {
    this.transmit({
      type: "cancel",
      conversation_id: conversationId,
      turn_id: turnId ?? null,
      heard_chars: heardChars ?? null,
    });
  }

  /** A page of the branch shown, before beforeSeq; its messages join the state. */
  async history(conversationId: string, beforeSeq?: number, limit = 50): Promise<HistoryPage> {
    const page = await this.request<HistoryPage>({
      type: "history",
      conversation_id: conversationId,
      before_seq: beforeSeq ?? null,
      limit,
    });
    this.absorb(page);
    return page;
  }

  /** Stored messages of a history page into the state (streaming ones come as replies). */
  private absorb(page: HistoryPage): void {
    const c = this.state.conversations[page.conversation_id];
    if (!c) return;
    for (const m of page.messages) if (m.status !== "streaming") c.messages[m.seq] = m;
    this.emit("state", this.state);
  }

  /** Every new message becomes the leaf of the branch shown; a replayed one (not newer
   * than what joined described) does not: a switch made meanwhile stays. */
  private grow(c: ConversationState, seq: number, id: string): void {
    if (seq <= (c.info.last_seq ?? 0)) return;
    c.info.last_seq = seq;
    c.info.leaf_id = id;
  }

  /** Voice: a partial transcript, or the final one (which commits the turn). */
  input(conversationId: string, inputId: string, text: string, final = false, heardChars?: number): void {
    this.transmit({
      type: "input",
      conversation_id: conversationId,
      input_id: inputId,
      text,
      final,
      heard_chars: heardChars ?? null,
    });
  }

  typing(conversationId: string, active: boolean): void {
    this.transmit({ type: "typing", conversation_id: conversationId, active });
  }

  // ------------------------------------------------------------------ connection

  private open(): Promise<void> {
    const WS = this.opts.WebSocket ?? globalThis.WebSocket;
    this.setStatus(this.attempt === 0 ? "connecting" : "reconnecting");
    const urls = Array.isArray(this.opts.url) ? this.opts.url : [this.opts.url];
    const ws = new WS(urls[this.urlIndex % urls.length]);
    this.ws = ws;
    this.ready = new Promise<void>((resolve, reject) => {
      ws.onopen = () => {
        const hello = { type: "hello", id: "hello", token: this.opts.token, protocol: PROTOCOL_VERSION, options: this.opts.options ?? {}, client: this.opts.client ?? "chat-client-js" };
        ws.send(JSON.stringify(hello));
      };
      ws.onmessage = (event) => {
        const message = JSON.parse(String(event.data)) as ServerMessage;
        if (message.type === "welcome") {
          this.attempt = 0;
          this.state.userId = message.user_id;
          this.setStatus("open");
          void this.resume().then(resolve, reject);
          return;
        }
        this.handle(message);
      };
      ws.onclose = (event) => {
        if (this.ws !== ws) return;
        this.onClose(event.code, event.reason);
        reject(new ChatError(String(event.code), event.reason || "connection closed"));
      };
      ws.onerror = () => {}; // onclose follows with the code
    });
    this.ready.catch(() => {}); // failures go through onClose
    return this.ready;
  }

  /** After a welcome: rejoin every conversation from where it was (and those the outbox
   * has turns for, e.g. after a page reload), then resend the outbox with the same ids. */
  private async resume(): Promise<void> {
    for (const entry of this.state.outbox) this.joined.add(entry.conversation_id);
    for (const id of this.joined) {
      await this.request<Joined>({ type: "join", conversation_id: id, ...this.resumeOf(id) });
    }
    for (const entry of this.state.outbox) this.transmit(entry as ClientMessage);
  }

  private resumeOf(conversationId: string): { after_seq?: number; offsets?: Record<string, number> } {
    const c = this.state.conversations[conversationId];
    if (!c) return {};
    const offsets: Record<string, number> = {};
    for (const reply of Object.values(c.replies)) if (!reply.done) offsets[reply.turnId] = reply.text.length;
    return { after_seq: c.lastSeq, offsets };
  }

  private onClose(code: number, reason: string): void {
    for (const [, pending] of this.pending) pending.reject(new ChatError(String(code), "connection closed", true));
    this.pending.clear();
    if (this.stopped) return;
    const info = CLOSE_CODES[code];
    const reconnect = code >= 4000 && code < 4100 ? true : code >= 4400 && code < 4500 ? false : info ? info.reconnect : true;
    if (!reconnect) {
      this.stopped = true;
      this.state.error = { code, message: reason || info?.meaning || "closed" };
      for (const [, send] of this.sends) send.reject(new ChatError(String(code), this.state.error.message));
      this.sends.clear();
      this.setStatus("closed");
      return;
    }
    this.setStatus("reconnecting");
    const asked = /retry_after_ms=(\d+)/.exec(reason); // e.g. 4004 (flooding), 4005 (connections)
    if (asked) this.retryAfterMs = Math.max(this.retryAfterMs, Number(asked[1]));
    this.urlIndex += 1; // with several replicas, try the next one
    const base = this.opts.backoffBaseMs ?? 250;
    const max = this.opts.backoffMaxMs ?? 10_000;
    const ceiling = Math.min(max, base * 2 ** this.attempt);
    const delay = Math.max(this.retryAfterMs, Math.random() * ceiling); // full jitter
    this.attempt += 1;
    this.retryAfterMs = 0;
    this.timer = setTimeout(() => void this.open(), delay);
  }

  private transmit(message: ClientMessage): void {
    if (this.ws && this.ws.readyState === 1) this.ws.send(JSON.stringify(message));
  }

  private request<T>(message: ClientMessage & { id?: string | null }): Promise<T> {
    const id = newId();
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.transmit({ ...message, id } as ClientMessage);
    });
  }

  // ------------------------------------------------------------------ inbound

  private handle(message: ServerMessage): void {
    switch (message.type) {
      case "joined": {
        const info = message.conversation;
        const c = (this.state.conversations[info.id] ??= {
          info, lastSeq: 0, messages: {}, replies: {}, devices: 0, users: [],
        });
        c.info = info;
        if (!message.recovered) c.lastSeq = Math.max(c.lastSeq, message.last_seq); // history fills the rest
        break;
      }
      case "ack": {
        const index = this.state.outbox.findIndex((e) => e.id === message.id);
        if (index >= 0) {
          this.state.outbox.splice(index, 1);
          this.saveOutbox();
        }
        this.sends.get(message.id)?.resolve(message);
        this.sends.delete(message.id);
        break;
      }
      case "message": {
        const c = this.state.conversations[message.conversation_id];
        if (!c) break;
        c.messages[message.seq] = message.message;
        c.lastSeq = Math.max(c.lastSeq, message.seq);
        this.grow(c, message.seq, message.message.id);
        const finished = c.replies[message.message.id];
        if (finished) {
          // The reply ended while this device was away: the stored text is the reply.
          finished.text = message.message.text;
          finished.done = true;
          finished.finishReason = message.message.finish_reason ?? undefined;
        }
        break;
      }
      case "turn_start": {
        const c = this.state.conversations[message.conversation_id];
        if (!c || c.replies[message.turn_id]) break;
        this.grow(c, message.seq, message.turn_id);
        c.replies[message.turn_id] = {
          turnId: message.turn_id, seq: message.seq, replyTo: message.reply_to,
          alternatives: message.alternatives ?? 1, assistant: message.assistant, model: message.model, route: message.route, text: "", thoughts: "", tools: [], done: false,
        };
        break;
      }
      case "delta": {
        const reply = this.state.conversations[message.conversation_id]?.replies[message.turn_id];
        if (!reply || reply.done) break;
        const end = message.offset + message.text.length;
        if (message.offset <= reply.text.length && end > reply.text.length) {
          reply.text += message.text.slice(reply.text.length - message.offset); // by offset
        }
        break;
      }
      case "thought": {
        const reply = this.state.conversations[message.conversation_id]?.replies[message.turn_id];
        // A device that joined mid-reply has only the summary's later part: shown as is.
        if (reply && message.offset >= reply.thoughts.length) reply.thoughts += message.text;
        break;
      }
      case "tool_call": {
        const reply = this.state.conversations[message.conversation_id]?.replies[message.turn_id];
        if (reply && !reply.tools.some((t) => t.call_id === message.call_id)) {
          reply.tools.push({ call_id: message.call_id, name: message.name, arguments: message.arguments, offset: message.offset });
        }
        break;
      }
      case "tool_result": {
        const reply = this.state.conversations[message.conversation_id]?.replies[message.turn_id];
        if (!reply) break;
        const outcome = { ok: message.ok, result: message.result, error: message.error };
        const call = reply.tools.find((t) => t.call_id === message.call_id);
        // A device that joined while the tool ran missed its tool_call: kept without
        // arguments until turn_end brings the stored record.
        if (call) Object.assign(call, outcome);
        else reply.tools.push({ call_id: message.call_id, name: message.name, arguments: {}, offset: reply.text.length, ...outcome });
        break;
      }
      case "turn_end": {
        const c = this.state.conversations[message.conversation_id];
        if (!c) break;
        const reply = c.replies[message.turn_id];
        if (reply) {
          reply.text = message.message.text; // the stored text is the reply
          reply.tools = message.message.tools ?? reply.tools;
          reply.done = true;
          reply.finishReason = message.finish_reason;
          reply.usage = message.usage;
        }
        c.messages[message.seq] = message.message;
        c.lastSeq = Math.max(c.lastSeq, message.seq);
        break;
      }
      case "conversation": {
        const c = this.state.conversations[message.conversation_id];
        if (!c) break;
        const leaf = message.conversation.leaf_id;
        const known = !leaf || Object.values(c.messages).some((m) => m.id === leaf) || leaf in c.replies;
        // Renamed, or another branch shown: a switch on another device. Its messages may
        // be older than this device holds: then they come with a history page.
        c.info = { ...message.conversation, last_seq: Math.max(c.info.last_seq ?? 0, message.conversation.last_seq ?? 0) };
        if (!known) void this.history(message.conversation_id).catch(() => {});
        break;
      }
      case "presence": {
        const c = this.state.conversations[message.conversation_id];
        if (c) [c.devices, c.users] = [message.devices, message.users];
        break;
      }
      case "go_away":
        // Reconnect now: the resume (after_seq, offsets) continues every stream exactly.
        this.retryAfterMs = message.reconnect_after_ms ?? 0;
        this.attempt = 0;
        this.ws?.close(4000, "go_away");
        this.onClose(4000, "go_away");
        this.ws = undefined;
        break;
      case "error":
        this.onError(message);
        break;
    }
    if ("id" in message && message.id && message.type !== "ack" && message.type !== "error") {
      this.pending.get(message.id)?.resolve(message);
      this.pending.delete(message.id);
    }
    this.emit(message.type, message);
    this.emit("state", this.state);
  }

  private onError(error: ErrorFrame): void {
    if (error.retry_after_ms) this.retryAfterMs = error.retry_after_ms;
    const id = error.id ?? undefined;
    if (!id) return;
    const failure = new ChatError(error.code, error.message, error.retryable ?? false);
    const send = this.sends.get(id);
    if (send && !error.retryable) {
      this.state.outbox = this.state.outbox.filter((e) => e.id !== id);
      this.saveOutbox();
      send.reject(failure);
      this.sends.delete(id);
    } else if (send && error.retryable) {
      const entry = this.state.outbox.find((e) => e.id === id);
      if (entry) setTimeout(() => this.transmit(entry as ClientMessage), error.retry_after_ms ?? 1000);
    }
    this.pending.get(id)?.reject(failure);
    this.pending.delete(id);
  }

  private emit(type: string, payload: unknown): void {
    for (const listener of this.listeners.get(type) ?? []) listener(payload);
  }

  private setStatus(status: Status): void {
    if (this.state.status === status) return;
    this.state.status = status;
    this.emit("status", status);
    this.emit("state", this.state);
  }

  private saveOutbox(): void {
    if (this.state.outbox.length) this.storage.setItem(this.outboxKey, JSON.stringify(this.state.outbox));
    else this.storage.removeItem(this.outboxKey);
  }
}
