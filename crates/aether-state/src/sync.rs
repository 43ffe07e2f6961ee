//! The sans-IO synchronisation core: receipt, pending buffer, anti-entropy.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

use aether_identity::{PublicKey, SecretKey, TrustedKeys};
use bytes::Bytes;
use sha2::{Digest as _, Sha256};

use crate::hlc::Hlc;
use crate::merge::{DIGEST_DOMAIN, Entry, Rule, WriteError, merge, precedence};
use crate::pending::{Pending, PendingItem, Slot};
use crate::tree::{HashTree, NodeRef, NodeSummary, TREE_FANOUT, entry_hash, first_u64, key_hash};
use crate::update::{SignedUpdate, encoded_len_of, validate};
use crate::vv::{Causality, MAX_WRITERS, NodeId, VersionVector};
use crate::wire::{
    FetchRequest, HaveState, KeyList, KeyState, KeySummary, MESSAGE_OVERHEAD, MessageError,
    RangeDigest, SyncMessage, node_encoded_len, range_encoded_len, state_len,
};

/// A peer, named by its node id (the transport authenticates it).
pub type PeerId = NodeId;

/// Bounds and timings of a [`StateCore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncConfig {
    /// Most updates the pending buffer holds (default 10 000).
    pub pending_max_count: usize,
    /// Most bytes (encoded updates) the pending buffer holds (default 16 MiB).
    pub pending_max_bytes: usize,
    /// How long an update waits for its predecessors before it is applied
    /// anyway, in ms (default 3 000).
    pub pending_deadline_ms: u64,
    /// Largest message, in bytes: the transport's frame bound (default
    /// 1 MiB). Outgoing messages are split to fit; larger incoming ones are
    /// refused by [`StateCore::receive_bytes`]; a write whose update would
    /// not fit is refused.
    pub max_message_bytes: usize,
    /// Most bytes of updates sent in answer to one incoming message (default
    /// 8 MiB); the rest follows in later anti-entropy rounds. Bounds the work
    /// and memory one peer's request can cause.
    pub max_reply_bytes: usize,
    /// A differing tree node holding at most this many entries on this side
    /// is compared key by key instead of descending further (default 2).
    pub keys_threshold: u64,
    /// Threads that check the signatures of one large incoming message in
    /// parallel (default 1: on the caller's thread). Each check is the
    /// same strict check either way; only where it runs changes.
    pub verify_threads: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            pending_max_count: 10_000,
            pending_max_bytes: 16 << 20,
            pending_deadline_ms: 3_000,
            max_message_bytes: 1 << 20,
            max_reply_bytes: 8 << 20,
            keys_threshold: 2,
            verify_threads: 1,
        }
    }
}

/// Why an origin may not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginRefused {
    /// Not an admitted node.
    #[error("origin is not an admitted node")]
    Unknown,
    /// Admitted, then revoked.
    #[error("origin has been revoked")]
    Revoked,
}

/// Where the verification keys of update origins come from: the admitted,
/// unrevoked members (admission and revocations feed this).
pub trait Origins {
    /// The verification key of `origin` if it may write, or why not.
    fn key(&self, origin: &NodeId) -> Result<PublicKey, OriginRefused>;
}

impl Origins for BTreeMap<NodeId, PublicKey> {
    fn key(&self, origin: &NodeId) -> Result<PublicKey, OriginRefused> {
        self.get(origin).copied().ok_or(OriginRefused::Unknown)
    }
}

