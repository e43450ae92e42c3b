//! `chat`: the terminal client. Parses flags, sets the terminal up (and always back), then runs
//! the loop: input → reducer → effects → draw.

use chat_sdk::{Client, ClientConfig};
use chat_tui::effects::{describe, Runner};
use chat_tui::input::{self, Action};
use chat_tui::render::{frame, Painter};
use chat_tui::state::{AppState, Input};
use clap::Parser;
use crossterm::event::{DisableBracketedPaste, EnableBracketedPaste};
use crossterm::terminal::{self, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::tty::IsTty;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A terminal chat client for chatd.
#[derive(Parser, Debug)]
#[command(name = "chat", version)]
struct Args {
    /// chatd's address.
    #[arg(long, env = "CHAT_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// The user's JWT (`chatd token --user alice --device laptop`).
    #[arg(long, env = "CHAT_TOKEN", hide_env_values = true)]
    token: String,
    /// This device's id: 1..64 of [A-Za-z0-9._-], the same on every start.
    #[arg(long, env = "CHAT_DEVICE", default_value = "tui")]
    device: String,
    /// Where the offline send queue and read positions live [default: ./chat-tui-USER-DEVICE].
    #[arg(long, env = "CHAT_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Most inputs taken before drawing again, so a replayed backlog is drawn once, not per
/// message, while keys still get a frame promptly.
const BURST: usize = 512;

fn main() {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => fail(&format!("starting the runtime: {e}")),
    };
    if let Err(e) = rt.block_on(run(args)) {
        fail(&e);
    }
    // The terminal reader thread is parked in a blocking read; do not wait for it.
    rt.shutdown_timeout(Duration::from_millis(100));
}

fn fail(msg: &str) -> ! {
    eprintln!("chat: {msg}");
    std::process::exit(1);
}

async fn run(args: Args) -> Result<(), String> {
    let user = chat_sdk::token_subject(&args.token).ok_or(
        "the token carries no user (`sub`); get one with `chatd token --user alice --device laptop`",
    )?;
    // Per user *and* device: the store holds this device's delivered positions, which would
    // be wrong for another device.
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        PathBuf::from(format!(
            "./chat-tui-{}-{}",
            path_safe(&user),
            path_safe(&args.device)
        ))
    });
    if !io::stdout().is_tty() || !io::stdin().is_tty() {
        return Err("chat needs a terminal (run it in a terminal or under tmux)".into());
    }
    std::fs::create_dir_all(&data_dir)
        .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
    let _lock = lock_data_dir(&data_dir)?;
    let cfg = ClientConfig::new(&args.endpoint, &args.token, &args.device).with_data_dir(&data_dir);
    let client = Client::connect(cfg).await.map_err(|e| describe(&e))?;
    let mut runner = Runner::new(client.clone()).map_err(|e| describe(&e))?;
    let mut state = AppState::new(user);

    let guard = TerminalGuard::enter().map_err(|e| format!("setting up the terminal: {e}"))?;
    spawn_key_reader(runner.sender());
    let result = ui(&mut runner, &mut state).await;
    drop(guard);

    // Closing saves and acks what was read, so the next start resumes exactly there.
    let closing = tokio::time::timeout(Duration::from_secs(5), client.close());
    let (closed, ()) = tokio::join!(closing, runner.drain(Duration::from_secs(5)));
    if closed.is_err() {
        eprintln!("chat: the connection did not close in time; unsaved positions replay next time");
    }
    result
}

async fn ui(runner: &mut Runner, state: &mut AppState) -> Result<(), String> {
    let mut out = io::BufWriter::with_capacity(64 << 10, io::stdout());
    let mut painter = Painter::default();
    let fx = state.start();
    runner.run(state, fx).await;
    loop {
        draw(runner, state, &mut painter, &mut out).await?;
        let Some(first) = runner.next().await else {
            return Ok(());
        };
        let mut input = Some(first);
        let mut taken = 0;
        while let Some(i) = input {
            if matches!(i, Input::Key(Action::Redraw)) {
                painter.invalidate();
            }
            runner.step(state, i).await;
            if state.quitting {
                return Ok(());
            }
            taken += 1;
            input = if taken < BURST {
                runner.try_next()
            } else {
                None
            };
        }
    }
}

async fn draw(
    runner: &mut Runner,
    state: &mut AppState,
    painter: &mut Painter,
    out: &mut impl Write,
) -> Result<(), String> {
    let (w, h) = terminal::size().map_err(|e| format!("reading the terminal size: {e}"))?;
    let f = frame(state, w, h, now_ms());
    if let Some(o) = state.open.as_mut() {
        o.scroll = o.scroll.min(f.max_scroll);
    }
    if f.at_top {
        if let Some(fx) = state.want_older() {
            runner.run(state, vec![fx]).await;
        }
    }
    painter.paint(out, &f).map_err(|e| format!("drawing: {e}"))
}

/// Keys are read on their own thread: crossterm's reader blocks, and the runtime must not.
fn spawn_key_reader(tx: tokio::sync::mpsc::UnboundedSender<Input>) {
    std::thread::spawn(move || loop {
        match crossterm::event::read() {
            Ok(ev) => {
                if let Some(a) = input::action(ev) {
                    if tx.send(Input::Key(a)).is_err() {
                        return;
                    }
                }
            }
            Err(_) => {
                // The terminal is gone (closed window, killed tmux pane): quit cleanly.
                let _ = tx.send(Input::Key(Action::Quit));
                return;
            }
        }
    });
}

/// Raw mode and the alternate screen for as long as it lives, restored on drop and on panic.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> io::Result<TerminalGuard> {
        terminal::enable_raw_mode()?;
        let guard = TerminalGuard;
        crossterm::execute!(io::stdout(), EnterAlternateScreen, EnableBracketedPaste)?;
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            default_hook(info);
        }));
        Ok(guard)
    }
}

fn restore() {
    let _ = crossterm::execute!(
        io::stdout(),
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = terminal::disable_raw_mode();
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// An exclusive lock on the data dir for this process's life: two clients on one store would
/// both send its queue.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, String> {
    use std::os::fd::AsRawFd;
    let path = dir.join("chat-tui.lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(format!(
            "another chat is running with {} (use --device or --data-dir for a second one)",
            dir.display()
        ));
    }
    Ok(f)
}

fn path_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
