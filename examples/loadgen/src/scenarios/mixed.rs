//! `mixed`: a day-peak mix at a fixed rate for a fixed time. Every user has one device and
//! two direct chats (a ring of pairs); users are also in groups of --group-size. Of the sends,
//! --group-fraction go to the sender's group, the rest to one of its direct chats; some are
//! preceded by Typing STARTED. Devices ack as they receive, mark read every
//! --read-interval-ms, watch their contacts' presence on connect, and --churn-pct of the
//! sessions per second disconnect, stay away --offline-ms and resume with Hello carrying
//! their own positions (resume time and replay counted).

use super::{close_fleet, finish, measured, traffic_report, Ctx};
use crate::client::{create_group, open_direct, DeviceState, Session, SessionCfg, SessionSpec};
use crate::stats::{get, Hist, Report};
use crate::traffic::{mix, unit, Load, Plan, Slot};
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

/// One device and its current session (none while churned away).
struct Device {
    spec: Arc<SessionSpec>,
    slot: Arc<Slot>,
    session: Mutex<Option<Session>>,
    churning: AtomicBool,
}

#[derive(Default)]
struct Churn {
    started: AtomicU64,
    reconnects: AtomicU64,
    failures: AtomicU64,
    replayed: AtomicU64,
    resume: Hist,
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let args = &ctx.args;
    let n = args.connections.unwrap_or(100);
    if n < 2 {
        return Err("mixed needs --connections >= 2".into());
    }
    let rate = if args.rate > 0.0 { args.rate } else { n as f64 };
    let gsize = args.group_size.min(n);
    let n_groups = if gsize >= 3 { n / gsize } else { 0 };
    let rss_before = ctx.probe.mark();
    let spc = args.sessions_per_connection.max(1);
    let n_conns = n.div_ceil(spc);
    let channels = ctx.channels(n_conns).await?;

    let users: Vec<String> = (0..n).map(|i| ctx.user(&format!("m{i}"))).collect();
    // Direct chats: a ring (i, i+1); with 2 users just one chat.
    let n_direct = if n == 2 { 1 } else { n };
    let group_of = |i: usize| (i / gsize < n_groups).then_some(i / gsize);
    let tokens: Vec<String> = users
        .iter()
        .map(|u| ctx.tokens.mint(u, "d1"))
        .collect::<Result<_, _>>()?;
    let direct: Vec<Option<String>> = stream::iter(0..n_direct)
        .map(|i| {
            let client = ctx.channel(&channels, i / spc);
            let (token, peer) = (tokens[i].clone(), users[(i + 1) % n].clone());
            async move {
                match client {
                    Some(c) => open_direct(c, &token, &peer).await,
                    None => Err("no connection".into()),
                }
            }
        })
        .buffered(64)
        .map(|r| {
            r.map_err(|e| {
                eprintln!("chat-loadgen: {e}");
                ctx.stats.error("open_direct_chat_failed");
            })
            .ok()
        })
        .collect()
        .await;
    let groups: Vec<Option<String>> = stream::iter(0..n_groups)
        .map(|k| {
            let first = k * gsize;
            let client = ctx.channel(&channels, first / spc);
            let token = tokens[first].clone();
            let others = users[first + 1..first + gsize].to_vec();
            async move {
                match client {
                    Some(c) => create_group(c, &token, &format!("mixed {k}"), others).await,
                    None => Err("no connection".into()),
                }
            }
        })
        .buffered(16)
        .map(|r| {
            r.map_err(|e| {
                eprintln!("chat-loadgen: {e}");
                ctx.stats.error("create_group_failed");
            })
            .ok()
        })
        .collect()
        .await;
    if direct.iter().all(Option::is_none) {
        return Err("no direct chat could be opened".into());
    }
    let mut fanout: HashMap<String, u64> =
        direct.iter().flatten().map(|c| (c.clone(), 1)).collect();
    fanout.extend(
        groups
            .iter()
            .flatten()
            .map(|g| (g.clone(), (gsize - 1) as u64)),
    );

