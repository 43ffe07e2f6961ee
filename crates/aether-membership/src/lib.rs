//! Sans-IO cluster membership for Aether: SWIM with suspicion (the [`foca`] crate), per-node
//! metadata, and Vivaldi network coordinates.
//!
//! # Shape
//!
//! [`Membership`] is a state machine in the style of `quinn-proto`: it never touches a socket or
//! a clock. Bytes from the network go into [`Membership::handle_data`], the passage of time into
//! [`Membership::handle_timeout`]; what it wants done comes out of
//! [`poll_transmit`](Membership::poll_transmit) (datagrams to send),
//! [`poll_timeout`](Membership::poll_timeout) (when to call `handle_timeout` next) and
//! [`poll_event`](Membership::poll_event) (members up, suspect, dead, left, metadata changes).
//! Time is a plain [`Duration`] since any fixed epoch, so the daemon drives it with
//! `Instant::duration_since(start)` and the `aether-sim` simulator with virtual time. foca's
//! timers (relative delays) are kept in an internal queue keyed by deadline, so drivers only
//! deal with one wake-up time.
//!
//! # Identity
//!
//! An [`Identity`] is the node id (its ed25519 public key bytes, opaque here), its mesh address
//! and a **bump** counter. foca keys members by mesh address; when two identities share an
//! address the higher bump wins. A node declared dead that is in fact alive (after a partition,
//! or after a restart the caller makes with `bump + 1`) comes back under a higher bump: that is
//! the "incarnation" reported by [`MemberInfo::incarnation`]. SWIM's own refutation counter is
//! [`MemberInfo::swim_incarnation`].
//!
//! # Datagrams
//!
//! The first byte says what follows: `0` a foca packet (header, piggybacked membership updates,
//! then custom broadcasts), `1`/`2` a Vivaldi ping/ack, `3`/`4` a metadata request/response,
//! `5` a leave notice.
//! Every decoder bounds lengths before reading or allocating and returns a [`DecodeError`]
//! instead of panicking; datagrams over [`MAX_DATAGRAM`] are refused unread.
//!
//! # Metadata
//!
//! A node's [`Metadata`] (region, labels, capacity, load, HTTP address, version; at most
//! [`MAX_METADATA_BYTES`] encoded, checked by [`Metadata::validate`]) is a versioned record
//! (`bump << 32 | sequence`, so a restarted node's records win). A member that learns of a
//! node whose record it lacks (a join, a rejoin under a higher bump), or sees a newer version
//! advertised on a Vivaldi ping or ack, **pulls** it with a direct metadata request; a
//! **change** made with [`update_metadata`](Membership::update_metadata) is also pushed as a
//! foca custom broadcast (piggybacked on SWIM traffic, retransmitted `max_transmissions` times,
//! a newer version replacing an older one still in the backlog). Joins are not broadcast: with
//! N nodes joining, every node's backlog would hold N records, and foca scans its whole
//! backlog on every packet. A graceful [`leave`](Membership::leave) broadcasts a leave record
//! with foca's own leave and sends it directly to every live member, so members show `Left`
//! rather than `Dead`. A member that goes from alive straight to down here (no suspicion seen)
//! shows as suspect for [`Config::leave_grace`] first, in case the leave notice is just behind.
//!
//! # Vivaldi
//!
//! foca does not expose probe round-trips, so every [`Config::vivaldi_interval`] (1 s) a node
//! sends its own small ping to a random live member on the same channel; the ack carries the
//! peer's coordinate and the round-trip is measured on the node's own clock (skew cancels).
//! The rules and constants are Serf's, see [`vivaldi`]. Coordinates are not broadcast (they
//! change with every sample; broadcasting them would cost every node O(N) bandwidth): each
//! ping and ack carries the sender's coordinate plus up to [`GOSSIPED_COORDINATES`] coordinates
//! of other live members with their age, so every node keeps a recent coordinate for every
//! member (a fresher copy replaces an older one) at a bandwidth per node independent of N. [`Membership::estimate_rtt`] estimates the RTT between
//! any two known members from those coordinates.
//!
//! # Failure detection
//!
//! foca implements SWIM with suspicion: probe every `probe_period`, indirect probes through
//! `num_indirect_probes` members after `probe_rtt`, a suspect is declared down after
//! `suspect_to_down_after` unless it refutes by raising its incarnation. [`Config::lan`] uses
//! memberlist's LAN figures (1 s probe, 500 ms timeout, 3 indirect probes, gossip every 200 ms
//! to 3 members, suspicion `4 × max(1, log10 N) × 1 s`, retransmit `4 × ceil(log10(N + 1))`),
//! which in the simulator gives no false dead declaration at 1 % loss. The last two depend on
//! the cluster size: [`Membership::set_cluster_size`] re-derives them (through foca's
//! `set_config`) when the member count has changed a lot. Suspicion and refutation are read
//! from foca's member states every [`Config::tick_interval`] (foca only notifies up/down).
//!
//! **Local health (Lifeguard).** foca has no Lifeguard, so this crate adds its local health
//! awareness (Dadgar et al. 2018; memberlist's `awareness.go`): a node keeps a Local Health
//! Multiplier, LHM, in `0..=`[`Config::local_health_max`] (8), reported as
//! [`Stats::local_health`], and its probe period and probe timeout are `(LHM + 1) ×` the
//! configured ones. A node that hears its peers late (overloaded, paused, a slow receive
//! path) thus stops accusing healthy members of failing probes it could not time properly.
//! The evidence is read from the headers of the SWIM packets going in and out:
//! - **+1** each time the node raises its own SWIM incarnation, that is refutes a suspicion
//!   about itself ([`Stats::self_refutations`]), and each time it rejoins after being declared
//!   down;
//! - **+1** for a probe whose direct ping went unanswered within the (scaled) probe timeout
//!   but that succeeded anyway, by a late ack or through the indirect probes;
//! - **−1** for a probe answered directly within the (scaled) probe timeout;
//! - a probe that fails outright changes nothing: foca has no nacks (memberlist's way to tell
//!   "the target is dead" from "I am slow"), and a dead member or a partition must not slow
//!   down every node's failure detection.
//!
//! foca refuses to change `probe_period` and `probe_rtt` at runtime, so the scaling is applied
//! to the two probe timers (`ProbeRandomMember`, `SendIndirectProbe`) when foca schedules them;
//! a change takes effect from the next probe. In the simulator, a node hearing everything
//! 1–2 s late in a 16-node cluster at 1 % loss causes about 1 100 suspicions of healthy
//! members (counted at every member) and 15 false dead declarations in 5 minutes without
//! local health, none with it. [`Config::local_health`] turns it off.
//!
//! # Anti-entropy
//!
//! foca's updates are retransmitted a bounded number of times, so after a join storm or a
//! healed partition a few pairs of members may never hear of each other (or of each other's
//! new bump) until a probe happens to connect them. Two cheap repairs: the identities carried
//! on Vivaldi pings and acks (the sender's and [`GOSSIPED_COORDINATES`] others) are handed to
//! foca as alive when they are unknown or newer than what we hold; and a foca packet addressed
//! to an older identity of ours (its sender missed our rejoin) is answered with a ping from our
//! current one.
//!
//! # Driving it
//!
//! ```
//! use std::time::Duration;
//! use aether_membership::{Config, Identity, Membership, Metadata, NodeId};
//!
//! let me = Identity::new(NodeId([7; 32]), "127.0.0.1:7946".parse().unwrap());
//! let md = Metadata { region: "eu".into(), ..Metadata::default() };
//! let mut m = Membership::new(me, md, Config::lan(16), 42, Duration::ZERO).unwrap();
//! m.join("127.0.0.2:7946".parse().unwrap(), Duration::ZERO).unwrap();
//! while let Some(t) = m.poll_transmit() {
//!     // socket.send_to(&t.data, t.to)
//!     assert_eq!(t.to.port(), 7946);
//! }
//! // On a datagram: m.handle_data(&bytes, now); at m.poll_timeout(): m.handle_timeout(now);
//! // then drain poll_transmit() and poll_event() again.
//! assert!(m.poll_timeout().is_some());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod awareness;
pub mod metadata;
pub mod vivaldi;
pub mod wire;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BufMut;
use foca::{BroadcastHandler, Foca, Invalidates, OwnedNotification, Runtime, Timer};
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};

