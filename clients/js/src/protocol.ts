// Generated from protocol/schema.json by scripts/gen-types.mjs: do not edit.
export const PROTOCOL_VERSION = 1;

export interface Ack {
  duplicate?: boolean;
  id: string;
  message_id: string;
  seq: number;
  type: "ack";
}

export interface AssistantRef {
  id: string;
  name: string;
}

/** Stop a running reply (the newest one if ``turn_id`` is omitted). */
export interface Cancel {
  conversation_id: string;
  heard_chars?: number | null;
  id?: string | null;
  turn_id?: string | null;
  type: "cancel";
}

export interface ConversationCreate {
  assistant_id?: string | null;
  title?: string | null;
}

export interface ConversationInfo {
  assistant_id?: string | null;
  id: string;
  last_seq?: number;
  leaf_id?: string | null;
  title?: string | null;
}

/** The conversation changed (renamed over REST): sent to every device joined to it,
 * on every replica. Live only; a device that joins later reads it in ``joined``. */
export interface ConversationUpdated {
  conversation: ConversationInfo;
  conversation_id: string;
  type: "conversation";
}

export interface Delta {
  conversation_id: string;
  offset: number;
  text: string;
  turn_id: string;
  type: "delta";
}

export interface ErrorFrame {
  code: string;
  id?: string | null;
  message: string;
  retry_after_ms?: number | null;
  retryable?: boolean;
  type: "error";
}

export interface ErrorInfo {
  code: string;
  message: string;
  retry_after_ms?: number | null;
  retryable?: boolean;
}

export type FinishReason = "cancelled" | "error" | "handoff" | "interrupted" | "length" | "quota" | "safety" | "stop";

export interface GoAway {
  reconnect_after_ms: number;
  type: "go_away";
}

export interface Hello {
  client?: string | null;
  id?: string | null;
  options?: SessionOptions;
  protocol?: number;
  token?: string | null;
  type: "hello";
}

export interface History {
  before_seq?: number | null;
  conversation_id: string;
  id?: string | null;
  limit?: number;
  type: "history";
}

export interface HistoryPage {
  conversation_id: string;
  has_more: boolean;
  id?: string | null;
  messages: MessageInfo[];
  type: "history";
}

/** A voice transcript: partials are relayed live, ``final`` commits like ``send``. */
export interface Input {
  conversation_id: string;
  final?: boolean;
  heard_chars?: number | null;
  id?: string | null;
  input_id: string;
  text: string;
  type: "input";
}

/** A partial transcript from another device, relayed live and never stored. */
export interface InputEvent {
  conversation_id: string;
  final?: boolean;
  input_id: string;
  text: string;
  type: "input";
  user_id: string;
}

/** When a voice ``input`` interrupts the reply streaming in its conversation. */
export type InterruptOn = "final" | "never" | "partial";

/** Join ``conversation_id``, or create one with ``create``; exactly one of the two.
 * 
 * ``offsets`` (turn id → characters held) lets a client resuming mid-reply get only
 * the text it lacks: no turn_start again, and deltas from that offset on. */
export interface Join {
  after_seq?: number | null;
  conversation_id?: string | null;
  create?: ConversationCreate | null;
  id?: string | null;
  offsets?: Record<string, number> | null;
  type: "join";
}

/** Sent before the replay. ``recovered`` is true when every event after
 * ``after_seq`` follows; false when none was asked for or too many were missed
 * (then fetch ``history``). */
export interface Joined {
  conversation: ConversationInfo;
  id?: string | null;
  last_seq: number;
  recovered: boolean;
  type: "joined";
}

export interface Leave {
  conversation_id: string;
  id?: string | null;
  type: "leave";
}

export interface Left {
  conversation_id: string;
  id?: string | null;
  type: "left";
}

export interface Limits {
  max_frame_bytes: number;
  max_text_chars: number;
  outbox_bytes?: number;
  outbox_frames: number;
}