    // Each user's chats: its direct chats (i's own and its predecessor's), its group.
    let my_direct: Arc<Vec<Vec<String>>> = Arc::new(
        (0..n)
            .map(|i| {
                let mut v = Vec::new();
                if let Some(Some(c)) = direct.get(i) {
                    v.push(c.clone());
                }
                let prev = (i + n - 1) % n;
                if prev != i && prev < n_direct {
                    if let Some(c) = &direct[prev] {
                        if !v.contains(c) {
                            v.push(c.clone());
                        }
                    }
                }
                v
            })
            .collect(),
    );
    let my_group: Arc<Vec<Option<String>>> = Arc::new(
        (0..n)
            .map(|i| group_of(i).and_then(|g| groups[g].clone()))
            .collect(),
    );

    let specs: Vec<Arc<SessionSpec>> = (0..n)
        .map(|i| {
            let mut watch = vec![users[(i + 1) % n].clone(), users[(i + n - 1) % n].clone()];
            if let Some(g) = group_of(i) {
                watch.extend(
                    (g * gsize..(g + 1) * gsize)
                        .filter(|&j| j != i)
                        .take(8)
                        .map(|j| users[j].clone()),
                );
            }
            watch.sort();
            watch.dedup();
            watch.retain(|u| *u != users[i]);
            Arc::new(SessionSpec {
                idx: i,
                user: users[i].clone(),
                device: "d1".into(),
                token: tokens[i].clone(),
                watch,
                window: None,
            })
        })
        .collect();
    let cfg = ctx.session_cfg(
        fanout,
        Some(Duration::from_millis(args.read_interval_ms.max(10))),
    );
    let sessions = ctx.open_fleet(&channels, &specs, &cfg).await;
    let open = sessions.iter().flatten().count();
    if open == 0 {
        return Err(ctx.no_sessions());
    }
    let devices: Arc<Vec<Arc<Device>>> = Arc::new(
        sessions
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let slot = Arc::new(Slot::new(None));
                slot.set(s.as_ref().map(|s| s.tx.clone()));
                Arc::new(Device {
                    spec: specs[i].clone(),
                    slot,
                    session: Mutex::new(s),
                    churning: AtomicBool::new(false),
                })
            })
            .collect(),
    );
    let slots: Arc<Vec<Arc<Slot>>> = Arc::new(devices.iter().map(|d| d.slot.clone()).collect());

    let (gfrac, tfrac) = (args.group_fraction, args.typing_fraction);
    let planner = {
        let (my_direct, my_group) = (my_direct.clone(), my_group.clone());
        Arc::new(move |s: usize, i: u64| {
            let to_group = unit(i ^ 0x6772_6f75_7000) < gfrac;
            let chat = match (&my_group[s], to_group || my_direct[s].is_empty()) {
                (Some(g), true) => g.clone(),
                _ if !my_direct[s].is_empty() => {
                    let d = &my_direct[s];
                    d[(mix(i ^ 0xd1) as usize) % d.len()].clone()
                }
                _ => String::new(),
            };
            Plan {
                chat,
                typing: unit(i ^ 0x7479_7069_6e67) < tfrac,
            }
        })
    };
    let churn = Arc::new(Churn::default());
    let text: Arc<str> = "x".repeat(args.message_bytes).into();
    let w = {
        let (devices, churn, cfg, doors) = (
            devices.clone(),
            churn.clone(),
            cfg.clone(),
            ctx.doors(&channels),
        );
        let (pct, offline) = (args.churn_pct, Duration::from_millis(args.offline_ms));
        measured(ctx, rss_before, |start, end| {
            let side = tokio::spawn(churn_loop(
                devices, doors, spc, cfg, churn, pct, offline, start, end,
            ));
            (
                Load {
                    slots,
                    stats: ctx.stats.clone(),
                    rate,
                    start_ns: start,
                    end_ns: end,
                    text,
                    planner,
                },
                Some(side),
            )
        })
        .await
    };
    let mut all = Vec::new();
    for d in devices.iter() {
        d.slot.set(None);
        all.push(d.session.lock().await.take());
    }
    close_fleet(all).await;

    let resume = churn.resume.summary();
    let mut r = Report::new("mixed", crate::parameters(args));
    r.set("rate", json!(rate));
    r.set("sessions_open", json!(open));
    r.set("direct_chats", json!(direct.iter().flatten().count()));
    r.set("groups", json!(groups.iter().flatten().count()));
    r.set("group_size", json!(gsize));
    r.set("reconnects", json!(get(&churn.reconnects)));
    r.set("reconnect_failures", json!(get(&churn.failures)));
    r.set("churn_started", json!(get(&churn.started)));
    r.set("resume_us", resume.clone());
    r.set("resume_replayed", json!(get(&churn.replayed)));
    r.row(
        "sessions open",
        format!(
            "{open} / {n}; {} direct chats, {} groups of {gsize}",
            direct.iter().flatten().count(),
            groups.iter().flatten().count()
        ),
    );
    r.row(
        "rate",
        format!("{rate} msg/s (group {gfrac}, typing {tfrac})"),
    );
    r.row(
        "churn",
        format!(
            "{} started, {} resumed, {} failed; {} replayed",
            get(&churn.started),
            get(&churn.reconnects),
            get(&churn.failures),
            get(&churn.replayed)
        ),
    );
    r.latency_row("resume Hello→Sync µs", &resume);
    traffic_report(ctx, &mut r, &w);
    let c = &ctx.stats.c;
    r.row(
        "typing / reads / receipts / presence",
        format!(
            "{} sent → {} events / {} sent → {} receipts / {} presence events",
            get(&c.typing_sent),
            get(&c.typing_events),
            get(&c.reads_sent),
            get(&c.receipts),
            get(&c.presence_events)
        ),
    );
    finish(ctx, &mut r);
    Ok(r)
}

