// The web page in a real browser: Debian's Chromium driven by playwright-core, against a chatd
// this test starts itself (port 0, a temporary data dir, --web-root on the built dist/).
// Two browser contexts, alice and bob, chat through the page the way a person would.
//
//   CHATD_BIN=target/debug/chatd node --test tests/      (examples/web/run-tests does all)
//
// Environment:
//   CHATD_BIN       the server binary (required)
//   CHROMIUM        the browser (default /usr/bin/chromium)
//   WEB_TEST_OUT    screenshots and logs (default <repo>/target/web-tests)
//   WEB_ROOT        the built page (default examples/web/dist)

import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createWriteStream, existsSync } from "node:fs";
import { mkdir, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, "../../..");
const CHATD = process.env.CHATD_BIN;
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const OUT = resolve(process.env.WEB_TEST_OUT ?? join(repo, "target/web-tests"));
const WEB_ROOT = resolve(process.env.WEB_ROOT ?? join(here, "../dist"));

// A loaded 2-core machine: be patient, but not forever.
const STEP_MS = 30_000;
const START_MS = 60_000;

let dataDir;
let server; // { child, addr }
let browser;
let alice; // { context, page, name }
let bob;
const pageErrors = [];

// ---------------------------------------------------------------------------------------------
// chatd

async function startChatd(listen) {
  const child = spawn(
    CHATD,
    ["serve", "--listen", listen, "--data-dir", dataDir, "--web-root", WEB_ROOT],
    { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "info" } },
  );
  child.stderr.pipe(createWriteStream(join(OUT, "chatd.log"), { flags: "a" }));
  const lines = createInterface({ input: child.stdout });
  const addr = await new Promise((resolveAddr, reject) => {
    const timer = setTimeout(() => reject(new Error(`chatd printed no address in ${START_MS} ms`)), START_MS);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`chatd exited before listening (code ${code}, signal ${signal}); see ${OUT}/chatd.log`));
    });
    lines.on("line", (line) => {
      const m = /^chatd listening on (\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolveAddr(m[1]);
      }
    });
  });
  return { child, addr };
}

async function killChatd(s, signal = "SIGKILL") {
  if (s.child.exitCode !== null || s.child.signalCode !== null) return;
  const exited = new Promise((r) => s.child.once("exit", r));
  s.child.kill(signal);
  await exited;
}

function token(user) {
  return execFileSync(CHATD, ["token", "--user", user, "--data-dir", dataDir, "--ttl", "2h"], {
    encoding: "utf8",
  }).trim();
}

// ---------------------------------------------------------------------------------------------
// The browser

async function openAs(name) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 720 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  page.on("pageerror", (e) => pageErrors.push(`${name}: ${e.message}`));
  const log = createWriteStream(join(OUT, `console-${name}.log`), { flags: "a" });
  page.on("console", (msg) => log.write(`[${msg.type()}] ${msg.text()}\n`));
  await page.goto(`http://${server.addr}/`);
  await page.getByTestId("token-input").fill(token(name));
  await page.getByTestId("login-button").click();
  await page.locator('[data-testid="connection"][data-state="online"]').waitFor();
  return { context, page, name };
}

async function shot(who, file) {
  await who.page.screenshot({ path: join(OUT, file) });
}

