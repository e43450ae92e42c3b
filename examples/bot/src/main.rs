//! `chat-bot`: flags, the polling loop with backoff, and a clean stop on Ctrl-C / SIGTERM.

use chat_bot::{log, Bot};
use chat_sdk::{Api, Code, SdkError};
use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A chat bot for chatd that answers !help, !time, !ping, !echo (and echoes direct messages),
/// using unary calls only.
#[derive(Parser, Debug)]
#[command(name = "chat-bot", version)]
struct Args {
    /// chatd's address.
    #[arg(long, env = "CHAT_ENDPOINT", default_value = "http://127.0.0.1:50051")]
    endpoint: String,
    /// The bot user's JWT (`chatd token --user echo-bot --device bot`).
    #[arg(long, env = "CHAT_BOT_TOKEN", hide_env_values = true)]
    token: String,
    /// The bot's device id (read positions are kept per device).
    #[arg(long, env = "CHAT_BOT_DEVICE", default_value = "bot")]
    device: String,
    /// Pause between polling rounds, in milliseconds.
    #[arg(long, env = "CHAT_BOT_POLL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    poll_ms: u64,
}

/// Longest pause after failed rounds.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Deadline of each call: a hung server must not hold a round (or a shutdown) for long.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => log::info("stopped"),
        Err(e) => {
            log::error(&e);
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let me = chat_sdk::token_subject(&args.token).ok_or(
        "the token carries no user (`sub`); mint one with `chatd token --user echo-bot --device bot`",
    )?;
    let api = Api::new(&args.endpoint, &args.token, Some(&args.device))
        .map_err(|e| e.to_string())?
        .with_timeout(CALL_TIMEOUT);
    let bot = Bot::new(api, me);
    let stop = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    spawn_signal_handler(stop.clone(), wake.clone());
    let poll = Duration::from_millis(args.poll_ms);
    log::info(&format!(
        "answering as {} (device {}) on {}, every {} ms",
        bot.user_id(),
        args.device,
        args.endpoint,
        args.poll_ms
    ));
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let pause = match bot.poll_once(&stop).await {
            Ok(r) => {
                if failures > 0 {
                    log::info("the server answers again");
                }
                failures = 0;
                if r.answered + r.duplicates + r.refused > 0 {
                    log::info(&format!(
                        "{} chat(s): answered {}, already answered {}, refused {}",
                        r.chats, r.answered, r.duplicates, r.refused
                    ));
                }
                poll
            }
            Err(e) if fatal(&e) => return Err(describe(&e)),
            Err(e) => {
                failures = failures.saturating_add(1);
                let pause = poll
                    .saturating_mul(2u32.saturating_pow(failures.min(10)))
                    .min(MAX_BACKOFF)
                    .max(poll);
                log::warn(&format!(
                    "round failed ({}); next try in {} ms",
                    describe(&e),
                    pause.as_millis()
                ));
                pause
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = wake.notified() => {}
        }
    }
    Ok(())
}

/// Errors no retry fixes: the operator must act.
fn fatal(e: &SdkError) -> bool {
    matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied)
        || matches!(e, SdkError::Config(_) | SdkError::InvalidArgument(_))
}

fn describe(e: &SdkError) -> String {
    match e.code() {
        Code::Unauthenticated => format!("the server rejected the token: {e}"),
        _ => e.to_string(),
    }
}

/// The first Ctrl-C / SIGTERM ends the loop after the current chat; a second one exits at once.
fn spawn_signal_handler(stop: Arc<AtomicBool>, wake: Arc<Notify>) {
    tokio::spawn(async move {
        for _ in 0..2 {
            if wait_for_signal().await.is_err() {
                log::warn("cannot listen for signals; stop the bot with SIGKILL");
                return;
            }
            if stop.swap(true, Ordering::Relaxed) {
                log::warn("second signal: exiting now");
                std::process::exit(130);
            }
            log::info("stopping after the current chat (again to exit now)");
            wake.notify_one();
        }
    });
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}
