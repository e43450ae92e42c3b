//! `chat-loadgen`: load generator for `chatd`.
//!
//! ```text
//! chat-loadgen SCENARIO --addr HOST:PORT (--data-dir DIR | --jwt-secret S) [options]
//! ```
//! Scenarios: idle, direct, group, resume, mixed (see examples/loadgen/README.md). Prints a
//! table, then one JSON object as the last stdout line. Exit 0 when the scenario ran (errors
//! are counted in the JSON, never hidden), 1 when it could not run at all, 2 on bad usage.

mod client;
mod probe;
mod procfs;
mod scenarios;
mod stats;
mod token;
mod traffic;
mod ws;

use clap::{Parser, ValueEnum};
use serde_json::{json, Value};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// N sessions that only ping; server RSS per session and kernel socket memory.
    Idle,
    /// connections/2 pairs in direct chats sending to each other.
    Direct,
    /// G groups of S members sending round-robin.
    Group,
    /// One device misses K messages, then resumes: time Hello → SyncComplete.
    Resume,
    /// Day-peak mix: 1:1 and group sends, typing, reads, presence churn with resumes.
    Mixed,
}

/// The door sessions come through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// The gRPC `Connect` stream (HTTP/2, --sessions-per-connection per connection).
    Grpc,
    /// The WebSocket JSON frames on /ws (docs/websocket.md), one TCP connection per session;
    /// the scenarios' setup calls (OpenDirectChat, CreateGroup) still go over gRPC.
    Ws,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Ws => "ws",
        }
    }
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Idle => "idle",
            Scenario::Direct => "direct",
            Scenario::Group => "group",
            Scenario::Resume => "resume",
            Scenario::Mixed => "mixed",
        }
    }
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "chat-loadgen",
    version,
    about = "Load generator for chatd (loopback only)."
)]
pub struct Args {
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Server address, HOST:PORT (must be a loopback address); several nodes of one cluster
    /// as HOST:PORT,HOST:PORT,… — connections are spread round-robin and /metrics are summed.
    #[arg(long)]
    pub addr: String,
    /// The server's data dir, to read its JWT secret (DIR/jwt_secret).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The server's JWT secret (wins over --data-dir, like on the server).
    #[arg(long, env = "CHATD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// How sessions connect: grpc (Connect) or ws (WebSocket JSON on /ws).
    #[arg(long, value_enum, default_value_t = Transport::Grpc)]
    pub transport: Transport,
    /// Measured traffic time (idle: hold time), seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Total messages per second over all senders; 0 = closed loop (as fast as acks allow,
    /// --window in flight per sender). mixed: default 1 per session per second.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Sessions (devices) to open: idle default 100, direct 20 (pairs = N/2), mixed 100.
    #[arg(long)]
    pub connections: Option<usize>,
    /// group: number of groups.
    #[arg(long, default_value_t = 10)]
    pub groups: usize,
    /// group: members per group; mixed: size of its groups.
    #[arg(long, default_value_t = 20)]
    pub group_size: usize,
    /// resume: messages sent while the device is offline.
    #[arg(long, default_value_t = 1000)]
    pub missed: u64,
    /// Traffic before the measured window, seconds (sent, but not counted).
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Text bytes per message.
    #[arg(long, default_value_t = 64)]
    pub message_bytes: usize,
    /// Closed loop: sends in flight per sender.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// Sessions multiplexed on one HTTP/2 connection.
    #[arg(long, default_value_t = 1)]
    pub sessions_per_connection: usize,
    /// Spread connections over 127.0.0.1..127.0.0.N source addresses (default: one per
    /// 60,000 connections).
    #[arg(long)]
    pub source_addrs: Option<usize>,
    /// The server process for /proc readings (default: the one process named chatd).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Connections / sessions opened concurrently.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Per connection / session open deadline, seconds.
    #[arg(long, default_value_t = 15.0)]
    pub open_timeout: f64,
    /// After the window: how long to wait for the last acks and deliveries, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Receivers ack after this many messages...
    #[arg(long, default_value_t = 100)]
    pub ack_every: u32,
    /// ...or this many ms after the first unacked one.
    #[arg(long, default_value_t = 100)]
    pub ack_interval_ms: u64,
    /// Ping interval (default: Welcome's heartbeat_interval_ms).
    #[arg(long)]
    pub ping_interval_ms: Option<u64>,
    /// mixed: percent of sessions that disconnect and resume per second.
    #[arg(long, default_value_t = 2.0)]
    pub churn_pct: f64,
    /// mixed: how long a churned session stays offline, ms.
    #[arg(long, default_value_t = 1000)]
    pub offline_ms: u64,
    /// mixed: share of sends that go to the sender's group.
    #[arg(long, default_value_t = 0.15)]
    pub group_fraction: f64,
    /// mixed: share of sends preceded by Typing STARTED.
    #[arg(long, default_value_t = 0.2)]
    pub typing_fraction: f64,
    /// mixed: a device marks its new messages read this many ms after they arrive.
    #[arg(long, default_value_t = 1000)]
    pub read_interval_ms: u64,
}

/// The parameters block of the JSON (never the secret).
pub fn parameters(a: &Args) -> Value {
    json!({
        "addr": a.addr, "transport": a.transport.name(), "duration_s": a.duration, "rate": a.rate, "connections": a.connections,
        "groups": a.groups, "group_size": a.group_size, "missed": a.missed, "warmup_s": a.warmup,
        "message_bytes": a.message_bytes, "window": a.window,
        "sessions_per_connection": a.sessions_per_connection, "source_addrs": a.source_addrs,
        "server_pid": a.server_pid, "connect_concurrency": a.connect_concurrency,
        "open_timeout_s": a.open_timeout, "drain_timeout_s": a.drain_timeout,
        "ack_every": a.ack_every, "ack_interval_ms": a.ack_interval_ms,
        "ping_interval_ms": a.ping_interval_ms, "churn_pct": a.churn_pct,
        "offline_ms": a.offline_ms, "group_fraction": a.group_fraction,
        "typing_fraction": a.typing_fraction, "read_interval_ms": a.read_interval_ms,
    })
}

