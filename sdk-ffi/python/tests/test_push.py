"""Push tokens through the bindings: registered for the device (app id optional), bad tokens
refused as typed errors naming the field, unregistering idempotent."""

import pytest

import chat_sdk
from conftest import close_all, connect, run

C = chat_sdk.Code
E = chat_sdk.ChatError
P = chat_sdk.PushProvider


def test_push_tokens(server):
    async def body():
        alice, a_ev = await connect(server, "alice", "phone")

        # The app id is optional: the server's default app.
        await alice.register_push_token(P.FCM, "dGVzdA:APA91bH-x_y.z")
        await alice.register_push_token(P.APNS, "0a" * 32, "com.example.chat")

        with pytest.raises(E.Server) as e:
            await alice.register_push_token(P.APNS, "not hex")
        assert e.value.code == C.INVALID_ARGUMENT
        assert "token" in e.value.detail

        with pytest.raises(E.Server) as e:
            await alice.register_push_token(P.WEBHOOK, "key", "bad app id")
        assert e.value.code == C.INVALID_ARGUMENT
        assert "app_id" in e.value.detail

        for _ in range(2):
            await alice.unregister_push_token(P.FCM, "dGVzdA:APA91bH-x_y.z")
        await close_all((alice, a_ev))

    run(body())
