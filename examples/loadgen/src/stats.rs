//! Counters, HDR latency histograms and the report (table on stdout, then one JSON line).
//!
//! Times are nanoseconds since the process's first `now_ns()` (monotonic), which is also what
//! senders put into `content.attributes["t"]`: all sessions live in this one process.

use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

static BASE: OnceLock<Instant> = OnceLock::new();

/// Monotonic nanoseconds since the clock base.
pub fn now_ns() -> u64 {
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The `Instant` of a `now_ns()` value, for timers.
pub fn instant_of(ns: u64) -> tokio::time::Instant {
    let base = *BASE.get_or_init(Instant::now);
    tokio::time::Instant::from_std(base + std::time::Duration::from_nanos(ns))
}

/// Highest recordable value, in microseconds (10 minutes); larger values are clamped.
const HIST_MAX_US: u64 = 600_000_000;
const SHARDS: usize = 8;

/// A latency histogram in microseconds, sharded by session to keep lock contention low.
pub struct Hist {
    shards: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Hist {
    fn default() -> Self {
        Hist {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("bounds")))
                .collect(),
        }
    }
}

impl Hist {
    pub fn record_us(&self, shard: usize, us: u64) {
        let mut h = self.shards[shard % SHARDS].lock().unwrap();
        h.saturating_record(us.max(1));
    }

    /// Records `now − t` for a `now_ns()` timestamp `t` (0 if `t` is in the future).
    pub fn record_since(&self, shard: usize, t_ns: u64) {
        self.record_us(shard, now_ns().saturating_sub(t_ns) / 1000);
    }

    pub fn merged(&self) -> Histogram<u64> {
        let mut all = Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("bounds");
        for s in &self.shards {
            let _ = all.add(&*s.lock().unwrap());
        }
        all
    }

    pub fn summary(&self) -> Value {
        summary(&self.merged())
    }
}

/// `{count, p50, p90, p99, p999, max, mean}` in microseconds; zeros when empty.
pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": 0, "p90": 0, "p99": 0, "p999": 0, "max": 0, "mean": 0});
    }
    json!({
        "count": h.len(),
        "p50": h.value_at_quantile(0.50),
        "p90": h.value_at_quantile(0.90),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// gRPC status code number → its canonical name.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNRECOGNIZED",
    }
}

/// Counters shared by every session of a run. "Cohort" figures count only messages whose
/// scheduled send time is at or after `measure_from` (so warm-up traffic is excluded); the
/// `*_total` figures count everything and are what the server's /metrics deltas match.
#[derive(Default)]
pub struct Counters {
    /// Send frames handed to a session's request stream (cohort / all).
    pub sent: AtomicU64,
    pub sent_total: AtomicU64,
    /// Fresh (non-duplicate) SendAcks (cohort / all).
    pub acked: AtomicU64,
    pub acked_total: AtomicU64,
    /// SendAcks with duplicate = true (never expected: every client_msg_id is fresh).
    pub duplicate_acks: AtomicU64,
    /// SendError frames (all).
    pub send_errors_total: AtomicU64,
    /// Deliveries the cohort's acked sends should produce (members − 1 per message).
    pub expected_deliveries: AtomicU64,
    /// Cohort messages received from other users (live + replayed on resume).
    pub delivered: AtomicU64,
    /// Of `delivered`, those that arrived in a resume backlog (no latency recorded).
    pub delivered_replayed: AtomicU64,
    /// Every MessageEvent frame received (what chatd_messages_delivered_total counts).
    pub message_events: AtomicU64,
    /// MessageEvents of this device's own sends (resume backlogs replay them).
    pub self_echo: AtomicU64,
    /// MessageEvents at or below the device's highest seen seq of that chat.
    pub duplicate_events: AtomicU64,
    /// MessageEvents of warm-up sends, and ones without our timestamp.
    pub warmup_events: AtomicU64,
    pub foreign_events: AtomicU64,
    pub receipts: AtomicU64,
    pub typing_events: AtomicU64,
    pub presence_events: AtomicU64,
    pub chat_events: AtomicU64,
    pub pongs: AtomicU64,
    /// Client frames other than Send that we sent.
    pub acks_sent: AtomicU64,
    pub reads_sent: AtomicU64,
    pub typing_sent: AtomicU64,
    pub pings_sent: AtomicU64,
    pub watch_sent: AtomicU64,
    /// Ack/Read/Ping frames not queued because the session's request queue was full.
    pub frames_skipped_full: AtomicU64,
}

#[derive(Default)]
pub struct Stats {
    /// Cohort start, in `now_ns()` time; 0 counts everything.
    pub measure_from: AtomicU64,
    pub c: Counters,
    /// Send → MessageEvent on a peer device (live deliveries only).
    pub deliver: Hist,
    /// Send → SendAck on the sender.
    pub ack: Hist,
    /// Ping → Pong.
    pub ping: Hist,
    /// Hello → SyncComplete (session opens and resumes).
    pub sync: Hist,
    send_errors: Mutex<BTreeMap<String, u64>>,
    stream_failures: Mutex<BTreeMap<String, u64>>,
    frame_errors: Mutex<BTreeMap<String, u64>>,
    other_errors: Mutex<BTreeMap<String, u64>>,
}

