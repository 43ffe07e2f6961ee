//! The admission chain: invites, node certificates, the single-use ledger
//! and revocations. See the crate documentation for the whole picture.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::PublicKey;

pub mod invite;
pub mod ledger;
pub mod node;
pub mod revocation;

/// Largest encoding of any admission type (invite certificate, node
/// certificate, revocation, invite token) accepted by a decoder. Every
/// well-formed value is far smaller (a node certificate with the maximum
/// labels on both itself and its invite is under 5 KiB).
pub const MAX_ENCODED_LEN: usize = 8 * 1024;

/// Largest encoding of a whole [`AdmissionLedger`](crate::AdmissionLedger)
/// or [`RevocationSet`](crate::RevocationSet) accepted by a decoder (1 MiB:
/// about 26,000 ledger claims or 3,000 revocations with the longest reason).
/// Decoders check every element count against the remaining input before
/// allocating; encoders refuse a value over it with
/// [`AdmissionError::TooLarge`].
pub const MAX_SET_ENCODED_LEN: usize = 1024 * 1024;

/// How far in the future a node certificate's `issued_at` may be, relative to
/// the verifier's `now`, to absorb clock skew between machines.
pub const MAX_CLOCK_SKEW_SECS: u64 = 300;

/// Domain-separation prefix of the hash that names a lattice.
const LATTICE_ID_CONTEXT: &[u8] = b"aether-lattice-id-v1\0";

/// Why an admission object was refused. Each variant says which link of the
/// chain failed, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The bytes or text are not a canonical encoding of the expected type.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The invite was signed for another lattice (by a foreign root key).
    #[error(
        "invite belongs to lattice {found}, not to this lattice {expected}: it was issued by another lattice's root key"
    )]
    WrongLattice {
        /// This lattice (the hash of the root key the verifier trusts).
        expected: LatticeId,
        /// The lattice named in the invite.
        found: LatticeId,
    },
    /// A signature in the chain does not verify (forged or tampered data).
    #[error("forged or tampered {what}: its signature does not verify")]
    ForgedSignature {
        /// Which signature failed.
        what: &'static str,
    },
    /// The invite had expired when the node tried to use it.
    #[error("invite {invite} expired at {expires_at} (unix seconds), used at {used_at}")]
    InviteExpired {
        /// The invite.
        invite: InviteId,
        /// When it expired.
        expires_at: u64,
        /// When it was used (the node certificate's `issued_at`, or the
        /// admitting member's clock).
        used_at: u64,
    },
    /// The node certificate claims to be issued in the future.
    #[error(
        "node certificate issued at {issued_at} (unix seconds), more than {MAX_CLOCK_SKEW_SECS} s after now ({now}); check the clocks"
    )]
    IssuedInFuture {
        /// The certificate's `issued_at`.
        issued_at: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// The node certificate breaks a constraint of its invite.
    #[error("invite constraint violated: {0}")]
    ConstraintViolated(String),
    /// The node was revoked by the lattice root.
    #[error("node {node} is revoked: {reason}")]
    Revoked {
        /// The revoked node (boxed: keeps the error small).
        node: Box<PublicKey>,
        /// The reason the operator gave.
        reason: String,
    },
    /// A single-use invite already admitted another node.
    #[error("single-use invite {invite} was already used by node {winner}")]
    InviteAlreadyUsed {
        /// The invite.
        invite: InviteId,
        /// The node it admitted (boxed: keeps the error small).
        winner: Box<PublicKey>,
    },
    /// A value is too large for the encoding bound its receivers enforce.
    #[error(
        "{what} encodes to {len} bytes, more than the {max} bytes a peer accepts; send it in parts"
    )]
    TooLarge {
        /// What was being encoded.
        what: &'static str,
        /// Its encoded length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// An argument to an `issue` function is out of bounds.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which argument.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// The identity of a lattice: SHA-256 of its root public key (with a domain
/// prefix). Written as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LatticeId([u8; 32]);

impl LatticeId {
    /// The lattice whose root public key is `root`.
    pub fn of_root(root: &PublicKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(LATTICE_ID_CONTEXT);
        hasher.update(root.as_bytes());
        Self(hasher.finalize().into())
    }

    /// From the 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for LatticeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for LatticeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LatticeId({self})")
    }
}

impl FromStr for LatticeId {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s, "lattice id").map(Self)
    }
}

/// The random identifier of one invite. Written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InviteId([u8; 16]);

impl InviteId {
    /// From the 16 raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// The 16 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for InviteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InviteId({self})")
    }
}

impl FromStr for InviteId {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_hex(s, "invite id").map(Self)
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn parse_hex<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], AdmissionError> {
    let bad = |reason: String| AdmissionError::Malformed { what, reason };
    if s.len() != 2 * N || !s.is_ascii() {
        return Err(bad(format!("expected {} hex digits", 2 * N)));
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)
            .map_err(|_| bad(format!("`{s}` is not hexadecimal")))?;
    }
    Ok(out)
}

