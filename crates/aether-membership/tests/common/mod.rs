//! Runs `Membership` cores in the `aether-sim` simulator. Shared by the tests and the bench
//! example.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use aether_membership::{Config, Event, Identity, MemberState, Membership, Metadata, NodeId};
use aether_sim::{NetConfig, NodeId as SimId, Outbox, Process, SimTime, Simulation};

/// Mesh address of simulated node `i`.
pub fn addr(i: u32) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(0x0A00_0000 + i), 7946))
}

/// Simulated node index of a mesh address.
pub fn sim_id(a: SocketAddr) -> SimId {
    match a.ip() {
        std::net::IpAddr::V4(ip) => SimId(u32::from(ip).wrapping_sub(0x0A00_0000)),
        std::net::IpAddr::V6(_) => SimId(u32::MAX),
    }
}

/// Node id of simulated node `i`.
pub fn node_id(i: u32) -> NodeId {
    let mut b = [0x5A; 32];
    b[..4].copy_from_slice(&(i + 1).to_le_bytes());
    NodeId(b)
}

/// Simulated node index of a node id.
pub fn index_of(id: &NodeId) -> u32 {
    u32::from_le_bytes([id.0[0], id.0[1], id.0[2], id.0[3]]) - 1
}

/// One simulated node.
pub struct SimNode {
    /// The core (built in `on_start`).
    pub m: Option<Membership>,
    idx: u32,
    bump: u32,
    seed: u64,
    config: Config,
    region: String,
    /// Whom to join on start.
    pub seeds: Vec<u32>,
    /// Last time this node declared each member dead.
    pub dead_at: BTreeMap<u32, Duration>,
    /// Members this node declared dead, in total.
    pub dead_events: u64,
    /// Dead declarations made here, per member.
    pub dead_of: BTreeMap<u32, u64>,
    /// Suspicions raised here, per member.
    pub suspects_of: BTreeMap<u32, u64>,
    /// Left events seen.
    pub left_events: u64,
    /// Member whose metadata changes are timed.
    pub watch: Option<NodeId>,
    /// Last time the watched member's metadata changed here.
    pub watch_changed_at: Option<Duration>,
    /// Datagrams refused.
    pub errors: u64,
}

impl SimNode {
    /// The core.
    pub fn m(&self) -> &Membership {
        self.m.as_ref().expect("started")
    }

    fn flush(&mut self, now: SimTime, out: &mut Outbox<Vec<u8>>) {
        let m = self.m.as_mut().expect("started");
        while let Some(t) = m.poll_transmit() {
            out.send(sim_id(t.to), t.data);
        }
        while let Some(e) = m.poll_event() {
            if std::env::var_os("SIM_TRACE").is_some() {
                eprintln!("{now:?} n{}: {e:?}", self.idx);
            }
            match e {
                Event::MemberDead(id) => {
                    self.dead_events += 1;
                    self.dead_at.insert(index_of(&id.id), now);
                    *self.dead_of.entry(index_of(&id.id)).or_default() += 1;
                }
                Event::MemberSuspect(id) => {
                    *self.suspects_of.entry(index_of(&id.id)).or_default() += 1;
                }
                Event::MemberLeft(_) => self.left_events += 1,
                Event::MetadataChanged(id) if Some(id) == self.watch => {
                    self.watch_changed_at = Some(now);
                }
                Event::Rejoined(id) => {
                    self.bump = id.bump;
                    out.persist(self.bump.to_le_bytes().to_vec());
                }
                _ => {}
            }
        }
    }
}

impl Process for SimNode {
    type Message = Vec<u8>;

