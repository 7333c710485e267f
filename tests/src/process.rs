//! A running gateway process.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::{http_get, Bin, Response, SseClient, WAIT};

/// Environment variables the gateway reads; cleared in the child unless a test sets them, so the
/// developer's shell cannot change what a test sees.
const GATEWAY_ENV: [&str; 2] = ["SSE_GATEWAY_JWT_SECRET", "SSE_GATEWAY_AMQP_URL"];

/// A gateway started with `--config FILE`, listening on the address it printed. Killed on drop;
/// when the test is failing, its stderr is printed then. When it is not, dropping it fails the
/// test if the gateway logged a panic, or exited without being told to stop
/// ([`GatewayProcess::terminate`], [`GatewayProcess::interrupt`]): a crash when the test's
/// clients went away would otherwise pass unseen.
pub struct GatewayProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Which binary runs.
    pub bin: Bin,
    child: Child,
    config: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    /// Told to stop (a signal that ends it): its exit is expected.
    stopping: std::sync::atomic::AtomicBool,
    _dir: tempfile::TempDir,
}

impl GatewayProcess {
    /// Starts `bin` with this configuration file text.
    pub async fn start(bin: Bin, config_toml: &str) -> GatewayProcess {
        GatewayProcess::start_with_env(bin, config_toml, &[]).await
    }

    /// Starts `bin` with this configuration and these extra environment variables. Panics (with
    /// the gateway's stderr) unless it prints `listening on http://ADDR` within [`WAIT`].
    pub async fn start_with_env(bin: Bin, config_toml: &str, env: &[(&str, &str)]) -> GatewayProcess {
        GatewayProcess::launch(bin, config_toml, env, None).await
    }

    /// [`GatewayProcess::start`] with an open-files limit of `files` (soft and hard: the gateway
    /// raises its soft limit to the hard one at start).
    pub async fn start_with_open_files(bin: Bin, config_toml: &str, files: u64) -> GatewayProcess {
        GatewayProcess::launch(bin, config_toml, &[], Some(files)).await
    }

    async fn launch(bin: Bin, config_toml: &str, env: &[(&str, &str)], files: Option<u64>) -> GatewayProcess {
        let path = bin.path();
        assert!(
            path.is_file(),
            "{} not found at {}: build it first: cargo build --release --workspace",
            bin.file_name(),
            path.display()
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, config_toml).expect("write the config");
        // With an open-files limit, through the shell's `ulimit -n` (soft and hard: the gateway
        // raises its soft limit to the hard one at start), which then becomes the gateway.
        let mut cmd = match files {
            None => Command::new(&path),
            Some(files) => {
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("ulimit -n {files} && exec \"$0\" \"$@\"")).arg(&path);
                sh
            }
        };
        cmd.arg("--config").arg(&config).current_dir(dir.path());
        for k in GATEWAY_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", path.display()));

        let stderr = Arc::new(Mutex::new(String::new()));
        tokio::spawn(collect_lines(child.stderr.take().expect("piped stderr"), stderr.clone(), None));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(collect_lines(child.stdout.take().expect("piped stdout"), stdout.clone(), Some(first_tx)));

