//! SetChatMuted over gRPC: the caller's own mute of a chat's pushes, shown on their GetChat and
//! ListChats as `muted` / `muted_until` (as of the call: an expired mute reads as none) and on
//! nobody else's; messages and unread counts unchanged; bad times refused naming `until`, bad
//! chat ids naming `chat_id`; non-members and unknown chats refused as GetChat refuses them; a
//! member who leaves loses the mute. (Which members a chat has muted at a time is the store's
//! contract, tested by the store conformance suite on both stores.)

use chat_tests::pb::{Chat, SetChatMutedRequest, SetChatMutedResponse};
use chat_tests::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Code, Status};

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("ms fit i64")
}

async fn set_muted(
    c: &mut Client,
    chat_id: &str,
    muted: bool,
    until: i64,
) -> Result<SetChatMutedResponse, Status> {
    c.set_chat_muted(SetChatMutedRequest {
        chat_id: chat_id.to_string(),
        muted,
        until,
    })
    .await
    .map(|r| r.into_inner())
}

/// (muted, muted_until) of a chat as GetChat shows it to `c`.
async fn mute_of(c: &mut Client, chat_id: &str) -> (bool, i64) {
    let chat = get_chat(c, chat_id).await.expect("GetChat");
    (chat.muted, chat.muted_until)
}

/// (muted, muted_until) of a chat in `c`'s ListChats.
async fn listed_mute_of(c: &mut Client, chat_id: &str) -> (bool, i64) {
    let chats: Vec<Chat> = list_all_chats(c, 50).await;
    let chat = chats
        .iter()
        .find(|x| x.chat_id == chat_id)
        .unwrap_or_else(|| panic!("{chat_id} not listed"));
    (chat.muted, chat.muted_until)
}

