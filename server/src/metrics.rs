//! Process metrics in the Prometheus text format, served at `GET /metrics`.
//!
//! Counters and histograms are plain atomics in one static, cheap enough for the per-message
//! path; gauges (sessions, queue depths) are read from their owners when scraped.

use crate::domain::limits::Limit;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// Upper bounds of the latency histogram buckets, in seconds.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Upper bounds of the commit batch size buckets, in writes.
const BATCH_BUCKETS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// Upper bounds of the cluster hop buckets, in seconds: finer than [`LATENCY_BUCKETS`] where
/// the hops of a healthy cluster fall (a few ms to a few hundred).
const HOP_BUCKETS: [f64; 20] = [
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2,
    0.3, 0.5, 1.0, 2.5, 10.0,
];
/// gRPC codes 0..=16.
const CODES: usize = 17;

pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Cumulative counts per bucket are computed at render time; these are per bucket.
    counts: [AtomicU64; N],
    overflow: AtomicU64,
    /// Sum of observations in millionths of the unit.
    sum_micros: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    const fn new(bounds: [f64; N]) -> Self {
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; N],
            overflow: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Observations so far.
    fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum::<u64>() + self.overflow.load(Relaxed)
    }

    pub fn observe(&self, value: f64) {
        match self.bounds.iter().position(|b| value <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Relaxed),
            None => self.overflow.fetch_add(1, Relaxed),
        };
        self.sum_micros.fetch_add((value * 1e6) as u64, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        self.render_series(out, name, "");
    }

    /// The samples only, each with `labels` (`key="value",` or empty) before `le`.
    fn render_series(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            cumulative += count.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.overflow.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {cumulative}");
        let plain = labels.trim_end_matches(',');
        let braces = if plain.is_empty() {
            String::new()
        } else {
            format!("{{{plain}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

pub struct Metrics {
    /// Messages committed (duplicates excluded).
    pub messages_received: AtomicU64,
    /// Message events handed to device streams (live and replayed).
    pub messages_delivered: AtomicU64,
    /// Sends refused by the rate limiter.
    pub rate_limited: AtomicU64,
    /// Refusals by each abuse limit, in the order of `Limit::ALL`.
    pub limited: [AtomicU64; Limit::ALL.len()],
    /// Sessions closed because their queue overflowed.
    pub slow_consumers: AtomicU64,
    /// Live messages that arrived past a gap, which the session then read from the store.
    pub gaps_filled: AtomicU64,
    /// Sessions told to re-read their backlog because the node may have missed deliveries.
    pub resyncs: AtomicU64,
    /// Direct copies (cluster): messages this node handed to their recipients' nodes ahead of
    /// Kafka, messages it did not copy (it was behind: the message was over 50 ms old or its
    /// queue full; or the registry or link failed),
    /// copies a session's queue had no room for, and copies its sessions passed on (they came
    /// before the ordered copy).
    pub direct_copies_sent: AtomicU64,
    pub direct_copies_dropped: AtomicU64,
    pub direct_copies_refused: AtomicU64,
    pub direct_copies_delivered: AtomicU64,
    /// WebSocket connections open now (`/ws`, upgraded, whether or not `connect` came yet).
    pub websockets_open: AtomicU64,
    /// WebSocket connections upgraded since the start.
    pub websockets_total: AtomicU64,
    /// TLS handshakes that failed or timed out (plain-text clients, bad hellos, silence).
    pub tls_handshake_failures: AtomicU64,
    /// Certificate reloads that took, and changed files that did not load (the previous
    /// certificate kept).
    pub tls_reloads_ok: AtomicU64,
    pub tls_reloads_failed: AtomicU64,
    /// Pushes by provider (FCM, APNs, Web Push, webhook) and what became of them.
    pub push: [PushCounters; 4],
    /// Dead letters kept now for every provider together, where the queue cannot count them
    /// per provider (the cluster's `chat.push.dlq`); negative until counted.
    pub push_dlq_depth_all: AtomicI64,
    /// Errors returned to clients, by gRPC code.
    pub errors: [AtomicU64; CODES],
    /// Time from a send's arrival to its commit.
    pub send_latency: Histogram<14>,
    /// Writes per store commit.
    pub commit_batch: Histogram<10>,
    /// Age of a message (since its send arrived) as it passes each cluster hop, by
    /// [`ClusterHop`].
    pub cluster_hops: [Histogram<20>; ClusterHop::ALL.len()],
}

/// Where a message on its way between nodes is timed: its age since the send arrived on the
/// committing node (`created_at`, wall clock in ms: a measurement across the nodes of one
/// cluster, whose clocks must agree to a millisecond or so to read it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterHop {
    /// The outbox relay read its row.
    Relayed,
    /// Kafka acknowledged it to the relay.
    Produced,
    /// A fan-out consumer took it from Kafka.
    Consumed,
    /// Redis took the fan-out's envelopes for the member nodes.
    HandedOff,
    /// A member node's subscriber received its envelope.
    NodeReceived,
    /// A member node received a direct copy (from the committing node, ahead of Kafka).
    DirectReceived,
}

impl ClusterHop {
    pub const ALL: [ClusterHop; 6] = [
        ClusterHop::Relayed,
        ClusterHop::Produced,
        ClusterHop::Consumed,
        ClusterHop::HandedOff,
        ClusterHop::NodeReceived,
        ClusterHop::DirectReceived,
    ];

    fn label(self) -> &'static str {
        match self {
            ClusterHop::Relayed => "relay_read",
            ClusterHop::Produced => "kafka_acked",
            ClusterHop::Consumed => "fanout_consumed",
            ClusterHop::HandedOff => "redis_published",
            ClusterHop::NodeReceived => "node_received",
            ClusterHop::DirectReceived => "direct_received",
        }
    }
}

pub static METRICS: Metrics = Metrics {
    messages_received: AtomicU64::new(0),
    messages_delivered: AtomicU64::new(0),
    rate_limited: AtomicU64::new(0),
    limited: [const { AtomicU64::new(0) }; Limit::ALL.len()],
    slow_consumers: AtomicU64::new(0),
    gaps_filled: AtomicU64::new(0),
    resyncs: AtomicU64::new(0),
    direct_copies_sent: AtomicU64::new(0),
    direct_copies_dropped: AtomicU64::new(0),
    direct_copies_refused: AtomicU64::new(0),
    direct_copies_delivered: AtomicU64::new(0),
    websockets_open: AtomicU64::new(0),
    websockets_total: AtomicU64::new(0),
    tls_handshake_failures: AtomicU64::new(0),
    tls_reloads_ok: AtomicU64::new(0),
    tls_reloads_failed: AtomicU64::new(0),
    push: [const { PushCounters::new() }; 4],
    push_dlq_depth_all: AtomicI64::new(-1),
    errors: [const { AtomicU64::new(0) }; CODES],
    send_latency: Histogram::new(LATENCY_BUCKETS),
    commit_batch: Histogram::new(BATCH_BUCKETS),
    cluster_hops: [const { Histogram::new(HOP_BUCKETS) }; ClusterHop::ALL.len()],
};

/// What became of one provider's pushes.
pub struct PushCounters {
    pub sent: AtomicU64,
    /// Retries after a provider said "later" (429, 5xx, a timeout).
    pub retries: AtomicU64,
    /// Tokens the provider declared dead, and deleted.
    pub dead_tokens: AtomicU64,
    /// Pushes that failed for good (dead-lettered).
    pub failed: AtomicU64,
    /// Dead letters kept for this provider now; negative until a worker counted them.
    pub dlq_depth: AtomicI64,
}

impl PushCounters {
    const fn new() -> Self {
        PushCounters {
            sent: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            dead_tokens: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dlq_depth: AtomicI64::new(-1),
        }
    }
}

impl Metrics {
    /// Dead-lettered pushes this process counted, all providers together (0 before counting).
    pub fn push_dead_letters(&self) -> u64 {
        self.push
            .iter()
            .map(|c| c.dlq_depth.load(Relaxed))
            .chain([self.push_dlq_depth_all.load(Relaxed)])
            .map(|n| n.max(0) as u64)
            .sum()
    }

    pub fn push(&self, provider: crate::domain::model::PushProvider) -> &PushCounters {
        let i = crate::domain::model::PushProvider::ALL
            .iter()
            .position(|p| *p == provider)
            .unwrap_or(0);
        &self.push[i]
    }

    pub fn limited(&self, limit: Limit) {
        if let Some(i) = Limit::ALL.iter().position(|l| *l == limit) {
            self.limited[i].fetch_add(1, Relaxed);
        }
    }

    /// A message with `created_at` (unix ms) passed `hop` now.
    pub fn cluster_hop(&self, hop: ClusterHop, created_at: i64) {
        self.cluster_hop_at(hop, created_at, crate::clock::now_ms());
    }

    /// [`Metrics::cluster_hop`] with the time read once for a batch.
    pub fn cluster_hop_at(&self, hop: ClusterHop, created_at: i64, now_ms: i64) {
        let age = now_ms.saturating_sub(created_at).max(0) as f64 / 1e3;
        self.cluster_hops[hop as usize].observe(age);
    }

    pub fn error(&self, code: tonic::Code) {
        if let Some(c) = self.errors.get(code as usize) {
            c.fetch_add(1, Relaxed);
        }
    }
}

/// A value read when scraped.
pub struct Gauge {
    pub name: &'static str,
    pub help: &'static str,
    pub value: f64,
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

/// The whole exposition: the static counters plus the given gauges.
pub fn render(gauges: &[Gauge]) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(4096);
    for g in gauges {
        let _ = writeln!(
            out,
            "# HELP {0} {1}\n# TYPE {0} gauge\n{0} {2}",
            g.name, g.help, g.value
        );
    }
    counter(
        &mut out,
        "chatd_messages_received_total",
        "Messages committed (duplicates excluded).",
        m.messages_received.load(Relaxed),
    );
    counter(
        &mut out,
        "chatd_messages_delivered_total",
        "Message events sent to device streams, live and replayed.",
        m.messages_delivered.load(Relaxed),
    );
    counter(
        &mut out,
        "chatd_rate_limited_total",
        "Sends refused by the rate limiter.",
        m.rate_limited.load(Relaxed),
    );
    let _ = writeln!(out, "# HELP chatd_limited_total Refusals by an abuse limit (a request, a session start, a WebSocket handshake), by limit.\n# TYPE chatd_limited_total counter");
    for (limit, c) in Limit::ALL.iter().zip(&m.limited) {
        let _ = writeln!(
            out,
            "chatd_limited_total{{limit=\"{}\"}} {}",
            limit.label(),
            c.load(Relaxed)
        );
    }
    counter(
        &mut out,
        "chatd_slow_consumer_closes_total",
        "Sessions closed because their outgoing queue overflowed.",
        m.slow_consumers.load(Relaxed),
    );
    counter(
        &mut out,
        "chatd_gaps_filled_total",
        "Live messages that arrived past a gap the session then read from the store.",
        m.gaps_filled.load(Relaxed),
    );
    counter(
        &mut out,
        "chatd_resyncs_total",
        "Sessions told to re-read their backlog after the node's bus link came back.",
        m.resyncs.load(Relaxed),
    );
    let _ = writeln!(out, "# HELP chatd_direct_copies_total Direct copies of messages (cluster): messages handed to the recipients' nodes ahead of Kafka (sent) or not (dropped: the node was behind, or the registry or link failed); copies a session had no room for (refused) or passed on before the ordered copy (delivered).\n# TYPE chatd_direct_copies_total counter");
    for (outcome, c) in [
        ("sent", &m.direct_copies_sent),
        ("dropped", &m.direct_copies_dropped),
        ("refused", &m.direct_copies_refused),
        ("delivered", &m.direct_copies_delivered),
    ] {
        let _ = writeln!(
            out,
            "chatd_direct_copies_total{{outcome=\"{outcome}\"}} {}",
            c.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP chatd_websockets WebSocket connections open on this node.\n# TYPE chatd_websockets gauge\nchatd_websockets {}",
        m.websockets_open.load(Relaxed)
    );
    counter(
        &mut out,
        "chatd_websockets_total",
        "WebSocket connections upgraded since the start.",
        m.websockets_total.load(Relaxed),
    );
    counter(
        &mut out,
        "chatd_tls_handshake_failures_total",
        "TLS handshakes that failed or timed out.",
        m.tls_handshake_failures.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP chatd_tls_reloads_total Certificate reloads after the files changed, by outcome (error: the previous certificate kept).\n# TYPE chatd_tls_reloads_total counter\nchatd_tls_reloads_total{{outcome=\"ok\"}} {}\nchatd_tls_reloads_total{{outcome=\"error\"}} {}",
        m.tls_reloads_ok.load(Relaxed),
        m.tls_reloads_failed.load(Relaxed)
    );
    type Read = fn(&PushCounters) -> &AtomicU64;
    let push: [(&str, &str, Read); 4] = [
        (
            "chatd_push_sent_total",
            "Pushes a provider accepted.",
            |c| &c.sent,
        ),
        (
            "chatd_push_retries_total",
            "Pushes tried again after a provider said later.",
            |c| &c.retries,
        ),
        (
            "chatd_push_dead_tokens_total",
            "Tokens a provider declared dead (deleted).",
            |c| &c.dead_tokens,
        ),
        (
            "chatd_push_failed_total",
            "Pushes that failed for good (dead-lettered).",
            |c| &c.failed,
        ),
    ];
    for (name, help, read) in push {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (provider, c) in crate::domain::model::PushProvider::ALL.iter().zip(&m.push) {
            let _ = writeln!(
                out,
                "{name}{{provider=\"{}\"}} {}",
                provider.name(),
                read(c).load(Relaxed)
            );
        }
    }
    let depths = crate::domain::model::PushProvider::ALL
        .iter()
        .zip(&m.push)
        .map(|(p, c)| (p.name(), c.dlq_depth.load(Relaxed)))
        .chain([("all", m.push_dlq_depth_all.load(Relaxed))])
        .filter(|(_, n)| *n >= 0)
        .collect::<Vec<_>>();
    if !depths.is_empty() {
        let _ = writeln!(out, "# HELP chatd_push_dlq_depth Dead-lettered pushes kept now (provider=\"all\" where the queue holds every provider's together).\n# TYPE chatd_push_dlq_depth gauge");
        for (provider, n) in depths {
            let _ = writeln!(out, "chatd_push_dlq_depth{{provider=\"{provider}\"}} {n}");
        }
    }
    let _ = writeln!(out, "# HELP chatd_errors_total Errors returned to clients, by gRPC code.\n# TYPE chatd_errors_total counter");
    for (code, c) in m.errors.iter().enumerate() {
        let n = c.load(Relaxed);
        if n > 0 {
            let name = format!("{:?}", tonic::Code::from_i32(code as i32));
            let _ = writeln!(out, "chatd_errors_total{{code=\"{name}\"}} {n}");
        }
    }
    m.send_latency.render(
        &mut out,
        "chatd_send_latency_seconds",
        "Time from a send's arrival to its durable commit.",
    );
    m.commit_batch.render(
        &mut out,
        "chatd_commit_batch_writes",
        "Writes folded into one store commit.",
    );
    // Only a cluster node times these; the embedded default would show empty series.
    if m.cluster_hops.iter().any(|h| h.count() > 0) {
        let name = "chatd_cluster_message_age_seconds";
        let _ = writeln!(out, "# HELP {name} Age of a message since its send arrived, as it passes each hop between nodes (relay_read, kafka_acked, fanout_consumed, redis_published, node_received; direct_received for direct copies; wall clocks of the nodes, ms resolution).\n# TYPE {name} histogram");
        for (hop, h) in ClusterHop::ALL.iter().zip(&m.cluster_hops) {
            h.render_series(&mut out, name, &format!("hop=\"{}\",", hop.label()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_abuse_limit_has_its_counter() {
        METRICS.limited(Limit::GroupsPerUser);
        let out = render(&[]);
        for limit in Limit::ALL {
            let line = format!("chatd_limited_total{{limit=\"{}\"}} ", limit.label());
            assert!(out.contains(&line), "{line} in {out}");
        }
        assert!(!out.contains("chatd_limited_total{limit=\"groups_per_user\"} 0\n"));
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new([1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(3.0);
        let mut out = String::new();
        h.render(&mut out, "x", "help");
        assert!(out.contains("x_bucket{le=\"1\"} 1\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(
            out.contains("x_count 3\n") && out.contains("x_sum 5\n"),
            "{out}"
        );
        let mut out = String::new();
        h.render_series(&mut out, "x", "hop=\"a\",");
        assert!(out.contains("x_bucket{hop=\"a\",le=\"2\"} 2\n"), "{out}");
        assert!(out.contains("x_count{hop=\"a\"} 3\n"), "{out}");
    }

    #[test]
    fn cluster_hops_are_rendered_by_hop_once_timed() {
        METRICS.cluster_hop_at(ClusterHop::HandedOff, 1_000, 1_012);
        let out = render(&[]);
        let line =
            "chatd_cluster_message_age_seconds_bucket{hop=\"redis_published\",le=\"0.015\"} ";
        assert!(out.contains(line), "{out}");
        assert!(out.contains("hop=\"node_received\""), "{out}");
    }
}

/// Messages committed per second over about the last ten seconds, from once-a-second samples
/// of [`Metrics::messages_received`] (GetStats).
#[derive(Default)]
pub struct Throughput {
    samples: parking_lot::Mutex<std::collections::VecDeque<(std::time::Instant, u64)>>,
}

/// Samples kept: ten seconds apart from the newest.
const THROUGHPUT_SAMPLES: usize = 11;

impl Throughput {
    /// Records the counter now; called once a second.
    pub fn sample(&self) {
        self.sample_at(
            std::time::Instant::now(),
            METRICS.messages_received.load(Relaxed),
        );
    }

    fn sample_at(&self, at: std::time::Instant, count: u64) {
        let mut samples = self.samples.lock();
        if samples.len() == THROUGHPUT_SAMPLES {
            samples.pop_front();
        }
        samples.push_back((at, count));
    }

    /// The rate between the oldest and the newest sample; 0 before there are two.
    pub fn per_second(&self) -> f64 {
        let samples = self.samples.lock();
        match (samples.front(), samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => {
                n1.saturating_sub(*n0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod throughput_tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_rate_spans_the_samples_kept() {
        let t = Throughput::default();
        let start = Instant::now();
        assert_eq!(t.per_second(), 0.0);
        t.sample_at(start, 100);
        assert_eq!(t.per_second(), 0.0);
        for i in 1..=20u64 {
            // 50 per second for 10 s, then 10 per second.
            let n = if i <= 10 {
                100 + 50 * i
            } else {
                600 + 10 * (i - 10)
            };
            t.sample_at(start + Duration::from_secs(i), n);
        }
        // The last ten seconds: 10 per second.
        assert!((t.per_second() - 10.0).abs() < 1e-9, "{}", t.per_second());
    }
}
