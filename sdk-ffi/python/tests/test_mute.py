"""Muting a chat's pushes through the bindings: the caller's own mute shows on their chats (not
on anyone else's), until a time or until unmuted; a past time is refused by the server naming
`until`, a time that is not one before anything is sent; a non-member is refused."""

import time

import pytest

import chat_sdk
from conftest import close_all, connect, run

C = chat_sdk.Code
E = chat_sdk.ChatError


def test_mute_chat(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")
        bob, b_ev = await connect(server, "bob", "phone")
        group = await alice.create_group("quiet", ["bob"])
        assert not group.muted and group.muted_until == 0

        # Until unmuted (the default), then until a time: each replaces the last.
        await alice.mute_chat(group.chat_id)
        chat = await alice.get_chat(group.chat_id)
        assert chat.muted and chat.muted_until == 0
        until = int(time.time() * 1000) + 3_600_000
        await alice.mute_chat(group.chat_id, until)
        listed = [c for c in (await alice.list_chats(10, "")).chats if c.chat_id == group.chat_id]
        assert [(c.muted, c.muted_until) for c in listed] == [(True, until)]
        # The mute is alice's own.
        theirs = await bob.get_chat(group.chat_id)
        assert not theirs.muted and theirs.muted_until == 0

        with pytest.raises(E.Server) as e:
            await alice.mute_chat(group.chat_id, int(time.time() * 1000) - 1000)
        assert e.value.code == C.INVALID_ARGUMENT
        assert "until" in e.value.detail
        with pytest.raises(E.InvalidArgument):
            await alice.mute_chat(group.chat_id, 0)

        carol, c_ev = await connect(server, "carol", "phone")
        with pytest.raises(E.Server) as e:
            await carol.mute_chat(group.chat_id)
        assert e.value.code == C.PERMISSION_DENIED

        for _ in range(2):
            await alice.unmute_chat(group.chat_id)
        chat = await alice.get_chat(group.chat_id)
        assert not chat.muted and chat.muted_until == 0
        await close_all((alice, a_ev), (bob, b_ev), (carol, c_ev))

    run(body())
