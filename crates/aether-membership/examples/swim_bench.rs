//! Membership figures from the simulator: crash detection time vs SWIM's analytic expectation,
//! metadata dissemination in gossip rounds, bytes per second per node, false dead declarations
//! and Vivaldi accuracy, with memberlist's LAN defaults (1 s probe, 500 ms probe timeout,
//! suspicion multiplier 4) on a three-region network with 1 % loss.
//!
//! `cargo run --release -p aether-membership --example swim_bench -- 100 1000`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use aether_membership::{Config, MemberState};
use aether_sim::NodeId as SimId;
use common::{Cluster, node_id, three_regions};
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn main() {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000]
    } else {
        sizes
    };
    for n in sizes {
        bench(n);
    }
}

fn bench(n: u32) {
    let wall = Instant::now();
    let seed = 0xBEEF ^ u64::from(n);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut net = three_regions();
    net.loss = 0.01;
    let config = Config::lan(n);
    let suspicion = config.swim.suspect_to_down_after;
    let max_tx = config.swim.max_transmissions;
    let mut c = Cluster::new(n, seed, net, config);
    let conv = c.run_until_converged(Duration::from_secs(300));
    println!("== N = {n} (max_transmissions {max_tx}, suspicion {suspicion:?})");
    println!("join: all {n} nodes see all alive after {conv:?} (everyone joins one seed at t=0)");

    // Steady state: 10 simulated minutes at 1 % loss.
    c.sim.run_for(Duration::from_secs(30));
    let bytes0 = c.sim.stats().bytes_sent;
    let dead0 = c.dead_events();
    let steady = Duration::from_secs(600);
    c.sim.run_for(steady);
    let bytes = c.sim.stats().bytes_sent - bytes0;
    let false_dead = c.dead_events() - dead0;
    println!(
        "steady state, {:?} at 1 % loss: {:.0} bytes/s per node sent, false dead declarations: {false_dead}",
        steady,
        bytes as f64 / f64::from(n) / steady.as_secs_f64()
    );

    // Vivaldi accuracy, as seen by node 0 through disseminated coordinates and from each
    // node's own coordinate.
    let observer = c.sim.node(SimId(0)).unwrap().m();
    let mut seen = Vec::new();
    let mut own = Vec::new();
    let sample = n.min(300);
    for a in 0..sample {
        for b in a + 1..sample {
            let truth = c.sim.base_rtt(SimId(a), SimId(b)).as_secs_f64() * 1.05;
            if let Some(e) = observer.estimate_rtt(&node_id(a), &node_id(b)) {
                seen.push((e.as_secs_f64() - truth).abs() / truth);
            }
            let ca = *c.sim.node(SimId(a)).unwrap().m().coordinate();
            let cb = *c.sim.node(SimId(b)).unwrap().m().coordinate();
            own.push((ca.estimate_rtt(&cb).as_secs_f64() - truth).abs() / truth);
        }
    }
    println!(
        "vivaldi (RTTs 2–4 ms in-region, 60/90/150 ms across, 10 % jitter): median relative error {:.1} % (node 0's view), {:.1} % (own coordinates), p90 {:.1} %",
        100.0 * pct(&mut seen, 0.5),
        100.0 * pct(&mut own, 0.5),
        100.0 * pct(&mut own, 0.9)
    );

    // Crash detection.
    let trials = if n <= 200 { 20 } else { 10 };
    let mut all_dead = Vec::new();
    let mut per_node = Vec::new();
    for _ in 0..trials {
        let victim = loop {
            let v = SimId(rng.random_range(3..n));
            if c.sim.is_up(v) {
                break v;
            }
        };
        c.sim
            .run_for(Duration::from_millis(rng.random_range(0..1000)));
        c.sim.crash(victim);
        let t0 = c.sim.now();
        let done = c.run_until(Duration::from_secs(120), Duration::from_millis(100), |c| {
            c.live().iter().all(|i| {
                c.state(*i, victim.0)
                    .is_some_and(|s| s.0 == MemberState::Dead)
            })
        });
        let Some(t) = done else {
            println!("  crash of {victim}: not detected by everyone in 120 s");
            continue;
        };
        all_dead.push((t - t0).as_secs_f64());
        for i in c.live() {
            if let Some(at) = c.sim.node(i).unwrap().dead_at.get(&victim.0) {
                per_node.push((*at - t0).as_secs_f64());
            }
        }
    }
    // SWIM expectation with memberlist LAN parameters: the failed node is first probed after
    // (1/(1 − 1/e) − 1/2) periods on average, the probe cycle ends one period later (suspect),
    // the suspicion lasts 4·log10(N) periods, then the dead notice spreads in about
    // log4(N) gossip rounds of 200 ms.
    let t = 1.0;
    let expected = (1.0 / (1.0 - (-1.0f64).exp()) - 0.5) * t
        + t
        + 4.0 * f64::from(n).log10().max(1.0) * t
        + (f64::from(n).ln() / 4f64.ln()).ceil() * 0.2;
    if !all_dead.is_empty() {
        println!(
            "crash → every live node says dead ({} trials): median {:.2} s, p99 {:.2} s; SWIM expectation {:.2} s (median {:.2}×); per node: median {:.2} s, p99 {:.2} s",
            all_dead.len(),
            pct(&mut all_dead, 0.5),
            pct(&mut all_dead, 0.99),
            expected,
            pct(&mut all_dead, 0.5) / expected,
            pct(&mut per_node, 0.5),
            pct(&mut per_node, 0.99),
        );
    }

    // Metadata dissemination.
    let mut rounds = Vec::new();
    for trial in 0..5u32 {
        let src = loop {
            let v = SimId(rng.random_range(0..n));
            if c.sim.is_up(v) {
                break v;
            }
        };
        for i in c.live() {
            c.sim.invoke(i, |node, _, _| {
                node.watch = Some(node_id(src.0));
                node.watch_changed_at = None;
            });
        }
        let t0 = c.sim.now();
        c.sim.invoke(src, |node, now, out| {
            let m = node.m.as_mut().unwrap();
            let mut md = m.metadata().clone();
            md.load.instances = 1000 + trial;
            m.update_metadata(md, now).unwrap();
            while let Some(t) = m.poll_transmit() {
                out.send(common::sim_id(t.to), t.data);
            }
        });
        let live = c.live().len() - 1;
        let target = (live as f64 * 0.99).ceil() as usize;
        let done = c.run_until(Duration::from_secs(60), Duration::from_millis(20), |c| {
            c.live()
                .iter()
                .filter(|i| c.sim.node(**i).unwrap().watch_changed_at.is_some())
                .count()
                >= target
        });
        if let Some(t) = done {
            rounds.push((t - t0).as_secs_f64() / 0.2);
        }
    }
    if !rounds.is_empty() {
        println!(
            "metadata change → 99 % of nodes: median {:.1} gossip rounds of 200 ms ({:.2} s); log2(N) = {:.1}",
            pct(&mut rounds, 0.5),
            pct(&mut rounds, 0.5) * 0.2,
            f64::from(n).log2()
        );
    }
    println!(
        "(simulated {:?} in {:.1} s of wall time, {} messages)",
        c.sim.now(),
        wall.elapsed().as_secs_f64(),
        c.sim.stats().sent
    );
}
