//! `direct`: P = connections / 2 pairs of users, each pair in one direct chat; both sides send
//! to each other at a fixed total rate (open loop) or as fast as acks allow (closed loop).

use super::{finish, report_mode, steady_traffic, traffic_report, Ctx};
use crate::client::open_direct;
use crate::stats::Report;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use std::collections::HashMap;

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
            let client = ctx.channel(&channels, (2 * p) / spc);
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

    let chat_of: Vec<Option<String>> = (0..n).map(|i| chats[i / 2].clone()).collect();
    let w = steady_traffic(ctx, rss_before, &specs, sessions, chat_of).await;

    let mut r = Report::new("direct", crate::parameters(args));
    r.set("pairs", json!(pairs));
    r.set("sessions_open", json!(open));
    r.row("pairs / sessions open", format!("{pairs} / {open}"));
    report_mode(&mut r, args);
    traffic_report(ctx, &mut r, &w);
    finish(ctx, &mut r);
    Ok(r)
}