export interface Message {
  conversation_id: string;
  message: MessageInfo;
  seq: number;
  type: "message";
}

export interface MessageInfo {
  alternative?: number;
  alternatives?: number;
  assistant_id?: string | null;
  client_id?: string | null;
  created_at: string;
  finish_reason?: FinishReason | null;
  id: string;
  model?: string | null;
  parent_id?: string | null;
  reply_to?: string | null;
  role: Role;
  seq: number;
  status: MessageStatus;
  text: string;
  tools?: ToolCallInfo[];
}

export type MessageStatus = "complete" | "error" | "interrupted" | "streaming";

export interface Ping {
  id?: string | null;
  type: "ping";
}

export interface Pong {
  id?: string | null;
  type: "pong";
}

/** Who is in the conversation, across replicas; sent when a device joins or leaves. */
export interface Presence {
  conversation_id: string;
  devices: number;
  type: "presence";
  users: string[];
}

/** A new reply to the user turn ``reply_to``; the earlier ones stay as alternatives.
 * ``id`` is the idempotency key, like a send's: the ack names the new reply. */
export interface Regenerate {
  assistant_id?: string | null;
  conversation_id: string;
  id: string;
  reply_to: string;
  type: "regenerate";
}

export type Role = "assistant" | "user";

/** Why this assistant and model answer. ``reason``: explicit (the turn named it),
 * skill (a skill matched at or above its threshold), default (nothing confident: the
 * conversation's assistant), fallback (no default set: the first assistant). */
export interface RouteInfo {
  complexity?: string | null;
  confidence?: number | null;
  handoff_from?: string | null;
  handoff_reason?: string | null;
  kind?: string | null;
  language?: string | null;
  reason: string;
  score?: number | null;
  skill?: string | null;
  skill_id?: string | null;
  thinking_budget?: number | null;
  why?: string | null;
}

/** A user turn. ``id`` is the idempotency key: resending it returns the first ack.
 * 
 * ``edit_of``: a user turn of this conversation this one corrects; it becomes an
 * alternative of it (a new branch from its parent) and the model sees only that
 * branch. */
export interface Send {
  assistant_id?: string | null;
  conversation_id: string;
  edit_of?: string | null;
  id: string;
  text: string;
  type: "send";
}

/** Per-connection behaviour, chosen in ``hello``. Defaults suit text chat. */
export interface SessionOptions {
  early_routing?: boolean;
  interrupt_on?: InterruptOn;
  smooth_streaming?: boolean;
  speech_chunks?: boolean;
  speech_max_wait_ms?: number;
  thoughts?: boolean;
}

/** Show the branch through ``message_id``, or through its ``alternative``-th
 * sibling (1-based): the newest message below it becomes the leaf. Answered with a
 * ``history`` page of the branch now shown. */
export interface Switch {
  alternative?: number | null;
  conversation_id: string;
  id?: string | null;
  limit?: number;
  message_id: string;
  type: "switch";
}

/** A piece of the model's thought summary for a reply, before its text; only to
 * connections that asked (``hello.options.thoughts``), never stored or replayed. */
export interface Thought {
  conversation_id: string;
  offset: number;
  text: string;
  turn_id: string;
  type: "thought";
}

/** The model called a tool; the server runs it (on the user's backend) now. */
export interface ToolCall {
  arguments: Record<string, unknown>;
  call_id: string;
  conversation_id: string;
  name: string;
  offset: number;
  turn_id: string;
  type: "tool_call";
}

/** A tool the reply called, with its outcome: in ``MessageInfo.tools``, in order. */
export interface ToolCallInfo {
  arguments: Record<string, unknown>;
  call_id: string;
  error?: ErrorInfo | null;
  name: string;
  offset: number;
  ok?: boolean;
  result?: unknown;
}

/** A tool's outcome, which the model reads before it goes on. */
export interface ToolResult {
  call_id: string;
  conversation_id: string;
  error?: ErrorInfo | null;
  name: string;
  ok: boolean;
  result?: unknown;
  turn_id: string;
  type: "tool_result";
}

