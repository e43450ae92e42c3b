//! A TCP proxy between clients and a test server, for what a real network does to them:
//! freeze ([`Proxy::freeze`]: nothing passes, nothing closes), reset ([`Proxy::reset`]: every
//! connection RST, new ones refused), cut ([`Proxy::cut`]: open connections close, new ones
//! pass), lose the server's replies ([`Proxy::hold_replies`]), and keep one address while the
//! server behind it restarts on another port ([`Proxy::set_target`]).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Forward,
    /// Connections stay open but nothing passes either way (a phone that lost its network).
    Frozen,
    /// Every connection is closed abortively (RST), new ones too.
    Reset,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Control {
    mode: Mode,
    /// Bumped by `cut`: connections opened before close.
    generation: u64,
    /// Bytes from the server are read and dropped.
    hold: bool,
}

pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<RwLock<SocketAddr>>,
    control: watch::Sender<Control>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let target = Arc::new(RwLock::new(upstream));
        let (control, rx) = watch::channel(Control {
            mode: Mode::Forward,
            generation: 0,
            hold: false,
        });
        let accept = {
            let target = target.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    if rx.borrow().mode != Mode::Forward {
                        let _ = client.set_zero_linger();
                        continue;
                    }
                    let to = *target.read().unwrap();
                    let ctl = rx.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(to).await else {
                            return;
                        };
                        let _ = server.set_nodelay(true);
                        pump(client, server, ctl).await
                    });
                }
            })
        };
        Proxy {
            addr,
            target,
            control,
            accept,
        }
    }

    /// An endpoint that reaches the server through this proxy.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(self.uri())
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
    }

    /// `http://ADDR`, for SDK clients.
    pub fn uri(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections go to `addr` from now on.
    pub fn set_target(&self, addr: SocketAddr) {
        *self.target.write().unwrap() = addr;
    }

    /// Stop passing bytes; connections stay open (no FIN, no RST).
    pub fn freeze(&self) {
        self.control.send_modify(|c| c.mode = Mode::Frozen);
    }

    /// Reset every connection (abortive close towards the client and the server) and refuse
    /// new ones.
    pub fn reset(&self) {
        self.control.send_modify(|c| c.mode = Mode::Reset);
    }

    /// Close every open connection, as a network change would; new connections pass.
    pub fn cut(&self) {
        self.control.send_modify(|c| c.generation += 1);
    }

    /// While `on`, what the server sends is dropped (a reply lost on the way). Cut the
    /// connections before turning it off: the byte stream has a hole.
    pub fn hold_replies(&self, on: bool) {
        self.control.send_modify(|c| c.hold = on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// Copy `from` → `to`, dropping what arrives while `hold` is set (for the server's side).
async fn copy(
    mut from: impl AsyncReadExt + Unpin,
    mut to: impl AsyncWriteExt + Unpin,
    ctl: Option<watch::Receiver<Control>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if ctl.as_ref().is_some_and(|c| c.borrow().hold) {
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn pump(mut client: TcpStream, mut server: TcpStream, mut ctl: watch::Receiver<Control>) {
    let start = *ctl.borrow_and_update();
    let mode = {
        let (cr, cw) = client.split();
        let (sr, sw) = server.split();
        let hold = ctl.clone();
        let change = async {
            loop {
                if ctl.changed().await.is_err() {
                    return None;
                }
                let c = *ctl.borrow_and_update();
                if c.generation != start.generation {
                    return Some(Mode::Forward);
                }
                if c.mode != Mode::Forward {
                    return Some(c.mode);
                }
            }
        };
        tokio::select! {
            _ = copy(cr, sw, None) => return,
            _ = copy(sr, cw, Some(hold)) => return,
            m = change => m,
        }
    };
    match mode {
        // Cut: both sockets close when they drop here.
        Some(Mode::Forward) | None => {}
        // Frozen: keep both open, pass nothing, until reset (or the proxy goes).
        Some(Mode::Frozen) => {
            while ctl.changed().await.is_ok() {
                if ctl.borrow().mode == Mode::Reset {
                    let _ = client.set_zero_linger();
                    let _ = server.set_zero_linger();
                    return;
                }
            }
        }
        Some(Mode::Reset) => {
            let _ = client.set_zero_linger();
            let _ = server.set_zero_linger();
        }
    }
}

/// A test server behind a [`Proxy`]: one endpoint for its whole life, restarts included (the
/// server itself comes back on a new port). For clients that keep their endpoint, like SDK
/// apps.
pub struct StableServer {
    pub server: crate::TestServer,
    pub proxy: Proxy,
}

impl StableServer {
    pub async fn start() -> StableServer {
        Self::start_with(&[]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> StableServer {
        let server = crate::TestServer::start_with(env).await;
        let proxy = Proxy::start(server.addr).await;
        StableServer { server, proxy }
    }

    /// `http://ADDR` of the proxy.
    pub fn endpoint(&self) -> String {
        self.proxy.uri()
    }

    pub async fn token(&self, user: &str, device: &str) -> String {
        self.server.token(user, device).await
    }

    /// SIGKILL; clients see their connections fail until [`StableServer::start_again`].
    pub async fn kill(&mut self) {
        self.server.kill().await;
    }

    /// Start the server again on its data dir; the endpoint stays.
    pub async fn start_again(&mut self) {
        self.server.start_again().await;
        self.proxy.set_target(self.server.addr);
    }
}
