//! Message traffic shared by the direct, group and mixed scenarios: who may send (slots), the
//! open-loop scheduler (sends at t0 + i/rate, round-robin over senders, latency measured from
//! the scheduled time so queueing shows), the closed-loop senders (a bounded window per
//! sender, as fast as acks allow), and the drain that waits for the last acks and deliveries.

use crate::client::{frame, send_frame};
use crate::stats::{get, inc, instant_of, now_ns, Stats};
use chat_proto::v1::{client_frame, ClientFrame, Typing, TypingState};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep, timeout, timeout_at};

/// splitmix64: a cheap deterministic hash for jitter and traffic mix decisions.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in [0, 1) from a hash.
pub fn unit(x: u64) -> f64 {
    (mix(x) >> 11) as f64 / (1u64 << 53) as f64
}

/// A sender: the request queue of its current session (none while offline).
#[derive(Default)]
pub struct Slot {
    tx: Mutex<Option<mpsc::Sender<ClientFrame>>>,
    pub window: Option<Arc<Semaphore>>,
}

impl Slot {
    pub fn new(window: Option<Arc<Semaphore>>) -> Slot {
        Slot {
            tx: Mutex::new(None),
            window,
        }
    }

    pub fn get(&self) -> Option<mpsc::Sender<ClientFrame>> {
        self.tx.lock().unwrap().clone()
    }

    pub fn set(&self, tx: Option<mpsc::Sender<ClientFrame>>) {
        *self.tx.lock().unwrap() = tx;
    }
}

/// One send: to which chat, and whether a Typing STARTED goes first.
pub struct Plan {
    pub chat: String,
    pub typing: bool,
}

/// Chooses the chat for sender `slot`'s `i`-th message.
pub type Planner = Arc<dyn Fn(usize, u64) -> Plan + Send + Sync>;

pub struct Load {
    pub slots: Arc<Vec<Arc<Slot>>>,
    pub stats: Arc<Stats>,
    /// Messages per second over all senders; 0 = closed loop.
    pub rate: f64,
    /// Scheduling starts at `start_ns` and nothing is scheduled at or after `end_ns`.
    pub start_ns: u64,
    pub end_ns: u64,
    pub text: Arc<str>,
    pub planner: Planner,
}

/// How long a sender may wait for room in a session's request queue before the send is
/// counted as failed on the client side.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

async fn push(
    stats: &Stats,
    tx: &mpsc::Sender<ClientFrame>,
    plan: Plan,
    id: String,
    t: u64,
    text: &str,
) {
    if plan.typing {
        let f = frame(client_frame::Frame::Typing(Typing {
            chat_id: plan.chat.clone(),
            state: TypingState::Started as i32,
        }));
        if tx.try_send(f).is_ok() {
            inc(&stats.c.typing_sent);
        } else {
            inc(&stats.c.frames_skipped_full);
        }
    }
    match timeout(QUEUE_WAIT, tx.send(send_frame(id, plan.chat, t, text))).await {
        Ok(Ok(())) => {
            inc(&stats.c.sent_total);
            if stats.in_cohort(t) {
                inc(&stats.c.sent);
            }
        }
        Ok(Err(_)) => stats.error("send_on_ended_session"),
        Err(_) => stats.error("client_request_queue_full_5s"),
    }
}

/// Runs the load until `end_ns` (open loop: every scheduled send is handed over; closed
/// loop: senders stop at `end_ns`). Returns when every sender task has stopped.
pub async fn run(load: Load) {
    let load = Arc::new(load);
    let mut tasks = Vec::new();
    if load.slots.is_empty() {
        return;
    }
    if load.rate > 0.0 {
        const SHARDS: u64 = 2;
        for shard in 0..SHARDS {
            let load = load.clone();
            tasks.push(tokio::spawn(async move {
                let n = load.slots.len() as u64;
                let mut i = shard;
                loop {
                    let t = load.start_ns + (i as f64 * 1e9 / load.rate) as u64;
                    if t >= load.end_ns {
                        break;
                    }
                    if now_ns() < t {
                        tokio::time::sleep_until(instant_of(t)).await;
                    }
                    // Round-robin; skip senders that are offline right now (presence churn).
                    let mut chosen = None;
                    for k in 0..n.min(256) {
                        let s = ((i + k) % n) as usize;
                        if let Some(tx) = load.slots[s].get() {
                            chosen = Some((s, tx));
                            break;
                        }
                    }
                    match chosen {
                        None => load.stats.error("no_online_sender"),
                        Some((s, tx)) => {
                            let plan = (load.planner)(s, i);
                            push(&load.stats, &tx, plan, format!("o{i}"), t, &load.text).await;
                        }
                    }
                    i += SHARDS;
                }
            }));
        }
    } else {
        for (s, slot) in load.slots.iter().enumerate() {
            let (load, slot) = (load.clone(), slot.clone());
            let Some(window) = slot.window.clone() else {
                continue;
            };
            tasks.push(tokio::spawn(async move {
                let end = instant_of(load.end_ns);
                tokio::time::sleep_until(instant_of(load.start_ns)).await;
                let mut j = 0u64;
                while now_ns() < load.end_ns {
                    match timeout_at(end, window.acquire()).await {
                        Ok(Ok(p)) => p.forget(),
                        _ => break,
                    }
                    let Some(tx) = slot.get() else {
                        window.add_permits(1);
                        sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let plan = (load.planner)(s, j);
                    let t = now_ns();
                    push(&load.stats, &tx, plan, format!("c{s}-{j}"), t, &load.text).await;
                    j += 1;
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// What the drain found.
pub struct Drained {
    pub unanswered_sends: u64,
    pub missing_deliveries: u64,
    pub waited: Duration,
}

/// Waits (bounded) until every send is answered and every expected delivery arrived; what
/// is still missing then is counted as errors.
pub async fn drain(stats: &Stats, limit: Duration) -> Drained {
    let t0 = std::time::Instant::now();
    let c = &stats.c;
    let (mut unanswered, mut missing);
    loop {
        let answered = get(&c.acked_total) + get(&c.duplicate_acks) + get(&c.send_errors_total);
        unanswered = get(&c.sent_total).saturating_sub(answered);
        missing = get(&c.expected_deliveries).saturating_sub(get(&c.delivered));
        if (unanswered == 0 && missing == 0) || t0.elapsed() >= limit {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    stats.error_n("unanswered_sends", unanswered);
    stats.error_n("missing_deliveries", missing);
    Drained {
        unanswered_sends: unanswered,
        missing_deliveries: missing,
        waited: t0.elapsed(),
    }
}
