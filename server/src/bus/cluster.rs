//! The node side of the cluster bus: envelopes from this node's channel go to the local
//! sessions; typing events (never stored, so never on Kafka) are routed straight to the nodes
//! of the chat's members; and this node's own commits end their senders' typing indicators.

use super::{audience, members::MemberCache, wire, AfterCommits, NodeLink};
use crate::domain::model::{Committed, Event, EPHEMERAL};
use crate::domain::typing::Typing;
use crate::registry::Registry;
use crate::session::Directory;
use crate::store::Store;
use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Membership changes made on other nodes don't pass through here, so typing routes use member
/// lists at most this old.
const MEMBERS_MAX_AGE: Duration = Duration::from_secs(5);

/// Queues an envelope from the node channel for the local sessions it names.
pub fn deliver_envelope(directory: &Directory, payload: &[u8]) {
    match wire::decode_envelope(payload) {
        Ok((targets, event)) => {
            let committed = Committed {
                commit_id: EPHEMERAL,
                event,
            };
            for t in targets {
                directory.deliver(&t.user_id, t.skip_device.as_deref(), &committed);
            }
        }
        Err(e) => tracing::error!(error = %e, "dropped an undecodable envelope"),
    }
}

/// Routes this node's ephemeral events to the nodes that must see them.
pub struct EphemeralRouter {
    members: MemberCache,
    members_since: Instant,
    registry: Arc<dyn Registry>,
    link: Arc<dyn NodeLink>,
    typing: Arc<Typing>,
    after_commits: Arc<dyn AfterCommits>,
    live_receipts_max_members: usize,
}

impl EphemeralRouter {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        link: Arc<dyn NodeLink>,
        typing: Arc<Typing>,
        after_commits: Arc<dyn AfterCommits>,
        live_receipts_max_members: usize,
    ) -> Self {
        EphemeralRouter {
            members: MemberCache::new(store),
            members_since: Instant::now(),
            registry,
            link,
            typing,
            after_commits,
            live_receipts_max_members,
        }
    }

    /// Runs until `local_commits` (what this node committed, in commit order) closes or the
    /// node shuts down; `ephemeral` brings typing from this node's sessions.
    pub async fn run(
        mut self,
        mut ephemeral: mpsc::Receiver<Event>,
        mut local_commits: mpsc::Receiver<Committed>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut ephemeral_open = true;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                committed = local_commits.recv() => match committed {
                    Some(c) => self.committed(c.event).await,
                    None => return,
                },
                event = ephemeral.recv(), if ephemeral_open => match event {
                    Some(event) => self.route(event).await,
                    None => ephemeral_open = false,
                },
            }
        }
    }

    /// A message ends its sender's typing: the STOPPED goes through the outbox behind the
    /// message, so members see the message first, as on a single node.
    async fn committed(&mut self, event: Event) {
        if let Event::Message(m) = &event {
            if let Some(stop) = self.typing.message_ended_typing(m) {
                if let Err(e) = self.after_commits.enqueue(&m.chat_id, &stop).await {
                    tracing::warn!(chat_id = m.chat_id, error = %e, "typing STOPPED dropped");
                }
            }
        }
    }

    /// Best effort, like typing itself: a failure drops the event with a log line.
    async fn route(&mut self, event: Event) {
        let Some(chat_id) = audience::chat_of(&event) else {
            return;
        };
        if self.members_since.elapsed() > MEMBERS_MAX_AGE {
            self.members.clear();
            self.members_since = Instant::now();
        }
        let members = match self.members.get(chat_id, 1).await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(chat_id, error = %e, "typing event dropped: cannot read members");
                return;
            }
        };
        let targets = audience::targets(&event, &members, self.live_receipts_max_members);
        if let Err(e) = hand_off(&*self.registry, &*self.link, &targets, &wire::encode_event(&event)).await {
            tracing::warn!(chat_id, error = %e, "typing event dropped");
        }
    }
}

/// Sends `payload` to every node holding a session of one of `targets`, each node getting the
/// targets it holds. Returns the users that have no live session anywhere.
pub async fn hand_off(
    registry: &dyn Registry,
    link: &dyn NodeLink,
    targets: &[audience::Target],
    payload: &[u8],
) -> crate::Result<Vec<String>> {
    let mut users: Vec<String> = targets.iter().map(|t| t.user_id.clone()).collect();
    users.sort_unstable();
    users.dedup();
    let nodes = registry.locate(&users).await?;
    // A user with devices on several nodes is under each of them.
    let mut nodes_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for (node, here) in &nodes {
        for u in here {
            nodes_of.entry(u.as_str()).or_default().push(node.as_str());
        }
    }
    let mut by_node: HashMap<&str, Vec<audience::Target>> = HashMap::new();
    for t in targets {
        for node in nodes_of.get(t.user_id.as_str()).into_iter().flatten() {
            by_node.entry(node).or_default().push(t.clone());
        }
    }
    for (node, on_node) in by_node {
        link.send_to_node(node, wire::encode_envelope(&on_node, payload))
            .await?;
    }
    Ok(users
        .into_iter()
        .filter(|u| !nodes_of.contains_key(u.as_str()))
        .collect())
}
