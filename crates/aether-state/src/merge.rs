//! The merge rule and an in-memory replica.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use aether_identity::{PublicKey, SecretKey, TrustedKeys};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::hlc::{ClockError, DEFAULT_MAX_FORWARD_SKEW_MS, Hlc};
use crate::update::{DecodeError, SignedUpdate, UpdateError};
use crate::vv::{Causality, NodeId, VectorError, VersionVector};

/// Domain separator of [`Replica::digest`].
pub const DIGEST_DOMAIN: &[u8] = b"aether-state/digest/v1\0";

/// The state of one entry: the winning update, kept intact so its signature
/// still verifies, and the merged vector: the join of the vectors of every
/// update accepted for the entry, winners and losers alike. Causality
/// ("descends") is always judged against the merged vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    winner: SignedUpdate,
    vector: VersionVector,
}

impl Entry {
    /// The entry made of a single update.
    pub fn new(update: SignedUpdate) -> Self {
        let vector = update.vector().clone();
        Self {
            winner: update,
            vector,
        }
    }

    /// The winning update (its signature verifies as sent).
    pub fn winner(&self) -> &SignedUpdate {
        &self.winner
    }

    /// The merged vector (join of every accepted update's vector).
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    /// The current value (`None`: deleted).
    pub fn value(&self) -> Option<&Bytes> {
        self.winner.value()
    }

    /// Canonical bytes: `len:u32 winner.encode() merged_vector`.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let w = self.winner.encode();
        let mut out = Vec::with_capacity(w.len() + 8 + self.vector.len() * 40);
        // An encoded update is at most MAX_ENCODED_LEN, well below u32::MAX.
        out.extend_from_slice(&(w.len() as u32).to_be_bytes());
        out.extend_from_slice(&w);
        self.vector.encode_into(&mut out);
        out
    }
}

/// Which case of the merge rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No local entry: the update is stored as is.
    New,
    /// The very update that is already the winner.
    Duplicate,
    /// Case (1): the update's vector descends from the merged one; it replaces it.
    Descends,
    /// Case (2): the merged vector descends from the update's; already superseded.
    Superseded,
    /// Case (3), update newer: concurrent, higher HLC timestamp; it wins.
    ConcurrentNewer,
    /// Case (3), update older: concurrent, lower HLC timestamp; the local
    /// winner stays, the merged vector absorbs the update's.
    ConcurrentOlder,
    /// Case (4), update won: concurrent, equal timestamps, larger signature.
    TieWon,
    /// Case (4), update lost: concurrent, equal timestamps, smaller signature.
    TieLost,
    /// The vectors and the timestamps disagree (a writer's clock ran behind
    /// an update it had seen, which an honest HLC never does). Decided by
    /// timestamp then signature, which keeps every replica convergent.
    ClockAnomaly,
}

/// What [`merge`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeOutcome {
    /// The update becomes the winner; store `entry`.
    Replace {
        /// The new entry (the update, with the merged vector).
        entry: Entry,
        /// The case that decided.
        rule: Rule,
    },
    /// The local winner stays but the merged vector grew; store `entry`.
    Join {
        /// The new entry (old winner, joined vector).
        entry: Entry,
        /// The case that decided.
        rule: Rule,
    },
    /// Nothing changes.
    Keep {
        /// The case that decided.
        rule: Rule,
    },
}

impl MergeOutcome {
    /// The case that decided.
    pub fn rule(&self) -> Rule {
        match self {
            Self::Replace { rule, .. } | Self::Join { rule, .. } | Self::Keep { rule } => *rule,
        }
    }

    /// The entry to store, if anything changed.
    pub fn into_entry(self) -> Option<Entry> {
        match self {
            Self::Replace { entry, .. } | Self::Join { entry, .. } => Some(entry),
            Self::Keep { .. } => None,
        }
    }
}

/// The total order deciding winners: HLC timestamp, then signature bytes
/// (lexicographic), then the whole encoding (only reachable by two different
/// updates with the same signature, i.e. never in practice, but it keeps the
/// order total).
pub fn precedence(a: &SignedUpdate, b: &SignedUpdate) -> Ordering {
    a.timestamp()
        .cmp(&b.timestamp())
        .then_with(|| a.signature().cmp(b.signature()))
        .then_with(|| a.encode().cmp(&b.encode()))
}

