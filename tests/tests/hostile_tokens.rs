//! Hostile tokens (D1, D13): every forged, stale, misaddressed or oversized token is answered
//! 401 with a `WWW-Authenticate: Bearer` challenge, and no token (nor its signature) ever shows
//! up in the gateway's output, even at `RUST_LOG=debug`.

use serde_json::{json, Value};
use sse_gateway_tests::http::raw_exchange;
use sse_gateway_tests::payloads::valid_text;
use sse_gateway_tests::token::{assembled, b64url, hs256, key, key_path, rs256, rs256_kid, unix_now};
use sse_gateway_tests::{for_each_binary, token, Bin, ConfigBuilder, Fixture, GatewayProcess, SECRET, WAIT};

const ISSUER: &str = "https://idp.example.test/";
const AUDIENCE: &str = "sse-gateway";
/// The gateway's log lines at SIGHUP (docs/operations.md).
const SIGHUP_KEYS_RELOADED: &str = "SIGHUP: key files read again";
const SIGHUP_KEYS_KEPT: &str = "SIGHUP: key files not reloaded; the keys in force are kept";

/// A gateway that accepts RS256 only, with the fixture RSA public key, an issuer and an
/// audience; logs at debug so a token logged at any level is caught.
async fn rs256_gateway(bin: Bin, max_head_bytes: Option<usize>) -> GatewayProcess {
    let mut cfg = ConfigBuilder::new()
        .strs("auth", "algorithms", &["RS256"])
        .str("auth", "public_key_file", key_path("rsa_public.pem").to_str().expect("a UTF-8 path"))
        .str("auth", "issuer", ISSUER)
        .str("auth", "audience", AUDIENCE);
    if let Some(n) = max_head_bytes {
        cfg = cfg.raw("server", "max_head_bytes", &n.to_string());
    }
    GatewayProcess::start_with_env(bin, &cfg.render(), &[("RUST_LOG", "debug")]).await
}

