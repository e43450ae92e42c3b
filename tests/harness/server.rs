//! Starting, stopping and restarting a `chatd` process for one test.

use crate::auth::{mint_token, Auth};
use crate::backend::{Backend, BackendInstance};
use crate::session::Session;
use crate::util::{random_hex, AdminClient, Client};
use chat_proto::v1::chat_service_client::ChatServiceClient;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// How long the server gets to print its listening line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// The same for a cluster node, which first connects to PostgreSQL (and migrates), Redis and
/// Kafka (and creates its topics), on a machine that also runs all three.
pub const CLUSTER_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a server on `backend` gets to start.
pub fn startup_timeout(backend: Backend) -> Duration {
    match backend {
        Backend::Embedded => STARTUP_TIMEOUT,
        Backend::FullStack => CLUSTER_STARTUP_TIMEOUT,
    }
}
/// How long the server gets to exit after SIGTERM.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

const LISTEN_PREFIX: &str = "chatd listening on ";

/// Path of the `chatd` binary: `CHATD_BIN`, else `target/debug/chatd` found by walking up from
/// the test executable (which lives in `target/debug/deps/`).
pub fn chatd_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CHATD_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    for dir in exe.ancestors().skip(1) {
        for candidate in [
            dir.join("chatd"),
            dir.join("target").join("debug").join("chatd"),
        ] {
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "chatd binary not found above {} (build it with `cargo build -p chatd` or set CHATD_BIN)",
        exe.display()
    );
}

/// How to start a server. `Default` = embedded backend, a fresh random `CHATD_JWT_SECRET`,
/// no extra env, flags or config file.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub backend: Backend,
    /// `Some(secret)`: passed as `CHATD_JWT_SECRET`, tokens are minted in-process.
    /// `None`: chatd creates a secret file in the data dir; tokens come from `chatd token`.
    pub jwt_secret: Option<String>,
    pub env: Vec<(String, String)>,
    /// Extra flags after `serve --listen 127.0.0.1:0 --data-dir DIR`.
    pub args: Vec<String>,
    /// TOML written to a file and passed as `--config FILE`.
    pub config_toml: Option<String>,
    /// The subcommand: `serve`, or `push-worker` for a cluster's push sender.
    pub command: &'static str,
    /// CA certificates (PEM) the harness's clients trust; any set: the server is reached over
    /// TLS (`https://`, `wss://`). See [`ServerOptions::tls`].
    pub tls_ca: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            backend: Backend::from_env(),
            jwt_secret: Some(random_hex(32)),
            env: Vec::new(),
            args: Vec::new(),
            config_toml: None,
            command: "serve",
            tls_ca: Vec::new(),
        }
    }
}

impl ServerOptions {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn envs(mut self, vars: &[(&str, &str)]) -> Self {
        for (k, v) in vars {
            self.env.push((k.to_string(), v.to_string()));
        }
        self
    }
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }
    pub fn config(mut self, toml: &str) -> Self {
        self.config_toml = Some(toml.to_string());
        self
    }
    /// Serve TLS from `files` (`--tls-cert`, `--tls-key`); the harness's clients trust
    /// `ca_pem` and connect over TLS.
    pub fn tls(mut self, files: &crate::tls::CertFiles, ca_pem: &str) -> Self {
        self.args.push("--tls-cert".into());
        self.args.push(files.cert.display().to_string());
        self.args.push("--tls-key".into());
        self.args.push(files.key.display().to_string());
        self.tls_ca.push(ca_pem.to_string());
        self
    }
    pub fn without_secret(mut self) -> Self {
        self.jwt_secret = None;
        self
    }
}

