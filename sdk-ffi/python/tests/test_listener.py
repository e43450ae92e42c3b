"""The listener thread, and the threads a client leaves behind after close().

What is asserted about threads (Linux, /proc/self/task):
* while a listener is set there is exactly one OS thread named "chat-sdk-events" per
  listening client; it is gone when `close()` (or `remove_listener()`) returns;
* after close() the process has no thread it did not have before `connect`, except at most one
  named "async-compat/tokio-1" (truncated by Linux to "async-compat/to"): uniffi's tokio
  support (the async-compat crate) runs one global current-thread runtime on that thread,
  started on the first async call and kept for the life of the process;
* that runtime's blocking-pool threads ("tokio-runtime-worker": the SDK's SQLite calls, name
  resolution) exit after 10 s idle, so the comparison waits up to 40 s for them;
* Python's threading.enumerate() is the same before connect and after close (the listener
  thread never becomes a Python thread object).
"""

import asyncio
import threading

import pytest

import chat_sdk
from conftest import WAIT, close_all, connect, describe, native_threads, new_client, run, text

LISTENER = "chat-sdk-events"
RUNTIME = "async-compat/to"
S = chat_sdk.ConnectionState


class Recorder:
    """An EventListener that keeps what it gets; raises once on demand."""

    def __init__(self, fail_on_first=False):
        self.events = []
        self.fail_on_first = fail_on_first

    def on_event(self, event):
        if self.fail_on_first:
            self.fail_on_first = False
            raise RuntimeError("an app bug in on_event (expected by the test)")
        self.events.append(event)

    def texts(self):
        return [e.message.content.text for e in self.events if e.is_MESSAGE()]


async def until(check, what, timeout=WAIT):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not (v := check()):
        if loop.time() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f}s")
        await asyncio.sleep(0.05)
    return v


def listener_threads():
    return [t for t, name in native_threads().items() if name == LISTENER]


def test_listener_delivers_and_close_leaves_no_thread(server):
    async def body():
        before = native_threads()
        py_before = set(threading.enumerate())

        alice, a_ev = await connect(server, "alice", "phone")
        bob = await new_client(server, "bob", "laptop")
        rec = Recorder()
        bob.set_listener(rec)
        # The thread names itself when it starts.
        await until(lambda: len(listener_threads()) == 1, "the listener thread")
        with pytest.raises(chat_sdk.ChatError.EventsTaken):
            bob.events()
        with pytest.raises(chat_sdk.ChatError.EventsTaken):
            bob.set_listener(Recorder())

        await bob.wait_for(S.CONNECTED, int(WAIT * 1000))
        chat = (await alice.open_direct_chat("bob")).chat_id
        for i in range(20):
            await alice.send(chat, text(f"m{i}"))
        await until(lambda: len(rec.texts()) >= 20, "20 messages on the listener")
        assert rec.texts() == [f"m{i}" for i in range(20)]

        await asyncio.wait_for(bob.close(), WAIT)
        # Joined by close(): no grace period.
        assert listener_threads() == [], native_threads()
        # The listener got what was queued, ending with the CLOSED connection change.
        states = [e.status.state for e in rec.events if e.is_CONNECTION()]
        assert states[0] == S.CONNECTING and states[-1] == S.CLOSED, states
        await asyncio.wait_for(bob.close(), WAIT)  # idempotent
        await close_all((alice, a_ev))
        del alice, bob

        def leftovers():
            return {t: n for t, n in native_threads().items() if t not in before}

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        while loop.time() < deadline:
            extra = leftovers()
            if all(n == RUNTIME for n in extra.values()):
                break
            await asyncio.sleep(0.5)
        extra = leftovers()
        assert all(n == RUNTIME for n in extra.values()), f"threads left after close: {extra}"
        assert len(extra) <= 1, extra
        assert sum(n == RUNTIME for n in native_threads().values()) == 1
        assert set(threading.enumerate()) == py_before

    run(body())


def test_remove_listener_then_read_the_stream(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob = await new_client(server, "bob", "laptop")
        rec = Recorder(fail_on_first=True)
        bob.set_listener(rec)
        await bob.wait_for(S.CONNECTED, int(WAIT * 1000))
        chat = (await alice.open_direct_chat("bob")).chat_id
        await alice.send(chat, text("to the listener"))
        # The exception of the first callback did not stop the listener.
        await until(lambda: rec.texts() == ["to the listener"], "the message on the listener")

        await asyncio.wait_for(bob.remove_listener(), WAIT)
        assert listener_threads() == []
        await asyncio.wait_for(bob.remove_listener(), WAIT)  # no-op
        n = len(rec.events)

        # The stream is free again; nothing was lost in the hand-over.
        await alice.send(chat, text("to the stream"))
        stream = bob.events()
        while True:
            ev = await asyncio.wait_for(stream.next(), WAIT)
            assert ev is not None
            if ev.is_MESSAGE():
                break
        assert ev.message.content.text == "to the stream", describe(ev)
        assert len(rec.events) == n, "the removed listener got more events"
        with pytest.raises(chat_sdk.ChatError.EventsTaken):
            bob.set_listener(Recorder())
        await close_all((alice, a_ev), (bob, None))

    run(body())


def test_listener_can_stop_itself(server):
    """remove_listener() from inside on_event must not wait for its own thread."""
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob = await new_client(server, "bob", "laptop")

        class StopOnMessage(Recorder):
            def on_event(self, event):
                super().on_event(event)
                if event.is_MESSAGE():
                    asyncio.run(bob.remove_listener())

        rec = StopOnMessage()
        bob.set_listener(rec)
        await bob.wait_for(S.CONNECTED, int(WAIT * 1000))
        chat = (await alice.open_direct_chat("bob")).chat_id
        await alice.send(chat, text("stop"))
        await until(lambda: rec.texts() == ["stop"], "the message")
        await until(lambda: listener_threads() == [], "the listener thread to end")
        await alice.send(chat, text("after stop"))
        await asyncio.sleep(0.5)
        assert rec.texts() == ["stop"]
        await close_all((alice, a_ev), (bob, None))

    run(body())
