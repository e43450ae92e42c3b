//! The writer thread: every write of the store, in submission order, folded into one
//! transaction per batch (group commit), so a hundred concurrent sends cost one fsync, not a
//! hundred. It drains whatever is queued (up to [`MAX_BATCH`]) and runs each write of
//! [`writes`](super::writes) in turn with no savepoint of its own; a refusal is that write's
//! answer, but any other failure rolls the whole batch back and every write in it is answered
//! UNAVAILABLE. After the commit it hands the batch's events, tagged with the commit id, to the
//! outbox channel in commit order, and only then answers the callers, so nobody hears of a
//! write the fan-out could miss.

use super::cache::WriterCache;
use super::wal::WalReset;
use super::{db_err, writes, DeadLetter};
use crate::domain::model::{Chat, Committed, Event, PushProvider, PushToken};
use crate::store::{Appended, CursorMove, MemberRule, NewChat, NewMessage};
use crate::{Error, Result};
use rusqlite::{Connection, TransactionBehavior};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// Most writes folded into one transaction; bounds the latency a batch adds to its last write.
const MAX_BATCH: usize = 512;

pub(super) type Reply<T> = oneshot::Sender<Result<T>>;

pub(super) enum WriteOp {
    Append(NewMessage, Reply<Appended>),
    CreateChat(NewChat, Reply<(Chat, bool)>),
    ChangeMembers {
        chat_id: String,
        rule: MemberRule,
        now: i64,
        reply: Reply<Chat>,
    },
    RegisterDevice {
        user_id: String,
        device_id: String,
        now: i64,
        reply: Reply<bool>,
    },
    Cursor(CursorMove, Reply<()>),
    SetMuted {
        chat_id: String,
        user_id: String,
        until: Option<i64>,
        reply: Reply<()>,
    },
    Purge {
        before: i64,
        limit: u32,
        reply: Reply<u64>,
    },
    LastSeen {
        user_id: String,
        at: i64,
    },
    RegisterPushToken(PushToken, Reply<()>),
    UnregisterPushToken {
        user_id: String,
        provider: PushProvider,
        token: String,
        reply: Reply<bool>,
    },
    DropPushToken {
        provider: PushProvider,
        token: String,
        reply: Reply<bool>,
    },
    PushIntentsDone {
        lane: PushProvider,
        up_to: i64,
        lanes: Vec<PushProvider>,
        reply: Reply<()>,
    },
    PushDeadLetter(DeadLetter, Reply<()>),
    EraseUser {
        user_id: String,
        reply: Reply<u64>,
    },
    Shutdown(oneshot::Sender<()>),
}

pub(super) struct Writer {
    conn: Connection,
    outbox: mpsc::Sender<Committed>,
    commit_id: u64,
    /// Leave a push intent for every message, in the message's transaction.
    push_intents: bool,
    /// Seqs and memberships of the chats written to (see [`WriterCache`]).
    cache: WriterCache,
    /// Asks for a checkpoint between batches when the WAL grew long (see [`WalReset`]).
    wal: Arc<WalReset>,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        outbox: mpsc::Sender<Committed>,
        push_intents: bool,
        wal: Arc<WalReset>,
    ) -> Writer {
        Writer {
            conn,
            outbox,
            commit_id: 0,
            push_intents,
            cache: WriterCache::default(),
            wal,
        }
    }
}

/// A write's answer, held until its batch commits (or fails as a whole).
type Pending = Box<dyn FnOnce(Option<&Error>) + Send>;

