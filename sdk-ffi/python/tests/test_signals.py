"""Typing indicators, delivered/read receipts and presence as typed events."""

import chat_sdk
from conftest import close_all, connect, run, text

K = chat_sdk.ReceiptKind
P = chat_sdk.PresenceStatus


def test_typing_reaches_the_peer(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, b_ev = await connect(server, "bob", "laptop")
        chat = await alice.open_direct_chat("bob")

        await alice.set_typing(chat.chat_id, True)
        t = await b_ev.until(
            lambda: next((e.typing for e in b_ev.items if e.is_TYPING()), None), "a TYPING event"
        )
        assert t.chat_id == chat.chat_id
        assert (t.user_id, t.device_id) == ("alice", "phone")
        assert t.state == chat_sdk.TypingState.STARTED
        assert t.expires_at > 0
        assert not any(e.is_TYPING() for e in a_ev.items), "own typing echoed to the typist"

        await alice.set_typing(chat.chat_id, False)
        await b_ev.until(
            lambda: any(e.is_TYPING() and e.typing.state == chat_sdk.TypingState.STOPPED
                        for e in b_ev.items),
            "a TYPING STOPPED event",
        )
        await close_all((alice, a_ev), (bob, b_ev))

    run(body())


def test_delivered_and_read_receipts(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, b_ev = await connect(server, "bob", "laptop")
        chat = await alice.open_direct_chat("bob")

        await alice.send(chat.chat_id, text("did you get this?"))
        msg = (await b_ev.until(lambda: b_ev.messages(chat.chat_id), "the message"))[0]

        # Bob's client acks what bob's app took from its events by itself: DELIVERED.
        def delivered():
            return [r for r in a_ev.receipts()
                    if r.kind == K.DELIVERED and r.user_id == "bob" and r.seq >= msg.seq]
        d = (await a_ev.until(delivered, "bob's DELIVERED receipt"))[0]
        assert d.chat_id == chat.chat_id
        assert d.device_id == "laptop"

        assert not any(r.kind == K.READ and r.user_id == "bob" for r in a_ev.receipts())
        await bob.mark_read(chat.chat_id, msg.seq)

        def read():
            return [r for r in a_ev.receipts()
                    if r.kind == K.READ and r.user_id == "bob" and r.seq == msg.seq]
        r = (await a_ev.until(read, "bob's READ receipt"))[0]
        assert r.chat_id == chat.chat_id and r.at > 0

        got = await alice.get_receipts(chat.chat_id, msg.seq)
        assert any(x.kind == K.READ and x.user_id == "bob" for x in got), got
        assert (await bob.get_chat(chat.chat_id)).read_seq == msg.seq
        await close_all((alice, a_ev), (bob, b_ev))

    run(body())


def test_presence_follows_the_peer(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        # Presence is visible only between users who share a chat.
        await alice.open_direct_chat("carol")
        assert [p.status for p in await alice.get_presence(["carol"])] == [P.OFFLINE]
        alice.watch_presence(["carol"])

        def carol(status, start=0):
            return a_ev.index_of(
                lambda e: e.is_PRESENCE() and e.presence.user_id == "carol"
                and e.presence.status == status, start)

        seen = len(a_ev.items)
        c, c_ev = await connect(server, "carol", "tablet")
        online = await a_ev.until(lambda: carol(P.ONLINE, seen), "carol ONLINE")
        assert a_ev.items[online].presence.devices_online >= 1
        assert [p.status for p in await alice.get_presence(["carol"])] == [P.ONLINE]

        await close_all((c, c_ev))
        off = await a_ev.until(lambda: carol(P.OFFLINE, online + 1), "carol OFFLINE after closing")
        assert a_ev.items[off].presence.last_seen > 0
        await close_all((alice, a_ev))

    run(body())