        let line = match tokio::time::timeout(WAIT, first_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                sleep_a_little().await; // let the stderr reader catch up
                let status = child.try_wait().ok().flatten();
                panic!(
                    "{} closed stdout without printing `listening on http://ADDR` (exit status {status:?}).\n\
                     config:\n{config_toml}\nstderr:\n{}",
                    bin.file_name(),
                    stderr.lock().unwrap()
                )
            }
            Err(_) => panic!(
                "{} printed no line on stdout within {WAIT:?}.\nconfig:\n{config_toml}\nstderr:\n{}",
                bin.file_name(),
                stderr.lock().unwrap()
            ),
        };
        let addr = line
            .trim_end()
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("first stdout line is not `listening on http://ADDR`: {line:?}"));
        GatewayProcess {
            addr,
            bin,
            child,
            config: config_toml.to_string(),
            stdout,
            stderr,
            stopping: std::sync::atomic::AtomicBool::new(false),
            _dir: dir,
        }
    }

    /// The configuration file text it was started with (to start another like it).
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Everything the gateway wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until the gateway's logs (read from its stderr as they come, so a line the gateway
    /// has written may not be here yet) satisfy `done`, at most `timeout`; returns the logs
    /// either way, for the caller's assertions to say what is missing.
    pub async fn log_until(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let log = self.stderr();
            if done(&log) || std::time::Instant::now() >= deadline {
                return log;
            }
            crate::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Neither a token nor its signature part appears in the gateway's stdout or stderr.
    pub async fn assert_never_logged(&self, tokens: &[&str]) {
        let err = self.settled_log().await;
        let out = self.stdout();
        for t in tokens {
            let sig = t.rsplit('.').next().unwrap_or_default();
            let mut needles = vec![("token", *t)];
            if sig.len() >= 16 {
                needles.push(("signature", sig));
            }
            // A token too long to log whole might be logged cut: look for its first 64 bytes too.
            if t.len() > 64 {
                needles.push(("token prefix", &t[..64]));
            }
            for (what, needle) in needles {
                assert!(!out.contains(needle), "a {what} was written to stdout: {needle:.80}");
                assert!(!err.contains(needle), "a {what} was written to the log: {needle:.80}\nstderr:\n{err}");
            }
        }
    }

    /// The logs once everything asked of the gateway before this call has been logged: a
    /// request refused at once (406) goes last and its log line is awaited (the main thread
    /// writes its lines in order; a shard logs a stream's opening before its first bytes).
    pub async fn settled_log(&self) -> String {
        let marker = "status=406";
        let before = self.stderr().matches(marker).count();
        let r = self.get("/api/v1/streams/deals", &[("Accept", "text/html")]).await;
        assert_eq!(r.status, 406, "the marker request");
        let log = self.log_until(WAIT, |l| l.matches(marker).count() > before).await;
        assert!(log.matches(marker).count() > before, "the marker request's log line never came:\n{log}");
        log
    }

    /// Everything the gateway wrote to stdout so far (the contract: exactly one line).
    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// Sends SIGTERM (graceful shutdown, D12).
    pub fn terminate(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        self.signal("TERM");
    }

    /// SIGINT (Ctrl-C), which D12 treats as SIGTERM.
    pub fn interrupt(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        self.signal("INT");
    }

    /// SIGHUP (a closed terminal; a `kill -HUP` meant as a reload).
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("the gateway is still running");
        let ok = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{name} {pid} failed");
    }

    /// Waits for the process to exit, at most `timeout`; `None` when it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the gateway is still running")
    }

    /// Resident memory now (`VmRSS` of `/proc/<pid>/status`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        parse_vm_rss_kib(&status).unwrap_or_else(|| panic!("no VmRSS line in {path}:\n{status}"))
    }

    /// `GET path` with these headers (a plain, non-stream response).
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_get(self.addr, path, headers).await
    }

    /// Any request (a plain, non-stream response).
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        crate::http_request(self.addr, method, path, headers, body).await
    }

    /// Opens `GET path` as an event stream with `Accept: text/event-stream` and these headers.
    pub async fn open(&self, path: &str, headers: &[(&str, &str)]) -> SseClient {
        SseClient::open(self.addr, path, headers).await
    }

    /// Opens `/api/v1/streams/{channel}` with a bearer token and asserts it was accepted (200).
    pub async fn stream(&self, channel: &str, token: &str) -> SseClient {
        self.stream_with(channel, token, &[]).await
    }

    /// Like [`GatewayProcess::stream`], with extra headers (e.g. `Last-Event-ID`).
    pub async fn stream_with(&self, channel: &str, token: &str, headers: &[(&str, &str)]) -> SseClient {
        let auth = format!("Bearer {token}");
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        let mut s = self.open(&format!("/api/v1/streams/{channel}"), &all).await;
        if s.status != 200 {
            let body = s.read_body(WAIT).await;
            panic!("stream {channel} answered {} (expected 200): {body}", s.status);
        }
        s
    }

    /// Waits until `/readyz` answers 200 (every source reached). Panics after [`WAIT`].
    pub async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let r = self.get("/readyz", &[]).await;
            if r.status == 200 {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("/readyz still {} after {WAIT:?}: {}\nstderr:\n{}", r.status, r.body, self.stderr());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.get("/metrics", &[]).await;
        assert_eq!(r.status, 200, "/metrics: {}", r.body);
        r.body
    }

    /// The value of one sample of `/metrics`, named exactly as exposed
    /// (`sse_gateway_events_dropped_total{channel="deals",reason="not_json"}`); `None` when absent.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        parse_metric(&self.metrics().await, sample)
    }

    /// Waits until `sample` equals `value`; panics after [`WAIT`] with the last value seen.
    pub async fn wait_metric(&self, sample: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let seen = self.metric(sample).await;
            if seen == Some(value) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                panic!("{sample} is {seen:?} after {WAIT:?}, expected {value}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The sample of `sse_gateway_events_in_total` for `channel` (valid events the gateway took).
pub fn events_in(channel: &str) -> String {
    format!("sse_gateway_events_in_total{{channel=\"{channel}\"}}")
}

/// The sample of `sse_gateway_events_replayed_total` for `channel` (event frames replayed).
pub fn events_replayed(channel: &str) -> String {
    format!("sse_gateway_events_replayed_total{{channel=\"{channel}\"}}")
}

/// One sample's value from Prometheus text: the line `SAMPLE VALUE`.
pub fn parse_metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(name, _)| name.trim() == sample)
        .and_then(|(_, v)| v.trim().parse().ok())
}