/// Every 100 ms, sends `pct`% per second of the online devices away and back, until `end`.
#[allow(clippy::too_many_arguments)]
async fn churn_loop(
    devices: Arc<Vec<Arc<Device>>>,
    doors: super::Doors,
    spc: usize,
    cfg: Arc<SessionCfg>,
    churn: Arc<Churn>,
    pct: f64,
    offline: Duration,
    start: u64,
    end: u64,
) {
    let n = devices.len();
    let per_tick = n as f64 * pct / 100.0 / 10.0;
    let mut budget = 0.0;
    let mut cursor = 0u64;
    let mut tasks = Vec::new();
    tokio::time::sleep_until(crate::stats::instant_of(start)).await;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    // Reconnects must be back before the window ends, so the drain sees everyone online.
    let last_start = end.saturating_sub(offline.as_nanos() as u64 + 200_000_000);
    loop {
        tick.tick().await;
        if crate::stats::now_ns() >= last_start {
            break;
        }
        budget += per_tick;
        let mut tries = 0;
        while budget >= 1.0 && tries < n {
            tries += 1;
            let i = (mix(cursor ^ 0xc4c4) % n as u64) as usize;
            cursor += 1;
            let d = devices[i].clone();
            if d.slot.get().is_none() || d.churning.swap(true, Relaxed) {
                continue;
            }
            budget -= 1.0;
            churn.started.fetch_add(1, Relaxed);
            let door = doors.get(i / spc);
            let (cfg, churn) = (cfg.clone(), churn.clone());
            tasks.push(tokio::spawn(async move {
                d.slot.set(None);
                let old = d.session.lock().await.take();
                let state = match old {
                    Some(s) => s.close().await,
                    None => DeviceState::default(),
                };
                tokio::time::sleep(offline).await;
                let r = match door {
                    Some(door) => Session::open(door, d.spec.clone(), state, cfg, true).await,
                    None => Err("no connection".into()),
                };
                match r {
                    Ok(s) => {
                        churn.reconnects.fetch_add(1, Relaxed);
                        churn.replayed.fetch_add(s.sync.replayed_received, Relaxed);
                        churn.resume.record_us(d.spec.idx, s.sync.sync_ns / 1000);
                        d.slot.set(Some(s.tx.clone()));
                        *d.session.lock().await = Some(s);
                    }
                    Err(e) => {
                        churn.failures.fetch_add(1, Relaxed);
                        eprintln!("chat-loadgen: reconnect failed: {e}");
                    }
                }
                d.churning.store(false, Relaxed);
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}
