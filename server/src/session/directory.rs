//! The sessions connected to this node, by user: where the fan-out finds the inboxes to
//! deliver to. Each session has a bounded inbox; a session whose inbox is full is told to
//! close (it resumes from its cursor on reconnect), so one slow reader never slows anyone else
//! down or makes memory grow. Everything else the directory tells a session (close, re-read
//! the backlog) is a signal on the same inbox (see [`crate::inbox`]): a session waits on one
//! queue, not on a token and a notifier of its own.

use crate::domain::model::Committed;
use crate::inbox;
use crate::queue;
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};

const SHARDS: usize = 64;

struct Entry {
    session_id: u64,
    device_id: Arc<str>,
    queue: queue::Sender<Committed>,
}

pub struct Directory {
    shards: Vec<Mutex<HashMap<Arc<str>, Vec<Entry>>>>,
    hasher: RandomState,
    next_id: AtomicU64,
    sessions: AtomicUsize,
    /// Set by [`Directory::close_all`]: a session registered after it is told at once.
    closing: AtomicBool,
    /// Whether direct copies are offered ([`Directory::offer`]): each queue then has half its
    /// capacity again, which only they may fill, so the ordered deliveries keep all of theirs.
    direct_copies: bool,
}

/// A session's place in the directory; leaving it (drop) unregisters the session.
pub struct Registration {
    directory: Arc<Directory>,
    user_id: Arc<str>,
    pub session_id: u64,
    /// The session's inbox: its events, and the signals of [`crate::inbox`].
    pub events: queue::Receiver<Committed>,
    /// The sending side of `events`, for deliveries that don't go through the directory
    /// (presence events to watchers).
    pub queue: queue::Sender<Committed>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.directory.unregister(&self.user_id, self.session_id);
    }
}

impl Default for Directory {
    fn default() -> Self {
        Directory {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_id: AtomicU64::new(1),
            sessions: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            direct_copies: false,
        }
    }
}

impl Directory {
    /// A directory whose sessions also take direct copies ([`Directory::offer`]).
    pub fn with_direct_copies() -> Self {
        Directory {
            direct_copies: true,
            ..Directory::default()
        }
    }

    fn shard(&self, user_id: &str) -> &Mutex<HashMap<Arc<str>, Vec<Entry>>> {
        &self.shards[(self.hasher.hash_one(user_id) as usize) % SHARDS]
    }

    pub fn register(
        self: &Arc<Self>,
        user_id: &str,
        device_id: &str,
        capacity: usize,
    ) -> Registration {
        let session_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let capacity = capacity.max(1);
        // A bounded queue allocates its slots as they fill, so the extra room costs an idle
        // session nothing.
        let capacity = if self.direct_copies {
            capacity + capacity / 2
        } else {
            capacity
        };
        let (queue, events) = queue::channel(capacity);
        let user_id: Arc<str> = Arc::from(user_id);
        self.shard(&user_id)
            .lock()
            .entry(user_id.clone())
            .or_default()
            .push(Entry {
                session_id,
                device_id: Arc::from(device_id),
                queue: queue.clone(),
            });
        self.sessions.fetch_add(1, Ordering::Relaxed);
        // After the entry is in: either `close_all` finds it, or this sees its flag.
        if self.closing.load(Ordering::SeqCst) {
            queue.signal(inbox::SHUTDOWN);
        }
        Registration {
            directory: self.clone(),
            user_id,
            session_id,
            events,
            queue,
        }
    }

    fn unregister(&self, user_id: &str, session_id: u64) {
        let mut shard = self.shard(user_id).lock();
        if let Some(entries) = shard.get_mut(user_id) {
            let before = entries.len();
            entries.retain(|e| e.session_id != session_id);
            if entries.len() < before {
                self.sessions.fetch_sub(1, Ordering::Relaxed);
            }
            if entries.is_empty() {
                shard.remove(user_id);
            }
        }
    }

