//! The node side of the cluster bus: envelopes from this node's channel go to the local
//! sessions; typing events (never stored, so never on Kafka) are routed straight to the nodes
//! of the chat's members; and this node's own commits end their senders' typing indicators.

use super::{
    audience, direct::DirectCopier, members::MemberCache, wire, AfterCommits, LocalSessions,
    NodeLink,
};
use crate::domain::model::{Committed, Event, DIRECT_COPY, EPHEMERAL};
use crate::domain::typing::Typing;
use crate::metrics::{ClusterHop, METRICS};
use crate::redis::pubsub::RedisPubSub;
use crate::registry::Registry;
use crate::store::Store;
use crate::Result;
use async_trait::async_trait;
use std::{
    collections::{hash_map::Entry, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

/// Nodes hear of each other over Redis Pub/Sub: at most once (a node that was disconnected
/// catches up by resync, see `session`), in order per channel.
#[async_trait]
impl NodeLink for RedisPubSub {
    async fn send_to_node(&self, node_id: &str, envelope: Vec<u8>) -> Result<()> {
        self.publish_to_node(node_id, envelope).await
    }

    async fn send_many(&self, envelopes: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.publish_to_nodes(envelopes).await
    }
}

/// Membership changes made on other nodes don't pass through here, so typing routes use member
/// lists at most this old.
const MEMBERS_MAX_AGE: Duration = Duration::from_secs(5);

/// Queues an envelope from the node channel for the local sessions it names, or ends a user's
/// sessions as another node's eviction asks.
pub fn deliver_envelope(directory: &dyn LocalSessions, payload: &[u8]) {
    match wire::decode_node_message(payload) {
        Ok(wire::NodeMessage::Deliver(targets, event)) => {
            to_sessions(directory, targets, event, false)
        }
        Ok(wire::NodeMessage::Offer(targets, event)) => {
            to_sessions(directory, targets, event, true)
        }
        Ok(wire::NodeMessage::Evict(user_id)) => {
            let n = directory.evict(&user_id);
            tracing::info!(
                user_id,
                sessions = n,
                "ended a user's sessions for their erasure"
            );
        }
        Err(e) => tracing::error!(error = %e, "dropped an undecodable envelope"),
    }
}

/// Queues an event from another node for the sessions of `targets`: its ordered delivery, or
/// (`direct_copy`) a copy offered ahead of it.
fn to_sessions(
    directory: &dyn LocalSessions,
    targets: Vec<audience::Target>,
    event: Event,
    direct_copy: bool,
) {
    let (hop, commit_id) = if direct_copy {
        (ClusterHop::DirectReceived, DIRECT_COPY)
    } else {
        (ClusterHop::NodeReceived, EPHEMERAL)
    };
    if let Event::Message(m) = &event {
        METRICS.cluster_hop(hop, m.created_at);
    }
    let committed = Committed { commit_id, event };
    for t in targets {
        let skip = t.skip_device.as_deref();
        if direct_copy {
            directory.offer(&t.user_id, skip, &committed);
        } else {
            directory.deliver(&t.user_id, skip, &committed);
        }
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
    direct: Option<DirectCopier>,
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
            direct: None,
        }
    }

    /// Hands each message this node commits to `copier` too (see [`super::direct`]).
    pub fn with_direct_copies(mut self, copier: DirectCopier) -> Self {
        self.direct = Some(copier);
        self
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
        if let (Some(copier), Event::Message(m)) = (&self.direct, &event) {
            copier.copy(m);
        }
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
        if let Err(e) = hand_off(
            &*self.registry,
            &*self.link,
            &targets,
            &wire::encode_event(&event),
        )
        .await
        {
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
    let mut offline = hand_off_batch(registry, link, &[(targets, payload)]).await?;
    Ok(offline.pop().unwrap_or_default())
}

/// [`hand_off`] for several events at once: one registry
/// lookup, then every event's envelopes in event order through one
/// [`NodeLink::send_many`], so each node gets them in that order. Returns, per event, the
/// targeted users with no live session anywhere.
pub async fn hand_off_batch(
    registry: &dyn Registry,
    link: &dyn NodeLink,
    events: &[(&[audience::Target], &[u8])],
) -> crate::Result<Vec<Vec<String>>> {
    let located = Located::locate_targets(registry, events.iter().map(|(t, _)| *t)).await?;
    let mut envelopes = Vec::new();
    let mut offline = Vec::with_capacity(events.len());
    for (targets, payload) in events {
        located.envelopes(targets, payload, &mut envelopes);
        let mut users: Vec<String> = targets
            .iter()
            .filter(|t| !located.is_online(&t.user_id))
            .map(|t| t.user_id.clone())
            .collect();
        users.sort_unstable();
        users.dedup();
        offline.push(users);
    }
    if !envelopes.is_empty() {
        link.send_many(envelopes).await?;
    }
    Ok(offline)
}

/// Where some users are connected, from one registry lookup.
pub(super) struct Located {
    /// user → the nodes holding a live session of theirs.
    nodes_of: HashMap<String, Vec<String>>,
}

impl Located {
    /// Where the users of some target lists are, from one lookup.
    pub(super) async fn locate_targets<'a>(
        registry: &dyn Registry,
        targets: impl Iterator<Item = &'a [audience::Target]>,
    ) -> crate::Result<Located> {
        let mut users: Vec<String> = targets
            .flat_map(|targets| targets.iter().map(|t| t.user_id.clone()))
            .collect();
        users.sort_unstable();
        users.dedup();
        Located::locate(registry, &users).await
    }

    async fn locate(registry: &dyn Registry, users: &[String]) -> crate::Result<Located> {
        let mut nodes_of: HashMap<String, Vec<String>> = HashMap::new();
        for (node, held) in registry.locate(users).await? {
            for user in held {
                nodes_of.entry(user).or_default().push(node.clone());
            }
        }
        Ok(Located { nodes_of })
    }

    /// Whether the user has a live session on some node.
    fn is_online(&self, user_id: &str) -> bool {
        self.nodes_of.contains_key(user_id)
    }

    /// Appends one envelope of `payload` for each node holding sessions of `targets`,
    /// addressed to the targets it holds (see [`Located::per_node`]).
    fn envelopes(
        &self,
        targets: &[audience::Target],
        payload: &[u8],
        out: &mut Vec<(String, Vec<u8>)>,
    ) {
        out.extend(
            self.per_node(targets).into_iter().map(|(node, on_node)| {
                (node.to_string(), wire::encode_envelope(&on_node, payload))
            }),
        );
    }

    /// The nodes holding sessions of `targets`, each with the targets it holds (a user with
    /// devices on several nodes is under each); nodes in the order they first appear among
    /// the targets.
    pub(super) fn per_node(
        &self,
        targets: &[audience::Target],
    ) -> Vec<(&str, Vec<audience::Target>)> {
        let mut per_node: Vec<(&str, Vec<audience::Target>)> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for t in targets {
            for node in self.nodes_of.get(&t.user_id).into_iter().flatten() {
                let node: &str = node;
                let i = match index.entry(node) {
                    Entry::Occupied(e) => *e.get(),
                    Entry::Vacant(e) => {
                        per_node.push((node, Vec::new()));
                        *e.insert(per_node.len() - 1)
                    }
                };
                per_node[i].1.push(t.clone());
            }
        }
        per_node
    }
}
