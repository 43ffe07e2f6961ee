//! 50 state cores in the deterministic simulator: loss, duplication,
//! reordering, a partition that heals, crashes with restart from the
//! node's journal, clock skew within tolerance.

mod common;

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use aether_identity::PublicKey;
use aether_sim::{NetConfig, NodeId as SimId, Outbox, Process, SimTime, Simulation};
use aether_state::{NodeId, Output, SignedUpdate, StateCore, SyncMessage, precedence};
use bytes::Bytes;
use common::{EPOCH_MS, Rng, core, id, keyring, secret};

const NODES: usize = 50;
const KEYS: u64 = 60;
const FANOUT: usize = 3;
const AE_EVERY: Duration = Duration::from_millis(1000);

/// What outlives a crash: each node's journal (every update it wrote or
/// reported `Applied`, in order), and the writes acknowledged to clients.
struct World {
    journals: Vec<Vec<SignedUpdate>>,
    acked: Vec<SignedUpdate>,
    sim_index: BTreeMap<NodeId, u32>,
}

struct Node {
    idx: usize,
    core: StateCore,
    world: Rc<RefCell<World>>,
    keys: Rc<BTreeMap<NodeId, PublicKey>>,
    rng: Rng,
    next_ae: Option<SimTime>,
}

fn ms(now: SimTime) -> u64 {
    EPOCH_MS + now.as_millis() as u64
}

impl Node {
    fn peer(&mut self) -> usize {
        (self.idx + 1 + self.rng.below(NODES as u64 - 1) as usize) % NODES
    }

    fn push(&mut self, update: SignedUpdate, out: &mut Outbox<Vec<u8>>) {
        let bytes = SyncMessage::Push(vec![update]).encode();
        for _ in 0..FANOUT {
            let p = self.peer();
            out.send(SimId(p as u32), bytes.clone());
        }
    }

    /// The shell: send what the core asks, persist what it applied, then
    /// push on what arrived by push.
    fn flush(&mut self, out: &mut Outbox<Vec<u8>>) {
        while let Some(o) = self.core.poll_output() {
            match o {
                Output::Send { to, msg } => {
                    let to = self.world.borrow().sim_index[&to];
                    out.send(SimId(to), msg.encode());
                }
                Output::Applied {
                    update, forward, ..
                } => {
                    self.world.borrow_mut().journals[self.idx].push(update.clone());
                    if forward {
                        self.push(update, out);
                    }
                }
            }
        }
    }

    /// A client write: persist, acknowledge, push.
    fn write(&mut self, now: SimTime, key: u64, value: Option<Bytes>, out: &mut Outbox<Vec<u8>>) {
        let u = self
            .core
            .write(secret(self.idx), "kv", &key.to_be_bytes(), value, ms(now))
            .expect("write");
        {
            let mut w = self.world.borrow_mut();
            w.journals[self.idx].push(u.clone());
            w.acked.push(u.clone());
        }
        self.push(u, out);
        self.flush(out);
    }
}

impl Process for Node {
    type Message = Vec<u8>;

    fn on_start(&mut self, now: SimTime, _out: &mut Outbox<Vec<u8>>) {
        let offset = self.rng.below(AE_EVERY.as_millis() as u64);
        self.next_ae = Some(now + Duration::from_millis(offset));
    }

    fn on_message(&mut self, now: SimTime, from: SimId, msg: Vec<u8>, out: &mut Outbox<Vec<u8>>) {
        self.core
            .receive_bytes(id(from.index()), &msg, &*self.keys, ms(now))
            .expect("peers send valid messages");
        self.flush(out);
    }

    fn on_timer(&mut self, now: SimTime, out: &mut Outbox<Vec<u8>>) {
        if self.next_ae.is_some_and(|t| t <= now) {
            let p = self.peer();
            self.core.start_anti_entropy(id(p), ms(now));
            let jitter = self.rng.below(200);
            self.next_ae = Some(now + AE_EVERY + Duration::from_millis(jitter));
        }
        self.core.handle_timeout(ms(now));
        self.flush(out);
    }