/// The merge rule, a pure function of the local entry and the incoming
/// update (see the crate docs for the rule and worked examples).
///
/// The resulting entry is always `winner = max(local winner, update)` under
/// [`precedence`] and `vector = join(local vector, update vector)`: both are
/// joins of a semilattice, so any delivery order, with any duplication,
/// yields the same entry. For honest writers (whose HLC orders every write
/// after every update it has seen) this is exactly cases (1)–(4); the
/// [`Rule`] returned names the case.
pub fn merge(local: Option<&Entry>, incoming: &SignedUpdate) -> MergeOutcome {
    let Some(local) = local else {
        return MergeOutcome::Replace {
            entry: Entry::new(incoming.clone()),
            rule: Rule::New,
        };
    };
    if local.winner == *incoming {
        return MergeOutcome::Keep {
            rule: Rule::Duplicate,
        };
    }
    let incoming_wins = precedence(incoming, &local.winner) == Ordering::Greater;
    let rule = match incoming.vector().compare(&local.vector) {
        // (1) the update has seen everything the entry has.
        Causality::After if incoming_wins => Rule::Descends,
        // (2) the entry has seen everything the update has (including a
        // loser of an earlier concurrent merge arriving again).
        Causality::Before | Causality::Equal if !incoming_wins => Rule::Superseded,
        Causality::After | Causality::Before | Causality::Equal => Rule::ClockAnomaly,
        // (3) and (4).
        Causality::Concurrent => match (
            incoming.timestamp().cmp(&local.winner.timestamp()),
            incoming_wins,
        ) {
            (Ordering::Equal, true) => Rule::TieWon,
            (Ordering::Equal, false) => Rule::TieLost,
            (_, true) => Rule::ConcurrentNewer,
            (_, false) => Rule::ConcurrentOlder,
        },
    };
    let vector = local.vector.join(incoming.vector());
    if incoming_wins {
        MergeOutcome::Replace {
            entry: Entry {
                winner: incoming.clone(),
                vector,
            },
            rule,
        }
    } else if vector != local.vector {
        MergeOutcome::Join {
            entry: Entry {
                winner: local.winner.clone(),
                vector,
            },
            rule,
        }
    } else {
        MergeOutcome::Keep { rule }
    }
}

/// Where the keys of update origins come from: the admitted, unrevoked
/// members (membership and admission feed this).
pub trait OriginKeys {
    /// The key of `origin` if it may write, `None` if unknown or revoked.
    fn origin_key(&self, origin: &NodeId) -> Option<PublicKey>;
}

impl OriginKeys for TrustedKeys {
    fn origin_key(&self, origin: &NodeId) -> Option<PublicKey> {
        PublicKey::from_bytes(&origin.0)
            .ok()
            .filter(|k| self.contains(k))
    }
}

impl OriginKeys for BTreeMap<NodeId, PublicKey> {
    fn origin_key(&self, origin: &NodeId) -> Option<PublicKey> {
        self.get(origin).copied()
    }
}

/// Why an update was refused (nothing stored, nothing to forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Bytes that are not an update.
    #[error("malformed update: {0}")]
    Malformed(#[from] DecodeError),
    /// Origin unknown or revoked.
    #[error("unknown or revoked origin")]
    UnknownOrigin,
    /// Signature does not verify.
    #[error("forged update (bad signature)")]
    Forged,
    /// Timestamp too far in the future (may be accepted later).
    #[error(transparent)]
    FromTheFuture(#[from] ClockError),
}

/// What [`Replica::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    /// The entry changed (winner or merged vector).
    Applied(Rule),
    /// Valid, but nothing changed (superseded or duplicate).
    Unchanged(Rule),
    /// Refused.
    Rejected(Rejection),
}

/// Counts of what [`Replica::apply`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Updates that changed an entry.
    pub applied: u64,
    /// Valid updates that changed nothing.
    pub unchanged: u64,
    /// Malformed inputs.
    pub malformed: u64,
    /// Unknown or revoked origins.
    pub unknown_origin: u64,
    /// Bad signatures.
    pub forged: u64,
    /// Timestamps beyond the tolerance.
    pub from_the_future: u64,
    /// Merges decided as [`Rule::ClockAnomaly`].
    pub clock_anomalies: u64,
}

