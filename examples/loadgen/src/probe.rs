//! What the load generator reads from the server side: /proc figures of the server process
//! and the Prometheus counters at `GET /metrics` on the gRPC port.

use crate::procfs;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Parsed /metrics: series (name with labels, as printed) to value.
#[derive(Debug, Clone, Default)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// `self − before` for one series; `None` when either side lacks it.
    pub fn delta(&self, before: &Metrics, series: &str) -> Option<f64> {
        Some(self.get(series)? - before.get(series)?)
    }

    /// Deltas of every series starting with `prefix` (labelled counters), non-zero only.
    pub fn deltas_with_prefix(&self, before: &Metrics, prefix: &str) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v - before.get(k).unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .collect()
    }
}

fn parse_metrics(body: &str) -> Metrics {
    let mut m = BTreeMap::new();
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // `name{labels} value` or `name value`; label values here contain no spaces.
        if let Some((series, value)) = line.rsplit_once(' ') {
            if let Ok(v) = value.parse::<f64>() {
                m.insert(series.to_string(), v);
            }
        }
    }
    Metrics(m)
}

/// One plain HTTP/1.1 GET of /metrics (the server answers HTTP/1.1 on the gRPC port).
pub async fn scrape(addr: SocketAddr) -> Result<Metrics, String> {
    let fut = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: chat-loadgen\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::with_capacity(16 * 1024);
        // Bounded: at most 8 MiB of exposition.
        let mut limited = (&mut s).take(8 << 20);
        limited
            .read_to_end(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| "no HTTP header end in /metrics answer".to_string())?;
        let status = head.lines().next().unwrap_or("");
        if !status.contains(" 200") {
            return Err(format!("/metrics answered {status:?}"));
        }
        Ok(parse_metrics(body))
    };
    match tokio::time::timeout(Duration::from_secs(5), fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("GET http://{addr}/metrics timed out after 5 s")),
    }
}

/// The server process, if it could be found.
pub struct Probe {
    pub pid: Option<u32>,
    /// Why `pid` is `None`.
    pub pid_note: Option<String>,
    /// Every node; their counters are summed.
    pub addrs: Vec<SocketAddr>,
}

/// A point-in-time reading of the server process.
#[derive(Debug, Clone)]
pub struct Mark {
    pub at: Instant,
    pub rss: Option<u64>,
    pub cpu_ticks: Option<u64>,
    pub sockstat: Option<procfs::SockStat>,
}

impl Probe {
    pub fn new(addrs: Vec<SocketAddr>, pid: Option<u32>) -> Probe {
        let addr = addrs;
        match pid {
            Some(p) => Probe {
                pid: Some(p),
                pid_note: None,
                addrs: addr,
            },
            None => match procfs::find_process("chatd") {
                Ok(p) => Probe {
                    pid: Some(p),
                    pid_note: None,
                    addrs: addr,
                },
                Err(e) => Probe {
                    pid: None,
                    pid_note: Some(e),
                    addrs: addr,
                },
            },
        }
    }

    pub fn mark(&self) -> Mark {
        Probe::mark_of(self.pid)
    }

    pub fn mark_of(pid: Option<u32>) -> Mark {
        Mark {
            at: Instant::now(),
            rss: pid.and_then(procfs::rss_bytes),
            cpu_ticks: pid.and_then(procfs::cpu_ticks),
            sockstat: procfs::sockstat(),
        }
    }

    /// The counters of all nodes, summed series by series.
    pub async fn scrape(&self) -> Result<Metrics, String> {
        let mut sum = Metrics::default();
        for addr in &self.addrs {
            for (k, v) in scrape(*addr).await?.0 {
                *sum.0.entry(k).or_insert(0.0) += v;
            }
        }
        Ok(sum)
    }
}

/// Server CPU use between two marks, in percent of one core (can exceed 100).
pub fn cpu_percent(a: &Mark, b: &Mark) -> Option<f64> {
    let ticks = b.cpu_ticks?.checked_sub(a.cpu_ticks?)?;
    let wall = b.at.duration_since(a.at).as_secs_f64();
    if wall <= 0.0 {
        return None;
    }
    Some(ticks as f64 / procfs::clk_tck() as f64 / wall * 100.0)
}

/// The server-side block of the report: RSS, CPU, metric deltas.
pub fn server_json(
    probe: &Probe,
    rss_before: &Mark,
    rss_after: &Mark,
    cpu_from: &Mark,
    cpu_to: &Mark,
    m_before: &Option<Metrics>,
    m_after: &Option<Metrics>,
) -> Value {
    let deltas = match (m_before, m_after) {
        (Some(b), Some(a)) => json!({
            "messages_received": num(a.delta(b, "chatd_messages_received_total")),
            "messages_delivered": num(a.delta(b, "chatd_messages_delivered_total")),
            "rate_limited": num(a.delta(b, "chatd_rate_limited_total")),
            "slow_consumer_closes": num(a.delta(b, "chatd_slow_consumer_closes_total")),
            "errors": a.deltas_with_prefix(b, "chatd_errors_total").into_iter()
                .map(|(k, v)| (k, num(Some(v)))).collect::<serde_json::Map<_, _>>(),
            "sessions_before": num(b.get("chatd_sessions")),
            "sessions_after": num(a.get("chatd_sessions")),
        }),
        _ => Value::Null,
    };
    json!({
        "pid": probe.pid,
        "pid_note": probe.pid_note,
        "server_rss_bytes": {"before": rss_before.rss, "after": rss_after.rss},
        "server_cpu_percent": cpu_percent(cpu_from, cpu_to).map(round2),
        "server_metrics": deltas,
    })
}

/// A JSON integer when the value is integral (the exposition prints floats), else a float.
pub fn num(v: Option<f64>) -> Value {
    match v {
        Some(x) if x.fract() == 0.0 && x.abs() < 9e15 => json!(x as i64),
        Some(x) => json!(x),
        None => Value::Null,
    }
}

pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition() {
        let m = parse_metrics(
            "# HELP x y\n# TYPE x counter\nchatd_sessions 3\nchatd_errors_total{code=\"NotFound\"} 2\nbad line\n",
        );
        assert_eq!(m.get("chatd_sessions"), Some(3.0));
        assert_eq!(m.get("chatd_errors_total{code=\"NotFound\"}"), Some(2.0));
    }
}