/// Whether `s` is 1 to 63 characters of `A-Z a-z 0-9 . _ -` starting with a
/// letter or digit (`allow_slash` also admits `/`, for label keys).
fn valid_name(s: &str, allow_slash: bool) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!("`{s}` must be 1 to 63 characters"));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("`{s}` must start with a letter or digit"));
    }
    let ok = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (allow_slash && c == '/')
    };
    if !s.chars().all(ok) {
        return Err(format!(
            "`{s}` may contain only letters, digits, `.`, `_`, `-`{}",
            if allow_slash { " and `/`" } else { "" }
        ));
    }
    Ok(())
}

/// A region name (`eu-west-1`): 1 to 63 characters of letters, digits, `.`,
/// `_` and `-`, starting with a letter or digit.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region(String);

impl Region {
    /// Validates `name` as a region.
    pub fn new(name: &str) -> Result<Self, AdmissionError> {
        valid_name(name, false).map_err(|reason| AdmissionError::Invalid {
            field: "region",
            reason,
        })?;
        Ok(Self(name.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({})", self.0)
    }
}

impl FromStr for Region {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// A bounded, sorted set of `key=value` labels: at most [`Labels::MAX`]
/// entries; keys are 1 to 63 characters of letters, digits, `.`, `_`, `-`
/// and `/`; values are 0 to 63 characters of letters, digits, `.`, `_`, `-`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Most labels one value may carry.
    pub const MAX: usize = 16;

    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces `key=value`; fails on invalid text or when the set is full.
    pub fn insert(&mut self, key: &str, value: &str) -> Result<(), AdmissionError> {
        let invalid = |reason| AdmissionError::Invalid {
            field: "label",
            reason,
        };
        valid_name(key, true).map_err(invalid)?;
        if !value.is_empty() {
            valid_name(value, false).map_err(invalid)?;
        }
        if !self.0.contains_key(key) && self.0.len() >= Self::MAX {
            return Err(invalid(format!("at most {} labels are allowed", Self::MAX)));
        }
        self.0.insert(key.to_string(), value.to_string());
        Ok(())
    }

    /// Adds a `key=value` pair as written on a command line (`--label k=v`).
    pub fn insert_pair(&mut self, pair: &str) -> Result<(), AdmissionError> {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| AdmissionError::Invalid {
                field: "label",
                reason: format!("`{pair}` is not of the form key=value"),
            })?;
        self.insert(k, v)
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// The labels in ascending key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many labels there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether every label of `self` is in `other` with the same value.
    pub fn is_subset_of(&self, other: &Labels) -> bool {
        self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

/// Parses a duration as written on a command line: a whole number followed by
/// `s`, `m`, `h` or `d` (`90s`, `15m`, `1h`, `7d`); a bare number is seconds.
pub fn parse_duration_secs(text: &str) -> Result<u64, AdmissionError> {
    let invalid = || AdmissionError::Invalid {
        field: "duration",
        reason: format!("`{text}` is not a duration like 90s, 15m, 1h or 7d"),
    };
    let text_trim = text.trim();
    let (digits, unit) = match text_trim.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text_trim[..i], c),
        _ => (text_trim, 's'),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let n: u64 = digits.parse().map_err(|_| invalid())?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        _ => return Err(invalid()),
    };
    n.checked_mul(scale).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    #[test]
    fn ids_print_and_parse() {
        let root = SecretKey::from_bytes(&[7; 32]).public();
        let id = LatticeId::of_root(&root);
        assert_eq!(id.to_string().len(), 64);
        assert_eq!(id.to_string().parse::<LatticeId>().expect("parse"), id);
        assert_ne!(
            id,
            LatticeId::of_root(&SecretKey::from_bytes(&[8; 32]).public())
        );
        assert!("zz".parse::<LatticeId>().is_err());
        assert!("é".repeat(32).parse::<LatticeId>().is_err());
        let invite = InviteId::from_bytes([0xab; 16]);
        assert_eq!(invite.to_string(), "ab".repeat(16));
        assert_eq!(
            invite.to_string().parse::<InviteId>().expect("parse"),
            invite
        );
    }

    #[test]
    fn regions_and_labels_are_bounded() {
        assert!(Region::new("eu-west-1").is_ok());
        assert!(Region::new("").is_err());
        assert!(Region::new("-x").is_err());
        assert!(Region::new("a b").is_err());
        assert!(Region::new(&"a".repeat(64)).is_err());
        let mut labels = Labels::new();
        labels.insert_pair("tier=gold").expect("label");
        labels
            .insert_pair("example.com/disk=")
            .expect("empty value");
        assert!(labels.insert_pair("novalue").is_err());
        assert!(labels.insert_pair("k=v v").is_err());
        for i in 0..Labels::MAX - 2 {
            labels.insert(&format!("k{i}"), "v").expect("room");
        }
        assert!(labels.insert("one-too-many", "v").is_err());
        labels
            .insert("tier", "silver")
            .expect("replacing is fine when full");
        assert_eq!(labels.get("tier"), Some("silver"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("1h").expect("1h"), 3600);
        assert_eq!(parse_duration_secs("90s").expect("90s"), 90);
        assert_eq!(parse_duration_secs("15m").expect("15m"), 900);
        assert_eq!(parse_duration_secs("7d").expect("7d"), 604_800);
        assert_eq!(parse_duration_secs("42").expect("42"), 42);
        for bad in ["", "h", "1x", "-1h", "1.5h", "99999999999999999999d", "1hh"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }
}
