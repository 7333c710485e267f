//! The command line both binaries share: arguments, the `check-config` and `token`
//! subcommands, start-up (configuration file, environment, the files it names, logs, the
//! open-files limit) and the lines printed once listening. A frontend's `main` is one call:
//!
//! ```no_run
//! # fn run(_: sse_gateway_core::cli::Launch) -> Result<(), std::io::Error> { Ok(()) }
//! fn main() -> std::process::ExitCode {
//!     sse_gateway_core::cli::main("sse-gateway", 1, run) // `run` owns the runtime from here
//! }
//! ```
//!
//! Unlike the rest of the crate, this module does process IO: it reads files and the
//! environment, writes stdout, installs the log subscriber, raises a resource limit and reads the
//! wall clock (token `iat`/`exp`, the in-process event-id epoch). It holds no socket and no
//! executor, so it stays runtime-free like the rest of the core.

use std::fmt::Display;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tracing::{info, warn};

use crate::config::{parse_duration, Settings};
use crate::setup::{self, Env, Overrides, Setup};
use crate::{contract, demo, issue_hs256, Front, Metrics, ReloadableVerifier};

/// Server-Sent Events gateway: streams RabbitMQ domain events to browsers
/// (`GET /api/v1/streams/{channel}` with a JWT).
///
/// Without a configuration file every setting has its default: the in-process source on
/// 127.0.0.1:8080 (no broker). Environment: SSE_GATEWAY_JWT_SECRET (over auth.secret),
/// SSE_GATEWAY_AMQP_URL (over broker.url; turns the broker on), RUST_LOG (log filter, default
/// info,lapin=off). Once listening it prints `listening on http://ADDR` on stdout (with --demo two more
/// lines follow: `token: JWT` and `demo page: URL`); logs go to stderr.
///
/// Ops endpoints: /healthz (200 while the process serves), /readyz (200 once every channel's
/// source has been reached and is up now, else 503 naming the channels down, or saying the gateway is shutting down), /metrics
/// (Prometheus text). SIGTERM/SIGINT stop accepting, stop the sources (at most 3s), close every
/// stream with a retry hint and exit within server.shutdown_drain plus those 3s and 2s.
#[derive(Parser, Debug)]
#[command(name = "sse-gateway", version)]
pub struct Cli {
    /// Configuration file (TOML); key and catalogue paths in it are relative to its directory.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Demo mode: sample events on every channel, the publish endpoint and the demo page on; prints
    /// a development token and the page's URL after the listening line.
    #[arg(long)]
    pub demo: bool,
    /// Listen address (over server.listen), e.g. 127.0.0.1:0 for any free port.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Logs as JSON lines instead of text.
    #[arg(long)]
    pub json_logs: bool,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
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
    /// Prints the contract with the web UI, generated from the event catalogue and configuration
    /// in force (the file's `catalogue`, else the shipped one): channels, event types and payload
    /// schemas per version, the error/warning/heartbeat events, roles and token options.
    /// `docs/asyncapi.json`, `docs/events.schema.json` and `docs/events.d.ts` are its output for
    /// the defaults.
    #[command(group(clap::ArgGroup::new("format").required(true).args(["asyncapi", "json_schema", "typescript"])))]
    Catalogue {
        /// An AsyncAPI 3.0 document (JSON).
        #[arg(long)]
        asyncapi: bool,
        /// The event payloads as one JSON Schema (draft 2020-12) document.
        #[arg(long)]
        json_schema: bool,
        /// TypeScript declarations: payload interfaces and a discriminated union per channel.
        #[arg(long)]
        typescript: bool,
        /// Configuration file (its catalogue, channels, roles and token options shape the output).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

impl Cli {
    /// Parses the process arguments; `name` is the binary's name in `--help` and `--version`.
    /// Exits on `--help`, `--version` and usage errors, as clap does.
    pub fn parse_as(name: &'static str) -> Cli {
        let matches = Cli::command().name(name).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

/// What a frontend's `run` gets: a checked configuration and what start-up derived from it.
#[derive(Debug)]
pub struct Launch {
    /// The configuration, keys and verifier.
    pub setup: Setup,
    /// `--demo` was given (the token and page lines are printed once listening).
    pub demo: bool,
    /// The process's metrics, shared by the router, the shards and the sources.
    pub metrics: Arc<Metrics>,
    /// Shard (worker) threads to start: `server.workers`, or the frontend's default for 0.
    pub workers: usize,
    /// The start, as time since the Unix epoch: the in-process source's and the classic queues'
    /// ids carry [`crate::process_epoch`] of it (D6).
    pub started: Duration,
    /// The verifier every request goes through, its keys replaced at SIGHUP ([`KeyReload`]).
    pub verifier: Arc<ReloadableVerifier>,
    /// The configuration file's directory, against which the key files' paths are resolved.
    config_dir: PathBuf,
}

impl Launch {
    /// The resolved settings.
    pub fn settings(&self) -> &Arc<Settings> {
        &self.setup.settings
    }

    /// The request router for this configuration.
    pub fn front(&self) -> Front {
        Front::new(self.settings().clone(), self.verifier.clone(), self.metrics.clone())
    }

    /// What SIGHUP does, for the thread that waits for signals.
    pub fn key_reload(&self) -> KeyReload {
        KeyReload {
            settings: self.settings().clone(),
            secret: self.setup.keys.secret.clone(),
            verifier: self.verifier.clone(),
            config_dir: self.config_dir.clone(),
        }
    }

    /// Logs `listening` and prints the ready lines on stdout (the contract the README states):
    /// `listening on http://ADDR`, then with `--demo` the development token and the page's URL.
    /// `source` names the event source in the log (`in-process` or `rabbitmq`).
    pub fn ready(&self, addr: SocketAddr, source: &str) -> Result<(), String> {
        info!(%addr, workers = self.workers, source, "listening");
        let mut out = std::io::stdout().lock();
        let mut lines = format!("listening on http://{addr}\n");
        if self.demo {
            let settings = self.settings();
            let roles = demo::roles(settings);
            let secret = self.setup.hmac_secret().ok_or("demo mode needs an HMAC secret")?;
            let t = issue_hs256(&settings.config.auth, secret, demo::DEMO_USER, &roles, unix_now(), 12 * 3600)
                .map_err(|e| e.to_string())?;
            let page = page_addr(addr);
            if !addr.ip().is_loopback() {
                warn!(%addr, "--demo listens beyond loopback: the demo page, its events and the publish endpoint are reachable from the network over plain HTTP (the printed token publishes)");
            }
            lines.push_str(&format!("token: {t}\ndemo page: http://{page}/?token={t}\n"));
        }
        out.write_all(lines.as_bytes()).and_then(|()| out.flush()).map_err(|e| format!("stdout: {e}"))
    }
}

/// SIGHUP: the key files (`auth.public_key_file`, `auth.jwks_file`) read again and put in force
/// for every request from then on ([`setup::reload_keys`]), so that a rotated key (an identity
/// provider's new signing key added to the JWKS) is taken without a restart. Streams already
/// open go on until their token's `exp`, as they would have. Nothing else is read again.
pub struct KeyReload {
    settings: Arc<Settings>,
    secret: Option<Vec<u8>>,
    verifier: Arc<ReloadableVerifier>,
    config_dir: PathBuf,
}

impl std::fmt::Debug for KeyReload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("KeyReload").field("verifier", &self.verifier).field("config_dir", &self.config_dir).finish_non_exhaustive()
    }
}

impl KeyReload {
    /// Reads the key files again and, if they make a verifier the start would have taken, puts
    /// it in force; logs what it did (an error keeps the keys in force).
    pub fn on_hangup(&self) {
        let auth = &self.settings.config.auth;
        if !setup::has_key_files(auth) {
            warn!("{SIGHUP_NO_KEY_FILES}");
            return;
        }
        let mut read = |p: &str| read_bounded(&self.config_dir.join(p));
        match setup::reload_keys(&self.settings, self.secret.clone(), &mut read) {
            Ok(v) => {
                let kids = v.jwks_kids();
                self.verifier.replace(v);
                info!(
                    public_key_file = auth.public_key_file.as_deref().unwrap_or(""),
                    jwks_file = auth.jwks_file.as_deref().unwrap_or(""),
                    jwks_kids = kids.join(","),
                    "{SIGHUP_KEYS_RELOADED}"
                );
            }
            Err(e) => tracing::error!(error = %e, "{SIGHUP_KEYS_KEPT}"),
        }
    }
}

/// Logged at SIGHUP when the key files were read again and are in force.
pub const SIGHUP_KEYS_RELOADED: &str =
    "SIGHUP: key files read again; new requests are verified with them (the rest of the configuration is read at start only)";
/// Logged at SIGHUP when a key file could not be read or is refused.
pub const SIGHUP_KEYS_KEPT: &str = "SIGHUP: key files not reloaded; the keys in force are kept";
/// Logged at SIGHUP when the configuration names no key file.
pub const SIGHUP_NO_KEY_FILES: &str = "SIGHUP: no key file is configured (auth.public_key_file, auth.jwks_file), so nothing is read again; \
                                       the configuration is read at start only: restart the process (SIGTERM drains) to apply a change";

/// Where the demo page is opened: `addr`, or loopback for a wildcard address (`0.0.0.0`,
/// `[::]`), which is no place a browser can open.
fn page_addr(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port())),
        _ => addr,
    }
}