impl Origins for TrustedKeys {
    fn key(&self, origin: &NodeId) -> Result<PublicKey, OriginRefused> {
        PublicKey::from_bytes(&origin.0)
            .ok()
            .filter(|k| self.contains(k))
            .ok_or(OriginRefused::Unknown)
    }
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `msg` to `to` (best effort: a lost message only delays
    /// convergence until the next anti-entropy round).
    Send {
        /// The peer.
        to: PeerId,
        /// The message.
        msg: SyncMessage,
    },
    /// A received update changed the state: persist it (append it to the
    /// history), then notify watchers. If `forward`, it arrived by epidemic
    /// push and the shell pushes it on to a few random peers.
    Applied {
        /// The update (verified).
        update: SignedUpdate,
        /// How the merge rule decided ([`Rule::ConcurrentOlder`] and
        /// [`Rule::TieLost`] change only the merged vector, not the value).
        rule: Rule,
        /// Whether to push it on.
        forward: bool,
    },
}

/// What a [`StateCore`] has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Local writes.
    pub writes: u64,
    /// Updates restored at start.
    pub restored: u64,
    /// Received updates that changed the state.
    pub applied: u64,
    /// Received valid updates that changed nothing (superseded).
    pub unchanged: u64,
    /// Exact copies of stored or pending updates, skipped without verification.
    pub duplicates: u64,
    /// Updates from origins that are not admitted.
    pub unknown_origin: u64,
    /// Updates from revoked origins.
    pub revoked_origin: u64,
    /// Updates whose signature does not verify strictly.
    pub forged: u64,
    /// Updates timestamped beyond the clock's skew tolerance.
    pub from_the_future: u64,
    /// Merges decided as [`Rule::ClockAnomaly`].
    pub clock_anomalies: u64,
    /// Messages that did not decode (see [`StateCore::receive_bytes`]).
    pub malformed_messages: u64,
    /// Messages longer than [`SyncConfig::max_message_bytes`].
    pub oversized_messages: u64,
    /// Well-formed messages with invalid content (unsorted key lists, keys
    /// outside their node), ignored.
    pub invalid_messages: u64,
    /// Updates put in the pending buffer.
    pub pending_buffered: u64,
    /// Pending updates applied once their predecessors arrived.
    pub pending_released: u64,
    /// Pending updates applied at their deadline.
    pub pending_expired: u64,
    /// Pending updates evicted (dropped) to respect the bounds.
    pub pending_evicted: u64,
    /// Fetches sent for updates waiting in the pending buffer.
    pub fetches_sent: u64,
    /// Anti-entropy rounds started.
    pub ae_rounds_started: u64,
    /// Digests received that matched (the two nodes were in sync).
    pub ae_in_sync: u64,
    /// Messages emitted.
    pub messages_sent: u64,
    /// Encoded bytes of the messages emitted.
    pub bytes_sent: u64,
    /// Messages received.
    pub messages_received: u64,
    /// Encoded bytes of the messages received.
    pub bytes_received: u64,
    /// Updates sent in `Updates` messages.
    pub updates_sent: u64,
    /// Replies cut at [`SyncConfig::max_reply_bytes`].
    pub replies_truncated: u64,
    /// Entries whose set of concurrent updates exceeded [`MAX_WRITERS`]
    /// (only possible with a dishonest writer).
    pub frontier_overflow: u64,
    /// Tombstones removed by [`StateCore::collect_tombstones`].
    pub tombstones_collected: u64,
}

/// One entry and what anti-entropy needs about it.
#[derive(Debug, Clone)]
struct Record {
    entry: Entry,
    /// Updates besides the winner whose vectors are needed to justify the
    /// merged vector: the maximal accepted updates (by vector, equal vectors
    /// decided by precedence), without the winner.
    extras: Vec<SignedUpdate>,
    /// Whether the winner is itself maximal.
    winner_maximal: bool,
    key_hash: u64,
    entry_hash: u64,
}

impl Record {
    fn updates(&self) -> impl Iterator<Item = &SignedUpdate> {
        std::iter::once(self.entry.winner()).chain(self.extras.iter())
    }
}

/// `a` is strictly below `b`: smaller vector, or equal vector and lower precedence.
fn below(a: &SignedUpdate, b: &SignedUpdate) -> bool {
    match a.vector().compare(b.vector()) {
        Causality::Before => true,
        Causality::Equal => precedence(a, b) == Ordering::Less,
        Causality::After | Causality::Concurrent => false,
    }
}

fn winner_hash(u: &SignedUpdate) -> u64 {
    first_u64(&Sha256::digest(u.encode()))
}

/// Whether `ours` (a winner) should replace the winner described by
/// `theirs`: a later timestamp, or the same one and a different update (the
/// precedence order then needs the signatures, so both sides send theirs).
fn beats(ours: &SignedUpdate, theirs: &HaveState) -> bool {
    match ours.timestamp().cmp(&theirs.winner_timestamp) {
        Ordering::Greater => true,
        Ordering::Less => false,
        Ordering::Equal => winner_hash(ours) != theirs.winner_hash,
    }
}

/// How an update arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Epidemic push: causal check, forwarded when applied.
    Push,
    /// Anti-entropy or fetch answer: applied at once, not forwarded.
    Sync,
}

/// The synchronisation core of one node. See the crate docs for the protocol
/// and how a shell drives it.
#[derive(Debug, Clone)]
pub struct StateCore {
    config: SyncConfig,
    clock: Hlc,
    entries: BTreeMap<Slot, Record>,
    by_hash: BTreeSet<(u64, Slot)>,
    tree: HashTree,
    pending: Pending,
    outputs: VecDeque<Output>,
    counters: SyncCounters,
}

