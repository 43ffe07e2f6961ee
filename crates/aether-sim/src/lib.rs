//! A deterministic discrete-event simulator for sans-IO protocol cores.
//!
//! Every Aether protocol (membership, replicated state, placement) is written as a state machine
//! that takes messages and the current time as arguments and returns messages to send and the
//! next time it wants to be woken. [`Simulation`] runs many such cores in one process on
//! **virtual time**, the way `quinn-proto` and `foca` are tested:
//!
//! - a core implements [`Process`]: `on_message`, `on_timer`, `next_timer`, with effects written
//!   into an [`Outbox`] (messages to send, bytes to persist across crashes);
//! - the network is a [`NetConfig`]: a region × region RTT matrix (one way = RTT / 2) plus
//!   uniform jitter, loss, duplication and reordering probabilities; partitions (groups of
//!   nodes, healed with [`Simulation::heal`]) drop traffic between groups, checked both when a
//!   message is sent and when it would be delivered;
//! - nodes can [`crash`](Simulation::crash) (state lost, in-flight messages to them dropped) and
//!   [`restart`](Simulation::restart) (the factory builds a fresh process, handed whatever the
//!   node last [`persist`](Outbox::persist)ed);
//! - each node may have a clock offset ([`Simulation::set_clock_skew`]): it sees
//!   `now + skew`, and its timers are interpreted on its own clock.
//!
//! Determinism: one seeded `StdRng` (ChaCha12) drives every random choice, events are ordered by
//! `(time, sequence number)` in a `BinaryHeap`, and no `HashMap` iteration order is used, so a
//! run is bit-for-bit reproducible per seed. [`Simulation::trace_hash`] folds every processed
//! event (time, kind, endpoints, message size) into an FNV-1a hash, so two runs can be compared
//! cheaply and a failing seed reproduces exactly.
//!
//! ```
//! use aether_sim::{NetConfig, NodeId, Outbox, Process, SimTime, Simulation};
//! use std::time::Duration;
//!
//! struct Echo;
//! impl Process for Echo {
//!     type Message = u32;
//!     fn on_message(&mut self, _: SimTime, from: NodeId, m: u32, out: &mut Outbox<u32>) {
//!         if m < 3 { out.send(from, m + 1) }
//!     }
//!     fn on_timer(&mut self, _: SimTime, _: &mut Outbox<u32>) {}
//!     fn next_timer(&self) -> Option<SimTime> { None }
//! }
//!
//! let mut sim = Simulation::new(7, NetConfig::uniform(Duration::from_millis(10)), |_, _| Echo);
//! let a = sim.add_node(0);
//! let b = sim.add_node(0);
//! sim.invoke(a, |_, _, out| out.send(b, 0));
//! sim.run_until_idle();
//! assert_eq!(sim.stats().delivered, 4);
//! assert_eq!(sim.now(), Duration::from_millis(20)); // 4 one-way trips of 5 ms
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::Duration;

use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};

/// Virtual time: the duration since the simulation started (or, for a skewed node, since its
/// own clock's epoch). Protocol cores take time as a plain `Duration` so the daemon can drive
/// them with `Instant::duration_since(start)` and the simulator with virtual time.
pub type SimTime = Duration;

/// A node's index in the simulation, stable across crashes and restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The index as a `usize`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Where a process writes its effects during one callback.
#[derive(Debug)]
pub struct Outbox<M> {
    sends: Vec<(NodeId, M)>,
    persist: Option<Vec<u8>>,
}

impl<M> Default for Outbox<M> {
    fn default() -> Self {
        Self {
            sends: Vec::new(),
            persist: None,
        }
    }
}

impl<M> Outbox<M> {
    /// Queue `msg` for delivery to `to` through the simulated network.
    pub fn send(&mut self, to: NodeId, msg: M) {
        self.sends.push((to, msg));
    }

    /// Replace this node's "disk": the bytes survive a crash and are handed to the factory on
    /// restart.
    pub fn persist(&mut self, bytes: Vec<u8>) {
        self.persist = Some(bytes);
    }

    /// Messages queued so far (useful when a driver other than [`Simulation`] drains it).
    pub fn drain(&mut self) -> impl Iterator<Item = (NodeId, M)> + '_ {
        self.sends.drain(..)
    }
}

