// One signed-in page: the Subscribe stream (one per page, all chats) with reconnects, and the
// state the view draws: chats, their messages, receipts, typing, presence, sends in flight.
// Every change calls `onChange`; the view redraws from this state.

import { create } from "@bufbuild/protobuf";
import { type Api, Code, failure, isTransient } from "./api";
import {
  type Chat,
  ChatSchema,
  ChatEventKind,
  ChatKind,
  MemberRole,
  type Message,
  type Presence,
  PresenceStatus,
  ReceiptKind,
  type ServerFrame,
  TypingState,
} from "./gen/chat/v1/chat_pb";
import { randomHex } from "./identity";

export type Connection = "connecting" | "online" | "reconnecting" | "signed-out";

/** A message typed here that the server has not acknowledged yet. */
export interface PendingSend {
  clientMsgId: string;
  chatId: string;
  text: string;
  at: number;
  /** sending: a call is in flight; queued: waiting for the server to come back;
   *  failed: the server refused it (error says why). */
  state: "sending" | "queued" | "failed";
  error?: string;
  attempts: number;
}

/** What the page knows of one chat. */
export class ChatState {
  /** The chat as the server last described it, with the caller's view (read_seq, unread). */
  chat: Chat;
  /** Acknowledged messages by seq: history pages, the stream and own sends, each seq once. */
  messages = new Map<number, Message>();
  /** Own sends not yet acknowledged, in the order typed. */
  pending = new Map<string, PendingSend>();
  /** GetHistory's token for the next older page: null before the first page, "" at the start. */
  olderToken: string | null = null;
  loadingOlder = false;
  /** Highest seq each other member has received / read (over all their devices). */
  delivered = new Map<string, number>();
  read = new Map<string, number>();
  /** Who is typing, until when (local clock). */
  typing = new Map<string, number>();
  /** The caller was removed from this group (or left it). */
  left = false;
  /** Bumped on every change to what the message pane shows, so the view redraws only then. */
  version = 0;

  constructor(chat: Chat) {
    this.chat = chat;
  }

  get lastSeq(): number {
    return Number(this.chat.lastSeq);
  }
  get readSeq(): number {
    return Number(this.chat.readSeq);
  }
  get unread(): number {
    return Number(this.chat.unreadCount);
  }
  get newestSeq(): number {
    let max = 0;
    for (const seq of this.messages.keys()) max = Math.max(max, seq);
    return max;
  }
}

/** Own message ticks: stored on the server, received by every other member, read by all. */
export type Tick = "sent" | "delivered" | "read";

const HISTORY_PAGE = 30;
const BACKOFF_MS = [500, 1000, 2000, 4000];
const PRESENCE_POLL_MS = 10_000;
const TYPING_REFRESH_MS = 2500;
const TYPING_IDLE_MS = 4000;
const MAX_SEND_ATTEMPTS = 20;

export class ChatSession {
  readonly chats = new Map<string, ChatState>();
  readonly presence = new Map<string, Presence>();
  /** Errors to show, newest last. */
  readonly errors: { id: number; text: string }[] = [];
  connection: Connection = "connecting";
  /** Why the last stream ended, while reconnecting. */
  connectionDetail = "";
  /** The chat on screen. */
  openChatId: string | null = null;
  /** Server clock minus local clock, from Welcome. */
  private clockSkew = 0;
  /** Per chat, the highest seq the stream passed on: sent back on reconnect, so the server
   *  replays only what came after. */
  private readonly positions = new Map<string, number>();
  private stream: AbortController | null = null;
  /** Aborts a stream that has been silent too long (the server speaks every heartbeat). */
  private watchdog: number | undefined;
  private heartbeatMs = 30_000;
  private stopped = false;
  private errorIds = 0;
  private sendQueue: PendingSend[] = [];
  private sending = false;
  private acks = new Map<string, number>();
  private ackTimer: number | undefined;
  private readTimer: number | undefined;
  private presenceTimer: number | undefined;
  private refreshTimers = new Map<string, number>();
  private typingChat: string | null = null;
  private typingSentAt = 0;
  private typingIdle: number | undefined;

  constructor(
    private readonly api: Api,
    readonly userId: string,
    readonly deviceId: string,
    private readonly onChange: () => void,
    private readonly onSignedOut: (reason: string) => void,
    private readonly historyPage = HISTORY_PAGE,
  ) {}