/// Claims that pass every check of [`rs256_gateway`].
fn good_claims(sub: &str) -> Value {
    let now = unix_now();
    json!({ "sub": sub, "roles": [], "iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now - 60, "exp": now + 3600 })
}

/// `good_claims` with `key` set to `value` (`Value::Null` removes it).
fn claims_with(key_name: &str, value: Value) -> Value {
    let mut c = good_claims("mallory");
    if value.is_null() {
        c.as_object_mut().unwrap().remove(key_name);
    } else {
        c[key_name] = value;
    }
    c
}

fn signed(claims: &Value) -> String {
    rs256(&key("rsa_private.pem"), claims)
}

/// Replaces the signature of `token` with `sig`.
fn with_signature(token: &str, sig: &str) -> String {
    let (signed_part, _) = token.rsplit_once('.').expect("three parts");
    format!("{signed_part}.{sig}")
}

/// Flips one bit in the middle of the signature's bytes, keeping valid base64url.
fn tampered_signature(token: &str) -> String {
    let sig = token.rsplit('.').next().unwrap();
    let mut chars: Vec<char> = sig.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    with_signature(token, &chars.into_iter().collect::<String>())
}

/// Opens a stream with each `(what, token)` as a bearer token and asserts 401, a Bearer
/// challenge with `error="invalid_token"` and the JSON `unauthorized` body.
async fn assert_all_refused(gw: &GatewayProcess, cases: &[(String, String)]) {
    for (what, t) in cases {
        let auth = format!("Bearer {t}");
        let mut s = gw.open("/api/v1/streams/deals", &[("Authorization", &auth)]).await;
        let body = s.read_body(WAIT).await;
        assert_eq!(s.status, 401, "{what}: answered {} {body}", s.status);
        let challenge = s.header("www-authenticate").unwrap_or_default().to_string();
        assert!(challenge.starts_with("Bearer"), "{what}: WWW-Authenticate: {challenge:?}");
        assert!(challenge.contains("error=\"invalid_token\""), "{what}: WWW-Authenticate: {challenge:?}");
        let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {body:?}"));
        assert_eq!(json["code"], "unauthorized", "{what}: {json}");
    }
}

async fn forged_stale_and_misaddressed_tokens_get_401_and_are_never_logged(bin: Bin) {
    let gw = rs256_gateway(bin, None).await;

    // The setup works: a proper RS256 token opens a stream (aud as a string and as an array).
    let valid = signed(&good_claims("alice"));
    let mut aud_array = good_claims("alice");
    aud_array["aud"] = json!(["another-service", AUDIENCE]);
    for t in [valid.clone(), signed(&aud_array)] {
        let s = gw.stream("deals", &t).await;
        assert_eq!(s.status, 200);
    }

    let now = unix_now();
    let public_pem = key("rsa_public.pem");
    let none_header = json!({ "alg": "none", "typ": "JWT" });
    let valid_sig = valid.rsplit('.').next().unwrap().to_string();
    let (header_b64, claims_b64) = {
        let mut p = valid.split('.');
        (p.next().unwrap().to_string(), p.next().unwrap().to_string())
    };
    let mut forged_claims = good_claims("alice");
    forged_claims["roles"] = json!(["finance_manager"]);
    let cases: Vec<(String, String)> = vec![
        ("alg none, empty signature".into(), assembled(&none_header, &good_claims("alice"), "")),
        ("alg none, a real signature".into(), assembled(&none_header, &good_claims("alice"), &valid_sig)),
        ("alg None".into(), assembled(&json!({ "alg": "None" }), &good_claims("alice"), "")),
        ("alg NONE".into(), assembled(&json!({ "alg": "NONE" }), &good_claims("alice"), "")),
        ("HS256 keyed with the public key PEM".into(), hs256(&public_pem, &good_claims("alice"))),
        (
            "HS256 keyed with the public key PEM, trimmed".into(),
            hs256(String::from_utf8_lossy(&public_pem).trim().as_bytes(), &good_claims("alice")),
        ),
        ("HS256 keyed with the test secret".into(), hs256(SECRET.as_bytes(), &good_claims("alice"))),
        ("expired".into(), signed(&claims_with("exp", json!(now - 3600)))),
        ("no exp".into(), signed(&claims_with("exp", Value::Null))),
        ("exp as a string".into(), signed(&claims_with("exp", json!((now + 3600).to_string())))),
        ("nbf in the future".into(), signed(&claims_with("nbf", json!(now + 3600)))),
        ("wrong iss".into(), signed(&claims_with("iss", json!("https://evil.example/")))),
        ("no iss".into(), signed(&claims_with("iss", Value::Null))),
        ("wrong aud".into(), signed(&claims_with("aud", json!("another-service")))),
        ("aud array without ours".into(), signed(&claims_with("aud", json!(["a", "b"])))),
        ("no aud".into(), signed(&claims_with("aud", Value::Null))),
        ("no sub".into(), signed(&claims_with("sub", Value::Null))),
        ("empty sub".into(), signed(&claims_with("sub", json!("")))),
        ("sub an array".into(), signed(&claims_with("sub", json!(["alice", "bob"])))),
        ("signed with another RSA key".into(), rs256(&key("rsa2_private.pem"), &good_claims("alice"))),
        ("signature with a bit flipped".into(), tampered_signature(&valid)),
        ("claims changed under a valid signature".into(), format!("{header_b64}.{}.{valid_sig}", b64url(forged_claims.to_string().as_bytes()))),
        ("signature stripped".into(), with_signature(&valid, "")),
        ("broken base64 in the header".into(), format!("{}!!.{claims_b64}.{valid_sig}", &header_b64[..header_b64.len() - 2])),
        ("broken base64 in the claims".into(), format!("{header_b64}.%%%{claims_b64}.{valid_sig}")),
        ("broken base64 in the signature".into(), with_signature(&valid, "****")),
        ("claims that are not JSON".into(), format!("{header_b64}.{}.{valid_sig}", b64url(b"{\"sub\":"))),
        ("two parts".into(), format!("{header_b64}.{claims_b64}")),
        ("four parts".into(), format!("{valid}.{valid_sig}")),
        ("unknown alg".into(), assembled(&json!({ "alg": "RS1024" }), &good_claims("alice"), &valid_sig)),
        ("crit header".into(), assembled(&json!({ "alg": "RS256", "crit": ["exp"] }), &good_claims("alice"), &valid_sig)),
    ];
    assert_all_refused(&gw, &cases).await;

    // A token in the query string while `query_param` is off: as if none was sent.
    let path = format!("/api/v1/streams/deals?access_token={valid}");
    let mut s = gw.open(&path, &[]).await;
    assert_eq!(s.status, 401, "access_token is off by default");
    assert!(s.header("www-authenticate").unwrap_or_default().starts_with("Bearer"), "{:?}", s.headers);
    assert_eq!(s.json_body().await["code"], "unauthorized");

    let mut tokens: Vec<&str> = cases.iter().map(|(_, t)| t.as_str()).collect();
    tokens.push(&valid);
    gw.assert_never_logged(&tokens).await;
    assert_eq!(gw.get("/healthz", &[]).await.status, 200);
}

/// A validly signed token of 64 KiB (a padding claim).
fn huge_token() -> String {
    let mut claims = good_claims("alice");
    claims["padding"] = json!("p".repeat(64 * 1024));
    let t = signed(&claims);
    assert!(t.len() >= 64 * 1024, "{}", t.len());
    t
}

async fn a_64_kib_token_gets_401_when_the_head_bound_lets_it_through_and_431_by_default(bin: Bin) {
    let t = huge_token();

    // A raised head bound lets the request reach the verifier, which refuses a token that long.
    let gw = rs256_gateway(bin, Some(131_072)).await;
    assert_all_refused(&gw, &[("a 64 KiB token".into(), t.clone())]).await;
    gw.assert_never_logged(&[&t]).await;

    // With the default bound (16 KiB) the head itself is refused with 431.
    let gw = rs256_gateway(bin, None).await;
    let request = format!(
        "GET /api/v1/streams/deals HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nAuthorization: Bearer {t}\r\n\r\n",
        gw.addr
    );
    let reply = raw_exchange(gw.addr, request.into_bytes(), WAIT, |_| false).await;
    assert_eq!(reply.status(), Some(431), "{:?}", String::from_utf8_lossy(&reply.bytes[..reply.bytes.len().min(300)]));
    assert!(reply.closed && !reply.reset, "the connection is closed after the 431, not reset");
    gw.assert_never_logged(&[&t]).await;
    assert_eq!(gw.get("/healthz", &[]).await.status, 200);
}

async fn an_hmac_gateway_refuses_alg_none_and_public_key_tokens(bin: Bin) {
    let gw = GatewayProcess::start_with_env(bin, &ConfigBuilder::new().render(), &[("RUST_LOG", "debug")]).await;
    let now = unix_now();
    let claims = json!({ "sub": "alice", "roles": [], "exp": now + 3600 });
    let valid = token(SECRET, "alice", &[], 3600);
    assert_eq!(gw.stream("deals", &valid).await.status, 200, "the setup works");
    let valid_sig = valid.rsplit('.').next().unwrap();
    let cases: Vec<(String, String)> = vec![
        ("alg none".into(), assembled(&json!({ "alg": "none", "typ": "JWT" }), &claims, "")),
        ("alg none with the HS256 signature".into(), assembled(&json!({ "alg": "none" }), &claims, valid_sig)),
        ("RS256 while only HS256 is configured".into(), rs256(&key("rsa_private.pem"), &claims)),
        ("HS512 while only HS256 is configured".into(), {
            let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
            jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512), &claims, &key).unwrap()
        }),
        ("HS256 with an empty key".into(), hs256(b"", &claims)),
        ("nbf in the future".into(), hs256(SECRET.as_bytes(), &json!({ "sub": "alice", "exp": now + 3600, "nbf": now + 3600 }))),
        ("no sub".into(), hs256(SECRET.as_bytes(), &json!({ "exp": now + 3600 }))),
        ("signature with a bit flipped".into(), tampered_signature(&valid)),
    ];
    assert_all_refused(&gw, &cases).await;
    let mut tokens: Vec<&str> = cases.iter().map(|(_, t)| t.as_str()).collect();
    tokens.push(&valid);
    gw.assert_never_logged(&tokens).await;
}