/// A sans-IO protocol core the simulator can drive.
///
/// All times are the node's **local** time (global virtual time plus the node's clock skew).
/// The simulator calls [`next_timer`](Process::next_timer) after every callback and calls
/// [`on_timer`](Process::on_timer) once that local time is reached; a core that returns a time
/// in the past is woken immediately, so `on_timer` must move its timer forward.
pub trait Process {
    /// The message type exchanged between nodes.
    type Message: Clone;

    /// Called once when the node starts (first time and after every restart).
    fn on_start(&mut self, _now: SimTime, _out: &mut Outbox<Self::Message>) {}

    /// A message from `from` arrived.
    fn on_message(
        &mut self,
        now: SimTime,
        from: NodeId,
        msg: Self::Message,
        out: &mut Outbox<Self::Message>,
    );

    /// The time returned by [`next_timer`](Process::next_timer) was reached.
    fn on_timer(&mut self, now: SimTime, out: &mut Outbox<Self::Message>);

    /// The local time at which the core wants [`on_timer`](Process::on_timer), if any.
    fn next_timer(&self) -> Option<SimTime>;
}

/// The simulated network.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// Round-trip time between regions, `rtt[a][b]`; one-way latency is half of it. Nodes are
    /// placed in a region by [`Simulation::add_node`].
    pub rtt: Vec<Vec<Duration>>,
    /// Uniform extra one-way delay in `[0, jitter × one_way]`.
    pub jitter: f64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice (the copy takes its own latency sample).
    pub duplicate: f64,
    /// Probability that a message is held back by an extra uniform delay in
    /// `[0, reorder_delay]`, so later messages may overtake it.
    pub reorder: f64,
    /// Upper bound of the extra delay of a reordered message.
    pub reorder_delay: Duration,
}

impl NetConfig {
    /// One region, the given RTT, a perfect network.
    pub fn uniform(rtt: Duration) -> Self {
        Self {
            rtt: vec![vec![rtt]],
            jitter: 0.0,
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
        }
    }

    /// Regions with the given RTT matrix (must be square), a perfect network otherwise.
    pub fn regions(rtt: Vec<Vec<Duration>>) -> Self {
        Self {
            rtt,
            ..Self::uniform(Duration::ZERO)
        }
    }
}

/// Counters over a whole run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages handed to the network (duplicates not counted).
    pub sent: u64,
    /// Messages delivered to a live process (duplicates counted).
    pub delivered: u64,
    /// Messages dropped by random loss.
    pub dropped_loss: u64,
    /// Messages dropped because sender and receiver were in different partition groups.
    pub dropped_partition: u64,
    /// Messages dropped because the receiver was down (or restarted) at delivery time.
    pub dropped_down: u64,
    /// Extra copies created by duplication.
    pub duplicated: u64,
    /// Sum of the message-size hook over sent messages.
    pub bytes_sent: u64,
    /// Timer callbacks run.
    pub timers: u64,
}

enum EventKind<M> {
    Deliver { from: NodeId, to: NodeId, msg: M },
    Timer { node: NodeId, generation: u64 },
}

struct Event<M> {
    at: SimTime,
    seq: u64,
    kind: EventKind<M>,
}

impl<M> PartialEq for Event<M> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<M> Eq for Event<M> {}
impl<M> PartialOrd for Event<M> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<M> Ord for Event<M> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Slot<P> {
    process: Option<P>,
    region: usize,
    skew_nanos: i64,
    group: u32,
    disk: Option<Vec<u8>>,
    timer_generation: u64,
    scheduled_timer: Option<SimTime>,
    restarts: u32,
    bytes_sent: u64,
}

type Factory<P> = Box<dyn FnMut(NodeId, Option<&[u8]>) -> P>;
type SizeHook<M> = Box<dyn Fn(&M) -> usize>;