/// The `VmRSS:   1234 kB` line of a `/proc/<pid>/status` text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let status = self.child.try_wait().ok().flatten();
        let _ = self.child.start_kill();
        if !std::thread::panicking() {
            let log = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
            // The gateway's own panic lines (its hook logs them, then aborts; or a message's
            // handling that panicked and was contained).
            let panicked = ["panic; aborting the process", "panic handling one message", "panic in thread"].iter().any(|p| log.contains(p));
            let asked = self.stopping.load(std::sync::atomic::Ordering::Relaxed);
            // Told to stop, it exits 0 (drained), or 143 / 130 (a second signal); not 1 (the
            // shutdown watchdog) or anything else.
            let bad_exit = status.filter(|s| !asked || !matches!(s.code(), Some(0 | 130 | 143)));
            if panicked || bad_exit.is_some() {
                let what = match bad_exit {
                    _ if panicked => "logged a panic".to_string(),
                    Some(s) if asked => format!("stopped with {s}"),
                    Some(s) => format!("exited without being told to stop ({s})"),
                    None => unreachable!(),
                };
                panic!("{} ({}) {what}:\n{log}", self.bin.file_name(), self.addr);
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- {} ({}) stderr ---\n{}--- end of stderr ---",
                self.bin.file_name(),
                self.addr,
                self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
            );
        }
    }
}

async fn collect_lines<R: AsyncRead + Unpin>(
    from: R,
    into: Arc<Mutex<String>>,
    mut first: Option<tokio::sync::oneshot::Sender<String>>,
) {
    let mut from = BufReader::new(from);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        match from.read_until(b'\n', &mut raw).await {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                into.lock().unwrap().push_str(&format!("(the test harness could not read further: {e})\n"));
                return;
            }
        }
        // Lossy: a byte that is not UTF-8 must not end the collection (a later "never logged"
        // check would pass on a log cut short).
        let line = String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']).to_string();
        // Keep the line before telling the waiter: a test that reads the buffer right after the
        // first line arrived must find it there.
        {
            let mut all = into.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(line);
        }
    }
}

async fn sleep_a_little() {
    tokio::time::sleep(Duration::from_millis(200)).await
}

#[cfg(test)]
mod tests {
    use super::{parse_metric, parse_vm_rss_kib};

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tsse-gateway\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn metric_samples_are_found_by_their_exact_name_and_labels() {
        let text = "# HELP x y\n# TYPE x counter\nx{reason=\"a\"} 1\nx{reason=\"ab\"} 7\ng 2\n";
        assert_eq!(parse_metric(text, "x{reason=\"a\"}"), Some(1.0));
        assert_eq!(parse_metric(text, "x{reason=\"ab\"}"), Some(7.0));
        assert_eq!(parse_metric(text, "g"), Some(2.0));
        assert_eq!(parse_metric(text, "x"), None);
    }
}