/// SIGHUP reads the key files again (a key rotation without a restart): the identity
/// provider's next key, added to the JWKS, is taken for new requests; the retired one, removed,
/// is refused for new requests while a stream it opened goes on (until its token's `exp`); a file
/// that does not make a verifier is logged and the keys in force are kept.
async fn a_rotated_jwks_is_taken_at_sighup_and_a_broken_one_keeps_the_keys(bin: Bin) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let jwks_path = dir.path().join("jwks.json");
    let all: Value = serde_json::from_slice(&key("jwks.json")).expect("the fixture JWKS");
    let only = |kid: &str| {
        let keys: Vec<Value> = all["keys"].as_array().expect("keys").iter().filter(|k| k["kid"] == kid).cloned().collect();
        assert_eq!(keys.len(), 1, "{kid} in the fixture");
        json!({ "keys": keys }).to_string()
    };
    std::fs::write(&jwks_path, only("rsa-1")).expect("write the JWKS");
    let cfg = ConfigBuilder::new()
        .strs("auth", "algorithms", &["RS256"])
        .str("auth", "jwks_file", jwks_path.to_str().expect("a UTF-8 path"))
        .str("auth", "issuer", ISSUER)
        .str("auth", "audience", AUDIENCE);
    let mut fx = Fixture::start(bin, cfg).await;
    let current = rs256_kid(&key("rsa_private.pem"), "rsa-1", &good_claims("alice"));
    let next = rs256_kid(&key("rsa2_private.pem"), "rsa-2", &good_claims("bob"));
    let mut opened_before = fx.gw.stream("deals", &current).await;
    assert_eq!(opened_before.status, 200);
    assert_all_refused(&fx.gw, &[("the next key, not in the JWKS yet".into(), next.clone())]).await;
    let reloads = |log: &str| log.lines().filter(|l| l.contains(SIGHUP_KEYS_RELOADED)).count();

    // The identity provider's next key is published beside the current one.
    std::fs::write(&jwks_path, all.to_string()).expect("write the JWKS");
    fx.gw.hangup();
    let log = fx.gw.log_until(WAIT, |l| reloads(l) == 1).await;
    let line = log.lines().find(|l| l.contains(SIGHUP_KEYS_RELOADED)).unwrap_or_else(|| panic!("no reload line:\n{log}"));
    assert!(line.contains("jwks_kids=\"rsa-1,rsa-2\""), "{line}");
    let mut opened_after = fx.gw.stream("deals", &next).await;
    assert_eq!(opened_after.status, 200, "the next key's token after SIGHUP");
    assert_eq!(fx.gw.stream("deals", &current).await.status, 200, "the current key's token");

    // The retired key is removed: its tokens are refused from then on.
    std::fs::write(&jwks_path, only("rsa-2")).expect("write the JWKS");
    fx.gw.hangup();
    let log = fx.gw.log_until(WAIT, |l| reloads(l) == 2).await;
    assert_eq!(reloads(&log), 2, "no second reload line:\n{log}");
    assert_all_refused(&fx.gw, &[("the retired key".into(), current.clone())]).await;

    // A broken file: logged, and the keys in force stay.
    std::fs::write(&jwks_path, "{\"keys\": [").expect("write the JWKS");
    fx.gw.hangup();
    let log = fx.gw.log_until(WAIT, |l| l.contains(SIGHUP_KEYS_KEPT)).await;
    let line = log.lines().find(|l| l.contains(SIGHUP_KEYS_KEPT)).unwrap_or_else(|| panic!("no line for the broken file:\n{log}"));
    assert!(line.contains("jwks_file is not a JWKS document"), "the setting is named: {line}");
    assert_eq!(reloads(&log), 2, "{log}");
    assert_eq!(fx.gw.stream("deals", &next).await.status, 200, "the keys in force after a broken file");
    assert_all_refused(&fx.gw, &[("the retired key, after a broken file".into(), current.clone())]).await;

    // Both streams went on through the three reloads.
    let body = valid_text("deal.created");
    fx.publish("deals", "deal.created", &body).await;
    assert_eq!(opened_before.expect_event("the stream the retired key opened").await.data, body);
    assert_eq!(opened_after.expect_event("the stream the next key opened").await.data, body);
    assert!(fx.gw.is_running(), "the gateway stopped");
}

for_each_binary!(
    a_rotated_jwks_is_taken_at_sighup_and_a_broken_one_keeps_the_keys,
    forged_stale_and_misaddressed_tokens_get_401_and_are_never_logged,
    a_64_kib_token_gets_401_when_the_head_bound_lets_it_through_and_431_by_default,
    an_hmac_gateway_refuses_alg_none_and_public_key_tokens,
);
