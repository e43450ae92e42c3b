//! The client's events for foreign code: pulled with [`EventStream::next`] (an async call the
//! foreign language awaits, so no foreign code ever runs on a tokio thread), or pushed to an
//! [`EventListener`] by a dedicated OS thread that blocks on the same stream.

use crate::types::Event;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread, ThreadId};
use std::time::Duration;
use tokio::sync::watch;

/// The client's events in order: each chat's messages once and in seq order, send results,
/// receipts, typing, presence, chat changes and connection changes. One per client.
///
/// Two ways to read it:
/// * `next()`: the simple loop. Cancelling a `next()` that is still waiting loses nothing, but
///   uniffi cannot take back a result that was ready: a `next()` cancelled in the instant
///   between "event ready" and "caller resumed" (a timeout firing just then) drops that event.
/// * `wait()` then `try_next()`: for callers that cancel reads (timeouts, select, scopes).
///   `wait()` takes nothing from the caller's point of view (a ready event stays in the stream
///   for `try_next()`), and `try_next()` is synchronous, so nothing is ever lost.
#[derive(uniffi::Object)]
pub struct EventStream {
    /// Held across the SDK's `next()`, which is cancel-safe: a dropped read releases the lock
    /// and loses nothing.
    inner: tokio::sync::Mutex<Inner>,
    closed: watch::Sender<bool>,
}

struct Inner {
    /// `wait()` peeks (`ready`) without taking, so a message counts as delivered only once
    /// `next()`/`try_next()` handed it over.
    sdk: chat_sdk::EventStream,
}

impl EventStream {
    pub(crate) fn new(sdk: chat_sdk::EventStream) -> Self {
        EventStream {
            inner: tokio::sync::Mutex::new(Inner { sdk }),
            closed: watch::Sender::new(false),
        }
    }

    /// Run `read` on the stream unless it is closed first, or `stop` turns true. Runs without a
    /// tokio runtime too (the listener thread): everything it waits on wakes by waker.
    async fn guarded<T>(
        &self,
        stop: Option<&watch::Receiver<bool>>,
        ended: T,
        read: impl AsyncFnOnce(&mut Inner) -> T,
    ) -> T {
        let mut closed = self.closed.subscribe();
        let mut stop = stop.cloned();
        let stopped = async {
            match stop.as_mut() {
                // An `Err` means the owner is gone: stop as well.
                Some(s) => {
                    let _ = s.wait_for(|v| *v).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => ended,
            _ = stopped => ended,
            v = async { read(&mut *self.inner.lock().await).await } => v,
        }
    }

    /// The next event (the one `wait()` set aside first), or `None` once closed or stopped.
    async fn take(&self, stop: Option<&watch::Receiver<bool>>) -> Option<Event> {
        self.guarded(stop, None, async |inner: &mut Inner| {
            inner.sdk.next().await.map(Event::from)
        })
        .await
    }
}

#[uniffi::export(async_runtime = "tokio")]
impl EventStream {
    /// The next event; `None` after `close()` (also for a `next()` already waiting) or once the
    /// client is closed and everything before was read. A message counts as delivered (and is
    /// acked to the server) once read from the stream. See the type's docs on cancelling.
    pub async fn next(&self) -> Option<Event> {
        if self.is_closed() {
            return None;
        }
        self.take(None).await
    }

    /// Wait until an event can be read with `try_next()`: true, or false once the stream is
    /// closed or ended. Cancelling it at any moment loses nothing.
    pub async fn wait(&self) -> bool {
        if self.is_closed() {
            return false;
        }
        self.guarded(None, false, async |inner: &mut Inner| {
            inner.sdk.ready().await
        })
        .await
    }

    /// The next event if one is waiting now (after `wait()` returned true there is one).
    /// `None` too while another read is in progress on this stream: it has one reader.
    pub fn try_next(&self) -> Option<Event> {
        if self.is_closed() {
            return None;
        }
        let mut inner = self.inner.try_lock().ok()?;
        inner.sdk.try_next().map(Event::from)
    }

    /// Stop reading: every waiting and later read returns `None` (`wait()`: false).
    /// Idempotent.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// Receives the client's events on the listener thread (see `ChatClient.set_listener`).
#[uniffi::export(callback_interface)]
pub trait EventListener: Send + Sync {
    /// One event. Called on the SDK's listener thread, one at a time and in order; the next
    /// event waits until this returns, so hand long work to another thread. An exception
    /// thrown here is reported on stderr and the listener goes on.
    fn on_event(&self, event: Event);
}

/// Name of the listener's OS thread (Linux shows its first 15 bytes).
pub const LISTENER_THREAD_NAME: &str = "chat-sdk-events";

/// A running listener thread.
pub(crate) struct Listener {
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    thread: Option<thread::JoinHandle<()>>,
    thread_id: ThreadId,
}

impl Listener {
    pub(crate) fn start(
        stream: Arc<EventStream>,
        listener: Box<dyn EventListener>,
    ) -> std::io::Result<Listener> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done_tx, done_rx) = watch::channel(false);
        let handle = thread::Builder::new()
            .name(LISTENER_THREAD_NAME.into())
            .spawn(move || {
                while let Some(ev) = block_on(stream.take(Some(&stop_rx))) {
                    let call = std::panic::AssertUnwindSafe(|| listener.on_event(ev));
                    // uniffi turns an exception of the foreign callback into a panic here (the
                    // panic hook has printed it): one bad event must not end the listener.
                    let _ = std::panic::catch_unwind(call);
                    if *stop_rx.borrow() {
                        break;
                    }
                }
                // The foreign object is released on this thread, before `done` says so.
                drop(listener);
                done_tx.send_replace(true);
            })?;
        Ok(Listener {
            stop: stop_tx,
            done: done_rx,
            thread_id: handle.thread().id(),
            thread: Some(handle),
        })
    }

    /// Let the thread deliver what is still queued for up to `drain` (the events of a closed
    /// client end by themselves), then stop it and wait for it to exit. Called from the
    /// listener's own callback it only asks the thread to stop (it cannot wait for itself).
    pub(crate) async fn shutdown(mut self, drain: Duration) {
        if thread::current().id() == self.thread_id {
            self.stop.send_replace(true);
            return;
        }
        let mut done = self.done.clone();
        if !drain.is_zero() {
            let _ = tokio::time::timeout(drain, done.wait_for(|d| *d)).await;
        }
        self.stop.send_replace(true);
        // Bounded: a callback that never returns must not hang close(); the thread then ends
        // on its own once the callback does.
        let finished = tokio::time::timeout(STOP_WAIT, done.wait_for(|d| *d)).await;
        if matches!(finished, Ok(Ok(_))) {
            if let Some(h) = self.thread.take() {
                // The thread has returned from its closure; this only reaps it.
                let _ = h.join();
            }
        }
    }
}

/// A client dropped without `close()` (or a listener replaced) must not leave a thread that
/// goes on calling into the foreign runtime, possibly while it shuts down.
impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

/// Longest wait for a listener callback in progress when stopping.
const STOP_WAIT: Duration = Duration::from_secs(10);

struct ThreadWaker(Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drive `fut` on this (non-tokio) thread, parked while it waits.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        // A spurious unpark only costs one more poll.
        thread::park();
    }
}