pub use foca::Config as SwimConfig;
pub use metadata::{Capacity, Load, MAX_METADATA_BYTES, MetaRecord, Metadata, MetadataError};
pub use vivaldi::Coordinate;
pub use wire::DecodeError;

use metadata::Item;

/// Other live members (identity and coordinate) carried on each Vivaldi ping and ack: spreads
/// coordinates, and doubles as anti-entropy for the member list (an unknown member, or a
/// member known under an older bump, is handed to foca as alive).
pub const GOSSIPED_COORDINATES: usize = 3;

/// Largest datagram accepted or produced (foca's packet size plus our tag byte).
pub const MAX_DATAGRAM: usize = 1401;

const TAG_SWIM: u8 = 0;
const TAG_PING: u8 = 1;
const TAG_ACK: u8 = 2;
const TAG_META_REQ: u8 = 3;
const TAG_META_RESP: u8 = 4;
const TAG_LEAVE: u8 = 5;

/// The sender a datagram names (`None` when it names none or does not
/// decode; [`Membership::handle_data`] then judges it).
fn claimed_sender(data: &[u8]) -> Result<Option<NodeId>, DecodeError> {
    let Some((&tag, mut rest)) = data.split_first() else {
        return Ok(None);
    };
    Ok(match tag {
        TAG_SWIM => foca::Codec::decode_header(&mut wire::WireCodec, &mut rest)
            .ok()
            .map(|h| h.src.id),
        TAG_PING | TAG_ACK | TAG_META_REQ | TAG_LEAVE => Some(wire::get_identity(&mut rest)?.id),
        TAG_META_RESP => match metadata::Item::decode(rest) {
            Ok(metadata::Item::Meta(record)) => Some(record.identity.id),
            _ => None,
        },
        _ => None,
    })
}

/// A node's id: its ed25519 public key bytes (opaque to this crate).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Who a node is on the mesh: id, mesh address, and bump counter (raised on every rejoin).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Identity {
    /// The node's key.
    pub id: NodeId,
    /// Where its gossip is received.
    pub addr: SocketAddr,
    /// Raised each time the node comes back after being declared down or restarting.
    pub bump: u32,
}

impl Identity {
    /// A fresh identity with bump 0.
    pub fn new(id: NodeId, addr: SocketAddr) -> Self {
        Self { id, addr, bump: 0 }
    }
}

impl foca::Identity for Identity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.wrapping_add(1),
            ..*self
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.bump, self.id) > (adversary.bump, adversary.id)
    }
}

/// Knobs of the membership core.
#[derive(Clone, Debug)]
pub struct Config {
    /// SWIM parameters (foca's config). See [`Config::lan`].
    pub swim: SwimConfig,
    /// How often a Vivaldi ping goes to a random live member. Default 1 s.
    pub vivaldi_interval: Duration,
    /// A Vivaldi ping unanswered for this long is forgotten. Default 5 s.
    pub vivaldi_timeout: Duration,
    /// A member that goes from alive straight to down (no suspicion seen here) shows as suspect
    /// for this long before it is declared dead, so a leave notice that arrives just after
    /// foca's "down" makes it `Left`, not `Dead` then `Left`. Default 1 s.
    pub leave_grace: Duration,
    /// How often foca's member states are scanned for suspicions and refutations. Default
    /// 500 ms.
    pub tick_interval: Duration,
    /// Lifeguard local health awareness: scale this node's probe period and probe timeout by
    /// its Local Health Multiplier + 1 (see the crate docs). Default true.
    pub local_health: bool,
    /// Highest Local Health Multiplier. Default 8 (memberlist's `AwarenessMaxMultiplier`), so
    /// a struggling node probes at most every 9 × `probe_period` with a 9 × `probe_rtt`
    /// timeout.
    pub local_health_max: u32,
}

impl Config {
    /// memberlist's LAN defaults for a cluster of about `cluster_size` nodes (via foca's
    /// `Config::new_lan`: 1 s probe period, 500 ms probe timeout, 3 indirect probes, gossip to
    /// 3 members every 200 ms, suspicion `4 × max(1, log10 N)` probe periods), with
    /// memberlist's retransmit count `4 × ceil(log10(N + 1))`, announces to down members every
    /// 10 s (instead of 65 s) so healed partitions merge quickly, and local health awareness on
    /// with a maximum multiplier of 8. The size-dependent figures can be changed later with
    /// [`Membership::set_cluster_size`].
    pub fn lan(cluster_size: u32) -> Self {
        let mut swim =
            SwimConfig::new_lan(NonZeroU32::new(cluster_size.max(1)).unwrap_or(NonZeroU32::MIN));
        size_swim(&mut swim, cluster_size);
        swim.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        Self {
            swim,
            vivaldi_interval: Duration::from_secs(1),
            vivaldi_timeout: Duration::from_secs(5),
            leave_grace: Duration::from_secs(1),
            tick_interval: Duration::from_millis(500),
            local_health: true,
            local_health_max: 8,
        }
    }
}

/// Set the size-dependent SWIM parameters for a cluster of about `cluster_size` nodes: the
/// suspicion timeout, `4 × max(1, log10 N)` probe periods, and memberlist's retransmit count
/// `4 × ceil(log10(N + 1))` (foca's own rounds down, 8 instead of 12 at N = 100, which lets a
/// join update die out before it reaches everyone).
fn size_swim(swim: &mut SwimConfig, cluster_size: u32) {
    let n = f64::from(cluster_size.max(1));
    // foca's formula (`Config::new_lan`), so `lan` keeps its exact figures.
    let secs = n.log10().max(1.0) * 4.0 * swim.probe_period.as_secs_f64();
    swim.suspect_to_down_after = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
    let tx = 4 * (n + 1.0).log10().ceil() as u32;
    swim.max_transmissions =
        std::num::NonZeroU8::new(tx.clamp(1, 255) as u8).unwrap_or(std::num::NonZeroU8::MIN);
}

