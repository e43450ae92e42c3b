//! `idle`: N sessions (own HTTP/2 connection each unless --sessions-per-connection) that do
//! Hello/Welcome/SyncComplete and then only ping at the heartbeat interval. Reports server RSS
//! per session, (RSS(N) − RSS(0)) / N with RSS(0) read before opening, and kernel TCP socket
//! memory (/proc/net/sockstat, pages × page size) separately.

use super::{close_fleet, finish, scrape, Ctx};
use crate::probe::{self, round2};
use crate::stats::{self, get, per_sec, Report};
use serde_json::json;
use std::time::{Duration, Instant};

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    let args = &ctx.args;
    let n = args.connections.unwrap_or(100);
    if n == 0 {
        return Err("idle needs --connections >= 1".into());
    }
    let spc = args.sessions_per_connection.max(1);
    let n_conns = n.div_ceil(spc);
    if let Some(limit) = ctx.probe.pid.and_then(crate::procfs::nofile_limit) {
        if (limit as usize) < n_conns + 64 {
            eprintln!("chat-loadgen: the server's open-file limit ({limit}) is below {n_conns} connections");
        }
    }

    let m0 = scrape(ctx).await;
    let mark0 = ctx.probe.mark();
    let t_open = Instant::now();
    let channels = ctx.channels(n_conns).await?;
    let conns_open = channels.iter().flatten().count();
    let specs = (0..n)
        .map(|i| ctx.spec(i, &ctx.user(&format!("i{i}")), vec![], false))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg = ctx.session_cfg(Default::default(), None);
    let sessions = ctx.open_fleet(&channels, &specs, &cfg).await;
    let open_secs = t_open.elapsed().as_secs_f64();
    let open = sessions.iter().flatten().count();
    if open == 0 {
        return Err(ctx.no_sessions());
    }
    // Let the server settle (allocator, session tasks) before reading RSS(N).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mark_open = ctx.probe.mark();
    let m_open = scrape(ctx).await;

    // Hold: sessions only ping (their own timers); bounded by --duration.
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    let mark_end = ctx.probe.mark();
    let alive = sessions
        .iter()
        .flatten()
        .filter(|s| !s.is_finished())
        .count();
    let m_end = scrape(ctx).await;
    let gauge =
        |m: &Option<crate::probe::Metrics>| m.as_ref().and_then(|m| m.get("chatd_sessions"));
    let sessions_gauge = (gauge(&m0), gauge(&m_open), gauge(&m_end));
    if alive < open {
        ctx.stats
            .error_n("sessions_lost_during_hold", (open - alive) as u64);
    }
    close_fleet(sessions).await;

    let per = |a: Option<u64>, b: Option<u64>| -> Option<f64> {
        Some(round2((b? as f64 - a? as f64) / open as f64))
    };
    let rss_per_session = per(mark0.rss, mark_end.rss);
    let rss_per_session_open = per(mark0.rss, mark_open.rss);
    let sock = |m: &crate::probe::Mark| m.sockstat.map(|s| s.mem_bytes());
    let inuse = |m: &crate::probe::Mark| m.sockstat.map(|s| s.tcp_inuse);
    let sock_per_conn = match (sock(&mark0), sock(&mark_end)) {
        (Some(a), Some(b)) if conns_open > 0 => {
            Some(round2((b as f64 - a as f64) / conns_open as f64))
        }
        _ => None,
    };
    let connect = ctx.stats.sync.summary();
    let ping = ctx.stats.ping.summary();
    let server = probe::server_json(
        &ctx.probe, &mark0, &mark_end, &mark_open, &mark_end, &m0, &m_end,
    );

    let mut r = Report::new("idle", crate::parameters(args));
    r.set("sessions_requested", json!(n));
    r.set("sessions_open", json!(open));
    r.set("sessions_alive_at_end", json!(alive));
    r.set("connections_open", json!(conns_open));
    r.set("sessions_per_connection", json!(spc));
    r.set("source_addrs", json!(ctx.source_addrs));
    r.set("open_time_s", json!(round2(open_secs)));
    r.set("opens_per_sec", json!(per_sec(open as u64, open_secs)));
    r.set("duration_s", json!(args.duration));
    r.set("sent", json!(0));
    r.set("acked", json!(0));
    r.set("send_errors", ctx.stats.send_errors_json());
    r.set("delivered", json!(0));
    r.set("acked_per_sec", json!(0.0));
    r.set("deliveries_per_sec", json!(0.0));
    // For idle, latency_us is the session open latency (Hello → SyncComplete).
    r.set("latency_us", connect.clone());
    r.set("connect_latency_us", connect.clone());
    r.set("ping_rtt_us", ping.clone());
    for (k, v) in server.as_object().cloned().unwrap_or_default() {
        r.set(&k, v);
    }
    r.set("server_rss_after_open_bytes", json!(mark_open.rss));
    r.set("rss_per_session_bytes", json!(rss_per_session));
    r.set(
        "rss_per_session_after_open_bytes",
        json!(rss_per_session_open),
    );
    r.set(
        "socket_mem_bytes",
        json!({"before": sock(&mark0), "after": sock(&mark_end)}),
    );
    r.set("socket_mem_per_connection_bytes", json!(sock_per_conn));
    r.set(
        "tcp_sockets_inuse",
        json!({"before": inuse(&mark0), "after": inuse(&mark_end)}),
    );
    r.set("server_sessions_gauge", json!({"before": probe::num(sessions_gauge.0), "after_open": probe::num(sessions_gauge.1), "end": probe::num(sessions_gauge.2)}));
    r.set(
        "server_nofile_limit",
        json!(ctx.probe.pid.and_then(crate::procfs::nofile_limit)),
    );
    r.set("client", ctx.stats.client_json());

    r.row(
        "sessions open / requested",
        format!(
            "{open} / {n} on {conns_open} connections ({spc}/conn, {} source addrs)",
            ctx.source_addrs
        ),
    );
    r.row(
        "open time",
        format!(
            "{open_secs:.2} s ({} sessions/s)",
            per_sec(open as u64, open_secs)
        ),
    );
    r.latency_row("Hello→SyncComplete µs", &connect);
    r.row(
        "held",
        format!(
            "{:.1} s, {alive} alive at end, pings {} pongs {}",
            args.duration,
            get(&ctx.stats.c.pings_sent),
            get(&ctx.stats.c.pongs)
        ),
    );
    r.row(
        "server RSS before/open/end",
        format!(
            "{} / {} / {}",
            stats::bytes(mark0.rss),
            stats::bytes(mark_open.rss),
            stats::bytes(mark_end.rss)
        ),
    );
    r.row(
        "server RSS per session",
        rss_per_session.map_or("n/a".into(), |b| format!("{b:.0} B")),
    );
    r.row(
        "socket mem before/after",
        format!(
            "{} / {}",
            stats::bytes(sock(&mark0)),
            stats::bytes(sock(&mark_end))
        ),
    );
    r.row(
        "socket mem per connection",
        sock_per_conn.map_or("n/a".into(), |b| format!("{b:.0} B")),
    );
    r.row(
        "server sessions gauge",
        format!(
            "{} → {} → {}",
            probe::num(sessions_gauge.0),
            probe::num(sessions_gauge.1),
            probe::num(sessions_gauge.2)
        ),
    );
    r.row(
        "server CPU while idle",
        probe::cpu_percent(&mark_open, &mark_end).map_or("n/a".into(), |p| format!("{p:.1} %")),
    );
    finish(ctx, &mut r);
    Ok(r)
}