export interface TurnEnd {
  conversation_id: string;
  error?: ErrorInfo | null;
  finish_reason: FinishReason;
  message: MessageInfo;
  seq: number;
  turn_id: string;
  type: "turn_end";
  usage?: Usage;
}

export interface TurnStart {
  alternatives?: number;
  assistant: AssistantRef;
  conversation_id: string;
  model: string;
  reply_to: string;
  route: RouteInfo;
  seq: number;
  turn_id: string;
  type: "turn_start";
}

export interface Typing {
  active?: boolean;
  conversation_id: string;
  id?: string | null;
  type: "typing";
}

export interface TypingEvent {
  active: boolean;
  conversation_id: string;
  session_id: string;
  type: "typing";
  user_id: string;
}

export interface Usage {
  input_tokens?: number;
  output_tokens?: number;
  thought_tokens?: number;
}

export interface Welcome {
  heartbeat_ms: number;
  id?: string | null;
  limits: Limits;
  node: string;
  protocol?: number;
  session_id: string;
  type: "welcome";
  user_id: string;
}

export type ClientMessage =
  | Hello
  | Join
  | Send
  | Regenerate
  | Switch
  | Input
  | Cancel
  | History
  | Leave
  | Typing
  | Ping;

export type ServerMessage =
  | Welcome
  | Joined
  | Ack
  | Message
  | TurnStart
  | Delta
  | Thought
  | ToolCall
  | ToolResult
  | TurnEnd
  | InputEvent
  | TypingEvent
  | Presence
  | ConversationUpdated
  | HistoryPage
  | Left
  | Pong
  | GoAway
  | ErrorFrame;

export interface CloseCodeInfo { name: string; meaning: string; reconnect: boolean }
export const CLOSE_CODES: Record<number, CloseCodeInfo> = {
  "1000": {
    "meaning": "normal closure",
    "name": "normal",
    "reconnect": false
  },
  "1001": {
    "meaning": "server going away",
    "name": "going_away",
    "reconnect": true
  },
  "1007": {
    "meaning": "frame was not valid UTF-8 text",
    "name": "invalid_payload",
    "reconnect": false
  },
  "1008": {
    "meaning": "policy violation",
    "name": "policy_violation",
    "reconnect": false
  },
  "1009": {
    "meaning": "frame larger than max_frame_bytes",
    "name": "message_too_big",
    "reconnect": true
  },
  "1011": {
    "meaning": "internal server error",
    "name": "internal_error",
    "reconnect": true
  },
  "1012": {
    "meaning": "replica restarting; resume elsewhere",
    "name": "service_restart",
    "reconnect": true
  },
  "1013": {
    "meaning": "overloaded; back off and resume",
    "name": "try_again_later",
    "reconnect": true
  },
  "4000": {
    "meaning": "slow consumer; resume with after_seq",
    "name": "slow_consumer",
    "reconnect": true
  },
  "4001": {
    "meaning": "no frame for two heartbeats",
    "name": "idle_timeout",
    "reconnect": true
  },
  "4002": {
    "meaning": "no hello in time",
    "name": "hello_timeout",
    "reconnect": true
  },
  "4003": {
    "meaning": "events lost; rejoin with after_seq",
    "name": "resume_required",
    "reconnect": true
  },
  "4004": {
    "meaning": "too many frames; reconnect after retry_after_ms (in the reason)",
    "name": "flooding",
    "reconnect": true
  },
  "4005": {
    "meaning": "too many open connections for this user; reconnect after retry_after_ms (in the reason)",
    "name": "too_many_connections",
    "reconnect": true
  },
  "4400": {
    "meaning": "protocol violation",
    "name": "protocol_violation",
    "reconnect": false
  },
  "4401": {
    "meaning": "unauthorized; get a new token first",
    "name": "unauthorized",
    "reconnect": false
  }
};
