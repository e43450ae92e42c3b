// The signed-in page: chat list on the left, the open chat on the right. The skeleton is built
// once; each change redraws the parts that depend on state (the message pane only when its
// chat changed, so scrolling and the composer are left alone).

import type { Api } from "./api";
import { fill, h, lastSeen, shortTime } from "./dom";
import { ChatKind, MemberRole, PresenceStatus } from "./gen/chat/v1/chat_pb";
import { ChatSession, type ChatState } from "./session";

export class ChatPage {
  readonly session: ChatSession;
  private renderQueued = false;
  /** What the message pane shows now: which chat, at which version, from which seq. */
  private drawn = { chatId: "", version: -1, oldest: 0 };

  private readonly status = h("span", { class: "status", testid: "connection" });
  private readonly chatList = h("ul", { class: "chat-list", testid: "chat-list" });
  private readonly directForm: HTMLFormElement;
  private readonly groupForm: HTMLFormElement;
  private readonly header = h("div", { class: "chat-header", testid: "chat-header" });
  private readonly membersPanel = h("div", { class: "members-panel", testid: "members-panel", hidden: true });
  private readonly memberList = h("ul", {});
  /** Add and leave: built once, so what is typed survives redraws. */
  private readonly memberActions = h("div", { class: "member-actions" });
  private readonly messages = h("div", { class: "messages", testid: "messages" });
  private readonly typing = h("div", { class: "typing-line", testid: "typing" });
  private readonly input = h("input", {
    class: "composer-input",
    testid: "composer-input",
    placeholder: "Write a message",
    autocomplete: "off",
    maxlength: 4000,
  });
  private readonly composer: HTMLFormElement;
  private readonly chatPane: HTMLElement;
  private readonly emptyPane = h(
    "div",
    { class: "empty-pane", testid: "no-chat" },
    h("p", {}, "Pick a chat on the left, or start a new one."),
  );
  private readonly errors = h("div", { class: "errors", testid: "errors" });