fn validate(a: &Args) -> Result<Vec<SocketAddr>, String> {
    let mut addrs = Vec::new();
    for part in a.addr.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr = part
            .to_socket_addrs()
            .map_err(|e| format!("--addr {part}: {e}"))?
            .next()
            .ok_or_else(|| format!("--addr {part} resolves to nothing"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("--addr {addr}: only loopback targets are allowed"));
        }
        addrs.push(addr);
    }
    let Some(&addr) = addrs.first() else {
        return Err("--addr names no address".into());
    };
    let finite = |name: &str, v: f64, lo: f64, hi: f64| {
        if v.is_finite() && v >= lo && v <= hi {
            Ok(())
        } else {
            Err(format!("{name} must be within {lo}..={hi}"))
        }
    };
    finite("--duration", a.duration, 0.1, 86_400.0)?;
    finite("--warmup", a.warmup, 0.0, 3_600.0)?;
    finite("--rate", a.rate, 0.0, 10_000_000.0)?;
    finite("--drain-timeout", a.drain_timeout, 0.0, 3_600.0)?;
    finite("--open-timeout", a.open_timeout, 0.1, 3_600.0)?;
    finite("--churn-pct", a.churn_pct, 0.0, 100.0)?;
    finite("--group-fraction", a.group_fraction, 0.0, 1.0)?;
    finite("--typing-fraction", a.typing_fraction, 0.0, 1.0)?;
    if a.connections.unwrap_or(0) > 2_000_000 || a.groups * a.group_size > 2_000_000 {
        return Err("at most 2,000,000 sessions".into());
    }
    if a.missed > 10_000_000 {
        return Err("--missed at most 10,000,000".into());
    }
    if a.message_bytes > 1 << 20 {
        return Err("--message-bytes at most 1 MiB".into());
    }
    if a.transport == Transport::Ws && a.sessions_per_connection > 1 {
        return Err("--transport ws carries one session per connection: \
                    --sessions-per-connection must be 1"
            .into());
    }
    if let Some(n) = a.source_addrs {
        if n > 1 && !addr.is_ipv4() {
            return Err("--source-addrs needs an IPv4 loopback --addr".into());
        }
        if n > 250 {
            return Err("--source-addrs at most 250".into());
        }
    }
    Ok(addrs)
}

async fn run(args: Args, addrs: Vec<SocketAddr>) -> Result<stats::Report, String> {
    let addr = addrs[0];
    let secret = token::load_secret(args.jwt_secret.as_deref(), args.data_dir.as_deref())?;
    let (soft, hard) = procfs::raise_nofile();
    let sessions = match args.scenario {
        Scenario::Group => args.groups * args.group_size,
        Scenario::Resume => 2,
        _ => args.connections.unwrap_or(100),
    };
    let conns = sessions.div_ceil(args.sessions_per_connection.max(1));
    if (soft as usize) < conns + 256 {
        eprintln!("chat-loadgen: RLIMIT_NOFILE {soft} (hard {hard}) is below the {conns} connections needed");
    }
    let source_addrs = args.source_addrs.unwrap_or(if addr.is_ipv4() {
        conns.div_ceil(60_000).max(1)
    } else {
        1
    });
    let ttl = Duration::from_secs_f64(args.duration + args.warmup + 3_600.0);
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ctx = scenarios::Ctx {
        tokens: token::Tokens::new(&secret, ttl),
        probe: probe::Probe::new(addrs.clone(), args.server_pid),
        run_id: format!("lg{unix:x}p{}", std::process::id()),
        source_addrs,
        stats: Arc::new(stats::Stats::default()),
        first_open_error: Default::default(),
        addr,
        addrs: addrs.clone(),
        args,
    };
    if let Some(note) = &ctx.probe.pid_note {
        eprintln!("chat-loadgen: {note}; server RSS/CPU will be null");
    }
    // Fail fast (and clearly) when nothing listens there.
    for a in &addrs {
        probe::scrape(*a)
            .await
            .map_err(|e| format!("server at {a} not reachable: {e}"))?;
    }
    let mut report = match ctx.args.scenario {
        Scenario::Idle => scenarios::idle::run(&ctx).await,
        Scenario::Direct => scenarios::direct::run(&ctx).await,
        Scenario::Group => scenarios::group::run(&ctx).await,
        Scenario::Resume => scenarios::resume::run(&ctx).await,
        Scenario::Mixed => scenarios::mixed::run(&ctx).await,
    }?;
    report.set("run_id", json!(ctx.run_id));
    report.set("loadgen_rss_bytes", json!(procfs::self_rss_bytes()));
    report.set("loadgen_nofile", json!({"soft": soft, "hard": hard}));
    Ok(report)
}

fn main() -> ExitCode {
    let args = Args::parse();
    stats::now_ns(); // fix the clock base
    let scenario = args.scenario.name();
    let addrs = match validate(&args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("chat-loadgen: {e}");
            println!("{}", json!({"scenario": scenario, "error": e}));
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chat-loadgen: tokio runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(args, addrs));
    // Anything still running (a stuck close) must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat-loadgen: {scenario}: {e}");
            println!("{}", json!({"scenario": scenario, "error": e}));
            ExitCode::from(1)
        }
    }
}
