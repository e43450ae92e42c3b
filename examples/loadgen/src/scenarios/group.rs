//! `group`: G groups of S members (created by the first member), every member online with one
//! device; members send round-robin at the rate (or closed loop), each message reaching the
//! S − 1 other members.

use super::{finish, report_mode, steady_traffic, traffic_report, Ctx};
use crate::client::create_group;
use crate::stats::Report;
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use std::collections::HashMap;

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let args = &ctx.args;
    let (g, size) = (args.groups, args.group_size);
    if g == 0 || size < 2 {
        return Err("group needs --groups >= 1 and --group-size >= 2".into());
    }
    let n = g * size;
    let rss_before = ctx.probe.mark();
    let spc = args.sessions_per_connection.max(1);
    let n_conns = n.div_ceil(spc);
    let channels = ctx.channels(n_conns).await?;

    let users: Vec<String> = (0..n)
        .map(|i| ctx.user(&format!("g{}m{}", i / size, i % size)))
        .collect();
    let specs = (0..n)
        .map(|i| ctx.spec(i, &users[i], vec![], args.rate == 0.0))
        .collect::<Result<Vec<_>, _>>()?;

    let groups: Vec<Option<String>> = stream::iter(0..g)
        .map(|k| {
            let first = k * size;
            let client = ctx.channel(&channels, first / spc);
            let token = specs[first].token.clone();
            let others = users[first + 1..first + size].to_vec();
            let title = format!("loadgen group {k}");
            async move {
                match client {
                    Some(c) => create_group(c, &token, &title, others).await,
                    None => Err("no connection".into()),
                }
            }
        })
        .buffered(16)
        .map(|r| match r {
            Ok(id) => Some(id),
            Err(e) => {
                eprintln!("chat-loadgen: {e}");
                ctx.stats.error("create_group_failed");
                None
            }
        })
        .collect()
        .await;
    if groups.iter().all(Option::is_none) {
        return Err("no group could be created".into());
    }
    let fanout: HashMap<String, u64> = groups
        .iter()
        .flatten()
        .map(|c| (c.clone(), (size - 1) as u64))
        .collect();
    let cfg = ctx.session_cfg(fanout, None);
    let sessions = ctx.open_fleet(&channels, &specs, &cfg).await;
    let open = sessions.iter().flatten().count();
    if open == 0 {
        return Err(ctx.no_sessions());
    }

    let chat_of: Vec<Option<String>> = (0..n).map(|i| groups[i / size].clone()).collect();
    let w = steady_traffic(ctx, rss_before, &specs, sessions, chat_of).await;

    let mut r = Report::new("group", crate::parameters(args));
    r.set("groups", json!(g));
    r.set("group_size", json!(size));
    r.set("sessions_open", json!(open));
    r.set("fanout_per_message", json!(size - 1));
    r.row(
        "groups × size / sessions open",
        format!("{g} × {size} / {open}"),
    );
    report_mode(&mut r, args);
    traffic_report(ctx, &mut r, &w);
    finish(ctx, &mut r);
    Ok(r)
}
