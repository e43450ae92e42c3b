"""Harness of the Python binding tests: a real chatd per test, tokens, clients, and an event
collector. Run through `sdk-ffi/python/run-tests` (it puts the generated `chat_sdk` module on
PYTHONPATH); the server binary comes from $CHATD_BIN (default target/debug/chatd).

Every wait has a deadline and every test body runs under an overall one, so a broken binding
fails instead of hanging; the deadlines are generous because the machine may be busy (they
bound waits, they never measure speed).
"""

import asyncio
import faulthandler
import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest

try:
    import chat_sdk
except ImportError as e:  # pragma: no cover - a setup problem, not a test result
    raise ImportError(
        "chat_sdk is not importable: run sdk-ffi/python/run-tests, or scripts/bindings and "
        "PYTHONPATH=target/bindings/python"
    ) from e

REPO = pathlib.Path(__file__).resolve().parents[3]
TARGET = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
if not TARGET.is_absolute():
    TARGET = REPO / TARGET
CHATD_BIN = pathlib.Path(os.environ.get("CHATD_BIN", TARGET / "debug" / "chatd"))

# One wait for something that should happen (an event, a reconnect).
WAIT = float(os.environ.get("CHAT_SDK_TEST_WAIT", "60"))
# A whole test body.
TEST_DEADLINE = float(os.environ.get("CHAT_SDK_TEST_DEADLINE", "300"))

# Fast reconnects: the server-restart tests should not wait out gRPC's 120 s backoff cap.
FAST_RECONNECT = dict(reconnect_initial_ms=200, reconnect_max_ms=1500)


# Clients a test opened, closed by `run` whatever happened: a client left open at interpreter
# exit keeps its listener thread, which must not call into a finalizing Python.
_OPEN = []


def run(coro, timeout=TEST_DEADLINE):
    """Run an async test body with an overall deadline, then close every client it opened."""
    async def guarded():
        try:
            return await asyncio.wait_for(coro, timeout)
        finally:
            while _OPEN:
                c = _OPEN.pop()
                try:
                    await asyncio.wait_for(c.close(), WAIT)
                except Exception as e:  # the test's own failure matters more
                    print(f"closing a client after the test failed: {e!r}")
    return asyncio.run(guarded())