fn answer(r: &SetChatMutedResponse) -> (bool, i64) {
    (r.muted, r.until)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_is_the_callers_own_and_shows_until_unmuted() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let g = create_group(&mut alice, "Team", &["bob"]).await;
    assert_eq!(
        (g.muted, g.muted_until),
        (false, 0),
        "a new chat is not muted"
    );
    assert_eq!(mute_of(&mut alice, &g.chat_id).await, (false, 0));

    // Until unmuted: muted with no time.
    let r = set_muted(&mut alice, &g.chat_id, true, 0)
        .await
        .expect("mute until unmuted");
    assert_eq!(answer(&r), (true, 0));
    assert_eq!(mute_of(&mut alice, &g.chat_id).await, (true, 0));
    assert_eq!(listed_mute_of(&mut alice, &g.chat_id).await, (true, 0));
    // Only alice's: bob sees the chat unmuted.
    assert_eq!(mute_of(&mut bob, &g.chat_id).await, (false, 0));
    assert_eq!(listed_mute_of(&mut bob, &g.chat_id).await, (false, 0));

    // Messages and unread counts go on as before.
    send_text(&mut bob, &g.chat_id, "m1", "still here").await;
    let seen = get_chat(&mut alice, &g.chat_id).await.expect("GetChat");
    assert_eq!((seen.last_seq, seen.unread_count), (1, 1));
    assert!(seen.muted);

    // Until a time: replaces the earlier mute.
    let until = now_ms() + 3_600_000;
    let r = set_muted(&mut alice, &g.chat_id, true, until)
        .await
        .expect("mute for an hour");
    assert_eq!(answer(&r), (true, until));
    assert_eq!(mute_of(&mut alice, &g.chat_id).await, (true, until));
    assert_eq!(listed_mute_of(&mut alice, &g.chat_id).await, (true, until));

    // Unmuted, and unmuting again is fine.
    for round in ["unmute", "unmute again"] {
        let r = set_muted(&mut alice, &g.chat_id, false, 0)
            .await
            .unwrap_or_else(|s| panic!("{round}: {s:?}"));
        assert_eq!(answer(&r), (false, 0), "{round}");
    }
    assert_eq!(mute_of(&mut alice, &g.chat_id).await, (false, 0));
    assert_eq!(listed_mute_of(&mut alice, &g.chat_id).await, (false, 0));

    // The other calls that answer with the caller's chat show the mute too.
    let d = open_direct(&mut alice, "bob").await;
    set_muted(&mut alice, &d.chat_id, true, 0)
        .await
        .expect("mute a direct chat");
    let again = open_direct(&mut alice, "bob").await;
    assert_eq!((again.muted, again.muted_until), (true, 0));
    let theirs = open_direct(&mut bob, "alice").await;
    assert_eq!((theirs.muted, theirs.muted_until), (false, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_ends_at_its_time() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let g = create_group(&mut alice, "Team", &["bob"]).await;
    let until = now_ms() + 2_000;
    let r = set_muted(&mut alice, &g.chat_id, true, until)
        .await
        .expect("mute for two seconds");
    assert_eq!(answer(&r), (true, until));
    let shown = mute_of(&mut alice, &g.chat_id).await;
    // On a machine slow enough to pass `until` already, the next check covers it.
    if now_ms() < until {
        assert_eq!(shown, (true, until));
    }
    let wait = until - now_ms() + 300;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    assert_eq!(mute_of(&mut alice, &g.chat_id).await, (false, 0));
    assert_eq!(listed_mute_of(&mut alice, &g.chat_id).await, (false, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_naming_the_field() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let g = create_group(&mut alice, "Team", &["bob"]).await;
    let now = now_ms();
    let cases: [(&str, bool, i64, &str); 8] = [
        ("", true, 0, "chat_id"),
        ("not-a-chat", true, 0, "chat_id"),
        (&g.chat_id, true, now - 60_000, "until"),
        (&g.chat_id, true, 1, "until"),
        (&g.chat_id, true, -1, "until"),
        (&g.chat_id, true, i64::MIN, "until"),
        (&g.chat_id, false, 5, "until"),
        (&g.chat_id, false, now + 60_000, "until"),
    ];
    for (chat_id, muted, until, field) in cases {
        let ctx = format!("SetChatMuted({chat_id:?}, muted={muted}, until={until})");
        let status = assert_code(
            set_muted(&mut alice, chat_id, muted, until).await,
            Code::InvalidArgument,
            &ctx,
        );
        assert_mentions(status.message(), field, &ctx);
    }
    assert_eq!(
        mute_of(&mut alice, &g.chat_id).await,
        (false, 0),
        "refusals changed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsiders_are_refused_as_get_chat_refuses_them_and_leaving_ends_the_mute() {
    let server = TestServer::start().await;
    let mut alice = server.client("alice", "phone").await;
    let mut bob = server.client("bob", "phone").await;
    let mut dave = server.client("dave", "phone").await;
    let g = create_group(&mut alice, "Team", &["bob"]).await;

    for (chat_id, ctx) in [
        (g.chat_id.clone(), "not a member"),
        (unknown_chat_id(), "unknown chat"),
    ] {
        let expected = get_chat(&mut dave, &chat_id)
            .await
            .expect_err("GetChat refuses an outsider")
            .code();
        assert!(
            matches!(expected, Code::PermissionDenied | Code::NotFound),
            "{ctx}: GetChat answered {expected:?}"
        );
        for (muted, until) in [(true, 0), (false, 0)] {
            assert_code(
                set_muted(&mut dave, &chat_id, muted, until).await,
                expected,
                &format!("{ctx}: SetChatMuted(muted={muted})"),
            );
        }
    }

    // Bob mutes, is removed and added back: the mute went with his membership.
    set_muted(&mut bob, &g.chat_id, true, 0)
        .await
        .expect("bob mutes");
    remove_member(&mut alice, &g.chat_id, "bob")
        .await
        .expect("remove bob");
    assert_code(
        set_muted(&mut bob, &g.chat_id, false, 0).await,
        Code::PermissionDenied,
        "SetChatMuted after removal",
    );
    add_members(&mut alice, &g.chat_id, &["bob"])
        .await
        .expect("add bob back");
    assert_eq!(mute_of(&mut bob, &g.chat_id).await, (false, 0));

    // Leaving on one's own ends it too.
    set_muted(&mut bob, &g.chat_id, true, 0)
        .await
        .expect("bob mutes again");
    remove_member(&mut bob, &g.chat_id, "bob")
        .await
        .expect("bob leaves");
    add_members(&mut alice, &g.chat_id, &["bob"])
        .await
        .expect("add bob back again");
    assert_eq!(mute_of(&mut bob, &g.chat_id).await, (false, 0));
}
