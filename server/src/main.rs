//! `chatd`: `serve` (the default), `token`, `migrate`.

// mimalloc instead of glibc's malloc: glibc's malloc and free took ~14 % of the server's CPU
// at 38,000 msgs/s (perf: _int_malloc, malloc_consolidate, unlink_chunk), since every message
// allocates frames, events and buffers on one thread and frees them on another. Durable direct
// throughput at 400 connections went from ~45k to ~55k acked/s (docs/bench/analysis.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc commits its arenas eagerly on Linux by default, which made an idle session on its
/// own connection cost 43 KiB instead of 26 (pages of mostly unused buffers became resident).
/// Lazily committed arenas keep the throughput and the idle memory. The option must be set
/// before the first allocation reserves an arena, so it runs as an ELF constructor, before
/// Rust's runtime starts. It takes the place of `MIMALLOC_ARENA_EAGER_COMMIT`, which mimalloc
/// would otherwise read from the environment.
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static LEAN_ARENAS: extern "C" fn() = lean_arenas;

#[cfg(target_os = "linux")]
extern "C" fn lean_arenas() {
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: mi_option_set only stores an option value; it allocates nothing.
    unsafe { libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0) }
}

use chatd::{
    auth,
    config::{Config, LogFormat, Overrides, Text},
    node,
};
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::{io::Write, path::PathBuf, process::ExitCode, time::Duration};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "chatd",
    version,
    about = "Chat server: gRPC streams for messages over a durable store"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default when no subcommand is given).
    Serve(Box<ServeArgs>),
    /// Print a signed JWT for a user and device.
    Token(TokenArgs),
    /// Apply pending PostgreSQL migrations (cluster mode) and exit.
    Migrate(MigrateArgs),
    /// Send a cluster's push notifications (the jobs on chat.push); takes the serve settings.
    PushWorker(Box<ServeArgs>),
}

#[derive(Args)]
struct MigrateArgs {
    /// PostgreSQL URL, postgres://… [env: CHATD_DATABASE_URL]
    #[arg(long)]
    database_url: Option<String>,
    /// TOML file with settings
    #[arg(long, env = "CHATD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args, Clone, Default)]
struct ServeArgs {
    /// TOML file with settings (keys as the flags, with underscores)
    #[arg(long, env = "CHATD_CONFIG")]
    config: Option<PathBuf>,
    /// Declares the settings' flags; `serve` reads them from the matches, flags apart from env.
    #[command(flatten)]
    settings: Overrides,
}

#[derive(Args)]
struct TokenArgs {
    /// The user id (the token's `sub`)
    #[arg(long)]
    user: String,
    /// The device the token is for
    #[arg(long)]
    device: Option<String>,
    /// Lifetime, e.g. 30m, 24h, 7d
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Give the token the admin role
    #[arg(long)]
    admin: bool,
    /// Data directory whose secret signs the token [env: CHATD_DATA_DIR] [default: ./chatd-data]
    #[arg(long)]
    data_dir: Option<String>,
    /// TOML file with settings
    #[arg(long, env = "CHATD_CONFIG")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Parsed in two steps to keep the matches: they tell flags from variables (see `serve`).
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Some(Command::Token(args)) => token(args),
        Some(Command::Migrate(args)) => migrate(args),
        Some(Command::Serve(args)) => serve(
            *args,
            matches.subcommand_matches("serve").unwrap_or(&matches),
            Role::Node,
        ),
        Some(Command::PushWorker(args)) => serve(
            *args,
            matches
                .subcommand_matches("push-worker")
                .unwrap_or(&matches),
            Role::PushWorker,
        ),
        None => serve(cli.serve, &matches, Role::Node),
    }
}

