//! Ending a user's sessions wherever they are connected (their data is being erased): this
//! node's directly, other nodes' by an eviction on their channel (a cluster's link). The
//! registry says which nodes hold sessions of the user.

use super::{wire, LocalSessions, NodeLink};
use crate::domain::user_data::SessionEvictions;
use crate::registry::Registry;
use crate::Result;
use async_trait::async_trait;
use std::{sync::Arc, time::Duration};

/// How often [`Evictions::evict`] looks whether the sessions are gone.
const POLL: Duration = Duration::from_millis(50);
/// How often it asks again while some remain: an eviction on a channel can be lost, and a
/// session can connect while it runs.
const ASK_AGAIN: Duration = Duration::from_secs(1);

pub struct Evictions {
    node_id: String,
    local: Arc<dyn LocalSessions>,
    registry: Arc<dyn Registry>,
    /// Other nodes' channels; `None` on the embedded default, where every session is here.
    link: Option<Arc<dyn NodeLink>>,
}

impl Evictions {
    pub fn new(
        node_id: String,
        local: Arc<dyn LocalSessions>,
        registry: Arc<dyn Registry>,
        link: Option<Arc<dyn NodeLink>>,
    ) -> Self {
        Evictions {
            node_id,
            local,
            registry,
            link,
        }
    }

    async fn evict_on(&self, node: &str, user_id: &str) -> Result<()> {
        match &self.link {
            Some(link) if node != self.node_id => {
                link.send_to_node(node, wire::encode_eviction(user_id))
                    .await
            }
            // The embedded registry names no nodes: every session is here.
            _ => {
                self.local.evict(user_id);
                Ok(())
            }
        }
    }
}

#[async_trait]
impl SessionEvictions for Evictions {
    /// Waits until the registry holds none of the user's sessions, so that their going away
    /// is recorded before what follows. A node that cannot be reached keeps its sessions until
    /// they end by themselves.
    async fn evict(&self, user_id: &str, limit: Duration) -> Result<bool> {
        let users = [user_id.to_string()];
        let start = tokio::time::Instant::now();
        let mut asked: Option<tokio::time::Instant> = None;
        loop {
            let nodes = self.registry.locate(&users).await?;
            if nodes.is_empty() {
                return Ok(true);
            }
            if start.elapsed() >= limit {
                return Ok(false);
            }
            if asked.is_none_or(|at| at.elapsed() >= ASK_AGAIN) {
                for node in nodes.keys() {
                    self.evict_on(node, user_id).await?;
                }
                asked = Some(tokio::time::Instant::now());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
