//! Keys of a lattice and the chain that admits nodes into it.
//!
//! Every signature in Aether is ed25519. This crate owns how keys are stored
//! (secret key files readable only by their owner), how public keys are
//! written (`ed25519:<base64url>`), sets of trusted keys, and admission.
//! Verification has `verify_strict`'s verdict on every input (see
//! [`PublicKey::verify`]), so every node agrees on which signatures are
//! valid.
//!
//! # The admission chain
//!
//! A lattice is named by its root key: [`LatticeId::of_root`] hashes the root
//! public key. The operator keeps the root secret key (`alkahest lattice
//! init`); no node ever holds it. Members know only the root *public* key,
//! and with it they check any newcomer offline:
//!
//! ```text
//! root key ──signs──▶ InviteCertificate { lattice, invite id, invite key,
//!                                         expires_at, single_use, region?, labels }
//! invite key ─signs─▶ NodeCertificate   { node key, invite id, region?, labels,
//! node key ──signs──▶                     issued_at, invite certificate embedded }
//! root key ──signs──▶ Revocation        { lattice, node key, reason, issued_at }
//! ```
//!
//! 1. `alkahest invite` calls [`Invite::issue`]: the root certifies a fresh
//!    invite key, and the [`InviteToken`] handed to the new machine
//!    (`aether-invite-v1:<base64url>`) carries that certificate, the invite
//!    secret key and the root *public* key, so the new machine learns which
//!    root to trust from the token alone ([`InviteToken::root`]; decoding
//!    refuses a token whose root did not sign its invite).
//! 2. The new node, with its own key ([`SecretKey::load_or_create`]), calls
//!    [`NodeCertificate::issue`]: the invite key (and the node key) sign its
//!    node certificate.
//! 3. Any member calls [`NodeCertificate::verify`] with the root public key
//!    and its clock: it checks the lattice, the three signatures, that the
//!    certificate was issued before the invite expired, and the invite's
//!    region and label constraints, and returns an [`AdmittedNode`].
//! 4. A node joining for the first time is recorded with
//!    [`AdmissionLedger::admit`], which requires the invite to be unexpired at
//!    the member's clock and lets a single-use invite admit one node: when two
//!    machines race, ledgers merged in any order agree on the winner, the
//!    smallest `(issued_at, node key)`.
//! 5. `alkahest revoke` calls [`Revocation::issue`]; members keep verified
//!    revocations in a [`RevocationSet`] and refuse revoked nodes
//!    ([`RevocationSet::check`]).
//!
//! A node certificate has no expiry of its own; it is valid until revoked.
//! Functions here never read the clock or do I/O (except key files): time is
//! always an argument, in Unix seconds.
//!
//! Everything that crosses the network (invite token, node certificate,
//! revocation) has one canonical binary encoding: fixed-width integers,
//! bounded strings and label sets, no trailing bytes, at most
//! [`MAX_ENCODED_LEN`] bytes. Whole ledgers ([`AdmissionLedger::to_bytes`])
//! and revocation sets ([`RevocationSet::to_bytes`]) have one too, with
//! elements in strictly ascending order, at most [`MAX_SET_ENCODED_LEN`]
//! bytes. Decoders check lengths and element counts before reading and never
//! allocate more than their input.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};

pub mod admission;
pub mod home;
mod wire;

pub use admission::invite::{
    INVITE_TOKEN_PREFIX, Invite, InviteCertificate, InviteConstraints, InviteToken,
};
pub use admission::ledger::{
    AdmissionLedger, Admitted, ClaimStatus, MAX_CLAIMS_PER_SINGLE_USE_INVITE, MergeReport,
};
pub use admission::node::{AdmittedNode, NodeCertificate, NodeId};
pub use admission::revocation::{
    MAX_REVOCATION_REASON_LEN, Revocation, RevocationSet, VerifiedRevocation,
};
pub use admission::{
    AdmissionError, InviteId, Labels, LatticeId, MAX_CLOCK_SKEW_SECS, MAX_ENCODED_LEN,
    MAX_SET_ENCODED_LEN, Region, parse_duration_secs,
};

pub use ed25519_dalek::Signature;

/// Name of a node's key file inside its data directory.
pub const NODE_KEY_FILE: &str = "node.key";

/// Path of the node key in the data directory `data_dir`
/// (`DATA_DIR/node.key`; see [`SecretKey::load_or_create`]).
pub fn node_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(NODE_KEY_FILE)
}

/// First line of a secret key file.
const SECRET_HEADER: &str = "aether-ed25519-secret-v1";
/// Prefix of a written public key.
const PUBLIC_PREFIX: &str = "ed25519:";
/// Domain separation of [`SecretKey::derive_secret`].
const DERIVE_CONTEXT: &[u8] = b"aether-derived-secret-v1\0";