@pytest.fixture(autouse=True)
def hang_guard():
    """Last resort if a native call blocks the event loop: dump every stack and exit."""
    faulthandler.dump_traceback_later(TEST_DEADLINE + 120, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chatd:
    """One chatd on the embedded store, on a fixed port so a restart keeps the address."""

    def __init__(self, workdir: pathlib.Path, env=None):
        if not CHATD_BIN.exists():
            raise RuntimeError(f"{CHATD_BIN} does not exist: cargo build -p chatd (or set CHATD_BIN)")
        self.workdir = workdir
        self.data_dir = workdir / "chatd-data"
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CHATD_")}
        self.env.update({"CHATD_RATE_LIMIT_PER_SEC": "1000", "CHATD_RATE_LIMIT_BURST": "1000"})
        # Every client connects from loopback, and the resilience tests reconnect quickly
        # (leaving sessions behind until the server notices their connection died).
        self.env.update({"CHATD_MAX_CONNECTIONS_PER_IP_PER_SEC": "0",
                         "CHATD_MAX_SESSIONS_PER_USER": "0"})
        self.env.update(env or {})
        self.proc = None
        self.starts = 0

    def start(self, timeout=WAIT):
        assert self.proc is None, "already running"
        self.starts += 1
        out_path = self.workdir / f"chatd-{self.starts}.out"
        err_path = self.workdir / f"chatd-{self.starts}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [str(CHATD_BIN), "serve", "--listen", f"127.0.0.1:{self.port}",
                 "--data-dir", str(self.data_dir)],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = out_path.read_text(errors="replace")
            if "chatd listening on " in text:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        rc = self.proc.poll()
        self.kill()
        raise RuntimeError(
            f"chatd did not start (exit {rc}):\n{err_path.read_text(errors='replace')[-3000:]}"
        )

    def stop(self, timeout=WAIT):
        """SIGTERM (graceful: in-flight sends finish, sessions close) and wait for the exit."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            raise AssertionError("chatd did not stop on SIGTERM")
        self.proc = None
        assert rc == 0, f"chatd exited with {rc} on SIGTERM"

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def token(self, user, device):
        r = subprocess.run(
            [str(CHATD_BIN), "token", "--user", user, "--device", device,
             "--data-dir", str(self.data_dir)],
            capture_output=True, text=True, timeout=WAIT, env=self.env,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    def config(self, user, device, **overrides):
        args = dict(FAST_RECONNECT)
        args.update(overrides)
        return chat_sdk.ClientConfig(
            endpoint=self.endpoint, token=self.token(user, device), device_id=device, **args
        )


@pytest.fixture
def make_server(tmp_path):
    servers = []

    def make(env=None, start=True):
        d = tmp_path / f"server-{len(servers)}"
        d.mkdir()
        s = Chatd(d, env)
        servers.append(s)
        if start:
            s.start()
        return s

    yield make
    for s in servers:
        s.kill()


@pytest.fixture
def server(make_server):
    return make_server()


def describe(ev):
    """A short line for failure messages."""
    if ev is None:
        return "None"
    if ev.is_MESSAGE():
        m = ev.message
        return f"MESSAGE {m.chat_id[:6]}#{m.seq} {m.sender_user_id}: {m.content.text!r}"
    if ev.is_SEND_RESULT():
        r = ev.result
        o = r.outcome
        if o.is_SENT():
            return f"SEND_RESULT {r.client_msg_id[:8]} SENT #{o.message.seq} dup={o.duplicate}"
        return f"SEND_RESULT {r.client_msg_id[:8]} FAILED {o.code} {o.reason}"
    if ev.is_CONNECTION():
        s = ev.status
        return f"CONNECTION {s.state} attempt={s.attempt} error={s.error}"
    if ev.is_RECEIPT():
        r = ev.receipt
        return f"RECEIPT {r.kind} {r.user_id}/{r.device_id} #{r.seq}"
    if ev.is_TYPING():
        return f"TYPING {ev.typing.user_id} {ev.typing.state}"
    if ev.is_PRESENCE():
        return f"PRESENCE {ev.presence.user_id} {ev.presence.status}"
    return str(ev)


class Events:
    """Reads one client's EventStream in an asyncio task and keeps everything it got."""

    def __init__(self, name, stream, user=None, device=None):
        self.name = name
        self.user = user
        self.device = device
        self.stream = stream
        self.items = []
        self.ended = False
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._pump())

    async def _pump(self):
        while True:
            ev = await self.stream.next()
            if ev is None:
                self.ended = True
                self._changed.set()
                return
            self.items.append(ev)
            self._changed.set()

    async def until(self, check, what, timeout=WAIT):
        """Wait until `check()` is truthy; return its value."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            v = check()
            if v:
                return v
            if self._task.done() and self._task.exception() is not None:
                raise self._task.exception()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                tail = "\n  ".join(describe(e) for e in self.items[-30:])
                raise AssertionError(
                    f"{self.name}: no {what} within {timeout:.0f}s; last events:\n  {tail}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def finished(self, timeout=WAIT):
        await asyncio.wait_for(asyncio.shield(self._task), timeout)

    # -- views

    def messages(self, chat_id=None):
        return [e.message for e in self.items
                if e.is_MESSAGE() and (chat_id is None or e.message.chat_id == chat_id)]

    def texts(self, chat_id=None):
        return [m.content.text for m in self.messages(chat_id)]

    def from_others(self, chat_id=None):
        """Messages not sent by this device (other users, or this user's other devices)."""
        return [m for m in self.messages(chat_id)
                if (m.sender_user_id, m.sender_device_id) != (self.user, self.device)]

    def own_echoes(self, chat_id=None):
        """This device's own sends that came back as MESSAGE events: there should be none
        (they come back as SEND_RESULT); see test_chat.py."""
        return [m for m in self.messages(chat_id)
                if (m.sender_user_id, m.sender_device_id) == (self.user, self.device)]

    def send_results(self):
        return [e.result for e in self.items if e.is_SEND_RESULT()]

    def receipts(self):
        return [e.receipt for e in self.items if e.is_RECEIPT()]

    def states(self):
        return [e.status.state for e in self.items if e.is_CONNECTION()]

    def index_of(self, pred, start=0):
        for i in range(start, len(self.items)):
            if pred(self.items[i]):
                return i
        return None


async def new_client(server, user, device, **overrides):
    """chat_sdk.connect, closed by `run` at the end of the test."""
    client = await chat_sdk.connect(server.config(user, device, **overrides))
    _OPEN.append(client)
    return client


async def connect(server, user, device, *, events=True, **overrides):
    """A connected client (state CONNECTED) and, unless `events=False`, its collector."""
    client = await new_client(server, user, device, **overrides)
    ev = Events(f"{user}/{device}", client.events(), user, device) if events else None
    await client.wait_for(chat_sdk.ConnectionState.CONNECTED, int(WAIT * 1000))
    return client, ev


async def close_all(*pairs):
    for client, ev in pairs:
        await asyncio.wait_for(client.close(), WAIT)
        if ev is not None:
            await ev.finished()


def text(t):
    return chat_sdk.Content(text=t)


def native_threads():
    """{tid: name} of this process's OS threads (Linux)."""
    out = {}
    for d in pathlib.Path("/proc/self/task").iterdir():
        try:
            out[int(d.name)] = (d / "comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            pass  # exited meanwhile
    return out