/** Retries `check` (which throws on failure) until it passes or `ms` runs out. */
async function eventually(check, ms = STEP_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

const chatItem = (who, title) => who.page.locator(`[data-testid="chat-item"][data-title="${title}"]`);
const messageTexts = (who) => who.page.locator('[data-testid="messages"] [data-testid="message-text"]').allTextContents();

/** The open chat's acknowledged messages, as [seq, text], in page order. */
async function acked(who) {
  return who.page.locator('[data-testid="messages"] [data-testid="message"][data-seq]').evaluateAll((els) =>
    els.map((el) => [Number(el.dataset.seq), el.querySelector('[data-testid="message-text"]').textContent]),
  );
}

async function send(who, text) {
  const input = who.page.getByTestId("composer-input");
  await input.fill(text);
  await input.press("Enter");
}

/** The tick of `who`'s own acknowledged message with this text. */
async function tickOf(who, text) {
  const msg = who.page.locator('[data-testid="message"][data-seq]', { hasText: text });
  return msg.getByTestId("tick").getAttribute("data-state");
}

async function open(who, title) {
  await chatItem(who, title).click();
  await who.page.locator('[data-testid="chat-header-title"]', { hasText: title }).waitFor();
}

// ---------------------------------------------------------------------------------------------

before(async () => {
  assert.ok(CHATD, "set CHATD_BIN to the chatd binary (e.g. target/debug/chatd)");
  assert.ok(existsSync(CHATD), `CHATD_BIN=${CHATD} does not exist`);
  assert.ok(existsSync(join(WEB_ROOT, "index.html")), `${WEB_ROOT}/index.html is missing: run npm run build`);
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: apt-get install chromium`);
  await mkdir(OUT, { recursive: true });
  dataDir = await mkdtemp(join(tmpdir(), "chatd-web-test-"));
  server = await startChatd("127.0.0.1:0");
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // Playwright gives each launch a fresh, empty profile (its own --user-data-dir).
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    timeout: START_MS,
  });
  alice = await openAs("alice");
  bob = await openAs("bob");
});

after(async () => {
  await browser?.close().catch(() => {});
  if (server) await killChatd(server, "SIGTERM");
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

/** Each step leaves screenshots of both pages behind when it fails. */
function step(name, fn) {
  test(name, { timeout: 4 * STEP_MS }, async () => {
    try {
      await fn();
    } catch (e) {
      const slug = name.replace(/[^a-z0-9]+/gi, "-").toLowerCase();
      for (const who of [alice, bob]) {
        if (who && !who.page.isClosed()) await shot(who, `FAILED-${slug}-${who.name}.png`).catch(() => {});
      }
      throw e;
    }
  });
}

step("alice opens a direct chat with bob; bob's list shows it unread; delivered tick", async () => {
  await alice.page.getByTestId("new-direct-button").click();
  await alice.page.getByTestId("new-direct-user").fill("bob");
  await alice.page.getByTestId("new-direct-submit").click();
  await alice.page.locator('[data-testid="chat-header-title"]', { hasText: "bob" }).waitFor();
  await send(alice, "hello bob");

  const item = chatItem(bob, "alice");
  await item.getByTestId("unread-badge").filter({ hasText: "1" }).waitFor();
  assert.equal(await item.getByTestId("chat-preview").textContent(), "hello bob");
  // bob's page received it (and acked) but has not opened the chat: delivered, not read.
  await eventually(async () => assert.equal(await tickOf(alice, "hello bob"), "delivered"));
  await shot(bob, "01-bob-chat-list-unread.png");
});

step("bob opens the chat: the badge goes, alice sees the read tick", async () => {
  await open(bob, "alice");
  await eventually(async () => assert.deepEqual(await messageTexts(bob), ["hello bob"]));
  await chatItem(bob, "alice").getByTestId("unread-badge").waitFor({ state: "detached" });
  await eventually(async () => assert.equal(await tickOf(alice, "hello bob"), "read"));
});

step("streaming is incremental: message 1 is on bob's page before message 2 is sent", async () => {
  const t0 = Date.now();
  await send(alice, "message 1");
  await bob.page.locator('[data-testid="message-text"]', { hasText: "message 1" }).waitFor();
  const latency = Date.now() - t0;
  assert.deepEqual(await messageTexts(bob), ["hello bob", "message 1"]);
  await send(alice, "message 2");
  await bob.page.locator('[data-testid="message-text"]', { hasText: "message 2" }).waitFor();
  assert.deepEqual(await messageTexts(bob), ["hello bob", "message 1", "message 2"]);
  console.log(`# message 1 from alice's Enter to bob's page: ${latency} ms`);
  await eventually(async () => assert.equal(await tickOf(alice, "message 2"), "read"));
});

step("typing shows on the other page and goes with the message", async () => {
  await bob.page.getByTestId("composer-input").click();
  await bob.page.keyboard.type("typing back", { delay: 60 });
  await alice.page.getByTestId("typing").filter({ hasText: "bob is typing" }).waitFor();
  await shot(alice, "02-alice-sees-typing.png");
  await bob.page.keyboard.press("Enter");
  await alice.page.locator('[data-testid="message-text"]', { hasText: "typing back" }).waitFor();
  await eventually(async () => assert.equal(await alice.page.getByTestId("typing").textContent(), ""));
});

step("presence: alice sees bob online", async () => {
  await alice.page.locator('[data-testid="presence"][data-state="online"]').waitFor();
  await shot(alice, "03-alice-chat.png");
  await shot(bob, "04-bob-chat.png");
});

const conversation = ["hello bob", "message 1", "message 2", "typing back"];

step("a reload restores the history; older pages load upward", async () => {
  await bob.page.reload();
  await bob.page.locator('[data-testid="connection"][data-state="online"]').waitFor();
  // The open chat comes back (it is in the address) with its history, once each.
  await eventually(async () => assert.deepEqual(await messageTexts(bob), conversation));

  // Two messages a page: the newest page first, then older pages above it.
  const url = new URL(bob.page.url());
  url.searchParams.set("page_size", "2");
  await bob.page.goto(url.toString());
  await eventually(async () => assert.deepEqual(await messageTexts(bob), conversation.slice(2)));
  await bob.page.getByTestId("load-older").click();
  await bob.page.getByTestId("history-start").waitFor();
  const seen = await acked(bob);
  assert.deepEqual(seen.map(([, text]) => text), conversation);
  assert.deepEqual(seen.map(([seq]) => seq), [1, 2, 3, 4]);
  await shot(bob, "05-bob-after-reload.png");
});

step("a server restart: both pages resume; what bob missed is replayed once", async () => {
  const port = server.addr.split(":").pop();
  // bob's page stays away a little longer than the server (its Subscribe calls fail), so what
  // alice sends meanwhile can only reach it through the resume from its positions.
  const subscribe = "**/chat.v1.ChatService/Subscribe";
  await bob.page.route(subscribe, (route) => route.abort("connectionrefused"));
  await killChatd(server);
  for (const who of [alice, bob]) {
    await who.page.locator('[data-testid="connection"][data-state="reconnecting"]').waitFor();
  }
  await send(alice, "sent while the server was down");
  await alice.page.locator('[data-testid="message"][data-state="queued"]').waitFor();
  await shot(alice, "06-alice-server-down.png");

  server = await startChatd(`127.0.0.1:${port}`);
  await alice.page.locator('[data-testid="connection"][data-state="online"]').waitFor();
  await alice.page.locator('[data-testid="message"][data-seq="5"]', { hasText: "sent while the server was down" }).waitFor();
  await send(alice, "after the restart");
  await alice.page.locator('[data-testid="message"][data-seq="6"]', { hasText: "after the restart" }).waitFor();
  assert.equal(await bob.page.getByTestId("connection").getAttribute("data-state"), "reconnecting");
  assert.deepEqual(await messageTexts(bob), conversation);

  await bob.page.unroute(subscribe);
  await bob.page.locator('[data-testid="connection"][data-state="online"]').waitFor();
  const expected = [...conversation, "sent while the server was down", "after the restart"];
  for (const who of [alice, bob]) {
    await eventually(async () => {
      const seen = await acked(who);
      assert.deepEqual(seen.map(([, text]) => text), expected, `${who.name}'s messages`);
      assert.deepEqual(seen.map(([seq]) => seq), [1, 2, 3, 4, 5, 6], `${who.name}'s seqs`);
      assert.deepEqual(await messageTexts(who), expected, `${who.name} has no pending copies`);
    });
  }
  // bob has the chat open: the replayed messages are read, and alice's page shows it.
  await eventually(async () => assert.equal(await tickOf(alice, "after the restart"), "read"));
  await shot(bob, "07-bob-after-restart.png");
});

step("sending to a group one was removed from shows the server's error", async () => {
  await alice.page.getByTestId("new-group-button").click();
  await alice.page.getByTestId("new-group-title").fill("Team");
  await alice.page.getByTestId("new-group-members").fill("bob");
  await alice.page.getByTestId("new-group-submit").click();
  await alice.page.locator('[data-testid="chat-header-title"]', { hasText: "Team" }).waitFor();
  await send(alice, "welcome to the team");

  await chatItem(bob, "Team").waitFor();
  await open(bob, "Team");
  await bob.page.locator('[data-testid="message-text"]', { hasText: "welcome to the team" }).waitFor();

  await alice.page.getByTestId("members-button").click();
  await alice.page.locator('[data-testid="remove-member"][data-user="bob"]').click();
  await alice.page.locator('[data-testid="member"][data-user="bob"]').waitFor({ state: "detached" });
  await shot(alice, "08-alice-removed-bob.png");

  await send(bob, "am I still in?");
  const failed = bob.page.locator('[data-testid="message"][data-state="failed"]', { hasText: "am I still in?" });
  await failed.getByTestId("message-error").filter({ hasText: /not a member/ }).waitFor();
  const banner = bob.page.getByTestId("error-banner").filter({ hasText: "Could not send to Team" });
  await banner.waitFor();
  assert.match(await banner.textContent(), /not a member of chat/);
  await shot(bob, "09-bob-removed-error.png");
});

step("alice sees bob's last seen once his page is gone", async () => {
  await open(alice, "bob");
  await bob.context.close();
  await alice.page.locator('[data-testid="presence"][data-state="offline"]', { hasText: "last seen" }).waitFor();
  await shot(alice, "10-alice-last-seen.png");
});

step("no script errors on either page", async () => {
  assert.deepEqual(pageErrors, []);
});