    fn next_timer(&self) -> Option<SimTime> {
        let pending = self
            .core
            .poll_timeout()
            .map(|t| Duration::from_millis(t.saturating_sub(EPOCH_MS)));
        match (self.next_ae, pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn converged(sim: &Simulation<Node>) -> bool {
    let mut roots = sim.node_ids().map(|i| sim.node(i).map(|n| n.core.root()));
    let Some(Some(first)) = roots.next() else {
        return false;
    };
    roots.all(|r| r == Some(first))
}

#[test]
fn fifty_nodes_converge_through_loss_partition_crashes_and_skew() {
    let keys = Rc::new(keyring(NODES));
    let world = Rc::new(RefCell::new(World {
        journals: vec![Vec::new(); NODES],
        acked: Vec::new(),
        sim_index: (0..NODES).map(|i| (id(i), i as u32)).collect(),
    }));
    let net = NetConfig {
        jitter: 0.5,
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.05,
        reorder_delay: Duration::from_millis(150),
        ..NetConfig::uniform(Duration::from_millis(20))
    };
    let w = Rc::clone(&world);
    let mut restarts = 0u64;
    let mut sim = Simulation::new(0x5747_E002, net, move |sid: SimId, _disk: Option<&[u8]>| {
        let idx = sid.index();
        let mut c = core();
        // Restart: a new core restored from the node's journal.
        for u in &w.borrow().journals[idx] {
            c.restore(u.clone());
        }
        restarts += 1;
        Node {
            idx,
            core: c,
            world: Rc::clone(&w),
            keys: Rc::clone(&keys),
            rng: Rng::new(0xA5 ^ (idx as u64) << 8 ^ restarts),
            next_ae: None,
        }
    });
    sim.set_message_size(|m: &Vec<u8>| m.len());
    let mut rng = Rng::new(42);
    for _ in 0..NODES {
        // Skew within ±200 ms: two nodes differ by at most 400 ms, inside
        // the 500 ms bound.
        let skew = rng.below(400) as i64 - 200;
        sim.add_node_skewed(0, skew * 1_000_000);
    }
    let half: Vec<SimId> = (0..NODES as u32 / 2).map(SimId).collect();
    let other: Vec<SimId> = (NODES as u32 / 2..NODES as u32).map(SimId).collect();
    let s = Duration::from_secs;
    let mut t = Duration::ZERO;
    while t < s(25) {
        t += Duration::from_millis(100);
        sim.run_until(t);
        match t.as_millis() {
            8_000 => sim.partition(&[&half, &other]),
            10_000 => [3, 30, 47].into_iter().for_each(|i| sim.crash(SimId(i))),
            16_000 => [3, 30, 47].into_iter().for_each(|i| sim.restart(SimId(i))),
            20_000 => sim.heal(),
            22_000 => sim.crash(SimId(10)),
            24_000 => sim.restart(SimId(10)),
            _ => {}
        }
        let who = SimId(rng.below(NODES as u64) as u32);
        let key = rng.below(KEYS);
        let value = (!rng.chance(0.1)).then(|| Bytes::from(t.as_millis().to_be_bytes().to_vec()));
        sim.invoke(who, |n, now, out| n.write(now, key, value, out));
    }
    let healed = sim.now();
    let at = sim.run_until_pred(healed + s(120), converged);
    let at = at.expect("no convergence within 120 s of the last write");
    eprintln!(
        "converged {:?} after the last write; {} writes; sim {:?}",
        at - healed,
        world.borrow().acked.len(),
        sim.stats()
    );

    // Same digest everywhere.
    let digests: Vec<[u8; 32]> = sim
        .node_ids()
        .map(|i| sim.node(i).expect("all up").core.digest())
        .collect();
    assert!(digests.windows(2).all(|d| d[0] == d[1]));

    // Every acknowledged write that no later write overwrote is the value.
    let w = world.borrow();
    let mut last: BTreeMap<Bytes, &SignedUpdate> = BTreeMap::new();
    for u in &w.acked {
        let e = last.entry(u.key().clone()).or_insert(u);
        if precedence(u, e) == Ordering::Greater {
            *e = u;
        }
    }
    let node = sim.node(SimId(0)).unwrap();
    assert_eq!(node.core.len(), last.len());
    for (key, u) in &last {
        let e = node.core.get("kv", key).expect("key present");
        assert_eq!(e.winner(), *u);
    }

    // Nothing bad was seen, and the interesting paths were taken.
    let mut total = aether_state::SyncCounters::default();
    for i in sim.node_ids() {
        let c = sim.node(i).unwrap().core.counters();
        total.forged += c.forged + c.unknown_origin + c.revoked_origin + c.malformed_messages;
        total.from_the_future += c.from_the_future;
        total.clock_anomalies += c.clock_anomalies;
        total.applied += c.applied;
        total.duplicates += c.duplicates;
        total.restored += c.restored;
        total.pending_buffered += c.pending_buffered;
        total.pending_released += c.pending_released;
        total.pending_expired += c.pending_expired;
        total.pending_evicted += c.pending_evicted;
        total.fetches_sent += c.fetches_sent;
        total.ae_rounds_started += c.ae_rounds_started;
        total.ae_in_sync += c.ae_in_sync;
        total.bytes_sent += c.bytes_sent;
    }
    eprintln!(
        "applied {} duplicates {} restored {}; pending: buffered {} released {} expired {} \
         evicted {}, fetches {}; anti-entropy: {} rounds ({} in sync), {} B",
        total.applied,
        total.duplicates,
        total.restored,
        total.pending_buffered,
        total.pending_released,
        total.pending_expired,
        total.pending_evicted,
        total.fetches_sent,
        total.ae_rounds_started,
        total.ae_in_sync,
        total.bytes_sent
    );
    assert_eq!(total.forged, 0);
    assert_eq!(total.from_the_future, 0);
    assert_eq!(total.clock_anomalies, 0);
    assert!(total.pending_buffered > 0 && total.fetches_sent > 0);
    assert!(total.restored > 0);
    assert_eq!(sim.restarts(SimId(3)), 1);
}
