import { type Ack, type AssistantRef, type ConversationInfo, type FinishReason, type HistoryPage, type MessageInfo, type RouteInfo, type SessionOptions, type ToolCallInfo, type Usage } from "./protocol.js";
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
    alternatives: number;
    assistant: AssistantRef;
    model: string;
    route: RouteInfo;
    text: string;
    thoughts: string;
    tools: ToolCallInfo[];
    done: boolean;
    finishReason?: FinishReason;
    usage?: Usage;
}
export interface ConversationState {
    info: ConversationInfo;
    lastSeq: number;
    messages: Record<number, MessageInfo>;
    replies: Record<string, Reply>;
    devices: number;
    users: string[];
}
export interface ClientState {
    status: Status;
    userId?: string;
    conversations: Record<string, ConversationState>;
    outbox: OutboxEntry[];
    error?: {
        code: string | number;
        message: string;
    };
}
/** A turn waiting for its ack: a send (maybe an edit) or a regenerate. */
export interface OutboxEntry {
    type: "send" | "regenerate";
    id: string;
    conversation_id: string;
    text?: string;
    assistant_id?: string | null;
    edit_of?: string | null;
    reply_to?: string;
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
    message?: MessageInfo;
    reply?: Reply;
}
/** The branch a conversation shows, oldest first: up from its leaf by parent links, as
 * far as this device holds messages (older ones come with history pages). */
export declare function activeBranch(c: ConversationState): BranchItem[];
/** The server answered a request with an error frame that must not be retried. */
export declare class ChatError extends Error {
    readonly code: string;
    readonly retryable: boolean;
    constructor(code: string, message: string, retryable?: boolean);
}
type Listener = (message: any) => void;
export declare class ChatClient {
    private readonly opts;
    readonly state: ClientState;
    private ws?;
    private readonly listeners;
    private readonly pending;
    private readonly sends;
    private readonly joined;
    private readonly storage;
    private readonly outboxKey;
    private attempt;
    private retryAfterMs;
    private stopped;
    private timer?;
    private ready?;
    private urlIndex;
    constructor(opts: ChatClientOptions);
    /** Listen to a server message type ("delta", "turn_end", …), or "status"/"state". */
    on(type: string, listener: Listener): () => void;
    /** Connect (and reconnect until close() or a close code that says stop). */
    connect(): Promise<void>;
    close(): void;
    /** Join a conversation (kept joined across reconnects). */
    join(conversationId: string): Promise<ConversationInfo>;
    create(title?: string, assistantId?: string): Promise<ConversationInfo>;
    leave(conversationId: string): Promise<void>;
    /** Send a user turn (with editOf: a corrected version of an earlier one, on a new
     * branch); resolves with the server's ack (the turn is stored). */
    send(conversationId: string, text: string, assistantId?: string, editOf?: string): Promise<Ack>;
    /** A new reply to the user turn replyTo (the earlier ones stay, as alternatives);
     * resolves with the ack naming the new reply. Kept in the outbox like a send. */
    regenerate(conversationId: string, replyTo: string, assistantId?: string): Promise<Ack>;
    /** Show the branch through messageId, or through its alternative-th sibling; every
     * device of the conversation follows. Resolves with a history page of that branch. */
    switch(conversationId: string, messageId: string, alternative?: number): Promise<HistoryPage>;
    private enqueue;
    cancel(conversationId: string, turnId?: string, heardChars?: number): void;
    /** A page of the branch shown, before beforeSeq; its messages join the state. */
    history(conversationId: string, beforeSeq?: number, limit?: number): Promise<HistoryPage>;
    /** Stored messages of a history page into the state (streaming ones come as replies). */
    private absorb;
    /** Every new message becomes the leaf of the branch shown; a replayed one (not newer
     * than what joined described) does not: a switch made meanwhile stays. */
    private grow;
    /** Voice: a partial transcript, or the final one (which commits the turn). */
    input(conversationId: string, inputId: string, text: string, final?: boolean, heardChars?: number): void;
    typing(conversationId: string, active: boolean): void;
    private open;
    /** After a welcome: rejoin every conversation from where it was (and those the outbox
     * has turns for, e.g. after a page reload), then resend the outbox with the same ids. */
    private resume;
    private resumeOf;
    private onClose;
    private transmit;
    private request;
    private handle;
    private onError;
    private emit;
    private setStatus;
    private saveOutbox;
}
