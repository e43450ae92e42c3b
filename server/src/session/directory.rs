//! The sessions connected to this node, by user: where the fan-out finds the queues to deliver
//! to. Each session has a bounded queue; a session whose queue is full is told to close (it
//! resumes from its cursor on reconnect), so one slow reader never slows anyone else down or
//! makes memory grow.

use crate::domain::model::Committed;
use crate::queue::{self, TrySendError};
use parking_lot::Mutex;
use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const SHARDS: usize = 64;

struct Entry {
    session_id: u64,
    device_id: Arc<str>,
    queue: queue::Sender<Committed>,
    /// Cancelled when the session must end: its queue overflowed, or it was evicted.
    closed: CancellationToken,
    /// Why, when it was evicted (its user's data is being erased). A flag beside the one token
    /// rather than a token of its own: an eviction is rare, and a token is an allocation of
    /// ~100 bytes per session.
    evicted: bool,
    resync: Arc<Notify>,
}

pub struct Directory {
    shards: Vec<Mutex<HashMap<Arc<str>, Vec<Entry>>>>,
    hasher: RandomState,
    next_id: AtomicU64,
    sessions: AtomicUsize,
    /// Whether direct copies are offered ([`Directory::offer`]): each queue then has half its
    /// capacity again, which only they may fill, so the ordered deliveries keep all of theirs.
    direct_copies: bool,
}

/// A session's place in the directory; leaving it (drop) unregisters the session.
pub struct Registration {
    directory: Arc<Directory>,
    user_id: Arc<str>,
    pub session_id: u64,
    pub events: queue::Receiver<Committed>,
    /// The sending side of `events`, for deliveries that don't go through the directory
    /// (presence events to watchers).
    pub queue: queue::Sender<Committed>,
    /// Cancelled when the session must end: its queue overflowed, or [`Directory::evict`]
    /// (then [`Registration::evicted`] says so).
    pub closed: CancellationToken,
    /// Notified when the session must re-read its backlog (see [`Directory::resync_all`]).
    pub resync: Arc<Notify>,
}

impl Registration {
    /// Whether [`Directory::evict`] closed this session.
    pub fn evicted(&self) -> bool {
        let shard = self.directory.shard(&self.user_id).lock();
        shard.get(&self.user_id).is_some_and(|entries| {
            entries
                .iter()
                .any(|e| e.session_id == self.session_id && e.evicted)
        })
    }
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
        let closed = CancellationToken::new();
        let resync = Arc::new(Notify::new());
        let user_id: Arc<str> = Arc::from(user_id);
        self.shard(&user_id)
            .lock()
            .entry(user_id.clone())
            .or_default()
            .push(Entry {
                session_id,
                device_id: Arc::from(device_id),
                queue: queue.clone(),
                closed: closed.clone(),
                evicted: false,
                resync: resync.clone(),
            });
        self.sessions.fetch_add(1, Ordering::Relaxed);
        Registration {
            directory: self.clone(),
            user_id,
            session_id,
            events,
            queue,
            closed,
            resync,
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
            if let Err(TrySendError::Full(_)) = e.queue.try_send(event.clone()) {
                e.closed.cancel();
            }
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
        let mut n = 0u64;
        for shard in &self.shards {
            for e in shard.lock().values().flatten() {
                e.resync.notify_one();
                n += 1;
            }
        }
        crate::metrics::METRICS
            .resyncs
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// Ends every session of `user_id` on this node (their data is being erased); returns how
    /// many there were.
    pub fn evict(&self, user_id: &str) -> usize {
        let mut shard = self.shard(user_id).lock();
        let Some(entries) = shard.get_mut(user_id) else {
            return 0;
        };
        for e in entries.iter_mut() {
            // The flag first: the session reads it once the token wakes it.
            e.evicted = true;
            e.closed.cancel();
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
        assert!(slow.closed.is_cancelled());
        assert!(!slow.evicted(), "an overflow is not an eviction");
        assert!(!fast.closed.is_cancelled());
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
        assert!(!slow.closed.is_cancelled(), "a refused copy closes nothing");
        // The ordered deliveries still have the whole configured queue (6) on top.
        for seq in 1..=6 {
            dir.deliver("a", None, &event(seq));
        }
        assert!(!slow.closed.is_cancelled());
        dir.offer("a", None, &event(7));
        assert_eq!(queued(&slow), 9, "a full queue takes no copy");
        dir.deliver("a", None, &event(7));
        assert!(
            slow.closed.is_cancelled(),
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
        assert!(!phone.evicted());
        assert_eq!(dir.evict("a"), 2);
        for r in [&phone, &laptop] {
            assert!(r.closed.is_cancelled());
            assert!(r.evicted());
        }
        assert!(!other.closed.is_cancelled());
        assert!(!other.evicted());
        assert_eq!(dir.evict("nobody"), 0);
    }
}
