"""The server going away under connected clients, and the offline queue across a client
restart: every message arrives exactly once and in order."""

import asyncio

import pytest

import chat_sdk
from conftest import WAIT, Events, close_all, connect, new_client, run, text

S = chat_sdk.ConnectionState


def assert_once_in_order(texts, want):
    dups = sorted({t for t in texts if texts.count(t) > 1})
    assert not dups, f"delivered twice: {dups}"
    assert texts == want


def test_server_restart_under_connected_clients(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, b_ev = await connect(server, "bob", "laptop")
        chat = (await alice.open_direct_chat("bob")).chat_id

        for i in range(3):
            await alice.send(chat, text(f"before-{i}"))
        await b_ev.until(lambda: len(b_ev.texts(chat)) >= 3, "the messages sent before")

        server.stop()
        for ev in (a_ev, b_ev):
            await ev.until(lambda ev=ev: S.RECONNECTING in ev.states(), "state RECONNECTING")
        assert alice.status().state in (S.RECONNECTING, S.CONNECTING)

        # While the server is down a send is a local echo, queued on the client.
        during = []
        for i in range(3):
            echo = await asyncio.wait_for(alice.send(chat, text(f"during-{i}")), WAIT)
            assert echo.content.text == f"during-{i}" and echo.failure is None
            during.append(echo.client_msg_id)
        pending = [m.client_msg_id for m in await alice.pending_sends()]
        assert pending == during

        server.start()
        for c in (alice, bob):
            await c.wait_for(S.CONNECTED, int(WAIT * 1000))
        for i in range(3):
            await alice.send(chat, text(f"after-{i}"))

        want = [f"{p}-{i}" for p in ("before", "during", "after") for i in range(3)]
        await b_ev.until(lambda: len(b_ev.texts(chat)) >= 9, "all 9 messages")
        await a_ev.until(lambda: len(a_ev.send_results()) >= 9, "all 9 send results")
        await asyncio.sleep(1)  # anything repeated late would show up now
        assert_once_in_order(b_ev.texts(chat), want)
        seqs = [m.seq for m in b_ev.messages(chat)]
        assert seqs == list(range(1, 10))

        keys = [r.client_msg_id for r in a_ev.send_results()]
        assert len(keys) == len(set(keys)) == 9
        assert all(r.outcome.is_SENT() for r in a_ev.send_results())
        assert await alice.pending_sends() == []

        # Each reconnected by itself: ... CONNECTED, RECONNECTING, ..., CONNECTED.
        for ev in (a_ev, b_ev):
            states = ev.states()
            first_drop = states.index(S.RECONNECTING)
            assert S.CONNECTED in states[:first_drop]
            assert S.CONNECTED in states[first_drop:], states
        assert alice.stats().connects >= 2 and alice.stats().disconnects >= 1

        # The server stored each message once.
        hist = await bob.get_history(chat, 50, "")
        assert sorted(m.content.text for m in hist.messages) == sorted(want)
        await close_all((alice, a_ev), (bob, b_ev))

    run(body())


def test_offline_queue_survives_a_client_restart(server, tmp_path):
    async def body():
        state = str(tmp_path / "alice-state")
        alice, a_ev = await connect(server, "alice", "phone", data_dir=state)
        bob, b_ev = await connect(server, "bob", "laptop")
        chat = (await alice.open_direct_chat("bob")).chat_id
        await alice.send(chat, text("online"))
        await b_ev.until(lambda: b_ev.texts(chat) == ["online"], "the first message")

        # One client per data dir.
        with pytest.raises(chat_sdk.ChatError.Storage) as e:
            await chat_sdk.connect(server.config("alice", "phone", data_dir=state))
        assert "in use" in e.value.detail

        server.stop()
        await a_ev.until(lambda: S.RECONNECTING in a_ev.states(), "state RECONNECTING")
        queued = [await alice.send(chat, text(f"offline-{i}")) for i in range(3)]
        await close_all((alice, a_ev))
        assert not any(r.client_msg_id in {q.client_msg_id for q in queued}
                       for r in a_ev.send_results())

        # A new client on the same data dir, still without a server: the queue is there.
        alice2 = await new_client(server, "alice", "phone", data_dir=state)
        a2_events = alice2.events()
        pending = await alice2.pending_sends()
        assert [m.client_msg_id for m in pending] == [q.client_msg_id for q in queued]
        assert [m.content.text for m in pending] == ["offline-0", "offline-1", "offline-2"]

        server.start()
        a2_ev = Events("alice2", a2_events, "alice", "phone")
        await alice2.wait_for(S.CONNECTED, int(WAIT * 1000))
        await b_ev.until(lambda: len(b_ev.texts(chat)) >= 4, "the queued messages")
        await a2_ev.until(lambda: len(a2_ev.send_results()) >= 3, "the queued sends' results")
        await asyncio.sleep(1)
        assert_once_in_order(b_ev.texts(chat), ["online", "offline-0", "offline-1", "offline-2"])
        assert [r.client_msg_id for r in a2_ev.send_results()] == [q.client_msg_id for q in queued]
        assert await alice2.pending_sends() == []
        hist = await bob.get_history(chat, 50, "")
        assert sorted(m.content.text for m in hist.messages) == \
            ["offline-0", "offline-1", "offline-2", "online"]
        await close_all((alice2, a2_ev), (bob, b_ev))

    run(body())