/// Why a local write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Invalid bucket, key or value.
    #[error(transparent)]
    Update(#[from] UpdateError),
    /// The entry's vector cannot grow.
    #[error(transparent)]
    Vector(#[from] VectorError),
    /// The encoded update would not fit in one message of the configured
    /// bound ([`SyncConfig::max_message_bytes`](crate::SyncConfig)).
    #[error("update of {len} bytes exceeds the {max}-byte message bound; write a smaller value")]
    TooLarge {
        /// Encoded length of the update plus message framing.
        len: usize,
        /// The bound.
        max: usize,
    },
}

/// An in-memory replica: entries by (bucket, key), a clock and counters.
#[derive(Debug, Clone)]
pub struct Replica {
    entries: BTreeMap<(String, Bytes), Entry>,
    clock: Hlc,
    counters: Counters,
}

impl Default for Replica {
    fn default() -> Self {
        Self::new(Hlc::new(DEFAULT_MAX_FORWARD_SKEW_MS))
    }
}

impl Replica {
    /// An empty replica with `clock`.
    pub fn new(clock: Hlc) -> Self {
        Self {
            entries: BTreeMap::new(),
            clock,
            counters: Counters::default(),
        }
    }

    /// The clock.
    pub fn clock(&self) -> &Hlc {
        &self.clock
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The entry at (bucket, key).
    pub fn get(&self, bucket: &str, key: &[u8]) -> Option<&Entry> {
        self.entries
            .get(&(bucket.to_owned(), Bytes::copy_from_slice(key)))
    }

    /// All entries in (bucket, key) order.
    pub fn entries(&self) -> impl Iterator<Item = (&(String, Bytes), &Entry)> {
        self.entries.iter()
    }

    /// Number of entries (tombstones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A local write at `now_ms` by `secret`'s node: the vector is the
    /// entry's merged vector with this node's counter incremented, the
    /// timestamp a fresh tick (after everything observed). The update is
    /// applied here and returned for propagation.
    pub fn write(
        &mut self,
        secret: &SecretKey,
        bucket: &str,
        key: impl Into<Bytes>,
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<SignedUpdate, WriteError> {
        let key = key.into();
        let me = NodeId(*secret.public().as_bytes());
        let vector = match self.entries.get(&(bucket.to_owned(), key.clone())) {
            Some(e) => e.vector.incremented(me)?,
            None => VersionVector::new().incremented(me)?,
        };
        // Validate before ticking so a refused write leaves the clock alone.
        crate::update::validate(bucket, &key, value.as_deref(), &vector, &me)?;
        let timestamp = self.clock.tick(now_ms);
        let update = SignedUpdate::new(secret, bucket, key, value, vector, timestamp)?;
        self.store(&update);
        Ok(update)
    }

    /// Decodes, then [`apply`](Self::apply)s.
    pub fn apply_bytes(
        &mut self,
        bytes: &[u8],
        keys: &impl OriginKeys,
        now_ms: u64,
    ) -> ApplyResult {
        match SignedUpdate::decode(bytes) {
            Ok(u) => self.apply(&u, keys, now_ms),
            Err(e) => {
                self.counters.malformed += 1;
                ApplyResult::Rejected(Rejection::Malformed(e))
            }
        }
    }

    /// Receives an update at local time `now_ms`: the origin must be known
    /// (`keys`), the signature must verify strictly, and the timestamp must
    /// be within the clock's tolerance; then the merge rule decides.
    /// Refused updates are counted and never stored.
    pub fn apply(
        &mut self,
        update: &SignedUpdate,
        keys: &impl OriginKeys,
        now_ms: u64,
    ) -> ApplyResult {
        let Some(key) = keys.origin_key(update.origin()) else {
            self.counters.unknown_origin += 1;
            return ApplyResult::Rejected(Rejection::UnknownOrigin);
        };
        if update.verify(&key).is_err() {
            self.counters.forged += 1;
            return ApplyResult::Rejected(Rejection::Forged);
        }
        if let Err(e) = self.clock.observe(update.timestamp(), now_ms) {
            self.counters.from_the_future += 1;
            return ApplyResult::Rejected(e.into());
        }
        self.store(update)
    }

    fn store(&mut self, update: &SignedUpdate) -> ApplyResult {
        let slot = (update.bucket().to_owned(), update.key().clone());
        let outcome = merge(self.entries.get(&slot), update);
        let rule = outcome.rule();
        if rule == Rule::ClockAnomaly {
            self.counters.clock_anomalies += 1;
        }
        match outcome.into_entry() {
            Some(entry) => {
                self.entries.insert(slot, entry);
                self.counters.applied += 1;
                ApplyResult::Applied(rule)
            }
            None => {
                self.counters.unchanged += 1;
                ApplyResult::Unchanged(rule)
            }
        }
    }

    /// SHA-256 over `DIGEST_DOMAIN`, the entry count (u64) and every entry's
    /// [`canonical_bytes`](Entry::canonical_bytes) in (bucket, key) order.
    /// Replicas holding the same state have byte-identical digests.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(DIGEST_DOMAIN);
        h.update((self.entries.len() as u64).to_be_bytes());
        for entry in self.entries.values() {
            h.update(entry.canonical_bytes());
        }
        h.finalize().into()
    }
}
