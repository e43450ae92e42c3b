//! Several `chatd` nodes of one cluster (full stack only): the same PostgreSQL database,
//! namespace and JWT secret, distinct `CHATD_NODE_ID`s and ports.
//!
//! ```ignore
//! let cluster = TestCluster::start(3).await;
//! let mut alice = cluster.node(0).connect("alice", "phone").await;
//! let mut bob = cluster.node(2).connect("bob", "phone").await;
//! ```
//!
//! Each node is a [`TestServer`]: `client`, `connect`, `token`, `kill`, `restart`,
//! `kill_and_restart` work on it as on a single server, and a restarted node keeps its node id,
//! database and namespace.

use crate::backend::{Backend, BackendInstance};
use crate::server::{ServerOptions, TestServer};
use futures_util::future::join_all;
use std::net::SocketAddr;
use std::sync::Arc;

/// Node ids of a test cluster: `node-1`, `node-2`, ...
pub fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

pub struct TestCluster {
    pub nodes: Vec<TestServer>,
    backend: Arc<BackendInstance>,
    opts: ServerOptions,
}

impl TestCluster {
    /// `n` nodes with default options (a fresh shared secret).
    pub async fn start(n: usize) -> TestCluster {
        Self::start_opts(n, ServerOptions::default()).await
    }

    /// `n` nodes with extra environment (applied to every node).
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> TestCluster {
        Self::start_opts(n, ServerOptions::default().envs(env)).await
    }

    /// The first node starts alone (it applies the schema with `CHATD_MIGRATE=auto`), then the
    /// others start together.
    pub async fn start_opts(n: usize, opts: ServerOptions) -> TestCluster {
        let mut c = Self::prepare(n, opts).await;
        c.nodes[0].spawn().await;
        join_all(c.nodes[1..].iter_mut().map(|s| s.spawn())).await;
        c
    }

    /// Like [`Self::start_opts`], but every node starts at the same time (they race to apply
    /// the schema).
    pub async fn start_all_at_once(n: usize, opts: ServerOptions) -> TestCluster {
        let mut c = Self::prepare(n, opts).await;
        join_all(c.nodes.iter_mut().map(|s| s.spawn())).await;
        c
    }

    /// Like [`Self::start_opts`], with more environment for every node made from the backend
    /// once it is provisioned (its database and namespace exist then): e.g. the same database
    /// reached another way ([`crate::backend_tls::TlsServices::node_env`]).
    pub async fn start_with_backend_env(
        n: usize,
        opts: ServerOptions,
        env: impl FnOnce(&BackendInstance) -> Vec<(String, String)>,
    ) -> TestCluster {
        let mut c = Self::prepare_with(n, opts, env).await;
        c.nodes[0].spawn().await;
        join_all(c.nodes[1..].iter_mut().map(|s| s.spawn())).await;
        c
    }

    async fn prepare(n: usize, opts: ServerOptions) -> TestCluster {
        Self::prepare_with(n, opts, |_| Vec::new()).await
    }

    async fn prepare_with(
        n: usize,
        mut opts: ServerOptions,
        env: impl FnOnce(&BackendInstance) -> Vec<(String, String)>,
    ) -> TestCluster {
        assert!(n >= 1, "a cluster has at least one node");
        assert_eq!(
            opts.backend,
            Backend::FullStack,
            "TestCluster needs the full stack (CHAT_TEST_BACKEND=full)"
        );
        assert!(
            opts.jwt_secret.is_some(),
            "the nodes of a cluster share CHATD_JWT_SECRET"
        );
        let scratch = tempfile::Builder::new()
            .prefix("chatd-cluster-")
            .tempdir()
            .expect("tempdir");
        let backend = Arc::new(opts.backend.provision(scratch.path()).await);
        opts.env.extend(env(&backend));
        let nodes = (0..n)
            .map(|i| {
                let scratch = tempfile::Builder::new()
                    .prefix(&format!("chatd-{}-", node_name(i)))
                    .tempdir()
                    .expect("tempdir");
                TestServer::prepare_node(opts.clone(), backend.clone(), Some(node_name(i)), scratch)
            })
            .collect();
        TestCluster {
            nodes,
            backend,
            opts,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node(&self, i: usize) -> &TestServer {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut TestServer {
        &mut self.nodes[i]
    }

    /// The shared JWT secret.
    pub fn secret(&self) -> &str {
        self.opts.jwt_secret.as_deref().expect("cluster secret")
    }

    pub fn backend(&self) -> &Arc<BackendInstance> {
        &self.backend
    }

    /// Current addresses of the nodes (a restarted node gets a new one).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// Add a node (`node-{len+1}`) to the running cluster and start it.
    pub async fn add_node(&mut self) -> &mut TestServer {
        let i = self.nodes.len();
        let scratch = tempfile::Builder::new()
            .prefix(&format!("chatd-{}-", node_name(i)))
            .tempdir()
            .expect("tempdir");
        let mut node = TestServer::prepare_node(
            self.opts.clone(),
            self.backend.clone(),
            Some(node_name(i)),
            scratch,
        );
        node.spawn().await;
        self.nodes.push(node);
        self.nodes.last_mut().unwrap()
    }
}