    fn on_start(&mut self, now: SimTime, out: &mut Outbox<Vec<u8>>) {
        let identity = Identity {
            id: node_id(self.idx),
            addr: addr(self.idx),
            bump: self.bump,
        };
        let md = Metadata {
            region: self.region.clone(),
            labels: vec![("role".into(), "worker".into())],
            version: "0.1.0".into(),
            ..Metadata::default()
        };
        let seed = self.seed ^ (u64::from(self.idx) << 20) ^ u64::from(self.bump);
        let mut m =
            Membership::new(identity, md, self.config.clone(), seed, now).expect("metadata");
        for s in &self.seeds {
            if *s != self.idx {
                m.join(addr(*s), now).expect("join");
            }
        }
        self.m = Some(m);
        out.persist(self.bump.to_le_bytes().to_vec());
        self.flush(now, out);
    }

    fn on_message(&mut self, now: SimTime, _from: SimId, msg: Vec<u8>, out: &mut Outbox<Vec<u8>>) {
        if let Some(m) = self.m.as_mut()
            && m.handle_data(&msg, now).is_err()
        {
            self.errors += 1;
        }
        self.flush(now, out);
    }

    fn on_timer(&mut self, now: SimTime, out: &mut Outbox<Vec<u8>>) {
        self.m.as_mut().expect("started").handle_timeout(now);
        self.flush(now, out);
    }

    fn next_timer(&self) -> Option<SimTime> {
        self.m.as_ref()?.poll_timeout()
    }
}

/// A cluster in the simulator.
pub struct Cluster {
    /// The simulation.
    pub sim: Simulation<SimNode>,
}

/// Region names used by `Cluster::new`.
pub const REGIONS: [&str; 3] = ["eu", "us", "ap"];

impl Cluster {
    /// `n` nodes spread over the regions of `net` round robin; every node joins node 0 (node
    /// 0 joins nobody); restarts join nodes 0 and 1.
    pub fn new(n: u32, seed: u64, net: NetConfig, config: Config) -> Self {
        Self::with_skew(n, seed, net, config, 0)
    }

    /// Like `new`, each node's clock offset by a random amount in `[0, max_skew_nanos)`.
    pub fn with_skew(
        n: u32,
        seed: u64,
        net: NetConfig,
        config: Config,
        max_skew_nanos: i64,
    ) -> Self {
        let regions = net.rtt.len();
        Self::build(n, seed, net, config, max_skew_nanos, move |i| {
            i as usize % regions
        })
    }

    /// Like `new`, node `i` placed in region `region_of(i)` of `net`.
    pub fn with_regions(
        n: u32,
        seed: u64,
        net: NetConfig,
        config: Config,
        region_of: impl Fn(u32) -> usize + 'static,
    ) -> Self {
        Self::build(n, seed, net, config, 0, region_of)
    }