/// A member's state as seen by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Some member failed to probe it; it has a while to refute.
    Suspect,
    /// Declared down by the cluster.
    Dead,
    /// Left gracefully.
    Left,
}

/// What changed. Drained with [`Membership::poll_event`].
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A member is alive (new, or back under a higher bump).
    MemberUp(Identity),
    /// A member is suspected.
    MemberSuspect(Identity),
    /// A suspected member refuted the suspicion.
    MemberAlive(Identity),
    /// A member was declared dead.
    MemberDead(Identity),
    /// A member left gracefully.
    MemberLeft(Identity),
    /// A member's metadata changed.
    MetadataChanged(NodeId),
    /// This node is known by at least one member.
    Joined,
    /// Every other member is gone.
    Idle,
    /// This node was declared down and came back under `Identity` (higher bump); the caller
    /// should persist the bump.
    Rejoined(Identity),
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination mesh address.
    pub to: SocketAddr,
    /// Destination node, when known (not for a join through a bare address).
    pub node: Option<NodeId>,
    /// Payload.
    pub data: Vec<u8>,
}

/// One row of [`Membership::members`].
#[derive(Clone, Debug, PartialEq)]
pub struct MemberInfo {
    /// Node id.
    pub id: NodeId,
    /// Mesh address.
    pub addr: SocketAddr,
    /// State.
    pub state: MemberState,
    /// Bump counter (raised on rejoin).
    pub incarnation: u32,
    /// SWIM refutation counter (raised to refute a suspicion).
    pub swim_incarnation: u16,
    /// Latest metadata, once received.
    pub metadata: Option<Metadata>,
    /// Latest known coordinate.
    pub coordinate: Option<Coordinate>,
    /// Estimated RTT from this node.
    pub rtt: Option<Duration>,
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handled.
    pub datagrams_in: u64,
    /// Bytes handled.
    pub bytes_in: u64,
    /// Datagrams produced.
    pub datagrams_out: u64,
    /// Bytes produced.
    pub bytes_out: u64,
    /// Datagrams refused (decode or protocol errors).
    pub errors: u64,
    /// Transitions to suspect observed.
    pub suspicions: u64,
    /// Suspect members seen alive again (refutations).
    pub refutations: u64,
    /// Vivaldi pings sent.
    pub vivaldi_pings: u64,
    /// Vivaldi samples applied.
    pub vivaldi_samples: u64,
    /// Times this node raised its own SWIM incarnation to refute a suspicion about itself.
    pub self_refutations: u64,
    /// The current Lifeguard Local Health Multiplier (0 = healthy, up to
    /// [`Config::local_health_max`]); probe period and timeout are scaled by it + 1.
    pub local_health: u32,
}

