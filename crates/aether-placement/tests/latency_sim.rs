//! The latency target on a simulated five-region lattice: nodes learn Vivaldi coordinates by
//! pinging each other over `aether-sim`'s RTT matrix (with jitter), and placement, fed those
//! coordinates, puts a replica near the users the target names.

mod common;

use std::time::Duration;

use aether_membership::Coordinate;
use aether_membership::vivaldi::Vivaldi;
use aether_placement::{Constraint, Deployment, Member, place};
use aether_sim::{NetConfig, NodeId, Outbox, Process, SimTime, Simulation};
use common::*;
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};

const REGIONS: [&str; 5] = ["eu-west", "us-east", "us-west", "ap-southeast", "sa-east"];
/// Round trips between the regions, in ms (public cloud inter-region figures, rounded).
const RTT_MS: [[u64; 5]; 5] = [
    [2, 75, 140, 160, 190],
    [75, 2, 65, 220, 120],
    [140, 65, 2, 170, 175],
    [160, 220, 170, 2, 320],
    [190, 120, 175, 320, 2],
];
const PER_REGION: u32 = 5;
const AP: usize = 3;

#[derive(Clone)]
enum Msg {
    Ping {
        sent: SimTime,
    },
    Pong {
        sent: SimTime,
        coordinate: Coordinate,
    },
}

/// A node that pings a random peer every 200 ms and feeds the round trips to Vivaldi.
struct Pinger {
    me: u32,
    nodes: u32,
    vivaldi: Vivaldi<u32>,
    rng: StdRng,
    next: SimTime,
}

impl Process for Pinger {
    type Message = Msg;

    fn on_message(&mut self, now: SimTime, from: NodeId, msg: Msg, out: &mut Outbox<Msg>) {
        match msg {
            Msg::Ping { sent } => out.send(
                from,
                Msg::Pong {
                    sent,
                    coordinate: *self.vivaldi.coordinate(),
                },
            ),
            Msg::Pong { sent, coordinate } => {
                self.vivaldi
                    .update(&from.0, &coordinate, now - sent, &mut self.rng);
            }
        }
    }

    fn on_timer(&mut self, now: SimTime, out: &mut Outbox<Msg>) {
        let mut peer = self.rng.random_range(0..self.nodes - 1);
        if peer >= self.me {
            peer += 1;
        }
        out.send(NodeId(peer), Msg::Ping { sent: now });
        self.next = now + Duration::from_millis(200);
    }

    fn next_timer(&self) -> Option<SimTime> {
        Some(self.next)
    }
}

/// Run the lattice for two virtual minutes; return the members with learned coordinates.
fn learned_members(seed: u64) -> Vec<Member> {
    let rtt = RTT_MS
        .iter()
        .map(|row| row.iter().map(|&ms| Duration::from_millis(ms)).collect())
        .collect();
    let mut net = NetConfig::regions(rtt);
    net.jitter = 0.1;
    let nodes = REGIONS.len() as u32 * PER_REGION;
    let mut sim = Simulation::new(seed, net, move |id, _| Pinger {
        me: id.0,
        nodes,
        vivaldi: Vivaldi::default(),
        rng: StdRng::seed_from_u64(seed ^ u64::from(id.0)),
        next: Duration::from_millis(u64::from(id.0) * 7),
    });
    for i in 0..nodes {
        sim.add_node((i / PER_REGION) as usize);
    }
    sim.run_for(Duration::from_secs(120));
    (0..nodes)
        .map(|i| {
            let mut m = member(i, REGIONS[(i / PER_REGION) as usize], 16 * GIB);
            m.coordinate = Some(*sim.node(NodeId(i)).unwrap().vivaldi.coordinate());
            m
        })
        .collect()
}

fn region_of<'a>(members: &'a [Member], id: &[u8; 32]) -> &'a str {
    &members.iter().find(|m| &m.id == id).unwrap().region
}

fn apps(n: usize, target: Option<(&str, u64)>, regions: &[&str]) -> Vec<Deployment> {
    (0..n)
        .map(|i| {
            let mut d = deployment(&format!("app-{i}"), 2);
            d.intent.latency = target.and_then(|(from, ms)| latency(from, ms));
            d.intent.regions = regions.iter().map(|r| r.to_string()).collect();
            d
        })
        .collect()
}

