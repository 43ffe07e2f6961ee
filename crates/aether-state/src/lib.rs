//! Sans-IO core of the lattice state (seed 002, DESIGN §3.4).
//!
//! No sockets, no tasks, no database, no clock reads, no randomness: callers
//! pass updates, messages and the current time in milliseconds, and get
//! decisions and messages back.
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
//! * [`StateCore`]: the synchronisation core a node's I/O shell drives:
//!   receipt (verification, pending buffer), epidemic push, anti-entropy
//!   over a hash tree, tombstone collection. [`SyncMessage`] is its wire
//!   format. See [Synchronisation](#synchronisation) below.
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
//! # Synchronisation
//!
//! A [`StateCore`] holds one node's entries, the anti-entropy index, the
//! pending buffer and [`SyncCounters`]. Its API, all sans-IO:
//!
//! ```text
//! StateCore::new(config: SyncConfig, clock: Hlc) -> StateCore
//! restore(&mut self, update: SignedUpdate)                      // history read back at start
//! write(&mut self, secret, bucket, key, value: Option<Bytes>, now_ms) -> Result<SignedUpdate, WriteError>
//! receive(&mut self, from: PeerId, msg: SyncMessage, origins: &dyn Origins, now_ms)
//! receive_bytes(&mut self, from, bytes: &[u8], origins, now_ms) -> Result<(), MessageError>
//! start_anti_entropy(&mut self, peer: PeerId, now_ms)
//! poll_timeout(&self) -> Option<u64>;  handle_timeout(&mut self, now_ms)
//! poll_output(&mut self) -> Option<Output>                      // Send { to, msg } | Applied { update, rule, forward }
//! collect_tombstones(&mut self, seen_by_all: impl Fn(&SignedUpdate) -> bool) -> Vec<SignedUpdate>
//! get, entries, updates_of, len, root, digest, counters, pending_len, pending_bytes, clock, config
//! ```
//!
//! ## What the shell does
//!
//! * **Start**: `StateCore::new`, then [`restore`](StateCore::restore)
//!   every update of the node's history (any order; not re-verified, the
//!   clock is advanced past them). A restarted node then catches up by
//!   anti-entropy.
//! * **Local write**: [`write`](StateCore::write) signs and applies; the
//!   shell persists the returned update, then acknowledges the write, then
//!   pushes it ([`SyncMessage::Push`]) to a few random live peers (the
//!   fanout is the shell's choice; several updates may share one push up to
//!   [`SyncConfig::max_message_bytes`], see [`SyncMessage::encoded_len`]).
//! * **Incoming message** (already authenticated by the transport):
//!   [`receive_bytes`](StateCore::receive_bytes) with the sender's node id
//!   and the admitted, unrevoked keys ([`Origins`]).
//! * **Every few seconds**: [`start_anti_entropy`](StateCore::start_anti_entropy)
//!   with one random live member.
//! * **Timers**: call [`handle_timeout`](StateCore::handle_timeout) at
//!   [`poll_timeout`](StateCore::poll_timeout) (pending deadlines).
//! * **After every call**, drain [`poll_output`](StateCore::poll_output) in
//!   order: [`Output::Send`] goes to the transport (best effort);
//!   [`Output::Applied`] is persisted (appended to the history), then
//!   watchers are notified, then, if `forward`, the update is pushed on to a
//!   few random peers. Only updates that arrived by push and changed the
//!   state are forwarded, once (infect and die); anything that arrived by
//!   anti-entropy is not.
//!
//! ## Receipt
//!
//! Every update in a `Push` or `Updates` message, in order:
//!
//! 1. an exact copy of an update already stored (or pending) is counted as
//!    a duplicate and skipped *without* verification: it was verified when
//!    first accepted (epidemic push delivers most updates several times);
//! 2. the origin's key comes from [`Origins::key`]; unknown and revoked
//!    origins are dropped and counted;
//! 3. the signature is checked with `verify_strict`'s rules (through
//!    [`SignedUpdate::verify`] and `aether_identity::PublicKey::verify`), one
//!    update at a time, on [`SyncConfig::verify_threads`] threads for large
//!    messages; forgeries are dropped and counted;
//! 4. the timestamp goes through [`Hlc::observe`]; more than the skew bound
//!    ahead: dropped and counted (accepted later, once local time has caught
//!    up, by anti-entropy);
//! 5. pushed updates whose causal predecessors for their entry are missing
//!    wait in the pending buffer (below); everything else is merged.
//!
//! Nothing dropped is stored, reported `Applied` or forwarded.
//!
//! **Why no batch verification.** ed25519-dalek's `verify_batch` checks a
//! random linear combination of the *cofactorless* equations, so a
//! signature whose `R` carries a small-order component (a malleated copy of
//! a valid one) can pass a batch for some coefficients while the strict
//! check rejects it: two nodes would disagree. A batch success implies
//! strict validity only when every `R` and key is in the prime-order
//! subgroup, and checking that for `R` costs a scalar multiplication per
//! signature, more than the batch saves. Measured here (release build, the
//! AVX-512 IFMA backend): the strict check 19 µs per signature (23 µs
//! through `verify_strict` itself), `verify_batch` 14 µs, the subgroup
//! check of `R` about as much as the strict check. The core therefore verifies strictly, one update at a
//! time, and saves its work on duplicates instead (step 1).
//!
//! ## Pending buffer
//!
//! A pushed update waits when a predecessor for its entry is missing: some
//! writer `w` ≠ origin has `update.vector[w] > merged[w]`, or
//! `update.vector[origin] > merged[origin] + 1`. Its arrival sends the
//! sender one [`FetchRequest`] with this node's [`KeyState`] for the entry;
//! the answer (the sender's updates for that entry) is applied at once and
//! releases every waiting update it satisfies, in arrival order. An update
//! still waiting after [`SyncConfig::pending_deadline_ms`] is applied
//! anyway: the merge is order-independent, so late is always safe; the
//! buffer only keeps a value from showing before its causal past. The
//! buffer holds at most [`SyncConfig::pending_max_count`] updates and
//! [`SyncConfig::pending_max_bytes`] bytes; the oldest is evicted (dropped,
//! counted; anti-entropy brings it back). Updates arriving by anti-entropy
//! skip the buffer: they carry the sender's whole state for the entry,
//! whose superseded predecessors no longer exist anywhere.
//!
//! ## Justifying updates
//!
//! An entry's merged vector is the join of every accepted update's vector,
//! losers of concurrent merges included; to make another node's merged
//! vector equal, anti-entropy must send signed updates covering all of it
//! (an unsigned vector would let a peer inflate counters). Each entry
//! therefore keeps, besides its winner, the *maximal* accepted updates (by
//! vector; equal vectors decided by precedence), whose join is the merged
//! vector; [`StateCore::updates_of`] lists them. For honest writers this
//! is one update per writer still concurrent with the winner, and usually
//! none: a write descending every earlier one leaves only itself.
//!
//! ## Anti-entropy
//!
//! The index is a fixed-depth tree ([`TREE_DEPTH`] 8, [`TREE_FANOUT`] 4,
//! 65 536 leaves) over 64-bit key hashes ([`key_hash`]); each node holds
//! the XOR of the 64-bit entry hashes below it (SHA-256 of the entry's
//! canonical bytes, so winner and merged vector) and their count, updated
//! in O(depth) per change ([`NodeSummary`]). A round is stateless, each
//! message answered from the current state, so a lost message only ends a
//! round early:
//!
//! 1. `Digest(root)`: in sync (counted) or not.
//! 2. For a node that differs, the receiver answers with one of: a `Fetch`
//!    of the whole range (it holds nothing there); `Updates` of everything
//!    it holds there (the other side holds nothing); `Keys`, its key hashes
//!    and entry hashes in the node (a leaf, or at most
//!    [`SyncConfig::keys_threshold`] entries here); else `Ranges`, the
//!    summaries of the node's four children, and the other side repeats
//!    step 2 for each child that differs.
//! 3. Against a `Keys` list: entries only here are sent as `Updates`;
//!    entries only there are fetched by key hash; for entries on both sides
//!    that differ, a `Fetch` carries this side's [`KeyState`] (merged vector,
//!    winner timestamp and hash) with `reply` set.
//! 4. A `Fetch` is answered with exactly the updates each state lacks
//!    (justifying updates whose vector the state's does not cover, and the
//!    winner if it is later); with `reply`, states showing that the other
//!    side holds something this one lacks are fetched back.
//!
//! So both sides end with the same entries after one round without loss.
//! Answers are split to fit [`SyncConfig::max_message_bytes`]; the updates
//! sent for one incoming message are capped at
//! [`SyncConfig::max_reply_bytes`] (the rest follows in later rounds); a
//! node repeated within one message is handled once.
//!
//! Measured (`examples/antientropy_bench.rs`, release): two replicas of
//! 100 000 keys differing in 1 % (a quarter of the differing keys on one
//! side only, a quarter on the other only, half with a newer write on
//! either side), one round moves 433 kB for 205 kB of differing updates
//! with 16-byte values (×2.11), 517 kB for 289 kB with 100-byte values
//! (×1.79), 1.42 MB for 1.19 MB with 1000-byte values (×1.19), in 24
//! messages and about 130 ms; two nodes in sync exchange one 13-byte digest.
//!
//! ## Tombstones
//!
//! A delete writes a tombstone, kept like any value.
//! [`StateCore::collect_tombstones`] removes those the shell says every
//! live node has seen; knowing that (and that no older update of the key
//! can still arrive) is the shell's job. Until every node has collected a
//! tombstone, digests differ and anti-entropy may bring it back to a node
//! that collected it.
//!
//! ## Bounds
//!
//! Every message is decoded with a size bound; counts and lengths are
//! checked against the remaining input before anything is allocated, and
//! decoding allocates at most a small multiple of the input (measured
//! ≤ 17× by the fuzz test). A write whose update would not fit one message
//! is refused ([`WriteError::TooLarge`]), so with the 1 MiB default the
//! largest value is a little under 1 MiB.
//!
//! # What this crate does not do (yet)
//!
//! Persistence and the per-key history (the shell appends what `write`
//! returns and what is reported `Applied`), watches, `wasi:keyvalue` and
//! `alkahest kv`, the convergence-lag metric, and deciding when a tombstone
//! has been seen by every live node.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod hlc;
mod merge;
mod pending;
mod sync;
mod tree;
mod update;
mod vv;
mod wire;

pub use hlc::{ClockError, DEFAULT_MAX_FORWARD_SKEW_MS, Hlc, Timestamp};
pub use merge::{
    ApplyResult, Counters, DIGEST_DOMAIN, Entry, MergeOutcome, OriginKeys, Rejection, Replica,
    Rule, WriteError, merge, precedence,
};
pub use sync::{OriginRefused, Origins, Output, PeerId, StateCore, SyncConfig, SyncCounters};
pub use tree::{NodeRef, NodeSummary, TREE_DEPTH, TREE_FANOUT, key_hash};
pub use update::{
    DecodeError, MAX_BUCKET_LEN, MAX_ENCODED_LEN, MAX_KEY_LEN, MAX_VALUE_LEN, SIGNING_DOMAIN,
    SignedUpdate, UpdateError, VerifyError,
};
pub use vv::{Causality, MAX_WRITERS, NodeId, VectorError, VersionVector};
pub use wire::{
    FetchRequest, HaveState, KeyList, KeyState, KeySummary, MESSAGE_OVERHEAD, MessageError,
    RangeDigest, SyncMessage, WIRE_VERSION,
};