/// Errors of the membership core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bytes from the network did not decode.
    #[error("malformed datagram: {0}")]
    Decode(#[from] DecodeError),
    /// The datagram is larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is over the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    /// foca refused the input.
    #[error("SWIM: {0}")]
    Swim(#[from] foca::Error),
    /// Metadata over its bounds.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// This node has left; create a new `Membership` to join again.
    #[error("this node has left the cluster")]
    Left,
    /// The datagram claims another sender than the one the transport proved.
    #[error("datagram from {actual} claims to come from {claimed}")]
    Impersonation {
        /// The sender named inside the datagram.
        claimed: NodeId,
        /// The sender the transport authenticated.
        actual: NodeId,
    },
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    state: MemberState,
    coordinate: Option<Coordinate>,
    /// Local time at which `coordinate` was the member's own (now − its age); fresher wins.
    coord_stamp: Duration,
}

#[derive(Debug)]
enum Change {
    Meta(NodeId),
    Left(Identity),
}

#[derive(Debug)]
struct Shared {
    me: NodeId,
    records: BTreeMap<NodeId, MetaRecord>,
    left: BTreeMap<NodeId, u32>,
    changes: Vec<Change>,
}

impl Shared {
    /// Store an item if it is news; returns its broadcast key.
    fn apply(&mut self, item: Item, local: bool) -> Option<Key> {
        match item {
            Item::Meta(r) => {
                let id = r.identity.id;
                if id == self.me && !local {
                    return None;
                }
                if self
                    .records
                    .get(&id)
                    .is_some_and(|old| old.version >= r.version)
                {
                    return None;
                }
                let key = Key {
                    node: id,
                    kind: 0,
                    version: r.version,
                };
                self.records.insert(id, *r);
                self.changes.push(Change::Meta(id));
                Some(key)
            }
            Item::Leave(identity) => {
                if identity.id == self.me && !local {
                    return None;
                }
                if self
                    .left
                    .get(&identity.id)
                    .is_some_and(|b| *b >= identity.bump)
                {
                    return None;
                }
                self.left.insert(identity.id, identity.bump);
                self.changes.push(Change::Left(identity));
                Some(Key {
                    node: identity.id,
                    kind: 1,
                    version: u64::from(identity.bump),
                })
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Key of a custom broadcast: a newer record of the same node and kind replaces older ones.
#[derive(Debug)]
struct Key {
    node: NodeId,
    kind: u8,
    version: u64,
}

impl Invalidates for Key {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.kind == other.kind && self.version >= other.version
    }
}

struct Handler(Arc<Mutex<Shared>>);

impl BroadcastHandler<Identity> for Handler {
    type Key = Key;
    type Error = DecodeError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&Identity>,
    ) -> Result<Option<Key>, DecodeError> {
        let item = Item::decode(data)?;
        Ok(lock(&self.0).apply(item, sender.is_none()))
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct TimerKey(Duration, u64);

struct Rt<'a> {
    now: Duration,
    timer_seq: &'a mut u64,
    timer_order: &'a mut BinaryHeap<Reverse<TimerKey>>,
    timers: &'a mut BTreeMap<u64, Timer<Identity>>,
    transmits: &'a mut VecDeque<Transmit>,
    notes: &'a mut Vec<OwnedNotification<Identity>>,
    stats: &'a mut Stats,
    awareness: &'a mut awareness::Awareness,
}

impl Runtime<Identity> for Rt<'_> {
    fn notify(&mut self, notification: foca::Notification<'_, Identity>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: Identity, data: &[u8]) {
        if let Ok(header) = foca::Codec::decode_header(&mut wire::WireCodec, data)
            && self.awareness.on_sent(&header)
        {
            self.stats.self_refutations += 1;
        }
        let mut buf = Vec::with_capacity(data.len() + 1);
        buf.push(TAG_SWIM);
        buf.extend_from_slice(data);
        push_transmit(self.transmits, self.stats, to.addr, known(to.id), buf);
    }

    fn submit_after(&mut self, event: Timer<Identity>, after: Duration) {
        // Lifeguard: the probe period and probe timeout stretch with the local health
        // multiplier (foca's own values cannot change at runtime).
        let after = match event {
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                self.awareness.scale(after)
            }
            _ => after,
        };
        *self.timer_seq += 1;
        self.timer_order.push(Reverse(TimerKey(
            self.now.saturating_add(after),
            *self.timer_seq,
        )));
        self.timers.insert(*self.timer_seq, event);
    }
}

fn known(id: NodeId) -> Option<NodeId> {
    (id.0 != [0; 32]).then_some(id)
}

fn push_transmit(
    q: &mut VecDeque<Transmit>,
    stats: &mut Stats,
    to: SocketAddr,
    node: Option<NodeId>,
    data: Vec<u8>,
) {
    stats.datagrams_out += 1;
    stats.bytes_out += data.len() as u64;
    q.push_back(Transmit { to, node, data });
}

struct PendingPing {
    seq: u32,
    to: NodeId,
    sent: Duration,
}

/// The membership state machine. See the crate docs.
pub struct Membership {
    foca: Foca<Identity, wire::WireCodec, StdRng, Handler>,
    config: Config,
    identity: Identity,
    shared: Arc<Mutex<Shared>>,
    members: BTreeMap<NodeId, Entry>,
    alive: Vec<NodeId>,
    alive_dirty: bool,
    timer_seq: u64,
    timer_order: BinaryHeap<Reverse<TimerKey>>,
    timers: BTreeMap<u64, Timer<Identity>>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    notes: Vec<OwnedNotification<Identity>>,
    rng: StdRng,
    vivaldi: vivaldi::Vivaldi<NodeId>,
    pending: VecDeque<PendingPing>,
    ping_seq: u32,
    next_tick: Duration,
    next_ping: Duration,
    metadata: Metadata,
    meta_seq: u32,
    left: bool,
    stats: Stats,
    now: Duration,
    pending_down: Vec<(Identity, Duration)>,
    suspected: BTreeMap<NodeId, Duration>,
    awareness: awareness::Awareness,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("identity", &self.identity)
            .field("members", &self.members.len())
            .finish_non_exhaustive()
    }
}

macro_rules! rt {
    ($self:ident, $now:expr) => {
        Rt {
            now: $now,
            timer_seq: &mut $self.timer_seq,
            timer_order: &mut $self.timer_order,
            timers: &mut $self.timers,
            transmits: &mut $self.transmits,
            notes: &mut $self.notes,
            stats: &mut $self.stats,
            awareness: &mut $self.awareness,
        }
    };
}

impl Membership {
    /// A node that knows nobody yet; call [`join`](Self::join) with any member's address.
    /// `now` is the current time on the caller's clock.
    pub fn new(
        identity: Identity,
        metadata: Metadata,
        config: Config,
        rng_seed: u64,
        now: Duration,
    ) -> Result<Self, Error> {
        metadata.validate()?;
        let shared = Arc::new(Mutex::new(Shared {
            me: identity.id,
            records: BTreeMap::new(),
            left: BTreeMap::new(),
            changes: Vec::new(),
        }));
        let mut rng = StdRng::seed_from_u64(rng_seed);
        let foca_rng = StdRng::seed_from_u64(rng.random());
        let foca = Foca::with_custom_broadcast(
            identity,
            config.swim.clone(),
            foca_rng,
            wire::WireCodec,
            Handler(shared.clone()),
        );
        let jitter = config.vivaldi_interval.mul_f64(rng.random::<f64>());
        let mut m = Self {
            foca,
            identity,
            shared,
            members: BTreeMap::new(),
            alive: Vec::new(),
            alive_dirty: false,
            timer_seq: 0,
            timer_order: BinaryHeap::new(),
            timers: BTreeMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            notes: Vec::new(),
            rng,
            vivaldi: vivaldi::Vivaldi::default(),
            pending: VecDeque::new(),
            ping_seq: 0,
            next_tick: now + config.tick_interval,
            next_ping: now + jitter,
            metadata,
            meta_seq: 0,
            left: false,
            stats: Stats::default(),
            now,
            pending_down: Vec::new(),
            suspected: BTreeMap::new(),
            awareness: awareness::Awareness::new(config.local_health, config.local_health_max),
            config,
        };
        m.publish(false)?;
        Ok(m)
    }

    /// This node's current identity (its bump rises when it rejoins).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This node's current Vivaldi coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        self.vivaldi.coordinate()
    }

    /// This node's metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration in force (with the size-dependent SWIM parameters of the last
    /// [`set_cluster_size`](Self::set_cluster_size)). `swim.probe_period` and `swim.probe_rtt`
    /// are the unscaled values; see [`Stats::local_health`] for the multiplier.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Re-derive the size-dependent SWIM parameters for a cluster of about `n` nodes, as
    /// [`Config::lan`] does: suspicion timeout `4 × max(1, log10 N)` probe periods and
    /// retransmissions `4 × ceil(log10(N + 1))`. Everything else (probe period and timeout,
    /// their local-health scaling, gossip, announces) is kept. Suspicions already running keep
    /// the timeout they started with. Meant to be called when the member count has changed a
    /// lot (say, doubled or halved since the last call).
    pub fn set_cluster_size(&mut self, n: u32) {
        let mut swim = self.config.swim.clone();
        size_swim(&mut swim, n);
        // Only probe_period, probe_rtt and enabling periodic tasks are refused by foca, and
        // none of them changes here.
        if self.foca.set_config(swim.clone()).is_ok() {
            self.config.swim = swim;
        } else {
            self.stats.errors += 1;
        }
    }

    /// Ask the member at `addr` to let us in.
    pub fn join(&mut self, addr: SocketAddr, now: Duration) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        self.now = self.now.max(now);
        let dst = Identity {
            id: NodeId([0; 32]),
            addr,
            bump: 0,
        };
        self.foca.announce(dst, rt!(self, now))?;
        self.process();
        Ok(())
    }

    /// Leave gracefully: tell a few members, after which they show this node as `Left`. The
    /// core stops reacting afterwards; keep sending what [`poll_transmit`](Self::poll_transmit)
    /// returns, then drop it.
    pub fn leave(&mut self, now: Duration) -> Result<(), Error> {
        if self.left {
            return Ok(());
        }
        self.foca
            .add_broadcast(&Item::Leave(self.identity).encode())?;
        self.foca.leave_cluster(rt!(self, now))?;
        // Also tell every live member directly, so none sees foca's "down" before the leave
        // record (which would show as dead, then left).
        let mut data = vec![TAG_LEAVE];
        wire::put_identity(&mut data, &self.identity);
        let targets: Vec<Identity> = self
            .members
            .values()
            .filter(|e| matches!(e.state, MemberState::Alive | MemberState::Suspect))
            .map(|e| e.identity)
            .collect();
        for t in targets {
            push_transmit(
                &mut self.transmits,
                &mut self.stats,
                t.addr,
                Some(t.id),
                data.clone(),
            );
        }
        self.left = true;
        self.timers.clear();
        self.timer_order.clear();
        self.notes.clear();
        Ok(())
    }

    /// Replace this node's metadata and disseminate it.
    pub fn update_metadata(&mut self, metadata: Metadata, now: Duration) -> Result<(), Error> {
        metadata.validate()?;
        self.metadata = metadata;
        let _ = now;
        self.publish(true)
    }

    /// Store a new version of our record; `broadcast` pushes it too (otherwise members pull it).
    fn publish(&mut self, broadcast: bool) -> Result<(), Error> {
        self.meta_seq += 1;
        let record = MetaRecord {
            identity: self.identity,
            version: self.my_version(),
            coordinate: *self.vivaldi.coordinate(),
            metadata: self.metadata.clone(),
        };
        let item = Item::Meta(Box::new(record));
        if broadcast {
            self.foca.add_broadcast(&item.encode())?;
        } else {
            lock(&self.shared).apply(item, true);
        }
        lock(&self.shared).changes.clear();
        Ok(())
    }

    fn my_version(&self) -> u64 {
        (u64::from(self.identity.bump) << 32) | u64::from(self.meta_seq)
    }

    /// [`handle_data`](Self::handle_data) for a datagram whose sender the
    /// transport authenticated as `sender`: a datagram naming another sender
    /// (for SWIM packets, the header's source; for pings, acks, metadata and
    /// leave notices, the identity they carry) is refused and counted, so an
    /// admitted node cannot speak in another's name. Relayed gossip about
    /// other members inside a packet is still accepted, as SWIM requires.
    pub fn handle_data_from(
        &mut self,
        sender: NodeId,
        data: &[u8],
        now: Duration,
    ) -> Result<(), Error> {
        match claimed_sender(data) {
            Ok(Some(claimed)) if claimed != sender => {
                self.stats.datagrams_in += 1;
                self.stats.bytes_in += data.len() as u64;
                self.stats.errors += 1;
                Err(Error::Impersonation {
                    claimed,
                    actual: sender,
                })
            }
            _ => self.handle_data(data, now),
        }
    }

    /// Handle one datagram received from the network.
    pub fn handle_data(&mut self, data: &[u8], now: Duration) -> Result<(), Error> {
        if self.left {
            return Err(Error::Left);
        }
        self.now = self.now.max(now);
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += data.len() as u64;
        let r = self.handle_data_inner(data, now);
        if r.is_err() {
            self.stats.errors += 1;
        }
        self.process();
        r
    }

    fn handle_data_inner(&mut self, data: &[u8], now: Duration) -> Result<(), Error> {
        if data.len() > MAX_DATAGRAM {
            return Err(Error::TooLarge(data.len()));
        }
        let Some((&tag, mut rest)) = data.split_first() else {
            return Err(DecodeError::Truncated { needed: 1 }.into());
        };
        match tag {
            TAG_SWIM => {
                // A packet for an older identity of ours is dropped by foca: its sender missed
                // our rejoin. A ping from our current identity tells it (see `apply_gossiped`).
                let mut peek = rest;
                if let Ok(header) = foca::Codec::decode_header(&mut wire::WireCodec, &mut peek)
                    && header.dst.id == self.identity.id
                {
                    if header.dst.bump < self.identity.bump && !self.is_gone(&header.src) {
                        self.send_ping_to(header.src.id, header.src.addr, now);
                    } else {
                        self.awareness.on_received(&header);
                    }
                }
                self.foca.handle_data(rest, rt!(self, now))?;
            }
            TAG_PING | TAG_ACK => {
                let buf = &mut rest;
                let from = wire::get_identity(buf)?;
                let seq = wire::get_u32(buf)?;
                let version = wire::get_u64(buf)?;
                let coord = wire::get_coord(buf)?;
                let n = usize::from(wire::get_u8(buf)?);
                if n > GOSSIPED_COORDINATES {
                    return Err(DecodeError::TooLong {
                        what: "gossiped coordinates",
                        len: n,
                        max: GOSSIPED_COORDINATES,
                    }
                    .into());
                }
                let mut others = [None; GOSSIPED_COORDINATES];
                for slot in others.iter_mut().take(n) {
                    let identity = wire::get_identity(buf)?;
                    let coord = wire::get_coord(buf)?;
                    let age = Duration::from_millis(u64::from(wire::get_u32(buf)?));
                    *slot = Some((identity, coord, age));
                }
                if !buf.is_empty() {
                    return Err(DecodeError::Trailing(buf.len()).into());
                }
                // The sender itself may be news to us (anti-entropy, as below).
                if from.id != self.identity.id {
                    self.apply_gossiped(
                        std::iter::once((from, coord, Duration::ZERO)),
                        self.identity.id,
                        now,
                    );
                }
                self.on_ping_or_ack(tag, from, seq, version, coord, now);
                if self
                    .members
                    .get(&from.id)
                    .is_some_and(|e| e.identity == from)
                {
                    self.apply_gossiped(others.into_iter().flatten(), from.id, now);
                }
            }
            TAG_META_REQ => {
                let buf = &mut rest;
                let from = wire::get_identity(buf)?;
                if !buf.is_empty() {
                    return Err(DecodeError::Trailing(buf.len()).into());
                }
                if !self.is_gone(&from) {
                    let record = lock(&self.shared).records.get(&self.identity.id).cloned();
                    if let Some(r) = record {
                        let mut data = vec![TAG_META_RESP];
                        data.extend_from_slice(&Item::Meta(Box::new(r)).encode());
                        push_transmit(
                            &mut self.transmits,
                            &mut self.stats,
                            from.addr,
                            Some(from.id),
                            data,
                        );
                    }
                }
            }
            TAG_LEAVE => {
                let buf = &mut rest;
                let who = wire::get_identity(buf)?;
                if !buf.is_empty() {
                    return Err(DecodeError::Trailing(buf.len()).into());
                }
                lock(&self.shared).apply(Item::Leave(who), false);
            }
            TAG_META_RESP => match Item::decode(rest)? {
                item @ Item::Meta(_) => {
                    lock(&self.shared).apply(item, false);
                }
                Item::Leave(_) => return Err(DecodeError::Invalid("metadata response").into()),
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "datagram",
                    tag,
                }
                .into());
            }
        }
        Ok(())
    }

    fn apply_gossiped(
        &mut self,
        others: impl Iterator<Item = (Identity, Coordinate, Duration)>,
        from: NodeId,
        now: Duration,
    ) {
        for (identity, c, age) in others {
            if identity.id == self.identity.id || identity.id == from {
                continue;
            }
            let stamp = now.saturating_sub(age);
            match self.members.get_mut(&identity.id) {
                Some(e) if e.identity == identity => {
                    if matches!(e.state, MemberState::Alive | MemberState::Suspect)
                        && (e.coordinate.is_none() || stamp > e.coord_stamp)
                    {
                        e.coordinate = Some(c);
                        e.coord_stamp = stamp;
                    }
                }
                Some(e) if e.identity.bump >= identity.bump => {}
                // Never heard of, or known under an older bump (it restarted, or rejoined after
                // a partition, and we missed the news): anti-entropy, tell foca.
                _ => {
                    if lock(&self.shared)
                        .left
                        .get(&identity.id)
                        .is_some_and(|b| *b >= identity.bump)
                    {
                        continue;
                    }
                    let update = foca::Member::alive(identity);
                    if self
                        .foca
                        .apply_many(std::iter::once(update), false, rt!(self, now))
                        .is_err()
                    {
                        self.stats.errors += 1;
                    }
                    self.process();
                    if let Some(e) = self.members.get_mut(&identity.id)
                        && e.identity == identity
                    {
                        e.coordinate = Some(c);
                        e.coord_stamp = stamp;
                    }
                }
            }
        }
    }

    /// Known as dead or left under this (or a later) bump.
    fn is_gone(&self, who: &Identity) -> bool {
        self.members.get(&who.id).is_some_and(|e| {
            e.identity.bump >= who.bump && matches!(e.state, MemberState::Dead | MemberState::Left)
        })
    }

    fn on_ping_or_ack(
        &mut self,
        tag: u8,
        from: Identity,
        seq: u32,
        version: u64,
        coord: Coordinate,
        now: Duration,
    ) {
        if self.is_gone(&from) || from.id == self.identity.id {
            return;
        }
        if tag == TAG_PING {
            let data = self.ping_datagram(TAG_ACK, seq, from.id);
            push_transmit(
                &mut self.transmits,
                &mut self.stats,
                from.addr,
                Some(from.id),
                data,
            );
        } else if let Some(i) = self
            .pending
            .iter()
            .position(|p| p.seq == seq && p.to == from.id)
        {
            let p = self.pending.remove(i).unwrap_or_else(|| unreachable!());
            let rtt = now.saturating_sub(p.sent);
            if self.vivaldi.update(&from.id, &coord, rtt, &mut self.rng) {
                self.stats.vivaldi_samples += 1;
            }
        }
        match self.members.get_mut(&from.id) {
            Some(e) if e.identity == from => {
                e.coordinate = Some(coord);
                e.coord_stamp = now;
            }
            // Only members foca told us about are tracked here.
            _ => return,
        }
        let have = lock(&self.shared)
            .records
            .get(&from.id)
            .map_or(0, |r| r.version);
        if version > have {
            self.request_meta(from);
        }
    }

    fn ping_datagram(&mut self, tag: u8, seq: u32, to: NodeId) -> Vec<u8> {
        let mut data = Vec::with_capacity(
            1 + 55 + 12 + wire::COORD_LEN + 1 + GOSSIPED_COORDINATES * (59 + wire::COORD_LEN),
        );
        data.put_u8(tag);
        wire::put_identity(&mut data, &self.identity);
        data.put_u32(seq);
        data.put_u64(self.my_version());
        wire::put_coord(&mut data, self.vivaldi.coordinate());
        self.refresh_alive();
        let mut picked: Vec<NodeId> = Vec::with_capacity(GOSSIPED_COORDINATES);
        for _ in 0..2 * GOSSIPED_COORDINATES {
            if picked.len() == GOSSIPED_COORDINATES || self.alive.is_empty() {
                break;
            }
            let id = self.alive[self.rng.random_range(0..self.alive.len())];
            if id != to
                && !picked.contains(&id)
                && self
                    .members
                    .get(&id)
                    .is_some_and(|e| e.coordinate.is_some())
            {
                picked.push(id);
            }
        }
        data.put_u8(picked.len() as u8);
        for id in picked {
            if let Some(e) = self.members.get(&id)
                && let Some(c) = &e.coordinate
            {
                wire::put_identity(&mut data, &e.identity);
                wire::put_coord(&mut data, c);
                let age = self.now.saturating_sub(e.coord_stamp).as_millis();
                data.put_u32(u32::try_from(age).unwrap_or(u32::MAX));
            }
        }
        data
    }

    fn refresh_alive(&mut self) {
        if self.alive_dirty {
            self.alive = self
                .members
                .iter()
                .filter(|(_, e)| e.state == MemberState::Alive)
                .map(|(id, _)| *id)
                .collect();
            self.alive_dirty = false;
        }
    }

    fn request_meta(&mut self, to: Identity) {
        let mut data = vec![TAG_META_REQ];
        wire::put_identity(&mut data, &self.identity);
        push_transmit(
            &mut self.transmits,
            &mut self.stats,
            to.addr,
            Some(to.id),
            data,
        );
    }

    /// The next time [`handle_timeout`](Self::handle_timeout) should be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.left {
            return None;
        }
        let foca = self.timer_order.peek().map(|Reverse(TimerKey(t, _))| *t);
        Some(foca.map_or(self.next_tick, |t| t.min(self.next_tick)))
    }

    /// Run every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Duration) {
        if self.left {
            return;
        }
        self.now = self.now.max(now);
        while let Some(Reverse(TimerKey(t, seq))) = self.timer_order.peek() {
            if *t > now {
                break;
            }
            let seq = *seq;
            self.timer_order.pop();
            if let Some(timer) = self.timers.remove(&seq) {
                if let Timer::SendIndirectProbe { probed_id, .. } = &timer {
                    self.awareness.on_indirect_stage(probed_id);
                }
                if self.foca.handle_timer(timer, rt!(self, now)).is_err() {
                    self.stats.errors += 1;
                }
                self.process();
            }
        }
        if now >= self.next_tick {
            self.next_tick = now + self.config.tick_interval;
            self.tick(now);
        }
    }

    fn tick(&mut self, now: Duration) {
        self.scan_suspects();
        if !self.pending_down.is_empty() {
            let (due, keep): (Vec<_>, Vec<_>) =
                self.pending_down.drain(..).partition(|(_, t)| *t <= now);
            self.pending_down = keep;
            for (identity, _) in due {
                if let Some(e) = self.members.get_mut(&identity.id)
                    && e.identity == identity
                    && e.state == MemberState::Suspect
                    && !self.foca.iter_members().any(|m| m.id() == &identity)
                {
                    e.state = MemberState::Dead;
                    self.alive_dirty = true;
                    self.vivaldi.forget(&identity.id);
                    self.events.push_back(Event::MemberDead(identity));
                }
            }
        }
        while self
            .pending
            .front()
            .is_some_and(|p| now.saturating_sub(p.sent) > self.config.vivaldi_timeout)
        {
            self.pending.pop_front();
        }
        if now >= self.next_ping {
            self.next_ping = now + self.config.vivaldi_interval;
            self.send_vivaldi_ping(now);
        }
    }

    fn send_vivaldi_ping(&mut self, now: Duration) {
        self.refresh_alive();
        if self.alive.is_empty() {
            return;
        }
        let to = self.alive[self.rng.random_range(0..self.alive.len())];
        let Some(e) = self.members.get(&to) else {
            return;
        };
        self.send_ping_to(to, e.identity.addr, now);
    }

    fn send_ping_to(&mut self, to: NodeId, addr: SocketAddr, now: Duration) {
        self.ping_seq = self.ping_seq.wrapping_add(1);
        let data = self.ping_datagram(TAG_PING, self.ping_seq, to);
        push_transmit(&mut self.transmits, &mut self.stats, addr, Some(to), data);
        self.stats.vivaldi_pings += 1;
        if self.pending.len() >= 16 {
            self.pending.pop_front();
        }
        self.pending.push_back(PendingPing {
            seq: self.ping_seq,
            to,
            sent: now,
        });
    }

    /// foca does not notify suspicions: compare its states with ours. Only suspects (few) are
    /// looked up, so this stays cheap at thousands of members.
    fn scan_suspects(&mut self) {
        let watching = !self.suspected.is_empty();
        let mut raised = Vec::new();
        let mut refuted = Vec::new();
        let mut stuck = Vec::new();
        // foca drops its suspicion timers when it changes identity (rejoin): a member suspected
        // for much longer than the suspicion timeout is declared down here.
        let limit = self.config.swim.suspect_to_down_after.saturating_mul(3);
        for m in self.foca.iter_members() {
            match m.state() {
                foca::State::Suspect => {
                    if watching
                        && self
                            .suspected
                            .get(&m.id().id)
                            .is_some_and(|t| self.now.saturating_sub(*t) > limit)
                    {
                        stuck.push(foca::Member::new(
                            *m.id(),
                            m.incarnation(),
                            foca::State::Down,
                        ));
                    } else {
                        raised.push(*m.id());
                    }
                }
                foca::State::Alive if watching && self.suspected.contains_key(&m.id().id) => {
                    refuted.push(*m.id());
                }
                _ => {}
            }
        }
        if !stuck.is_empty() {
            let now = self.now;
            if self
                .foca
                .apply_many(stuck.into_iter(), true, rt!(self, now))
                .is_err()
            {
                self.stats.errors += 1;
            }
            self.process();
        }
        for id in raised {
            if let Some(e) = self.members.get_mut(&id.id)
                && e.identity == id
                && e.state == MemberState::Alive
            {
                e.state = MemberState::Suspect;
                self.suspected.insert(id.id, self.now);
                self.stats.suspicions += 1;
                self.events.push_back(Event::MemberSuspect(id));
            }
        }
        for id in refuted {
            self.suspected.remove(&id.id);
            if let Some(e) = self.members.get_mut(&id.id)
                && e.identity == id
                && e.state == MemberState::Suspect
            {
                e.state = MemberState::Alive;
                self.stats.refutations += 1;
                self.events.push_back(Event::MemberAlive(id));
            }
        }
        // Suspects that went down or came back under a new bump are no longer watched.
        if watching {
            let members = &self.members;
            self.suspected.retain(|id, _| {
                members
                    .get(id)
                    .is_some_and(|e| e.state == MemberState::Suspect)
            });
        }
    }

    /// Turn foca's notifications and broadcast changes into events.
    fn process(&mut self) {
        self.stats.local_health = self.awareness.score();
        let changes = std::mem::take(&mut lock(&self.shared).changes);
        for c in changes {
            match c {
                Change::Meta(id) => {
                    if id == self.identity.id {
                        continue;
                    }
                    let coord = lock(&self.shared).records.get(&id).map(|r| r.coordinate);
                    // A record's coordinate is a snapshot of unknown age: only a first guess.
                    if let (Some(e), Some(c)) = (self.members.get_mut(&id), coord)
                        && e.coordinate.is_none()
                    {
                        e.coordinate = Some(c);
                    }
                    self.events.push_back(Event::MetadataChanged(id));
                }
                Change::Left(identity) => {
                    if let Some(e) = self.members.get_mut(&identity.id)
                        && e.identity.bump <= identity.bump
                        && e.state != MemberState::Left
                    {
                        e.state = MemberState::Left;
                        e.identity = identity;
                        self.alive_dirty = true;
                        self.vivaldi.forget(&identity.id);
                        self.events.push_back(Event::MemberLeft(identity));
                    }
                }
            }
        }
        let notes = std::mem::take(&mut self.notes);
        for n in notes {
            match n {
                OwnedNotification::MemberUp(identity) => self.member_up(identity),
                OwnedNotification::MemberDown(identity) => self.member_down(identity),
                OwnedNotification::Rename(old, new) => {
                    if old.id == new.id {
                        if let Some(e) = self.members.get_mut(&new.id) {
                            e.identity = new;
                        }
                        let have = lock(&self.shared)
                            .records
                            .get(&new.id)
                            .map(|r| r.identity.bump);
                        if have.is_none_or(|b| b < new.bump) {
                            self.request_meta(new);
                        }
                    } else {
                        // Another node took over the address: the old one is gone.
                        let state = self.members.get(&old.id).map(|e| e.state);
                        self.member_down(old);
                        if let Some(s) = state
                            && matches!(s, MemberState::Alive | MemberState::Suspect)
                        {
                            self.member_up(new);
                        }
                    }
                }
                OwnedNotification::Active => self.events.push_back(Event::Joined),
                OwnedNotification::Idle => self.events.push_back(Event::Idle),
                OwnedNotification::Defunct => {}
                OwnedNotification::Rejoin(new) => {
                    self.identity = new;
                    self.awareness.on_rejoin();
                    self.stats.local_health = self.awareness.score();
                    let _ = self.publish(false);
                    self.events.push_back(Event::Rejoined(new));
                }
            }
        }
    }

    fn member_up(&mut self, identity: Identity) {
        let left = lock(&self.shared).left.get(&identity.id).copied();
        if left.is_some_and(|b| b >= identity.bump) {
            // A stale "alive" about a member that said it is leaving.
            return;
        }
        let e = self.members.entry(identity.id).or_insert(Entry {
            identity,
            state: MemberState::Dead,
            coordinate: None,
            coord_stamp: Duration::ZERO,
        });
        e.identity = identity;
        if e.state != MemberState::Alive {
            e.state = MemberState::Alive;
            self.alive_dirty = true;
            self.events.push_back(Event::MemberUp(identity));
        }
        let (have, coord) = {
            let s = lock(&self.shared);
            let r = s.records.get(&identity.id);
            (r.map(|r| r.identity.bump), r.map(|r| r.coordinate))
        };
        if e.coordinate.is_none() {
            e.coordinate = coord;
        }
        if have.is_none_or(|b| b < identity.bump) {
            self.request_meta(identity);
        }
    }

    fn member_down(&mut self, identity: Identity) {
        let left = lock(&self.shared)
            .left
            .get(&identity.id)
            .is_some_and(|b| *b >= identity.bump);
        let Some(e) = self.members.get_mut(&identity.id) else {
            return;
        };
        if e.identity.bump > identity.bump {
            return;
        }
        let state = if left {
            MemberState::Left
        } else {
            MemberState::Dead
        };
        if e.state == state || e.state == MemberState::Left {
            return;
        }
        if !left && e.state == MemberState::Alive && !self.config.leave_grace.is_zero() {
            e.state = MemberState::Suspect;
            e.identity = identity;
            self.alive_dirty = true;
            self.events.push_back(Event::MemberSuspect(identity));
            // Watched by `scan_suspects` too, in case foca lists it alive again.
            self.suspected.insert(identity.id, self.now);
            self.pending_down
                .push((identity, self.now + self.config.leave_grace));
            return;
        }
        e.state = state;
        e.identity = identity;
        self.alive_dirty = true;
        self.vivaldi.forget(&identity.id);
        self.events.push_back(if left {
            Event::MemberLeft(identity)
        } else {
            Event::MemberDead(identity)
        });
    }

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Every member this node has heard of (not itself), ordered by id.
    pub fn members(&self) -> Vec<MemberInfo> {
        let shared = lock(&self.shared);
        let swim: BTreeMap<NodeId, u16> = self
            .foca
            .iter_members()
            .map(|m| (m.id().id, m.incarnation()))
            .collect();
        self.members
            .iter()
            .map(|(id, e)| MemberInfo {
                id: *id,
                addr: e.identity.addr,
                state: e.state,
                incarnation: e.identity.bump,
                swim_incarnation: swim.get(id).copied().unwrap_or(0),
                metadata: shared.records.get(id).map(|r| r.metadata.clone()),
                coordinate: e.coordinate,
                rtt: e
                    .coordinate
                    .as_ref()
                    .map(|c| self.vivaldi.coordinate().estimate_rtt(c)),
            })
            .collect()
    }

    /// One member's state and bump, if known.
    pub fn member_state(&self, id: &NodeId) -> Option<(MemberState, u32)> {
        self.members.get(id).map(|e| (e.state, e.identity.bump))
    }

    /// The metadata record this node holds for `id` (its own included).
    pub fn record(&self, id: &NodeId) -> Option<MetaRecord> {
        lock(&self.shared).records.get(id).cloned()
    }

    /// Number of members in each state: (alive, suspect, dead, left).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for e in self.members.values() {
            match e.state {
                MemberState::Alive => c.0 += 1,
                MemberState::Suspect => c.1 += 1,
                MemberState::Dead => c.2 += 1,
                MemberState::Left => c.3 += 1,
            }
        }
        c
    }

    /// The coordinate this node knows for `id` (its own for its own id).
    pub fn coordinate_of(&self, id: &NodeId) -> Option<Coordinate> {
        if *id == self.identity.id {
            return Some(*self.vivaldi.coordinate());
        }
        self.members.get(id)?.coordinate
    }

    /// Estimated RTT between two members (either may be this node), from their coordinates.
    pub fn estimate_rtt(&self, a: &NodeId, b: &NodeId) -> Option<Duration> {
        Some(self.coordinate_of(a)?.estimate_rtt(&self.coordinate_of(b)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datagram_naming_another_sender_than_the_authenticated_one_is_refused() {
        let a_id = NodeId([1; 32]);
        let b_id = NodeId([2; 32]);
        let addr = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let now = Duration::from_secs(1);
        let mut a = Membership::new(
            Identity::new(a_id, addr(1)),
            Metadata::default(),
            Config::lan(5),
            1,
            Duration::ZERO,
        )
        .expect("a");
        let mut b = Membership::new(
            Identity::new(b_id, addr(2)),
            Metadata::default(),
            Config::lan(5),
            2,
            Duration::ZERO,
        )
        .expect("b");
        a.join(addr(2), now).expect("join");
        let announce = a.poll_transmit().expect("an announce").data;
        let forged = b.handle_data_from(NodeId([3; 32]), &announce, now);
        assert!(
            matches!(forged, Err(Error::Impersonation { claimed, actual }) if claimed == a_id && actual == NodeId([3; 32])),
            "{forged:?}"
        );
        assert_eq!(b.stats().errors, 1);
        assert!(
            b.members().is_empty(),
            "nothing learnt from the forged datagram"
        );
        b.handle_data_from(a_id, &announce, now)
            .expect("the real sender");
        assert_eq!(b.stats().errors, 1);
    }

    #[test]
    fn membership_is_send() {
        fn send<T: Send>() {}
        send::<Membership>();
    }

    #[test]
    fn oversized_and_empty_datagrams_are_errors() {
        let id = Identity::new(NodeId([1; 32]), "10.0.0.1:7946".parse().unwrap());
        let mut m =
            Membership::new(id, Metadata::default(), Config::lan(3), 1, Duration::ZERO).unwrap();
        assert!(matches!(
            m.handle_data(&[0; MAX_DATAGRAM + 1], Duration::ZERO),
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            m.handle_data(&[], Duration::ZERO),
            Err(Error::Decode(_))
        ));
        assert!(matches!(
            m.handle_data(&[9, 1, 2], Duration::ZERO),
            Err(Error::Decode(DecodeError::UnknownTag { .. }))
        ));
    }

    #[test]
    fn set_cluster_size_rederives_size_parameters() {
        let id = Identity::new(NodeId([1; 32]), "10.0.0.1:7946".parse().unwrap());
        let mut m =
            Membership::new(id, Metadata::default(), Config::lan(3), 1, Duration::ZERO).unwrap();
        assert_eq!(
            m.config().swim.suspect_to_down_after,
            Duration::from_secs(4)
        );
        assert_eq!(m.config().swim.max_transmissions.get(), 4);
        // (N, suspicion 4 × max(1, log10 N) s, retransmissions 4 × ceil(log10(N + 1)))
        for (n, suspicion, tx) in [
            (100, 8.0, 12),
            (1000, 12.0, 16),
            (10, 4.0, 8),
            (1, 4.0, 4),
            (500, 4.0 * 500f64.log10(), 12),
        ] {
            m.set_cluster_size(n);
            let swim = &m.config().swim;
            assert!(
                (swim.suspect_to_down_after.as_secs_f64() - suspicion).abs() < 1e-6,
                "N = {n}: {:?}",
                swim.suspect_to_down_after
            );
            assert_eq!(swim.max_transmissions.get(), tx, "N = {n}");
            // The same figures as a fresh `Config::lan(N)`; the rest is untouched.
            let lan = Config::lan(n).swim;
            assert_eq!(swim.suspect_to_down_after, lan.suspect_to_down_after);
            assert_eq!(swim.max_transmissions, lan.max_transmissions);
            assert_eq!(swim.probe_period, Duration::from_secs(1));
            assert_eq!(swim.probe_rtt, Duration::from_millis(500));
            assert_eq!(swim.num_indirect_probes, lan.num_indirect_probes);
        }
        // foca took every one of them.
        assert_eq!(m.stats().errors, 0);

        // The suspicion timeout counts in the configured probe periods, and the local health
        // multiplier survives.
        let mut config = Config::lan(3);
        config.swim.probe_period = Duration::from_secs(2);
        config.swim.probe_rtt = Duration::from_secs(1);
        let mut m = Membership::new(id, Metadata::default(), config, 1, Duration::ZERO).unwrap();
        m.awareness.on_rejoin();
        m.set_cluster_size(100);
        assert_eq!(
            m.config().swim.suspect_to_down_after,
            Duration::from_secs(16)
        );
        assert_eq!(m.config().swim.probe_period, Duration::from_secs(2));
        assert_eq!(m.stats().errors, 0);
        assert_eq!(
            m.awareness.scale(Duration::from_secs(2)),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn leave_then_nothing() {
        let id = Identity::new(NodeId([1; 32]), "10.0.0.1:7946".parse().unwrap());
        let mut m =
            Membership::new(id, Metadata::default(), Config::lan(3), 1, Duration::ZERO).unwrap();
        m.leave(Duration::ZERO).unwrap();
        assert!(m.poll_timeout().is_none());
        assert!(matches!(
            m.join("10.0.0.2:7946".parse().unwrap(), Duration::ZERO),
            Err(Error::Left)
        ));
    }
}