/// Result of a `chatd` run that was expected to exit on its own.
#[derive(Debug)]
pub struct ExitOutput {
    /// `None` if it did not exit within the timeout (it was killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// A running `chatd serve` for one test. Killed on drop.
pub struct TestServer {
    /// Current listening address (changes on restart: the server always binds port 0).
    pub addr: SocketAddr,
    opts: ServerOptions,
    data_dir: TempDir,
    scratch: TempDir,
    config_path: Option<PathBuf>,
    child: Option<Child>,
    stderr_path: PathBuf,
    stdout_rest: Arc<Mutex<String>>,
    generation: u32,
    backend: Arc<BackendInstance>,
    /// `CHATD_NODE_ID` (full stack only).
    node_id: Option<String>,
    cli_tokens: Mutex<HashMap<String, String>>,
}

impl TestServer {
    /// Start with default options.
    pub async fn start() -> TestServer {
        Self::start_opts(ServerOptions::default()).await
    }

    /// Start with extra environment variables (e.g. `("CHATD_MAX_GROUP_SIZE", "3")`).
    pub async fn start_with(env: &[(&str, &str)]) -> TestServer {
        Self::start_opts(ServerOptions::default().envs(env)).await
    }

    pub async fn start_opts(opts: ServerOptions) -> TestServer {
        let scratch = tempfile::Builder::new()
            .prefix("chatd-test-")
            .tempdir()
            .expect("tempdir");
        let backend = Arc::new(opts.backend.provision(scratch.path()).await);
        let node_id = (opts.backend == Backend::FullStack).then(|| "node-1".to_string());
        Self::start_node(opts, backend, node_id, scratch).await
    }

    /// Start one node on an already provisioned backend (the building block of
    /// [`crate::TestCluster`]); `node_id` becomes `CHATD_NODE_ID`.
    pub async fn start_node(
        opts: ServerOptions,
        backend: Arc<BackendInstance>,
        node_id: Option<String>,
        scratch: TempDir,
    ) -> TestServer {
        let mut server = Self::prepare_node(opts, backend, node_id, scratch);
        server.spawn().await;
        server
    }

    /// A node that is set up but not started yet ([`Self::start_again`] starts it).
    pub(crate) fn prepare_node(
        opts: ServerOptions,
        backend: Arc<BackendInstance>,
        node_id: Option<String>,
        scratch: TempDir,
    ) -> TestServer {
        let data_dir = tempfile::Builder::new()
            .prefix("chatd-data-")
            .tempdir()
            .expect("tempdir");
        let config_path = opts.config_toml.as_ref().map(|toml| {
            let p = scratch.path().join("chatd.toml");
            std::fs::write(&p, toml).expect("write config");
            p
        });
        TestServer {
            addr: "127.0.0.1:0".parse().unwrap(),
            opts,
            data_dir,
            config_path,
            stderr_path: scratch.path().join("stderr-0.log"),
            scratch,
            child: None,
            stdout_rest: Arc::new(Mutex::new(String::new())),
            generation: 0,
            backend,
            node_id,
            cli_tokens: Mutex::new(HashMap::new()),
        }
    }

    /// Run `chatd serve` with these options and expect it to exit by itself (bad configuration).
    /// Waits up to 20 s; if it is still running then, it is killed and `status` is `None`.
    /// On the full stack it gets a fresh database and namespace like a started server.
    pub async fn run_expecting_exit(opts: ServerOptions) -> ExitOutput {
        Self::run_expecting_exit_within(opts, STARTUP_TIMEOUT).await
    }

    /// [`Self::run_expecting_exit`] with another timeout.
    pub async fn run_expecting_exit_within(opts: ServerOptions, timeout: Duration) -> ExitOutput {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let scratch = tempfile::tempdir().expect("tempdir");
        let backend = opts.backend.provision(scratch.path()).await;
        let mut cmd = base_command(&opts, &backend, None);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path());
        if let Some(toml) = &opts.config_toml {
            let p = scratch.path().join("chatd.toml");
            std::fs::write(&p, toml).expect("write config");
            cmd.arg("--config").arg(p);
        }
        cmd.args(&opts.args);
        run_to_exit(cmd, timeout).await
    }

