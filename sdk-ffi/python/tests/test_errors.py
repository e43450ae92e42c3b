"""Server refusals and local errors arrive typed: ChatError variants with a Code, and
SendResult FAILED for queued sends."""

import asyncio

import pytest

import chat_sdk
from conftest import WAIT, close_all, connect, new_client, run, text

C = chat_sdk.Code
E = chat_sdk.ChatError


def test_server_errors_are_typed_exceptions(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, b_ev = await connect(server, "bob", "laptop")

        with pytest.raises(E.Server) as e:
            await alice.get_chat("0" * 32)
        assert e.value.code == C.NOT_FOUND
        assert e.value.detail and e.value.retry_after_ms is None
        assert isinstance(e.value, E)

        with pytest.raises(E.Server) as e:
            await alice.get_chat("not-a-chat-id")
        assert e.value.code == C.INVALID_ARGUMENT

        # Bob's private group: alice is no member.
        group = await bob.create_group("private", ["carol"])
        with pytest.raises(E.Server) as e:
            await alice.get_history(group.chat_id, 10, "")
        assert e.value.code == C.PERMISSION_DENIED
        with pytest.raises(E.Server) as e:
            await alice.send_message(group.chat_id, "unary-key", text("let me in"))
        assert e.value.code == C.PERMISSION_DENIED

        # A queued send refused for good: SendResult FAILED, kept as failed until discarded.
        echo = await alice.send(group.chat_id, text("let me in"))
        result = await a_ev.until(
            lambda: next((r for r in a_ev.send_results() if r.client_msg_id == echo.client_msg_id),
                         None),
            "the send's result",
        )
        assert result.outcome.is_FAILED(), result.outcome
        assert result.outcome.code == C.PERMISSION_DENIED and result.outcome.reason
        [failed] = await alice.pending_sends()
        assert failed.client_msg_id == echo.client_msg_id
        assert failed.failure.code == C.PERMISSION_DENIED
        assert alice.stats().sends_failed == 1

        # Retrying fails the same way; discarding forgets it.
        assert await alice.retry_failed(echo.client_msg_id)
        await a_ev.until(
            lambda: len([r for r in a_ev.send_results()
                         if r.client_msg_id == echo.client_msg_id]) == 2,
            "the retried send's result",
        )
        assert await alice.retry_failed("no-such-key") is False
        assert await alice.discard_failed(echo.client_msg_id) is True
        assert await alice.discard_failed(echo.client_msg_id) is False
        assert await alice.pending_sends() == []

        # A failed send does not hold up the chats that work.
        chat = (await alice.open_direct_chat("bob")).chat_id
        await alice.send(chat, text("still works"))
        await b_ev.until(lambda: b_ev.texts(chat) == ["still works"], "the next message")
        await close_all((alice, a_ev), (bob, b_ev))

    run(body())


def test_local_errors_are_typed(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        chat = (await alice.open_direct_chat("bob")).chat_id

        with pytest.raises(E.EventsTaken) as e:
            alice.events()
        assert e.value.code == C.FAILED_PRECONDITION
        with pytest.raises(E.InvalidArgument) as e:
            await alice.get_history_after(chat, 0, 10)
        assert e.value.code == C.INVALID_ARGUMENT and "after_seq" in e.value.detail
        with pytest.raises(E.InvalidArgument):
            await alice.send_with_id(chat, "", text("no key"))
        with pytest.raises(E.InvalidArgument):
            await alice.send_with_id(chat, "k" * 65, text("key too long"))
        await alice.send_with_id(chat, "same-key", text("once"))
        with pytest.raises(E.InvalidArgument):
            await alice.send_with_id(chat, "same-key", text("twice"))
        with pytest.raises(E.InvalidArgument):
            alice.set_token("   ")

        await close_all((alice, a_ev))
        with pytest.raises(E.Closed) as e:
            await alice.send(chat, text("after close"))
        assert e.value.code == C.CANCELLED

        bad = [
            dict(endpoint="127.0.0.1:1"),
            dict(device_id="not a device id"),
            dict(token=" "),
            dict(send_window=0),
            dict(keepalive_interval_ms=0),
            dict(reconnect_jitter=1.5),
        ]
        for override in bad:
            cfg = server.config("alice", "phone")
            for k, v in override.items():
                setattr(cfg, k, v)
            with pytest.raises(E.Config) as e:
                await chat_sdk.connect(cfg)
            assert e.value.code == C.INVALID_ARGUMENT, override

    run(body())


def test_unreachable_server_queues_sends(make_server):
    """connect() returns at once without a server; sends queue; status says why."""
    async def body():
        server = make_server(start=False)
        alice = await new_client(server, "alice", "phone", connect_timeout_ms=2000)
        events = alice.events()
        assert alice.status().state in (chat_sdk.ConnectionState.CONNECTING,
                                        chat_sdk.ConnectionState.RECONNECTING)
        echo = await alice.send("0" * 32, text("queued"))
        assert [m.client_msg_id for m in await alice.pending_sends()] == [echo.client_msg_id]
        while True:
            ev = await asyncio.wait_for(events.next(), WAIT)
            if ev.is_CONNECTION() and ev.status.state == chat_sdk.ConnectionState.RECONNECTING:
                break
        assert ev.status.error is not None and ev.status.error.code == C.UNAVAILABLE
        assert ev.status.retry_in_ms is not None
        with pytest.raises(E.Timeout) as e:
            await alice.wait_for(chat_sdk.ConnectionState.CONNECTED, 300)
        assert e.value.code == C.DEADLINE_EXCEEDED
        # Unary calls fail with the transport's status.
        with pytest.raises(E.Server) as e:
            await alice.list_chats(10, "")
        assert e.value.code == C.UNAVAILABLE

    run(body())


def test_rate_limit(make_server):
    async def body():
        server = make_server(env={"CHATD_RATE_LIMIT_PER_SEC": "2", "CHATD_RATE_LIMIT_BURST": "2"})
        alice, a_ev = await connect(server, "alice", "phone")
        bob, b_ev = await connect(server, "bob", "laptop")
        chat = (await alice.open_direct_chat("bob")).chat_id

        # Unary: past the burst, RESOURCE_EXHAUSTED with the server's retry-after.
        with pytest.raises(E.Server) as e:
            for i in range(10):
                await alice.send_message(chat, f"unary-{i}", text(f"unary-{i}"))
        assert e.value.code == C.RESOURCE_EXHAUSTED
        assert e.value.retry_after_ms is not None and e.value.retry_after_ms > 0

        # Queued sends wait and retry by themselves: all arrive, once, in order.
        want = [f"q{i}" for i in range(6)]
        for t in want:
            await alice.send(chat, text(t))
        await b_ev.until(lambda: [t for t in b_ev.texts(chat) if t.startswith("q")] == want,
                         "the rate-limited queued messages")
        await a_ev.until(lambda: len(a_ev.send_results()) == 6, "their send results")
        assert all(r.outcome.is_SENT() for r in a_ev.send_results())
        assert alice.stats().send_retries >= 1
        await close_all((alice, a_ev), (bob, b_ev))

    run(body())