/// Errors reading, writing or parsing keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{action} key file {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file exists but is not a key this crate wrote.
    #[error("{path} is not an Aether secret key file ({reason})")]
    BadSecretFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The key file is readable by others.
    #[error(
        "{path} is readable by other users (mode {mode:o}); run `chmod 600 {path}` and try again"
    )]
    InsecurePermissions {
        /// The file.
        path: PathBuf,
        /// Its mode bits.
        mode: u32,
    },
    /// A public key string is malformed.
    #[error("`{0}` is not a public key: expected `ed25519:` followed by 43 base64url characters")]
    BadPublicKey(String),
    /// Refused to overwrite an existing key.
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
}

/// A secret signing key with the path it was loaded from.
#[derive(Clone)]
pub struct SecretKey {
    key: SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({})", self.public())
    }
}

impl SecretKey {
    /// A new random key from the OS's generator.
    pub fn generate() -> Self {
        use rand::RngCore as _;
        use zeroize::Zeroize as _;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let key = Self::from_bytes(&secret);
        secret.zeroize();
        key
    }

    /// The key from 32 secret bytes (tests and deterministic simulations).
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(bytes),
        }
    }

    /// The 32 secret bytes (for encodings that must carry the key).
    pub(crate) fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// A 32-byte secret derived from this key for one purpose, named by
    /// `context` (for example `"aether-transport/stateless-reset/v1"`):
    /// SHA-256 over a fixed prefix, `context` and the secret key bytes.
    /// Distinct contexts give independent secrets; the same key always gives
    /// the same secret, and nobody without the key can compute it.
    pub fn derive_secret(&self, context: &str) -> [u8; 32] {
        use sha2::{Digest as _, Sha256};
        let mut hasher = Sha256::new();
        hasher.update(DERIVE_CONTEXT);
        hasher.update((context.len() as u64).to_be_bytes());
        hasher.update(context.as_bytes());
        hasher.update(self.key.to_bytes());
        hasher.finalize().into()
    }

    /// Its public half.
    pub fn public(&self) -> PublicKey {
        PublicKey::new(self.key.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// Writes the key to `path` with mode 0600, refusing to overwrite one.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            action: "writing",
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            return Err(KeyError::Exists(path.to_path_buf()));
        }
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        let body = format!(
            "{SECRET_HEADER}\n{}\n",
            URL_SAFE_NO_PAD.encode(self.key.to_bytes())
        );
        file.write_all(body.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// Reads a key written by [`SecretKey::write_new`]; refuses files that
    /// other users can read.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            if let Ok(meta) = fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(KeyError::InsecurePermissions {
                        path: path.to_path_buf(),
                        mode,
                    });
                }
            }
        }
        let bad = |reason| KeyError::BadSecretFile {
            path: path.to_path_buf(),
            reason,
        };
        let mut lines = text.lines();
        if lines.next() != Some(SECRET_HEADER) {
            return Err(bad("missing header line"));
        }
        let encoded = lines.next().ok_or_else(|| bad("missing key line"))?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded.trim())
            .map_err(|_| bad("key line is not base64url"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad("key is not 32 bytes"))?;
        Ok(Self::from_bytes(&bytes))
    }
}

impl SecretKey {
    /// Reads the key at `path`, or, if there is no file there, generates one
    /// and writes it with mode 0600 (a node's `DATA_DIR/node.key` on first
    /// start). If another process creates the file at the same moment, its
    /// key is read. Refuses files other users can read.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyError> {
        match Self::read(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                match key.write_new(path) {
                    Ok(()) => Ok(key),
                    Err(KeyError::Exists(_)) => Self::read(path),
                    Err(KeyError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Self::read(path)
                    }
                    Err(other) => Err(other),
                }
            }
            other => other,
        }
    }
}

/// A public key, written `ed25519:<base64url>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    key: VerifyingKey,
    /// The key is a point of small order (it verifies forgeries); computed
    /// once here rather than at every verification.
    weak: bool,
}