#[test]
fn the_latency_target_decides_placement() {
    let members = learned_members(42);

    // What the coordinates say, next to the truth.
    for (r, name) in REGIONS.iter().enumerate() {
        let sample = &members[r * PER_REGION as usize];
        let row: Vec<String> = REGIONS
            .iter()
            .enumerate()
            .map(|(t, to)| {
                let est = rtt_to(&members, sample, to).unwrap() * 1000.0;
                format!("{to} {est:.0}/{}", RTT_MS[r][t])
            })
            .collect();
        eprintln!("{name:>12} → {}  (estimated/true ms)", row.join(", "));
        // Vivaldi is good to within 25 % (plus a few ms for the intra-region links).
        for (t, to) in REGIONS.iter().enumerate() {
            let est = rtt_to(&members, sample, to).unwrap() * 1000.0;
            let truth = RTT_MS[r][t] as f64;
            assert!(
                (est - truth).abs() <= truth * 0.25 + 5.0,
                "{name} → {to}: {est:.0} ms vs {truth} ms"
            );
        }
    }

    // Without a target, rendezvous hashing spreads replicas over all 25 nodes: about 2/5 of
    // the deployments get one in ap-southeast by chance.
    let free = place(&apps(50, None, &[]), &members).unwrap();
    let near = |p: &aether_placement::Placement| {
        p.assignments
            .values()
            .filter(|hosts| {
                hosts
                    .iter()
                    .any(|(id, _)| region_of(&members, id) == REGIONS[AP])
            })
            .count()
    };
    let by_chance = near(&free);

    // 30 ms from ap-southeast: only its own nodes qualify, so every deployment has one there,
    // and only one (the other replica still follows the ranking).
    let targeted = place(&apps(50, Some((REGIONS[AP], 30)), &[]), &members).unwrap();
    assert!(targeted.reports.is_empty(), "{:?}", targeted.reports);
    eprintln!(
        "deployments with a replica in ap-southeast: {by_chance}/50 without target, {}/50 with",
        near(&targeted)
    );
    assert_eq!(near(&targeted), 50);
    assert!(by_chance < 35, "{by_chance}");
    for hosts in targeted.assignments.values() {
        assert_eq!(
            region_of(&members, &hosts[0].0),
            REGIONS[AP],
            "the latency pick comes first"
        );
    }

    // Confined to the Americas, 200 ms from ap-southeast: us-west (170 ms) qualifies, us-east
    // (220) and sa-east (320) do not.
    let americas = place(
        &apps(
            50,
            Some((REGIONS[AP], 200)),
            &["us-east", "us-west", "sa-east"],
        ),
        &members,
    )
    .unwrap();
    assert!(americas.reports.is_empty(), "{:?}", americas.reports);
    for hosts in americas.assignments.values() {
        assert_eq!(region_of(&members, &hosts[0].0), "us-west");
    }

    // Confined to eu-west, 30 ms from ap-southeast: impossible; the report says by how much.
    let europe = place(&apps(1, Some((REGIONS[AP], 30)), &["eu-west"]), &members).unwrap();
    assert_eq!(
        europe.instances("app-0"),
        2,
        "placed anyway, as well as possible"
    );
    let report = &europe.reports[0];
    eprintln!("{report}");
    assert_eq!(report.constraint, Constraint::Latency);
    let best: f64 = report.detail["best node ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((best - 160.0).abs() < 40.0, "{}", report.detail);
    assert!(report.detail.contains("from ap-southeast, target 30 ms"));
}

#[test]
fn a_dead_host_near_the_users_is_replaced_by_another_near_one() {
    let mut members = learned_members(7);
    let deployments = apps(20, Some((REGIONS[AP], 30)), &[]);
    let before = place(&deployments, &members).unwrap();
    // Kill the ap-southeast node hosting app-0's latency replica.
    let victim = before.assignments["app-0"][0].0;
    members.iter_mut().find(|m| m.id == victim).unwrap().alive = false;
    let after = place(&deployments, &members).unwrap();
    assert!(after.reports.is_empty(), "{:?}", after.reports);
    for d in &deployments {
        let (old, new) = (&before.assignments[&d.name], &after.assignments[&d.name]);
        assert_eq!(region_of(&members, &new[0].0), REGIONS[AP]);
        assert!(new.iter().all(|(id, _)| *id != victim));
        // Deployments the victim did not host keep their hosts.
        if old.iter().all(|(id, _)| *id != victim) {
            assert_eq!(old, new, "{}", d.name);
        }
    }
}
