//! Simulator behaviour: determinism, partitions, loss, latency, crashes, skew.

use std::time::Duration;

use aether_sim::{NetConfig, NodeId, Outbox, Process, SimTime, Simulation};

/// Every `period`, pings a random-ish peer (round robin); echoes pings; records RTTs.
struct Pinger {
    me: NodeId,
    n: u32,
    period: Duration,
    next: SimTime,
    seq: u32,
    sent: Vec<(u32, SimTime)>,
    rtts: Vec<Duration>,
    received: u64,
}

#[derive(Clone, Debug)]
enum Msg {
    Ping(u32),
    Pong(u32),
}

impl Pinger {
    fn new(me: NodeId, n: u32, period: Duration) -> Self {
        Self {
            me,
            n,
            period,
            next: Duration::ZERO,
            seq: 0,
            sent: Vec::new(),
            rtts: Vec::new(),
            received: 0,
        }
    }
}

impl Process for Pinger {
    type Message = Msg;

    fn on_start(&mut self, now: SimTime, _out: &mut Outbox<Msg>) {
        self.next = now + self.period;
    }

    fn on_message(&mut self, now: SimTime, from: NodeId, msg: Msg, out: &mut Outbox<Msg>) {
        self.received += 1;
        match msg {
            Msg::Ping(s) => out.send(from, Msg::Pong(s)),
            Msg::Pong(s) => {
                if let Some(i) = self.sent.iter().position(|(q, _)| *q == s) {
                    let (_, at) = self.sent.swap_remove(i);
                    self.rtts.push(now - at);
                }
            }
        }
    }

    fn on_timer(&mut self, now: SimTime, out: &mut Outbox<Msg>) {
        self.seq += 1;
        let to = NodeId((self.me.0 + 1 + self.seq % (self.n - 1).max(1)) % self.n);
        if to != self.me {
            out.send(to, Msg::Ping(self.seq));
            self.sent.push((self.seq, now));
        }
        self.next = now + self.period;
    }

    fn next_timer(&self) -> Option<SimTime> {
        Some(self.next)
    }
}

fn lossy_net() -> NetConfig {
    let ms = Duration::from_millis;
    NetConfig {
        rtt: vec![vec![ms(2), ms(80)], vec![ms(80), ms(4)]],
        jitter: 0.2,
        loss: 0.05,
        duplicate: 0.02,
        reorder: 0.1,
        reorder_delay: ms(30),
    }
}

fn run(seed: u64, n: u32) -> Simulation<Pinger> {
    let mut sim = Simulation::new(seed, lossy_net(), move |id, _| {
        Pinger::new(id, n, Duration::from_millis(100))
    });
    sim.set_message_size(|_| 16);
    for i in 0..n {
        sim.add_node((i % 2) as usize);
    }
    sim.set_clock_skew(NodeId(1), 5_000_000);
    sim.set_clock_skew(NodeId(2), -3_000_000);
    sim.run_for(Duration::from_secs(2));
    sim.crash(NodeId(3));
    sim.run_for(Duration::from_secs(1));
    sim.restart(NodeId(3));
    sim.run_for(Duration::from_secs(2));
    sim
}

#[test]
fn same_seed_same_trace() {
    let a = run(42, 10);
    let b = run(42, 10);
    assert_eq!(a.trace_hash(), b.trace_hash());
    assert_eq!(a.stats(), b.stats());
}

#[test]
fn different_seeds_differ() {
    let hashes: Vec<u64> = (0..4).map(|s| run(s, 10).trace_hash()).collect();
    for i in 0..hashes.len() {
        for j in i + 1..hashes.len() {
            assert_ne!(hashes[i], hashes[j], "seeds {i} and {j}");
        }
    }
}

#[test]
fn loss_rate_is_close_to_configured() {
    let mut net = NetConfig::uniform(Duration::from_millis(1));
    net.loss = 0.1;
    let mut sim = Simulation::new(9, net, |id, _| {
        Pinger::new(id, 20, Duration::from_millis(10))
    });
    for _ in 0..20 {
        sim.add_node(0);
    }
    sim.run_for(Duration::from_secs(20));
    let s = sim.stats();
    let rate = s.dropped_loss as f64 / s.sent as f64;
    // ~40k messages: 4 standard deviations is about 0.006.
    assert!(s.sent > 30_000, "{s:?}");
    assert!((rate - 0.1).abs() < 0.01, "loss rate {rate}");
}

