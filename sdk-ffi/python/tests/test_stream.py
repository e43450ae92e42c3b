"""EventStream.next() under cancellation, and EventStream.close()."""

import asyncio
import random

import pytest

import chat_sdk
from conftest import WAIT, close_all, connect, describe, run, text


async def next_message(stream, timeout=WAIT):
    """The next MESSAGE event, skipping others."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        ev = await asyncio.wait_for(stream.next(), max(0.0, deadline - loop.time()))
        assert ev is not None, "the stream ended"
        if ev.is_MESSAGE():
            return ev.message


def test_cancelled_next_loses_nothing(server):
    """Cancelling a next() that is waiting (asyncio.wait_for timeout, task.cancel) does not
    hang, and the next read gets everything that arrived meanwhile."""
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, _ = await connect(server, "bob", "laptop", events=False)
        stream = bob.events()
        chat = (await alice.open_direct_chat("bob")).chat_id

        # Drain what is there (connection changes, the new chat), then time out on an empty
        # stream a few times: wait_for cancels the awaited next() each time.
        while True:
            try:
                await asyncio.wait_for(stream.next(), 0.5)
            except asyncio.TimeoutError:
                break
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stream.next(), 0.2)
        task = asyncio.create_task(stream.next())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        # Later reads work and get, in order, what arrived while the reads were cancelled.
        for i in range(3):
            await alice.send(chat, text(f"after-cancel-{i}"))
        for i in range(3):
            assert (await next_message(stream)).content.text == f"after-cancel-{i}"
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stream.next(), 0.2)
        await alice.send(chat, text("last"))
        assert (await next_message(stream)).content.text == "last"
        await close_all((alice, a_ev), (bob, None))

    run(body())


def test_wait_and_try_next_survive_any_cancellation(server):
    """wait() + try_next() under a storm of timeouts racing with arrivals: each message exactly
    once and in order. (A bare next() cancelled in the instant its event became ready would
    drop that event: uniffi cannot give a finished result back.)"""
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, _ = await connect(server, "bob", "laptop", events=False)
        stream = bob.events()
        chat = (await alice.open_direct_chat("bob")).chat_id

        # Drain the connection changes, then wait() on an empty stream and cancel it.
        while True:
            try:
                await asyncio.wait_for(stream.wait(), 0.5)
            except asyncio.TimeoutError:
                break
            stream.try_next()
        cancels = 0
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(stream.wait(), 0.05)
            cancels += 1

        # Messages trickle in while the reader's timeouts keep firing around their arrival.
        n = 150

        async def trickle():
            for i in range(n):
                await alice.send(chat, text(f"m{i}"))
                await asyncio.sleep(random.uniform(0, 0.004))

        sender = asyncio.create_task(trickle())
        got = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT * 2
        while len(got) < n and loop.time() < deadline:
            try:
                ready = await asyncio.wait_for(stream.wait(), random.choice((0.0005, 0.001, 0.003)))
            except asyncio.TimeoutError:
                cancels += 1
                continue
            assert ready
            ev = stream.try_next()
            assert ev is not None, "wait() said ready but try_next() found nothing"
            if ev.is_MESSAGE():
                got.append(ev.message.content.text)
        await asyncio.wait_for(sender, WAIT)
        assert got == [f"m{i}" for i in range(n)], f"{len(got)} of {n} after {cancels} cancels"
        # Nothing was held back or duplicated: no further message, by either way of reading.
        await asyncio.sleep(0.5)
        while (ev := stream.try_next()) is not None:
            assert not ev.is_MESSAGE(), describe(ev)
        with pytest.raises(asyncio.TimeoutError):
            m = await next_message(stream, 1.0)
            raise AssertionError(f"unexpected extra message {m.content.text}")
        # next() and try_next() share the order: an event set aside by wait() comes first.
        await alice.send(chat, text("x"))
        await alice.send(chat, text("y"))
        while True:
            assert await asyncio.wait_for(stream.wait(), WAIT)
            ev = stream.try_next()
            if ev.is_MESSAGE():
                break
        assert ev.message.content.text == "x"
        assert (await next_message(stream)).content.text == "y"
        await close_all((alice, a_ev), (bob, None))

    run(body())


def test_close_ends_a_waiting_next(server):
    async def body():
        bob, _ = await connect(server, "bob", "laptop", events=False)
        stream = bob.events()
        waiting = [asyncio.create_task(stream.next()) for _ in range(2)]
        # Let both reach the native call; the stream has events, so drain the first ones.
        await asyncio.sleep(0.3)
        done = [t for t in waiting if t.done()]
        assert all(t.result() is not None for t in done)
        idle = asyncio.create_task(stream.next())
        while True:  # wait until the idle call is really pending on an empty stream
            await asyncio.sleep(0.3)
            if not idle.done():
                break
            assert idle.result() is not None
            idle = asyncio.create_task(stream.next())
        assert not stream.is_closed()
        stream.close()
        assert stream.is_closed()
        assert await asyncio.wait_for(idle, 10) is None
        assert await asyncio.wait_for(stream.wait(), 10) is False
        assert stream.try_next() is None
        for t in waiting:
            if not t.done():
                assert await asyncio.wait_for(t, 10) is None
        # Later calls end at once, even with events queued meanwhile.
        await bob.open_direct_chat("alice")
        assert await asyncio.wait_for(stream.next(), 10) is None
        stream.close()  # idempotent
        await close_all((bob, None))
        assert await asyncio.wait_for(stream.next(), 10) is None

    run(body())


def test_stream_ends_after_client_close(server):
    async def body():
        bob, _ = await connect(server, "bob", "laptop", events=False)
        stream = bob.events()
        await asyncio.wait_for(bob.close(), WAIT)
        # What was queued is still readable, ending with CLOSED; then None.
        states = []
        while (ev := await asyncio.wait_for(stream.next(), 10)) is not None:
            if ev.is_CONNECTION():
                states.append(ev.status.state)
        S = chat_sdk.ConnectionState
        assert states[-1] == S.CLOSED and S.CONNECTED in states, states
        assert bob.status().state == S.CLOSED
        await asyncio.wait_for(bob.close(), WAIT)  # idempotent

    run(body())
