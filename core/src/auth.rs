//! Token verification (D1): who a JWT says the user is, checked against the configured algorithms
//! and keys, with the clock passed in.
//!
//! # Contract
//!
//! - Sans-IO: the frontend reads the files [`AuthConfig`] names into a [`KeyMaterial`] and builds
//!   a [`JwtVerifier`] at start, and again from the key files at SIGHUP ([`ReloadableVerifier`]);
//!   [`JwtVerifier::new`] checks the whole setup and names the setting at fault. [`TokenVerifier::verify`] takes the current time as `unix_now` (seconds
//!   since the Unix epoch); nothing here reads a clock, and `jsonwebtoken` is told not to either
//!   (its `exp`/`nbf` checks are off; ours run against `unix_now`).
//! - No input panics: every token, however long, malformed or hostile, gives a [`TokenError`].
//!   Tokens longer than [`MAX_TOKEN_LEN`] are refused before any decoding.
//!
//! # Rules
//!
//! - Only the configured algorithms are accepted: the header's `alg` must be one of them, else
//!   [`TokenError::DisallowedAlgorithm`]; `none` can never be configured. The header is read here,
//!   before `jsonwebtoken` sees the token, so `alg: none` and algorithm names `jsonwebtoken` does
//!   not know are reported as disallowed rather than malformed.
//! - HMAC algorithms verify with the shared secret only; public-key algorithms with the PEM key or
//!   the JWKS only. An HMAC token signed with the bytes of the public key (the classic algorithm
//!   confusion) is therefore refused: as disallowed when no HMAC algorithm is configured, as a bad
//!   signature when one is.
//! - JWKS: a token with a `kid` uses the keys with that `kid` (fit for its algorithm); a token
//!   without one uses the only usable key, if there is exactly one. Otherwise
//!   [`TokenError::UnknownKey`]. With a PEM key the `kid` is ignored.
//! - A `crit` header is refused as malformed: this verifier understands no JWS extension
//!   (RFC 7515 §4.1.11).
//! - Claims: `exp` required (a NumericDate; fractions are rounded towards the stricter side);
//!   expired when `unix_now > exp + leeway`; `nbf`, when present, not yet valid when
//!   `unix_now + leeway < nbf`; `iss` must equal the configured issuer and `aud` (a string or an
//!   array of strings) must contain the configured audience, when those are configured; `sub` is a
//!   non-empty string. The roles claim may be absent or `null` (no roles), an array of strings, or a
//!   string holding one role or several separated by whitespace.
//! - Claims present with the wrong JSON type (`exp: "soon"`, `nbf: -1`, and a `sub` that is an
//!   array or an object, which `jsonwebtoken`'s claim parsing refuses) are
//!   [`TokenError::Malformed`]; a scalar `sub` that is not a string is a missing subject; an `iss`
//!   or `aud` of the wrong type is a wrong issuer / audience.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Longest token accepted, in bytes (16 KiB). Longer ones fail with [`TokenError::TooLong`]
/// before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The longest `leeway_secs` accepted: clock skew, not a grace period (D1: a small leeway).
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Shortest HMAC secret accepted, in bytes. 32 or more is recommended for HS256.
pub const MIN_SECRET_LEN: usize = 16;

/// The algorithm names [`AuthConfig::algorithms`] may list.
pub const SUPPORTED_ALGORITHMS: [&str; 12] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// Smallest and largest RSA modulus accepted, in bits. The upper bound is the RSA backend's: a
/// larger key could never verify anything.
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=4096;

/// `[auth]` section of the gateway config. Every field has a default, so an absent section is
/// valid TOML (but still needs a secret before [`JwtVerifier::new`] accepts it).
///
/// `Debug` never prints the secret.
#[derive(Clone, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Algorithms a token may be signed with. Default `["HS256"]`. Allowed names:
    /// [`SUPPORTED_ALGORITHMS`] (case-sensitive); `none` never.
    pub algorithms: Vec<String>,
    /// HMAC shared secret (the frontend may fill it from the env var `SSE_GATEWAY_JWT_SECRET`).
    /// [`KeyMaterial::secret`], when set, takes precedence. At least [`MIN_SECRET_LEN`] bytes.
    pub secret: Option<String>,
    /// Path of a PEM public key (the frontend reads it into [`KeyMaterial::public_key_pem`]).
    pub public_key_file: Option<String>,
    /// Path of a JWKS JSON file (the frontend reads it into [`KeyMaterial::jwks_json`]).
    pub jwks_file: Option<String>,
    /// Required value of the `iss` claim; `None` skips the check.
    pub issuer: Option<String>,
    /// Value the `aud` claim must hold (or contain, when an array); `None` skips the check.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds. Default 30.
    pub leeway_secs: u64,
    /// Claim holding the user's roles. Default `"roles"`. A top-level claim of exactly that name
    /// wins; otherwise a dotted name walks nested objects (`realm_access.roles` for Keycloak).
    pub roles_claim: String,
    /// Name of a cookie carrying the token; default [`DEFAULT_COOKIE`] (D1: the browser's
    /// native `EventSource` cannot set headers). `None` turns cookies off (`cookie = ""` in TOML).
    #[serde(deserialize_with = "de_cookie")]
    pub cookie: Option<String>,
    /// Accept the token in an `access_token` query parameter. Default `false` (tokens in URLs
    /// leak into logs).
    pub query_param: bool,
}

/// The cookie a token is read from when `[auth] cookie` is not set.
pub const DEFAULT_COOKIE: &str = "sse_token";

/// `cookie = "name"`, or `cookie = ""`: no cookie is read.
fn de_cookie<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let name = <String as serde::Deserialize>::deserialize(d)?;
    Ok(Some(name).filter(|n| !n.is_empty()))
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithms: vec!["HS256".to_owned()],
            secret: None,
            public_key_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            leeway_secs: 30,
            roles_claim: "roles".to_owned(),
            cookie: Some(DEFAULT_COOKIE.to_owned()),
            query_param: false,
        }
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("algorithms", &self.algorithms)
            .field("secret", &self.secret.as_ref().map(|_| Redacted))
            .field("public_key_file", &self.public_key_file)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway_secs)
            .field("roles_claim", &self.roles_claim)
            .field("cookie", &self.cookie)
            .field("query_param", &self.query_param)
            .finish()
    }
}

/// Key material the frontend read from the files [`AuthConfig`] names (and the environment).
///
/// `Debug` never prints the secret.
#[derive(Clone, Default)]
pub struct KeyMaterial {
    /// HMAC shared secret; when `None`, [`AuthConfig::secret`] is used.
    pub secret: Option<Vec<u8>>,
    /// Contents of [`AuthConfig::public_key_file`]: one PEM public key.
    pub public_key_pem: Option<String>,
    /// Contents of [`AuthConfig::jwks_file`]: a JWKS document (`{"keys": [...]}`).
    pub jwks_json: Option<String>,
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyMaterial")
            .field("secret", &self.secret.as_ref().map(|_| Redacted))
            .field(
                "public_key_pem",
                &self.public_key_pem.as_ref().map(String::len),
            )
            .field("jwks_json", &self.jwks_json.as_ref().map(String::len))
            .finish()
    }
}

/// Prints `[redacted]` in place of secret material.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Who a valid token says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The `sub` claim: the user id (never empty).
    pub user: String,
    /// The roles from the configured roles claim, in token order, without duplicates or empty
    /// strings.
    pub roles: Vec<String>,
    /// The `exp` claim, in Unix seconds (without leeway): when a stream opened with this token
    /// must end (D1).
    pub expires_at: u64,
}

/// Why a token was refused. [`TokenError::reason`] gives a stable label for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenError {
    /// Not a JWS compact token: wrong number of parts, bad base64url or JSON, a claim of the
    /// wrong type, a `crit` header.
    Malformed,
    /// The header's `alg` is not one of the configured algorithms (`none` never is).
    DisallowedAlgorithm,
    /// The signature does not verify with the key chosen for the token.
    BadSignature,
    /// No configured key fits the token (unknown `kid`, or no `kid` and several JWKS keys).
    UnknownKey,
    /// `unix_now > exp + leeway`.
    Expired,
    /// `unix_now + leeway < nbf`.
    NotYetValid,
    /// An issuer is configured and `iss` is missing or different.
    WrongIssuer,
    /// An audience is configured and `aud` is missing or does not contain it.
    WrongAudience,
    /// No `exp` claim (or `null`).
    MissingExpiry,
    /// `sub` is missing, `null`, empty, or a number or boolean (an array or object is
    /// [`TokenError::Malformed`]).
    MissingSubject,
    /// `sub` holds a control character (a line break in it would forge log lines), a line or
    /// paragraph separator, an invisible format character or a filler letter, or is made only of
    /// joiners, selectors and whitespace (it shows nothing).
    BadSubject,
    /// The roles claim is neither an array of strings nor a string.
    BadRolesClaim,
    /// Longer than [`MAX_TOKEN_LEN`].
    TooLong,
}

impl TokenError {
    /// Every variant, e.g. to pre-register one metric series per reason.
    pub const ALL: [TokenError; 13] = [
        TokenError::Malformed,
        TokenError::DisallowedAlgorithm,
        TokenError::BadSignature,
        TokenError::UnknownKey,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::WrongIssuer,
        TokenError::WrongAudience,
        TokenError::MissingExpiry,
        TokenError::MissingSubject,
        TokenError::BadSubject,
        TokenError::BadRolesClaim,
        TokenError::TooLong,
    ];

    /// A stable snake_case label for logs and metrics (`"expired"`, `"bad_signature"`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::DisallowedAlgorithm => "disallowed_algorithm",
            TokenError::BadSignature => "bad_signature",
            TokenError::UnknownKey => "unknown_key",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::WrongIssuer => "wrong_issuer",
            TokenError::WrongAudience => "wrong_audience",
            TokenError::MissingExpiry => "missing_expiry",
            TokenError::MissingSubject => "missing_subject",
            TokenError::BadSubject => "bad_subject",
            TokenError::BadRolesClaim => "bad_roles_claim",
            TokenError::TooLong => "too_long",
        }
    }
}

impl fmt::Display for TokenError {
    /// Writes the same label as [`TokenError::reason`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for TokenError {}

/// Whether `secret` holds the configured public key material or lies within it (16 bytes or more
/// of it), as text or as bytes: the PEM's base64 body (one line or many, a certificate's too) or
/// its DER, a JWKS key's `n`, `x` or `y` or their bytes; the secret read as it is (`\n` written
/// for line breaks too), as base64 (padded or not), base64url or hex, and the text a base64 one
/// decodes to (a realm's published key, a whole key file in base64, the modulus as openssl
/// prints it).
fn shares_public_key_text(secret: &[u8], keys: &KeyMaterial) -> bool {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    use base64::Engine as _;
    let compact = |t: &str| t.chars().filter(|c| !c.is_ascii_whitespace()).collect::<String>();
    // Each PEM block's body (the text between a `-----BEGIN ...-----` and its `-----END ...-----`)
    // and its DER.
    let pem_blocks = |pem: &str| {
        let mut out: Vec<Vec<u8>> = Vec::new();
        for block in pem.split("-----BEGIN").skip(1) {
            let body = block.split_once("-----").map_or("", |(_, rest)| rest);
            let body = compact(body.split("-----END").next().unwrap_or_default());
            out.extend(STANDARD.decode(&body).ok());
            out.push(body.into_bytes());
        }
        out
    };
    let mut material: Vec<Vec<u8>> = Vec::new();
    if let Some(pem) = &keys.public_key_pem {
        material.extend(pem_blocks(pem));
    }
    if let Some(Ok(jwks)) = keys.jwks_json.as_deref().map(serde_json::from_str::<serde_json::Value>) {
        for key in jwks["keys"].as_array().into_iter().flatten() {
            for text in ["n", "x", "y"].iter().filter_map(|f| key[*f].as_str()).map(compact) {
                material.extend(URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok());
                material.push(text.into_bytes());
            }
        }
    }
    // As pasted: line breaks written `\n` (an environment file), hex (`openssl ... -modulus`).
    let text = compact(&String::from_utf8_lossy(secret).replace("\\n", ""));
    let mut forms = vec![secret.to_vec(), text.clone().into_bytes()];
    let unpadded = text.trim_end_matches('=');
    forms.extend([STANDARD.decode(&text), STANDARD_NO_PAD.decode(unpadded), URL_SAFE_NO_PAD.decode(unpadded)].into_iter().flatten());
    let hex = text.strip_prefix("Modulus=").unwrap_or(&text).replace(':', "");
    if hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        forms.push((0..hex.len()).step_by(2).filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect());
    }
    // A whole key file in base64 (a Kubernetes secret): its text, without its line breaks, and
    // its PEM blocks' bodies and DER.
    let decoded: Vec<String> = forms[2..].iter().filter_map(|f| std::str::from_utf8(f).ok()).map(str::to_owned).collect();
    for text in decoded {
        forms.extend(pem_blocks(&text));
        forms.push(compact(&text).into_bytes());
    }
    let within = |hay: &[u8], needle: &[u8]| needle.len() >= MIN_SECRET_LEN && hay.windows(needle.len()).any(|w| w == needle);
    material.iter().any(|m| forms.iter().any(|f| within(f, m) || within(m, f)))
}

