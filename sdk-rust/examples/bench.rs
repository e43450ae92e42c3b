//! What one SDK client does against a real chatd on this machine: messages/s it can send
//! (queued → acked) and receive, with one send in flight per chat (the default, which keeps a
//! chat's order under refusals) and with 32, and the time from a server restart to the client
//! being live again. Starts its own chatd; prints a table and one JSON line.
//!
//!   cargo build --release -p chatd --example bench
//!   target/release/examples/bench target/release/chatd [messages]

use chat_sdk::{Client, ClientConfig, ConnectionState, Content, Event, SendOutcome};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

type R<T> = Result<T, Box<dyn std::error::Error>>;

struct Server {
    bin: String,
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Server {
    fn start(&mut self) -> R<Instant> {
        let mut child = Command::new(&self.bin)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--data-dir",
            ])
            .arg(&self.dir)
            .env("CHATD_RATE_LIMIT_PER_SEC", "1000000")
            .env("CHATD_RATE_LIMIT_BURST", "1000000")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(out).read_line(&mut line)?;
        if !line.starts_with("chatd listening on") {
            return Err(format!("unexpected first line {line:?}").into());
        }
        self.child = Some(child);
        Ok(Instant::now())
    }

    fn stop(&mut self) -> R<()> {
        if let Some(mut c) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status()?;
            c.wait()?;
        }
        Ok(())
    }

    fn token(&self, user: &str) -> R<String> {
        let out = Command::new(&self.bin)
            .args(["token", "--user", user, "--device", "bench", "--data-dir"])
            .arg(&self.dir)
            .output()?;
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

async fn client(endpoint: &str, token: &str, dir: &std::path::Path, per_chat: usize) -> R<Client> {
    let mut cfg = ClientConfig::new(endpoint, token, "bench").with_data_dir(dir);
    cfg.send_window_per_chat = per_chat;
    let c = Client::connect(cfg).await?;
    c.wait_for(ConnectionState::Connected, Duration::from_secs(30))
        .await?;
    Ok(c)
}

/// Send `n` messages from `a`; (send msgs/s acked, receive msgs/s at `b`).
async fn run(a: &Client, b: &Client, chat: &str, n: usize) -> R<(f64, f64)> {
    let mut a_ev = a.events()?;
    let mut b_ev = b.events()?;
    let start = Instant::now();
    let recv = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            match b_ev.next().await {
                Some(Event::Message(_)) => got += 1,
                Some(_) => {}
                None => break,
            }
        }
        (got, start.elapsed())
    });
    for i in 0..n {
        a.send(chat, Content::text(format!("bench {i}"))).await?;
    }
    let mut acked = 0;
    while acked < n {
        match a_ev.next().await {
            Some(Event::SendResult(r)) => match r.outcome {
                SendOutcome::Sent { .. } => acked += 1,
                SendOutcome::Failed { code, reason } => {
                    return Err(format!("{code:?} {reason}").into())
                }
            },
            Some(_) => {}
            None => return Err("closed".into()),
        }
    }
    let sent_in = start.elapsed();
    let (got, recv_in) = recv.await?;
    if got != n {
        return Err(format!("received {got} of {n}").into());
    }
    Ok((
        n as f64 / sent_in.as_secs_f64(),
        n as f64 / recv_in.as_secs_f64(),
    ))
}

#[tokio::main]
async fn main() -> R<()> {
    let args: Vec<String> = std::env::args().collect();
    let bin = args
        .get(1)
        .cloned()
        .unwrap_or_else(|| "target/release/chatd".into());
    let n: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5000);
    let tmp = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut server = Server {
        bin,
        dir: tmp.path().join("server"),
        port,
        child: None,
    };
    server.start()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let (ta, tb) = (server.token("alice")?, server.token("bob")?);
    let mut figures = Vec::new();
    for (round, per_chat) in [(0, 1usize), (1, 32)] {
        let a = client(
            &endpoint,
            &ta,
            &tmp.path().join(format!("a{round}")),
            per_chat,
        )
        .await?;
        let b = client(&endpoint, &tb, &tmp.path().join(format!("b{round}")), 1).await?;
        let chat = a
            .api()
            .create_group(&format!("bench {round}"), &["bob".to_string()])
            .await?;
        let (send, recv) = run(&a, &b, &chat.chat_id, n).await?;
        println!("per-chat window {per_chat:>2}: send {send:>8.0} msgs/s acked, receive {recv:>8.0} msgs/s");
        figures.push(format!(
            "{{\"send_window_per_chat\":{per_chat},\"send_per_sec\":{send:.0},\"receive_per_sec\":{recv:.0}}}"
        ));
        a.close().await;
        b.close().await;
    }

    // Restart: from the new server's first line to the client synced, and to a message sent
    // after the restart arriving at the other client.
    let a = client(&endpoint, &ta, &tmp.path().join("ra"), 1).await?;
    let b = client(&endpoint, &tb, &tmp.path().join("rb"), 1).await?;
    let chat = a.api().open_direct_chat("bob").await?;
    let mut b_ev = b.events()?;
    let _a_ev = a.events()?;
    server.stop()?;
    let up = server.start()?;
    b.wait_for(ConnectionState::Connected, Duration::from_secs(60))
        .await?;
    let synced = up.elapsed();
    a.send(&chat.chat_id, Content::text("after restart"))
        .await?;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), b_ev.next()).await? {
            Some(Event::Message(m)) if m.content.text == "after restart" => break,
            Some(_) => {}
            None => return Err("closed".into()),
        }
    }
    let live = up.elapsed();
    println!(
        "server restart: client synced {:.0} ms after the server was up, first new message {:.0} ms",
        synced.as_secs_f64() * 1e3,
        live.as_secs_f64() * 1e3
    );
    println!(
        "{{\"messages\":{n},\"throughput\":[{}],\"restart_synced_ms\":{:.0},\"restart_live_ms\":{:.0}}}",
        figures.join(","),
        synced.as_secs_f64() * 1e3,
        live.as_secs_f64() * 1e3
    );
    a.close().await;
    b.close().await;
    Ok(())
}
