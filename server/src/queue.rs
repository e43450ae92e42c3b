//! A bounded queue with many senders and one receiver that allocates nothing until something
//! is queued, and gives its storage back once it drains after a burst.
//!
//! Every connected session owns two queues: its events (from the directory) and its output
//! (to the transport). tokio's mpsc channel allocates a block of 32 slots and ~500 bytes of
//! cache-padded state up front, about 1.3 KiB per queue, which an idle session pays for hours.
//! Here the state is ~150 bytes and the slots are a `VecDeque` that grows as events arrive. A
//! lock instead of tokio's lock-free list is the price: each push and pop takes a short
//! uncontended lock (one receiver, and senders that mostly come one at a time).

use parking_lot::Mutex;
use std::{
    collections::VecDeque,
    fmt,
    future::poll_fn,
    sync::Arc,
    task::{Context, Poll, Waker},
};
use tokio::sync::Notify;

/// Slots kept once the queue drains; above this the storage is freed, so a burst does not
/// stay allocated in an idle session.
const KEEP_SLOTS: usize = 16;

/// A queue of at most `capacity` items (at least 1).
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            receiver_waker: None,
            closed_waker: None,
            senders: 1,
            receiver_gone: false,
            signals: 0,
        }),
        capacity: capacity.max(1),
        room: Notify::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    /// Signalled when an item leaves: a sender waiting for room checks again.
    room: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    receiver_waker: Option<Waker>,
    /// The one task waiting for the receiver to go ([`Sender::poll_closed`]).
    closed_waker: Option<Waker>,
    senders: usize,
    receiver_gone: bool,
    /// Raised by [`Sender::signal`], seen by [`Receiver::poll_signal`].
    signals: u8,
}

/// Why `try_send` did not queue the item; the item comes back.
#[derive(PartialEq, Eq)]
pub enum TrySendError<T> {
    Full(T),
    Closed(T),
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full(_) => "Full(..)",
            TrySendError::Closed(_) => "Closed(..)",
        })
    }
}

/// The receiver is gone; the item comes back.
#[derive(PartialEq, Eq)]
pub struct Closed<T>(pub T);

impl<T> fmt::Debug for Closed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Closed(..)")
    }
}

