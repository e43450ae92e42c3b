//! `resume`: user B's device connects once (registering it) and disconnects; user A sends K
//! messages to their direct chat, pipelined; B reconnects with Hello. Reports Hello → Welcome
//! and Hello → SyncComplete, and the number replayed, which must equal the K acked sends
//! (seqs contiguous, SyncComplete.replayed agreeing); any mismatch is an error.

use super::{finish, num, scrape, Ctx};
use crate::client::{open_direct, send_frame, DeviceState, Session};
use crate::probe::{self, round2};
use crate::stats::{self, get, inc, now_ns, per_sec, Report};
use serde_json::json;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let args = &ctx.args;
    let k = args.missed;
    let s = &ctx.stats;
    let mark0 = ctx.probe.mark();
    let m0 = scrape(ctx).await;
    let channels = ctx.channels(2).await?;
    let doors = ctx.doors(&channels);
    let door = |j| doors.get(j).ok_or("no connection");
    let (ua, ub) = (ctx.user("a"), ctx.user("b"));
    let spec_a = ctx.spec(0, &ua, vec![], true)?;
    let spec_b = ctx.spec(1, &ub, vec![], false)?;
    let setup = ctx.channel(&channels, 0).ok_or("no connection")?;
    let chat = open_direct(setup, &spec_a.token, &ub).await?;
    let cfg = ctx.session_cfg(HashMap::from([(chat.clone(), 1)]), None);

    // B: register the device (its cursor starts at the present), then go away cleanly.
    let b = Session::open(
        door(1)?,
        spec_b.clone(),
        DeviceState::default(),
        cfg.clone(),
        false,
    )
    .await?;
    let b_state = b.close().await;

    // A: K sends, at most max(window, 32) in flight.
    let a = Session::open(
        door(0)?,
        spec_a.clone(),
        DeviceState::default(),
        cfg.clone(),
        false,
    )
    .await?;
    let window = spec_a.window.clone().expect("window");
    window.add_permits(args.window.max(32).saturating_sub(args.window.max(1)));
    let text = "x".repeat(args.message_bytes);
    let send_deadline =
        Instant::now() + Duration::from_secs_f64(args.open_timeout.max(30.0) + k as f64 / 200.0);
    let t_send = Instant::now();
    let mut sent = 0u64;
    for j in 0..k {
        let left = send_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, window.acquire()).await {
            Ok(Ok(p)) => p.forget(),
            _ => {
                s.error("send_window_timeout");
                break;
            }
        }
        let f = send_frame(format!("r{j}"), chat.clone(), now_ns(), &text);
        if a.tx.send(f).await.is_err() {
            s.error("send_on_ended_session");
            break;
        }
        inc(&s.c.sent);
        inc(&s.c.sent_total);
        sent += 1;
    }
    // Wait for every answer (bounded).
    let wait_until = Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    loop {
        let answered =
            get(&s.c.acked_total) + get(&s.c.duplicate_acks) + get(&s.c.send_errors_total);
        if answered >= sent || Instant::now() >= wait_until {
            s.error_n("unanswered_sends", sent.saturating_sub(answered));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let send_secs = t_send.elapsed().as_secs_f64();
    let acked = get(&s.c.acked);

    // B comes back: time Hello → SyncComplete, count the replay.
    let cpu_from = ctx.probe.mark();
    let b = Session::open(door(1)?, spec_b.clone(), b_state, cfg.clone(), false).await?;
    let cpu_to = ctx.probe.mark();
    let sync = b.sync.clone();
    let (first, last, count) = sync.backlog.get(&chat).copied().unwrap_or((0, 0, 0));
    let replay_ok = sync.replayed_received == acked
        && sync.replayed_reported == acked
        && count == acked
        && sync.backlog_gaps == 0
        && (acked == 0 || (first == 1 && last == acked));
    if !replay_ok {
        s.error("resume_replay_mismatch");
        eprintln!(
            "chat-loadgen: resume: acked {acked}, replayed received {} reported {}, backlog seqs {first}..={last} ({count}), gaps {}",
            sync.replayed_received, sync.replayed_reported, sync.backlog_gaps
        );
    }
    b.close().await;
    a.close().await;
    let m1 = scrape(ctx).await;
    let mark1 = ctx.probe.mark();

    let resume_secs = sync.sync_ns as f64 / 1e9;
    let ack_lat = s.ack.summary();
    let server = probe::server_json(&ctx.probe, &mark0, &mark1, &cpu_from, &cpu_to, &m0, &m1);
    let delta = |name: &str| {
        m1.as_ref()
            .zip(m0.as_ref())
            .and_then(|(a, b)| a.delta(b, name))
    };
    let (d_recv, d_deliv) = (
        delta("chatd_messages_received_total"),
        delta("chatd_messages_delivered_total"),
    );
    let events = get(&s.c.message_events);
    let acked_total = get(&s.c.acked_total);
    let cross_ok = d_recv.is_some_and(|d| d as u64 == acked_total)
        && d_deliv.is_some_and(|d| d as u64 == events);

    let mut r = Report::new("resume", crate::parameters(args));
    r.set("missed", json!(k));
    r.set("sent", json!(sent));
    r.set("acked", json!(acked));
    r.set("send_errors", s.send_errors_json());
    r.set("delivered", json!(get(&s.c.delivered)));
    r.set("acked_per_sec", json!(per_sec(acked, send_secs)));
    r.set(
        "deliveries_per_sec",
        json!(per_sec(sync.replayed_received, resume_secs)),
    );
    // For resume, latency_us is the senders' send → SendAck latency; the resume itself is
    // resume_us / welcome_us.
    r.set("latency_us", ack_lat.clone());
    r.set("ack_latency_us", ack_lat.clone());
    r.set("send_phase_s", json!(round2(send_secs)));
    r.set("welcome_us", json!(sync.welcome_ns / 1000));
    r.set("resume_us", json!(sync.sync_ns / 1000));
    r.set("replayed", json!(sync.replayed_received));
    r.set("replayed_reported", json!(sync.replayed_reported));
    r.set("replay_seq_range", json!([first, last]));
    r.set("replay_ok", json!(replay_ok));
    r.set(
        "replay_msgs_per_sec",
        json!(per_sec(sync.replayed_received, resume_secs)),
    );
    for (k, v) in server.as_object().cloned().unwrap_or_default() {
        r.set(&k, v);
    }
    r.set(
        "cross_check",
        json!({
            "messages_received": {"server": num(d_recv), "client_acked_total": acked_total},
            "messages_delivered": {"server": num(d_deliv), "client_message_events": events},
        }),
    );
    r.set("cross_check_ok", json!(cross_ok));
    r.set("client", s.client_json());

    r.row(
        "missed (K) / sent / acked",
        format!("{k} / {sent} / {acked}"),
    );
    r.row(
        "send phase",
        format!("{send_secs:.2} s ({} acked/s)", per_sec(acked, send_secs)),
    );
    r.latency_row("send→ack µs", &ack_lat);
    r.row(
        "Hello→Welcome",
        format!("{:.2} ms", sync.welcome_ns as f64 / 1e6),
    );
    r.row(
        "Hello→SyncComplete",
        format!("{:.2} ms", sync.sync_ns as f64 / 1e6),
    );
    r.row(
        "replayed",
        format!(
            "{} (reported {}, seqs {first}..={last}) {}",
            sync.replayed_received,
            sync.replayed_reported,
            if replay_ok { "OK" } else { "MISMATCH" }
        ),
    );
    r.row(
        "replay rate",
        format!("{} msgs/s", per_sec(sync.replayed_received, resume_secs)),
    );
    r.row(
        "server RSS before/after",
        format!("{} / {}", stats::bytes(mark0.rss), stats::bytes(mark1.rss)),
    );
    r.row(
        "server Δreceived / Δdelivered",
        format!(
            "{} / {} (client: acked_total {acked_total}, events {events}) {}",
            num(d_recv),
            num(d_deliv),
            if cross_ok { "OK" } else { "MISMATCH" }
        ),
    );
    finish(ctx, &mut r);
    Ok(r)
}