/// The whole of a frontend's `main`: parses the arguments as `name`, runs a subcommand or loads
/// the configuration, installs the logs and calls `run`. `workers_for_zero` is what
/// `server.workers = 0` means for this frontend. Exit status: 0, 1 when `run` fails (logged),
/// 2 for a usage or configuration error (on stderr).
pub fn main<E: Display>(name: &'static str, workers_for_zero: usize, run: impl FnOnce(Launch) -> Result<(), E>) -> ExitCode {
    let cli = Cli::parse_as(name);
    let result = match &cli.command {
        Some(Command::CheckConfig { file }) => load(Some(file), &Overrides::default()).map(|setup| {
            // Valid, but a gateway started so would refuse every token: said on stderr (the
            // answer is still `ok`: a development setup may mean it).
            for w in warnings(&setup, false) {
                eprintln!("warning: {w}");
            }
            println!("ok")
        }),
        Some(Command::Token { sub, roles, ttl, config }) => token(sub, roles, ttl, config.as_deref().or(cli.config.as_deref())),
        Some(Command::Catalogue { asyncapi, json_schema, typescript, config }) => {
            let format = match (asyncapi, json_schema, typescript) {
                (true, _, _) => contract::Format::AsyncApi,
                (_, true, _) => contract::Format::JsonSchema,
                _ => contract::Format::TypeScript,
            };
            catalogue(format, config.as_deref().or(cli.config.as_deref()))
        }
        None => match load(cli.config.as_deref(), &Overrides { demo: cli.demo, listen: cli.listen.clone() }) {
            Ok(setup) => {
                init_logs(cli.json_logs);
                return match run(launch(setup, cli.demo, workers_for_zero, config_dir(cli.config.as_deref()))) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        ExitCode::FAILURE
                    }
                };
            }
            // Where the logs are JSON lines, the reason the gateway did not start is one too,
            // whatever RUST_LOG lets through (it is the only line there will be).
            Err(e) if cli.json_logs => {
                let once = tracing_subscriber::fmt().json().with_writer(std::io::stderr).finish();
                tracing::subscriber::with_default(once, || tracing::error!("{e}"));
                return ExitCode::from(2);
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

/// Open files wanted beside `server.max_streams` (else a warning at start), with
/// [`OPEN_FILES_PER_THREAD`] for each worker and the main, sources and signals threads.
const OPEN_FILES_HEADROOM: u64 = 512;
/// Open files an event loop thread may hold (tokio: epoll, eventfd, signal pipe, and one spare).
const OPEN_FILES_PER_THREAD: u64 = 4;

/// Said when no key material is configured (nor SSE_GATEWAY_JWT_SECRET set).
const NO_KEY: &str = "no secret or public key configured (auth.secret, SSE_GATEWAY_JWT_SECRET, auth.public_key_file, auth.jwks_file): \
                      using a random one for this process, so every token is refused";

/// What a valid configuration may not mean: said by `check-config` and logged at start.
fn warnings(setup: &Setup, demo: bool) -> Vec<String> {
    let config = &setup.settings.config;
    let mut out = Vec::new();
    if setup.generated_secret && !demo {
        out.push(NO_KEY.to_string());
    }
    // A file written for RabbitMQ whose broker URL went missing (an environment file without
    // SSE_GATEWAY_AMQP_URL) would run, ready, on the in-process source: no events at all.
    if config.broker.is_none() {
        let named: Vec<&str> =
            config.channels.iter().filter(|(_, c)| c.source.is_some() && c.enabled != Some(false)).map(|(n, _)| n.as_str()).collect();
        if !named.is_empty() {
            out.push(format!(
                "[channels.<name>.source] is set for {}, but there is no [broker] (nor SSE_GATEWAY_AMQP_URL): \
                 every channel is fed by the in-process source",
                named.join(", ")
            ));
        }
    }
    let auth = &config.auth;
    // RFC 7518 3.2: an HMAC key at least as long as the hash's output.
    let hash_len = auth.algorithms.iter().filter_map(|a| [("HS256", 32), ("HS384", 48), ("HS512", 64)].into_iter().find(|(n, _)| n == a)).max_by_key(|(_, l)| *l);
    if let (Some((alg, need)), Some(secret)) = (hash_len, setup.hmac_secret()) {
        if secret.len() < need && !setup.generated_secret {
            out.push(format!(
                "[auth] secret (or SSE_GATEWAY_JWT_SECRET) is {} bytes long, shorter than {alg}'s {need}-byte hash (RFC 7518 3.2 asks for at least that): \
                 a short secret is easier to guess offline from one token",
                secret.len()
            ));
        }
    }
    // A user is its `sub`: with keys of two issuers (a JWKS during a move between identity
    // providers), the same `sub` from each would be one user (each other's events, streams).
    if auth.issuer.is_none() && auth.algorithms.iter().any(|a| !a.starts_with("HS")) {
        out.push(
            "[auth] issuer is not set: a token of any issuer whose key is configured is accepted, and users are told apart \
             by `sub` alone; set auth.issuer to the identity provider's"
                .to_string(),
        );
    }
    if auth.audience.is_none() && auth.algorithms.iter().any(|a| !a.starts_with("HS")) {
        out.push(
            "[auth] audience is not set: tokens the identity provider issues for any of its other services are accepted too; \
             set auth.audience to this gateway's"
                .to_string(),
        );
    }
    // D10: a per-connection jitter, so that browsers dropped together (a restart) do not all
    // come back in the same instant.
    if config.streams.retry_jitter.is_zero() {
        out.push(
            "streams.retry_jitter is 0: every browser reconnects after exactly streams.retry, all at once after a restart; \
             a second or two spreads them"
                .to_string(),
        );
    }
    // SSE's own `retry:` field is in milliseconds, and a bare number here is seconds: `retry =
    // 3000` has every browser wait 50 minutes to come back after a restart.
    for (key, value) in [("streams.retry", config.streams.retry), ("streams.evicted_retry", config.streams.evicted_retry)] {
        if value > std::time::Duration::from_secs(60) {
            out.push(format!(
                "{key} is {}s: a browser waits that long to reconnect (a bare number is seconds; \"3000ms\" is 3 s)",
                value.as_secs()
            ));
        }
    }
    // Proxies and load balancers commonly close a connection idle for 60 s (nginx's
    // proxy_read_timeout); the heartbeat is what keeps a quiet stream from looking idle.
    if config.streams.heartbeat > std::time::Duration::from_secs(60) {
        out.push(format!(
            "streams.heartbeat is {}s: a proxy that closes connections idle for 60 s (nginx's default) cuts quiet streams",
            config.streams.heartbeat.as_secs()
        ));
    }
    // A consumer that ran for reconnect_max counts as healthy (the backoff starts afresh): a
    // broker that cuts every consumer soon after it starts would be reconnected to in a loop.
    if config.broker.as_ref().is_some_and(|b| b.reconnect_max < std::time::Duration::from_secs(1)) {
        out.push(
            "broker.reconnect_max is under 1s: a consumer that ran that long counts as healthy and the next loss reconnects \
             after broker.reconnect_min again, so a broker that cuts each consumer soon after it starts is reconnected to \
             several times a second"
                .to_string(),
        );
    }
    out
}

/// Start-up that needs the logs: the configuration's warnings, the open-files limit (raised to
/// the hard limit), metrics, the worker count and the epoch.
fn launch(setup: Setup, demo: bool, workers_for_zero: usize, config_dir: PathBuf) -> Launch {
    for w in warnings(&setup, demo) {
        warn!("{w}");
    }
    let max_streams = setup.settings.config.server.max_streams as u64;
    // Each worker holds a share of `max_streams` (at least one stream each).
    let workers = match setup.settings.config.server.workers {
        0 => workers_for_zero.clamp(1, setup.settings.config.server.max_streams.max(1)),
        n => n,
    };
    // Streams are not all: heads being read, refusals being written, the broker, the process,
    // and each thread's event loop (tokio's: an epoll, an eventfd and a copy of the signal pipe).
    let headroom = OPEN_FILES_HEADROOM + OPEN_FILES_PER_THREAD * (workers as u64 + 3);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < max_streams.saturating_add(headroom) => warn!(
            open_files = n,
            max_streams,
            headroom,
            "the open-files limit leaves fewer than {headroom} files beside server.max_streams: past it, new connections wait unanswered (lower max_streams or raise the limit)"
        ),
        Ok(n) => info!(open_files = n, "open-files limit"),
        Err(e) => warn!(error = %e, "cannot raise the open-files limit"),
    }
    let metrics = Arc::new(Metrics::new(&setup.settings));
    let verifier = Arc::new(ReloadableVerifier::new(setup.verifier.clone()));
    Launch { setup, demo, metrics, workers, started: since_epoch(), verifier, config_dir }
}

/// Reads the configuration file, the environment and the files it names into a checked setup.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Setup, String> {
    let text = match path {
        Some(p) => Some(read_bounded(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let base = config_dir(path);
    // A value that is not UTF-8 is refused, not taken for no value (the file's secret, or a
    // generated one, would be used without a word).
    let var = |name: &str| match std::env::var(name) {
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(format!("{name}: not UTF-8 text")),
    };
    let env = Env { jwt_secret: var("SSE_GATEWAY_JWT_SECRET")?, amqp_url: var("SSE_GATEWAY_AMQP_URL")? };
    let mut secret = vec![0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| format!("no random source for a generated secret: {e}"))?;
    let mut read = |p: &str| read_bounded(&base.join(p));
    setup::load(text.as_deref(), &env, overrides, &mut read, &mut || secret.clone()).map_err(|e| e.0)
}

/// The directory the configuration file at `path` names its files against (none: the working
/// directory).
fn config_dir(path: Option<&Path>) -> PathBuf {
    path.and_then(Path::parent).map(Path::to_path_buf).unwrap_or_default()
}

/// The most a file the gateway reads at start-up (its configuration, a key, the catalogue) or at
/// SIGHUP (a key) may
/// hold: far past any real one, and no device or FIFO read until memory runs out.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// A regular file's text, refused past [`MAX_FILE_BYTES`] (or as it grows past them).
/// (Looked at before it is opened: opening a FIFO with no writer would wait for one.)
fn read_bounded(path: &Path) -> Result<String, String> {
    use std::io::Read;
    if !std::fs::metadata(path).map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".into())
}

/// Seconds since the Unix epoch, from the wall clock (a token's `exp` is judged against it).
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// The wall clock as time since the Unix epoch, to the sub-second (a stream's end at its token's
/// `exp` is placed against it).
pub fn since_epoch() -> Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

fn token(sub: &str, roles: &[String], ttl: &str, config: Option<&Path>) -> Result<(), String> {
    let ttl = parse_duration(ttl).map_err(|e| format!("--ttl `{ttl}`: {e}"))?;
    // Under a second is a token that has expired as it is printed.
    if ttl.as_secs() == 0 {
        return Err("--ttl: must be at least 1s".into());
    }
    let setup = load(config, &Overrides::default())?;
    let secret = match setup.hmac_secret() {
        Some(s) if !setup.generated_secret => s,
        _ => return Err("no secret configured (auth.secret or SSE_GATEWAY_JWT_SECRET)".into()),
    };
    let roles: Vec<String> = roles.iter().map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
    let now = unix_now();
    let t = issue_hs256(&setup.settings.config.auth, secret, sub, &roles, now, ttl.as_secs()).map_err(|e| e.to_string())?;
    // Never a token this configuration would refuse (an empty `sub`, a control character in it).
    crate::auth::TokenVerifier::verify(&setup.verifier, &t, now).map_err(|e| format!("this configuration would refuse the token: {}", e.reason()))?;
    for w in token_warnings(sub, &roles) {
        eprintln!("warning: {w}");
    }
    println!("{t}");
    Ok(())
}

/// What a valid token for `sub` with `roles` may not do as meant.
fn token_warnings(sub: &str, roles: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if sub.contains(',') || sub.trim_ascii() != sub {
        out.push(format!("--sub {sub:?} holds a comma or edge whitespace: no recipient_ids list can name it (no per-user events)"));
    }
    for r in roles.iter().filter(|r| r.contains(char::is_whitespace)) {
        out.push(format!("--roles: {r:?} is one role with whitespace in it; separate roles with commas"));
    }
    out
}

fn catalogue(format: contract::Format, config: Option<&Path>) -> Result<(), String> {
    let setup = load(config, &Overrides::default())?;
    let mut out = std::io::stdout().lock();
    out.write_all(contract::render(format, &setup.settings).as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("stdout: {e}"))
}

/// The log filter without `RUST_LOG`: the gateway's own lines at `info`; the AMQP client's off
/// (it logs a broker restart or refused credentials as ERROR lines of its own, which the
/// gateway's `source unavailable` line, with the error, already says).
pub const DEFAULT_LOG_FILTER: &str = "info,lapin=off";

/// Text logs (JSON lines with `json`) on stderr, filtered by `RUST_LOG` (default
/// [`DEFAULT_LOG_FILTER`]).
pub fn init_logs(json: bool) {
    let (filter, invalid) = log_filter(std::env::var("RUST_LOG").ok().as_deref());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Some(error) = invalid {
        tracing::warn!(%error, filter = DEFAULT_LOG_FILTER, "RUST_LOG is not a valid filter; logging with the default");
    }
}

/// The filter `RUST_LOG` asks for. Unset, empty or blank (a leftover `RUST_LOG=` in an
/// environment file) is the default, never "no logs at all"; one that does not parse is the
/// default too, with the error to log.
fn log_filter(var: Option<&str>) -> (tracing_subscriber::EnvFilter, Option<String>) {
    use tracing_subscriber::EnvFilter;
    // `RUST_LOG=,` holds no directive either (and would parse to "nothing at all").
    match var.map(str::trim).filter(|v| v.split(',').any(|d| !d.trim().is_empty())) {
        None => (EnvFilter::new(DEFAULT_LOG_FILTER), None),
        Some(v) => match EnvFilter::builder().parse(v) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new(DEFAULT_LOG_FILTER), Some(e.to_string())),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SIGHUP ([`KeyReload::on_hangup`], as the frontends call it): the key file, named relative
    /// to the configuration file, is read again from there and verifies every token from then on;
    /// the file's `auth.secret` and `[auth]` settings stay in force; a file refused leaves the
    /// keys as they were. `Debug` never shows the secret.
    #[test]
    fn sighup_reads_the_key_file_again_beside_the_configuration_and_keeps_the_keys_when_refused() {
        use crate::auth::{TokenError, TokenVerifier};
        const FILE_SECRET: &str = "file-secret-0123456789abcdef-0123";
        if std::env::var_os("SSE_GATEWAY_JWT_SECRET").is_some() {
            return; // it would stand for the file's secret
        }
        let dir = std::env::temp_dir().join(format!("sse-gateway-sighup-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        let conf = dir.join("gw.toml");
        let text = format!("[auth]\nalgorithms = [\"RS256\", \"HS256\"]\nsecret = \"{FILE_SECRET}\"\npublic_key_file = \"keys/k.pem\"\nissuer = \"idp\"\n");
        std::fs::write(&conf, text).unwrap();
        let key = dir.join("keys/k.pem");
        std::fs::write(&key, include_str!("../tests/fixtures/keys/rsa_public.pem")).unwrap();
        let l = launch(load(Some(&conf), &Overrides::default()).unwrap(), false, 1, config_dir(Some(&conf)));
        let now = unix_now();
        let sign = |pem: &str| {
            let claims = serde_json::json!({ "sub": "alice", "iss": "idp", "exp": now + 600 });
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
            jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap()
        };
        let (old, new) = (sign(include_str!("../tests/fixtures/keys/rsa_private.pem")), sign(include_str!("../tests/fixtures/keys/rsa2_private.pem")));
        let by_secret = issue_hs256(&l.settings().config.auth, FILE_SECRET.as_bytes(), "bob", &[], now, 600).unwrap();
        let other_issuer = issue_hs256(&crate::auth::AuthConfig::default(), FILE_SECRET.as_bytes(), "bob", &[], now, 600).unwrap();
        assert!(l.verifier.verify(&old, now).is_ok());
        assert_eq!(l.verifier.verify(&new, now).unwrap_err(), TokenError::BadSignature);

        let reload = l.key_reload();
        std::fs::write(&key, include_str!("../tests/fixtures/keys/rsa2_public.pem")).unwrap();
        reload.on_hangup();
        assert!(l.verifier.verify(&new, now).is_ok(), "the new key, read beside the configuration");
        assert_eq!(l.verifier.verify(&old, now).unwrap_err(), TokenError::BadSignature, "the old key");
        assert!(l.verifier.verify(&by_secret, now).is_ok(), "the file's secret is kept");
        assert_eq!(l.verifier.verify(&other_issuer, now).unwrap_err(), TokenError::WrongIssuer, "the [auth] settings are kept");

        for refused in ["not a key", include_str!("../tests/fixtures/keys/ec_public.pem")] {
            std::fs::write(&key, refused).unwrap();
            reload.on_hangup();
            assert!(l.verifier.verify(&new, now).is_ok(), "a refused file keeps the keys in force");
        }
        std::fs::remove_file(&key).unwrap();
        reload.on_hangup();
        assert!(l.verifier.verify(&new, now).is_ok(), "a missing file keeps the keys in force");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(!format!("{reload:?}").contains("file-secret") && !format!("{reload:?}").contains("102, 105"), "{reload:?}");
    }
    use tracing_subscriber::EnvFilter;

    #[test]
    fn files_read_at_start_up_are_regular_files_of_at_most_16_mib() {
        assert_eq!(read_bounded(Path::new("/dev/zero")).unwrap_err(), "not a regular file");
        assert_eq!(read_bounded(&std::env::temp_dir()).unwrap_err(), "not a regular file");
        let path = std::env::temp_dir().join(format!("sse-gateway-read-bounded-{}.toml", std::process::id()));
        let mut bytes = vec![b'#'; MAX_FILE_BYTES as usize];
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_bounded(&path).unwrap().len() as u64, MAX_FILE_BYTES, "16 MiB is taken");
        // One byte more, that byte the start of a character cut off: too large, not "not UTF-8".
        bytes.push(0xc3);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read_bounded(&path).unwrap_err(), "larger than 16 MiB");
        std::fs::write(&path, b"a = \"\xff\"\n").unwrap();
        assert_eq!(read_bounded(&path).unwrap_err(), "not UTF-8 text");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_demo_page_is_on_loopback_when_the_gateway_listens_on_a_wildcard_address() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(page_addr(at("0.0.0.0:8080")), at("127.0.0.1:8080"));
        assert_eq!(page_addr(at("[::]:8080")), at("[::1]:8080"));
        assert_eq!(page_addr(at("127.0.0.1:8080")), at("127.0.0.1:8080"));
        assert_eq!(page_addr(at("10.1.2.3:80")), at("10.1.2.3:80"));
    }

    #[test]
    fn the_token_command_warns_of_a_sub_or_role_that_cannot_work_as_meant() {
        assert!(token_warnings("alice", &["finance_manager".into(), "publisher".into()]).is_empty());
        assert_eq!(token_warnings("a,b", &[]).len(), 1);
        assert_eq!(token_warnings(" alice", &["finance_manager publisher".into()]).len(), 2);
    }

    #[test]
    fn the_arguments_parse_with_either_binary_name() {
        Cli::command().debug_assert();
        for name in ["sse-gateway", "sse-gateway-smol"] {
            let m = Cli::command().name(name).try_get_matches_from([name, "--listen", "127.0.0.1:0", "--demo"]).unwrap();
            let cli = Cli::from_arg_matches(&m).unwrap();
            assert!(cli.demo && cli.listen.as_deref() == Some("127.0.0.1:0") && cli.command.is_none());
        }
        let m = Cli::command().try_get_matches_from(["x", "token", "--sub", "u", "--roles", "a,b"]).unwrap();
        match Cli::from_arg_matches(&m).unwrap().command {
            Some(Command::Token { sub, roles, ttl, .. }) => assert_eq!((sub.as_str(), roles.len(), ttl.as_str()), ("u", 2, "1h")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_empty_or_invalid_rust_log_logs_with_the_default_never_nothing() {
        for var in [None, Some(""), Some("  "), Some(","), Some(" , ")] {
            let (f, invalid) = log_filter(var);
            assert_eq!(f.to_string(), EnvFilter::new(DEFAULT_LOG_FILTER).to_string(), "{var:?}");
            assert_eq!(f.max_level_hint(), Some(tracing::level_filters::LevelFilter::INFO), "{var:?}");
            assert!(invalid.is_none(), "{var:?}");
        }
        let (f, invalid) = log_filter(Some("garbage=:="));
        assert_eq!(f.max_level_hint(), Some(tracing::level_filters::LevelFilter::INFO));
        assert!(invalid.is_some());
        let (f, invalid) = log_filter(Some("debug"));
        assert_eq!(f.max_level_hint(), Some(tracing::level_filters::LevelFilter::DEBUG));
        assert!(invalid.is_none());
        let (f, _) = log_filter(Some("off"));
        assert_eq!(f.max_level_hint(), Some(tracing::level_filters::LevelFilter::OFF), "off when asked for");
    }

    #[test]
    fn catalogue_takes_exactly_one_format() {
        let parse = |args: &[&str]| Cli::command().try_get_matches_from(args.iter().copied()).map(|m| Cli::from_arg_matches(&m).unwrap());
        match parse(&["x", "catalogue", "--typescript"]).unwrap().command {
            Some(Command::Catalogue { typescript: true, asyncapi: false, json_schema: false, config: None }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(&["x", "catalogue", "--json-schema", "--config", "f.toml"]).unwrap().command,
            Some(Command::Catalogue { json_schema: true, config: Some(_), .. })));
        assert!(parse(&["x", "catalogue"]).is_err(), "a format is required");
        assert!(parse(&["x", "catalogue", "--asyncapi", "--typescript"]).is_err(), "one format at a time");
    }

    #[test]
    fn a_short_hmac_secret_and_a_public_key_without_audience_are_warned_of() {
        let load = |text: &str| setup::load(Some(text), &Env::default(), &Overrides::default(), &mut |_| Ok(String::new()), &mut || vec![1; 32]).unwrap();
        let w = warnings(&load("[auth]\nsecret = \"sixteen-bytes!!!\"\n"), false);
        assert!(w.iter().any(|w| w.contains("16 bytes long, shorter than HS256's 32-byte hash")), "{w:?}");
        let w = warnings(&load("[auth]\nalgorithms = [\"HS256\", \"HS512\"]\nsecret = \"0123456789abcdef0123456789abcdef0123\"\n"), false);
        assert!(w.iter().any(|w| w.contains("shorter than HS512's 64-byte hash")), "{w:?}");
        assert!(warnings(&load("[auth]\nsecret = \"0123456789abcdef0123456789abcdef\"\n"), false).is_empty());
        let pem = |_: &str| Ok(include_str!("../tests/fixtures/keys/rsa_public.pem").to_string());
        let rsa = |extra: &str| {
            let text = format!("[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"k.pem\"\n{extra}");
            setup::load(Some(&text), &Env::default(), &Overrides::default(), &mut |p| pem(p), &mut || vec![1; 32]).unwrap()
        };
        assert!(warnings(&rsa(""), false).iter().any(|w| w.contains("audience is not set")));
        assert!(warnings(&rsa(""), false).iter().any(|w| w.contains("issuer is not set")));
        assert!(warnings(&rsa("audience = \"sse-gateway\"\nissuer = \"https://idp.example\"\n"), false).is_empty());
        // A generated secret (none configured) is 32 random bytes: warned of otherwise.
        let generated = setup::load(None, &Env::default(), &Overrides::default(), &mut |p| Err(p.into()), &mut || vec![1; 32]).unwrap();
        assert!(!warnings(&generated, false).iter().any(|w| w.contains("hash")));
        // No jitter: every browser back at the same instant after a restart (D10).
        let secret = "[auth]\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
        let w = warnings(&load(&format!("{secret}[streams]\nretry_jitter = 0\n")), false);
        assert!(w.iter().any(|w| w.contains("streams.retry_jitter is 0")), "{w:?}");
        assert!(warnings(&load(&format!("{secret}[streams]\nretry_jitter = \"100ms\"\n")), false).is_empty());
        // A backoff reset after a consumer ran only briefly: a tight reconnect loop.
        let broker = "[broker]\nurl = \"amqp://u:p@h:5672/v\"\n";
        let w = warnings(&load(&format!("{secret}{broker}reconnect_min = \"10ms\"\nreconnect_max = \"500ms\"\n")), false);
        assert!(w.iter().any(|w| w.contains("broker.reconnect_max is under 1s")), "{w:?}");
        assert!(warnings(&load(&format!("{secret}{broker}reconnect_max = \"1s\"\n")), false).is_empty());
        // A `retry:` written in milliseconds but read as seconds; a heartbeat past a proxy's idle
        // timeout.
        let w = warnings(&load(&format!("{secret}[streams]\nretry = 3000\nevicted_retry = \"2m\"\nheartbeat = \"90s\"\n")), false);
        assert!(w.iter().any(|w| w.contains("streams.retry is 3000s")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("streams.evicted_retry is 120s")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("streams.heartbeat is 90s")), "{w:?}");
        let fine = "[streams]\nretry = \"3000ms\"\nevicted_retry = \"60s\"\nheartbeat = \"60s\"\n";
        assert!(warnings(&load(&format!("{secret}{fine}")), false).is_empty());
    }

    #[test]
    fn workers_zero_means_the_frontends_default() {
        let setup = setup::load(None, &Env::default(), &Overrides::default(), &mut |p| Err(p.into()), &mut || vec![1; 32]).unwrap();
        assert_eq!(launch(setup, false, 3, PathBuf::new()).workers, 3);
        let setup = setup::load(Some("[server]\nworkers = 2\n"), &Env::default(), &Overrides::default(), &mut |p| Err(p.into()), &mut || vec![1; 32])
            .unwrap();
        assert_eq!(launch(setup, false, 1, PathBuf::new()).workers, 2);
        // No more workers than streams to share out: none would hold a share of 0.
        let setup = setup::load(Some("[server]\nmax_streams = 2\n"), &Env::default(), &Overrides::default(), &mut |p| Err(p.into()), &mut || vec![1; 32])
            .unwrap();
        assert_eq!(launch(setup, false, 8, PathBuf::new()).workers, 2);
    }
}