/// The `[auth]` settings and key material cannot make a verifier. `Display` says which setting and
/// why; it never includes secret material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSetupError(String);

impl AuthSetupError {
    fn new(message: impl Into<String>) -> Self {
        AuthSetupError(message.into())
    }
}

impl fmt::Display for AuthSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthSetupError {}

/// Checks a bearer token and says who it names.
pub trait TokenVerifier {
    /// Verifies `token` (the bare JWT, without `Bearer `) at time `unix_now` (Unix seconds).
    fn verify(&self, token: &str, unix_now: u64) -> Result<Identity, TokenError>;
}

/// A [`TokenVerifier`] for JWTs, built from the `[auth]` settings and key material (at start,
/// and at each SIGHUP that reads the key files again).
///
/// Cheap to clone (the keys are shared), `Send + Sync`. `Debug` shows the setup, never the keys.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// The configured algorithms, without duplicates, each with the `jsonwebtoken` validation that
    /// checks only its signature (claims are checked here, against `unix_now`).
    algorithms: Vec<Allowed>,
    /// The HMAC secret, present when an HMAC algorithm is configured.
    hmac: Option<DecodingKey>,
    /// The PEM public key and its family.
    pem: Option<(AlgorithmFamily, DecodingKey)>,
    /// The usable JWKS keys (those fit for a configured algorithm).
    jwks: Vec<JwksKey>,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    roles_claim: String,
}

struct Allowed {
    name: &'static str,
    alg: Algorithm,
    validation: Validation,
}

struct JwksKey {
    kid: Option<String>,
    /// Configured algorithms this key may verify.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        let names: Vec<&str> = inner.algorithms.iter().map(|a| a.name).collect();
        let kids = self.jwks_kids();
        f.debug_struct("JwtVerifier")
            .field("algorithms", &names)
            .field("secret", &inner.hmac.as_ref().map(|_| Redacted))
            .field("public_key", &inner.pem.as_ref().map(|(family, _)| family))
            .field("jwks_kids", &kids)
            .field("issuer", &inner.issuer)
            .field("audience", &inner.audience)
            .field("leeway_secs", &inner.leeway)
            .field("roles_claim", &inner.roles_claim)
            .finish()
    }
}

impl JwtVerifier {
    /// The `kid`s of the JWKS keys in use (`(no kid)` for a key without one), in the file's order.
    pub fn jwks_kids(&self) -> Vec<String> {
        self.inner.jwks.iter().map(|k| k.kid.as_deref().unwrap_or("(no kid)").to_string()).collect()
    }

    /// Checks the `[auth]` settings against the key material and builds the verifier.
    ///
    /// Refused: an empty or unknown algorithm list; an HMAC algorithm without a secret (with a
    /// specific message when only a public key is given: algorithm confusion); a secret shorter
    /// than [`MIN_SECRET_LEN`]; a public-key algorithm without a key; both a PEM key and a JWKS; a
    /// PEM key or JWKS when no public-key algorithm is configured; a PEM that holds a private key
    /// or a key of the wrong type, curve or size for the configured algorithms; a JWKS that does not
    /// parse, holds a broken key, or has no usable key for a configured public-key algorithm; an
    /// empty issuer, audience or roles claim name; a cookie name that is not an HTTP token.
    pub fn new(config: &AuthConfig, keys: &KeyMaterial) -> Result<JwtVerifier, AuthSetupError> {
        let algorithms = parse_algorithms(&config.algorithms)?;
        let public_algs: Vec<Algorithm> = algorithms
            .iter()
            .map(|a| a.alg)
            .filter(|a| a.family() != AlgorithmFamily::Hmac)
            .collect();
        let hmac_names: Vec<&str> = algorithms
            .iter()
            .filter(|a| a.alg.family() == AlgorithmFamily::Hmac)
            .map(|a| a.name)
            .collect();
        let has_public_material = keys.public_key_pem.is_some() || keys.jwks_json.is_some();

        let secret = keys
            .secret
            .as_deref()
            .or(config.secret.as_deref().map(str::as_bytes));
        let hmac = if hmac_names.is_empty() {
            // A secret with no HMAC algorithm is ignored: it may come from the environment.
            None
        } else {
            let names = hmac_names.join(", ");
            match secret {
                None if has_public_material => {
                    return Err(AuthSetupError::new(format!(
                        "[auth] algorithms lists {names} but no secret is set, only a public key: \
                         an HMAC algorithm is never verified with a public key (algorithm \
                         confusion); set secret (or SSE_GATEWAY_JWT_SECRET) or remove {names}"
                    )));
                }
                None => {
                    return Err(AuthSetupError::new(format!(
                        "[auth] algorithms lists {names} but no secret is set (secret or \
                         SSE_GATEWAY_JWT_SECRET)"
                    )));
                }
                Some(s) if s.len() < MIN_SECRET_LEN => {
                    return Err(AuthSetupError::new(format!(
                        "[auth] secret (or SSE_GATEWAY_JWT_SECRET) is {} bytes long; at least {MIN_SECRET_LEN} \
                         are required (32 or more recommended)",
                        s.len()
                    )));
                }
                Some(s) if s.trim_ascii().is_empty() => {
                    return Err(AuthSetupError::new(
                        "[auth] secret (or SSE_GATEWAY_JWT_SECRET) is only whitespace (a blank line of the file?)",
                    ));
                }
                // A public key is public: as an HMAC secret, anyone holding it signs tokens
                // (algorithm confusion, reached through the configuration).
                Some(s) if s.windows(10).any(|w| w == b"-----BEGIN") || s.windows(5).any(|w| w == b"\"kty\"") => {
                    return Err(AuthSetupError::new(
                        "[auth] secret (or SSE_GATEWAY_JWT_SECRET) holds a PEM key or a JWK: key material, often public, is no HMAC secret \
                         (anyone holding a public key could sign tokens); a public key goes in public_key_file or \
                         jwks_file, an HMAC secret as its bytes",
                    ));
                }
                // The same, without its armour: the PEM's base64 body, a JWK's `n`, `x` or `y`.
                Some(s) if shares_public_key_text(s, keys) => {
                    return Err(AuthSetupError::new(
                        "[auth] secret (or SSE_GATEWAY_JWT_SECRET) holds the configured public key material (public_key_file's \
                         base64 body or its bytes, a certificate's included, or a jwks_file key's n, x or y), as text, \
                         base64 or hex: a public key is no HMAC secret (anyone holding it could \
                         sign tokens)",
                    ));
                }
                Some(s) => Some(DecodingKey::from_secret(s)),
            }
        };

        let mut pem = None;
        let mut jwks = Vec::new();
        match (keys.public_key_pem.as_deref(), keys.jwks_json.as_deref()) {
            (Some(_), Some(_)) => {
                return Err(AuthSetupError::new(
                    "[auth] public_key_file and jwks_file are both set: set one of them",
                ));
            }
            (Some(_), None) if public_algs.is_empty() => {
                return Err(AuthSetupError::new(
                    "[auth] public_key_file is set but algorithms lists no public-key algorithm \
                     (RS256, PS256, ES256, EdDSA, ...)",
                ));
            }
            (None, Some(_)) if public_algs.is_empty() => {
                return Err(AuthSetupError::new(
                    "[auth] jwks_file is set but algorithms lists no public-key algorithm \
                     (RS256, PS256, ES256, EdDSA, ...)",
                ));
            }
            (None, None) if !public_algs.is_empty() => {
                return Err(AuthSetupError::new(format!(
                    "[auth] algorithms lists {} but neither public_key_file nor jwks_file is set",
                    names_of(&public_algs)
                )));
            }
            (Some(text), None) => pem = Some(load_pem(text, &public_algs)?),
            (None, Some(text)) => jwks = load_jwks(text, &public_algs)?,
            (None, None) => {}
        }

        let issuer = non_empty("issuer", config.issuer.as_deref())?;
        let audience = non_empty("audience", config.audience.as_deref())?;
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(AuthSetupError::new(format!(
                "[auth] leeway_secs {} is more than {MAX_LEEWAY_SECS}: it is for clock skew, and a longer one \
                 accepts tokens long expired or not yet valid",
                config.leeway_secs
            )));
        }
        if config.roles_claim.is_empty() {
            return Err(AuthSetupError::new("[auth] roles_claim must not be empty"));
        }
        if config.roles_claim.split('.').any(str::is_empty) {
            return Err(AuthSetupError::new(format!(
                "[auth] roles_claim {:?} has an empty path segment (a leading, trailing or doubled '.'): \
                 as a path it names no claim (likely a typo)",
                config.roles_claim
            )));
        }
        if let Some(cookie) = &config.cookie {
            if cookie.is_empty() || !cookie.bytes().all(is_token_char) {
                return Err(AuthSetupError::new(format!(
                    "[auth] cookie {cookie:?} is not a valid cookie name (letters, digits and \
                     !#$%&'*+-.^_`|~ only)"
                )));
            }
        }

        Ok(JwtVerifier {
            inner: Arc::new(Inner {
                algorithms,
                hmac,
                pem,
                jwks,
                issuer,
                audience,
                leeway: config.leeway_secs,
                roles_claim: config.roles_claim.clone(),
            }),
        })
    }
}

impl TokenVerifier for JwtVerifier {
    fn verify(&self, token: &str, unix_now: u64) -> Result<Identity, TokenError> {
        let inner = &*self.inner;
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::TooLong);
        }
        let mut parts = token.split('.');
        let header_b64 = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(header), Some(_), Some(_), None) => header,
            _ => return Err(TokenError::Malformed),
        };
        let header_json = b64url_decode(header_b64).ok_or(TokenError::Malformed)?;
        let header: Map<String, Value> =
            serde_json::from_slice(&header_json).map_err(|_| TokenError::Malformed)?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or(TokenError::Malformed)?;
        let allowed = inner
            .algorithms
            .iter()
            .find(|a| a.name == alg_name)
            .ok_or(TokenError::DisallowedAlgorithm)?;
        if header.contains_key("crit") {
            return Err(TokenError::Malformed);
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(kid)) => Some(kid.as_str()),
            Some(_) => return Err(TokenError::Malformed),
        };

        let candidates = inner.keys_for(allowed.alg, kid)?;
        let mut outcome = Err(TokenError::UnknownKey);
        for key in candidates {
            outcome = jsonwebtoken::decode::<Map<String, Value>>(token, key, &allowed.validation)
                .map(|data| data.claims)
                .map_err(|e| map_jwt_error(e.kind()));
            if outcome != Err(TokenError::BadSignature) {
                break;
            }
        }
        let claims = outcome?;
        inner.check_claims(claims, unix_now)
    }
}

/// A [`JwtVerifier`] whose keys can be replaced while requests are verified: the frontends read
/// the key files again at SIGHUP ([`crate::setup::reload_keys`]) and put the new verifier in
/// with [`ReloadableVerifier::replace`]; a verification already running finishes with the keys
/// it started with. `Send + Sync`.
#[derive(Debug)]
pub struct ReloadableVerifier(std::sync::RwLock<JwtVerifier>);

impl ReloadableVerifier {
    /// Serves `verifier` until it is replaced.
    pub fn new(verifier: JwtVerifier) -> ReloadableVerifier {
        ReloadableVerifier(std::sync::RwLock::new(verifier))
    }

    /// Verifies every token from now on with `verifier`.
    pub fn replace(&self, verifier: JwtVerifier) {
        *self.0.write().unwrap_or_else(std::sync::PoisonError::into_inner) = verifier;
    }

