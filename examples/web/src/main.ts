// Entry point: the sign-in form, or the chat page for a remembered token.
//
// Query parameters (all optional):
//   server=URL      where chatd is, for a page served from elsewhere (chatd must then allow
//                   this page's origin with --cors-origins); default: the page's own origin
//   page_size=N     messages per history page (default 30)

import { connectApi } from "./api";
import { fill, h } from "./dom";
import { deviceId, forgetToken, readToken, savedToken, saveToken } from "./identity";
import { ChatPage } from "./view";

const params = new URLSearchParams(location.search);
const baseUrl = (params.get("server") ?? location.origin).replace(/\/+$/, "");
const historyPage = Math.min(200, Math.max(1, Number(params.get("page_size")) || 30));
const root = document.getElementById("app")!;
let page: ChatPage | null = null;

function signIn(token: string): void {
  const { userId } = readToken(token); // throws with a message for the form
  saveToken(token);
  const device = deviceId();
  page = new ChatPage(root, connectApi(baseUrl, token, device), userId, device, historyPage, signOut);
}

function signOut(reason: string): void {
  page?.stop();
  page = null;
  forgetToken();
  history.replaceState(null, "", location.pathname + location.search);
  showSignIn(reason);
}

function showSignIn(message = ""): void {
  const token = h("textarea", {
    testid: "token-input",
    rows: 5,
    placeholder: "eyJhbGciOiJIUzI1NiIs…",
    spellcheck: "false",
    required: true,
  });
  const error = h("p", { class: "form-error", testid: "login-error", role: "alert" }, message);
  const form = h(
    "form",
    { class: "login", testid: "login" },
    h("h1", {}, "chatd"),
    h(
      "p",
      {},
      "Paste a token minted with ",
      h("code", {}, "chatd token --user NAME"),
      " (with the server's data dir). It is kept in this browser until you sign out.",
    ),
    token,
    h("button", { type: "submit", testid: "login-button" }, "Sign in"),
    error,
  );
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    try {
      signIn(token.value.trim());
    } catch (e) {
      error.textContent = e instanceof Error ? e.message : String(e);
    }
  });
  fill(root, form);
  token.focus();
}

const remembered = savedToken();
if (remembered) {
  try {
    signIn(remembered);
  } catch (e) {
    forgetToken();
    showSignIn(e instanceof Error ? e.message : String(e));
  }
} else {
  showSignIn();
}