impl StateCore {
    /// An empty core with `config` and `clock` (which holds the skew bound).
    pub fn new(config: SyncConfig, clock: Hlc) -> Self {
        Self {
            config,
            clock,
            entries: BTreeMap::new(),
            by_hash: BTreeSet::new(),
            tree: HashTree::new(),
            pending: Pending::default(),
            outputs: VecDeque::new(),
            counters: SyncCounters::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The clock.
    pub fn clock(&self) -> &Hlc {
        &self.clock
    }

    /// The counters.
    pub fn counters(&self) -> &SyncCounters {
        &self.counters
    }

    /// Updates waiting in the pending buffer.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Encoded bytes of the updates waiting in the pending buffer.
    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes()
    }

    /// The entry at (bucket, key).
    pub fn get(&self, bucket: &str, key: &[u8]) -> Option<&Entry> {
        self.entries
            .get(&(bucket.to_owned(), Bytes::copy_from_slice(key)))
            .map(|r| &r.entry)
    }

    /// All entries (tombstones included) in (bucket, key) order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values().map(|r| &r.entry)
    }

    /// The signed updates that make up the entry at (bucket, key): the
    /// winner first, then the concurrent updates that the merged vector
    /// still needs. Anti-entropy sends exactly these.
    pub fn updates_of(&self, bucket: &str, key: &[u8]) -> Vec<SignedUpdate> {
        self.entries
            .get(&(bucket.to_owned(), Bytes::copy_from_slice(key)))
            .map(|r| r.updates().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of entries (tombstones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The root of the anti-entropy tree: XOR of all entry hashes and the
    /// entry count. Equal on two nodes (with overwhelming probability) iff
    /// their [`digest`](Self::digest)s are; O(1).
    pub fn root(&self) -> NodeSummary {
        self.tree.root()
    }

    /// SHA-256 over [`DIGEST_DOMAIN`], the entry count (u64) and every
    /// entry's [`canonical_bytes`](Entry::canonical_bytes) in (bucket, key)
    /// order: the same function as [`Replica::digest`](crate::Replica::digest),
    /// byte-identical on nodes holding the same state. O(state size).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(DIGEST_DOMAIN);
        h.update((self.entries.len() as u64).to_be_bytes());
        for r in self.entries.values() {
            h.update(r.entry.canonical_bytes());
        }
        h.finalize().into()
    }

    /// The next output for the shell, in order. Drain after every call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) wants to be called (ms,
    /// the earliest pending deadline), if ever.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.pending.next_deadline()
    }

    /// Applies every pending update whose deadline has passed.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(item) = self.pending.pop_expired(now_ms) {
            self.counters.pending_expired += 1;
            let slot = slot_of(&item.update);
            self.accept(item.update, item.forward);
            self.release_pending(&slot);
        }
    }

    /// Restores one update read back from disk at start. It was verified
    /// when first accepted, so it is not verified again; the clock is
    /// advanced past its timestamp. Emits nothing.
    pub fn restore(&mut self, update: SignedUpdate) {
        self.clock.witness(update.timestamp());
        self.apply_update(&update);
        self.counters.restored += 1;
    }

    /// A local write by `secret`'s node: the vector is the entry's merged
    /// vector with this node's counter incremented, the timestamp a fresh
    /// tick. The update is applied here and returned; the shell persists it,
    /// acknowledges the write, then pushes it to a few peers. `value` `None`
    /// deletes (writes a tombstone). Refused, with the clock untouched, if
    /// the update would be malformed or would not fit in one message.
    pub fn write(
        &mut self,
        secret: &SecretKey,
        bucket: &str,
        key: &[u8],
        value: Option<Bytes>,
        now_ms: u64,
    ) -> Result<SignedUpdate, WriteError> {
        let me = NodeId(*secret.public().as_bytes());
        let slot: Slot = (bucket.to_owned(), Bytes::copy_from_slice(key));
        let vector = match self.entries.get(&slot) {
            Some(r) => r.entry.vector().incremented(me)?,
            None => VersionVector::new().incremented(me)?,
        };
        validate(bucket, key, value.as_deref(), &vector, &me)?;
        let len = encoded_len_of(
            bucket.len(),
            key.len(),
            value.as_ref().map(|v| v.len()),
            vector.len(),
        ) + MESSAGE_OVERHEAD;
        if len > self.config.max_message_bytes {
            return Err(WriteError::TooLarge {
                len,
                max: self.config.max_message_bytes,
            });
        }
        let timestamp = self.clock.tick(now_ms);
        let update = SignedUpdate::new(secret, bucket, slot.1.clone(), value, vector, timestamp)?;
        self.apply_update(&update);
        self.counters.writes += 1;
        self.release_pending(&slot);
        Ok(update)
    }

    /// Decodes `bytes` (bounded by [`SyncConfig::max_message_bytes`]) and
    /// [`receive`](Self::receive)s it; a message that does not decode is
    /// counted and dropped whole.
    pub fn receive_bytes(
        &mut self,
        from: PeerId,
        bytes: &[u8],
        origins: &dyn Origins,
        now_ms: u64,
    ) -> Result<(), MessageError> {
        match SyncMessage::decode(bytes, self.config.max_message_bytes) {
            Ok(msg) => {
                self.receive(from, msg, origins, now_ms);
                Ok(())
            }
            Err(e) => {
                if matches!(e, MessageError::Oversized { .. }) {
                    self.counters.oversized_messages += 1;
                } else {
                    self.counters.malformed_messages += 1;
                }
                Err(e)
            }
        }
    }

    /// One message from `from` (authenticated as such by the transport) at
    /// local time `now_ms`. Updates are verified against `origins`; answers
    /// and applied updates come out of [`poll_output`](Self::poll_output).
    pub fn receive(&mut self, from: PeerId, msg: SyncMessage, origins: &dyn Origins, now_ms: u64) {
        self.counters.messages_received += 1;
        self.counters.bytes_received += msg.encoded_len() as u64;
        match msg {
            SyncMessage::Push(updates) => {
                let verdicts = self.preverify(&updates, origins);
                for (u, verdict) in updates.into_iter().zip(verdicts) {
                    self.ingest(from, u, origins, now_ms, Via::Push, verdict);
                }
            }
            SyncMessage::Updates(updates) => {
                let verdicts = self.preverify(&updates, origins);
                for (u, verdict) in updates.into_iter().zip(verdicts) {
                    self.ingest(from, u, origins, now_ms, Via::Sync, verdict);
                }
            }
            SyncMessage::Digest(theirs) => {
                if self.tree.root() == theirs {
                    self.counters.ae_in_sync += 1;
                } else {
                    let mut reply = Reply::new(&self.config);
                    self.on_differing(NodeRef::ROOT, theirs, &mut reply);
                    self.finish(from, reply);
                }
            }
            SyncMessage::Ranges(ranges) => {
                let mut reply = Reply::new(&self.config);
                for r in ranges {
                    for (i, theirs) in r.children.iter().enumerate() {
                        let Some(child) = r.node.child(i) else {
                            continue;
                        };
                        if !reply.first_visit(child) {
                            continue;
                        }
                        if self.tree.get(child) != *theirs {
                            self.on_differing(child, *theirs, &mut reply);
                        }
                    }
                }
                self.finish(from, reply);
            }
            SyncMessage::Keys(lists) => {
                let mut reply = Reply::new(&self.config);
                for list in &lists {
                    self.on_keys(list, &mut reply);
                }
                self.finish(from, reply);
            }
            SyncMessage::Fetch(request) => {
                let mut reply = Reply::new(&self.config);
                self.on_fetch(&request, &mut reply);
                self.finish(from, reply);
            }
        }
    }

    /// Begins an anti-entropy round with `peer`: sends it this node's root
    /// summary. The round is stateless: each answer is computed from the
    /// current state, and a lost message simply ends the round early.
    pub fn start_anti_entropy(&mut self, peer: PeerId, _now_ms: u64) {
        self.counters.ae_rounds_started += 1;
        let msg = SyncMessage::Digest(self.tree.root());
        self.send(peer, msg);
    }

    /// Removes every entry whose winner is a tombstone for which
    /// `seen_by_all` holds, and returns those winners (the shell deletes
    /// them from its store). Knowing that every live node has seen a
    /// tombstone, and that no older update of the key can still arrive (from
    /// a node offline for longer, or a message in flight), is the shell's
    /// job: an older update arriving after collection resurrects the entry.
    /// Nodes collect independently, so digests differ until all have.
    pub fn collect_tombstones(
        &mut self,
        seen_by_all: impl Fn(&SignedUpdate) -> bool,
    ) -> Vec<SignedUpdate> {
        let doomed: Vec<Slot> = self
            .entries
            .iter()
            .filter(|(_, r)| r.entry.value().is_none() && seen_by_all(r.entry.winner()))
            .map(|(s, _)| s.clone())
            .collect();
        let mut out = Vec::with_capacity(doomed.len());
        for slot in doomed {
            if let Some(r) = self.entries.remove(&slot) {
                self.tree.update(r.key_hash, r.entry_hash, -1);
                self.by_hash.remove(&(r.key_hash, slot));
                self.counters.tombstones_collected += 1;
                out.push(r.entry.winner().clone());
            }
        }
        out
    }

    // ----- receipt -----

    fn is_stored(&self, u: &SignedUpdate) -> bool {
        self.entries
            .get(&slot_of(u))
            .is_some_and(|r| r.updates().any(|x| x == u))
    }

    /// Strict signature checks of a message's new updates, spread over
    /// [`SyncConfig::verify_threads`] threads when the message is large;
    /// `None` where an update is left to [`ingest`](Self::ingest) (already
    /// stored or pending, unknown origin, or a small message).
    fn preverify(&self, updates: &[SignedUpdate], origins: &dyn Origins) -> Vec<Option<bool>> {
        const MIN_PARALLEL: usize = 64;
        let mut verdicts = vec![None; updates.len()];
        let threads = self.config.verify_threads.max(1);
        if threads == 1 || updates.len() < MIN_PARALLEL {
            return verdicts;
        }
        let work: Vec<(usize, PublicKey)> = updates
            .iter()
            .enumerate()
            .filter(|(_, u)| !self.is_stored(u) && self.pending.find(u).is_none())
            .filter_map(|(i, u)| origins.key(u.origin()).ok().map(|k| (i, k)))
            .collect();
        if work.len() < MIN_PARALLEL {
            return verdicts;
        }
        let chunk = work.len().div_ceil(threads);
        let results: Vec<Vec<(usize, bool)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = work
                .chunks(chunk)
                .map(|part| {
                    scope.spawn(move || {
                        part.iter()
                            .map(|(i, key)| (*i, updates[*i].verify(key).is_ok()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_default())
                .collect()
        });
        for (i, ok) in results.into_iter().flatten() {
            verdicts[i] = Some(ok);
        }
        verdicts
    }

    fn ingest(
        &mut self,
        from: PeerId,
        u: SignedUpdate,
        origins: &dyn Origins,
        now_ms: u64,
        via: Via,
        verdict: Option<bool>,
    ) {
        // An exact copy of a stored (or pending) update was verified when it
        // was first accepted: skip the signature check.
        if self.is_stored(&u) {
            self.counters.duplicates += 1;
            return;
        }
        if let Some(seq) = self.pending.find(&u) {
            self.counters.duplicates += 1;
            // By push: it keeps waiting. By anti-entropy or a fetch answer:
            // the sender's state for the key is arriving, stop waiting.
            if via == Via::Sync
                && let Some(item) = self.pending.remove(seq)
            {
                self.counters.pending_released += 1;
                let slot = slot_of(&item.update);
                self.accept(item.update, item.forward);
                self.release_pending(&slot);
            }
            return;
        }
        let key = match origins.key(u.origin()) {
            Ok(k) => k,
            Err(OriginRefused::Unknown) => {
                self.counters.unknown_origin += 1;
                return;
            }
            Err(OriginRefused::Revoked) => {
                self.counters.revoked_origin += 1;
                return;
            }
        };
        if !verdict.unwrap_or_else(|| u.verify(&key).is_ok()) {
            self.counters.forged += 1;
            return;
        }
        if self.clock.observe(u.timestamp(), now_ms).is_err() {
            self.counters.from_the_future += 1;
            return;
        }
        let slot = slot_of(&u);
        if via == Via::Push && self.missing_predecessors(&u) {
            let fetch = !self.pending.has_slot(&slot);
            let item = PendingItem {
                size: u.encoded_len(),
                update: u,
                forward: true,
                deadline: now_ms.saturating_add(self.config.pending_deadline_ms),
            };
            self.counters.pending_evicted += self.pending.insert(
                item,
                self.config.pending_max_count,
                self.config.pending_max_bytes,
            );
            self.counters.pending_buffered += 1;
            if fetch {
                self.counters.fetches_sent += 1;
                let state = self.state_of(&slot);
                self.send(
                    from,
                    SyncMessage::Fetch(FetchRequest {
                        reply: false,
                        states: vec![state],
                        ..FetchRequest::default()
                    }),
                );
            }
            return;
        }
        self.accept(u, via == Via::Push);
        self.release_pending(&slot);
    }

    /// Whether some causal predecessor of `u` for its entry is missing
    /// locally: a writer other than the origin with a higher counter than
    /// the merged vector, or the origin more than one write ahead.
    fn missing_predecessors(&self, u: &SignedUpdate) -> bool {
        let empty = VersionVector::new();
        let local = self
            .entries
            .get(&slot_of(u))
            .map_or(&empty, |r| r.entry.vector());
        u.vector().iter().any(|(w, c)| {
            let have = local.get(w);
            if w == u.origin() {
                *c > have.saturating_add(1)
            } else {
                *c > have
            }
        })
    }

    fn accept(&mut self, u: SignedUpdate, forward: bool) {
        let (rule, changed) = self.apply_update(&u);
        if changed {
            self.counters.applied += 1;
            self.outputs.push_back(Output::Applied {
                update: u,
                rule,
                forward,
            });
        } else {
            self.counters.unchanged += 1;
        }
    }

    /// Applies the pending updates of `slot` whose predecessors are now here.
    fn release_pending(&mut self, slot: &Slot) {
        loop {
            let ready = self
                .pending
                .items_for(slot)
                .into_iter()
                .find(|(_, u)| !self.missing_predecessors(u))
                .map(|(seq, _)| seq);
            let Some(item) = ready.and_then(|seq| self.pending.remove(seq)) else {
                return;
            };
            self.counters.pending_released += 1;
            self.accept(item.update, item.forward);
        }
    }

    /// Merges `u` into its entry, keeps the index and the set of justifying
    /// updates in step. Returns the rule and whether the entry changed.
    fn apply_update(&mut self, u: &SignedUpdate) -> (Rule, bool) {
        let slot = slot_of(u);
        let Some(rec) = self.entries.get_mut(&slot) else {
            let entry = Entry::new(u.clone());
            let kh = key_hash(u.bucket(), u.key());
            let eh = entry_hash(&entry.canonical_bytes());
            self.tree.update(kh, eh, 1);
            self.by_hash.insert((kh, slot.clone()));
            self.entries.insert(
                slot,
                Record {
                    entry,
                    extras: Vec::new(),
                    winner_maximal: true,
                    key_hash: kh,
                    entry_hash: eh,
                },
            );
            return (Rule::New, true);
        };
        let outcome = merge(Some(&rec.entry), u);
        let rule = outcome.rule();
        if rule == Rule::ClockAnomaly {
            self.counters.clock_anomalies += 1;
        }
        if rule == Rule::Duplicate {
            return (rule, false);
        }
        let old_winner = rec.entry.winner().clone();
        let changed = match outcome.into_entry() {
            Some(entry) => {
                rec.entry = entry;
                true
            }
            None => false,
        };
        if refresh_frontier(rec, &old_winner, u) {
            self.counters.frontier_overflow += 1;
        }
        if changed {
            let eh = entry_hash(&rec.entry.canonical_bytes());
            self.tree.update(rec.key_hash, rec.entry_hash ^ eh, 0);
            rec.entry_hash = eh;
        }
        (rule, changed)
    }

    fn state_of(&self, slot: &Slot) -> KeyState {
        KeyState {
            bucket: slot.0.clone(),
            key: slot.1.clone(),
            have: self.entries.get(slot).map(|r| HaveState {
                vector: r.entry.vector().clone(),
                winner_timestamp: r.entry.winner().timestamp(),
                winner_hash: winner_hash(r.entry.winner()),
            }),
        }
    }

    // ----- anti-entropy -----

    /// The (key hash, slot) pairs inside `node`, ascending.
    fn slots_in(&self, node: NodeRef) -> impl Iterator<Item = &(u64, Slot)> {
        let (lo, hi) = node.key_range();
        self.by_hash
            .range((lo, (String::new(), Bytes::new()))..)
            .take_while(move |(kh, _)| *kh <= hi)
    }

    /// This node's key-hash groups inside `node`.
    fn groups_in(&self, node: NodeRef) -> Vec<(u64, u64, Vec<&Slot>)> {
        let mut out: Vec<(u64, u64, Vec<&Slot>)> = Vec::new();
        for (kh, slot) in self.slots_in(node) {
            let eh = self.entries.get(slot).map_or(0, |r| r.entry_hash);
            match out.last_mut() {
                Some((k, x, slots)) if k == kh => {
                    *x ^= eh;
                    slots.push(slot);
                }
                _ => out.push((*kh, eh, vec![slot])),
            }
        }
        out
    }

    fn send_record(&self, slot: &Slot, reply: &mut Reply) {
        if let Some(r) = self.entries.get(slot) {
            for u in r.updates() {
                reply.update(u.clone());
            }
        }
    }

    /// `node` differs from the peer's summary `theirs`: narrow down.
    fn on_differing(&self, node: NodeRef, theirs: NodeSummary, reply: &mut Reply) {
        let mine = self.tree.get(node);
        if mine.count == 0 {
            reply.fetch_range(node);
        } else if theirs.count == 0 {
            for (_, slot) in self.slots_in(node) {
                if reply.exhausted() {
                    return;
                }
                self.send_record(slot, reply);
            }
        } else if node.is_leaf() || mine.count <= self.config.keys_threshold {
            let keys = self
                .groups_in(node)
                .into_iter()
                .map(|(key_hash, entry_hash, _)| KeySummary {
                    key_hash,
                    entry_hash,
                })
                .collect();
            reply.keys(KeyList { node, keys });
        } else {
            let mut children = [NodeSummary::default(); TREE_FANOUT];
            for (i, c) in children.iter_mut().enumerate() {
                if let Some(child) = node.child(i) {
                    *c = self.tree.get(child);
                }
            }
            reply.range(RangeDigest { node, children });
        }
    }

    /// The peer's key summaries of `list.node`: send what it lacks, ask for
    /// what this node lacks, exchange states where both hold something.
    fn on_keys(&mut self, list: &KeyList, reply: &mut Reply) {
        let sorted = list.keys.windows(2).all(|w| w[0].key_hash < w[1].key_hash);
        if !sorted || !list.keys.iter().all(|k| list.node.contains(k.key_hash)) {
            self.counters.invalid_messages += 1;
            return;
        }
        if !reply.first_visit(list.node) || reply.exhausted() {
            return;
        }
        let mine = self.groups_in(list.node);
        let mut theirs = list.keys.iter().peekable();
        let mut mine = mine.into_iter().peekable();
        loop {
            let order = match (mine.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(m), Some(t)) => m.0.cmp(&t.key_hash),
            };
            match order {
                Ordering::Less => {
                    let Some((_, _, slots)) = mine.next() else {
                        break;
                    };
                    for slot in slots {
                        self.send_record(slot, reply);
                    }
                }
                Ordering::Greater => {
                    let Some(t) = theirs.next() else { break };
                    reply.fetch_hash(t.key_hash);
                }
                Ordering::Equal => {
                    let (Some((kh, x, slots)), Some(t)) = (mine.next(), theirs.next()) else {
                        break;
                    };
                    if x != t.entry_hash {
                        reply.fetch_hash(kh);
                        reply.want_reply();
                        for slot in slots {
                            reply.fetch_state(self.state_of(slot));
                        }
                    }
                }
            }
        }
    }

    fn on_fetch(&self, request: &FetchRequest, reply: &mut Reply) {
        for node in &request.ranges {
            if !reply.first_visit(*node) {
                continue;
            }
            for (_, slot) in self.slots_in(*node) {
                if reply.exhausted() {
                    return;
                }
                self.send_record(slot, reply);
            }
        }
        let stated: BTreeSet<(&str, &[u8])> = request
            .states
            .iter()
            .map(|s| (s.bucket.as_str(), s.key.as_ref()))
            .collect();
        for kh in &request.hashes {
            let node = NodeRef::leaf_of(*kh);
            for (h, slot) in self.slots_in(node) {
                if h == kh && !stated.contains(&(slot.0.as_str(), slot.1.as_ref())) {
                    self.send_record(slot, reply);
                }
            }
        }
        for state in &request.states {
            let slot: Slot = (state.bucket.clone(), state.key.clone());
            let rec = self.entries.get(&slot);
            match (rec, &state.have) {
                (None, None) => {}
                (None, Some(_)) => {
                    if request.reply {
                        reply.fetch_state(self.state_of(&slot));
                    }
                }
                (Some(_), None) => self.send_record(&slot, reply),
                (Some(r), Some(have)) => {
                    let winner = r.entry.winner();
                    let send_winner = beats(winner, have);
                    for u in r.updates() {
                        let is_winner = std::ptr::eq(u, winner);
                        if !have.vector.descends(u.vector()) || (is_winner && send_winner) {
                            reply.update(u.clone());
                        }
                    }
                    let they_have_more = !r.entry.vector().descends(&have.vector)
                        || match have.winner_timestamp.cmp(&winner.timestamp()) {
                            Ordering::Greater => true,
                            Ordering::Less => false,
                            Ordering::Equal => have.winner_hash != winner_hash(winner),
                        };
                    if request.reply && they_have_more {
                        reply.fetch_state(self.state_of(&slot));
                    }
                }
            }
        }
    }

    fn send(&mut self, to: PeerId, msg: SyncMessage) {
        self.counters.messages_sent += 1;
        self.counters.bytes_sent += msg.encoded_len() as u64;
        if let SyncMessage::Updates(us) = &msg {
            self.counters.updates_sent += us.len() as u64;
        }
        self.outputs.push_back(Output::Send { to, msg });
    }

    fn finish(&mut self, to: PeerId, reply: Reply) {
        if reply.truncated {
            self.counters.replies_truncated += 1;
        }
        for msg in reply.into_messages() {
            self.send(to, msg);
        }
    }
}

fn slot_of(u: &SignedUpdate) -> Slot {
    (u.bucket().to_owned(), u.key().clone())
}

/// Recomputes the maximal updates of a record after accepting `u`:
/// `maximal(old frontier ∪ {u})`, then splits off the (new) winner. Returns
/// true when the set had to be cut at [`MAX_WRITERS`].
fn refresh_frontier(rec: &mut Record, old_winner: &SignedUpdate, u: &SignedUpdate) -> bool {
    let mut frontier = std::mem::take(&mut rec.extras);
    if rec.winner_maximal {
        frontier.push(old_winner.clone());
    }
    if !frontier.iter().any(|x| x == u || below(u, x)) {
        frontier.retain(|x| !below(x, u));
        frontier.push(u.clone());
    }
    let winner = rec.entry.winner();
    let before = frontier.len();
    frontier.retain(|x| x != winner);
    rec.winner_maximal = frontier.len() != before;
    let mut overflow = false;
    if frontier.len() > MAX_WRITERS {
        frontier.sort_by(|a, b| precedence(b, a));
        frontier.truncate(MAX_WRITERS);
        overflow = true;
    }
    rec.extras = frontier;
    overflow
}

/// The answer to one incoming message, split into messages that fit the
/// bound, with the bytes of updates capped at `max_reply_bytes`.
struct Reply {
    max: usize,
    budget: usize,
    truncated: bool,
    done: Vec<SyncMessage>,
    /// Nodes already handled for this message: a peer repeating a node
    /// cannot make the core walk the same entries again.
    visited: BTreeSet<NodeRef>,
    sent: BTreeSet<[u8; 64]>,
    updates: Vec<SignedUpdate>,
    updates_len: usize,
    ranges: Vec<RangeDigest>,
    ranges_len: usize,
    keys: Vec<KeyList>,
    keys_len: usize,
    fetch: FetchRequest,
    fetch_len: usize,
}

/// Version, tag and one u32 count.
const HEADER: usize = 2 + 4;
/// Fetch header: version, tag, reply flag, three u32 counts.
const FETCH_HEADER: usize = 2 + 1 + 12;

impl Reply {
    fn new(config: &SyncConfig) -> Self {
        Self {
            max: config.max_message_bytes,
            budget: config.max_reply_bytes,
            truncated: false,
            done: Vec::new(),
            visited: BTreeSet::new(),
            sent: BTreeSet::new(),
            updates: Vec::new(),
            updates_len: HEADER,
            ranges: Vec::new(),
            ranges_len: HEADER,
            keys: Vec::new(),
            keys_len: HEADER,
            fetch: FetchRequest::default(),
            fetch_len: FETCH_HEADER,
        }
    }

    /// Whether `node` is seen for the first time in this message.
    fn first_visit(&mut self, node: NodeRef) -> bool {
        self.visited.insert(node)
    }

    /// Whether the update budget is spent (nothing more will be sent).
    fn exhausted(&self) -> bool {
        self.truncated && self.budget < 1024
    }

    fn update(&mut self, u: SignedUpdate) {
        // Signatures identify updates (two updates with one signature would
        // be an ed25519 forgery).
        if self.sent.contains(u.signature()) {
            return;
        }
        let len = 4 + u.encoded_len();
        if len > self.budget || HEADER + len > self.max {
            self.truncated = true;
            return;
        }
        self.budget -= len;
        self.sent.insert(*u.signature());
        if self.updates_len + len > self.max {
            let full = std::mem::take(&mut self.updates);
            self.done.push(SyncMessage::Updates(full));
            self.updates_len = HEADER;
        }
        self.updates_len += len;
        self.updates.push(u);
    }

    fn range(&mut self, r: RangeDigest) {
        let len = range_encoded_len(&r);
        if self.ranges_len + len > self.max {
            let full = std::mem::take(&mut self.ranges);
            self.done.push(SyncMessage::Ranges(full));
            self.ranges_len = HEADER;
        }
        self.ranges_len += len;
        self.ranges.push(r);
    }

    fn keys(&mut self, k: KeyList) {
        let len = node_encoded_len(k.node) + 4 + 16 * k.keys.len();
        if self.keys_len + len > self.max && !self.keys.is_empty() {
            let full = std::mem::take(&mut self.keys);
            self.done.push(SyncMessage::Keys(full));
            self.keys_len = HEADER;
        }
        self.keys_len += len;
        self.keys.push(k);
    }

    fn make_room_in_fetch(&mut self, len: usize) {
        if self.fetch_len + len > self.max {
            let reply = self.fetch.reply;
            let full = std::mem::take(&mut self.fetch);
            self.fetch.reply = reply;
            self.done.push(SyncMessage::Fetch(full));
            self.fetch_len = FETCH_HEADER;
        }
        self.fetch_len += len;
    }

    fn fetch_range(&mut self, node: NodeRef) {
        self.make_room_in_fetch(node_encoded_len(node));
        self.fetch.ranges.push(node);
    }

    fn fetch_hash(&mut self, kh: u64) {
        self.make_room_in_fetch(8);
        self.fetch.hashes.push(kh);
    }

    fn fetch_state(&mut self, s: KeyState) {
        self.make_room_in_fetch(state_len(&s));
        self.fetch.states.push(s);
    }

    fn want_reply(&mut self) {
        self.fetch.reply = true;
    }

    fn into_messages(mut self) -> Vec<SyncMessage> {
        let tail = [
            SyncMessage::Updates(self.updates),
            SyncMessage::Fetch(self.fetch),
            SyncMessage::Keys(self.keys),
            SyncMessage::Ranges(self.ranges),
        ];
        self.done.extend(tail);
        self.done.retain(|m| !m.is_empty());
        self.done
    }
}