#[test]
fn partitions_drop_cross_group_traffic_and_heal() {
    let mut sim = Simulation::new(1, NetConfig::uniform(Duration::from_millis(2)), |id, _| {
        Pinger::new(id, 4, Duration::from_millis(10))
    });
    let ids: Vec<NodeId> = (0..4).map(|_| sim.add_node(0)).collect();
    sim.partition(&[&ids[..2], &ids[2..]]);
    let before = sim.stats().clone();
    sim.run_for(Duration::from_secs(1));
    let during = sim.stats().clone();
    assert!(during.dropped_partition > before.dropped_partition);
    // Every pong matched a ping from the same side: no RTT to the other side was measured,
    // so each node's pings across the cut are still outstanding.
    for id in &ids {
        let p = sim.node(*id).unwrap();
        assert!(!p.sent.is_empty());
        for (seq, _) in &p.sent {
            let to = NodeId((id.0 + 1 + seq % 3) % 4);
            assert_ne!(to.0 / 2, id.0 / 2, "a same-side ping was lost");
        }
    }
    sim.heal();
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.stats().dropped_partition, during.dropped_partition);
}

#[test]
fn ping_pong_measures_configured_latency() {
    let ms = Duration::from_millis;
    let mut sim = Simulation::new(
        3,
        NetConfig::regions(vec![vec![ms(2), ms(100)], vec![ms(100), ms(10)]]),
        move |id, _| Pinger::new(id, 2, ms(50)),
    );
    let a = sim.add_node(0);
    let b = sim.add_node(1);
    sim.run_for(Duration::from_secs(1));
    for id in [a, b] {
        let rtts = &sim.node(id).unwrap().rtts;
        assert!(rtts.len() >= 15);
        assert!(rtts.iter().all(|r| *r == ms(100)), "{rtts:?}");
    }
}

#[test]
fn crash_drops_messages_and_restart_gets_persisted_state() {
    struct Counter {
        boots: u32,
    }
    impl Process for Counter {
        type Message = ();
        fn on_start(&mut self, _: SimTime, out: &mut Outbox<()>) {
            out.persist(self.boots.to_le_bytes().to_vec());
        }
        fn on_message(&mut self, _: SimTime, _: NodeId, _: (), _: &mut Outbox<()>) {}
        fn on_timer(&mut self, _: SimTime, _: &mut Outbox<()>) {}
        fn next_timer(&self) -> Option<SimTime> {
            None
        }
    }
    let mut sim = Simulation::new(
        0,
        NetConfig::uniform(Duration::from_millis(10)),
        |_, disk| {
            let prev = disk.map_or(0, |d| u32::from_le_bytes(d.try_into().unwrap()));
            Counter { boots: prev + 1 }
        },
    );
    let a = sim.add_node(0);
    let b = sim.add_node(0);
    sim.invoke(a, |_, _, out| out.send(b, ()));
    sim.crash(b);
    sim.run_until_idle();
    assert_eq!(sim.stats().dropped_down, 1);
    sim.restart(b);
    sim.restart(b);
    assert_eq!(sim.node(b).unwrap().boots, 3);
    assert_eq!(sim.restarts(b), 2);
}

#[test]
fn clock_skew_shifts_local_time_but_not_timers() {
    let mut sim = Simulation::new(0, NetConfig::uniform(Duration::from_millis(2)), |id, _| {
        Pinger::new(id, 2, Duration::from_millis(100))
    });
    let a = sim.add_node(0);
    let _b = sim.add_node(0);
    sim.set_clock_skew(a, 1_000_000_000);
    sim.run_for(Duration::from_millis(1000));
    assert_eq!(sim.local_time(a), Duration::from_millis(2000));
    // A period of 100 ms on a's clock is 100 ms globally: ~10 pings in 1 s.
    let p = sim.node(a).unwrap();
    assert!((9..=11).contains(&p.seq), "{}", p.seq);
    assert!(p.rtts.iter().all(|r| *r == Duration::from_millis(2)));
}