fn resolve(config_file: Option<&PathBuf>, flags: Overrides) -> Result<Config, String> {
    let file = config_file
        .map(|p| Overrides::from_file(p))
        .transpose()
        .map_err(|e| e.to_string())?;
    let env = Overrides::from_env(|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    Config::resolve(file, env, flags).map_err(|e| e.to_string())
}

fn token(args: TokenArgs) -> ExitCode {
    let flags = Overrides {
        data_dir: args.data_dir.clone().map(Text),
        ..Default::default()
    };
    let config = match resolve(args.config.as_ref(), flags) {
        Ok(c) => c,
        Err(e) => return fail(&format!("chatd token: {e}")),
    };
    if let Some(device) = &args.device {
        if let Err(e) = chatd::domain::ids::check_device_id(device) {
            return fail(&format!("chatd token: --device: {e}"));
        }
    }
    let secret = match token_secret(&config) {
        Ok(s) => s,
        Err(e) => return fail(&format!("chatd token: {e}")),
    };
    match auth::Authenticator::new(&secret).mint(
        &args.user,
        args.device.as_deref(),
        args.ttl,
        args.admin,
    ) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(&format!("chatd token: --user: {e}")),
    }
}

/// The key the node signs with: the configured secret, else the cluster's (in PostgreSQL), else
/// the one in the data dir.
fn token_secret(config: &Config) -> Result<Vec<u8>, String> {
    if config.jwt_secret.is_none() {
        if let Some(url) = config.database_url.clone() {
            return block_on(async move {
                let opts = chatd::store::postgres::PgOptions {
                    url,
                    pool: 2,
                    migrate: false,
                };
                let (store, _) = chatd::store::postgres::PgStore::connect(&opts).await?;
                store.shared_secret().await
            })
            .and_then(|r| r.map_err(|e| e.to_string()));
        }
    }
    auth::load_or_create_secret(config.jwt_secret.as_deref(), &config.data_dir).map_err(|e| {
        format!(
            "cannot read or create the secret in {}: {e}",
            config.data_dir.display()
        )
    })
}

fn migrate(args: MigrateArgs) -> ExitCode {
    let flags = Overrides {
        database_url: args.database_url.map(Text),
        ..Default::default()
    };
    let url = match resolve(args.config.as_ref(), flags) {
        Ok(Config {
            database_url: Some(url),
            ..
        }) => url,
        Ok(_) => {
            return fail("chatd migrate: no database: set CHATD_DATABASE_URL or --database-url")
        }
        Err(e) => return fail(&format!("chatd migrate: {e}")),
    };
    match block_on(async move { chatd::store::postgres::PgStore::migrate(&url).await }) {
        Ok(Ok(n)) => {
            println!("chatd migrate: {n} migration(s) applied; the schema is current");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => fail(&format!("chatd migrate: {e}")),
        Err(e) => fail(&format!("chatd migrate: {e}")),
    }
}

/// Runs one future on a small runtime (the CLI commands that talk to PostgreSQL).
fn block_on<T>(fut: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(fut))
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// `matches` are those of `serve` (or of `chatd` alone): clap filled the settings from flags and
/// variables alike, but flags outrank the environment, which outranks the config file, so only
/// the flags are taken from there.
/// What `serve` runs: a chat node, or a cluster's push worker.
#[derive(Clone, Copy)]
enum Role {
    Node,
    PushWorker,
}

fn serve(args: ServeArgs, matches: &ArgMatches, role: Role) -> ExitCode {
    let config = match Overrides::from_flags(matches)
        .map_err(|e| e.to_string())
        .and_then(|flags| resolve(args.config.as_ref(), flags))
    {
        Ok(c) => c,
        Err(e) => return fail(&format!("chatd: {e}")),
    };
    init_logs(config.log_format);
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(&format!("chatd: cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let on_listen = |addr| {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "chatd listening on {addr}");
            let _ = out.flush();
        };
        let ran = match role {
            Role::Node => node::run(config, shutdown, on_listen).await,
            Role::PushWorker => node::push_worker::run(config, shutdown, on_listen).await,
        };
        match ran {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&format!("chatd: {e}")),
        }
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`). JSON lines carry the event's
/// fields at the top level and the spans it happened in (session, message) under `spans`.
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// Each session is a socket: lift the soft limit on open files to the hard one, so a node can
/// hold as many sessions as the operator allowed rather than the shell's default of 1024.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("cannot raise the open-file limit");
            }
        }
    }
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::FAILURE
}
