//! `direct`: P = connections / 2 pairs of users, each pair in one direct chat; both sides send
//! to each other at a fixed total rate (open loop) or as fast as acks allow (closed loop).

use super::{close_fleet, finish, measured, traffic_report, Ctx};
use crate::client::open_direct;
use crate::stats::Report;
use crate::traffic::{Load, Plan, Slot};
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let args = &ctx.args;
    let pairs = args.connections.unwrap_or(20) / 2;
    if pairs == 0 {
        return Err("direct needs --connections of at least 2".into());
    }
    let n = pairs * 2;
    let rss_before = ctx.probe.mark();
    let spc = args.sessions_per_connection.max(1);
    let n_conns = n.div_ceil(spc);
    let channels = ctx.channels(n_conns).await?;

    let users: Vec<String> = (0..n).map(|i| ctx.user(&format!("u{i}"))).collect();
    let specs = (0..n)
        .map(|i| ctx.spec(i, &users[i], vec![], args.rate == 0.0))
        .collect::<Result<Vec<_>, _>>()?;

    // One chat per pair, opened by its first user.
    let chats: Vec<Option<String>> = stream::iter(0..pairs)
        .map(|p| {
            let client = ctx.client(&channels, (2 * p) / spc);
            let (token, peer) = (specs[2 * p].token.clone(), users[2 * p + 1].clone());
            async move {
                match client {
                    Some(c) => open_direct(c, &token, &peer).await,
                    None => Err("no connection".into()),
                }
            }
        })
        .buffered(64)
        .map(|r| match r {
            Ok(id) => Some(id),
            Err(e) => {
                eprintln!("chat-loadgen: {e}");
                ctx.stats.error("open_direct_chat_failed");
                None
            }
        })
        .collect()
        .await;
    if chats.iter().all(Option::is_none) {
        return Err("no direct chat could be opened".into());
    }
    let fanout: HashMap<String, u64> = chats.iter().flatten().map(|c| (c.clone(), 1)).collect();
    let cfg = ctx.session_cfg(fanout, None);
    let sessions = ctx.open_fleet(&channels, &specs, &cfg).await;
    let open = sessions.iter().flatten().count();
    if open == 0 {
        return Err(ctx.no_sessions());
    }

    let slots: Vec<Arc<Slot>> = (0..n)
        .map(|i| {
            let slot = Slot::new(specs[i].window.clone());
            if let (Some(s), Some(_)) = (&sessions[i], &chats[i / 2]) {
                slot.set(Some(s.tx.clone()));
            }
            Arc::new(slot)
        })
        .collect();
    let chat_of: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| chats[i / 2].clone().unwrap_or_default())
            .collect(),
    );
    let text: Arc<str> = "x".repeat(args.message_bytes).into();
    let w = measured(ctx, rss_before, |start, end| {
        (
            Load {
                slots: Arc::new(slots.clone()),
                stats: ctx.stats.clone(),
                rate: args.rate,
                start_ns: start,
                end_ns: end,
                text,
                planner: Arc::new(move |s, _| Plan {
                    chat: chat_of[s].clone(),
                    typing: false,
                }),
            },
            None,
        )
    })
    .await;
    for s in &slots {
        s.set(None);
    }
    close_fleet(sessions).await;

    let mut r = Report::new("direct", crate::parameters(args));
    r.set("pairs", json!(pairs));
    r.set("sessions_open", json!(open));
    r.set(
        "mode",
        json!(if args.rate > 0.0 {
            "open_loop"
        } else {
            "closed_loop"
        }),
    );
    r.row("pairs / sessions open", format!("{pairs} / {open}"));
    r.row(
        "mode",
        if args.rate > 0.0 {
            format!("open loop, {} msg/s", args.rate)
        } else {
            format!("closed loop, window {}", args.window)
        },
    );
    traffic_report(ctx, &mut r, &w);
    finish(ctx, &mut r);
    Ok(r)
}
