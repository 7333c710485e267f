//! Start-up: configuration text, environment, command-line overrides and the files the
//! configuration names, to a checked [`Setup`]. Shared by both frontends' start and their
//! `check-config` / `token` subcommands, so they can never disagree on what a file means.
//!
//! Still sans-IO: the frontend reads the configuration file and the environment and passes a
//! `read` function for the files the configuration names (it resolves relative paths against the
//! configuration file's directory) and a `random` function for a generated secret.

use std::sync::Arc;

use crate::auth::{AuthConfig, JwtVerifier, KeyMaterial};
use crate::catalogue::Catalogue;
use crate::config::{BrokerConfig, Config, ConfigError, Settings};
use crate::demo;

/// Environment variables the gateway reads.
#[derive(Debug, Clone, Default)]
pub struct Env {
    /// `SSE_GATEWAY_JWT_SECRET`: the HMAC secret, over `auth.secret`.
    pub jwt_secret: Option<String>,
    /// `SSE_GATEWAY_AMQP_URL`: the broker URL, over `broker.url`. Setting it turns the broker on
    /// (a `[broker]` section with defaults) when the file has none.
    pub amqp_url: Option<String>,
}

/// Command-line overrides.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--demo`: see [`demo::configure`].
    pub demo: bool,
    /// `--listen ADDR`, over `server.listen`.
    pub listen: Option<String>,
}

/// A configuration ready to run.
#[derive(Debug)]
pub struct Setup {
    /// Resolved settings.
    pub settings: Arc<Settings>,
    /// Key material, the secret included.
    pub keys: KeyMaterial,
    /// The verifier for those keys, as at start: a running gateway verifies through
    /// [`crate::cli::Launch::verifier`], whose keys a SIGHUP may replace.
    pub verifier: JwtVerifier,
    /// No key material was configured, so the secret is random for this process: every token
    /// from elsewhere is refused. The frontend warns (outside demo mode).
    pub generated_secret: bool,
}

impl Setup {
    /// The HMAC secret in force, if any (to sign development tokens).
    pub fn hmac_secret(&self) -> Option<&[u8]> {
        self.keys.secret.as_deref().or(self.settings.config.auth.secret.as_deref().map(str::as_bytes))
    }
}

/// Builds a [`Setup`]. `text` is the configuration file (`None`: no file, every default);
/// `read(path)` returns the contents of a file the configuration names (`auth.public_key_file`,
/// `auth.jwks_file`, `catalogue`) or an error message; `random()` returns 32 random bytes, called
/// only when no key material is configured anywhere. Errors name the key at fault.
pub fn load(
    text: Option<&str>,
    env: &Env,
    overrides: &Overrides,
    read: &mut dyn FnMut(&str) -> Result<String, String>,
    random: &mut dyn FnMut() -> Vec<u8>,
) -> Result<Setup, ConfigError> {
    let mut config = Config::from_toml(text.unwrap_or(""))?;
    // Set but empty is refused, as an empty SSE_GATEWAY_JWT_SECRET is: read as unset, a file
    // without [broker] would run on the in-process source, ready and without events.
    if env.amqp_url.as_deref() == Some("") {
        return Err(ConfigError(
            "SSE_GATEWAY_AMQP_URL is set but empty: give the broker's URL, or unset it to use [broker] of the file".into(),
        ));
    }
    if let Some(url) = &env.amqp_url {
        config.broker.get_or_insert_with(BrokerConfig::default).url = url.clone();
    }
    if let Some(listen) = &overrides.listen {
        config.server.listen = listen.clone();
    }
    if overrides.demo {
        if config.broker.is_some() {
            return Err(ConfigError(
                "--demo runs on the in-process source: remove [broker] from the file, or unset SSE_GATEWAY_AMQP_URL".into(),
            ));
        }
        demo::configure(&mut config);
    }
    // Set but empty (an environment file's `SSE_GATEWAY_JWT_SECRET=` a template left blank) is
    // refused: read as unset, the file's secret, or a random one, would be used without a word.
    if env.jwt_secret.as_deref() == Some("") {
        return Err(ConfigError(
            "SSE_GATEWAY_JWT_SECRET is set but empty: give the secret, or unset it to use auth.secret".into(),
        ));
    }
    let mut keys = KeyMaterial {
        secret: env.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
        ..KeyMaterial::default()
    };
    (keys.public_key_pem, keys.jwks_json) = key_files(&config.auth, read)?;
    let catalogue = match named_file(read, "catalogue", &config.catalogue)? {
        None => Catalogue::seed(),
        Some(t) => Catalogue::from_toml(&t).map_err(|e| ConfigError(format!("catalogue: {e}")))?,
    };
    let a = &config.auth;
    let generated_secret = keys.secret.is_none()
        && a.secret.is_none()
        && keys.public_key_pem.is_none()
        && keys.jwks_json.is_none()
        && a.algorithms.iter().any(|x| x.starts_with("HS"));
    if generated_secret {
        keys.secret = Some(random());
    }
    let settings = Settings::new(config, catalogue)?;
    let verifier = JwtVerifier::new(&settings.config.auth, &keys).map_err(|e| ConfigError(e.to_string()))?;
    let setup = Setup { settings: Arc::new(settings), keys, verifier, generated_secret };
    if overrides.demo && (setup.hmac_secret().is_none() || !setup.settings.config.auth.algorithms.iter().any(|a| a == "HS256")) {
        return Err(ConfigError(
            "--demo signs its token with HS256: auth.algorithms must list HS256, with a secret (or none configured at all)".into(),
        ));
    }
    Ok(setup)
}