fn bump(m: &Mutex<BTreeMap<String, u64>>, key: String, n: u64) {
    *m.lock().unwrap().entry(key).or_insert(0) += n;
}

fn total(m: &Mutex<BTreeMap<String, u64>>) -> u64 {
    m.lock().unwrap().values().sum()
}

pub fn inc(a: &AtomicU64) {
    a.fetch_add(1, Relaxed);
}

pub fn get(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

impl Stats {
    pub fn in_cohort(&self, t_ns: u64) -> bool {
        t_ns >= self.measure_from.load(Relaxed)
    }

    pub fn send_error(&self, code: i32) {
        inc(&self.c.send_errors_total);
        bump(&self.send_errors, code_name(code).to_string(), 1);
    }

    pub fn stream_failure(&self, what: &str) {
        bump(&self.stream_failures, what.to_string(), 1);
    }

    pub fn frame_error(&self, frame: &str, code: i32) {
        bump(
            &self.frame_errors,
            format!("{frame}:{}", code_name(code)),
            1,
        );
    }

    /// Any other problem: open failures, timeouts, unexpected frames, lost messages.
    pub fn error(&self, kind: &str) {
        self.error_n(kind, 1)
    }

    pub fn error_n(&self, kind: &str, n: u64) {
        if n > 0 {
            bump(&self.other_errors, kind.to_string(), n);
        }
    }

    pub fn errors_total(&self) -> u64 {
        total(&self.send_errors)
            + total(&self.stream_failures)
            + total(&self.frame_errors)
            + total(&self.other_errors)
    }

    pub fn send_errors_json(&self) -> Value {
        json!(*self.send_errors.lock().unwrap())
    }

    pub fn errors_json(&self) -> Value {
        json!({
            "send_errors": *self.send_errors.lock().unwrap(),
            "stream_failures": *self.stream_failures.lock().unwrap(),
            "frame_errors": *self.frame_errors.lock().unwrap(),
            "other": *self.other_errors.lock().unwrap(),
        })
    }

    /// Client-side frame counts, for cross-checking against the server.
    pub fn client_json(&self) -> Value {
        let c = &self.c;
        json!({
            "sent_total": get(&c.sent_total),
            "acked_total": get(&c.acked_total),
            "send_errors_total": get(&c.send_errors_total),
            "duplicate_acks": get(&c.duplicate_acks),
            "message_events": get(&c.message_events),
            "self_echo_events": get(&c.self_echo),
            "duplicate_events": get(&c.duplicate_events),
            "warmup_events": get(&c.warmup_events),
            "foreign_events": get(&c.foreign_events),
            "receipt_events": get(&c.receipts),
            "typing_events": get(&c.typing_events),
            "presence_events": get(&c.presence_events),
            "chat_events": get(&c.chat_events),
            "pongs": get(&c.pongs),
            "acks_sent": get(&c.acks_sent),
            "reads_sent": get(&c.reads_sent),
            "typing_sent": get(&c.typing_sent),
            "pings_sent": get(&c.pings_sent),
            "watch_presence_sent": get(&c.watch_sent),
            "frames_skipped_queue_full": get(&c.frames_skipped_full),
        })
    }
}

/// The report of one scenario: JSON fields in insertion order, and table rows.
pub struct Report {
    pub json: Map<String, Value>,
    pub rows: Vec<(String, String)>,
}

impl Report {
    pub fn new(scenario: &str, parameters: Value) -> Report {
        let mut json = Map::new();
        json.insert("scenario".into(), json!(scenario));
        json.insert("parameters".into(), parameters);
        Report {
            json,
            rows: vec![("scenario".into(), scenario.into())],
        }
    }

    pub fn set(&mut self, key: &str, v: Value) {
        self.json.insert(key.to_string(), v);
    }

    pub fn row(&mut self, label: &str, value: impl std::fmt::Display) {
        self.rows.push((label.to_string(), value.to_string()));
    }

    /// A row for a latency summary.
    pub fn latency_row(&mut self, label: &str, s: &Value) {
        self.row(
            label,
            format!(
                "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
                s["p50"], s["p90"], s["p99"], s["p999"], s["max"], s["count"]
            ),
        );
    }

    pub fn print(&self) {
        let w = self.rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let line = "-".repeat(w + 40);
        println!("{line}");
        for (k, v) in &self.rows {
            println!("{k:<w$}  {v}");
        }
        println!("{line}");
        println!("{}", Value::Object(self.json.clone()));
    }
}

/// Per-second rate, rounded to 0.1.
pub fn per_sec(n: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    (n as f64 / secs * 10.0).round() / 10.0
}

/// Human-readable bytes.
pub fn bytes(n: Option<u64>) -> String {
    match n {
        None => "n/a".into(),
        Some(n) if n >= 10 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        Some(n) if n >= 10 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        Some(n) => format!("{n} B"),
    }
}
