"""Messages between real clients: 1:1 and in a group, as typed events, in order, once.

The checks read the messages *from others* (`Events.from_others`): a device's own sends come
back as SEND_RESULT, and also, today, as MESSAGE when the SDK fills a gap from history while
their SendAck is still on its way (an SDK issue, pinned by test_own_sends_do_not_come_back_as
_messages below).
"""

import asyncio

import pytest

import chat_sdk
from conftest import WAIT, close_all, connect, run, text


def sent_seqs(results):
    """client_msg_id -> seq of every SENT outcome (a key seen twice fails the test)."""
    out = {}
    for r in results:
        assert r.outcome.is_SENT(), f"send {r.client_msg_id} failed: {r.outcome}"
        assert r.client_msg_id not in out, f"two results for {r.client_msg_id}"
        out[r.client_msg_id] = r.outcome.message.seq
    return out


def test_direct_chat(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, b_ev = await connect(server, "bob", "laptop")
        assert alice.user_id() == "alice" and alice.device_id() == "phone"
        assert alice.status().state == chat_sdk.ConnectionState.CONNECTED

        chat = await alice.open_direct_chat("bob")
        assert chat.kind == chat_sdk.ChatKind.DIRECT
        assert len(chat.chat_id) == 32
        assert sorted(m.user_id for m in chat.members) == ["alice", "bob"]
        # Either side opens the same chat.
        assert (await bob.open_direct_chat("alice")).chat_id == chat.chat_id

        echoes = []
        for i in range(5):
            echoes.append(await alice.send(chat.chat_id, text(f"a{i}")))
            await bob.send(chat.chat_id, text(f"b{i}"))
        # The local echo is what was queued.
        assert [e.content.text for e in echoes] == [f"a{i}" for i in range(5)]
        assert all(e.chat_id == chat.chat_id and e.failure is None for e in echoes)
        assert len({e.client_msg_id for e in echoes}) == 5

        want_b = [f"a{i}" for i in range(5)]
        want_a = [f"b{i}" for i in range(5)]
        await b_ev.until(lambda: len(b_ev.from_others(chat.chat_id)) >= 5, "alice's 5 messages")
        await a_ev.until(lambda: len(a_ev.from_others(chat.chat_id)) >= 5, "bob's 5 messages")
        await a_ev.until(lambda: len(a_ev.send_results()) >= 5, "alice's 5 send results")
        await b_ev.until(lambda: len(b_ev.send_results()) >= 5, "bob's 5 send results")

        assert [m.content.text for m in b_ev.from_others(chat.chat_id)] == want_b
        assert [m.content.text for m in a_ev.from_others(chat.chat_id)] == want_a
        for ev in (a_ev, b_ev):
            seqs = [m.seq for m in ev.messages(chat.chat_id)]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

        # Own sends come back as SENT with the key the echo had, in queue order.
        a_sent = sent_seqs(a_ev.send_results())
        assert list(a_sent) == [e.client_msg_id for e in echoes]
        assert list(a_sent.values()) == sorted(a_sent.values())
        # Both sides agree on the seq of each of alice's messages.
        assert [m.seq for m in b_ev.from_others(chat.chat_id)] == list(a_sent.values())
        sent_seqs(b_ev.send_results())

        hist = await bob.get_history(chat.chat_id, 50, "")
        assert sorted(m.content.text for m in hist.messages) == sorted(want_a + want_b)
        after = await bob.get_history_after(chat.chat_id, 1, 50)
        assert [m.seq for m in after.messages] == list(range(2, 11))

        unary = await alice.send_message(chat.chat_id, "unary-1", text("unary"))
        again = await alice.send_message(chat.chat_id, "unary-1", text("unary"))
        assert not unary.duplicate and again.duplicate
        assert again.message.seq == unary.message.seq == 11
        await b_ev.until(lambda: "unary" in b_ev.texts(chat.chat_id), "the unary message")
        await asyncio.sleep(0.5)
        assert b_ev.texts(chat.chat_id).count("unary") == 1

        chats = await bob.list_all_chats()
        assert [c.chat_id for c in chats] == [chat.chat_id]
        page = await bob.list_chats(10, "")
        assert page.chats[0].last_seq == 11
        await close_all((alice, a_ev), (bob, b_ev))

    run(body())


def test_group_chat_three_users(server):
    async def body():
        users = {u: await connect(server, u, f"{u}-dev") for u in ("alice", "bob", "carol")}
        alice = users["alice"][0]
        group = await alice.create_group("trio", ["bob", "carol"])
        assert group.kind == chat_sdk.ChatKind.GROUP and group.title == "trio"
        roles = {m.user_id: m.role for m in group.members}
        assert roles == {
            "alice": chat_sdk.MemberRole.ADMIN,
            "bob": chat_sdk.MemberRole.MEMBER,
            "carol": chat_sdk.MemberRole.MEMBER,
        }

        n = 4
        for i in range(n):
            for u, (c, _) in users.items():
                await c.send(group.chat_id, text(f"{u}{i}"))

        for u, (_, ev) in users.items():
            others = [o for o in users if o != u]
            await ev.until(
                lambda ev=ev: len(ev.from_others(group.chat_id)) >= n * 2,
                f"the group messages of {others}",
            )
            await ev.until(lambda ev=ev: len(ev.send_results()) >= n, "own send results")
        await asyncio.sleep(0.5)  # anything repeated late would show up now
        for u, (_, ev) in users.items():
            msgs = ev.from_others(group.chat_id)
            assert len(msgs) == n * 2, [m.content.text for m in msgs]
            # Each sender's messages in the order sent, and the chat in seq order, once.
            for o in users:
                if o != u:
                    got = [m.content.text for m in msgs if m.sender_user_id == o]
                    assert got == [f"{o}{i}" for i in range(n)]
            all_seqs = [m.seq for m in ev.messages(group.chat_id)]
            assert all_seqs == sorted(all_seqs) and len(set(all_seqs)) == len(all_seqs)
            sent = sent_seqs(ev.send_results())
            # Others' seqs and own seqs together are exactly 1..3n: nothing lost, nothing twice.
            assert sorted([m.seq for m in msgs] + list(sent.values())) == list(range(1, 3 * n + 1))

        # A chat change reaches the members when someone leaves.
        carol, c_ev = users["carol"]
        await carol.remove_member(group.chat_id, "carol")
        b_ev = users["bob"][1]
        await b_ev.until(
            lambda: any(e.is_CHAT_CHANGED() and e.change.kind == chat_sdk.ChatChangeKind.MEMBER_REMOVED
                        for e in b_ev.items),
            "a MEMBER_REMOVED chat change",
        )
        await close_all(*users.values())

    run(body())


def test_own_sends_do_not_come_back_as_messages(server):
    """Three users send into one group at once, so each client keeps seeing others' messages
    above its own sends whose SendAck has not arrived yet: a gap it fills from history."""
    async def body():
        users = {u: await connect(server, u, f"{u}-dev") for u in ("alice", "bob", "carol")}
        group = await users["alice"][0].create_group("busy", ["bob", "carol"])
        n = 40

        async def sender(u):
            for i in range(n):
                await users[u][0].send(group.chat_id, text(f"{u}{i}"))
                await asyncio.sleep(0)

        await asyncio.gather(*(sender(u) for u in users))
        for u, (_, ev) in users.items():
            await ev.until(lambda ev=ev: len(ev.send_results()) >= n, "own send results")
            await ev.until(lambda ev=ev: len(ev.from_others(group.chat_id)) >= 2 * n,
                           "the others' messages")
        echoes = {u: [m.content.text for m in ev.own_echoes(group.chat_id)]
                  for u, (_, ev) in users.items()}
        await close_all(*users.values())
        assert not any(echoes.values()), f"own sends given as MESSAGE events: {echoes}"

    run(body())


def test_chat_client_connect_is_the_module_connect(server):
    """`ChatClient.connect(config)` (the named constructor) gives the same client as
    `chat_sdk.connect(config)`."""
    async def body():
        client = await chat_sdk.ChatClient.connect(server.config("dora", "phone"))
        try:
            assert isinstance(client, chat_sdk.ChatClient)
            await client.wait_for(chat_sdk.ConnectionState.CONNECTED, int(WAIT * 1000))
            assert client.user_id() == "dora" and client.device_id() == "phone"
            chat = await client.open_direct_chat("erin")
            assert chat.kind == chat_sdk.ChatKind.DIRECT
        finally:
            await client.close()

    run(body())
