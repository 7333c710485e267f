//! The command line of both binaries (`--help`): `check-config`, `token` and `catalogue`.

use std::path::Path;
use std::process::Output;

use sse_gateway_tests::{for_each_binary, Bin, ConfigBuilder, GatewayProcess};

/// Runs `bin` with `args` in `dir`, without the environment that would override a file.
fn run(bin: Bin, dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(bin.path())
        .args(args)
        .current_dir(dir)
        .env_remove("SSE_GATEWAY_JWT_SECRET")
        .env_remove("SSE_GATEWAY_AMQP_URL")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.file_name()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn check_config_says_ok_or_names_the_bad_key_with_exit_status_2(bin: Bin) {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("good.toml"), ConfigBuilder::new().render()).unwrap();
    let out = run(bin, dir.path(), &["check-config", "good.toml"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "ok");
    assert!(!text(&out.stderr).contains("warning"), "{}", text(&out.stderr));

    // Valid, but every token would be refused: `ok`, with a warning that says why.
    std::fs::write(dir.path().join("nokey.toml"), "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let out = run(bin, dir.path(), &["check-config", "nokey.toml"]);
    assert_eq!((out.status.code(), text(&out.stdout).trim()), (Some(0), "ok"));
    assert!(text(&out.stderr).contains("warning: no secret or public key configured"), "{}", text(&out.stderr));

    // Written for RabbitMQ, without its broker: valid (the in-process source), with a warning.
    let no_broker = ConfigBuilder::new().str("channels.deals.source", "exchange", "crm.deals").render();
    assert!(!no_broker.contains("[broker]"), "{no_broker}");
    std::fs::write(dir.path().join("nobroker.toml"), no_broker).unwrap();
    let out = run(bin, dir.path(), &["check-config", "nobroker.toml"]);
    assert_eq!((out.status.code(), text(&out.stdout).trim()), (Some(0), "ok"));
    let err = text(&out.stderr);
    assert!(err.contains("warning: [channels.<name>.source] is set for deals, but there is no [broker]"), "{err}");

    let bad = ConfigBuilder::new().str("streams", "heartbeat", "0s").render();
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    let out = run(bin, dir.path(), &["check-config", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(err.contains("streams.heartbeat"), "the error names the key: {err}");

    let out = run(bin, dir.path(), &["check-config", "missing.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("missing.toml"), "{}", text(&out.stderr));

    // An environment value that is not UTF-8 is refused, naming the variable (it was taken for
    // no value: the file's secret, or none, was used without a word).
    use std::os::unix::ffi::OsStrExt;
    for name in ["SSE_GATEWAY_JWT_SECRET", "SSE_GATEWAY_AMQP_URL"] {
        let out = std::process::Command::new(bin.path())
            .args(["check-config", "good.toml"])
            .current_dir(dir.path())
            .env_remove("SSE_GATEWAY_JWT_SECRET")
            .env_remove("SSE_GATEWAY_AMQP_URL")
            .env(name, std::ffi::OsStr::from_bytes(&[0xff; 40]))
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out.stdout));
        assert!(text(&out.stderr).contains(&format!("{name}: not UTF-8")), "{}", text(&out.stderr));
    }
}

async fn a_token_printed_by_the_binary_opens_a_stream_on_a_gateway_with_the_same_config(bin: Bin) {
    let cfg = ConfigBuilder::new().render();
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("gw.toml"), &cfg).unwrap();
    let out = run(bin, dir.path(), &["token", "--sub", "cli-user", "--ttl", "5m", "--config", "gw.toml"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let token = text(&out.stdout).trim().to_string();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // What was asked for: its sub, and 5 minutes from its iat.
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims.clear();
    let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &jsonwebtoken::DecodingKey::from_secret(sse_gateway_tests::SECRET.as_bytes()), &v)
        .expect("signed with the configuration's secret")
        .claims;
    assert_eq!(claims["sub"], "cli-user", "{claims}");
    assert_eq!(claims["exp"].as_i64().zip(claims["iat"].as_i64()).map(|(e, i)| e - i), Some(300), "--ttl 5m: {claims}");
    // A token that would be expired as it is printed is refused.
    let expired = run(bin, dir.path(), &["token", "--sub", "cli-user", "--ttl", "0s", "--config", "gw.toml"]);
    assert_eq!(expired.status.code(), Some(2), "stdout: {}", text(&expired.stdout));
    assert!(text(&expired.stderr).contains("--ttl: must be at least 1s"), "{}", text(&expired.stderr));
    let gw = GatewayProcess::start(bin, &cfg).await;
    let mut s = gw.open("/api/v1/streams/deals", &[("Authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(s.status, 200);
    assert!(s.until_retry_fields(1).await, "the stream starts");
    // Signed with the file's secret, not some built-in one: another secret refuses it.
    let other = cfg.replace(sse_gateway_tests::SECRET, "another-secret-of-32-bytes-000000");
    assert_ne!(other, cfg);
    let gw2 = GatewayProcess::start(bin, &other).await;
    let s = gw2.open("/api/v1/streams/deals", &[("Authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(s.status, 401);
}

async fn catalogue_prints_the_published_contract_documents(bin: Bin) {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let dir = tempfile::tempdir().expect("a temp dir");
    for (flag, file) in [("--typescript", "events.d.ts"), ("--json-schema", "events.schema.json"), ("--asyncapi", "asyncapi.json")] {
        let out = run(bin, dir.path(), &["catalogue", flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}: {}", text(&out.stderr));
        let want = std::fs::read_to_string(docs.join(file)).unwrap();
        assert_eq!(text(&out.stdout).trim_end(), want.trim_end(), "{flag} differs from docs/{file}");
    }
    let out = run(bin, dir.path(), &["catalogue"]);
    assert_eq!(out.status.code(), Some(2), "a format is required");
}

/// The gateway's logs reach an operator whatever the environment: `RUST_LOG=` (empty, a leftover
/// in an environment file) logs at the default level instead of not at all, a filter that does
/// not parse says so, and with `--json-logs` a refused configuration is a JSON line too.
async fn an_empty_rust_log_or_a_refused_configuration_under_json_logs_still_logs(bin: Bin) {
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("good.toml"), ConfigBuilder::new().render()).unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port to take");
    let listen = taken.local_addr().unwrap().to_string();
    for (rust_log, also) in [("", None), ("garbage=:=", Some("RUST_LOG is not a valid filter"))] {
        let out = std::process::Command::new(bin.path())
            .args(["--config", "good.toml", "--listen", &listen])
            .current_dir(dir.path())
            .env("RUST_LOG", rust_log)
            .env_remove("SSE_GATEWAY_AMQP_URL")
            .output()
            .expect("run the gateway");
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "RUST_LOG={rust_log:?}: {err}");
        assert!(err.contains("cannot listen on") && err.contains("ERROR"), "RUST_LOG={rust_log:?}: why it stopped is logged: {err:?}");
        if let Some(line) = also {
            assert!(err.contains(line), "RUST_LOG={rust_log:?}: {err}");
        }
    }
    drop(taken);

    let bad = ConfigBuilder::new().str("streams", "heartbeat", "0s").render();
    std::fs::write(dir.path().join("bad.toml"), bad).unwrap();
    // Whatever RUST_LOG says (here: only another crate's lines), the refusal is there.
    let out = std::process::Command::new(bin.path())
        .args(["--config", "bad.toml", "--json-logs"])
        .current_dir(dir.path())
        .env("RUST_LOG", "lapin=debug")
        .output()
        .expect("run the gateway");
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    let lines: Vec<serde_json::Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR" && l["fields"]["message"].as_str().is_some_and(|m| m.contains("streams.heartbeat"))),
        "the refusal as a JSON line naming the key: {err}"
    );
}

for_each_binary!(
    an_empty_rust_log_or_a_refused_configuration_under_json_logs_still_logs,
    check_config_says_ok_or_names_the_bad_key_with_exit_status_2,
    a_token_printed_by_the_binary_opens_a_stream_on_a_gateway_with_the_same_config,
    catalogue_prints_the_published_contract_documents,
);
