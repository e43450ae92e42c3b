//! A TCP proxy between a client and a test server, for what a real network does to clients:
//! cut every connection ([`Proxy::cut`]), swallow the server's answers ([`Proxy::hold_replies`]),
//! and keep one address while the server behind it restarts on another port
//! ([`Proxy::set_target`]).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    target: Arc<RwLock<SocketAddr>>,
    /// Bumped by `cut`: every connection older than the new value closes.
    generation: watch::Sender<u64>,
    /// While true, bytes from the server are read and dropped, not forwarded.
    hold: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let target = Arc::new(RwLock::new(target));
        let (generation, _) = watch::channel(0u64);
        let (hold, _) = watch::channel(false);
        let accept = {
            let target = target.clone();
            let generation = generation.clone();
            let hold = hold.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let to = *target.read().unwrap();
                    let gen = generation.subscribe();
                    let hold = hold.subscribe();
                    tokio::spawn(pipe(client, to, gen, hold));
                }
            })
        };
        Proxy {
            addr,
            target,
            generation,
            hold,
            accept,
        }
    }

    /// `http://ADDR` for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// New connections go to `addr` from now on.
    pub fn set_target(&self, addr: SocketAddr) {
        *self.target.write().unwrap() = addr;
    }

    /// Close every open connection (both sides), as a network failure would.
    pub fn cut(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// While `on`, what the server sends is dropped (a reply lost on the way).
    pub fn hold_replies(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn pipe(
    client: TcpStream,
    to: SocketAddr,
    mut gen: watch::Receiver<u64>,
    hold: watch::Receiver<bool>,
) {
    let Ok(server) = TcpStream::connect(to).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let start = *gen.borrow_and_update();
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if sw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if *hold.borrow() {
                        continue;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let cut = async {
        while gen.changed().await.is_ok() {
            if *gen.borrow() != start {
                return;
            }
        }
        // The proxy is gone.
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut => {}
    }
}