    /// The verifier in force (a clone: the keys are shared).
    pub fn current(&self) -> JwtVerifier {
        self.0.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

impl TokenVerifier for ReloadableVerifier {
    fn verify(&self, token: &str, unix_now: u64) -> Result<Identity, TokenError> {
        // Outside the lock: a replacement never waits for a signature check.
        self.current().verify(token, unix_now)
    }
}

impl Inner {
    /// The keys that may verify a token signed with `alg` and carrying `kid`, in trial order.
    fn keys_for(&self, alg: Algorithm, kid: Option<&str>) -> Result<Vec<&DecodingKey>, TokenError> {
        if alg.family() == AlgorithmFamily::Hmac {
            return self
                .hmac
                .as_ref()
                .map(|key| vec![key])
                .ok_or(TokenError::UnknownKey);
        }
        if let Some((family, key)) = &self.pem {
            return if *family == alg.family() {
                Ok(vec![key])
            } else {
                Err(TokenError::UnknownKey)
            };
        }
        let usable = self.jwks.iter().filter(|k| k.algorithms.contains(&alg));
        let chosen: Vec<&DecodingKey> = match kid {
            Some(kid) => usable
                .filter(|k| k.kid.as_deref() == Some(kid))
                .map(|k| &k.key)
                .collect(),
            None => {
                let all: Vec<&DecodingKey> = usable.map(|k| &k.key).collect();
                if all.len() == 1 {
                    all
                } else {
                    Vec::new()
                }
            }
        };
        if chosen.is_empty() {
            Err(TokenError::UnknownKey)
        } else {
            Ok(chosen)
        }
    }

    /// The claim checks `jsonwebtoken` was told to skip, against `unix_now`.
    fn check_claims(
        &self,
        mut claims: Map<String, Value>,
        unix_now: u64,
    ) -> Result<Identity, TokenError> {
        let expires_at = match claims.get("exp") {
            None | Some(Value::Null) => return Err(TokenError::MissingExpiry),
            Some(exp) => numeric_date(exp, Rounding::Down).ok_or(TokenError::Malformed)?,
        };
        if unix_now > expires_at.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        match claims.get("nbf") {
            None | Some(Value::Null) => {}
            Some(nbf) => {
                let nbf = numeric_date(nbf, Rounding::Up).ok_or(TokenError::Malformed)?;
                if unix_now.saturating_add(self.leeway) < nbf {
                    return Err(TokenError::NotYetValid);
                }
            }
        }
        if let Some(issuer) = &self.issuer {
            match claims.get("iss") {
                Some(Value::String(iss)) if iss == issuer => {}
                _ => return Err(TokenError::WrongIssuer),
            }
        }
        if let Some(audience) = &self.audience {
            let matches = match claims.get("aud") {
                Some(Value::String(aud)) => aud == audience,
                Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(audience)),
                _ => false,
            };
            if !matches {
                return Err(TokenError::WrongAudience);
            }
        }
        let roles = roles_from(lookup_claim(&claims, &self.roles_claim))?;
        let user = match claims.remove("sub") {
            // Blank (only whitespace) is no user id: it names no one in a log line or a recipient list.
            Some(Value::String(sub)) if !sub.trim().is_empty() => sub,
            _ => return Err(TokenError::MissingSubject),
        };
        if sub_unroutable(&user) {
            return Err(TokenError::BadSubject);
        }
        Ok(Identity {
            user,
            roles,
            expires_at,
        })
    }
}

/// A user id holding a control character (a line break would forge log lines), a Unicode line or
/// paragraph separator, or an invisible formatting character (zero-width space, bidirectional
/// marks and overrides, word joiners, a byte-order mark: a log line that reads other than it
/// is), or a filler letter that shows nothing (Hangul fillers). Not the
/// zero-width (non-)joiners U+200C and U+200D, which Persian and Indic spellings
/// and emoji sequences need. One holding a comma or with whitespace at
/// an end (an LDAP DN, say) is a user like any other, though no `recipient_ids` header can name
/// it (the configuration reference says so). Refused too: one made only of the joiners and
/// selectors kept above (and U+034F, the Mongolian selectors) and whitespace: like a blank one
/// it shows nothing and names no one.
fn sub_unroutable(sub: &str) -> bool {
    let shows_nothing = |c: char| {
        c.is_whitespace() || matches!(c, '\u{034F}' | '\u{180B}'..='\u{180D}' | '\u{180F}' | '\u{200C}' | '\u{200D}' | '\u{FE00}'..='\u{FE0F}' | '\u{E0100}'..='\u{E01EF}')
    };
    sub.chars().all(shows_nothing) || sub.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{061C}' | '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{FEFF}')
            // The other format characters (Unicode category Cf): soft hyphen, Arabic and Syriac
            // marks, the Mongolian vowel separator, interlinear annotation, Egyptian and
            // Duployan format controls, musical symbol formatting, tag characters.
            || matches!(c, '\u{00AD}' | '\u{0600}'..='\u{0605}' | '\u{06DD}' | '\u{070F}' | '\u{0890}'..='\u{0891}' | '\u{08E2}' | '\u{180E}')
            || matches!(c, '\u{FFF9}'..='\u{FFFB}' | '\u{110BD}' | '\u{110CD}' | '\u{13430}'..='\u{1343F}' | '\u{1BCA0}'..='\u{1BCA3}')
            || matches!(c, '\u{1D173}'..='\u{1D17A}' | '\u{E0001}' | '\u{E0020}'..='\u{E007F}')
            // Default-ignorable letters that show nothing: the Hangul and halfwidth fillers
            // (`alice` then U+3164 reads as `alice`), the Khmer inherent vowels, and the
            // unassigned U+FFF0..U+FFF8. Not the variation selectors (emoji presentation, CJK
            // ideographic variants, Mongolian), nor the combining grapheme joiner: letters' business.
            || matches!(c, '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{3164}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}')
    })
}

/// Validates and dedupes the configured algorithm names.
fn parse_algorithms(names: &[String]) -> Result<Vec<Allowed>, AuthSetupError> {
    if names.is_empty() {
        return Err(AuthSetupError::new(format!(
            "[auth] algorithms is empty: list at least one of {}",
            SUPPORTED_ALGORITHMS.join(", ")
        )));
    }
    let mut allowed: Vec<Allowed> = Vec::new();
    for name in names {
        let known = SUPPORTED_ALGORITHMS.iter().find(|s| **s == name.as_str());
        let alg = known.and_then(|s| Algorithm::from_str(s).ok().map(|alg| (*s, alg)));
        let Some((name, alg)) = alg else {
            let why = if name.eq_ignore_ascii_case("none") {
                "unsigned tokens are never accepted".to_owned()
            } else {
                format!(
                    "supported (case-sensitive): {}",
                    SUPPORTED_ALGORITHMS.join(", ")
                )
            };
            return Err(AuthSetupError::new(format!(
                "[auth] algorithms: unknown algorithm {name:?}; {why}"
            )));
        };
        if !allowed.iter().any(|a| a.alg == alg) {
            allowed.push(Allowed {
                name,
                alg,
                validation: signature_only(alg),
            });
        }
    }
    Ok(allowed)
}

/// A validation that checks the signature of `alg` and nothing else: no claim is required and
/// no clock is read (`exp`/`nbf` checks off); the claims are checked in [`Inner::check_claims`].
fn signature_only(alg: Algorithm) -> Validation {
    let mut validation = Validation::new(alg);
    validation.required_spec_claims.clear();
    validation.leeway = 0;
    validation.reject_tokens_expiring_in_less_than = 0;
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.aud = None;
    validation.iss = None;
    validation.sub = None;
    validation
}

fn names_of(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn family_name(family: AlgorithmFamily) -> &'static str {
    match family {
        AlgorithmFamily::Hmac => "HMAC",
        AlgorithmFamily::Rsa => "RSA",
        AlgorithmFamily::Ec => "EC",
        AlgorithmFamily::Ed => "Ed25519",
    }
}

fn non_empty(setting: &str, value: Option<&str>) -> Result<Option<String>, AuthSetupError> {
    match value {
        Some("") => Err(AuthSetupError::new(format!(
            "[auth] {setting} is empty: remove it to skip the check, or give the expected value"
        ))),
        other => Ok(other.map(str::to_owned)),
    }
}

/// RFC 7230 `tchar`, which RFC 6265 uses for cookie names.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads the PEM public key for the configured public-key algorithms (all of one family).
fn load_pem(
    text: &str,
    public_algs: &[Algorithm],
) -> Result<(AlgorithmFamily, DecodingKey), AuthSetupError> {
    if text.contains("PRIVATE KEY-----") {
        return Err(AuthSetupError::new(
            "[auth] public_key_file holds a private key: give the gateway the public key only \
             (openssl pkey -in private.pem -pubout)",
        ));
    }
    // The PEM reader takes the first block and ignores the rest: a second key (an old and a new
    // one in one file, a rotation) would be refused as a bad signature on every token it signed.
    // A certificate chain (the leaf first, whose key is read, then its issuers) is one key.
    let begins: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("-----BEGIN ")).collect();
    let blocks = begins.len();
    if blocks > 1 && !begins.iter().all(|l| *l == "-----BEGIN CERTIFICATE-----") {
        return Err(AuthSetupError::new(format!(
            "[auth] public_key_file holds {blocks} PEM blocks; it takes one public key: use jwks_file for several keys"
        )));
    }
    let Some(first) = public_algs.first() else {
        return Err(AuthSetupError::new(
            "[auth] public_key_file: no public-key algorithm configured",
        ));
    };
    let family = first.family();
    if let Some(other) = public_algs.iter().find(|a| a.family() != family) {
        return Err(AuthSetupError::new(format!(
            "[auth] public_key_file holds one key, but {first:?} and {other:?} need different key \
             types: use jwks_file for several keys"
        )));
    }
    let parsed = match family {
        AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(text.as_bytes()),
        AlgorithmFamily::Ec => DecodingKey::from_ec_pem(text.as_bytes()),
        AlgorithmFamily::Ed => DecodingKey::from_ed_pem(text.as_bytes()),
        AlgorithmFamily::Hmac => {
            return Err(AuthSetupError::new(
                "[auth] public_key_file: HMAC takes no public key",
            ));
        }
    };
    let key = parsed.map_err(|_| {
        AuthSetupError::new(format!(
            "[auth] public_key_file: {} needs an {} public key in PEM (-----BEGIN PUBLIC KEY-----); \
             the file holds none, or a key of another type",
            names_of(public_algs),
            family_name(family)
        ))
    })?;
    for alg in public_algs {
        check_public_key(&key, *alg)
            .map_err(|why| AuthSetupError::new(format!("[auth] public_key_file: {why}")))?;
    }
    Ok((family, key))
}

/// Reads the JWKS and keeps the keys fit for a configured public-key algorithm. Keys for
/// encryption, of other types (`oct`, unknown `kty`, other curves) or for algorithms not
/// configured are ignored; a key meant for signatures that is broken is an error.
fn load_jwks(text: &str, public_algs: &[Algorithm]) -> Result<Vec<JwksKey>, AuthSetupError> {
    let set: JwkSet = serde_json::from_str(text).map_err(|e| {
        AuthSetupError::new(format!(
            "[auth] jwks_file is not a JWKS document ({{\"keys\": [...]}}): {e}"
        ))
    })?;
    let mut usable = Vec::new();
    for (index, jwk) in set.keys.iter().enumerate() {
        let label = match &jwk.common.key_id {
            Some(kid) => format!("kid {kid:?}"),
            None => format!("key #{index} (no kid)"),
        };
        let Some(algorithms) = jwk_algorithms(jwk, public_algs)
            .map_err(|why| AuthSetupError::new(format!("[auth] jwks_file, {label}: {why}")))?
        else {
            continue;
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| {
            AuthSetupError::new(format!("[auth] jwks_file, {label}: unusable key ({e})"))
        })?;
        for alg in &algorithms {
            check_public_key(&key, *alg)
                .map_err(|why| AuthSetupError::new(format!("[auth] jwks_file, {label}: {why}")))?;
        }
        usable.push(JwksKey {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        });
    }
    for alg in public_algs {
        if !usable.iter().any(|k| k.algorithms.contains(alg)) {
            return Err(AuthSetupError::new(format!(
                "[auth] jwks_file has no key usable for {alg:?} (a signature key of the right type, \
                 and `alg` {alg:?} or none)"
            )));
        }
    }
    Ok(usable)
}

/// The configured algorithms `jwk` may verify: `Ok(None)` when it is not for us at all.
fn jwk_algorithms(jwk: &Jwk, configured: &[Algorithm]) -> Result<Option<Vec<Algorithm>>, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(_) => return Ok(None),
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, KeyOperations::Verify)) {
            return Ok(None);
        }
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa.algorithms(),
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Ok(None),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Ok(None),
        },
        // `oct` keys are HMAC secrets: HMAC uses the configured secret only.
        _ => return Ok(None),
    };
    let declared: Vec<Algorithm> = match jwk.common.key_algorithm {
        None => by_type.to_vec(),
        Some(key_alg) => match Algorithm::try_from(key_alg) {
            Ok(alg) if by_type.contains(&alg) => vec![alg],
            Ok(alg) => return Err(format!("its alg {alg:?} does not fit its key type")),
            // An algorithm jsonwebtoken cannot verify with (RSA-OAEP, ...): not a signature key.
            Err(_) => return Ok(None),
        },
    };
    let algorithms: Vec<Algorithm> = declared
        .into_iter()
        .filter(|alg| configured.contains(alg))
        .collect();
    Ok(if algorithms.is_empty() {
        None
    } else {
        Some(algorithms)
    })
}

/// Checks up front what would otherwise make every token fail (or, for a short Ed25519 key, make
/// the backend panic): the key's size, curve and encoding for `alg`.
fn check_public_key(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    match alg.family() {
        AlgorithmFamily::Hmac => return Ok(()),
        AlgorithmFamily::Rsa => {
            let jwk = Jwk::from_decoding_key(key, None)
                .map_err(|e| format!("not a valid RSA public key ({e})"))?;
            let AlgorithmParameters::RSA(params) = &jwk.algorithm else {
                return Err("not an RSA key".to_owned());
            };
            let n = b64url_decode(&params.n).ok_or("RSA modulus is not base64url")?;
            let e = b64url_decode(&params.e).ok_or("RSA exponent is not base64url")?;
            check_rsa_components(&n, &e)?;
        }
        AlgorithmFamily::Ec => {
            let jwk = Jwk::from_decoding_key(key, None)
                .map_err(|e| format!("not a valid EC public key ({e})"))?;
            let AlgorithmParameters::EllipticCurve(params) = &jwk.algorithm else {
                return Err("not an EC key".to_owned());
            };
            let expected = match alg {
                Algorithm::ES384 => EllipticCurve::P384,
                _ => EllipticCurve::P256,
            };
            if params.curve != expected {
                return Err(format!(
                    "{alg:?} needs a {expected:?} key, this one is {:?}",
                    params.curve
                ));
            }
        }
        AlgorithmFamily::Ed => {
            // The backend slices the first 32 bytes without checking: never hand it fewer.
            match key.try_get_as_bytes() {
                Ok(bytes) if bytes.len() == 32 => {}
                _ => return Err("an Ed25519 public key is exactly 32 bytes".to_owned()),
            }
        }
    }
    // Building the backend's verifier parses the key (EC point on the curve, Ed25519 point
    // decompression); the empty signature itself simply fails to verify.
    jsonwebtoken::crypto::verify("", b"", key, alg)
        .map(|_| ())
        .map_err(|e| format!("not a valid key for {alg:?} ({e})"))
}

