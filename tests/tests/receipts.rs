//! Delivery and read receipts: Ack/Read frames and AckDelivered/MarkRead move cursors that never
//! go back; live ReceiptEvents to the other members (up to CHATD_LIVE_RECEIPTS_MAX_MEMBERS) and
//! READ to the reader's other devices; read_seq and unread_count shared by all devices of a
//! user; GetReceipts; bad input.

use chat_tests::pb::{Receipt, ReceiptKind};
use chat_tests::realtime::*;
use chat_tests::session::Frame;
use chat_tests::*;
use std::collections::BTreeSet;
use tonic::Code;

type Key = (String, String, ReceiptKind, u64);

fn key(user: &str, device: &str, kind: ReceiptKind, seq: u64) -> Key {
    (user.to_string(), device.to_string(), kind, seq)
}

#[track_caller]
fn assert_receipt(r: &Receipt, chat_id: &str, want: Key, from_ms: i64, ctx: &str) {
    assert_eq!(r.chat_id, chat_id, "{ctx}: chat_id of {r:?}");
    assert_eq!(receipt_key(r), want, "{ctx}: {r:?}");
    assert!(
        r.at >= from_ms && r.at <= now_ms(),
        "{ctx}: `at` {} should be a time since {from_ms}: {r:?}",
        r.at
    );
}

/// The next `n` receipts of a session, as a set of keys (checking chat and time).
async fn next_receipts(s: &mut Session, n: usize, chat_id: &str, from_ms: i64) -> BTreeSet<Key> {
    let mut out = BTreeSet::new();
    for _ in 0..n {
        let r = next_receipt(s).await;
        assert_eq!(
            r.chat_id, chat_id,
            "{}/{}: receipt for the wrong chat: {r:?}",
            s.user, s.device
        );
        assert!(
            r.at >= from_ms && r.at <= now_ms(),
            "{}/{}: receipt time: {r:?}",
            s.user,
            s.device
        );
        out.insert(receipt_key(&r));
    }
    out
}