    /// Start the process of a prepared node (first start; see [`Self::start_again`]).
    pub(crate) async fn spawn(&mut self) {
        let mut cmd = base_command(&self.opts, &self.backend, self.node_id.as_deref());
        cmd.arg(self.opts.command)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(self.data_dir.path());
        if let Some(p) = &self.config_path {
            cmd.arg("--config").arg(p);
        }
        cmd.args(&self.opts.args);
        self.stderr_path = self
            .scratch
            .path()
            .join(format!("stderr-{}.log", self.generation));
        let stderr = std::fs::File::create(&self.stderr_path).expect("stderr log file");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", chatd_bin().display()));
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();

        let startup = startup_timeout(self.opts.backend);
        let first = tokio::time::timeout(startup, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                panic!(
                    "chatd did not print its listening line within {startup:?} \
                     (read result: {other:?}, exit: {status:?})\n--- stderr ---\n{}",
                    tail(&read_lossy(&self.stderr_path), 200)
                );
            }
        };
        let addr: SocketAddr = match line.trim().strip_prefix(LISTEN_PREFIX).map(str::parse) {
            Some(Ok(a)) => a,
            _ => {
                let _ = child.start_kill();
                panic!(
                    "unexpected first stdout line {line:?}, want `{LISTEN_PREFIX}127.0.0.1:PORT`\n\
                     --- stderr ---\n{}",
                    tail(&read_lossy(&self.stderr_path), 200)
                );
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        let rest = self.stdout_rest.clone();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let mut r = rest.lock().unwrap();
                r.push_str(&l);
                r.push('\n');
            }
        });
        self.addr = addr;
        self.child = Some(child);
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir.path()
    }

    /// The backend this server runs on (shared by every node of a cluster).
    pub fn backend(&self) -> &Arc<BackendInstance> {
        &self.backend
    }

    /// `CHATD_NODE_ID` of this node (full stack only).
    pub fn node_id(&self) -> Option<&str> {
        self.node_id.as_deref()
    }

    /// The options it was started with.
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// True while the process runs (as far as this handle knows: not killed or reaped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// The JWT secret the server uses, if the test chose it.
    pub fn secret(&self) -> Option<&str> {
        self.opts.jwt_secret.as_deref()
    }

    /// Everything the current process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// Send a signal to the running process.
    pub fn signal(&self, sig: i32) {
        let pid = self.pid().expect("server is not running") as libc::pid_t;
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// SIGTERM, then wait for the exit (panics if it takes longer than 15 s).
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(SHUTDOWN_TIMEOUT).await.unwrap_or_else(|| {
            panic!(
                "chatd did not exit within {SHUTDOWN_TIMEOUT:?} after SIGTERM\n--- stderr ---\n{}",
                tail(&self.stderr(), 100)
            )
        })
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, child.wait()).await;
        }
        self.child = None;
    }

    /// Wait for the running process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("server is not running");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(Err(e)) => panic!("wait for chatd: {e}"),
            Err(_) => None,
        }
    }

    /// Start the server again on the same data dir with the same settings (after
    /// `terminate`/`kill`). The address changes.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "start_again while the server is still running"
        );
        self.generation += 1;
        self.spawn().await;
    }

    /// Graceful restart: SIGTERM (asserting exit code 0), then start again on the same data
    /// dir and secret. Clients and sessions made before must be recreated (new address).
    pub async fn restart(&mut self) {
        let status = self.terminate().await;
        assert!(
            status.success(),
            "chatd exited with {status:?} after SIGTERM\n--- stderr ---\n{}",
            tail(&self.stderr(), 100)
        );
        self.start_again().await;
    }

    /// Crash restart: SIGKILL, then start again.
    pub async fn kill_and_restart(&mut self) {
        self.kill().await;
        self.start_again().await;
    }

    // ----------------------------------------------------------------- CLI

    /// Run `chatd ARGS` with the server's environment (same secret) and wait for it.
    pub async fn run_cli(&self, args: &[&str]) -> ExitOutput {
        let mut cmd = base_command(&self.opts, &self.backend, self.node_id.as_deref());
        cmd.args(args);
        run_to_exit(cmd, STARTUP_TIMEOUT).await
    }

    /// `chatd token --user U --device D --data-dir DIR` → the token (panics on failure).
    pub async fn cli_token(&self, user: &str, device: &str, extra: &[&str]) -> String {
        let dir = self.data_dir.path().to_string_lossy().to_string();
        let mut args = vec![
            "token",
            "--user",
            user,
            "--device",
            device,
            "--data-dir",
            &dir,
        ];
        args.extend_from_slice(extra);
        let out = self.run_cli(&args).await;
        assert!(
            out.status.map(|s| s.success()).unwrap_or(false),
            "chatd token failed: {out:?}"
        );
        let lines: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "chatd token should print exactly one line, got {:?}",
            out.stdout
        );
        lines[0].trim().to_string()
    }

    // -------------------------------------------------------------- clients

    /// A valid token for `user` (minted with the secret, or from `chatd token`).
    pub async fn token(&self, user: &str, device: &str) -> String {
        if let Some(secret) = &self.opts.jwt_secret {
            return mint_token(secret, user);
        }
        let key = format!("{user}\u{0}{device}");
        if let Some(t) = self.cli_tokens.lock().unwrap().get(&key) {
            return t.clone();
        }
        let t = self.cli_token(user, device, &[]).await;
        self.cli_tokens.lock().unwrap().insert(key, t.clone());
        t
    }

    /// A (lazily connecting) channel to the server on its own HTTP/2 connection.
    pub fn channel(&self) -> Channel {
        self.endpoint().connect_lazy()
    }

    pub fn endpoint(&self) -> Endpoint {
        let endpoint = Endpoint::from_shared(self.url())
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true);
        if self.opts.tls_ca.is_empty() {
            return endpoint;
        }
        let cas = self.opts.tls_ca.iter().map(Certificate::from_pem);
        endpoint
            .tls_config(ClientTlsConfig::new().ca_certificates(cas))
            .expect("TLS config")
    }

    /// `http://ADDR`, or `https://ADDR` for a server on TLS.
    pub fn url(&self) -> String {
        let scheme = if self.opts.tls_ca.is_empty() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Client with `authorization: Bearer <token>` and `x-device-id: device`.
    pub async fn client(&self, user: &str, device: &str) -> Client {
        let token = self.token(user, device).await;
        self.client_with_auth(Auth::bearer(&token, device))
    }

    /// The value of one series of the node's `/metrics` (`name` with its labels, as printed:
    /// `chatd_direct_copies_total{outcome="sent"}`); panics, naming it, if it is not there.
    pub async fn metric(&self, series: &str) -> u64 {
        self.metric_if_any(series)
            .await
            .unwrap_or_else(|| panic!("no {series} in /metrics"))
    }

    /// [`TestServer::metric`] for a series the node prints only once it has counted something.
    pub async fn metric_if_any(&self, series: &str) -> Option<u64> {
        let r = crate::http::http_get(self.addr, "/metrics")
            .await
            .expect("GET /metrics");
        let body = String::from_utf8_lossy(&r.body).to_string();
        let prefix = format!("{series} ");
        let value = body.lines().find_map(|l| l.strip_prefix(&prefix))?;
        Some(
            value
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{series}: {value:?} is not a count: {e}")),
        )
    }

    /// An AdminService client with an admin token from `chatd token --admin`.
    pub async fn admin_client(&self, user: &str) -> AdminClient {
        let token = self.cli_token(user, "console", &["--admin"]).await;
        self.admin_client_with_auth(Auth::bearer(&token, "console"))
    }

    /// An AdminService client with arbitrary headers (a user's token, none).
    pub fn admin_client_with_auth(&self, auth: Auth) -> AdminClient {
        chat_proto::v1::admin_service_client::AdminServiceClient::with_interceptor(
            self.channel(),
            auth,
        )
    }

    /// Client with arbitrary headers (bad-auth tests).
    pub fn client_with_auth(&self, auth: Auth) -> Client {
        ChatServiceClient::with_interceptor(self.channel(), auth)
    }

    /// Client on a custom endpoint (e.g. a tiny HTTP/2 window for slow-consumer tests).
    pub async fn client_on(&self, endpoint: Endpoint, user: &str, device: &str) -> Client {
        let token = self.token(user, device).await;
        ChatServiceClient::with_interceptor(endpoint.connect_lazy(), Auth::bearer(&token, device))
    }

    /// A Connect stream with nothing sent yet.
    pub async fn open_session(&self, user: &str, device: &str) -> Session {
        let client = self.client(user, device).await;
        Session::open(client, user, device)
    }

    /// Connect + Hello, then wait for Welcome, the replayed backlog and SyncComplete
    /// (available afterwards as `session.welcome`, `session.backlog`, `session.replayed`).
    pub async fn connect(&self, user: &str, device: &str) -> Session {
        let mut s = self.open_session(user, device).await;
        s.hello().await;
        s.sync().await;
        s
    }

    /// Like [`connect`](Self::connect) with `Hello.delivered_seq`.
    pub async fn connect_with_positions(
        &self,
        user: &str,
        device: &str,
        delivered_seq: HashMap<String, u64>,
    ) -> Session {
        let mut s = self.open_session(user, device).await;
        s.hello_with(delivered_seq).await;
        s.sync().await;
        s
    }

    /// A Subscribe stream (server-streaming twin of Connect); nothing awaited yet.
    pub async fn subscribe(
        &self,
        user: &str,
        device: &str,
        delivered_seq: HashMap<String, u64>,
    ) -> Session {
        let client = self.client(user, device).await;
        Session::subscribe(client, user, device, delivered_seq)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        if std::thread::panicking() {
            let node = match (&self.node_id, self.backend.namespace()) {
                (Some(id), Some(ns)) => format!("{id}, namespace {ns}, "),
                _ => String::new(),
            };
            eprintln!(
                "--- chatd stderr ({node}generation {}, {}) ---\n{}",
                self.generation,
                self.stderr_path.display(),
                tail(&read_lossy(&self.stderr_path), 80)
            );
        }
    }
}