/// The RSA backend's own limits (modulus size, odd modulus, odd exponent between 3 and 2^33 - 1),
/// checked at setup so that a key it would refuse is not discovered at the first token.
fn check_rsa_components(n: &[u8], e: &[u8]) -> Result<(), String> {
    let n = strip_leading_zeros(n);
    let e = strip_leading_zeros(e);
    let bits = match n.first() {
        Some(top) => (n.len() - 1) * 8 + (8 - top.leading_zeros() as usize),
        None => 0,
    };
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "RSA key of {bits} bits; {} to {} bits are accepted",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    if n.last().is_some_and(|low| low % 2 == 0) {
        return Err("RSA modulus is even".to_owned());
    }
    if e.len() > 8 {
        return Err("RSA exponent is too large".to_owned());
    }
    let exponent = e.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    if !(3..=(1 << 33) - 1).contains(&exponent) || exponent % 2 == 0 {
        return Err(format!("RSA exponent {exponent} is not usable"));
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// Maps a `jsonwebtoken` failure (signature check and claim decoding only: its claim validation
/// is off) to ours.
fn map_jwt_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => TokenError::DisallowedAlgorithm,
        ErrorKind::InvalidToken
        | ErrorKind::Base64(_)
        | ErrorKind::Json(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidClaimFormat(_) => TokenError::Malformed,
        // Problems of the key, not of the token (checked at setup, so not expected here).
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::UnknownKey,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => TokenError::MissingExpiry,
            "sub" => TokenError::MissingSubject,
            "iss" => TokenError::WrongIssuer,
            "aud" => TokenError::WrongAudience,
            _ => TokenError::Malformed,
        },
        // Anything else (provider failures, variants added later): the signature was not shown
        // to be good.
        _ => TokenError::BadSignature,
    }
}

#[derive(Clone, Copy)]
enum Rounding {
    /// For `exp`: a fractional expiry ends at the whole second before it.
    Down,
    /// For `nbf`: a fractional start begins at the whole second after it.
    Up,
}

/// A NumericDate (RFC 7519 §2): a non-negative number of seconds, possibly fractional.
fn numeric_date(value: &Value, rounding: Rounding) -> Option<u64> {
    if let Some(secs) = value.as_u64() {
        return Some(secs);
    }
    let secs = value.as_f64()?;
    // Non-negative and below 2^64; NaN and the infinities fail this test.
    if !(0.0..18_446_744_073_709_551_616.0).contains(&secs) {
        return None;
    }
    let rounded = match rounding {
        Rounding::Down => secs.floor(),
        Rounding::Up => secs.ceil(),
    };
    // Exact except where ceil reaches 2^64, which `as` saturates to u64::MAX.
    Some(rounded as u64)
}

/// The roles claim: a top-level claim of exactly that name, else a dotted path through nested
/// objects.
fn lookup_claim<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(name) {
        return Some(value);
    }
    if !name.contains('.') {
        return None;
    }
    let mut segments = name.split('.');
    let mut current = claims.get(segments.next()?)?;
    for segment in segments {
        current = current.as_object()?.get(segment)?;
    }
    Some(current)
}

fn roles_from(value: Option<&Value>) -> Result<Vec<String>, TokenError> {
    let mut roles: Vec<String> = Vec::new();
    let mut add = |role: &str| {
        if !role.is_empty() && !roles.iter().any(|r| r == role) {
            roles.push(role.to_owned());
        }
    };
    match value {
        None | Some(Value::Null) => {}
        // Space-separated, as an OAuth scope: ASCII space (and tab) only; a role name holding
        // another space character (no-break, ideographic) is one name, not two.
        Some(Value::String(s)) => s.split([' ', '\t']).for_each(&mut add),
        Some(Value::Array(items)) => {
            for item in items {
                add(item.as_str().ok_or(TokenError::BadRolesClaim)?);
            }
        }
        Some(_) => return Err(TokenError::BadRolesClaim),
    }
    Ok(roles)
}

/// Decodes unpadded base64url (RFC 4648 §5), as JWS uses it. Strict: no padding, no other
/// alphabet, no stray bits in the last symbol.
fn b64url_decode(input: &str) -> Option<Vec<u8>> {
    let bytes = input.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 2);
    let mut acc: u32 = 0;
    let mut bits: u32 = 0;
    for &c in bytes {
        let sextet = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        // Invariant: acc < 2^bits with bits < 8 before the shift, so acc stays below 2^14.
        acc = (acc << 6) | u32::from(sextet);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    if acc != 0 {
        return None;
    }
    Some(out)
}

