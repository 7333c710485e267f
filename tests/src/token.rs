//! Real JWTs, signed the way an identity provider would.

use jsonwebtoken::{encode, EncodingKey, Header};

/// An HS256 token for `sub` with `roles`, expiring `ttl_secs` from now (negative: already
/// expired).
pub fn token(secret: &str, sub: &str, roles: &[&str], ttl_secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64;
    let claims = serde_json::json!({
        "sub": sub,
        "roles": roles,
        "iat": now,
        "exp": now + ttl_secs,
    });
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("sign a token")
}

/// A token with the suite's secret ([`crate::SECRET`]) valid for an hour.
pub fn user(sub: &str, roles: &[&str]) -> String {
    token(crate::SECRET, sub, roles, 3600)
}
