//! The scenarios and what they share: the run context (server address, tokens, probe,
//! stats), opening and closing fleets of sessions, and the common traffic report.

pub mod direct;
pub mod group;
pub mod idle;
pub mod mixed;
pub mod resume;

use crate::client::{connect_channel, Client, DeviceState, Door, Session, SessionCfg, SessionSpec};
use crate::probe::{self, Mark, Metrics, Probe};
use crate::stats::{self, get, per_sec, Report, Stats};
use crate::token::Tokens;
use crate::traffic::{self, Drained};
use crate::{Args, Transport};
use futures_util::stream::{self, StreamExt};
use serde_json::json;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// Everything a scenario needs.
pub struct Ctx {
    pub args: Args,
    pub addr: SocketAddr,
    /// Every node to spread connections over (`addr` is the first).
    pub addrs: Vec<SocketAddr>,
    pub tokens: Tokens,
    pub probe: Probe,
    /// Prefix of this run's user ids, so runs never share users (or backlogs).
    pub run_id: String,
    /// Loopback source addresses to spread connections over (1 = let the kernel choose).
    pub source_addrs: usize,
    pub stats: Arc<Stats>,
    /// The first session-open failure, for the error message when none could be opened.
    pub first_open_error: std::sync::Mutex<Option<String>>,
}

impl Ctx {
    /// The error of a scenario that could not open a single session.
    pub fn no_sessions(&self) -> String {
        match &*self.first_open_error.lock().unwrap() {
            Some(e) => format!("no session could be opened; first failure: {e}"),
            None => "no session could be opened".into(),
        }
    }

    pub fn user(&self, name: &str) -> String {
        format!("{}-{name}", self.run_id)
    }

    fn source_for(&self, conn: usize) -> Option<IpAddr> {
        source_for(self.source_addrs, conn)
    }