pub struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Sender<T> {
    /// Queues `item` if there is room and the receiver is still there.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.try_send_below(item, self.shared.capacity)
    }

    /// Queues `item` only while fewer than `limit` items are queued (a room reserved for
    /// others above it): one check and the push under one lock.
    pub fn try_send_below(&self, item: T, limit: usize) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.state.lock();
            if state.receiver_gone {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= limit.min(self.shared.capacity) {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            state.receiver_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Queues `item`, waiting for room; fails only when the receiver is gone. Dropping the
    /// future before it completes drops the item.
    pub async fn send(&self, item: T) -> Result<(), Closed<T>> {
        let mut item = item;
        loop {
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Closed(back)) => return Err(Closed(back)),
                Err(TrySendError::Full(back)) => item = back,
            }
            // Another sender may take the room first; then this waits again.
            if self.room().await.is_err() {
                return Err(Closed(item));
            }
        }
    }

    /// Waits until the queue has room for an item, or fails when the receiver is gone. The
    /// room is not reserved: with other senders, one may take it first. Dropping the future
    /// loses nothing, so a caller can keep its item until there is room.
    pub async fn room(&self) -> Result<(), Closed<()>> {
        loop {
            if let Some(ready) = self.has_room() {
                return ready;
            }
            // Registered before the second check, so room made between the check and the
            // wait wakes this sender.
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if let Some(ready) = self.has_room() {
                return ready;
            }
            room.await;
        }
    }

    fn has_room(&self) -> Option<Result<(), Closed<()>>> {
        let state = self.shared.state.lock();
        if state.receiver_gone {
            Some(Err(Closed(())))
        } else if state.items.len() < self.shared.capacity {
            Some(Ok(()))
        } else {
            None
        }
    }

    /// Ready once the receiver is gone. Only the last task to poll is woken: one slot, not a
    /// list, since only the session that owns the queue waits here.
    pub fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.state.lock();
        if state.receiver_gone {
            return Poll::Ready(());
        }
        store_waker(&mut state.closed_waker, cx);
        Poll::Pending
    }

    /// Raises `bits` for the receiver: it sees them before any queued item, even when the
    /// queue is full. They stay raised until the receiver takes them.
    pub fn signal(&self, bits: u8) {
        let waker = {
            let mut state = self.shared.state.lock();
            state.signals |= bits;
            state.receiver_waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Items queued and not yet received.
    pub fn len(&self) -> usize {
        self.shared.state.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most items the queue holds.
    pub fn max_capacity(&self) -> usize {
        self.shared.capacity
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.state.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.state.lock();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.receiver_waker.take()
        };
        // The last sender: a waiting receiver learns that nothing more comes.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

pub struct Receiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Receiver<T> {
    /// The next item, or `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.state.lock();
        if let Some(item) = self.pop(&mut state) {
            return Poll::Ready(Some(item));
        }
        if state.senders == 0 {
            return Poll::Ready(None);
        }
        store_waker(&mut state.receiver_waker, cx);
        Poll::Pending
    }

    /// Ready with the raised signals among `mask`, which stay raised; otherwise the receiver
    /// is woken when one is raised (or an item comes).
    pub fn poll_signal(&mut self, cx: &mut Context<'_>, mask: u8) -> Poll<u8> {
        let mut state = self.shared.state.lock();
        match state.signals & mask {
            0 => {
                store_waker(&mut state.receiver_waker, cx);
                Poll::Pending
            }
            raised => Poll::Ready(raised),
        }
    }

    /// The signals raised now (none lowered).
    #[cfg(test)]
    pub(crate) fn raised(&self) -> u8 {
        self.shared.state.lock().signals
    }

    /// Takes (lowers) the raised signals among `mask`, and returns them.
    pub fn take_signal(&mut self, mask: u8) -> u8 {
        let mut state = self.shared.state.lock();
        let raised = state.signals & mask;
        state.signals &= !mask;
        raised
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let mut state = self.shared.state.lock();
        self.pop(&mut state)
    }

    fn pop(&self, state: &mut State<T>) -> Option<T> {
        let item = state.items.pop_front()?;
        if state.items.is_empty() && state.items.capacity() > KEEP_SLOTS {
            state.items = VecDeque::new();
        }
        self.shared.room.notify_one();
        Some(item)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (items, closed) = {
            let mut state = self.shared.state.lock();
            state.receiver_gone = true;
            (std::mem::take(&mut state.items), state.closed_waker.take())
        };
        // Dropped outside the lock: an item's drop may do anything.
        drop(items);
        self.shared.room.notify_waiters();
        if let Some(w) = closed {
            w.wake();
        }
    }
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        slot => *slot = Some(cx.waker().clone()),
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("capacity", &self.shared.capacity)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn items_come_out_in_order_and_a_full_queue_refuses() {
        let (tx, mut rx) = channel(3);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(tx.len(), 3);
        assert_eq!(rx.recv().await, Some(0));
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
        assert!(tx.is_empty());
    }

    #[tokio::test]
    async fn a_send_below_a_limit_leaves_the_room_above_it() {
        let (tx, mut rx) = channel(4);
        tx.try_send_below(1, 2).unwrap();
        tx.try_send_below(2, 2).unwrap();
        assert_eq!(tx.try_send_below(3, 2), Err(TrySendError::Full(3)));
        tx.try_send(3).unwrap();
        tx.try_send(4).unwrap();
        assert_eq!(tx.try_send_below(5, 10), Err(TrySendError::Full(5)));
        assert_eq!(rx.try_recv(), Some(1));
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_ends_with_the_last_sender() {
        let (tx, mut rx) = channel::<u32>(4);
        let tx2 = tx.clone();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(i) = rx.recv().await {
                got.push(i);
            }
            got
        });
        tokio::task::yield_now().await;
        tx.try_send(1).unwrap();
        drop(tx);
        tokio::task::yield_now().await;
        tx2.send(2).await.unwrap();
        drop(tx2);
        let got = timeout(WAIT, reader).await.unwrap().unwrap();
        assert_eq!(got, vec![1, 2]);
    }

    // On two worker threads, so senders and the receiver really race for the lock and the room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sender_waits_for_room_and_every_item_arrives_once_in_order() {
        let (tx, mut rx) = channel::<u32>(2);
        let writers: Vec<_> = (0..4u32)
            .map(|w| {
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0..5000 {
                        tx.send(w * 10_000 + i).await.unwrap();
                    }
                })
            })
            .collect();
        drop(tx);
        let mut last = [None::<u32>; 4];
        let mut count = 0;
        while let Some(v) = timeout(WAIT, rx.recv()).await.unwrap() {
            let (w, i) = ((v / 10_000) as usize, v % 10_000);
            assert!(
                last[w].is_none_or(|p| p + 1 == i),
                "writer {w}: {i} after {:?}",
                last[w]
            );
            last[w] = Some(i);
            count += 1;
        }
        assert_eq!(count, 20_000);
        for w in writers {
            w.await.unwrap();
        }
    }

    #[tokio::test]
    async fn senders_learn_the_receiver_left_and_get_their_item_back() {
        let (tx, rx) = channel::<String>(1);
        tx.try_send("a".into()).unwrap();
        let blocked = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send("b".into()).await })
        };
        let closed = {
            let tx = tx.clone();
            tokio::spawn(async move { poll_fn(|cx| tx.poll_closed(cx)).await })
        };
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(
            timeout(WAIT, blocked).await.unwrap().unwrap(),
            Err(Closed("b".to_string()))
        );
        timeout(WAIT, closed).await.unwrap().unwrap();
        assert_eq!(
            tx.try_send("c".into()),
            Err(TrySendError::Closed("c".to_string()))
        );
        // Already gone: returns at once.
        timeout(WAIT, poll_fn(|cx| tx.poll_closed(cx)))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn signals_wake_the_receiver_ahead_of_a_full_queue_and_stay_until_taken() {
        const STOP: u8 = 1;
        const AGAIN: u8 = 2;
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(1).unwrap();
        let waiter = tokio::spawn(async move {
            let stop = poll_fn(|cx| rx.poll_signal(cx, STOP)).await;
            (stop, rx)
        });
        tokio::task::yield_now().await;
        // A signal the waiter does not wait for leaves it waiting.
        tx.signal(AGAIN);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.signal(STOP);
        let (stop, mut rx) = timeout(WAIT, waiter).await.unwrap().unwrap();
        assert_eq!(stop, STOP);
        // Polling does not lower a signal; taking does, and only the bits asked for.
        assert_eq!(
            poll_fn(|cx| rx.poll_signal(cx, STOP | AGAIN)).await,
            STOP | AGAIN
        );
        assert_eq!(rx.take_signal(AGAIN), AGAIN);
        assert_eq!(rx.take_signal(AGAIN), 0);
        assert_eq!(rx.take_signal(STOP), STOP);
        // The queued item is still there, behind the signals.
        assert_eq!(rx.try_recv(), Some(1));
    }

    #[tokio::test]
    async fn room_is_awaited_without_giving_up_an_item() {
        let (tx, mut rx) = channel::<u32>(1);
        tx.try_send(1).unwrap();
        // Full: room() waits, and dropping the wait costs nothing.
        assert!(timeout(Duration::from_millis(50), tx.room()).await.is_err());
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.room().await })
        };
        tokio::task::yield_now().await;
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(timeout(WAIT, waiter).await.unwrap().unwrap(), Ok(()));
        tx.try_send(2).unwrap();
        drop(rx);
        assert_eq!(tx.room().await, Err(Closed(())));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_burst_storage_back() {
        let (tx, mut rx) = channel::<u64>(1000);
        for i in 0..1000 {
            tx.try_send(i).unwrap();
        }
        assert!(tx.shared.state.lock().items.capacity() >= 1000);
        while rx.try_recv().is_some() {}
        assert_eq!(tx.shared.state.lock().items.capacity(), 0);
        // A small queue keeps its slots.
        tx.try_send(1).unwrap();
        rx.try_recv().unwrap();
        assert!(tx.shared.state.lock().items.capacity() > 0);
    }
}