    fn build(
        n: u32,
        seed: u64,
        net: NetConfig,
        config: Config,
        max_skew_nanos: i64,
        region_of: impl Fn(u32) -> usize + 'static,
    ) -> Self {
        let region_of = std::rc::Rc::new(region_of);
        let placed = region_of.clone();
        let mut sim = Simulation::new(seed, net, move |id: SimId, disk: Option<&[u8]>| {
            let restarted = disk.is_some();
            let bump = disk
                .and_then(|d| d.try_into().ok())
                .map_or(0, |b: [u8; 4]| u32::from_le_bytes(b) + 1);
            SimNode {
                m: None,
                idx: id.0,
                bump,
                seed,
                config: config.clone(),
                region: REGIONS[placed(id.0) % REGIONS.len()].to_string(),
                seeds: if id.0 == 0 && !restarted {
                    vec![]
                } else {
                    vec![0, 1, 2]
                },
                dead_at: BTreeMap::new(),
                dead_events: 0,
                dead_of: BTreeMap::new(),
                suspects_of: BTreeMap::new(),
                left_events: 0,
                watch: None,
                watch_changed_at: None,
                errors: 0,
            }
        });
        sim.set_message_size(|m: &Vec<u8>| m.len());
        let mut x = seed | 1;
        for i in 0..n {
            // xorshift: a skew per node, reproducible per seed.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let skew = if max_skew_nanos > 0 {
                (x % max_skew_nanos as u64) as i64
            } else {
                0
            };
            sim.add_node_skewed(region_of(i), skew);
        }
        Self { sim }
    }

    /// Live nodes.
    pub fn live(&self) -> Vec<SimId> {
        self.sim.node_ids().filter(|i| self.sim.is_up(*i)).collect()
    }

    /// True when every live node sees every other live node alive (with its current bump).
    pub fn converged(&self) -> bool {
        let live = self.live();
        live.iter().all(|a| {
            let m = self.sim.node(*a).unwrap().m();
            live.iter().filter(|b| *b != a).all(|b| {
                let bump = self.sim.node(*b).unwrap().m().identity().bump;
                m.member_state(&node_id(b.0)) == Some((MemberState::Alive, bump))
            })
        })
    }

    /// Run until `converged`, checking every `step`; the time it happened.
    pub fn run_until_converged(&mut self, limit: Duration) -> Option<Duration> {
        self.run_until(limit, Duration::from_millis(100), |c| c.converged())
    }

    /// Run until `pred` holds, checking every `step`.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut pred: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let end = self.sim.now() + limit;
        while self.sim.now() < end {
            if pred(self) {
                return Some(self.sim.now());
            }
            self.sim.run_for(step);
        }
        pred(self).then(|| self.sim.now())
    }

    /// State of member `of` as seen by node `at`.
    pub fn state(&self, at: SimId, of: u32) -> Option<(MemberState, u32)> {
        self.sim.node(at)?.m().member_state(&node_id(of))
    }

    /// Suspicions and dead declarations of members for which `which` holds, summed over the
    /// live nodes.
    pub fn accusations(&self, which: impl Fn(u32) -> bool) -> (u64, u64) {
        let mut t = (0, 0);
        for i in self.live() {
            let n = self.sim.node(i).unwrap();
            t.0 += n
                .suspects_of
                .iter()
                .filter(|(k, _)| which(**k))
                .map(|(_, v)| v)
                .sum::<u64>();
            t.1 += n
                .dead_of
                .iter()
                .filter(|(k, _)| which(**k))
                .map(|(_, v)| v)
                .sum::<u64>();
        }
        t
    }

    /// Total dead declarations so far.
    pub fn dead_events(&self) -> u64 {
        self.live()
            .iter()
            .map(|i| self.sim.node(*i).unwrap().dead_events)
            .sum()
    }
}

/// A LAN: one region, 0.5 ms RTT, 20 % jitter, the given loss.
pub fn lan(loss: f64) -> NetConfig {
    let mut net = NetConfig::uniform(Duration::from_micros(500));
    net.jitter = 0.2;
    net.loss = loss;
    net
}

/// Three regions: RTTs 2/3/4 ms inside, 60/150/90 ms between.
pub fn three_regions() -> NetConfig {
    let ms = Duration::from_millis;
    let mut net = NetConfig::regions(vec![
        vec![ms(2), ms(60), ms(150)],
        vec![ms(60), ms(3), ms(90)],
        vec![ms(150), ms(90), ms(4)],
    ]);
    net.jitter = 0.1;
    net
}

impl Cluster {
    /// Why `converged` is false, summarised.
    pub fn diagnose(&self) -> String {
        let live = self.live();
        let mut wrong = std::collections::BTreeMap::<String, usize>::new();
        let mut example = Vec::new();
        for a in &live {
            let m = self.sim.node(*a).unwrap().m();
            for b in live.iter().filter(|b| *b != a) {
                let bump = self.sim.node(*b).unwrap().m().identity().bump;
                let st = m.member_state(&node_id(b.0));
                if st != Some((MemberState::Alive, bump)) {
                    *wrong.entry(format!("{st:?} want bump {bump}")).or_default() += 1;
                    if example.len() < 5 {
                        example.push(format!("{a} sees {b} as {st:?} (actual bump {bump})"));
                    }
                }
            }
        }
        format!("{wrong:?}\n{}", example.join("\n"))
    }
}