/// Runs N processes on virtual time over a simulated network. See the crate docs.
pub struct Simulation<P: Process> {
    now: SimTime,
    seq: u64,
    rng: StdRng,
    net: NetConfig,
    queue: BinaryHeap<Reverse<Event<P::Message>>>,
    nodes: Vec<Slot<P>>,
    factory: Factory<P>,
    size_of: SizeHook<P::Message>,
    stats: SimStats,
    trace: u64,
    partitioned: bool,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl<P: Process> Simulation<P> {
    /// A simulation with no nodes. `factory(id, persisted)` builds a node's process when it is
    /// added and on every restart; `persisted` is what the node last wrote with
    /// [`Outbox::persist`] (always `None` for a new node).
    pub fn new(
        seed: u64,
        net: NetConfig,
        factory: impl FnMut(NodeId, Option<&[u8]>) -> P + 'static,
    ) -> Self {
        Self {
            now: Duration::ZERO,
            seq: 0,
            rng: StdRng::seed_from_u64(seed),
            net,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            factory: Box::new(factory),
            size_of: Box::new(|_| 0),
            stats: SimStats::default(),
            trace: FNV_OFFSET,
            partitioned: false,
        }
    }

    /// Set the message-size hook used for byte counters (default: every message is 0 bytes).
    pub fn set_message_size(&mut self, f: impl Fn(&P::Message) -> usize + 'static) {
        self.size_of = Box::new(f);
    }

    /// Add a node in `region` (an index into [`NetConfig::rtt`]), build and start its process.
    ///
    /// # Panics
    /// If `region` is outside the RTT matrix.
    pub fn add_node(&mut self, region: usize) -> NodeId {
        self.add_node_skewed(region, 0)
    }

    /// Like [`add_node`](Self::add_node), with the node's clock offset by `skew_nanos` from
    /// its first moment (see [`set_clock_skew`](Self::set_clock_skew)).
    pub fn add_node_skewed(&mut self, region: usize, skew_nanos: i64) -> NodeId {
        assert!(
            region < self.net.rtt.len(),
            "region {region} not in RTT matrix"
        );
        let id = NodeId(u32::try_from(self.nodes.len()).expect("too many nodes"));
        self.nodes.push(Slot {
            process: None,
            region,
            skew_nanos,
            group: 0,
            disk: None,
            timer_generation: 0,
            scheduled_timer: None,
            restarts: 0,
            bytes_sent: 0,
        });
        self.boot(id);
        id
    }

    fn boot(&mut self, id: NodeId) {
        let disk = self.nodes[id.index()].disk.clone();
        let process = (self.factory)(id, disk.as_deref());
        self.nodes[id.index()].process = Some(process);
        self.invoke(id, |p, now, out| p.on_start(now, out));
    }

    /// Current global virtual time.
    pub fn now(&self) -> SimTime {
        self.now
    }

    /// Number of nodes ever added (live or crashed).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node ids in order.
    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + use<P> {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    /// The node's process, `None` while it is crashed.
    pub fn node(&self, id: NodeId) -> Option<&P> {
        self.nodes.get(id.index())?.process.as_ref()
    }

    /// True when the node exists and is not crashed.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// How many times the node was restarted.
    pub fn restarts(&self, id: NodeId) -> u32 {
        self.nodes[id.index()].restarts
    }

    /// The node's local time now (global time plus its skew, floored at zero).
    pub fn local_time(&self, id: NodeId) -> SimTime {
        to_local(self.now, self.nodes[id.index()].skew_nanos)
    }

    /// Run `f` on a live node's process with its local time and an outbox, then send what it
    /// queued and reschedule its timer. Returns `None` if the node is down. This is how tests
    /// call a core's API (join, leave, metadata updates) from outside.
    pub fn invoke<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut P, SimTime, &mut Outbox<P::Message>) -> R,
    ) -> Option<R> {
        let local = self.local_time(id);
        let mut out = Outbox::default();
        let r = f(self.nodes[id.index()].process.as_mut()?, local, &mut out);
        self.flush(id, out);
        Some(r)
    }

    /// Crash the node: its process (and all its memory) is dropped, its timers are cancelled,
    /// messages to it are dropped until it restarts. Its persisted bytes are kept.
    pub fn crash(&mut self, id: NodeId) {
        self.trace_event(3, id.0, id.0, 0);
        let slot = &mut self.nodes[id.index()];
        slot.process = None;
        slot.timer_generation += 1;
        slot.scheduled_timer = None;
    }

