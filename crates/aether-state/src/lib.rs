//! Sans-IO core of the lattice state (seed 002, DESIGN §3.4).
//!
//! No sockets, no tasks, no database, no clock reads: callers pass updates,
//! keys and the current time in milliseconds, and get decisions back.
//!
//! * [`Hlc`] / [`Timestamp`]: hybrid logical clock; remote timestamps more
//!   than [`DEFAULT_MAX_FORWARD_SKEW_MS`] (500 ms, configurable) ahead of
//!   local time are refused.
//! * [`VersionVector`]: node id → counter, with `descends`, `concurrent`,
//!   `join`; an update names at most [`MAX_WRITERS`] writers.
//! * [`SignedUpdate`]: one change to one entry (bucket, key, value or
//!   tombstone, vector, timestamp, origin), ed25519-signed over a canonical,
//!   length-prefixed encoding behind [`SIGNING_DOMAIN`]; bounded
//!   [`decode`](SignedUpdate::decode).
//! * [`merge`]: the merge rule, a pure function; [`Replica`]: an in-memory
//!   map applying it, with a deterministic [`digest`](Replica::digest).
//!
//! # The merge rule
//!
//! An entry stores the **winning update** (intact, so its signature still
//! verifies) and the **merged vector**, the join of the vectors of every
//! update accepted for that entry. An incoming update is compared with the
//! merged vector:
//!
//! 1. the update's vector descends from it → the update replaces the winner;
//! 2. the merged vector descends from the update's → already superseded,
//!    dropped (this is also how a duplicate or an old loser is recognised);
//! 3. concurrent → the higher HLC timestamp wins;
//! 4. equal timestamps → the lexicographically larger signature wins (the
//!    same answer whichever of the two a node saw first);
//!
//! and in every case the merged vector becomes the join of both.
//!
//! Put differently, the new winner is always the maximum of (old winner,
//! update) by (timestamp, signature) — see [`precedence`] — and the new
//! vector is the join. Both are semilattice joins, so any delivery order,
//! with duplicates and delays, gives byte-identical entries. For honest
//! writers this is exactly cases 1–4: a writer's HLC observes every update
//! it has seen before it writes, so an update that descends from another
//! always carries a greater timestamp. If a writer breaks that (its vector
//! says it saw an update, its timestamp is not later), the timestamp order
//! still decides, so replicas cannot diverge; the merge reports
//! [`Rule::ClockAnomaly`] and it is counted.
//!
//! ## Worked examples
//!
//! Two nodes, `a` and `b`, and a `routes` bucket.
//!
//! ```
//! use std::collections::BTreeMap;
//! use aether_identity::SecretKey;
//! use aether_state::{ApplyResult, NodeId, Replica, Rule};
//! use bytes::Bytes;
//!
//! let (a, b) = (SecretKey::from_bytes(&[1; 32]), SecretKey::from_bytes(&[2; 32]));
//! let keys: BTreeMap<_, _> = [a.public(), b.public()]
//!     .into_iter()
//!     .map(|k| (NodeId::from(&k), k))
//!     .collect();
//! let (mut na, mut nb) = (Replica::default(), Replica::default());
//! let v = |s: &'static str| Some(Bytes::from_static(s.as_bytes()));
//!
//! // (1) descends: b has seen a's write {a:1} and writes over it {a:1, b:1}.
//! let u1 = na.write(&a, "routes", &b"/"[..], v("v1"), 1000)?;
//! assert_eq!(nb.apply(&u1, &keys, 1000), ApplyResult::Applied(Rule::New));
//! let u2 = nb.write(&b, "routes", &b"/"[..], v("v2"), 1001)?;
//! assert_eq!(na.apply(&u2, &keys, 1001), ApplyResult::Applied(Rule::Descends));
//!
//! // (2) superseded: u1 delivered again (a retry, or anti-entropy).
//! assert_eq!(na.apply(&u1, &keys, 1002), ApplyResult::Unchanged(Rule::Superseded));
//!
//! // (3) concurrent: both write without seeing each other; b's is later.
//! let u3 = na.write(&a, "routes", &b"/"[..], v("from a"), 2000)?; // {a:2, b:1} @2000
//! let u4 = nb.write(&b, "routes", &b"/"[..], v("from b"), 2005)?; // {a:1, b:2} @2005
//! assert_eq!(na.apply(&u4, &keys, 2010), ApplyResult::Applied(Rule::ConcurrentNewer));
//! // On b the winner stays, but the merged vector absorbs u3's: {a:2, b:2}.
//! assert_eq!(nb.apply(&u3, &keys, 2010), ApplyResult::Applied(Rule::ConcurrentOlder));
//! assert_eq!(na.get("routes", b"/").unwrap().value(), v("from b").as_ref());
//! assert_eq!(na.digest(), nb.digest());
//!
//! // (4) tie: fresh nodes writing in the same millisecond get the same
//! // timestamp (3000.0); the larger signature wins on both sides.
//! let (mut ta, mut tb) = (Replica::default(), Replica::default());
//! let x = ta.write(&a, "routes", &b"/x"[..], v("a"), 3000)?;
//! let y = tb.write(&b, "routes", &b"/x"[..], v("b"), 3000)?;
//! assert_eq!(x.timestamp(), y.timestamp());
//! let ra = ta.apply(&y, &keys, 3000);
//! let rb = tb.apply(&x, &keys, 3000);
//! if x.signature() > y.signature() {
//!     assert_eq!((ra, rb), (ApplyResult::Applied(Rule::TieLost), ApplyResult::Applied(Rule::TieWon)));
//! } else {
//!     assert_eq!((ra, rb), (ApplyResult::Applied(Rule::TieWon), ApplyResult::Applied(Rule::TieLost)));
//! }
//! assert_eq!(ta.digest(), tb.digest());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Note the tie case: `ta` applies `y`, `tb` applies `x`; each keeps or
//! takes the update with the larger signature, and both end up with that
//! update as winner and `{a:1, b:1}` as merged vector.
//!
//! # What this crate does not do (yet)
//!
//! Pending buffer for missing causal predecessors, propagation (push and
//! anti-entropy), persistence and history, watches, interfaces. Anti-entropy
//! must carry every accepted update's vector (not only winners) for merged
//! vectors, and thus digests, to converge: a loser of a concurrent merge
//! still contributes to the merged vector.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod hlc;
mod merge;
mod update;
mod vv;

pub use hlc::{ClockError, DEFAULT_MAX_FORWARD_SKEW_MS, Hlc, Timestamp};
pub use merge::{
    ApplyResult, Counters, DIGEST_DOMAIN, Entry, MergeOutcome, OriginKeys, Rejection, Replica,
    Rule, WriteError, merge, precedence,
};
pub use update::{
    DecodeError, MAX_BUCKET_LEN, MAX_ENCODED_LEN, MAX_KEY_LEN, MAX_VALUE_LEN, SIGNING_DOMAIN,
    SignedUpdate, UpdateError, VerifyError,
};
pub use vv::{Causality, MAX_WRITERS, NodeId, VectorError, VersionVector};