fn pending<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Pending {
    Box::new(move |batch_failed| {
        let _ = reply.send(match batch_failed {
            Some(e) => Err(e.clone()),
            None => result,
        });
    })
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<WriteOp>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = rx.blocking_recv() {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let shutdown = self.commit_batch(&mut batch);
            if let Some(done) = shutdown {
                let _ = done.send(());
                return;
            }
            // After the batch's answers, so that its callers do not wait for the pass.
            self.wal.between_batches(&self.conn);
        }
    }

    /// Runs one batch in one transaction. Returns the shutdown signal if the batch held one.
    fn commit_batch(&mut self, batch: &mut Vec<WriteOp>) -> Option<oneshot::Sender<()>> {
        crate::metrics::METRICS
            .commit_batch
            .observe(batch.len() as f64);
        let mut answers: Vec<Pending> = Vec::with_capacity(batch.len());
        let mut events: Vec<Event> = Vec::new();
        let mut shutdown = None;
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let err = db_err(e);
                for op in batch.drain(..) {
                    fail(op, &err);
                }
                return None;
            }
        };
        let mut broken = None;
        for op in batch.drain(..) {
            // Appends and cursor moves take seqs and memberships from the cache; every other
            // write may read `chats` or `members` through SQL, so the cache's rows go first,
            // and what the write changes is forgotten after it.
            let forget = match &op {
                WriteOp::Append(..) | WriteOp::Cursor(..) => Forget::Nothing,
                other => {
                    if let Err(e) = self.cache.flush(&tx) {
                        broken.get_or_insert(e);
                    }
                    match other {
                        WriteOp::ChangeMembers { chat_id, .. } => Forget::Chat(chat_id.clone()),
                        WriteOp::EraseUser { .. } => Forget::All,
                        _ => Forget::Nothing,
                    }
                }
            };
            let mark = events.len();
            let (answer, ok) = apply(
                &tx,
                &mut self.cache,
                op,
                &mut events,
                &mut shutdown,
                &mut broken,
            );
            if !ok {
                events.truncate(mark);
            }
            if let Some(answer) = answer {
                answers.push(answer);
            }
            match forget {
                Forget::Nothing => {}
                Forget::Chat(chat_id) => self.cache.forget_chat(&chat_id),
                Forget::All => self.cache.clear(),
            }
        }
        if broken.is_none() {
            if let Err(e) = self.cache.flush(&tx) {
                broken = Some(e);
            }
        }
        if self.push_intents && broken.is_none() {
            if let Err(e) = writes::push_intents(&tx, &events) {
                broken = Some(e);
            }
        }
        if let Some(err) = broken {
            // A write failed midway: nothing of this batch may stay, and nobody gets an ack.
            // The cache may hold seqs of the lost writes.
            let _ = tx.rollback();
            self.cache.clear();
            let err = Error::Unavailable(format!("the store could not commit: {err}"));
            for answer in answers {
                answer(Some(&err));
            }
            return shutdown;
        }
        self.commit_id += 1;
        match tx.commit() {
            Ok(()) => {
                self.cache.committed();
                for event in events {
                    if self
                        .outbox
                        .blocking_send(Committed {
                            commit_id: self.commit_id,
                            event,
                        })
                        .is_err()
                    {
                        break; // no fan-out running (shutting down); the store still holds it all
                    }
                }
                for answer in answers {
                    answer(None);
                }
            }
            Err(e) => {
                self.cache.clear();
                let err = db_err(e);
                for answer in answers {
                    answer(Some(&err));
                }
            }
        }
        shutdown
    }
}

/// What a write may have changed of what the cache holds.
enum Forget {
    Nothing,
    Chat(String),
    All,
}

fn fail(op: WriteOp, err: &Error) {
    fn reject<T>(reply: Reply<T>, err: &Error) {
        let _ = reply.send(Err(err.clone()));
    }
    match op {
        WriteOp::Append(_, r) => reject(r, err),
        WriteOp::CreateChat(_, r) => reject(r, err),
        WriteOp::ChangeMembers { reply, .. } => reject(reply, err),
        WriteOp::RegisterDevice { reply, .. } => reject(reply, err),
        WriteOp::Cursor(_, reply) => reject(reply, err),
        WriteOp::SetMuted { reply, .. } => reject(reply, err),
        WriteOp::Purge { reply, .. } => reject(reply, err),
        WriteOp::RegisterPushToken(_, reply) => reject(reply, err),
        WriteOp::UnregisterPushToken { reply, .. } => reject(reply, err),
        WriteOp::DropPushToken { reply, .. } => reject(reply, err),
        WriteOp::PushIntentsDone { reply, .. } => reject(reply, err),
        WriteOp::PushDeadLetter(_, reply) => reject(reply, err),
        WriteOp::EraseUser { reply, .. } => reject(reply, err),
        WriteOp::LastSeen { .. } => {}
        WriteOp::Shutdown(done) => {
            let _ = done.send(());
        }
    }
}