    pub fn open_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.args.open_timeout)
    }

    /// `n` HTTP/2 connections, opened `connect_concurrency` at a time; failed ones are `None`
    /// (counted). Errors only if none could be opened. With `--transport ws` sessions open
    /// sockets of their own, so only one connection per node is opened, for the setup calls.
    pub async fn channels(&self, n: usize) -> Result<Vec<Option<Channel>>, String> {
        let timeout = self.open_timeout();
        let mut out: Vec<Option<Channel>> = vec![None; n];
        let mut first_err = None;
        let opened = match self.args.transport {
            Transport::Grpc => n,
            Transport::Ws => n.min(self.addrs.len()),
        };
        let results: Vec<(usize, Result<Channel, String>)> = stream::iter(0..opened)
            .map(|j| {
                let addr = self.addrs[j % self.addrs.len()];
                let src = self.source_for(j);
                async move { (j, connect_channel(addr, src, timeout).await) }
            })
            .buffer_unordered(self.args.connect_concurrency.max(1))
            .collect()
            .await;
        for (j, r) in results {
            match r {
                Ok(ch) => out[j] = Some(ch),
                Err(e) => {
                    self.stats.error("connection_failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        if n > 0 && out.iter().all(Option::is_none) {
            return Err(format!(
                "could not open any connection to {}: {}",
                self.addr,
                first_err.unwrap_or_default()
            ));
        }
        if let Some(e) = first_err {
            eprintln!("chat-loadgen: some connections failed, first: {e}");
        }
        Ok(out)
    }

    /// Connection `j` (or any open one if that failed).
    pub fn channel(&self, channels: &[Option<Channel>], j: usize) -> Option<Channel> {
        channels
            .get(j)
            .cloned()
            .flatten()
            .or_else(|| channels.iter().flatten().next().cloned())
    }

    /// Where sessions on `channels` open, by connection number.
    pub fn doors(&self, channels: &[Option<Channel>]) -> Doors {
        Doors {
            transport: self.args.transport,
            addrs: self.addrs.clone(),
            source_addrs: self.source_addrs,
            channels: channels.to_vec(),
        }
    }

    pub fn session_cfg(
        &self,
        fanout: HashMap<String, u64>,
        read_interval: Option<Duration>,
    ) -> Arc<SessionCfg> {
        Arc::new(SessionCfg {
            stats: self.stats.clone(),
            ack_every: self.args.ack_every.max(1),
            ack_interval: Duration::from_millis(self.args.ack_interval_ms.max(1)),
            read_interval,
            fanout,
            sync_timeout: self.open_timeout(),
            close_timeout: Duration::from_secs(5),
            queue: 1024,
            ping_interval: self.args.ping_interval_ms.map(Duration::from_millis),
        })
    }

    pub fn spec(
        &self,
        idx: usize,
        user: &str,
        watch: Vec<String>,
        window: bool,
    ) -> Result<Arc<SessionSpec>, String> {
        let device = "d1".to_string();
        Ok(Arc::new(SessionSpec {
            idx,
            token: self.tokens.mint(user, &device)?,
            user: user.to_string(),
            device,
            watch,
            window: window.then(|| Arc::new(tokio::sync::Semaphore::new(self.args.window.max(1)))),
        }))
    }

    /// Opens one session per spec (session i on connection i / sessions-per-connection),
    /// `connect_concurrency` at a time. Failed opens are `None` and counted.
    pub async fn open_fleet(
        &self,
        channels: &[Option<Channel>],
        specs: &[Arc<SessionSpec>],
        cfg: &Arc<SessionCfg>,
    ) -> Vec<Option<Session>> {
        let spc = self.args.sessions_per_connection.max(1);
        let doors = self.doors(channels);
        let mut out: Vec<Option<Session>> = (0..specs.len()).map(|_| None).collect();
        let mut first_err = None;
        let results: Vec<(usize, Result<Session, String>)> =
            stream::iter(specs.iter().cloned().enumerate())
                .map(|(i, spec)| {
                    let door = doors.get(i / spc);
                    let cfg = cfg.clone();
                    async move {
                        let r = match door {
                            Some(d) => {
                                Session::open(d, spec, DeviceState::default(), cfg, false).await
                            }
                            None => Err("no connection".to_string()),
                        };
                        (i, r)
                    }
                })
                .buffer_unordered(self.args.connect_concurrency.max(1))
                .collect()
                .await;
        for (i, r) in results {
            match r {
                Ok(s) => out[i] = Some(s),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            eprintln!("chat-loadgen: some sessions failed to open, first: {e}");
            self.first_open_error.lock().unwrap().get_or_insert(e);
        }
        out
    }
}

/// 127.0.0.1 .. 127.0.0.N for connection `conn` when spreading over N > 1 source addresses
/// (all of 127/8 is local on Linux).
fn source_for(source_addrs: usize, conn: usize) -> Option<IpAddr> {
    if source_addrs <= 1 {
        return None;
    }
    let n = (conn % source_addrs) as u32 + 1;
    Some(IpAddr::V4(Ipv4Addr::from(0x7f00_0000u32 + n)))
}

/// Where each connection's sessions open: a Connect stream on its HTTP/2 connection, or a
/// WebSocket of its own to the node that connection would have gone to.
#[derive(Clone)]
pub struct Doors {
    transport: Transport,
    addrs: Vec<SocketAddr>,
    source_addrs: usize,
    channels: Vec<Option<Channel>>,
}

impl Doors {
    /// The door of connection `j` (gRPC: any open connection if that one failed).
    pub fn get(&self, j: usize) -> Option<Door> {
        match self.transport {
            Transport::Grpc => self
                .channels
                .get(j)
                .cloned()
                .flatten()
                .or_else(|| self.channels.iter().flatten().next().cloned())
                .map(|ch| Door::Grpc(Client::new(ch))),
            Transport::Ws => Some(Door::Ws {
                addr: self.addrs[j % self.addrs.len()],
                source: source_for(self.source_addrs, j),
            }),
        }
    }
}

/// Closes every session (bounded by each session's close timeout), in parallel.
pub async fn close_fleet(sessions: Vec<Option<Session>>) {
    let closing: Vec<_> = sessions
        .into_iter()
        .flatten()
        .map(|s| tokio::spawn(s.close()))
        .collect();
    for c in closing {
        let _ = c.await;
    }
}

/// The readings around a traffic window.
pub struct Window {
    pub rss_before: Mark,
    pub cpu_from: Mark,
    pub cpu_to: Mark,
    pub metrics_before: Option<Metrics>,
    pub metrics_after: Option<Metrics>,
    /// Length of the measured window, seconds.
    pub secs: f64,
    pub drained: Drained,
}

pub async fn scrape(ctx: &Ctx) -> Option<Metrics> {
    match ctx.probe.scrape().await {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("chat-loadgen: /metrics: {e}");
            ctx.stats.error("metrics_scrape_failed");
            None
        }
    }
}

/// Runs `load` with warm-up and drain, taking the server readings around it. `make` gets the
/// schedule's start and end (`now_ns()` time) and may return a side task (presence churn)
/// that runs alongside and is awaited before the drain.
pub async fn measured(
    ctx: &Ctx,
    rss_before: Mark,
    make: impl FnOnce(u64, u64) -> (traffic::Load, Option<tokio::task::JoinHandle<()>>),
) -> Window {
    let args = &ctx.args;
    let metrics_before = scrape(ctx).await;
    let start = stats::now_ns() + 50_000_000;
    let measure_from = start + (args.warmup * 1e9) as u64;
    let end = measure_from + (args.duration * 1e9) as u64;
    ctx.stats
        .measure_from
        .store(measure_from, std::sync::atomic::Ordering::Relaxed);
    let (load, side) = make(start, end);
    // CPU is read at the start of the measured window, from a task so the load runs meanwhile.
    let probe_pid = ctx.probe.pid;
    let cpu_from = tokio::spawn(async move {
        tokio::time::sleep_until(stats::instant_of(measure_from)).await;
        Probe::mark_of(probe_pid)
    });
    traffic::run(load).await;
    let cpu_to = ctx.probe.mark();
    if let Some(side) = side {
        let _ = side.await;
    }
    let cpu_from = cpu_from.await.unwrap_or_else(|_| ctx.probe.mark());
    let drained = traffic::drain(&ctx.stats, Duration::from_secs_f64(args.drain_timeout)).await;
    let metrics_after = scrape(ctx).await;
    Window {
        rss_before,
        cpu_from,
        cpu_to,
        metrics_before,
        metrics_after,
        secs: args.duration,
        drained,
    }
}

pub use crate::probe::num;

/// The `direct` and `group` traffic: session `i` sends to `chat_of[i]` (when it has one and its
/// session opened) on the shared schedule; the fleet is closed afterwards.
pub async fn steady_traffic(
    ctx: &Ctx,
    rss_before: Mark,
    specs: &[Arc<SessionSpec>],
    sessions: Vec<Option<Session>>,
    chat_of: Vec<Option<String>>,
) -> Window {
    let slots: Vec<Arc<traffic::Slot>> = specs
        .iter()
        .zip(&sessions)
        .zip(&chat_of)
        .map(|((spec, session), chat)| {
            let slot = traffic::Slot::new(spec.window.clone());
            if let (Some(s), Some(_)) = (session, chat) {
                slot.set(Some(s.tx.clone()));
            }
            Arc::new(slot)
        })
        .collect();
    let chat_of: Arc<Vec<String>> =
        Arc::new(chat_of.into_iter().map(Option::unwrap_or_default).collect());
    let text: Arc<str> = "x".repeat(ctx.args.message_bytes).into();
    let w = measured(ctx, rss_before, |start, end| {
        let load = traffic::Load {
            slots: Arc::new(slots.clone()),
            stats: ctx.stats.clone(),
            rate: ctx.args.rate,
            start_ns: start,
            end_ns: end,
            text,
            planner: Arc::new(move |s, _| traffic::Plan {
                chat: chat_of[s].clone(),
                typing: false,
            }),
        };
        (load, None)
    })
    .await;
    for s in &slots {
        s.set(None);
    }
    close_fleet(sessions).await;
    w
}

/// Whether the run was open or closed loop, in the JSON and the table.
pub fn report_mode(r: &mut Report, args: &crate::Args) {
    r.set(
        "mode",
        serde_json::json!(if args.rate > 0.0 {
            "open_loop"
        } else {
            "closed_loop"
        }),
    );
    r.row(
        "mode",
        if args.rate > 0.0 {
            format!("open loop, {} msg/s", args.rate)
        } else {
            format!("closed loop, window {}", args.window)
        },
    );
}

/// The fields every traffic scenario reports.
pub fn traffic_report(ctx: &Ctx, r: &mut Report, w: &Window) {
    let s = &ctx.stats;
    let c = &s.c;
    let (sent, acked, delivered) = (get(&c.sent), get(&c.acked), get(&c.delivered));
    let lat = s.deliver.summary();
    let ack_lat = s.ack.summary();
    let server = probe::server_json(
        &ctx.probe,
        &w.rss_before,
        &w.cpu_to,
        &w.cpu_from,
        &w.cpu_to,
        &w.metrics_before,
        &w.metrics_after,
    );
    let d_recv = w
        .metrics_after
        .as_ref()
        .zip(w.metrics_before.as_ref())
        .and_then(|(a, b)| a.delta(b, "chatd_messages_received_total"));
    let d_deliv = w
        .metrics_after
        .as_ref()
        .zip(w.metrics_before.as_ref())
        .and_then(|(a, b)| a.delta(b, "chatd_messages_delivered_total"));
    let (acked_total, events) = (get(&c.acked_total), get(&c.message_events));
    let cross = json!({
        "messages_received": {"server": num(d_recv), "client_acked_total": acked_total,
                              "match": d_recv.map(|d| d as u64 == acked_total)},
        "messages_delivered": {"server": num(d_deliv), "client_message_events": events,
                               "match": d_deliv.map(|d| d as u64 == events)},
    });
    let cross_ok = d_recv.is_some_and(|d| d as u64 == acked_total)
        && d_deliv.is_some_and(|d| d as u64 == events);

    r.set("duration_s", json!(w.secs));
    r.set("sent", json!(sent));
    r.set("acked", json!(acked));
    r.set("send_errors", s.send_errors_json());
    r.set("unanswered_sends", json!(w.drained.unanswered_sends));
    r.set("delivered", json!(delivered));
    r.set("delivered_replayed", json!(get(&c.delivered_replayed)));
    r.set("expected_deliveries", json!(get(&c.expected_deliveries)));
    r.set("missing_deliveries", json!(w.drained.missing_deliveries));
    r.set("acked_per_sec", json!(per_sec(acked, w.secs)));
    r.set("deliveries_per_sec", json!(per_sec(delivered, w.secs)));
    r.set("latency_us", lat.clone());
    r.set("ack_latency_us", ack_lat.clone());
    r.set("drain_ms", json!(w.drained.waited.as_millis() as u64));
    for (k, v) in server.as_object().cloned().unwrap_or_default() {
        r.set(&k, v);
    }
    r.set("cross_check", cross);
    r.set("cross_check_ok", json!(cross_ok));
    r.set("client", s.client_json());

    r.row(
        "window",
        format!("{:.1} s (+{:.1} s warm-up)", w.secs, ctx.args.warmup),
    );
    r.row(
        "sent / acked",
        format!("{sent} / {acked}  ({} acked/s)", per_sec(acked, w.secs)),
    );
    r.row("send errors", s.send_errors_json());
    r.row("unanswered sends", w.drained.unanswered_sends);
    r.row(
        "delivered / expected",
        format!(
            "{delivered} / {}  ({} deliveries/s)",
            get(&c.expected_deliveries),
            per_sec(delivered, w.secs)
        ),
    );
    r.latency_row("send→receive µs", &lat);
    r.latency_row("send→ack µs", &ack_lat);
    r.row(
        "server RSS before/after",
        format!(
            "{} / {}",
            stats::bytes(w.rss_before.rss),
            stats::bytes(w.cpu_to.rss)
        ),
    );
    r.row(
        "server CPU",
        probe::cpu_percent(&w.cpu_from, &w.cpu_to).map_or("n/a".into(), |p| format!("{:.1} %", p)),
    );
    r.row(
        "server Δreceived / Δdelivered",
        format!(
            "{} / {}  (client: acked_total {acked_total}, events {events}) {}",
            num(d_recv),
            num(d_deliv),
            if cross_ok { "OK" } else { "MISMATCH" }
        ),
    );
}

/// Errors block and overall verdict, last in every report.
pub fn finish(ctx: &Ctx, r: &mut Report) {
    let total = ctx.stats.errors_total();
    r.set("errors", ctx.stats.errors_json());
    r.set("errors_total", json!(total));
    r.row("errors", format!("{total} {}", ctx.stats.errors_json()));
    if let Some(note) = &ctx.probe.pid_note {
        r.row("note", note);
    }
}
