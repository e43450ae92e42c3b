#!/usr/bin/env python3
"""A line chat with one peer through the SDK's Python bindings (module `chat_sdk`).

    scripts/bindings
    PYTHONPATH=target/bindings/python python3 examples/python/chat.py \
        --token "$(target/release/chatd token --user bob --device py)" --peer alice

Prints the peer's messages, typing and read ticks as they arrive; every line typed is sent
(queued on disk in --data-dir first, so nothing typed is lost while offline). Ctrl-D quits.
"""

import argparse
import asyncio
import sys

import chat_sdk


def show(ev, me, read_seen):
    if isinstance(ev, chat_sdk.Event.MESSAGE):
        m = ev.message
        print(f"[{m.seq}] {m.sender_user_id}: {m.content.text}", flush=True)
    elif isinstance(ev, chat_sdk.Event.SEND_RESULT):
        r = ev.result
        if isinstance(r.outcome, chat_sdk.SendOutcome.SENT):
            print(f"  ✓ sent as #{r.outcome.message.seq}", flush=True)
        else:
            print(f"  ✗ {r.outcome.code}: {r.outcome.reason}", flush=True)
    elif isinstance(ev, chat_sdk.Event.TYPING):
        t = ev.typing
        if t.user_id != me and t.state == chat_sdk.TypingState.STARTED:
            print(f"  … {t.user_id} is typing", flush=True)
    elif isinstance(ev, chat_sdk.Event.RECEIPT):
        r = ev.receipt
        # One line per position, however many of the reader's devices report it.
        if r.user_id != me and r.kind == chat_sdk.ReceiptKind.READ and (r.user_id, r.seq) not in read_seen:
            read_seen.add((r.user_id, r.seq))
            print(f"  ✓✓ {r.user_id} read up to #{r.seq}", flush=True)
    elif isinstance(ev, chat_sdk.Event.CONNECTION):
        print(f"  ({ev.status.state.name.lower()})", flush=True)


async def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", default="http://127.0.0.1:50051")
    p.add_argument("--token", required=True, help="a JWT from `chatd token`")
    p.add_argument("--device", default="py")
    p.add_argument("--peer", required=True, help="the user to chat with")
    p.add_argument("--data-dir", default=None, help="keeps the send queue across restarts")
    a = p.parse_args()

    me = chat_sdk.token_subject(a.token)
    data_dir = a.data_dir or f"./chat-py-{me}-{a.device}"
    client = await chat_sdk.connect(chat_sdk.ClientConfig(
        endpoint=a.endpoint, token=a.token, device_id=a.device, data_dir=data_dir))
    events = client.events()
    chat = await client.open_direct_chat(a.peer)
    print(f"chatting with {a.peer} as {me} (chat {chat.chat_id}); type and press Enter", flush=True)
    for m in reversed((await client.get_history(chat.chat_id, 20, "")).messages):
        print(f"[{m.seq}] {m.sender_user_id}: {m.content.text}", flush=True)

    async def read_events():
        read_seen = set()
        while (ev := await events.next()) is not None:
            show(ev, me, read_seen)
            if isinstance(ev, chat_sdk.Event.MESSAGE) and ev.message.chat_id == chat.chat_id:
                await client.mark_read(chat.chat_id, ev.message.seq)

    reader = asyncio.create_task(read_events())
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip():
                await client.send(chat.chat_id, chat_sdk.Content(text=line.rstrip("\n")))
    finally:
        await client.close()
        reader.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except chat_sdk.ChatError as e:
        sys.exit(f"chat.py: {e}")
    except KeyboardInterrupt:
        pass
