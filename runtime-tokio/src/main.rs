//! `sse-gateway`: the tokio frontend of sse-gateway. It binds the sans-IO core
//! (`sse-gateway-core`) to TCP, RabbitMQ and timers and decides nothing itself.
//!
//! Threads: the main thread runs a current-thread runtime with the listener (accept, request
//! heads, ops endpoints, publish) and the sources (RabbitMQ or in-process); `server.workers`
//! shard threads each own one core `Gateway` and the sockets of its streams (`driver`).
#![forbid(unsafe_code)]

mod amqp;
mod driver;
mod inproc;
mod listener;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sse_gateway_core::config::parse_duration;
use sse_gateway_core::setup::{self, Env, Overrides, Setup};
use sse_gateway_core::{demo, issue_hs256, Front, Metrics};
use tracing::{info, warn};

/// Server-Sent Events gateway: streams RabbitMQ domain events to browsers
/// (`GET /api/v1/streams/{channel}` with a JWT).
///
/// Without a configuration file every setting has its default: the in-process source on
/// 127.0.0.1:8080 (no broker). Environment: SSE_GATEWAY_JWT_SECRET (over auth.secret),
/// SSE_GATEWAY_AMQP_URL (over broker.url; turns the broker on), RUST_LOG (log filter, default
/// info). Once listening it prints `listening on http://ADDR` on stdout (with --demo two more
/// lines follow: `token: JWT` and `demo page: URL`); logs go to stderr.
///
/// Ops endpoints: /healthz (200 while the process serves), /readyz (200 once every channel's
/// source has been reached and is up now, else 503 naming the channels down), /metrics
/// (Prometheus text). SIGTERM/SIGINT stop accepting, close every stream with a retry hint and
/// exit within server.shutdown_drain.
#[derive(Parser, Debug)]
#[command(name = "sse-gateway", version)]
struct Cli {
    /// Configuration file (TOML); key and catalogue paths in it are relative to its directory.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Demo mode: sample events on every channel, the publish endpoint and the demo page on; prints
    /// a development token and the page's URL after the listening line.
    #[arg(long)]
    demo: bool,
    /// Listen address (over server.listen), e.g. 127.0.0.1:0 for any free port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Logs as JSON lines instead of text.
    #[arg(long)]
    json_logs: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Checks a configuration file (and the files it names): prints `ok` and exits 0, or prints
    /// the error, naming the key, and exits 2.
    CheckConfig {
        /// The configuration file.
        file: PathBuf,
    },
    /// Prints an HS256 token signed with the configured secret (SSE_GATEWAY_JWT_SECRET or
    /// auth.secret), for development and tests.
    Token {
        /// The user id (`sub`).
        #[arg(long)]
        sub: String,
        /// Roles, comma-separated (put in the configured roles claim).
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Lifetime: 30s, 15m, 1h, 12h...
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Configuration file (for the secret, roles claim, issuer and audience).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::CheckConfig { file }) => load(Some(file), &Overrides::default()).map(|_| println!("ok")),
        Some(Command::Token { sub, roles, ttl, config }) => token(sub, roles, ttl, config.as_deref().or(cli.config.as_deref())),
        None => match load(cli.config.as_deref(), &Overrides { demo: cli.demo, listen: cli.listen.clone() }) {
            Ok(setup) => {
                init_logs(cli.json_logs);
                return match run(setup, cli.demo) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        ExitCode::FAILURE
                    }
                };
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Reads the configuration file, the environment and the files it names into a checked setup.
fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Setup, String> {
    let text = match path {
        Some(p) => Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let base = path.and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default();
    let env = Env {
        jwt_secret: std::env::var("SSE_GATEWAY_JWT_SECRET").ok(),
        amqp_url: std::env::var("SSE_GATEWAY_AMQP_URL").ok(),
    };
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no random source for a generated secret: {e}"))?;
    let mut read = |p: &str| std::fs::read_to_string(base.join(p)).map_err(|e| e.to_string());
    setup::load(text.as_deref(), &env, overrides, &mut read, &mut || secret.clone()).map_err(|e| e.0)
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn token(sub: &str, roles: &[String], ttl: &str, config: Option<&Path>) -> Result<(), String> {
    let ttl = parse_duration(ttl).map_err(|e| format!("--ttl: {e}"))?;
    let setup = load(config, &Overrides::default())?;
    let secret = match setup.hmac_secret() {
        Some(s) if !setup.generated_secret => s,
        _ => return Err("no secret configured (auth.secret or SSE_GATEWAY_JWT_SECRET)".into()),
    };
    let roles: Vec<String> = roles.iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
    let t = issue_hs256(&setup.settings.config.auth, secret, sub, &roles, unix_now(), ttl.as_secs())
        .map_err(|e| e.to_string())?;
    println!("{t}");
    Ok(())
}

fn init_logs(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn run(setup: Setup, demo_mode: bool) -> anyhow::Result<()> {
    let settings = setup.settings.clone();
    if setup.generated_secret && !demo_mode {
        warn!("no secret or public key configured: using a random one for this process, so every token is refused");
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => info!(open_files = n, "open-files limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-files limit"),
    }
    let metrics = Arc::new(Metrics::new(&settings));
    let server = &settings.config.server;
    let workers = match server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (shards, threads) = driver::spawn(workers, &settings, &metrics, server.max_streams)?;
    let epoch = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let front = Front::new(settings.clone(), Arc::new(setup.verifier.clone()), metrics.clone());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", server.listen))?;
        let addr = listener.local_addr()?;
        let inproc = match &settings.config.broker {
            Some(broker) => {
                amqp::start(&settings, &metrics, broker, &shards, epoch);
                None
            }
            None => Some(inproc::Inproc::start(&settings, &metrics, &shards, epoch).await),
        };
        if let (true, Some(inproc)) = (settings.config.demo.enabled, &inproc) {
            inproc::start_demo(&settings, inproc.clone());
        }
        info!(%addr, workers, source = if inproc.is_some() { "in-process" } else { "rabbitmq" }, "listening");
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on http://{addr}")?;
        if demo_mode {
            let roles: Vec<String> = demo::DEMO_ROLES.iter().map(|r| r.to_string()).collect();
            let secret = setup.hmac_secret().context("demo mode needs an HMAC secret")?;
            let t = issue_hs256(&settings.config.auth, secret, demo::DEMO_USER, &roles, unix_now(), 12 * 3600)?;
            writeln!(out, "token: {t}")?;
            writeln!(out, "demo page: http://{addr}/?token={t}")?;
        }
        out.flush()?;
        drop(out);

        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(listener::Ctx { front, shards: shards.clone(), inproc });
        let serve = tokio::spawn(listener::serve(listener, ctx, stop_rx));
        shutdown_signal().await?;
        info!("shutting down: draining streams");
        let _ = stop_tx.send(true);
        let _ = serve.await;
        shards.shutdown().await;
        anyhow::Ok(())
    })?;
    // Shards end once their streams are closed or `shutdown_drain` passed; a watchdog makes
    // sure the process exits even if a shard does not.
    let limit = settings.config.server.shutdown_drain + Duration::from_secs(2);
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        std::process::exit(0);
    });
    for t in threads {
        let _ = t.join();
    }
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