  /** Opens the stream and lists the chats; resolves once the list is in. */
  start(): Promise<void> {
    void this.runStream();
    this.presenceTimer = window.setInterval(() => void this.refreshPresence(), PRESENCE_POLL_MS);
    document.addEventListener("visibilitychange", this.onVisibility);
    return this.loadChats();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.watchdog);
    this.stream?.abort();
    this.stopTyping();
    window.clearInterval(this.presenceTimer);
    document.removeEventListener("visibilitychange", this.onVisibility);
    this.connection = "signed-out";
  }

  // ---------------------------------------------------------------------------------------
  // The stream

  private async runStream(): Promise<void> {
    let attempt = 0;
    while (!this.stopped) {
      const abort = new AbortController();
      this.stream = abort;
      let reason = "the stream ended";
      try {
        const deliveredSeq: Record<string, bigint> = {};
        for (const [chatId, seq] of this.positions) deliveredSeq[chatId] = BigInt(seq);
        const frames = this.api.subscribe(
          { deviceId: this.deviceId, deliveredSeq, clientVersion: "chatd-web/0.1" },
          { signal: abort.signal },
        );
        this.armWatchdog(abort);
        for await (const frame of frames) {
          if (frame.frame.case === "welcome") {
            attempt = 0;
            this.heartbeatMs = Math.max(1000, frame.frame.value.heartbeatIntervalMs);
          }
          this.armWatchdog(abort);
          this.onFrame(frame);
        }
      } catch (e) {
        if (this.stopped) return;
        const f = failure(e);
        if (f.code === Code.Unauthenticated) {
          this.stop();
          this.onSignedOut(`The server refused the token: ${f.message}`);
          return;
        }
        reason = f.message;
        if (!isTransient(f.code) && f.code !== Code.Canceled && reason !== this.connectionDetail) {
          this.showError(`The event stream was refused: ${f.message}`);
        }
      }
      window.clearTimeout(this.watchdog);
      if (this.stopped) return;
      this.connection = "reconnecting";
      this.connectionDetail = reason;
      this.presence.clear(); // stale until the stream is back; asked again after SyncComplete
      this.onChange();
      const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)];
      attempt++;
      await sleep(base * (0.8 + Math.random() * 0.4));
    }
  }

  /** A connection that died without a word (a laptop lid, a lost network) never ends the
   *  stream: the server sends at least a Pong every heartbeat interval, so silence for two and
   *  a half of them means the stream is gone. */
  private armWatchdog(abort: AbortController): void {
    window.clearTimeout(this.watchdog);
    this.watchdog = window.setTimeout(() => abort.abort(), this.heartbeatMs * 2.5);
  }

  private onFrame(frame: ServerFrame): void {
    const f = frame.frame;
    switch (f.case) {
      case "welcome":
        this.clockSkew = Number(f.value.serverTime) - Date.now();
        this.connection = "online";
        this.connectionDetail = "";
        break;
      case "syncComplete":
        // Chats created or changed while the stream was down, and anything queued meanwhile.
        void this.loadChats();
        this.flushQueued();
        if (this.acks.size > 0) this.ackSoon("", 0);
        if (this.openChatId) {
          if (this.chats.get(this.openChatId)?.olderToken === null) void this.loadOlder(this.openChatId);
          void this.loadReceipts(this.openChatId);
        }
        break;
      case "message":
        if (f.value.message) this.onMessage(f.value.message, true);
        break;
      case "receipt": {
        const r = f.value.receipt;
        if (r) this.onReceipt(r.chatId, r.userId, r.kind, Number(r.seq));
        break;
      }
      case "typing": {
        const t = f.value;
        if (t.userId === this.userId) break;
        const state = this.chats.get(t.chatId);
        if (!state) break;
        if (t.state === TypingState.STARTED) {
          const serverNow = Date.now() + this.clockSkew;
          const lasts = Math.min(6000, Math.max(1000, Number(t.expiresAt) - serverNow));
          state.typing.set(t.userId, Date.now() + lasts);
          window.setTimeout(() => this.onChange(), lasts + 50);
        } else {
          state.typing.delete(t.userId);
        }
        break;
      }
      case "presence":
        if (f.value.presence) this.presence.set(f.value.presence.userId, f.value.presence);
        break;
      case "chat":
        this.onChatEvent(f.value.kind, f.value.chat, f.value.userIds);
        break;
      case "error":
        this.showError(`The server refused a ${f.value.frame || "frame"}: ${f.value.message}`);
        break;
      default:
        return; // pong (the server's heartbeat: it re-armed the watchdog), send_ack, send_error
    }
    this.onChange();
  }

  /** A message from the stream, a history page or an own send's answer. */
  private onMessage(m: Message, live: boolean): void {
    const seq = Number(m.seq);
    let state = this.chats.get(m.chatId);
    if (!state) {
      // A chat this page has not listed yet: show what we have, fetch the rest.
      state = this.addChat(placeholderChat(m.chatId));
      this.refreshChatSoon(m.chatId, 0);
    }
    if (live) {
      this.positions.set(m.chatId, Math.max(this.positions.get(m.chatId) ?? 0, seq));
      this.ackSoon(m.chatId, seq);
    }
    if (m.senderUserId === this.userId && state.pending.delete(m.clientMsgId)) state.version++;
    if (!state.messages.has(seq)) {
      state.messages.set(seq, m);
      state.version++;
    }
    state.typing.delete(m.senderUserId);
    if (seq > state.lastSeq) {
      const chat = state.chat;
      chat.lastSeq = m.seq;
      chat.lastMessage = m;
      chat.lastActivityAt = m.createdAt;
      if (m.senderUserId !== this.userId && seq > state.readSeq) {
        if (this.isReading(m.chatId)) this.markReadSoon();
        else chat.unreadCount = chat.unreadCount + 1n;
      }
    }
  }

  private onReceipt(chatId: string, userId: string, kind: ReceiptKind, seq: number): void {
    const state = this.chats.get(chatId);
    if (!state) return;
    if (userId === this.userId) {
      // Read on another of my devices: the badge follows.
      if (kind === ReceiptKind.READ && seq > state.readSeq) {
        state.chat.readSeq = BigInt(seq);
        if (seq >= state.lastSeq) state.chat.unreadCount = 0n;
        else this.refreshChatSoon(chatId, 300);
      }
      return;
    }
    const raise = (map: Map<string, number>) => map.set(userId, Math.max(map.get(userId) ?? 0, seq));
    raise(state.delivered);
    if (kind === ReceiptKind.READ) raise(state.read);
    state.version++;
  }

  private onChatEvent(kind: ChatEventKind, chat: Chat | undefined, userIds: string[]): void {
    if (!chat) return;
    const state = this.chats.get(chat.chatId);
    const aboutMe = userIds.includes(this.userId);
    if (kind === ChatEventKind.MEMBER_REMOVED && aboutMe) {
      if (state) {
        state.left = true;
        state.chat.members = chat.members;
        state.version++;
      }
      return;
    }
    if (state) {
      state.chat.title = chat.title;
      state.chat.members = chat.members;
      if (kind === ChatEventKind.MEMBER_ADDED && aboutMe) state.left = false;
      state.version++;
    } else {
      this.addChat(chat);
    }
    // The event's chat has no caller view (read position, unread, last message): ask for it.
    this.refreshChatSoon(chat.chatId, 0);
  }

  // ---------------------------------------------------------------------------------------
  // Chats

  private addChat(chat: Chat): ChatState {
    const state = new ChatState(chat);
    this.chats.set(chat.chatId, state);
    return state;
  }

  /** Takes the server's description of a chat. Its view (last message, unread) wins unless
   *  the page has already seen newer messages than the answer knew of. */
  private mergeChat(chat: Chat): ChatState {
    const state = this.chats.get(chat.chatId);
    if (!state) return this.addChat(chat);
    if (chat.lastSeq >= state.chat.lastSeq) {
      state.chat = chat;
    } else {
      state.chat.title = chat.title;
      state.chat.members = chat.members;
    }
    if (chat.members.some((m) => m.userId === this.userId)) state.left = false;
    state.version++;
    return state;
  }

  async loadChats(): Promise<void> {
    try {
      let pageToken = "";
      do {
        const page = await this.api.listChats({ pageSize: 100, pageToken });
        for (const chat of page.chats) this.mergeChat(chat);
        pageToken = page.nextPageToken;
      } while (pageToken);
      this.onChange();
      void this.refreshPresence();
    } catch (e) {
      this.reportFailure("Could not list chats", e, true);
    }
  }

  private refreshChatSoon(chatId: string, delayMs: number): void {
    if (this.refreshTimers.has(chatId)) return;
    const timer = window.setTimeout(async () => {
      this.refreshTimers.delete(chatId);
      try {
        this.mergeChat(await this.api.getChat({ chatId }));
        this.onChange();
      } catch (e) {
        const f = failure(e);
        if (f.code === Code.PermissionDenied) {
          const state = this.chats.get(chatId);
          if (state) state.left = true;
          this.onChange();
        } else if (!isTransient(f.code)) this.reportFailure("Could not load a chat", e);
      }
    }, delayMs);
    this.refreshTimers.set(chatId, timer);
  }

  /** Chats, most recently active first. */
  sortedChats(): ChatState[] {
    return [...this.chats.values()].sort(
      (a, b) => Number(b.chat.lastActivityAt - a.chat.lastActivityAt) || a.chat.chatId.localeCompare(b.chat.chatId),
    );
  }

  /** The other member of a direct chat. */
  peerOf(chat: Chat): string | undefined {
    if (chat.kind !== ChatKind.DIRECT) return undefined;
    return chat.members.find((m) => m.userId !== this.userId)?.userId;
  }

  titleOf(chat: Chat): string {
    if (chat.kind === ChatKind.DIRECT) return this.peerOf(chat) ?? "(direct chat)";
    return chat.title || "(untitled group)";
  }

  isAdmin(chat: Chat): boolean {
    return chat.members.some((m) => m.userId === this.userId && m.role === MemberRole.ADMIN);
  }

  async openChat(chatId: string): Promise<void> {
    if (this.openChatId !== chatId) this.stopTyping();
    this.openChatId = chatId;
    const state = this.chats.get(chatId);
    this.onChange();
    if (!state) return;
    if (state.olderToken === null) await this.loadOlder(chatId);
    void this.loadReceipts(chatId);
    void this.refreshPresence();
    this.markReadSoon();
  }

  /** The next page of history, older than what is loaded (the newest page first). */
  async loadOlder(chatId: string): Promise<void> {
    const state = this.chats.get(chatId);
    if (!state || state.loadingOlder || state.olderToken === "") return;
    state.loadingOlder = true;
    state.version++;
    this.onChange();
    try {
      const page = await this.api.getHistory({
        chatId,
        pageSize: this.historyPage,
        pageToken: state.olderToken ?? "",
      });
      for (const m of page.messages) this.onMessage(m, false);
      state.olderToken = page.nextPageToken;
    } catch (e) {
      this.reportFailure("Could not load history", e, true);
    } finally {
      state.loadingOlder = false;
      state.version++;
      this.onChange();
    }
  }

  private async loadReceipts(chatId: string): Promise<void> {
    try {
      const res = await this.api.getReceipts({ chatId, seq: 1n });
      for (const r of res.receipts) this.onReceipt(chatId, r.userId, r.kind, Number(r.seq));
      this.onChange();
    } catch (e) {
      if (!isTransient(failure(e).code)) this.reportFailure("Could not load receipts", e);
    }
  }

  /** Ticks on an own message: read once every other member read it, delivered once every
   *  other member's device received it. */
  tickOf(state: ChatState, seq: number): Tick {
    const others = state.chat.members.filter((m) => m.userId !== this.userId).map((m) => m.userId);
    if (others.length === 0) return "sent";
    if (others.every((u) => (state.read.get(u) ?? 0) >= seq)) return "read";
    if (others.every((u) => (state.delivered.get(u) ?? 0) >= seq)) return "delivered";
    return "sent";
  }

  async openDirectChat(peerUserId: string): Promise<boolean> {
    try {
      const chat = await this.api.openDirectChat({ peerUserId });
      this.mergeChat(chat);
      await this.openChat(chat.chatId);
      return true;
    } catch (e) {
      this.reportFailure(`Could not open a chat with ${peerUserId}`, e);
      return false;
    }
  }

  async createGroup(title: string, memberUserIds: string[]): Promise<boolean> {
    try {
      const chat = await this.api.createGroup({ title, memberUserIds });
      this.mergeChat(chat);
      await this.openChat(chat.chatId);
      return true;
    } catch (e) {
      this.reportFailure(`Could not create the group "${title}"`, e);
      return false;
    }
  }

  async addMembers(chatId: string, userIds: string[]): Promise<void> {
    try {
      this.mergeChat(await this.api.addMembers({ chatId, userIds }));
      this.refreshChatSoon(chatId, 0);
    } catch (e) {
      this.reportFailure(`Could not add ${userIds.join(", ")}`, e);
    }
    this.onChange();
  }

  async removeMember(chatId: string, userId: string): Promise<void> {
    try {
      const chat = await this.api.removeMember({ chatId, userId });
      const state = this.chats.get(chatId);
      if (state) {
        state.chat.members = chat.members;
        if (userId === this.userId) state.left = true;
        state.version++;
      }
    } catch (e) {
      this.reportFailure(`Could not remove ${userId}`, e);
    }
    this.onChange();
  }

  // ---------------------------------------------------------------------------------------
  // Sending

  /** Shows the message at once (local echo), then sends it; the acknowledged message takes
   *  its place. A send the server could not take is retried with the same client_msg_id
   *  (the server stores it once); one it refused shows the server's reason. */
  send(chatId: string, text: string): void {
    const state = this.chats.get(chatId);
    if (!state) return;
    this.typingChat = null; // the message ends the typing indicator on the server
    const pending: PendingSend = {
      clientMsgId: `web-${randomHex(16)}`,
      chatId,
      text,
      at: Date.now(),
      state: "sending",
      attempts: 0,
    };
    state.pending.set(pending.clientMsgId, pending);
    state.version++;
    this.sendQueue.push(pending);
    this.onChange();
    void this.pumpSends();
  }

  retry(chatId: string, clientMsgId: string): void {
    const pending = this.chats.get(chatId)?.pending.get(clientMsgId);
    if (!pending || pending.state !== "failed") return;
    pending.state = "sending";
    pending.error = undefined;
    pending.attempts = 0;
    this.chats.get(chatId)!.version++;
    this.sendQueue.push(pending);
    this.onChange();
    void this.pumpSends();
  }

  discard(chatId: string, clientMsgId: string): void {
    const state = this.chats.get(chatId);
    if (state?.pending.delete(clientMsgId)) {
      state.version++;
      this.onChange();
    }
  }

  /** One send at a time, in the order typed, so each chat's messages keep their order. */
  private async pumpSends(): Promise<void> {
    if (this.sending) return;
    this.sending = true;
    try {
      while (this.sendQueue.length > 0) {
        const p = this.sendQueue[0];
        const state = this.chats.get(p.chatId);
        if (!state || !state.pending.has(p.clientMsgId)) {
          this.sendQueue.shift();
          continue;
        }
        p.state = "sending";
        p.attempts++;
        try {
          const res = await this.api.sendMessage({
            clientMsgId: p.clientMsgId,
            chatId: p.chatId,
            content: { text: p.text },
          });
          this.sendQueue.shift();
          if (res.message) this.onMessage(res.message, false);
          state.pending.delete(p.clientMsgId);
          state.version++;
        } catch (e) {
          const f = failure(e);
          if (isTransient(f.code) && p.attempts < MAX_SEND_ATTEMPTS) {
            // Wait for the stream to be back (or a moment, for a rate limit), then go on.
            p.state = "queued";
            state.version++;
            this.onChange();
            if (this.connection === "online") {
              // A blip (or a rate limit) while the stream is up: try again shortly.
              await sleep(1000);
              continue;
            }
            return; // flushQueued goes on after the next SyncComplete
          }
          this.sendQueue.shift();
          p.state = "failed";
          p.error = f.message;
          state.version++;
          this.showError(`Could not send to ${this.titleOf(state.chat)}: ${f.message}`);
        }
        this.onChange();
      }
    } finally {
      this.sending = false;
    }
  }

  private flushQueued(): void {
    if (this.sendQueue.length > 0) void this.pumpSends();
  }

  // ---------------------------------------------------------------------------------------
  // Cursors: delivered (for every message the stream brings) and read (the open chat, while
  // the page is visible)

  /** Acks `seq` in `chatId` shortly (coalesced per chat); with an empty `chatId`, sends the
   *  acks still owed. */
  private ackSoon(chatId: string, seq: number): void {
    if (chatId) this.acks.set(chatId, Math.max(this.acks.get(chatId) ?? 0, seq));
    if (this.ackTimer !== undefined) return;
    this.ackTimer = window.setTimeout(() => {
      this.ackTimer = undefined;
      const acks = [...this.acks];
      this.acks.clear();
      for (const [chatId, seq] of acks) {
        this.api.ackDelivered({ chatId, seq: BigInt(seq) }).catch((e) => {
          // Owed until the stream is back (the server may be away); a chat one left is done.
          if (isTransient(failure(e).code)) {
            this.acks.set(chatId, Math.max(this.acks.get(chatId) ?? 0, seq));
          }
        });
      }
    }, 200);
  }

  private isReading(chatId: string): boolean {
    return this.openChatId === chatId && document.visibilityState === "visible";
  }

  private markReadSoon(): void {
    if (this.readTimer !== undefined) return;
    this.readTimer = window.setTimeout(() => {
      this.readTimer = undefined;
      void this.markRead();
    }, 150);
  }

  private async markRead(): Promise<void> {
    const chatId = this.openChatId;
    if (!chatId || !this.isReading(chatId)) return;
    const state = this.chats.get(chatId);
    if (!state) return;
    const seq = Math.max(state.newestSeq, 0);
    if (seq === 0 || (seq <= state.readSeq && state.unread === 0)) return;
    try {
      await this.api.markRead({ chatId, seq: BigInt(seq) });
      if (BigInt(seq) > state.chat.readSeq) state.chat.readSeq = BigInt(seq);
      if (seq >= state.lastSeq) state.chat.unreadCount = 0n;
      else this.refreshChatSoon(chatId, 0);
      this.onChange();
    } catch (e) {
      const f = failure(e);
      if (f.code === Code.PermissionDenied) return; // removed from the chat: nothing to read
      if (!isTransient(f.code)) this.reportFailure("Could not mark the chat read", e);
    }
  }

  private readonly onVisibility = () => {
    if (document.visibilityState === "visible") {
      this.markReadSoon();
      void this.refreshPresence();
    } else {
      this.stopTyping();
    }
  };

  // ---------------------------------------------------------------------------------------
  // Typing (own) and presence

  /** Called as the user types in `chatId`'s composer. */
  composing(chatId: string, text: string): void {
    if (!text.trim()) {
      this.stopTyping();
      return;
    }
    const now = Date.now();
    if (this.typingChat !== chatId || now - this.typingSentAt > TYPING_REFRESH_MS) {
      if (this.typingChat && this.typingChat !== chatId) this.stopTyping();
      this.typingChat = chatId;
      this.typingSentAt = now;
      this.api.setTyping({ chatId, state: TypingState.STARTED }).catch(() => {});
    }
    window.clearTimeout(this.typingIdle);
    this.typingIdle = window.setTimeout(() => this.stopTyping(), TYPING_IDLE_MS);
  }

  stopTyping(): void {
    window.clearTimeout(this.typingIdle);
    const chatId = this.typingChat;
    if (!chatId) return;
    this.typingChat = null;
    this.api.setTyping({ chatId, state: TypingState.STOPPED }).catch(() => {});
  }

  /** Others typing in a chat now. */
  typists(state: ChatState): string[] {
    const now = Date.now();
    return [...state.typing].filter(([, until]) => until > now).map(([user]) => user);
  }

  /** Presence of the direct-chat peers (for the list) and the open chat's members. Subscribe
   *  carries no WatchPresence, so the page asks: on open, on visibility, every few seconds. */
  async refreshPresence(): Promise<void> {
    if (this.connection !== "online" || document.visibilityState !== "visible") return;
    const users = new Set<string>();
    for (const state of this.chats.values()) {
      const peer = this.peerOf(state.chat);
      if (peer) users.add(peer);
    }
    const open = this.openChatId ? this.chats.get(this.openChatId) : undefined;
    for (const m of open?.chat.members ?? []) if (m.userId !== this.userId) users.add(m.userId);
    if (users.size === 0) return;
    try {
      const res = await this.api.getPresence({ userIds: [...users].slice(0, 1000) });
      for (const p of res.presences) this.presence.set(p.userId, p);
      this.onChange();
    } catch {
      // shown again at the next poll
    }
  }

  isOnline(userId: string): boolean {
    return this.presence.get(userId)?.status === PresenceStatus.ONLINE;
  }

  // ---------------------------------------------------------------------------------------
  // Errors

  showError(text: string): void {
    this.errors.push({ id: ++this.errorIds, text });
    while (this.errors.length > 4) this.errors.shift();
    this.onChange();
  }

  dismissError(id: number): void {
    const i = this.errors.findIndex((e) => e.id === id);
    if (i >= 0) this.errors.splice(i, 1);
    this.onChange();
  }

  /** Shows a failed call, unless it is the server being away (the status bar says so). */
  private reportFailure(what: string, e: unknown, quietIfTransient = false): void {
    const f = failure(e);
    if (f.code === Code.Unauthenticated) {
      this.stop();
      this.onSignedOut(`The server refused the token: ${f.message}`);
      return;
    }
    if (quietIfTransient && isTransient(f.code)) return;
    this.showError(`${what}: ${f.message}`);
  }
}

function placeholderChat(chatId: string): Chat {
  return create(ChatSchema, { chatId });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => window.setTimeout(resolve, ms));
}