  constructor(
    root: HTMLElement,
    api: Api,
    userId: string,
    deviceId: string,
    historyPage: number,
    private readonly signOut: (reason: string) => void,
  ) {
    this.session = new ChatSession(
      api,
      userId,
      deviceId,
      () => this.queueRender(),
      (reason) => signOut(reason),
      historyPage,
    );

    const directUser = h("input", { testid: "new-direct-user", placeholder: "user id, e.g. bob", required: true });
    this.directForm = h(
      "form",
      { class: "side-form", testid: "new-direct-form", hidden: true },
      h("label", {}, "Chat with", directUser),
      h("button", { type: "submit", testid: "new-direct-submit" }, "Open"),
    );
    this.directForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const peer = directUser.value.trim();
      if (!peer) return;
      if (await this.session.openDirectChat(peer)) {
        directUser.value = "";
        this.directForm.hidden = true;
        this.afterOpen();
      }
    });

    const groupTitle = h("input", { testid: "new-group-title", placeholder: "title", required: true });
    const groupMembers = h("input", { testid: "new-group-members", placeholder: "members: bob, carol" });
    this.groupForm = h(
      "form",
      { class: "side-form", testid: "new-group-form", hidden: true },
      h("label", {}, "Title", groupTitle),
      h("label", {}, "Members", groupMembers),
      h("button", { type: "submit", testid: "new-group-submit" }, "Create group"),
    );
    this.groupForm.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const title = groupTitle.value.trim();
      if (!title) return;
      if (await this.session.createGroup(title, splitUsers(groupMembers.value))) {
        groupTitle.value = "";
        groupMembers.value = "";
        this.groupForm.hidden = true;
        this.afterOpen();
      }
    });

    this.composer = h(
      "form",
      { class: "composer", testid: "composer" },
      this.input,
      h("button", { type: "submit", testid: "send-button" }, "Send"),
    );
    this.composer.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const chatId = this.session.openChatId;
      const text = this.input.value.trim();
      if (!chatId || !text) return;
      this.session.send(chatId, text);
      this.input.value = "";
      this.input.focus();
    });
    this.input.addEventListener("input", () => {
      const chatId = this.session.openChatId;
      if (chatId) this.session.composing(chatId, this.input.value);
    });
    this.messages.addEventListener("scroll", () => {
      const chatId = this.session.openChatId;
      if (chatId && this.messages.scrollTop < 40) void this.session.loadOlder(chatId);
    });

    const addInput = h("input", { testid: "add-member-input", placeholder: "user id" });
    const addForm = h(
      "form",
      { class: "add-member" },
      addInput,
      h("button", { type: "submit", testid: "add-member-submit" }, "Add"),
    );
    addForm.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const chatId = this.session.openChatId;
      const users = splitUsers(addInput.value);
      if (!chatId || users.length === 0) return;
      addInput.value = "";
      void this.session.addMembers(chatId, users);
    });
    const leave = h(
      "button",
      {
        class: "link danger",
        testid: "leave-group",
        onclick: () => {
          const chatId = this.session.openChatId;
          if (chatId) void this.session.removeMember(chatId, this.session.userId);
        },
      },
      "Leave group",
    );
    fill(this.memberActions, addForm, leave);
    fill(this.membersPanel, this.memberList, this.memberActions);

    this.chatPane = h(
      "section",
      { class: "chat-pane", testid: "chat-pane", hidden: true },
      this.header,
      this.membersPanel,
      this.messages,
      this.typing,
      this.composer,
    );

    const toggle = (form: HTMLFormElement, other: HTMLFormElement) => () => {
      form.hidden = !form.hidden;
      other.hidden = true;
      if (!form.hidden) form.querySelector("input")?.focus();
    };
    fill(
      root,
      h(
        "div",
        { class: "app", testid: "app", data: { user: userId } },
        h(
          "header",
          { class: "topbar" },
          h("span", { class: "brand" }, "chatd"),
          h("span", { class: "me", testid: "me" }, userId),
          h("span", { class: "device", title: "this browser's device id" }, deviceId),
          this.status,
          h("button", { class: "link", testid: "sign-out", onclick: () => this.signOut("") }, "Sign out"),
        ),
        h(
          "div",
          { class: "main" },
          h(
            "aside",
            { class: "sidebar" },
            h(
              "div",
              { class: "side-actions" },
              h("button", { testid: "new-direct-button", onclick: toggle(this.directForm, this.groupForm) }, "New chat"),
              h("button", { testid: "new-group-button", onclick: toggle(this.groupForm, this.directForm) }, "New group"),
            ),
            this.directForm,
            this.groupForm,
            this.chatList,
          ),
          h("main", { class: "content" }, this.emptyPane, this.chatPane),
        ),
        this.errors,
      ),
    );

    const wanted = decodeURIComponent(location.hash.replace(/^#/, ""));
    this.session.start().then(() => {
      if (wanted && this.session.chats.has(wanted) && !this.session.openChatId) void this.open(wanted);
    });
    window.setInterval(() => this.queueRender(), 15_000); // "last seen 5 min ago" ages
    this.render();
  }

  stop(): void {
    this.session.stop();
  }

  private async open(chatId: string): Promise<void> {
    history.replaceState(null, "", `#${encodeURIComponent(chatId)}`);
    await this.session.openChat(chatId);
    this.afterOpen();
  }

  private afterOpen(): void {
    const chatId = this.session.openChatId;
    if (chatId) history.replaceState(null, "", `#${encodeURIComponent(chatId)}`);
    this.membersPanel.hidden = true;
    this.input.focus();
  }

  private queueRender(): void {
    if (this.renderQueued) return;
    this.renderQueued = true;
    window.setTimeout(() => {
      this.renderQueued = false;
      this.render();
    }, 0);
  }

  private render(): void {
    const unread = [...this.session.chats.values()].reduce((n, c) => n + (c.unread > 0 ? 1 : 0), 0);
    document.title = unread > 0 ? `(${unread}) chatd` : "chatd";
    this.renderStatus();
    this.renderChatList();
    this.renderChatPane();
    this.renderErrors();
  }

  private renderStatus(): void {
    const s = this.session;
    const text = {
      connecting: "connecting…",
      online: "online",
      reconnecting: "reconnecting…",
      "signed-out": "signed out",
    }[s.connection];
    this.status.textContent = text;
    this.status.dataset.state = s.connection;
    this.status.title = s.connectionDetail;
  }

  private renderChatList(): void {
    const s = this.session;
    const items = s.sortedChats().map((state) => {
      const chat = state.chat;
      const title = s.titleOf(chat);
      const peer = s.peerOf(chat);
      const last = chat.lastMessage;
      const typists = s.typists(state);
      let preview = "";
      if (typists.length > 0) preview = `${typists.join(", ")} typing…`;
      else if (last) {
        const who = last.senderUserId === s.userId ? "You" : chat.kind === ChatKind.GROUP ? last.senderUserId : "";
        preview = `${who ? `${who}: ` : ""}${last.content?.text ?? ""}`;
      } else if (chat.kind === ChatKind.GROUP) preview = "Group created";
      const unread = state.unread;
      return h(
        "li",
        {
          class: `chat-item${chat.chatId === s.openChatId ? " active" : ""}${state.left ? " left" : ""}`,
          testid: "chat-item",
          data: { chatId: chat.chatId, title, unread },
          onclick: () => void this.open(chat.chatId),
        },
        h(
          "div",
          { class: "avatar" },
          initial(title),
          peer && s.isOnline(peer) ? h("span", { class: "dot", testid: "online-dot" }) : null,
        ),
        h(
          "div",
          { class: "chat-item-body" },
          h(
            "div",
            { class: "row" },
            h("span", { class: "chat-title", testid: "chat-title" }, title),
            h("time", { class: "chat-time" }, shortTime(Number(chat.lastActivityAt))),
          ),
          h(
            "div",
            { class: "row" },
            h("span", { class: `chat-preview${typists.length ? " typing" : ""}`, testid: "chat-preview" }, preview),
            unread > 0 ? h("span", { class: "badge", testid: "unread-badge" }, unread > 99 ? "99+" : unread) : null,
          ),
        ),
      );
    });
    if (items.length === 0) {
      items.push(h("li", { class: "chat-list-empty" }, "No chats yet."));
    }
    fill(this.chatList, items);
  }

  private renderChatPane(): void {
    const s = this.session;
    const state = s.openChatId ? s.chats.get(s.openChatId) : undefined;
    this.emptyPane.hidden = !!state;
    this.chatPane.hidden = !state;
    if (!state) return;
    this.renderHeader(state);
    if (!this.membersPanel.hidden) this.renderMembers(state);
    this.renderMessages(state);
    const typists = s.typists(state);
    this.typing.textContent =
      typists.length === 0 ? "" : `${typists.join(", ")} ${typists.length === 1 ? "is" : "are"} typing…`;
  }

  private renderHeader(state: ChatState): void {
    const s = this.session;
    const chat = state.chat;
    let sub: HTMLElement;
    const peer = s.peerOf(chat);
    if (peer) {
      const p = s.presence.get(peer);
      let text = "";
      let st = "unknown";
      if (p?.status === PresenceStatus.ONLINE) {
        text = "online";
        st = "online";
      } else if (p) {
        st = "offline";
        text = p.lastSeen ? `last seen ${lastSeen(Number(p.lastSeen))}` : "offline";
      }
      sub = h("span", { class: `presence ${st}`, testid: "presence", data: { state: st } }, text);
    } else {
      const names = chat.members.map((m) => m.userId);
      const online = names.filter((u) => u !== s.userId && s.isOnline(u)).length;
      sub = h(
        "span",
        { class: "presence", testid: "presence" },
        `${names.length} ${names.length === 1 ? "member" : "members"}${online ? `, ${online} online` : ""}: ${names.join(", ")}`,
      );
    }
    const isGroup = chat.kind === ChatKind.GROUP;
    fill(
      this.header,
      h(
        "div",
        { class: "chat-header-text" },
        h("h2", { testid: "chat-header-title" }, s.titleOf(chat)),
        sub,
      ),
      state.left
        ? h("span", { class: "left-notice", testid: "left-notice" }, "You are no longer a member of this group")
        : null,
      isGroup
        ? h(
            "button",
            {
              class: "link",
              testid: "members-button",
              onclick: () => {
                this.membersPanel.hidden = !this.membersPanel.hidden;
                this.renderMembers(state);
              },
            },
            this.membersPanel.hidden ? "Members" : "Close",
          )
        : null,
    );
  }

  private renderMembers(state: ChatState): void {
    const s = this.session;
    const chat = state.chat;
    const admin = s.isAdmin(chat);
    fill(
      this.memberList,
      chat.members.map((m) =>
        h(
          "li",
          { testid: "member", data: { user: m.userId } },
          h("span", {}, m.userId, m.role === MemberRole.ADMIN ? h("em", {}, " admin") : null, m.userId === s.userId ? " (you)" : null),
          admin && m.userId !== s.userId
            ? h(
                "button",
                { class: "link danger", testid: "remove-member", data: { user: m.userId }, onclick: () => void s.removeMember(chat.chatId, m.userId) },
                "Remove",
              )
            : null,
        ),
      ),
    );
    this.memberActions.hidden = state.left;
  }

  private renderMessages(state: ChatState): void {
    const s = this.session;
    const chatId = state.chat.chatId;
    if (this.drawn.chatId === chatId && this.drawn.version === state.version) return;
    const el = this.messages;
    const switched = this.drawn.chatId !== chatId;
    const nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 80;
    const before = { height: el.scrollHeight, top: el.scrollTop };

    const seqs = [...state.messages.keys()].sort((a, b) => a - b);
    const oldest = seqs[0] ?? 0;
    const rows: HTMLElement[] = [];
    if (state.olderToken === "") {
      rows.push(h("div", { class: "history-start", testid: "history-start" }, "Beginning of the chat"));
    } else if (state.olderToken !== null || state.loadingOlder) {
      rows.push(
        h(
          "button",
          { class: "load-older link", testid: "load-older", disabled: state.loadingOlder, onclick: () => void s.loadOlder(chatId) },
          state.loadingOlder ? "Loading…" : "Load older messages",
        ),
      );
    }
    const group = state.chat.kind === ChatKind.GROUP;
    for (const seq of seqs) {
      const m = state.messages.get(seq)!;
      const mine = m.senderUserId === s.userId;
      const tick = mine ? s.tickOf(state, seq) : null;
      rows.push(
        h(
          "div",
          {
            class: `msg ${mine ? "mine" : "theirs"}`,
            testid: "message",
            data: { seq, sender: m.senderUserId, clientMsgId: m.clientMsgId, state: "sent" },
          },
          group && !mine ? h("div", { class: "msg-sender" }, m.senderUserId) : null,
          h("div", { class: "msg-text", testid: "message-text" }, m.content?.text ?? "(encrypted)"),
          h(
            "div",
            { class: "msg-meta" },
            h("time", {}, shortTime(Number(m.createdAt))),
            tick
              ? h(
                  "span",
                  { class: `tick ${tick}`, testid: "tick", data: { state: tick }, title: tick },
                  tick === "sent" ? "✓" : "✓✓",
                )
              : null,
          ),
        ),
      );
    }
    for (const p of state.pending.values()) {
      rows.push(
        h(
          "div",
          { class: `msg mine pending ${p.state}`, testid: "message", data: { clientMsgId: p.clientMsgId, state: p.state } },
          h("div", { class: "msg-text", testid: "message-text" }, p.text),
          h(
            "div",
            { class: "msg-meta" },
            h("time", {}, shortTime(p.at)),
            h(
              "span",
              { class: "tick pending", testid: "tick", data: { state: p.state } },
              p.state === "failed" ? "not sent" : p.state === "queued" ? "waiting for the server" : "sending…",
            ),
          ),
          p.state === "failed"
            ? h(
                "div",
                { class: "msg-error", testid: "message-error" },
                p.error ?? "",
                " ",
                h("button", { class: "link", testid: "retry-send", onclick: () => s.retry(chatId, p.clientMsgId) }, "Retry"),
                h("button", { class: "link", testid: "discard-send", onclick: () => s.discard(chatId, p.clientMsgId) }, "Discard"),
              )
            : null,
        ),
      );
    }
    if (seqs.length === 0 && state.pending.size === 0 && state.olderToken === "") {
      rows.push(h("div", { class: "no-messages" }, "No messages yet. Say hello!"));
    }
    fill(el, rows);

    const prepended = !switched && oldest < this.drawn.oldest;
    if (switched || nearBottom) el.scrollTop = el.scrollHeight;
    else if (prepended) el.scrollTop = before.top + (el.scrollHeight - before.height);
    this.drawn = { chatId, version: state.version, oldest };
  }

  private renderErrors(): void {
    const s = this.session;
    fill(
      this.errors,
      s.errors.map((e) =>
        h(
          "div",
          { class: "error", testid: "error-banner", role: "alert" },
          h("span", {}, e.text),
          h("button", { class: "link", title: "dismiss", onclick: () => s.dismissError(e.id) }, "×"),
        ),
      ),
    );
  }
}

function splitUsers(text: string): string[] {
  return text
    .split(/[\s,]+/)
    .map((u) => u.trim())
    .filter(Boolean);
}

function initial(title: string): string {
  return (title.trim()[0] ?? "?").toUpperCase();
}