/// Issues an HS256 development token (the `token` subcommand, `--demo`): `sub` = `user`, the
/// configured roles claim = `roles`, `iat` = `unix_now`, `exp` = `unix_now + ttl_secs`, plus `iss`
/// and `aud` when [`AuthConfig`] requires them, so the token verifies with the same settings.
///
/// Refused when HS256 is not among the configured algorithms or the secret is too short.
pub fn issue_hs256(
    config: &AuthConfig,
    secret: &[u8],
    user: &str,
    roles: &[String],
    unix_now: u64,
    ttl_secs: u64,
) -> Result<String, AuthSetupError> {
    if !config.algorithms.iter().any(|a| a == "HS256") {
        return Err(AuthSetupError::new(
            "[auth] algorithms does not list HS256: the gateway would refuse an HS256 token",
        ));
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(AuthSetupError::new(format!(
            "[auth] secret is {} bytes long; at least {MIN_SECRET_LEN} are required",
            secret.len()
        )));
    }
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::from(user));
    claims.insert(config.roles_claim.clone(), Value::from(roles.to_vec()));
    claims.insert("iat".into(), Value::from(unix_now));
    claims.insert("exp".into(), Value::from(unix_now.saturating_add(ttl_secs)));
    if let Some(iss) = &config.issuer {
        claims.insert("iss".into(), Value::from(iss.as_str()));
    }
    if let Some(aud) = &config.audience {
        claims.insert("aud".into(), Value::from(aud.as_str()));
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &Value::Object(claims),
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthSetupError::new(format!("cannot sign the token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use proptest::prelude::*;
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    const RSA_PRIVATE: &str = include_str!("../tests/fixtures/keys/rsa_private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/fixtures/keys/rsa_public.pem");
    const RSA2_PRIVATE: &str = include_str!("../tests/fixtures/keys/rsa2_private.pem");
    const RSA2_PUBLIC: &str = include_str!("../tests/fixtures/keys/rsa2_public.pem");
    const EC_PRIVATE: &str = include_str!("../tests/fixtures/keys/ec_private.pem");
    const EC_PUBLIC: &str = include_str!("../tests/fixtures/keys/ec_public.pem");
    const ED_PRIVATE: &str = include_str!("../tests/fixtures/keys/ed25519_private.pem");
    const ED_PUBLIC: &str = include_str!("../tests/fixtures/keys/ed25519_public.pem");
    const JWKS: &str = include_str!("../tests/fixtures/keys/jwks.json");

    // ---- helpers -------------------------------------------------------------------------

    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    fn algs(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn hs_config() -> AuthConfig {
        AuthConfig {
            secret: Some(SECRET.to_owned()),
            ..AuthConfig::default()
        }
    }

    fn verifier(config: &AuthConfig, keys: &KeyMaterial) -> JwtVerifier {
        match JwtVerifier::new(config, keys) {
            Ok(v) => v,
            Err(e) => panic!("setup refused: {e}"),
        }
    }

    fn hs_verifier() -> JwtVerifier {
        verifier(&hs_config(), &KeyMaterial::default())
    }

    fn pem_verifier(names: &[&str], pem: &str) -> JwtVerifier {
        let config = AuthConfig {
            algorithms: algs(names),
            ..AuthConfig::default()
        };
        let keys = KeyMaterial {
            public_key_pem: Some(pem.to_owned()),
            ..KeyMaterial::default()
        };
        verifier(&config, &keys)
    }

    fn jwks_verifier(names: &[&str], jwks: &str) -> JwtVerifier {
        let config = AuthConfig {
            algorithms: algs(names),
            ..AuthConfig::default()
        };
        let keys = KeyMaterial {
            jwks_json: Some(jwks.to_owned()),
            ..KeyMaterial::default()
        };
        verifier(&config, &keys)
    }

    fn setup_error(config: &AuthConfig, keys: &KeyMaterial) -> String {
        match JwtVerifier::new(config, keys) {
            Ok(v) => panic!("setup accepted: {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn claims() -> Value {
        json!({ "sub": "user-1", "exp": NOW + 600 })
    }

    fn with(mut base: Value, key: &str, value: Value) -> Value {
        base[key] = value;
        base
    }

    fn without(mut base: Value, key: &str) -> Value {
        if let Some(map) = base.as_object_mut() {
            map.remove(key);
        }
        base
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).expect("test token signs")
    }

    fn hs256(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(SECRET.as_bytes()),
            None,
            claims,
        )
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa fixture")
    }

    fn rsa2_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA2_PRIVATE.as_bytes()).expect("rsa2 fixture")
    }

    /// A token with a hand-written header and payload, HMAC-signed with `secret`.
    fn hmac_raw(header: &str, payload: &[u8], secret: &[u8]) -> String {
        let message = format!("{}.{}", b64url(header.as_bytes()), b64url(payload));
        let signature = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .expect("hmac signs");
        format!("{message}.{signature}")
    }

    fn unsigned(header: &str, claims: &Value) -> String {
        format!(
            "{}.{}.",
            b64url(header.as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    }

    fn ok(verifier: &JwtVerifier, token: &str) -> Identity {
        match verifier.verify(token, NOW) {
            Ok(identity) => identity,
            Err(e) => panic!("token refused: {e}"),
        }
    }

    fn err(verifier: &JwtVerifier, token: &str) -> TokenError {
        err_at(verifier, token, NOW)
    }

    fn err_at(verifier: &JwtVerifier, token: &str, now: u64) -> TokenError {
        match verifier.verify(token, now) {
            Ok(identity) => panic!("token accepted: {identity:?}"),
            Err(e) => e,
        }
    }

    // ---- HMAC ----------------------------------------------------------------------------

    #[test]
    fn hs256_token_with_roles_is_accepted() {
        let token = hs256(&with(
            claims(),
            "roles",
            json!(["finance_manager", "sales"]),
        ));
        let identity = ok(&hs_verifier(), &token);
        assert_eq!(
            identity,
            Identity {
                user: "user-1".to_owned(),
                roles: vec!["finance_manager".to_owned(), "sales".to_owned()],
                expires_at: NOW + 600,
            }
        );
    }

    #[test]
    fn hs384_and_hs512_tokens_are_accepted_when_configured() {
        let config = AuthConfig {
            algorithms: algs(&["HS384", "HS512"]),
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(ok(&v, &sign(alg, &key, None, &claims())).user, "user-1");
        }
        assert_eq!(err(&v, &hs256(&claims())), TokenError::DisallowedAlgorithm);
    }

    #[test]
    fn secret_from_key_material_takes_precedence_over_the_config() {
        let other = b"another-secret-of-32-bytes-long!";
        let keys = KeyMaterial {
            secret: Some(other.to_vec()),
            ..KeyMaterial::default()
        };
        let v = verifier(&hs_config(), &keys);
        let token = sign(
            Algorithm::HS256,
            &EncodingKey::from_secret(other),
            None,
            &claims(),
        );
        assert_eq!(ok(&v, &token).user, "user-1");
        assert_eq!(err(&v, &hs256(&claims())), TokenError::BadSignature);
    }

    #[test]
    fn token_signed_with_another_secret_is_rejected_as_bad_signature() {
        let key = EncodingKey::from_secret(b"not-the-gateway-secret-at-all!!!");
        let token = sign(Algorithm::HS256, &key, None, &claims());
        assert_eq!(err(&hs_verifier(), &token), TokenError::BadSignature);
    }

    #[test]
    fn token_with_tampered_claims_is_rejected_as_bad_signature() {
        let token = hs256(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64url(
            json!({ "sub": "admin", "exp": NOW + 600 })
                .to_string()
                .as_bytes(),
        );
        let tampered = format!("{}.{}.{}", parts[0], forged, parts[2]);
        assert_eq!(err(&hs_verifier(), &tampered), TokenError::BadSignature);
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert_eq!(err(&hs_verifier(), &stripped), TokenError::BadSignature);
    }

    // ---- public keys ---------------------------------------------------------------------

    #[test]
    fn rs256_token_verified_with_the_pem_public_key_is_accepted() {
        let v = pem_verifier(&["RS256"], RSA_PUBLIC);
        let token = sign(Algorithm::RS256, &rsa_key(), None, &claims());
        assert_eq!(ok(&v, &token).user, "user-1");
    }

    #[test]
    fn ps256_token_verified_with_the_rsa_pem_is_accepted() {
        let v = pem_verifier(&["RS256", "PS256"], RSA_PUBLIC);
        let token = sign(Algorithm::PS256, &rsa_key(), None, &claims());
        assert_eq!(ok(&v, &token).user, "user-1");
    }

    #[test]
    fn es256_token_verified_with_the_ec_pem_is_accepted() {
        let v = pem_verifier(&["ES256"], EC_PUBLIC);
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec fixture");
        assert_eq!(
            ok(&v, &sign(Algorithm::ES256, &key, None, &claims())).user,
            "user-1"
        );
    }

    #[test]
    fn eddsa_token_verified_with_the_ed25519_pem_is_accepted() {
        let v = pem_verifier(&["EdDSA"], ED_PUBLIC);
        let key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed fixture");
        assert_eq!(
            ok(&v, &sign(Algorithm::EdDSA, &key, None, &claims())).user,
            "user-1"
        );
    }

    #[test]
    fn token_signed_by_another_private_key_is_rejected_as_bad_signature() {
        let v = pem_verifier(&["RS256", "PS256"], RSA_PUBLIC);
        for alg in [Algorithm::RS256, Algorithm::PS256] {
            assert_eq!(
                err(&v, &sign(alg, &rsa2_key(), None, &claims())),
                TokenError::BadSignature
            );
        }
    }

    #[test]
    fn pem_verifier_ignores_the_kid() {
        let v = pem_verifier(&["RS256"], RSA_PUBLIC);
        let token = sign(Algorithm::RS256, &rsa_key(), Some("whatever"), &claims());
        assert_eq!(ok(&v, &token).user, "user-1");
    }

    #[test]
    fn rs256_token_with_a_kid_is_verified_with_the_matching_jwks_key() {
        let v = jwks_verifier(&["RS256"], JWKS);
        let first = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &claims());
        let second = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-2"), &claims());
        assert_eq!(ok(&v, &first).user, "user-1");
        assert_eq!(ok(&v, &second).user, "user-1");
    }

    #[test]
    fn jwks_fixture_holds_the_two_rsa_public_keys() {
        let set: JwkSet = serde_json::from_str(JWKS).expect("jwks fixture");
        for (jwk, pem) in set.keys.iter().zip([RSA_PUBLIC, RSA2_PUBLIC]) {
            let key = DecodingKey::from_rsa_pem(pem.as_bytes()).expect("rsa fixture");
            let from_pem = Jwk::from_decoding_key(&key, None).expect("rsa jwk");
            assert_eq!(jwk.algorithm, from_pem.algorithm);
        }
        assert_eq!(set.keys.len(), 2);
    }

    #[test]
    fn token_naming_the_other_jwks_key_is_rejected_as_bad_signature() {
        let v = jwks_verifier(&["RS256"], JWKS);
        let token = sign(Algorithm::RS256, &rsa_key(), Some("rsa-2"), &claims());
        assert_eq!(err(&v, &token), TokenError::BadSignature);
    }

    #[test]
    fn token_with_an_unknown_kid_is_rejected_as_unknown_key() {
        let v = jwks_verifier(&["RS256"], JWKS);
        let token = sign(Algorithm::RS256, &rsa_key(), Some("rsa-9"), &claims());
        assert_eq!(err(&v, &token), TokenError::UnknownKey);
    }

    #[test]
    fn token_without_a_kid_is_rejected_when_the_jwks_has_several_keys() {
        let v = jwks_verifier(&["RS256"], JWKS);
        let token = sign(Algorithm::RS256, &rsa_key(), None, &claims());
        assert_eq!(err(&v, &token), TokenError::UnknownKey);
    }

    #[test]
    fn token_without_a_kid_is_accepted_when_the_jwks_has_exactly_one_usable_key() {
        let mut set: Value = serde_json::from_str(JWKS).expect("jwks fixture");
        // The second key becomes an encryption key: ignored, which leaves one usable key.
        set["keys"][1]["use"] = json!("enc");
        let v = jwks_verifier(&["RS256"], &set.to_string());
        let token = sign(Algorithm::RS256, &rsa_key(), None, &claims());
        assert_eq!(ok(&v, &token).user, "user-1");
        let other = sign(Algorithm::RS256, &rsa2_key(), Some("rsa-2"), &claims());
        assert_eq!(err(&v, &other), TokenError::UnknownKey);
    }

    #[test]
    fn jwks_key_declared_for_rs256_does_not_verify_ps256() {
        let v = jwks_verifier(&["RS256", "PS256"], &{
            let mut set: Value = serde_json::from_str(JWKS).expect("jwks fixture");
            set["keys"][1]["alg"] = json!("PS256");
            set.to_string()
        });
        let ps_with_rs_key = sign(Algorithm::PS256, &rsa_key(), Some("rsa-1"), &claims());
        assert_eq!(err(&v, &ps_with_rs_key), TokenError::UnknownKey);
        let ps = sign(Algorithm::PS256, &rsa2_key(), Some("rsa-2"), &claims());
        assert_eq!(ok(&v, &ps).user, "user-1");
    }

    #[test]
    fn jwks_ignores_encryption_symmetric_and_unknown_keys() {
        let mut set: Value = serde_json::from_str(JWKS).expect("jwks fixture");
        let keys = set["keys"].as_array_mut().expect("keys array");
        keys.push(json!({ "kty": "oct", "kid": "hmac", "k": b64url(SECRET.as_bytes()) }));
        keys.push(
            json!({ "kty": "RSA", "kid": "wrap", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB" }),
        );
        keys.push(json!({ "kty": "OKP", "crv": "X25519", "kid": "dh", "x": "AAAA" }));
        keys.push(json!({ "kty": "mystery", "kid": "m" }));
        let v = jwks_verifier(&["RS256"], &set.to_string());
        let token = sign(Algorithm::RS256, &rsa_key(), Some("rsa-1"), &claims());
        assert_eq!(ok(&v, &token).user, "user-1");
        // The oct key is never a way in, even under its kid.
        let config = AuthConfig {
            algorithms: algs(&["RS256", "HS256"]),
            ..hs_config()
        };
        let keys = KeyMaterial {
            jwks_json: Some(set.to_string()),
            ..KeyMaterial::default()
        };
        let both = verifier(&config, &keys);
        let key = EncodingKey::from_secret(b"some-other-secret-thirty-two-by!");
        let hs = sign(Algorithm::HS256, &key, Some("hmac"), &claims());
        assert_eq!(err(&both, &hs), TokenError::BadSignature);
    }

    #[test]
    fn jwks_with_ec_and_ed_keys_verifies_es256_and_eddsa() {
        let ec = DecodingKey::from_ec_pem(EC_PUBLIC.as_bytes()).expect("ec fixture");
        let ed = DecodingKey::from_ed_pem(ED_PUBLIC.as_bytes()).expect("ed fixture");
        let mut ec_jwk = Jwk::from_decoding_key(&ec, Some(Algorithm::ES256)).expect("ec jwk");
        ec_jwk.common.key_id = Some("ec-1".to_owned());
        let mut ed_jwk = Jwk::from_decoding_key(&ed, None).expect("ed jwk");
        ed_jwk.common.key_id = Some("ed-1".to_owned());
        let set = JwkSet {
            keys: vec![ec_jwk, ed_jwk],
        };
        let v = jwks_verifier(
            &["ES256", "EdDSA"],
            &serde_json::to_string(&set).expect("json"),
        );
        let ec_key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec fixture");
        let ed_key = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed fixture");
        assert_eq!(
            ok(
                &v,
                &sign(Algorithm::ES256, &ec_key, Some("ec-1"), &claims())
            )
            .user,
            "user-1"
        );
        assert_eq!(
            ok(
                &v,
                &sign(Algorithm::EdDSA, &ed_key, Some("ed-1"), &claims())
            )
            .user,
            "user-1"
        );
        // Several usable keys overall, but only one per algorithm: no kid is fine.
        assert_eq!(
            ok(&v, &sign(Algorithm::EdDSA, &ed_key, None, &claims())).user,
            "user-1"
        );
        // A kid naming the key of the other algorithm is not a fit.
        let crossed = sign(Algorithm::EdDSA, &ed_key, Some("ec-1"), &claims());
        assert_eq!(err(&v, &crossed), TokenError::UnknownKey);
    }

    // ---- attacks -------------------------------------------------------------------------

    #[test]
    fn alg_none_token_is_rejected_as_disallowed_algorithm() {
        for header in [
            r#"{"alg":"none","typ":"JWT"}"#,
            r#"{"alg":"None","typ":"JWT"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":""}"#,
            r#"{"alg":"hs256"}"#,
        ] {
            let token = unsigned(header, &claims());
            assert_eq!(
                err(&hs_verifier(), &token),
                TokenError::DisallowedAlgorithm,
                "{header}"
            );
            let with_sig = format!("{token}c2lnbmF0dXJl");
            assert_eq!(
                err(&hs_verifier(), &with_sig),
                TokenError::DisallowedAlgorithm
            );
        }
        let v = pem_verifier(&["RS256"], RSA_PUBLIC);
        assert_eq!(
            err(&v, &unsigned(r#"{"alg":"none"}"#, &claims())),
            TokenError::DisallowedAlgorithm
        );
    }

    #[test]
    fn hs256_token_signed_with_the_rsa_public_key_pem_is_rejected_when_only_rs256_is_configured() {
        let v = pem_verifier(&["RS256"], RSA_PUBLIC);
        let confused = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        let token = sign(Algorithm::HS256, &confused, None, &claims());
        assert_eq!(err(&v, &token), TokenError::DisallowedAlgorithm);
        let jwks = jwks_verifier(&["RS256"], JWKS);
        let token = sign(Algorithm::HS256, &confused, Some("rsa-1"), &claims());
        assert_eq!(err(&jwks, &token), TokenError::DisallowedAlgorithm);
    }

    #[test]
    fn hs256_token_signed_with_the_rsa_public_key_pem_fails_when_both_families_are_configured() {
        let config = AuthConfig {
            algorithms: algs(&["RS256", "HS256"]),
            ..hs_config()
        };
        let keys = KeyMaterial {
            public_key_pem: Some(RSA_PUBLIC.to_owned()),
            ..KeyMaterial::default()
        };
        let v = verifier(&config, &keys);
        let confused = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        assert_eq!(
            err(&v, &sign(Algorithm::HS256, &confused, None, &claims())),
            TokenError::BadSignature
        );
        // Both legitimate kinds still pass.
        assert_eq!(ok(&v, &hs256(&claims())).user, "user-1");
        assert_eq!(
            ok(&v, &sign(Algorithm::RS256, &rsa_key(), None, &claims())).user,
            "user-1"
        );
    }

    #[test]
    fn token_with_a_critical_header_is_malformed() {
        let token = hmac_raw(
            r#"{"alg":"HS256","crit":["b64"],"b64":false}"#,
            claims().to_string().as_bytes(),
            SECRET.as_bytes(),
        );
        assert_eq!(err(&hs_verifier(), &token), TokenError::Malformed);
    }

    #[test]
    fn header_with_a_non_string_alg_or_kid_is_malformed() {
        for header in [
            r#"{"typ":"JWT"}"#,
            r#"{"alg":256}"#,
            r#"{"alg":"HS256","kid":7}"#,
            r#"["HS256"]"#,
        ] {
            let token = hmac_raw(header, claims().to_string().as_bytes(), SECRET.as_bytes());
            assert_eq!(
                err(&hs_verifier(), &token),
                TokenError::Malformed,
                "{header}"
            );
        }
    }

    // ---- claims --------------------------------------------------------------------------

    #[test]
    fn missing_or_null_exp_is_rejected_as_missing_expiry() {
        let v = hs_verifier();
        assert_eq!(
            err(&v, &hs256(&without(claims(), "exp"))),
            TokenError::MissingExpiry
        );
        assert_eq!(
            err(&v, &hs256(&with(claims(), "exp", Value::Null))),
            TokenError::MissingExpiry
        );
    }

    #[test]
    fn exp_of_the_wrong_type_is_malformed() {
        let v = hs_verifier();
        for bad in [
            json!("1700000600"),
            json!(-5),
            json!(true),
            json!([NOW + 600]),
            json!({}),
        ] {
            assert_eq!(
                err(&v, &hs256(&with(claims(), "exp", bad.clone()))),
                TokenError::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn exp_exactly_at_now_plus_leeway_is_accepted_and_one_second_later_rejected() {
        let v = hs_verifier(); // leeway 30
        let token = hs256(&with(claims(), "exp", json!(NOW)));
        assert!(v.verify(&token, NOW).is_ok());
        assert!(v.verify(&token, NOW + 30).is_ok());
        assert_eq!(err_at(&v, &token, NOW + 31), TokenError::Expired);
        assert_eq!(err_at(&v, &token, u64::MAX), TokenError::Expired);
    }

    #[test]
    fn zero_leeway_expires_the_second_after_exp() {
        let config = AuthConfig {
            leeway_secs: 0,
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        let token = hs256(&with(claims(), "exp", json!(NOW)));
        assert!(v.verify(&token, NOW).is_ok());
        assert_eq!(err_at(&v, &token, NOW + 1), TokenError::Expired);
    }

    #[test]
    fn huge_leeway_and_exp_do_not_overflow() {
        let too_long = AuthConfig { leeway_secs: u64::MAX, ..hs_config() };
        assert!(JwtVerifier::new(&too_long, &KeyMaterial::default()).is_err());
        let config = AuthConfig {
            leeway_secs: MAX_LEEWAY_SECS,
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        let never = hs256(&with(claims(), "exp", json!(u64::MAX)));
        assert_eq!(ok(&v, &never).expires_at, u64::MAX);
        let token = hs256(&with(
            with(claims(), "exp", json!(u64::MAX)),
            "nbf",
            json!(u64::MAX),
        ));
        assert!(v.verify(&token, u64::MAX).is_ok());
        assert_eq!(v.verify(&token, u64::MAX - MAX_LEEWAY_SECS - 1).unwrap_err(), TokenError::NotYetValid);
    }

    #[test]
    fn fractional_exp_and_nbf_are_rounded_towards_the_stricter_side() {
        let config = AuthConfig {
            leeway_secs: 0,
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        let token = hs256(&with(
            with(claims(), "exp", json!(NOW as f64 + 10.9)),
            "nbf",
            json!(NOW as f64 + 0.1),
        ));
        assert_eq!(err_at(&v, &token, NOW), TokenError::NotYetValid);
        assert_eq!(
            v.verify(&token, NOW + 1).map(|i| i.expires_at),
            Ok(NOW + 10)
        );
        assert_eq!(err_at(&v, &token, NOW + 11), TokenError::Expired);
    }

    #[test]
    fn nbf_beyond_the_leeway_is_rejected_and_within_it_accepted() {
        let v = hs_verifier(); // leeway 30
        let token = hs256(&with(claims(), "nbf", json!(NOW + 30)));
        assert!(v.verify(&token, NOW).is_ok());
        assert_eq!(err_at(&v, &token, NOW - 1), TokenError::NotYetValid);
        let past = hs256(&with(claims(), "nbf", json!(NOW - 100)));
        assert!(v.verify(&past, NOW).is_ok());
        let bad = hs256(&with(claims(), "nbf", json!("tomorrow")));
        assert_eq!(err(&v, &bad), TokenError::Malformed);
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let config = AuthConfig {
            issuer: Some("https://id.example".to_owned()),
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        assert!(v
            .verify(
                &hs256(&with(claims(), "iss", json!("https://id.example"))),
                NOW
            )
            .is_ok());
        for bad in [
            json!("https://evil.example"),
            json!(["https://id.example"]),
            json!(1),
            Value::Null,
        ] {
            assert_eq!(
                err(&v, &hs256(&with(claims(), "iss", bad.clone()))),
                TokenError::WrongIssuer,
                "{bad}"
            );
        }
        assert_eq!(err(&v, &hs256(&claims())), TokenError::WrongIssuer);
    }

    #[test]
    fn issuer_and_audience_are_ignored_when_not_configured() {
        let token = hs256(&with(
            with(claims(), "iss", json!("anyone")),
            "aud",
            json!(["x", "y"]),
        ));
        assert!(hs_verifier().verify(&token, NOW).is_ok());
    }

    #[test]
    fn audience_as_a_string_or_an_array_containing_it_is_accepted() {
        let config = AuthConfig {
            audience: Some("sse-gateway".to_owned()),
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        for good in [
            json!("sse-gateway"),
            json!(["crm", "sse-gateway"]),
            json!([1, "sse-gateway"]),
        ] {
            assert!(
                v.verify(&hs256(&with(claims(), "aud", good.clone())), NOW)
                    .is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn wrong_or_missing_audience_is_rejected() {
        let config = AuthConfig {
            audience: Some("sse-gateway".to_owned()),
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        for bad in [
            json!("crm"),
            json!(["crm", "billing"]),
            json!([]),
            json!({"sse-gateway": true}),
            Value::Null,
        ] {
            assert_eq!(
                err(&v, &hs256(&with(claims(), "aud", bad.clone()))),
                TokenError::WrongAudience,
                "{bad}"
            );
        }
        assert_eq!(err(&v, &hs256(&claims())), TokenError::WrongAudience);
    }

    #[test]
    fn missing_empty_or_non_string_subject_is_rejected() {
        let v = hs_verifier();
        assert_eq!(
            err(&v, &hs256(&without(claims(), "sub"))),
            TokenError::MissingSubject
        );
        for bad in [json!(""), json!(" "), json!("\u{3000}\t"), json!(42), json!(false), Value::Null] {
            assert_eq!(
                err(&v, &hs256(&with(claims(), "sub", bad.clone()))),
                TokenError::MissingSubject,
                "{bad}"
            );
        }
        // jsonwebtoken's own claim parsing refuses an array or object `sub` before we see it.
        for bad in [json!(["user-1"]), json!({"id": "user-1"})] {
            assert_eq!(
                err(&v, &hs256(&with(claims(), "sub", bad.clone()))),
                TokenError::Malformed,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_subject_holding_a_control_character_is_rejected() {
        let v = hs_verifier();
        for bad in [
            "alice\t",
            "mallory\n2026-01-01 INFO stream opened user=admin",
            "eve\r",
            "x\u{0}y",
            "x\u{85}y",
            "line\u{2028}break",
            "para\u{2029}graph",
            "nimda\u{202E}reversed",
            "zero\u{200B}width",
            "\u{FEFF}bom",
            "iso\u{2066}late",
            "arabic\u{061C}mark",
            "admin\u{AD}",
            "admin\u{E0041}",
            "ad\u{180E}min",
            "x\u{FFFB}y",
            "\u{600}number",
            "a\u{0890}",
            "a\u{08E2}",
            "a\u{06DD}",
            "a\u{070F}",
            "a\u{110BD}",
            "a\u{13430}",
            "a\u{1BCA0}",
            "a\u{1D173}",
            "a\u{E0001}",
            "alice\u{3164}",
            "a\u{115F}",
            "a\u{1160}",
            "a\u{FFA0}",
            "a\u{17B4}",
            "a\u{FFF0}",
            // Joiners and selectors alone show nothing: no user id.
            "\u{200D}",
            " \u{200C} ",
            "\u{FE0F}\u{034F}",
        ] {
            assert_eq!(err(&v, &hs256(&with(claims(), "sub", json!(bad)))), TokenError::BadSubject, "{bad:?}");
        }
        // ZWNJ and ZWJ are letters' business (Persian, Indic scripts, emoji sequences).
        let good = [
            "alice",
            "auth0|5f7c8ec7c33c6c004bbafe82",
            "a b",
            "jane.doe@example.com",
            "Ünïcødé",
            "CN=alice,OU=Staff,DC=corp",
            " alice ",
            "\u{645}\u{6CC}\u{200C}\u{62E}\u{648}\u{627}\u{647}\u{645}",
            "\u{1F469}\u{200D}\u{1F4BB}",
            // Letters beside the refused ranges: Arabic, Mongolian, a Mongolian variation selector (Mn).
            "\u{0620}\u{0628}",
            "\u{1820}\u{180B}\u{180F}",
            // Variation selectors: an emoji's presentation, a CJK ideographic variant.
            "\u{2764}\u{FE0F}",
            "\u{845B}\u{E0100}",
        ];
        for good in good {
            assert_eq!(ok(&v, &hs256(&with(claims(), "sub", json!(good)))).user, good);
        }
    }

    #[test]
    fn roles_claim_accepts_an_array_a_single_string_and_a_space_separated_string() {
        let v = hs_verifier();
        let roles = |value: Value| ok(&v, &hs256(&with(claims(), "roles", value))).roles;
        assert_eq!(roles(json!(["a", "b"])), ["a", "b"]);
        assert_eq!(roles(json!("finance_manager")), ["finance_manager"]);
        assert_eq!(roles(json!("a b  c\tb")), ["a", "b", "c"]);
        // Other space characters are part of a name: not "finance_manager" and "x".
        assert_eq!(roles(json!("finance_manager\u{a0}x")), ["finance_manager\u{a0}x"]);
        assert_eq!(roles(json!("finance_manager\u{3000}x y")), ["finance_manager\u{3000}x", "y"]);
        assert_eq!(roles(json!(["a", "", "a"])), ["a"]);
        assert!(roles(json!([])).is_empty());
        assert!(roles(json!("")).is_empty());
    }

    #[test]
    fn absent_or_null_roles_claim_gives_no_roles() {
        let v = hs_verifier();
        assert!(ok(&v, &hs256(&claims())).roles.is_empty());
        assert!(ok(&v, &hs256(&with(claims(), "roles", Value::Null)))
            .roles
            .is_empty());
    }

    #[test]
    fn roles_claim_of_another_shape_is_rejected() {
        let v = hs_verifier();
        for bad in [
            json!(7),
            json!(true),
            json!({"admin": true}),
            json!(["a", 1]),
            json!([["a"]]),
            json!([null]),
        ] {
            assert_eq!(
                err(&v, &hs256(&with(claims(), "roles", bad.clone()))),
                TokenError::BadRolesClaim,
                "{bad}"
            );
        }
    }

    #[test]
    fn custom_roles_claim_is_read_by_exact_name_then_by_dotted_path() {
        let config = AuthConfig {
            roles_claim: "realm_access.roles".to_owned(),
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        let nested = with(
            claims(),
            "realm_access",
            json!({ "roles": ["finance_manager"] }),
        );
        assert_eq!(ok(&v, &hs256(&nested)).roles, ["finance_manager"]);
        let literal = with(nested.clone(), "realm_access.roles", json!("literal"));
        assert_eq!(ok(&v, &hs256(&literal)).roles, ["literal"]);
        let not_object = with(claims(), "realm_access", json!("x"));
        assert!(ok(&v, &hs256(&not_object)).roles.is_empty());
        let config = AuthConfig {
            roles_claim: "https://example.com/roles".to_owned(),
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        let namespaced = with(claims(), "https://example.com/roles", json!(["ops"]));
        assert_eq!(ok(&v, &hs256(&namespaced)).roles, ["ops"]);
    }

    #[test]
    fn claims_that_are_not_a_json_object_are_malformed() {
        let v = hs_verifier();
        let header = r#"{"alg":"HS256","typ":"JWT"}"#;
        for payload in [
            &b"[1,2]"[..],
            b"\"user-1\"",
            b"42",
            b"null",
            b"{",
            b"\xff\xfe",
            b"",
        ] {
            let token = hmac_raw(header, payload, SECRET.as_bytes());
            assert_eq!(err(&v, &token), TokenError::Malformed, "{payload:?}");
        }
        let duplicate = hmac_raw(
            header,
            br#"{"sub":"a","sub":"b","exp":1800000000}"#,
            SECRET.as_bytes(),
        );
        assert_eq!(err(&v, &duplicate), TokenError::Malformed);
    }

    // ---- input limits and garbage ---------------------------------------------------------

    #[test]
    fn token_longer_than_16_kib_is_rejected_before_decoding() {
        let v = hs_verifier();
        let huge = "a".repeat(64 * 1024);
        assert_eq!(err(&v, &huge), TokenError::TooLong);
        let huge_token = hs256(&with(claims(), "pad", json!("x".repeat(64 * 1024))));
        assert_eq!(err(&v, &huge_token), TokenError::TooLong);
        assert_eq!(err(&v, &"a".repeat(MAX_TOKEN_LEN + 1)), TokenError::TooLong);
        assert_eq!(err(&v, &"a".repeat(MAX_TOKEN_LEN)), TokenError::Malformed);
    }

    #[test]
    fn token_just_under_the_limit_is_still_verified() {
        let v = hs_verifier();
        let mut padded = claims();
        let mut pad = 0;
        let token = loop {
            let token = hs256(&with(padded.clone(), "pad", json!("x".repeat(pad))));
            if token.len() + 8 > MAX_TOKEN_LEN {
                break token;
            }
            pad += 4;
            padded = with(padded, "n", json!(pad));
        };
        assert!(token.len() <= MAX_TOKEN_LEN);
        assert_eq!(ok(&v, &token).user, "user-1");
    }

    #[test]
    fn garbage_strings_are_malformed() {
        let v = hs_verifier();
        let valid = hs256(&claims());
        let cases = [
            String::new(),
            ".".to_owned(),
            "..".to_owned(),
            "...".to_owned(),
            "a.b".to_owned(),
            "a.b.c".to_owned(),
            "a.b.c.d.e".to_owned(),
            "Bearer abc".to_owned(),
            format!("Bearer {valid}"),
            format!(" {valid}"),
            format!("{valid}."),
            format!("{valid}\n"),
            valid.replacen('.', "..", 1),
            "é.ü.ß".to_owned(),
            "\u{0}.\u{0}.\u{0}".to_owned(),
            format!("{}=.e30.", b64url(br#"{"alg":"HS256"}"#)),
            format!("{}.e30.", b64url(b"not json")),
            format!("{}.e30.", "eyJhbGciOiJIUzI1NiJ9".replace('J', "+")),
        ];
        for token in &cases {
            assert_eq!(err(&v, token), TokenError::Malformed, "{token:?}");
        }
    }

    #[test]
    fn jwe_shaped_token_is_malformed() {
        let header = b64url(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#);
        let token = format!("{header}.a2V5.aXY.Y2lwaGVy.dGFn");
        assert_eq!(err(&hs_verifier(), &token), TokenError::Malformed);
    }

    // ---- errors ----------------------------------------------------------------------------

    #[test]
    fn every_token_error_has_a_distinct_snake_case_reason() {
        let mut seen = std::collections::HashSet::new();
        for e in TokenError::ALL {
            let reason = e.reason();
            assert!(
                reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{reason}"
            );
            assert!(seen.insert(reason), "duplicate {reason}");
            assert_eq!(e.to_string(), reason);
        }
        assert_eq!(TokenError::Expired.reason(), "expired");
        assert_eq!(
            TokenError::DisallowedAlgorithm.reason(),
            "disallowed_algorithm"
        );
    }

    #[test]
    fn jsonwebtoken_errors_map_to_our_variants() {
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidSignature),
            TokenError::BadSignature
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidToken),
            TokenError::Malformed
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidAlgorithm),
            TokenError::DisallowedAlgorithm
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::ExpiredSignature),
            TokenError::Expired
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::ImmatureSignature),
            TokenError::NotYetValid
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidIssuer),
            TokenError::WrongIssuer
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidAudience),
            TokenError::WrongAudience
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::MissingRequiredClaim("exp".into())),
            TokenError::MissingExpiry
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::MissingRequiredClaim("sub".into())),
            TokenError::MissingSubject
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::InvalidEcdsaKey),
            TokenError::UnknownKey
        );
        assert_eq!(
            map_jwt_error(&ErrorKind::Provider("x".into())),
            TokenError::BadSignature
        );
    }

    // ---- setup ---------------------------------------------------------------------------

    #[test]
    fn empty_algorithm_list_is_a_setup_error() {
        let config = AuthConfig {
            algorithms: Vec::new(),
            ..hs_config()
        };
        assert!(setup_error(&config, &KeyMaterial::default()).contains("algorithms is empty"));
    }

    #[test]
    fn unknown_algorithm_names_are_setup_errors() {
        for name in ["none", "None", "hs256", "RS1024", "ES512", ""] {
            let config = AuthConfig {
                algorithms: algs(&["HS256", name]),
                ..hs_config()
            };
            let message = setup_error(&config, &KeyMaterial::default());
            assert!(message.contains("unknown algorithm"), "{message}");
        }
        let config = AuthConfig {
            algorithms: algs(&["none"]),
            ..hs_config()
        };
        assert!(setup_error(&config, &KeyMaterial::default()).contains("never accepted"));
    }

    #[test]
    fn duplicate_algorithm_names_are_harmless() {
        let config = AuthConfig {
            algorithms: algs(&["HS256", "HS256"]),
            ..hs_config()
        };
        let v = verifier(&config, &KeyMaterial::default());
        assert_eq!(ok(&v, &hs256(&claims())).user, "user-1");
    }

    #[test]
    fn hmac_algorithm_without_a_secret_is_a_setup_error() {
        let message = setup_error(&AuthConfig::default(), &KeyMaterial::default());
        assert!(message.contains("no secret"), "{message}");
    }

    #[test]
    fn hmac_algorithm_with_a_public_key_but_no_secret_is_a_setup_error() {
        let config = AuthConfig {
            algorithms: algs(&["HS256", "RS256"]),
            ..AuthConfig::default()
        };
        let keys = KeyMaterial {
            public_key_pem: Some(RSA_PUBLIC.to_owned()),
            ..KeyMaterial::default()
        };
        let message = setup_error(&config, &keys);
        assert!(message.contains("algorithm confusion"), "{message}");
        let config = AuthConfig::default();
        let keys = KeyMaterial {
            jwks_json: Some(JWKS.to_owned()),
            ..KeyMaterial::default()
        };
        assert!(setup_error(&config, &keys).contains("algorithm confusion"));
    }

    #[test]
    fn the_public_keys_text_as_the_hmac_secret_is_a_setup_error() {
        let config = |secret: &str| AuthConfig { algorithms: algs(&["HS256", "RS256"]), secret: Some(secret.to_owned()), ..AuthConfig::default() };
        let pem = KeyMaterial { public_key_pem: Some(RSA_PUBLIC.to_owned()), ..KeyMaterial::default() };
        let body: String = RSA_PUBLIC.lines().filter(|l| !l.starts_with("-----")).collect();
        let one_line: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let jwks = KeyMaterial { jwks_json: Some(JWKS.to_owned()), ..KeyMaterial::default() };
        let n = serde_json::from_str::<serde_json::Value>(JWKS).unwrap()["keys"][0]["n"].as_str().unwrap().to_owned();
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
        use base64::Engine as _;
        let modulus = URL_SAFE_NO_PAD.decode(&n).unwrap();
        let modulus_hex: String = modulus.iter().map(|b| format!("{b:02X}")).collect();
        // The PEM's one-line form (no line breaks between its armour and body) is read too.
        let one_line_pem = KeyMaterial { public_key_pem: Some(format!("-----BEGIN PUBLIC KEY-----{one_line}-----END PUBLIC KEY-----")), ..KeyMaterial::default() };
        let cases = [
            (body.clone(), &pem),
            (one_line.clone(), &pem),
            (format!("{}\n", &one_line[20..80]), &pem),
            (one_line.clone(), &one_line_pem),
            (n.clone(), &jwks),
            // Across forms: the PEM body (a realm's published key) against a JWKS file, and a
            // JWK's n against a PEM file.
            (one_line.clone(), &jwks),
            (n.clone(), &pem),
            // As pasted elsewhere: the whole PEM file in base64 (a Kubernetes secret), the body's
            // lines joined by a written `\n`, the modulus in hex as openssl prints it, `n` in the
            // standard alphabet without padding.
            (STANDARD.encode(RSA_PUBLIC), &pem),
            (STANDARD.encode(RSA_PUBLIC), &jwks),
            (RSA_PUBLIC.lines().filter(|l| !l.starts_with("-----")).collect::<Vec<_>>().join("\\n"), &jwks),
            (format!("Modulus={modulus_hex}"), &pem),
            (STANDARD_NO_PAD.encode(&modulus), &jwks),
        ];
        for (secret, keys) in cases {
            assert!(setup_error(&config(&secret), keys).contains("the configured public key material"), "{secret}");
        }
        // A secret of its own is taken beside the key.
        assert!(JwtVerifier::new(&config(SECRET), &pem).is_ok());
        assert!(JwtVerifier::new(&config(SECRET), &jwks).is_ok());
    }

    #[test]
    fn secret_shorter_than_16_bytes_is_a_setup_error() {
        let short = AuthConfig {
            secret: Some("fifteen-bytes!!".to_owned()),
            ..AuthConfig::default()
        };
        assert!(setup_error(&short, &KeyMaterial::default()).contains("at least 16"));
        let empty = KeyMaterial {
            secret: Some(Vec::new()),
            ..KeyMaterial::default()
        };
        assert!(setup_error(&hs_config(), &empty).contains("at least 16"));
        let blank = KeyMaterial { secret: Some(b" \t                  ".to_vec()), ..KeyMaterial::default() };
        assert!(setup_error(&hs_config(), &blank).contains("only whitespace"));
        let enough = AuthConfig {
            secret: Some("sixteen-bytes!!!".to_owned()),
            ..AuthConfig::default()
        };
        assert!(JwtVerifier::new(&enough, &KeyMaterial::default()).is_ok());
        // A public key given as the secret (an operator's slip): anyone could sign with it.
        for public in [format!("\n{RSA_PUBLIC}"), JWKS.to_owned()] {
            let keys = KeyMaterial { secret: Some(public.into_bytes()), ..KeyMaterial::default() };
            assert!(setup_error(&hs_config(), &keys).contains("is no HMAC secret"));
        }
    }

    #[test]
    fn public_key_algorithm_without_a_key_is_a_setup_error() {
        let config = AuthConfig {
            algorithms: algs(&["RS256"]),
            ..hs_config()
        };
        let message = setup_error(&config, &KeyMaterial::default());
        assert!(
            message.contains("neither public_key_file nor jwks_file"),
            "{message}"
        );
    }

    #[test]
    fn key_material_without_a_public_key_algorithm_is_a_setup_error() {
        let pem = KeyMaterial {
            public_key_pem: Some(RSA_PUBLIC.to_owned()),
            ..KeyMaterial::default()
        };
        assert!(setup_error(&hs_config(), &pem).contains("public_key_file is set"));
        let jwks = KeyMaterial {
            jwks_json: Some(JWKS.to_owned()),
            ..KeyMaterial::default()
        };
        assert!(setup_error(&hs_config(), &jwks).contains("jwks_file is set"));
    }

    #[test]
    fn pem_key_and_jwks_together_are_a_setup_error() {
        let config = AuthConfig {
            algorithms: algs(&["RS256"]),
            ..AuthConfig::default()
        };
        let keys = KeyMaterial {
            public_key_pem: Some(RSA_PUBLIC.to_owned()),
            jwks_json: Some(JWKS.to_owned()),
            ..KeyMaterial::default()
        };
        assert!(setup_error(&config, &keys).contains("both set"));
    }

    #[test]
    fn pem_of_the_wrong_type_is_a_setup_error() {
        for (names, pem) in [
            (&["RS256"][..], EC_PUBLIC),
            (&["ES256"][..], RSA_PUBLIC),
            (&["EdDSA"][..], EC_PUBLIC),
            (&["ES384"][..], EC_PUBLIC),
            (
                &["RS256"][..],
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            ),
            (&["RS256"][..], "not a pem at all"),
            (&["RS256", "ES256"][..], RSA_PUBLIC),
        ] {
            let config = AuthConfig {
                algorithms: algs(names),
                ..AuthConfig::default()
            };
            let keys = KeyMaterial {
                public_key_pem: Some(pem.to_owned()),
                ..KeyMaterial::default()
            };
            let message = setup_error(&config, &keys);
            assert!(message.starts_with("[auth] public_key_file"), "{message}");
        }
    }

    #[test]
    fn private_key_pem_is_a_setup_error() {
        for (name, pem) in [
            ("RS256", RSA_PRIVATE),
            ("ES256", EC_PRIVATE),
            ("EdDSA", ED_PRIVATE),
        ] {
            let config = AuthConfig {
                algorithms: algs(&[name]),
                ..AuthConfig::default()
            };
            let keys = KeyMaterial {
                public_key_pem: Some(pem.to_owned()),
                ..KeyMaterial::default()
            };
            assert!(setup_error(&config, &keys).contains("private key"));
        }
    }

    #[test]
    fn a_pem_file_with_two_keys_is_a_setup_error() {
        // Two public keys (a rotation), or a certificate before the key: only the first block
        // would be read, and tokens signed with the other refused.
        let config = AuthConfig { algorithms: algs(&["RS256"]), ..AuthConfig::default() };
        for text in [format!("{RSA_PUBLIC}\n{RSA2_PUBLIC}"), format!("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n{RSA_PUBLIC}")] {
            let keys = KeyMaterial { public_key_pem: Some(text), ..KeyMaterial::default() };
            let e = setup_error(&config, &keys);
            assert!(e.contains("2 PEM blocks") && e.contains("jwks_file"), "{e}");
        }
        assert!(JwtVerifier::new(&config, &KeyMaterial { public_key_pem: Some(RSA_PUBLIC.into()), ..KeyMaterial::default() }).is_ok());
        // A chain of certificates is not refused for its count (the leaf's key is read; this one
        // is not a real certificate, so it fails later, on its contents).
        let chain = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let keys = KeyMaterial { public_key_pem: Some(chain.into()), ..KeyMaterial::default() };
        assert!(!setup_error(&config, &keys).contains("PEM blocks"));
    }

    #[test]
    fn broken_or_unusable_jwks_is_a_setup_error() {
        let config = AuthConfig {
            algorithms: algs(&["RS256"]),
            ..AuthConfig::default()
        };
        let mut set: Value = serde_json::from_str(JWKS).expect("jwks fixture");
        set["keys"][0]["n"] = json!("AQAB"); // a 17-bit modulus
        let short_key = set.to_string();
        let mut set: Value = serde_json::from_str(JWKS).expect("jwks fixture");
        set["keys"][0]["n"] = json!("!!not base64!!");
        let bad_base64 = set.to_string();
        let mut set: Value = serde_json::from_str(JWKS).expect("jwks fixture");
        set["keys"][0]["alg"] = json!("ES256");
        let wrong_alg = set.to_string();
        let short_ed = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}]}).to_string();
        let cases = [
            ("not json", &["RS256"][..]),
            ("[]", &["RS256"][..]),
            (r#"{"keys": []}"#, &["RS256"][..]),
            (
                r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#,
                &["RS256"][..],
            ),
            (JWKS, &["ES256"][..]),
            (JWKS, &["RS256", "EdDSA"][..]),
            (&short_key, &["RS256"][..]),
            (&bad_base64, &["RS256"][..]),
            (&wrong_alg, &["RS256"][..]),
            (&short_ed, &["EdDSA"][..]),
        ];
        for (jwks, names) in cases {
            let config = AuthConfig {
                algorithms: algs(names),
                ..config.clone()
            };
            let keys = KeyMaterial {
                jwks_json: Some(jwks.to_owned()),
                ..KeyMaterial::default()
            };
            let message = setup_error(&config, &keys);
            assert!(message.starts_with("[auth] jwks_file"), "{message}");
        }
    }

    #[test]
    fn rsa_components_outside_the_backend_limits_are_refused() {
        let n2048 = {
            let mut n = vec![0xff; 256];
            n[255] = 0xfb;
            n
        };
        assert!(check_rsa_components(&n2048, &[1, 0, 1]).is_ok());
        assert!(
            check_rsa_components(&n2048[1..], &[1, 0, 1]).is_err(),
            "2040 bits"
        );
        assert!(
            check_rsa_components(&vec![0xff; 513], &[1, 0, 1]).is_err(),
            "4104 bits"
        );
        let mut even = n2048.clone();
        even[255] = 0xfe;
        assert!(check_rsa_components(&even, &[1, 0, 1]).is_err());
        assert!(check_rsa_components(&n2048, &[2]).is_err());
        assert!(check_rsa_components(&n2048, &[1]).is_err());
        assert!(check_rsa_components(&n2048, &[]).is_err());
        assert!(check_rsa_components(&n2048, &[1; 9]).is_err());
        assert!(check_rsa_components(&[], &[3]).is_err());
    }

    #[test]
    fn empty_issuer_audience_or_roles_claim_and_bad_cookie_names_are_setup_errors() {
        let keys = KeyMaterial::default();
        let cases = [
            AuthConfig {
                issuer: Some(String::new()),
                ..hs_config()
            },
            AuthConfig {
                audience: Some(String::new()),
                ..hs_config()
            },
            AuthConfig {
                roles_claim: String::new(),
                ..hs_config()
            },
            AuthConfig {
                cookie: Some(String::new()),
                ..hs_config()
            },
            AuthConfig {
                cookie: Some("my cookie".to_owned()),
                ..hs_config()
            },
            AuthConfig {
                cookie: Some("a=b".to_owned()),
                ..hs_config()
            },
            AuthConfig {
                cookie: Some("tök".to_owned()),
                ..hs_config()
            },
            AuthConfig {
                leeway_secs: MAX_LEEWAY_SECS + 1,
                ..hs_config()
            },
            AuthConfig {
                roles_claim: "realm_access.roles.".to_owned(),
                ..hs_config()
            },
            AuthConfig {
                roles_claim: "a..b".to_owned(),
                ..hs_config()
            },
            AuthConfig {
                roles_claim: ".roles".to_owned(),
                ..hs_config()
            },
        ];
        for config in &cases {
            assert!(JwtVerifier::new(config, &keys).is_err(), "{config:?}");
        }
        let fine = AuthConfig {
            cookie: Some("__Host-sse_token".to_owned()),
            leeway_secs: MAX_LEEWAY_SECS,
            ..hs_config()
        };
        assert!(JwtVerifier::new(&fine, &keys).is_ok());
    }

    // ---- config and plumbing --------------------------------------------------------------

    #[test]
    fn auth_config_defaults_match_the_documentation() {
        let config = AuthConfig::default();
        assert_eq!(config.algorithms, ["HS256"]);
        assert_eq!(config.leeway_secs, 30);
        assert_eq!(config.roles_claim, "roles");
        assert_eq!(config.cookie.as_deref(), Some("sse_token"), "D1: the cookie is read unless turned off");
        assert!(!config.query_param);
        assert!(config.secret.is_none() && config.issuer.is_none() && config.audience.is_none());
        assert!(config.public_key_file.is_none() && config.jwks_file.is_none());
    }

    #[test]
    fn auth_config_reads_every_field_from_toml_and_refuses_unknown_ones() {
        let empty: AuthConfig = toml::from_str("").expect("empty section");
        assert_eq!(empty, AuthConfig::default());
        let full: AuthConfig = toml::from_str(
            r#"
            algorithms = ["RS256", "PS256"]
            secret = "s"
            public_key_file = "/etc/sse/jwt.pem"
            jwks_file = "/etc/sse/jwks.json"
            issuer = "https://id.example"
            audience = "sse-gateway"
            leeway_secs = 5
            roles_claim = "realm_access.roles"
            cookie = "jwt"
            query_param = true
            "#,
        )
        .expect("full section");
        assert_eq!(full.algorithms, ["RS256", "PS256"]);
        assert_eq!(full.secret.as_deref(), Some("s"));
        assert_eq!(full.public_key_file.as_deref(), Some("/etc/sse/jwt.pem"));
        assert_eq!(full.jwks_file.as_deref(), Some("/etc/sse/jwks.json"));
        assert_eq!(full.issuer.as_deref(), Some("https://id.example"));
        assert_eq!(full.audience.as_deref(), Some("sse-gateway"));
        assert_eq!(full.leeway_secs, 5);
        assert_eq!(full.roles_claim, "realm_access.roles");
        assert_eq!(full.cookie.as_deref(), Some("jwt"));
        assert!(full.query_param);
        let off: AuthConfig = toml::from_str("cookie = \"\"").expect("cookie off");
        assert_eq!(off.cookie, None, "an empty name turns cookies off");
        assert!(toml::from_str::<AuthConfig>("algorithm = [\"HS256\"]").is_err());
    }

    #[test]
    fn debug_output_never_contains_key_material() {
        let config = hs_config();
        assert!(!format!("{config:?}").contains(SECRET));
        assert!(format!("{config:?}").contains("[redacted]"));
        let keys = KeyMaterial {
            secret: Some(b"key-material-secret-value".to_vec()),
            public_key_pem: Some(RSA_PUBLIC.to_owned()),
            jwks_json: None,
        };
        assert!(!format!("{keys:?}").contains("key-material-secret-value"));
        let v = hs_verifier();
        let shown = format!("{v:?}");
        assert!(!shown.contains(SECRET), "{shown}");
        assert!(!shown.contains(&b64url(SECRET.as_bytes())), "{shown}");
        assert!(
            !shown.contains(&format!("{:?}", SECRET.as_bytes())),
            "{shown}"
        );
        let shown = format!("{:?}", jwks_verifier(&["RS256"], JWKS));
        assert!(
            shown.contains("rsa-1") && !shown.contains("AQAB"),
            "{shown}"
        );
    }

    #[test]
    fn verifier_is_cheap_to_clone_and_shareable_across_threads() {
        fn assert_traits<T: Send + Sync + Clone + 'static>() {}
        assert_traits::<JwtVerifier>();
        let v = hs_verifier();
        let token = hs256(&claims());
        let handle = std::thread::spawn({
            let v = v.clone();
            move || v.verify(&token, NOW).map(|i| i.user)
        });
        assert_eq!(handle.join().expect("thread"), Ok("user-1".to_owned()));
        let as_trait: &dyn TokenVerifier = &v;
        assert!(as_trait.verify("x", NOW).is_err());
    }

    #[test]
    fn base64url_decoder_is_strict() {
        assert_eq!(b64url_decode(""), Some(Vec::new()));
        assert_eq!(b64url_decode("Zm9v"), Some(b"foo".to_vec()));
        assert_eq!(b64url_decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(b64url_decode("Zg"), Some(b"f".to_vec()));
        assert_eq!(b64url_decode("-_-_"), Some(vec![0xfb, 0xff, 0xbf]));
        assert_eq!(b64url_decode("Z"), None);
        assert_eq!(b64url_decode("Zg=="), None);
        assert_eq!(b64url_decode("Zh"), None, "stray bits");
        assert_eq!(b64url_decode("+/+/"), None);
        for bytes in [&b""[..], b"a", b"ab", b"abc", b"abcd", b"\x00\xff\x10\x80"] {
            assert_eq!(b64url_decode(&b64url(bytes)).as_deref(), Some(bytes));
        }
    }

    // ---- properties ----------------------------------------------------------------------

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f)
                .map(Value::Number)),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn arb_claims() -> impl Strategy<Value = Value> {
        let name = prop_oneof![
            Just("exp".to_owned()),
            Just("nbf".to_owned()),
            Just("sub".to_owned()),
            Just("iss".to_owned()),
            Just("aud".to_owned()),
            Just("roles".to_owned()),
            ".{0,4}",
        ];
        prop::collection::btree_map(name, arb_json(), 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    proptest! {
        #[test]
        fn arbitrary_strings_are_refused_without_a_panic(token in ".{0,300}", now in any::<u64>()) {
            prop_assert!(hs_verifier().verify(&token, now).is_err(), "an unsigned or forged token was accepted");
        }

        #[test]
        fn arbitrary_three_part_dot_strings_are_refused_without_a_panic(
            header in "[A-Za-z0-9_=+/-]{0,80}",
            payload in "[A-Za-z0-9_=+/-]{0,120}",
            signature in "[A-Za-z0-9_=+/-]{0,120}",
            now in any::<u64>(),
        ) {
            let token = format!("{header}.{payload}.{signature}");
            prop_assert!(hs_verifier().verify(&token, now).is_err(), "an unsigned or forged token was accepted");
            prop_assert!(pem_verifier(&["RS256", "PS256"], RSA_PUBLIC).verify(&token, now).is_err(), "an unsigned or forged token was accepted");
        }

        #[test]
        fn arbitrary_headers_and_payloads_with_forged_signatures_are_refused_without_a_panic(
            header in arb_json(),
            payload in arb_json(),
            alg in prop::sample::select(vec!["HS256", "RS256", "ES256", "EdDSA", "none"]),
            signature in prop::collection::vec(any::<u8>(), 0..80),
            now in any::<u64>(),
        ) {
            let mut header = header;
            if let Some(map) = header.as_object_mut() {
                map.insert("alg".to_owned(), json!(alg));
            }
            let token = format!(
                "{}.{}.{}",
                b64url(header.to_string().as_bytes()),
                b64url(payload.to_string().as_bytes()),
                b64url(&signature),
            );
            prop_assert!(hs_verifier().verify(&token, now).is_err(), "an unsigned or forged token was accepted");
            prop_assert!(pem_verifier(&["ES256"], EC_PUBLIC).verify(&token, now).is_err(), "an unsigned or forged token was accepted");
            prop_assert!(pem_verifier(&["EdDSA"], ED_PUBLIC).verify(&token, now).is_err(), "an unsigned or forged token was accepted");
        }

        #[test]
        fn verify_never_panics_on_validly_signed_arbitrary_claims(
            claims in arb_claims(),
            now in any::<u64>(),
            leeway in 0u64..=MAX_LEEWAY_SECS,
        ) {
            let config = AuthConfig {
                issuer: Some("iss".to_owned()),
                audience: Some("aud".to_owned()),
                leeway_secs: leeway,
                ..hs_config()
            };
            let v = verifier(&config, &KeyMaterial::default());
            let result = v.verify(&hs256(&claims), now);
            prop_assert_ne!(result.clone().err(), Some(TokenError::BadSignature));
            prop_assert_ne!(result.err(), Some(TokenError::DisallowedAlgorithm));
        }

        #[test]
        fn expiry_and_not_before_follow_the_model(
            exp in any::<u64>(),
            nbf in prop::option::of(any::<u64>()),
            now in any::<u64>(),
            leeway in 0u64..=MAX_LEEWAY_SECS,
        ) {
            let config = AuthConfig { leeway_secs: leeway, ..hs_config() };
            let v = verifier(&config, &KeyMaterial::default());
            let mut claims = with(claims(), "exp", json!(exp));
            if let Some(nbf) = nbf {
                claims = with(claims, "nbf", json!(nbf));
            }
            let expected = if now > exp.saturating_add(leeway) {
                Err(TokenError::Expired)
            } else if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
                Err(TokenError::NotYetValid)
            } else {
                Ok(exp)
            };
            prop_assert_eq!(v.verify(&hs256(&claims), now).map(|i| i.expires_at), expected);
        }
    }

    #[test]
    fn an_issued_development_token_verifies_with_the_same_settings() {
        let config = AuthConfig {
            secret: Some(SECRET.into()),
            issuer: Some("crm".into()),
            audience: Some("web".into()),
            ..AuthConfig::default()
        };
        let verifier = JwtVerifier::new(&config, &KeyMaterial::default()).unwrap();
        let roles = vec!["publisher".to_string()];
        let token = issue_hs256(&config, SECRET.as_bytes(), "u1", &roles, NOW, 3600).unwrap();
        let id = verifier.verify(&token, NOW + 10).unwrap();
        assert_eq!((id.user.as_str(), id.roles.clone(), id.expires_at), ("u1", roles, NOW + 3600));
        assert_eq!(verifier.verify(&token, NOW + 3600 + 31), Err(TokenError::Expired));
        let rs = AuthConfig { algorithms: vec!["RS256".into()], ..config };
        assert!(issue_hs256(&rs, SECRET.as_bytes(), "u1", &[], NOW, 60).is_err());
        assert!(issue_hs256(&AuthConfig::default(), b"short", "u1", &[], NOW, 60).is_err());
    }
}