/// The canonical encodings of the eight points of small order (the
/// identity, one point of order 2, two of order 4, four of order 8). A unit
/// test derives them from the curve.
const SMALL_ORDER_ENCODINGS: [[u8; 32]; 8] = [
    hex32("0100000000000000000000000000000000000000000000000000000000000000"),
    hex32("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    hex32("0000000000000000000000000000000000000000000000000000000000000000"),
    hex32("0000000000000000000000000000000000000000000000000000000000000080"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05"),
    hex32("26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a"),
    hex32("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"),
];

/// 64 hex digits to 32 bytes, at compile time.
const fn hex32(text: &str) -> [u8; 32] {
    const fn digit(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let text = text.as_bytes();
    assert!(text.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = digit(text[2 * i]) << 4 | digit(text[2 * i + 1]);
        i += 1;
    }
    out
}

impl PublicKey {
    fn new(key: VerifyingKey) -> Self {
        Self {
            weak: key.is_weak(),
            key,
        }
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// Builds a key from 32 raw bytes; fails for invalid curve points.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        VerifyingKey::from_bytes(bytes)
            .map(Self::new)
            .map_err(|_| KeyError::BadPublicKey(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Verifies `signature` over `message` with exactly the verdict of
    /// ed25519-dalek's `verify_strict`: `S` canonical, neither the key nor
    /// `R` of small order, and `R` equal to the encoding of `[S]B - [k]A`.
    ///
    /// `verify_strict` decompresses `R` to test its order, a square root
    /// that costs about a fifth of the whole check. That is not needed: the
    /// last condition makes `R` the canonical encoding of a point, so `R` is
    /// of small order exactly when its bytes are one of the eight canonical
    /// encodings of such points. The key's order is tested once, when the
    /// key is built. The tests compare both verdicts on crafted edge cases.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        !self.weak
            && !SMALL_ORDER_ENCODINGS.contains(signature.r_bytes())
            && self.key.verify(message, signature).is_ok()
    }

    /// Reads a public key from a file holding its written form (or a secret key file).
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let text = fs::read_to_string(path).map_err(|source| KeyError::Io {
            action: "reading",
            path: path.to_path_buf(),
            source,
        })?;
        if text.starts_with(SECRET_HEADER) {
            return Ok(SecretKey::read(path)?.public());
        }
        text.trim().parse()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PUBLIC_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.key.as_bytes())
        )
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || KeyError::BadPublicKey(s.to_string());
        let encoded = s.strip_prefix(PUBLIC_PREFIX).ok_or_else(bad)?;
        let bytes = URL_SAFE_NO_PAD.decode(encoded).map_err(|_| bad())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
        VerifyingKey::from_bytes(&bytes)
            .map(Self::new)
            .map_err(|_| bad())
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

/// Parses a 64-byte signature.
pub fn signature_from_slice(bytes: &[u8]) -> Option<Signature> {
    Signature::from_slice(bytes).ok()
}

/// A set of keys trusted for one purpose (publishing essences, administering a node).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys(BTreeSet<PublicKey>);

impl TrustedKeys {
    /// An empty set (trusts nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a key.
    pub fn insert(&mut self, key: PublicKey) {
        self.0.insert(key);
    }

    /// Whether `key` is trusted.
    pub fn contains(&self, key: &PublicKey) -> bool {
        self.0.contains(key)
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, in a stable order.
    pub fn iter(&self) -> impl Iterator<Item = &PublicKey> {
        self.0.iter()
    }
}

impl FromIterator<PublicKey> for TrustedKeys {
    fn from_iter<I: IntoIterator<Item = PublicKey>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_and_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k.key");
        let key = SecretKey::generate();
        key.write_new(&path).expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let back = SecretKey::read(&path).expect("read");
        assert_eq!(back.public(), key.public());
        assert!(matches!(key.write_new(&path), Err(KeyError::Exists(_))));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
            assert!(matches!(
                SecretKey::read(&path),
                Err(KeyError::InsecurePermissions { .. })
            ));
        }
    }

    #[test]
    fn public_key_text_form() {
        let key = SecretKey::generate().public();
        let text = key.to_string();
        assert!(text.starts_with("ed25519:"));
        assert_eq!(text.parse::<PublicKey>().expect("parse"), key);
        assert!("ed25519:abc".parse::<PublicKey>().is_err());
        assert!("rsa:AAAA".parse::<PublicKey>().is_err());
    }

    #[test]
    fn derived_secrets_are_deterministic_and_separated() {
        let key = SecretKey::from_bytes(&[9; 32]);
        let again = SecretKey::from_bytes(&[9; 32]);
        let a = key.derive_secret("a");
        assert_eq!(a, again.derive_secret("a"));
        assert_ne!(a, key.derive_secret("b"));
        assert_ne!(a, SecretKey::from_bytes(&[8; 32]).derive_secret("a"));
        assert_ne!(a, key.to_bytes());
    }

    #[test]
    fn small_order_table_is_every_multiple_of_a_point_of_order_eight() {
        use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
        use curve25519_dalek::scalar::Scalar;
        use curve25519_dalek::traits::IsIdentity as _;
        let t = CompressedEdwardsY(SMALL_ORDER_ENCODINGS[6])
            .decompress()
            .expect("a point");
        assert!((t * Scalar::from(8u64)).is_identity());
        assert!(!(t * Scalar::from(4u64)).is_identity());
        let derived: BTreeSet<[u8; 32]> = (0u64..8)
            .map(|k| (t * Scalar::from(k)).compress().to_bytes())
            .collect();
        let table: BTreeSet<[u8; 32]> = SMALL_ORDER_ENCODINGS.into_iter().collect();
        assert_eq!(derived, table);
        assert!(table.contains(&EdwardsPoint::default().compress().to_bytes()));
    }

    #[test]
    fn strict_verification() {
        let key = SecretKey::generate();
        let sig = key.sign(b"hello");
        assert!(key.public().verify(b"hello", &sig));
        assert!(!key.public().verify(b"hellO", &sig));
        let other = SecretKey::generate();
        assert!(!other.public().verify(b"hello", &sig));
    }
}