#[track_caller]
fn assert_no_receipts(frames: &[Frame], ctx: &str) {
    let r = receipts(frames);
    assert!(r.is_empty(), "{ctx}: expected no ReceiptEvents, got {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_and_read_receipts_reach_the_senders_sessions() {
    let server = TestServer::start().await;
    let chat = open_direct(&mut server.client("alice", "phone").await, "bob").await;
    let id = chat.chat_id.as_str();
    let mut a_phone = server.connect("alice", "phone").await;
    let mut a_laptop = server.connect("alice", "laptop").await;
    let mut b_phone = server.connect("bob", "phone").await;
    let mut b_tablet = server.connect("bob", "tablet").await;

    a_phone.send_and_ack(id, "m1", "one").await;
    a_phone.send_and_ack(id, "m2", "two").await;
    for s in [&mut a_laptop, &mut b_phone, &mut b_tablet] {
        assert_seq_range(&s.expect_messages(2).await, 1, 2, "live messages");
    }

    // bob's phone received both: alice's devices learn it.
    let t0 = now_ms();
    b_phone.ack(id, 2).await;
    for s in [&mut a_phone, &mut a_laptop] {
        let r = next_receipt(s).await;
        assert_receipt(
            &r,
            id,
            key("bob", "phone", ReceiptKind::Delivered, 2),
            t0,
            "alice gets DELIVERED",
        );
    }

    // ... and read the first one: alice's devices and bob's tablet learn it (READ only: the
    // delivered cursor is already past 1).
    let t1 = now_ms();
    send_read(&b_phone, id, 1).await;
    for s in [&mut a_phone, &mut a_laptop] {
        let r = next_receipt(s).await;
        assert_receipt(
            &r,
            id,
            key("bob", "phone", ReceiptKind::Read, 1),
            t1,
            "alice gets READ",
        );
    }
    // The tablet gets READ, and no DELIVERED before it.
    let r = next_receipt(&mut b_tablet).await;
    assert_receipt(
        &r,
        id,
        key("bob", "phone", ReceiptKind::Read, 1),
        t1,
        "bob's other device gets READ",
    );

    // bob's tablet reads everything: its delivered cursor jumps too, so alice gets both kinds;
    // bob's phone gets only the READ.
    let t2 = now_ms();
    send_read(&b_tablet, id, 2).await;
    let want = BTreeSet::from([
        key("bob", "tablet", ReceiptKind::Delivered, 2),
        key("bob", "tablet", ReceiptKind::Read, 2),
    ]);
    for s in [&mut a_phone, &mut a_laptop] {
        assert_eq!(
            next_receipts(s, 2, id, t2).await,
            want,
            "{}/{}: tablet's receipts",
            s.user,
            s.device
        );
    }
    let r = next_receipt(&mut b_phone).await;
    assert_receipt(
        &r,
        id,
        key("bob", "tablet", ReceiptKind::Read, 2),
        t2,
        "bob's phone gets the tablet's READ",
    );

    // Nothing else: no echo to the acting device, nothing extra anywhere.
    for s in [&mut a_phone, &mut a_laptop, &mut b_phone, &mut b_tablet] {
        let ctx = format!("{}/{} afterwards", s.user, s.device);
        assert_no_receipts(&collect_for(s, QUIET_PERIOD).await, &ctx);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_ack_delivered_and_mark_read_send_receipts_too() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.as_str();
    let mut a_phone = server.connect("alice", "phone").await;
    let mut b_phone = server.connect("bob", "phone").await;
    send_many(&mut alice_c, id, "m", 3).await;
    b_phone.expect_messages(3).await;

    let mut bob_laptop = server.client("bob", "laptop").await;
    let t0 = now_ms();
    ack_delivered(&mut bob_laptop, id, 1)
        .await
        .expect("AckDelivered");
    let r = next_receipt(&mut a_phone).await;
    assert_receipt(
        &r,
        id,
        key("bob", "laptop", ReceiptKind::Delivered, 1),
        t0,
        "AckDelivered",
    );

    let t1 = now_ms();
    mark_read(&mut bob_laptop, id, 3).await.expect("MarkRead");
    let want = BTreeSet::from([
        key("bob", "laptop", ReceiptKind::Delivered, 3),
        key("bob", "laptop", ReceiptKind::Read, 3),
    ]);
    assert_eq!(
        next_receipts(&mut a_phone, 2, id, t1).await,
        want,
        "MarkRead past the delivered cursor"
    );
    // bob's connected phone hears only the READ.
    let r = next_receipt(&mut b_phone).await;
    assert_receipt(
        &r,
        id,
        key("bob", "laptop", ReceiptKind::Read, 3),
        t1,
        "bob's phone",
    );
    assert_no_receipts(
        &collect_for(&mut b_phone, QUIET_PERIOD).await,
        "bob's phone afterwards",
    );
    assert_no_receipts(
        &collect_for(&mut a_phone, QUIET_PERIOD).await,
        "alice afterwards",
    );

    let view = get_chat(&mut bob_laptop, id).await.unwrap();
    assert_eq!(
        (view.read_seq, view.unread_count),
        (3, 0),
        "bob read everything: {view:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_chats_get_no_live_receipts_but_the_readers_devices_do() {
    let server = TestServer::start_with(&[("CHATD_LIVE_RECEIPTS_MAX_MEMBERS", "2")]).await;
    let mut alice_c = server.client("alice", "phone").await;
    let group = create_group(&mut alice_c, "three", &["bob", "carol"]).await;
    let direct = open_direct(&mut alice_c, "bob").await;
    let (g, d) = (group.chat_id.as_str(), direct.chat_id.as_str());
    let mut alice = server.connect("alice", "phone").await;
    let mut carol = server.connect("carol", "phone").await;
    let mut b_tablet = server.connect("bob", "tablet").await;
    let mut bob_c = server.client("bob", "phone").await;

    send_text(
        &mut server.client("alice", "web").await,
        g,
        "g1",
        "hello group",
    )
    .await;
    assert_eq!(alice.expect_message().await.seq, 1);
    carol.expect_message().await;
    b_tablet.expect_message().await;

    // bob reads the group (3 members > 2): only his own other device hears about it.
    let t0 = now_ms();
    mark_read(&mut bob_c, g, 1).await.expect("MarkRead group");
    let r = next_receipt(&mut b_tablet).await;
    assert_receipt(
        &r,
        g,
        key("bob", "phone", ReceiptKind::Read, 1),
        t0,
        "bob's tablet, group read",
    );
    // Then bob writes: for alice and carol that message is the next thing, no receipt before it.
    send_text(&mut bob_c, g, "g2", "after reading").await;
    for s in [&mut alice, &mut carol] {
        let f = next_matching(s, "a ReceiptEvent or MessageEvent", |f| {
            matches!(f, Frame::Receipt(_) | Frame::Message(_))
        })
        .await;
        assert!(
            matches!(&f, Frame::Message(m) if m.message.as_ref().unwrap().seq == 2),
            "{}/{}: expected bob's message and no receipt of a 3-member chat, got {f:?}",
            s.user,
            s.device
        );
    }
    // The receipts are still stored.
    let stored: BTreeSet<Key> = get_receipts(&mut alice_c, g, 1)
        .await
        .unwrap()
        .iter()
        .map(receipt_key)
        .collect();
    assert!(
        stored.contains(&key("bob", "phone", ReceiptKind::Read, 1)),
        "GetReceipts still has it: {stored:?}"
    );

    // A 2-member chat on the same server still gets live receipts.
    send_text(&mut alice_c, d, "d1", "hello direct").await;
    let t1 = now_ms();
    mark_read(&mut bob_c, d, 1).await.expect("MarkRead direct");
    let want = BTreeSet::from([
        key("bob", "phone", ReceiptKind::Delivered, 1),
        key("bob", "phone", ReceiptKind::Read, 1),
    ]);
    assert_eq!(
        next_receipts(&mut alice, 2, d, t1).await,
        want,
        "alice, direct chat"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_on_one_device_updates_the_other_devices_unread_count() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.as_str();
    let mut b_phone = server.connect("bob", "phone").await;
    let mut b_laptop = server.connect("bob", "laptop").await;
    let mut phone_c = server.client("bob", "phone").await;
    let mut laptop_c = server.client("bob", "laptop").await;
    send_many(&mut alice_c, id, "m", 3).await;
    b_phone.expect_messages(3).await;
    b_laptop.expect_messages(3).await;

    for (dev, c) in [("phone", &mut phone_c), ("laptop", &mut laptop_c)] {
        let v = get_chat(c, id).await.unwrap();
        assert_eq!(
            (v.last_seq, v.read_seq, v.unread_count),
            (3, 0, 3),
            "{dev}: before reading: {v:?}"
        );
    }

    // Read up to 2 on the phone (stream frame).
    send_read(&b_phone, id, 2).await;
    let r = next_receipt(&mut b_laptop).await;
    assert_eq!(
        receipt_key(&r),
        key("bob", "phone", ReceiptKind::Read, 2),
        "the laptop hears of the read: {r:?}"
    );
    for (dev, c) in [("phone", &mut phone_c), ("laptop", &mut laptop_c)] {
        let v = get_chat(c, id).await.unwrap();
        assert_eq!(
            (v.read_seq, v.unread_count),
            (2, 1),
            "{dev}: GetChat after reading 2 on the phone: {v:?}"
        );
        let listed = list_all_chats(c, 10).await;
        let l = listed
            .iter()
            .find(|x| x.chat_id == id)
            .expect("chat listed");
        assert_eq!(
            (l.read_seq, l.unread_count),
            (2, 1),
            "{dev}: ListChats after reading 2: {l:?}"
        );
    }

    // Read the rest on the laptop (unary).
    mark_read(&mut laptop_c, id, 3).await.expect("MarkRead");
    let r = next_receipt(&mut b_phone).await;
    assert_eq!(
        receipt_key(&r),
        key("bob", "laptop", ReceiptKind::Read, 3),
        "the phone hears of the read: {r:?}"
    );
    for (dev, c) in [("phone", &mut phone_c), ("laptop", &mut laptop_c)] {
        let v = get_chat(c, id).await.unwrap();
        assert_eq!(
            (v.read_seq, v.unread_count),
            (3, 0),
            "{dev}: after reading 3 on the laptop: {v:?}"
        );
    }

    // bob's own messages are never unread for him; alice's unread count counts only bob's.
    send_text(&mut laptop_c, id, "b1", "from bob").await;
    let v = get_chat(&mut phone_c, id).await.unwrap();
    assert_eq!(
        (v.last_seq, v.read_seq, v.unread_count),
        (4, 3, 0),
        "bob's own message: {v:?}"
    );
    let v = get_chat(&mut alice_c, id).await.unwrap();
    assert_eq!(
        (v.read_seq, v.unread_count),
        (0, 1),
        "alice has read nothing; 1 message is from bob: {v:?}"
    );

    // A new message from alice is unread on both of bob's devices.
    send_text(&mut alice_c, id, "m4", "more").await;
    for (dev, c) in [("phone", &mut phone_c), ("laptop", &mut laptop_c)] {
        let v = get_chat(c, id).await.unwrap();
        assert_eq!(
            (v.last_seq, v.read_seq, v.unread_count),
            (5, 3, 1),
            "{dev}: after alice's new message: {v:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_never_move_backwards() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.as_str();
    let mut a_phone = server.connect("alice", "phone").await;
    let mut b_phone = server.connect("bob", "phone").await;
    let mut bob_c = server.client("bob", "phone").await;
    send_many(&mut alice_c, id, "m", 3).await;
    b_phone.expect_messages(3).await;

    let t0 = now_ms();
    mark_read(&mut bob_c, id, 3).await.expect("MarkRead 3");
    let want = BTreeSet::from([
        key("bob", "phone", ReceiptKind::Delivered, 3),
        key("bob", "phone", ReceiptKind::Read, 3),
    ]);
    assert_eq!(next_receipts(&mut a_phone, 2, id, t0).await, want, "read 3");

    // Lower positions, by every route: accepted silently.
    mark_read(&mut bob_c, id, 1)
        .await
        .expect("MarkRead below the cursor is accepted");
    ack_delivered(&mut bob_c, id, 2)
        .await
        .expect("AckDelivered below the cursor is accepted");
    mark_read(&mut bob_c, id, 3)
        .await
        .expect("MarkRead at the cursor is accepted");
    send_read(&b_phone, id, 2).await;
    b_phone.ack(id, 1).await;
    b_phone.ack(id, 0).await;
    let frames = collect_for(&mut b_phone, QUIET_PERIOD).await;
    let errors: Vec<_> = frames
        .iter()
        .filter(|f| matches!(f, Frame::Error(_)))
        .collect();
    assert!(
        errors.is_empty(),
        "lower cursors must be accepted without an error: {errors:?}"
    );

    let v = get_chat(&mut bob_c, id).await.unwrap();
    assert_eq!(
        (v.read_seq, v.unread_count),
        (3, 0),
        "read position unchanged: {v:?}"
    );
    let stored: BTreeSet<Key> = get_receipts(&mut alice_c, id, 1)
        .await
        .unwrap()
        .iter()
        .map(receipt_key)
        .collect();
    let want_stored = BTreeSet::from([
        key("bob", "phone", ReceiptKind::Delivered, 3),
        key("bob", "phone", ReceiptKind::Read, 3),
        key("bob", "", ReceiptKind::Read, 3),
    ]);
    assert_eq!(stored, want_stored, "stored receipts unchanged");

    // The next receipts alice sees are for seq 4: none were produced for the lower positions.
    send_text(&mut alice_c, id, "m4", "four").await;
    let t1 = now_ms();
    mark_read(&mut bob_c, id, 4).await.expect("MarkRead 4");
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(receipt_key(&next_receipt(&mut a_phone).await));
    }
    assert_eq!(
        got.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            key("bob", "phone", ReceiptKind::Delivered, 4),
            key("bob", "phone", ReceiptKind::Read, 4)
        ]),
        "the only receipts after read 3 are those of read 4 (since {t1})"
    );
    assert_no_receipts(
        &collect_for(&mut a_phone, QUIET_PERIOD).await,
        "alice afterwards",
    );
    let v = get_chat(&mut bob_c, id).await.unwrap();
    assert_eq!((v.read_seq, v.unread_count), (4, 0), "{v:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_receipts_lists_devices_and_users_that_reached_a_seq() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let group = create_group(&mut alice_c, "receipts", &["bob", "carol"]).await;
    let g = group.chat_id.as_str();
    send_many(&mut alice_c, g, "m", 3).await;

    let mut bob_phone = server.client("bob", "phone").await;
    let mut bob_tablet = server.client("bob", "tablet").await;
    ack_delivered(&mut bob_phone, g, 3).await.unwrap();
    mark_read(&mut bob_phone, g, 2).await.unwrap();
    ack_delivered(&mut bob_tablet, g, 1).await.unwrap();

    let at_2 = get_receipts(&mut alice_c, g, 2).await.expect("GetReceipts");
    for r in &at_2 {
        assert_eq!(r.chat_id, g, "{r:?}");
    }
    let keys: Vec<Key> = at_2.iter().map(receipt_key).collect();
    let set: BTreeSet<Key> = keys.iter().cloned().collect();
    assert_eq!(keys.len(), set.len(), "no duplicates: {keys:?}");
    assert_eq!(
        set,
        BTreeSet::from([
            key("bob", "phone", ReceiptKind::Delivered, 3),
            key("bob", "phone", ReceiptKind::Read, 2),
            key("bob", "", ReceiptKind::Read, 2),
        ]),
        "receipts at seq 2 (the tablet only has 1; carol has nothing)"
    );

    let at_1: BTreeSet<Key> = get_receipts(&mut alice_c, g, 1)
        .await
        .unwrap()
        .iter()
        .map(receipt_key)
        .collect();
    assert_eq!(
        at_1,
        BTreeSet::from([
            key("bob", "phone", ReceiptKind::Delivered, 3),
            key("bob", "phone", ReceiptKind::Read, 2),
            key("bob", "", ReceiptKind::Read, 2),
            key("bob", "tablet", ReceiptKind::Delivered, 1),
        ]),
        "receipts at seq 1"
    );
    let at_3: BTreeSet<Key> = get_receipts(&mut alice_c, g, 3)
        .await
        .unwrap()
        .iter()
        .map(receipt_key)
        .collect();
    assert_eq!(
        at_3,
        BTreeSet::from([key("bob", "phone", ReceiptKind::Delivered, 3)]),
        "receipts at seq 3"
    );

    // Any member may ask; a non-member may not.
    let mut carol_c = server.client("carol", "phone").await;
    let by_carol: BTreeSet<Key> = get_receipts(&mut carol_c, g, 3)
        .await
        .unwrap()
        .iter()
        .map(receipt_key)
        .collect();
    assert_eq!(by_carol, at_3, "carol sees the same");
    let mut dave_c = server.client("dave", "phone").await;
    assert_code(
        get_receipts(&mut dave_c, g, 1).await,
        Code::PermissionDenied,
        "GetReceipts by a non-member",
    );

    // Only current members count.
    remove_member(&mut bob_phone, g, "bob")
        .await
        .expect("bob leaves");
    let left = get_receipts(&mut alice_c, g, 1).await.unwrap();
    assert!(
        left.iter().all(|r| r.user_id != "bob"),
        "bob left the group: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_times_survive_later_moves_of_the_other_cursor() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.as_str();
    send_many(&mut alice_c, id, "m", 3).await;
    let mut bob_phone = server.client("bob", "phone").await;
    let mut bob_tablet = server.client("bob", "tablet").await;

    let before = now_ms();
    // phone: delivered 3, then read 2 (the read does not move the delivered cursor).
    ack_delivered(&mut bob_phone, id, 3).await.unwrap();
    mark_read(&mut bob_phone, id, 2).await.unwrap();
    // tablet: read 1 (delivered 1 with it), then delivered 2 (the read cursor stays at 1).
    mark_read(&mut bob_tablet, id, 1).await.unwrap();
    ack_delivered(&mut bob_tablet, id, 2).await.unwrap();
    let after = now_ms();

    let got = get_receipts(&mut alice_c, id, 1)
        .await
        .expect("GetReceipts");
    let keys: BTreeSet<Key> = got.iter().map(receipt_key).collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            key("bob", "phone", ReceiptKind::Delivered, 3),
            key("bob", "phone", ReceiptKind::Read, 2),
            key("bob", "tablet", ReceiptKind::Delivered, 2),
            key("bob", "tablet", ReceiptKind::Read, 1),
            key("bob", "", ReceiptKind::Read, 2),
        ]),
        "receipts: {got:?}"
    );
    let bad: Vec<&Receipt> = got
        .iter()
        .filter(|r| r.at < before || r.at > after)
        .collect();
    assert!(
        bad.is_empty(),
        "every receipt's `at` is the time its cursor moved (between {before} and {after}); wrong: {bad:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_and_read_frames_reject_bad_input() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.clone();
    let unknown = unknown_chat_id();
    let mut bob = server.connect("bob", "phone").await;
    let mut dave = server.connect("dave", "phone").await;
    send_text(&mut alice_c, &id, "m1", "one").await;
    bob.expect_message().await;

    for frame_name in ["ack", "read"] {
        let cases = [
            (
                "seq beyond the last seq",
                false,
                id.as_str(),
                2,
                Code::InvalidArgument,
            ),
            (
                "malformed chat id",
                false,
                "not-a-chat-id",
                1,
                Code::InvalidArgument,
            ),
            ("unknown chat", false, unknown.as_str(), 1, Code::NotFound),
            ("non-member", true, id.as_str(), 1, Code::PermissionDenied),
        ];
        for (what, by_dave, chat_id, seq, code) in cases {
            let s = if by_dave { &mut dave } else { &mut bob };
            let ctx = format!("{frame_name} frame, {what}");
            if frame_name == "ack" {
                s.ack(chat_id, seq).await;
            } else {
                send_read(s, chat_id, seq).await;
            }
            let e = next_error_frame(s).await;
            assert_eq!(e.frame, frame_name, "{ctx}: Error.frame ({e:?})");
            assert_eq!(e.code, code as i32, "{ctx}: Error.code ({e:?})");
            assert_eq!(e.chat_id, chat_id, "{ctx}: Error.chat_id ({e:?})");
            if what.starts_with("seq") {
                assert_mentions(&e.message, "seq", &ctx);
            }
            s.ping().await; // the stream stays open
        }
    }
    let v = get_chat(&mut server.client("bob", "phone").await, &id)
        .await
        .unwrap();
    assert_eq!(
        (v.read_seq, v.unread_count),
        (0, 1),
        "refused reads change nothing: {v:?}"
    );
    let stored = get_receipts(&mut alice_c, &id, 1).await.unwrap();
    assert!(stored.is_empty(), "refused acks store nothing: {stored:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_read_ack_delivered_and_get_receipts_reject_bad_input() {
    let server = TestServer::start().await;
    let mut alice_c = server.client("alice", "phone").await;
    let chat = open_direct(&mut alice_c, "bob").await;
    let id = chat.chat_id.clone();
    send_text(&mut alice_c, &id, "m1", "one").await;
    let unknown = unknown_chat_id();
    let mut bob = server.client("bob", "phone").await;
    let mut dave = server.client("dave", "phone").await;

    let mut no_device = client_without_device(&server, "bob").await;
    let s = assert_code(
        mark_read(&mut no_device, &id, 1).await,
        Code::InvalidArgument,
        "MarkRead without x-device-id",
    );
    assert_mentions(s.message(), "x-device-id", "MarkRead without x-device-id");

    let s = assert_code(
        mark_read(&mut bob, &id, 2).await,
        Code::InvalidArgument,
        "MarkRead beyond last seq",
    );
    assert_mentions(s.message(), "seq", "MarkRead beyond last seq");
    let s = assert_code(
        ack_delivered(&mut bob, &id, 2).await,
        Code::InvalidArgument,
        "AckDelivered beyond last seq",
    );
    assert_mentions(s.message(), "seq", "AckDelivered beyond last seq");
    assert_code(
        mark_read(&mut bob, "not-a-chat-id", 1).await,
        Code::InvalidArgument,
        "MarkRead malformed id",
    );
    assert_code(
        mark_read(&mut bob, &unknown, 1).await,
        Code::NotFound,
        "MarkRead unknown chat",
    );
    assert_code(
        mark_read(&mut dave, &id, 1).await,
        Code::PermissionDenied,
        "MarkRead non-member",
    );
    assert_code(
        ack_delivered(&mut dave, &id, 1).await,
        Code::PermissionDenied,
        "AckDelivered non-member",
    );

    assert_code(
        get_receipts(&mut dave, &id, 1).await,
        Code::PermissionDenied,
        "GetReceipts non-member",
    );
    assert_code(
        get_receipts(&mut bob, "not-a-chat-id", 1).await,
        Code::InvalidArgument,
        "GetReceipts malformed id",
    );
    assert_code(
        get_receipts(&mut bob, &unknown, 1).await,
        Code::NotFound,
        "GetReceipts unknown chat",
    );

    let v = get_chat(&mut bob, &id).await.unwrap();
    assert_eq!(
        (v.read_seq, v.unread_count),
        (0, 1),
        "refused calls change nothing: {v:?}"
    );
    mark_read(&mut bob, &id, 1)
        .await
        .expect("a valid MarkRead still works");
    let v = get_chat(&mut bob, &id).await.unwrap();
    assert_eq!((v.read_seq, v.unread_count), (1, 0), "{v:?}");
}
