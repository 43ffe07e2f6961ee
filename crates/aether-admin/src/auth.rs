//! Signed admin requests with a replay window.
//!
//! The client signs
//! `"aether-admin-v1\n" METHOD "\n" PATH_AND_QUERY "\n" TIME_MS "\n" NONCE "\n" SHA256(BODY)`
//! and sends the key, time, nonce and signature as headers. The node accepts
//! a request only if the key is trusted, the signature verifies strictly, the
//! time is within the window of its own clock, and the nonce was not seen
//! within the window (so a captured request cannot be replayed).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_identity::{PublicKey, SecretKey, TrustedKeys};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::HeaderMap;
use sha2::{Digest, Sha256};

/// Header carrying the signer's public key.
pub const KEY_HEADER: &str = "x-aether-key";
/// Header carrying the signing time in Unix milliseconds.
pub const TIME_HEADER: &str = "x-aether-time";
/// Header carrying a random nonce (32 hex characters).
pub const NONCE_HEADER: &str = "x-aether-nonce";
/// Header carrying the base64 signature.
pub const SIGNATURE_HEADER: &str = "x-aether-signature";

/// How far a request's time may be from the node's clock. Default 30 s.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(30);

/// Why a request was not authenticated (the node answers 401 with this text).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// One of the four headers is absent or unreadable.
    #[error("request is not signed: missing or malformed `{0}` header")]
    Missing(&'static str),
    /// The key is well formed but not trusted by this node.
    #[error("key {0} is not an admin key of this node")]
    UntrustedKey(String),
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// The time is outside the window.
    #[error("request time is {0} ms away from the node's clock (window {1} ms); check the clock")]
    Stale(i64, u128),
    /// The nonce was already used.
    #[error("request was replayed (nonce already seen)")]
    Replayed,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn message(method: &str, path_and_query: &str, time_ms: i64, nonce: &str, body: &[u8]) -> Vec<u8> {
    format!(
        "aether-admin-v1\n{method}\n{path_and_query}\n{time_ms}\n{nonce}\n{}",
        hex::encode(Sha256::digest(body))
    )
    .into_bytes()
}

/// The four headers that authenticate one request.
pub fn sign(
    key: &SecretKey,
    method: &str,
    path_and_query: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let time_ms = now_ms();
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let sig = key.sign(&message(method, path_and_query, time_ms, &nonce, body));
    vec![
        (KEY_HEADER, key.public().to_string()),
        (TIME_HEADER, time_ms.to_string()),
        (NONCE_HEADER, nonce),
        (SIGNATURE_HEADER, STANDARD.encode(sig.to_bytes())),
    ]
}

/// Checks signed requests against a set of admin keys.
pub struct Verifier {
    trusted: TrustedKeys,
    window: Duration,
    seen: Mutex<HashMap<String, i64>>,
}

impl Verifier {
    /// A verifier trusting `trusted` with the given clock window.
    pub fn new(trusted: TrustedKeys, window: Duration) -> Self {
        Self {
            trusted,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Authenticates one request; returns the signer's key.
    pub fn verify(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<PublicKey, AuthError> {
        let get = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::Missing(name))
        };
        let key_text = get(KEY_HEADER)?;
        let key: PublicKey = key_text
            .parse()
            .map_err(|_| AuthError::Missing(KEY_HEADER))?;
        let time_ms: i64 = get(TIME_HEADER)?
            .parse()
            .map_err(|_| AuthError::Missing(TIME_HEADER))?;
        let nonce = get(NONCE_HEADER)?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Missing(NONCE_HEADER));
        }
        let sig_bytes = STANDARD
            .decode(get(SIGNATURE_HEADER)?)
            .map_err(|_| AuthError::Missing(SIGNATURE_HEADER))?;
        let sig = aether_identity::signature_from_slice(&sig_bytes)
            .ok_or(AuthError::Missing(SIGNATURE_HEADER))?;
        if !self.trusted.contains(&key) {
            return Err(AuthError::UntrustedKey(key_text.to_string()));
        }
        if !key.verify(&message(method, path_and_query, time_ms, nonce, body), &sig) {
            return Err(AuthError::BadSignature);
        }
        let now = now_ms();
        let window = self.window.as_millis();
        if (now - time_ms).unsigned_abs() as u128 > window {
            return Err(AuthError::Stale(time_ms - now, window));
        }
        let mut seen = match self.seen.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let horizon = now - window as i64;
        if seen.len() > 4096 {
            seen.retain(|_, t| *t >= horizon);
        }
        if seen.contains_key(nonce) {
            return Err(AuthError::Replayed);
        }
        seen.insert(nonce.to_string(), time_ms);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn accepts_signed_and_refuses_replay_tamper_and_strangers() {
        let key = SecretKey::generate();
        let verifier = Verifier::new([key.public()].into_iter().collect(), DEFAULT_WINDOW);
        let signed = headers(&sign(&key, "POST", "/v1/deploy", b"body"));
        assert_eq!(
            verifier.verify("POST", "/v1/deploy", &signed, b"body"),
            Ok(key.public())
        );
        assert_eq!(
            verifier.verify("POST", "/v1/deploy", &signed, b"body"),
            Err(AuthError::Replayed)
        );
        let again = headers(&sign(&key, "POST", "/v1/deploy", b"body"));
        assert_eq!(
            verifier.verify("POST", "/v1/deploy", &again, b"other"),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verifier.verify("DELETE", "/v1/deploy", &again, b"body"),
            Err(AuthError::BadSignature)
        );
        let stranger = SecretKey::generate();
        let h = headers(&sign(&stranger, "GET", "/v1/status", b""));
        assert!(matches!(
            verifier.verify("GET", "/v1/status", &h, b""),
            Err(AuthError::UntrustedKey(_))
        ));
        assert_eq!(
            verifier.verify("GET", "/v1/status", &HeaderMap::new(), b""),
            Err(AuthError::Missing(KEY_HEADER))
        );
    }

    #[test]
    fn refuses_stale_requests() {
        let key = SecretKey::generate();
        let verifier = Verifier::new(
            [key.public()].into_iter().collect(),
            Duration::from_millis(1000),
        );
        let time_ms = now_ms() - 60_000;
        let nonce = "0".repeat(32);
        let sig = key.sign(&message("GET", "/v1/status", time_ms, &nonce, b""));
        let h = headers(&[
            (KEY_HEADER, key.public().to_string()),
            (TIME_HEADER, time_ms.to_string()),
            (NONCE_HEADER, nonce),
            (SIGNATURE_HEADER, STANDARD.encode(sig.to_bytes())),
        ]);
        assert!(matches!(
            verifier.verify("GET", "/v1/status", &h, b""),
            Err(AuthError::Stale(..))
        ));
    }
}