    /// Queues `event` for every session of `user_id`, except those of `skip_device`.
    pub fn deliver(&self, user_id: &str, skip_device: Option<&str>, event: &Committed) {
        self.each_session(user_id, skip_device, |e| {
            inbox::deliver(&e.queue, event.clone())
        });
    }

    /// Queues a direct copy (an event that another delivery also brings) for every session
    /// of `user_id` except those of `skip_device`, where the queue holds less than a third of
    /// its capacity (the room beyond the configured queue); elsewhere it is dropped. Never
    /// closes a session: the ordered delivery decides that.
    pub fn offer(&self, user_id: &str, skip_device: Option<&str>, event: &Committed) {
        if !self.direct_copies {
            return;
        }
        self.each_session(user_id, skip_device, |e| {
            let room = e.queue.max_capacity() / 3;
            if e.queue.try_send_below(event.clone(), room).is_err() {
                crate::metrics::METRICS
                    .direct_copies_refused
                    .fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Runs `f` on every session of `user_id` except those of `skip_device`, under the shard
    /// lock.
    fn each_session(&self, user_id: &str, skip_device: Option<&str>, mut f: impl FnMut(&Entry)) {
        let shard = self.shard(user_id).lock();
        for e in shard.get(user_id).into_iter().flatten() {
            if Some(&*e.device_id) != skip_device {
                f(e);
            }
        }
    }

    /// Makes every session re-read its backlog: the node's link to the rest of the cluster was
    /// down, so deliveries may have been lost on the way (each session drops what it already
    /// has, by seq).
    pub fn resync_all(&self) {
        let n = self.signal_all(inbox::RESYNC);
        crate::metrics::METRICS
            .resyncs
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends every session on this node, now and registered later: the node is shutting down.
    pub fn close_all(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.signal_all(inbox::SHUTDOWN);
    }

    fn signal_all(&self, signal: u8) -> u64 {
        let mut n = 0u64;
        for shard in &self.shards {
            for e in shard.lock().values().flatten() {
                e.queue.signal(signal);
                n += 1;
            }
        }
        n
    }

    /// Ends every session of `user_id` on this node (their data is being erased); returns how
    /// many there were.
    pub fn evict(&self, user_id: &str) -> usize {
        let shard = self.shard(user_id).lock();
        let Some(entries) = shard.get(user_id) else {
            return 0;
        };
        for e in entries {
            e.queue.signal(inbox::EVICTED);
        }
        entries.len()
    }

    /// Sessions connected to this node.
    pub fn len(&self) -> usize {
        self.sessions.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl crate::bus::LocalSessions for Directory {
    fn deliver(&self, user_id: &str, skip_device: Option<&str>, event: &Committed) {
        Directory::deliver(self, user_id, skip_device, event)
    }

    fn offer(&self, user_id: &str, skip_device: Option<&str>, event: &Committed) {
        Directory::offer(self, user_id, skip_device, event)
    }

    fn evict(&self, user_id: &str) -> usize {
        Directory::evict(self, user_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Event, Message};

    fn event(seq: u64) -> Committed {
        let m = Message {
            message_id: "m".into(),
            chat_id: "c".into(),
            seq,
            sender_user_id: "a".into(),
            sender_device_id: "phone".into(),
            client_msg_id: "x".into(),
            content: Default::default(),
            created_at: 0,
            wire: Default::default(),
        };
        Committed {
            commit_id: seq,
            event: Event::Message(Arc::new(m)),
        }
    }

    #[test]
    fn delivers_to_every_device_but_the_skipped_one() {
        let dir = Arc::new(Directory::default());
        let mut phone = dir.register("a", "phone", 4);
        let mut laptop = dir.register("a", "laptop", 4);
        dir.deliver("a", Some("phone"), &event(1));
        assert!(phone.events.try_recv().is_none());
        assert!(laptop.events.try_recv().is_some());
        assert_eq!(dir.len(), 2);
        drop(phone);
        assert_eq!(dir.len(), 1);
    }

    #[test]
    fn a_full_queue_closes_only_that_session() {
        let dir = Arc::new(Directory::default());
        let slow = dir.register("a", "slow", 1);
        let mut fast = dir.register("b", "fast", 8);
        for seq in 1..=3 {
            dir.deliver("a", None, &event(seq));
            dir.deliver("b", None, &event(seq));
        }
        assert_eq!(
            slow.events.raised(),
            inbox::OVERFLOWED,
            "an overflow, not an eviction"
        );
        assert_eq!(fast.events.raised(), 0);
        assert_eq!(fast.events.try_recv().map(|c| c.commit_id), Some(1));
    }

    #[test]
    fn direct_copies_fill_only_their_own_room_and_never_close_a_session() {
        let dir = Arc::new(Directory::with_direct_copies());
        // A queue of 6: 9 slots, of which direct copies may fill up to 3.
        let mut slow = dir.register("a", "slow", 6);
        for seq in 1..=10 {
            dir.offer("a", None, &event(seq));
        }
        let queued = |r: &Registration| r.queue.len();
        assert_eq!(queued(&slow), 3, "copies stop at a third of the queue");
        assert_eq!(slow.events.raised(), 0, "a refused copy closes nothing");
        // The ordered deliveries still have the whole configured queue (6) on top.
        for seq in 1..=6 {
            dir.deliver("a", None, &event(seq));
        }
        assert_eq!(slow.events.raised(), 0);
        dir.offer("a", None, &event(7));
        assert_eq!(queued(&slow), 9, "a full queue takes no copy");
        dir.deliver("a", None, &event(7));
        assert_eq!(
            slow.events.raised(),
            inbox::OVERFLOWED,
            "past its queue the session is closed"
        );
        let first: Vec<u64> = (0..4)
            .filter_map(|_| slow.events.try_recv())
            .map(|c| c.commit_id)
            .collect();
        assert_eq!(first, vec![1, 2, 3, 1]);
        // Skipped devices are skipped, as by deliver.
        let mut other = dir.register("b", "phone", 6);
        dir.offer("b", Some("phone"), &event(1));
        assert!(other.events.try_recv().is_none());
    }

    #[test]
    fn without_direct_copies_nothing_is_offered_and_queues_keep_their_size() {
        let dir = Arc::new(Directory::default());
        let mut r = dir.register("a", "phone", 6);
        dir.offer("a", None, &event(1));
        assert!(r.events.try_recv().is_none());
        assert_eq!(r.queue.max_capacity(), 6);
    }

    #[test]
    fn evict_closes_every_session_of_the_user_and_says_why() {
        let dir = Arc::new(Directory::default());
        let phone = dir.register("a", "phone", 4);
        let laptop = dir.register("a", "laptop", 4);
        let other = dir.register("b", "phone", 4);
        assert_eq!(dir.evict("a"), 2);
        for r in [&phone, &laptop] {
            assert_eq!(r.events.raised(), inbox::EVICTED);
        }
        assert_eq!(other.events.raised(), 0);
        assert_eq!(dir.evict("nobody"), 0);
    }

    #[test]
    fn resync_and_shutdown_reach_every_session_and_shutdown_those_that_come_later() {
        let dir = Arc::new(Directory::default());
        let mut a = dir.register("a", "phone", 4);
        let b = dir.register("b", "phone", 4);
        dir.resync_all();
        assert_eq!(a.events.take_signal(inbox::RESYNC), inbox::RESYNC);
        assert_eq!(b.events.raised(), inbox::RESYNC);
        dir.close_all();
        assert_eq!(a.events.raised(), inbox::SHUTDOWN);
        assert_eq!(b.events.raised(), inbox::RESYNC | inbox::SHUTDOWN);
        let late = dir.register("c", "phone", 4);
        assert_eq!(late.events.raised(), inbox::SHUTDOWN);
    }
}