    /// Restart a crashed node (or restart a live one in place): the factory builds a fresh
    /// process from the persisted bytes.
    pub fn restart(&mut self, id: NodeId) {
        if self.is_up(id) {
            self.crash(id);
        }
        self.trace_event(4, id.0, id.0, 0);
        self.nodes[id.index()].restarts += 1;
        self.boot(id);
    }

    /// Set the node's clock offset in nanoseconds (positive = its clock is ahead). Changing it
    /// on a running node steps its clock (a negative step holds its clock until global time
    /// catches up, so local time never runs backwards).
    pub fn set_clock_skew(&mut self, id: NodeId, skew_nanos: i64) {
        self.nodes[id.index()].skew_nanos = skew_nanos;
        self.nodes[id.index()].scheduled_timer = None;
        self.reschedule(id);
    }

    /// Split the network: nodes in different groups cannot talk. Nodes not listed form one
    /// more group together.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        for slot in &mut self.nodes {
            slot.group = u32::MAX;
        }
        for (g, members) in groups.iter().enumerate() {
            for id in *members {
                self.nodes[id.index()].group = g as u32;
            }
        }
        self.partitioned = true;
        self.trace_event(5, groups.len() as u32, 0, 0);
    }

    /// Remove every partition.
    pub fn heal(&mut self) {
        for slot in &mut self.nodes {
            slot.group = 0;
        }
        self.partitioned = false;
        self.trace_event(6, 0, 0, 0);
    }

    /// True when `a` and `b` are in the same partition group.
    pub fn connected(&self, a: NodeId, b: NodeId) -> bool {
        !self.partitioned || self.nodes[a.index()].group == self.nodes[b.index()].group
    }

    /// Change the network model (loss, latency…) from now on.
    pub fn net_mut(&mut self) -> &mut NetConfig {
        &mut self.net
    }

    /// The true RTT between two nodes' regions (without jitter).
    pub fn base_rtt(&self, a: NodeId, b: NodeId) -> Duration {
        self.net.rtt[self.nodes[a.index()].region][self.nodes[b.index()].region]
    }

    /// The node's region.
    pub fn region(&self, id: NodeId) -> usize {
        self.nodes[id.index()].region
    }

    /// Counters so far.
    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Bytes (per the size hook) the node has sent so far.
    pub fn bytes_sent_by(&self, id: NodeId) -> u64 {
        self.nodes[id.index()].bytes_sent
    }

    /// FNV-1a hash of every event processed so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    /// Process the next event. Returns `false` when the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some(Reverse(ev)) = self.queue.pop() else {
            return false;
        };
        debug_assert!(ev.at >= self.now);
        self.now = ev.at;
        match ev.kind {
            EventKind::Deliver { from, to, msg } => {
                if !self.connected(from, to) {
                    self.stats.dropped_partition += 1;
                    self.trace_event(7, from.0, to.0, 0);
                    return true;
                }
                if !self.is_up(to) {
                    self.stats.dropped_down += 1;
                    self.trace_event(8, from.0, to.0, 0);
                    return true;
                }
                let size = (self.size_of)(&msg);
                self.trace_event(1, from.0, to.0, size as u64);
                self.stats.delivered += 1;
                self.invoke(to, |p, now, out| p.on_message(now, from, msg, out));
            }
            EventKind::Timer { node, generation } => {
                let slot = &mut self.nodes[node.index()];
                if slot.timer_generation != generation || slot.process.is_none() {
                    return true;
                }
                slot.scheduled_timer = None;
                self.trace_event(2, node.0, node.0, 0);
                self.stats.timers += 1;
                self.invoke(node, |p, now, out| p.on_timer(now, out));
            }
        }
        true
    }

    /// Process events up to and including global time `t`, then set the clock to `t`.
    pub fn run_until(&mut self, t: SimTime) {
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.at > t {
                break;
            }
            self.step();
        }
        if t > self.now {
            self.now = t;
        }
    }

    /// Run for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Run until `pred` holds (checked after every event) or `deadline` passes. Returns the
    /// time at which `pred` first held.
    pub fn run_until_pred(
        &mut self,
        deadline: SimTime,
        mut pred: impl FnMut(&Self) -> bool,
    ) -> Option<SimTime> {
        if pred(self) {
            return Some(self.now);
        }
        while let Some(Reverse(ev)) = self.queue.peek() {
            if ev.at > deadline {
                break;
            }
            self.step();
            if pred(self) {
                return Some(self.now);
            }
        }
        self.now = self.now.max(deadline);
        None
    }

    /// Run until no event is left (never returns for cores with periodic timers).
    pub fn run_until_idle(&mut self) {
        while self.step() {}
    }

    fn flush(&mut self, id: NodeId, out: Outbox<P::Message>) {
        if let Some(bytes) = out.persist {
            self.nodes[id.index()].disk = Some(bytes);
        }
        for (to, msg) in out.sends {
            self.send(id, to, msg);
        }
        self.reschedule(id);
    }

    fn reschedule(&mut self, id: NodeId) {
        let slot = &self.nodes[id.index()];
        let Some(p) = slot.process.as_ref() else {
            return;
        };
        let Some(local) = p.next_timer() else {
            return;
        };
        let global = to_global(local, slot.skew_nanos).max(self.now);
        if slot.scheduled_timer == Some(global) {
            return;
        }
        let slot = &mut self.nodes[id.index()];
        slot.timer_generation += 1;
        slot.scheduled_timer = Some(global);
        let generation = slot.timer_generation;
        self.push(
            global,
            EventKind::Timer {
                node: id,
                generation,
            },
        );
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: P::Message) {
        self.stats.sent += 1;
        let size = (self.size_of)(&msg) as u64;
        self.stats.bytes_sent += size;
        self.nodes[from.index()].bytes_sent += size;
        if to.index() >= self.nodes.len() {
            self.stats.dropped_down += 1;
            return;
        }
        if !self.connected(from, to) {
            self.stats.dropped_partition += 1;
            return;
        }
        if self.net.loss > 0.0 && self.rng.random_bool(self.net.loss.min(1.0)) {
            self.stats.dropped_loss += 1;
            self.trace_event(9, from.0, to.0, size);
            return;
        }
        if self.net.duplicate > 0.0 && self.rng.random_bool(self.net.duplicate.min(1.0)) {
            self.stats.duplicated += 1;
            let delay = self.latency(from, to);
            let copy = msg.clone();
            self.push(
                self.now + delay,
                EventKind::Deliver {
                    from,
                    to,
                    msg: copy,
                },
            );
        }
        let delay = self.latency(from, to);
        self.push(self.now + delay, EventKind::Deliver { from, to, msg });
    }

    fn latency(&mut self, from: NodeId, to: NodeId) -> Duration {
        let one_way = self.base_rtt(from, to) / 2;
        let mut d = one_way;
        if self.net.jitter > 0.0 && !one_way.is_zero() {
            d += one_way.mul_f64(self.rng.random::<f64>() * self.net.jitter);
        }
        if self.net.reorder > 0.0
            && !self.net.reorder_delay.is_zero()
            && self.rng.random_bool(self.net.reorder.min(1.0))
        {
            d += self.net.reorder_delay.mul_f64(self.rng.random::<f64>());
        }
        d
    }

    fn push(&mut self, at: SimTime, kind: EventKind<P::Message>) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn trace_event(&mut self, kind: u8, a: u32, b: u32, size: u64) {
        let mut h = self.trace;
        let nanos = self.now.as_nanos() as u64;
        for chunk in [nanos, u64::from(kind), u64::from(a), u64::from(b), size] {
            for byte in chunk.to_le_bytes() {
                h ^= u64::from(byte);
                h = h.wrapping_mul(FNV_PRIME);
            }
        }
        self.trace = h;
    }
}

fn to_local(global: SimTime, skew_nanos: i64) -> SimTime {
    if skew_nanos >= 0 {
        global + Duration::from_nanos(skew_nanos as u64)
    } else {
        global.saturating_sub(Duration::from_nanos(skew_nanos.unsigned_abs()))
    }
}

fn to_global(local: SimTime, skew_nanos: i64) -> SimTime {
    if skew_nanos >= 0 {
        local.saturating_sub(Duration::from_nanos(skew_nanos as u64))
    } else {
        local + Duration::from_nanos(skew_nanos.unsigned_abs())
    }
}
