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

/// Seconds since the Unix epoch, the clock `exp`, `nbf` and `iat` are placed against.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// base64url without padding (RFC 7515 §2), for tokens assembled by hand.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A token assembled by hand: `b64url(header).b64url(claims).signature`, nothing verified. For
/// headers no library would sign (`alg: none`, unknown algorithms).
pub fn assembled(header: &serde_json::Value, claims: &serde_json::Value, signature: &str) -> String {
    format!("{}.{}.{signature}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()))
}

/// An HS256 token over `claims`, keyed with these bytes (any bytes: a public key's PEM text, for
/// the algorithm-confusion attack).
pub fn hs256(key: &[u8], claims: &serde_json::Value) -> String {
    encode(&Header::default(), claims, &EncodingKey::from_secret(key)).expect("sign an HS256 token")
}

/// An RS256 token over `claims`, signed with a PEM private key.
pub fn rs256(private_pem: &[u8], claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem).expect("an RSA private key in PEM");
    encode(&Header::new(jsonwebtoken::Algorithm::RS256), claims, &key).expect("sign an RS256 token")
}

/// An RS256 token over `claims`, signed with a PEM private key, its header naming `kid`.
pub fn rs256_kid(private_pem: &[u8], kid: &str, claims: &serde_json::Value) -> String {
    let key = EncodingKey::from_rsa_pem(private_pem).expect("an RSA private key in PEM");
    let mut header = Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_string());
    encode(&header, claims, &key).expect("sign an RS256 token")
}

/// A key file of the core's fixtures (`core/tests/fixtures/keys/NAME`), as an absolute path.
pub fn key_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/keys").join(name)
}

/// The bytes of a key fixture.
pub fn key(name: &str) -> Vec<u8> {
    let path = key_path(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::b64url;

    #[test]
    fn b64url_matches_rfc_4648_test_vectors_without_padding() {
        let cases = [("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE"), ("foobar", "Zm9vYmFy")];
        for (plain, encoded) in cases {
            assert_eq!(b64url(plain.as_bytes()), encoded, "{plain:?}");
        }
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8", "the URL-safe alphabet");
    }
}