fn base_command(opts: &ServerOptions, backend: &BackendInstance, node_id: Option<&str>) -> Command {
    let mut cmd = Command::new(chatd_bin());
    // Never inherit chatd settings from the developer's shell.
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str() {
            if k.starts_with("CHATD_") {
                cmd.env_remove(k);
            }
        }
    }
    for (k, v) in &backend.env {
        cmd.env(k, v);
    }
    if let Some(id) = node_id {
        cmd.env("CHATD_NODE_ID", id);
    }
    if let Some(secret) = &opts.jwt_secret {
        cmd.env("CHATD_JWT_SECRET", secret);
    }
    // A test's own settings (below) come after, and win.
    for (k, v) in crate::GENEROUS_LIMITS {
        cmd.env(k, v);
    }
    for (k, v) in &opts.env {
        cmd.env(k, v);
    }
    cmd
}

async fn run_to_exit(mut cmd: Command, timeout: Duration) -> ExitOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().expect("spawn chatd");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let read_out = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s).await;
        String::from_utf8_lossy(&s).to_string()
    });
    let read_err = tokio::spawn(async move {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s).await;
        String::from_utf8_lossy(&s).to_string()
    });
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) => Some(s),
        _ => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            None
        }
    };
    let stdout = tokio::time::timeout(Duration::from_secs(5), read_out)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let stderr = tokio::time::timeout(Duration::from_secs(5), read_err)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    ExitOutput {
        status,
        stdout,
        stderr,
    }
}

fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).to_string())
        .unwrap_or_default()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}