/// Applies one write. Returns its pending answer and whether it
/// changed anything (its events are dropped if not).
fn apply(
    tx: &rusqlite::Transaction<'_>,
    cache: &mut WriterCache,
    op: WriteOp,
    events: &mut Vec<Event>,
    shutdown: &mut Option<oneshot::Sender<()>>,
    broken: &mut Option<Error>,
) -> (Option<Pending>, bool) {
    // No savepoint per write (they cost a sub-journal of every page touched): each write makes
    // all its checks before its first change, so a refusal has changed nothing, and any other
    // failure marks the whole batch broken, to be rolled back.
    macro_rules! run {
        ($reply:expr, $body:expr) => {{
            let result = ($body)(&**tx);
            if let Err(e @ (Error::Internal(_) | Error::Unavailable(_))) = &result {
                broken.get_or_insert_with(|| e.clone());
            }
            let ok = result.is_ok();
            (Some(pending($reply, result)), ok)
        }};
    }
    match op {
        WriteOp::Append(m, reply) => run!(reply, |c| writes::append(c, cache, m, events)),
        WriteOp::CreateChat(chat, reply) => run!(reply, |c| writes::create_chat(c, chat, events)),
        WriteOp::ChangeMembers {
            chat_id,
            rule,
            now,
            reply,
        } => run!(reply, |c| writes::change_members(
            c, &chat_id, rule, now, events
        )),
        WriteOp::RegisterDevice {
            user_id,
            device_id,
            now,
            reply,
        } => {
            run!(reply, |c| writes::register_device(
                c, &user_id, &device_id, now
            ))
        }
        WriteOp::Cursor(m, reply) => run!(reply, |c| writes::move_cursor(c, cache, m, events)),
        WriteOp::SetMuted {
            chat_id,
            user_id,
            until,
            reply,
        } => run!(reply, |c| writes::set_muted(c, &chat_id, &user_id, until)),
        WriteOp::Purge {
            before,
            limit,
            reply,
        } => run!(reply, |c| writes::purge(c, before, limit)),
        WriteOp::EraseUser { user_id, reply } => {
            run!(reply, |c| writes::erase_user(c, &user_id))
        }
        WriteOp::RegisterPushToken(token, reply) => {
            run!(reply, |c| writes::register_push_token(c, &token))
        }
        WriteOp::UnregisterPushToken {
            user_id,
            provider,
            token,
            reply,
        } => run!(reply, |c| writes::unregister_push_token(
            c,
            Some(&user_id),
            provider,
            &token
        )),
        WriteOp::DropPushToken {
            provider,
            token,
            reply,
        } => run!(reply, |c| writes::unregister_push_token(
            c, None, provider, &token
        )),
        WriteOp::PushIntentsDone {
            lane,
            up_to,
            lanes,
            reply,
        } => run!(reply, |c| writes::push_intents_done(c, lane, up_to, &lanes)),
        WriteOp::PushDeadLetter(letter, reply) => {
            run!(reply, |c| writes::push_dead_letter(c, &letter))
        }
        WriteOp::LastSeen { user_id, at } => {
            let result = writes::set_last_seen(tx, &user_id, at);
            if let Err(e) = &result {
                tracing::warn!(user_id, error = %e, "cannot record last seen");
                broken.get_or_insert_with(|| e.clone());
            }
            (None, result.is_ok())
        }
        WriteOp::Shutdown(done) => {
            *shutdown = Some(done);
            (None, true)
        }
    }
}
