//! A real `chatd` for one test: started on a free port in a temporary data dir, killed on drop.
//! The binary is `CHATD_BIN`, else `target/debug/chatd` found above the test executable.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

const LISTENING: &str = "chatd listening on ";

pub struct Chatd {
    child: Option<Child>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub data: tempfile::TempDir,
}

pub fn chatd_bin() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("CHATD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1) {
        for c in [dir.join("chatd"), dir.join("target/debug/chatd")] {
            if c.is_file() {
                return Ok(c);
            }
        }
    }
    Err(format!(
        "no chatd binary above {}: run `cargo build -p chatd` first or set CHATD_BIN",
        exe.display()
    )
    .into())
}

impl Chatd {
    pub fn start() -> Result<Chatd, Error> {
        let data = tempfile::Builder::new()
            .prefix("chatd-example-")
            .tempdir()?;
        let mut s = Chatd {
            child: None,
            addr: "127.0.0.1:0".into(),
            data,
        };
        s.spawn()?;
        Ok(s)
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spawn(&mut self) -> Result<(), Error> {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("chatd.stderr"))?;
        let mut child = Command::new(chatd_bin()?)
            .args(["serve", "--listen", &self.addr, "--data-dir"])
            .arg(self.data.path().join("server"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()?;
        let stdout = child.stdout.take().ok_or("chatd without stdout")?;
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let _ = tx.send(line);
            }
        });
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "chatd did not print its address within 30 s")?;
        let addr = first
            .strip_prefix(LISTENING)
            .ok_or_else(|| format!("unexpected first line from chatd: {first:?}"))?;
        self.addr = addr.trim().to_string();
        Ok(())
    }

    /// A token signed with this server's secret.
    pub fn token(&self, user: &str, device: &str) -> Result<String, Error> {
        let out = Command::new(chatd_bin()?)
            .args(["token", "--user", user, "--device", device, "--data-dir"])
            .arg(self.data.path().join("server"))
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "chatd token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    /// Kill the server (no goodbye to anyone).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same address and data.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.kill();
        self.spawn()
    }
}

impl Drop for Chatd {
    fn drop(&mut self) {
        self.kill();
    }
}