/// The contents of the file at `path`, if set; an error names `key`.
fn named_file(read: &mut dyn FnMut(&str) -> Result<String, String>, key: &str, path: &Option<String>) -> Result<Option<String>, ConfigError> {
    path.as_deref().map(|p| read(p).map_err(|e| ConfigError(format!("{key}: cannot read `{p}`: {e}")))).transpose()
}

/// The contents of `auth.public_key_file` and `auth.jwks_file`, those set.
fn key_files(auth: &AuthConfig, read: &mut dyn FnMut(&str) -> Result<String, String>) -> Result<(Option<String>, Option<String>), ConfigError> {
    Ok((named_file(read, "auth.public_key_file", &auth.public_key_file)?, named_file(read, "auth.jwks_file", &auth.jwks_file)?))
}

/// Whether `auth` names a key file, which [`reload_keys`] would read again.
pub fn has_key_files(auth: &AuthConfig) -> bool {
    auth.public_key_file.is_some() || auth.jwks_file.is_some()
}

/// A verifier for the running `[auth]` settings with the key files they name read again
/// (`read`, as for [`load`]), the secret in force (`secret`: [`Setup::keys`]'s, the environment's
/// or a generated one; `auth.secret` is the running configuration's) kept: a key rotated by
/// rewriting `auth.public_key_file` or `auth.jwks_file` is taken without a restart (SIGHUP). Every
/// check of the start applies; an error names the file or the setting at fault, and the frontend
/// then keeps the verifier in force. Nothing else of the configuration is read again.
pub fn reload_keys(
    settings: &Settings,
    secret: Option<Vec<u8>>,
    read: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<JwtVerifier, ConfigError> {
    let auth = &settings.config.auth;
    let (public_key_pem, jwks_json) = key_files(auth, read)?;
    let keys = KeyMaterial { secret, public_key_pem, jwks_json };
    JwtVerifier::new(auth, &keys).map_err(|e| ConfigError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn no_files(p: &str) -> Result<String, String> {
        Err(format!("no file {p}"))
    }

    #[test]
    fn no_file_and_no_env_gives_the_defaults_with_a_generated_secret() {
        let s = load(None, &Env::default(), &Overrides::default(), &mut no_files, &mut || vec![7; 32]).unwrap();
        assert!(s.generated_secret);
        assert_eq!(s.hmac_secret(), Some(&[7u8; 32][..]));
        assert_eq!(s.settings.config.server.listen, "127.0.0.1:8080");
        assert!(s.settings.config.broker.is_none());
    }

    #[test]
    fn env_and_overrides_win_over_the_file() {
        let env = Env { jwt_secret: Some(SECRET.into()), amqp_url: Some("amqp://h:5672/%2f".into()) };
        let o = Overrides { demo: false, listen: Some("127.0.0.1:0".into()) };
        let s = load(Some("[auth]\nsecret = \"another-secret-of-16+\"\n"), &env, &o, &mut no_files, &mut || unreachable!())
            .unwrap();
        assert!(!s.generated_secret);
        assert_eq!(s.hmac_secret(), Some(SECRET.as_bytes()));
        assert_eq!(s.settings.config.broker.as_ref().unwrap().url, "amqp://h:5672/%2f");
        assert_eq!(s.settings.config.server.listen, "127.0.0.1:0");
    }

    #[test]
    fn an_empty_secret_variable_is_refused_not_read_as_unset() {
        let env = Env { jwt_secret: Some(String::new()), amqp_url: None };
        let file = "[auth]\nsecret = \"file-secret-0123456789abcdef\"\n";
        let e = load(Some(file), &env, &Overrides::default(), &mut no_files, &mut || vec![1; 32]).unwrap_err();
        assert!(e.0.contains("SSE_GATEWAY_JWT_SECRET is set but empty"), "{}", e.0);
        let e = load(None, &env, &Overrides::default(), &mut no_files, &mut || vec![1; 32]).unwrap_err();
        assert!(e.0.contains("SSE_GATEWAY_JWT_SECRET"), "{}", e.0);
        // The broker's URL too: read as unset, the file (here without [broker]) would run on
        // the in-process source, ready and without events.
        let env = Env { jwt_secret: Some(SECRET.into()), amqp_url: Some(String::new()) };
        let e = load(None, &env, &Overrides::default(), &mut no_files, &mut || vec![1; 32]).unwrap_err();
        assert!(e.0.contains("SSE_GATEWAY_AMQP_URL is set but empty"), "{}", e.0);
    }

    #[test]
    fn named_files_are_read_and_errors_name_the_key() {
        let e = load(Some("catalogue = \"cat.toml\"\n"), &Env::default(), &Overrides::default(), &mut no_files, &mut || {
            vec![1; 32]
        })
        .unwrap_err();
        assert!(e.0.starts_with("catalogue: cannot read `cat.toml`"), "{e}");
        let mut read = |p: &str| if p == "cat.toml" { Ok(crate::catalogue::SEED_TOML.to_string()) } else { no_files(p) };
        let s = load(Some("catalogue = \"cat.toml\"\n"), &Env::default(), &Overrides::default(), &mut read, &mut || vec![1; 32]);
        assert_eq!(s.unwrap().settings.channels.len(), 4);
        // D5: the catalogue is data: a channel the file adds is served.
        let mut read = |p: &str| {
            if p == "cat.toml" {
                Ok(format!("{}\n[channels.invoices]\ndefault_version = 1\n[channels.invoices.versions.1.\"invoice.paid\"]\ninvoice_id = \"uuid\"\n", crate::catalogue::SEED_TOML))
            } else {
                no_files(p)
            }
        };
        let s = load(Some("catalogue = \"cat.toml\"\n"), &Env::default(), &Overrides::default(), &mut read, &mut || vec![1; 32]).unwrap();
        assert_eq!(s.settings.channels.len(), 5);
        assert!(s.settings.channel_id("invoices").is_some(), "the file's catalogue, not the seed");
    }

    /// SIGHUP's reload: the key files named at start are read again (the new key verifies, the
    /// old one no longer), the running `[auth]` settings and secret kept; a file that cannot be
    /// read or makes no verifier is an error naming its setting, and the verifier in force stays.
    #[test]
    fn reload_keys_reads_the_key_files_again_and_keeps_the_rest() {
        use crate::auth::{ReloadableVerifier, TokenError, TokenVerifier};
        let rsa1 = include_str!("../tests/fixtures/keys/rsa_public.pem");
        let rsa2 = include_str!("../tests/fixtures/keys/rsa2_public.pem");
        let text = "[auth]\nalgorithms = [\"RS256\", \"HS256\"]\npublic_key_file = \"k.pem\"\nissuer = \"idp\"\n";
        let env = Env { jwt_secret: Some(SECRET.into()), amqp_url: None };
        let s = load(Some(text), &env, &Overrides::default(), &mut |p| if p == "k.pem" { Ok(rsa1.into()) } else { no_files(p) }, &mut || unreachable!())
            .unwrap();
        let now = 1_700_000_000;
        let claims = serde_json::json!({ "sub": "alice", "iss": "idp", "exp": now + 600 });
        let sign = |pem: &str| {
            let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
            jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key).unwrap()
        };
        let by_rsa1 = sign(include_str!("../tests/fixtures/keys/rsa_private.pem"));
        let by_rsa2 = sign(include_str!("../tests/fixtures/keys/rsa2_private.pem"));
        let by_secret = crate::issue_hs256(&s.settings.config.auth, SECRET.as_bytes(), "alice", &[], now, 600).unwrap();
        let served = ReloadableVerifier::new(s.verifier.clone());
        assert!(served.verify(&by_rsa1, now).is_ok());
        assert_eq!(served.verify(&by_rsa2, now).unwrap_err(), TokenError::BadSignature);

        let reloaded = reload_keys(&s.settings, s.keys.secret.clone(), &mut |p| if p == "k.pem" { Ok(rsa2.into()) } else { no_files(p) }).unwrap();
        served.replace(reloaded);
        assert!(served.verify(&by_rsa2, now).is_ok(), "the new key");
        assert_eq!(served.verify(&by_rsa1, now).unwrap_err(), TokenError::BadSignature, "the old key");
        assert!(served.verify(&by_secret, now).is_ok(), "the secret in force is kept");
        let wrong_issuer = crate::issue_hs256(&crate::auth::AuthConfig::default(), SECRET.as_bytes(), "alice", &[], now, 600).unwrap();
        assert_eq!(served.verify(&wrong_issuer, now).unwrap_err(), TokenError::WrongIssuer, "the running [auth] settings are kept");

        let e = reload_keys(&s.settings, s.keys.secret.clone(), &mut no_files).unwrap_err();
        assert!(e.0.starts_with("auth.public_key_file: cannot read `k.pem`"), "{e}");
        let e = reload_keys(&s.settings, s.keys.secret.clone(), &mut |_| Ok("-----BEGIN PUBLIC KEY-----\nnot a key\n".into())).unwrap_err();
        assert!(e.0.contains("public_key_file"), "{e}");
        // The start's checks all apply: a new public key that the secret in force holds.
        let body: String = rsa2.lines().filter(|l| !l.starts_with("-----")).collect();
        let e = reload_keys(&s.settings, Some(body.into_bytes()), &mut |_| Ok(rsa2.into())).unwrap_err();
        assert!(e.0.contains("holds the configured public key material"), "{e}");
    }

    #[test]
    fn demo_refuses_a_broker() {
        let o = Overrides { demo: true, listen: None };
        let e = load(Some("[broker]\n"), &Env::default(), &o, &mut no_files, &mut || vec![1; 32]).unwrap_err();
        assert!(e.0.starts_with("--demo") && e.0.contains("[broker]"), "{e}");
        let env = Env { jwt_secret: None, amqp_url: Some("amqp://h:5672/%2f".into()) };
        let e = load(None, &env, &o, &mut no_files, &mut || vec![1; 32]).unwrap_err();
        assert!(e.0.starts_with("--demo") && e.0.contains("SSE_GATEWAY_AMQP_URL"), "{e}");
        let s = load(None, &Env::default(), &o, &mut no_files, &mut || vec![1; 32]).unwrap();
        assert!(s.settings.config.demo.enabled && s.settings.config.auth.cookie.is_some());
    }

    #[test]
    fn demo_needs_hs256_to_sign_its_token_and_says_so_when_read() {
        let o = Overrides { demo: true, listen: None };
        let pem = include_str!("../tests/fixtures/keys/rsa_public.pem");
        let mut read = |p: &str| if p == "k.pem" { Ok(pem.to_string()) } else { no_files(p) };
        let text = "[auth]\nalgorithms = [\"RS256\"]\npublic_key_file = \"k.pem\"\n";
        let e = load(Some(text), &Env::default(), &o, &mut read, &mut || vec![1; 32]).unwrap_err();
        assert!(e.0.starts_with("--demo") && e.0.contains("HS256"), "{e}");
        assert!(load(Some(text), &Env::default(), &Overrides::default(), &mut read, &mut || vec![1; 32]).is_ok());
    }

    #[test]
    fn a_toml_error_never_shows_the_value_of_the_line_it_quotes() {
        let e = load(Some("[auth]\nsecret = \"TopSecretValue\\q\"\n"), &Env::default(), &Overrides::default(), &mut no_files, &mut || vec![1; 32])
            .unwrap_err();
        assert!(!e.0.contains("TopSecretValue") && e.0.contains("<redacted>"), "{e}");
        let e = load(Some("[broker]\nurl = amqp://u:PassWord@h\n"), &Env::default(), &Overrides::default(), &mut no_files, &mut || vec![1; 32])
            .unwrap_err();
        assert!(!e.0.contains("PassWord"), "{e}");
        // A misspelled key, whose value may be anything: named, its value not shown.
        let e = load(Some("[broker]\nuri = \"amqp://u:PassWord@h\"\n"), &Env::default(), &Overrides::default(), &mut no_files, &mut || vec![1; 32])
            .unwrap_err();
        assert!(!e.0.contains("PassWord") && e.0.contains("uri") && e.0.contains("<redacted>"), "{e}");
        let e = load(Some("[server]\nlisten = 8080 x\n"), &Env::default(), &Overrides::default(), &mut no_files, &mut || vec![1; 32])
            .unwrap_err();
        assert!(e.0.contains("line 2") && e.0.contains("listen = <redacted>"), "the line is named: {e}");
        // A value serde quotes in its message, a line with no `key =`.
        for text in ["[broker]\nurl = \"amqp://h\"\nprefetch = \"amqp://u:PassWord@h\"\n", "[auth]\nsecret: PassWord\n", "broker = \"amqp://u:PassWord@h\"\n"] {
            let e = load(Some(text), &Env::default(), &Overrides::default(), &mut no_files, &mut || vec![1; 32]).unwrap_err();
            assert!(!e.0.contains("PassWord") && e.0.contains("<redacted>"), "{text}: {e}");
        }
    }
}
