import { type Ack, type AssistantRef, type ConversationInfo, type FinishReason, type HistoryPage, type MessageInfo, type RouteInfo, type SessionOptions, type Usage } from "./protocol.js";
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
    assistant: AssistantRef;
    model: string;
    route: RouteInfo;
    text: string;
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
export interface OutboxEntry {
    id: string;
    conversation_id: string;
    text: string;
    assistant_id?: string | null;
}
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
    /** Send a user turn; resolves with the server's ack (the turn is stored). */
    send(conversationId: string, text: string, assistantId?: string): Promise<Ack>;
    cancel(conversationId: string, turnId?: string, heardChars?: number): void;
    history(conversationId: string, beforeSeq?: number, limit?: number): Promise<HistoryPage>;
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