/// Who reads the client's events: nobody yet, the app through `events()`, or a listener.
pub(crate) enum Reader {
    Free,
    Stream,
    Listening(Listener),
}

pub(crate) type ReaderSlot = Mutex<Reader>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A client whose server never answers: its stream yields Connecting, Reconnecting, then
    /// nothing for a minute.
    async fn offline_stream() -> (chat_sdk::Client, Arc<EventStream>) {
        let mut cfg = chat_sdk::ClientConfig::new("http://127.0.0.1:9", "token", "phone");
        cfg.reconnect.initial = Duration::from_secs(60);
        cfg.reconnect.max = Duration::from_secs(60);
        let client = chat_sdk::Client::connect(cfg).await.expect("connect");
        let events = client.events().expect("events");
        (client, Arc::new(EventStream::new(events)))
    }

    #[tokio::test]
    async fn close_ends_a_waiting_read_and_every_later_one() {
        let (client, stream) = offline_stream().await;
        assert!(stream.wait().await, "the first connection change");
        assert!(matches!(stream.try_next(), Some(Event::Connection { .. })));
        let second = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
        assert!(
            matches!(second, Ok(Some(Event::Connection { .. }))),
            "{second:?}"
        );
        let waiting = {
            let s = stream.clone();
            tokio::spawn(async move { s.next().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        stream.close();
        let got = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(matches!(got, Ok(Ok(None))), "{got:?}");
        assert!(stream.next().await.is_none());
        assert!(!stream.wait().await);
        assert!(stream.try_next().is_none());
        client.close().await;
    }

    #[tokio::test]
    async fn an_event_set_aside_by_wait_comes_first() {
        let (client, stream) = offline_stream().await;
        assert!(stream.wait().await);
        // wait() again does not take another one.
        assert!(stream.wait().await);
        let first = stream.next().await;
        assert!(
            matches!(first, Some(Event::Connection { ref status }) if status.state == crate::ConnectionState::Connecting),
            "{first:?}"
        );
        client.close().await;
    }

    struct Counter(Arc<AtomicUsize>);

    impl EventListener for Counter {
        fn on_event(&self, _event: Event) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_listener_runs_on_its_own_thread_and_stops() {
        let (client, stream) = offline_stream().await;
        let n = Arc::new(AtomicUsize::new(0));
        let l = Listener::start(stream.clone(), Box::new(Counter(n.clone()))).expect("thread");
        let t0 = std::time::Instant::now();
        while n.load(Ordering::SeqCst) == 0 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "no event on the listener"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        l.shutdown(Duration::ZERO).await;
        // The stream is free again: the listener no longer holds it.
        client.close().await;
        let mut rest = 0;
        while stream.next().await.is_some() {
            rest += 1;
        }
        assert!(rest >= 1, "the CLOSED change was left for the next reader");
    }

    #[test]
    fn block_on_drives_a_future_woken_from_another_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            let _ = tx.send(7);
        });
        assert_eq!(block_on(rx).ok(), Some(7));
        let _ = t.join();
    }
}
