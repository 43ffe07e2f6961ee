//! Placement recomputation time: 10 000 deployments on 1 000 members (bar: ≤ 100 ms), next to
//! reference runs in the same invocation.
//!
//! ```text
//! cargo run --release -p aether-placement --example placement_bench
//! ```
//!
//! The lattice: 10 regions of 100 members (16, 32 or 64 GiB; labels; 2 % dead; coordinates on a
//! plane, regions 20–250 ms apart). The deployments: 1–10 replicas (most 1–3), 20 % spread,
//! 20 % confined to 1–3 regions, 10 % with labels, 15 % with a latency target, 64–256 MiB each.
//! A second, memory-tight lattice (members at 1/8 of the memory) exercises the fallback to
//! exhaustive ranking when the best candidates are full.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use aether_manifest::{Intent, LatencyTarget, Replicas};
use aether_membership::Coordinate;
use aether_placement::{Deployment, Member, Placement, place, place_exhaustive};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const REGIONS: usize = 10;

/// A small deterministic generator (PCG-style LCG), so every run builds the same lattice.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn unit(&mut self) -> f64 {
        self.next() as f64 / (1u64 << 53) as f64
    }
}

fn region(r: usize) -> String {
    format!("region-{r}")
}

fn members(n: usize, memory_scale: u64, rng: &mut Lcg) -> Vec<Member> {
    (0..n)
        .map(|i| {
            let r = i % REGIONS;
            let angle = r as f64 / REGIONS as f64 * std::f64::consts::TAU;
            let mut coordinate = Coordinate::default();
            coordinate.vec[0] = 0.125 * angle.cos() + rng.unit() * 0.004;
            coordinate.vec[1] = 0.125 * angle.sin() + rng.unit() * 0.004;
            coordinate.error = 0.2;
            let mut id = [0u8; 32];
            for chunk in id.chunks_mut(8) {
                chunk.copy_from_slice(&rng.next().to_le_bytes());
            }
            let mut labels = BTreeMap::new();
            labels.insert("tier".to_string(), ["edge", "core"][i % 2].to_string());
            if rng.below(10) == 0 {
                labels.insert("gpu".to_string(), "yes".to_string());
            }
            Member {
                id,
                region: region(r),
                labels,
                capacity_memory: [16, 32, 64][rng.below(3) as usize] * GIB / memory_scale,
                reserved_memory: 0,
                cores: 8,
                alive: rng.below(50) != 0,
                coordinate: Some(coordinate),
            }
        })
        .collect()
}

fn deployments(n: usize, rng: &mut Lcg) -> Vec<Deployment> {
    (0..n)
        .map(|i| {
            let desired = match rng.below(10) {
                0..=5 => 1 + rng.below(3),
                6..=8 => 3 + rng.below(3),
                _ => 5 + rng.below(6),
            } as u32;
            let mut intent = Intent {
                replicas: Replicas::Fixed(desired),
                spread: rng.below(5) == 0,
                ..Intent::default()
            };
            if rng.below(5) == 0 {
                let k = 1 + rng.below(3);
                let regions: BTreeSet<String> = (0..k)
                    .map(|_| region(rng.below(REGIONS as u64) as usize))
                    .collect();
                intent.regions = regions.into_iter().collect();
            }
            if rng.below(10) == 0 {
                intent.labels.insert("tier".into(), "edge".into());
            }
            if rng.below(7) == 0 {
                intent.latency = Some(LatencyTarget {
                    from: region(rng.below(REGIONS as u64) as usize),
                    p99: aether_manifest::Duration(Duration::from_millis(20 + rng.below(180))),
                });
            }
            Deployment {
                name: format!("component-{i:05}"),
                content_hash: [0; 32],
                intent,
                memory_per_replica: [64, 128, 256][rng.below(3) as usize] * MIB,
                desired,
                excluded: Vec::new(),
            }
        })
        .collect()
}

/// Median and best of `runs` timed calls.
fn time(runs: usize, mut f: impl FnMut() -> Placement) -> (Duration, Duration, Placement) {
    let mut last = f(); // warm-up
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            last = black_box(f());
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[runs / 2], times[0], last)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(p: &Placement) -> String {
    let instances: u32 = p.assignments.keys().map(|k| p.instances(k)).sum();
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for r in &p.reports {
        *by.entry(r.constraint.to_string()).or_default() += 1;
    }
    let by: Vec<String> = by.iter().map(|(c, n)| format!("{c} {n}")).collect();
    format!("{instances} instances, reports: {}", by.join(", "))
}

fn main() {
    let mut rng = Lcg(0x00ae_7e52);
    let lattice = members(1000, 1, &mut rng);
    let tight = members(1000, 8, &mut Lcg(0x00ae_7e52));
    let big = deployments(10_000, &mut rng);
    let small: Vec<Deployment> = big[..1000].to_vec();
    let runs = 11;

    println!("placement recomputation, 1 000 members, median (best) of {runs} runs");
    let (full, full_best, p) = time(runs, || place(&big, &lattice).unwrap());
    println!(
        "  10 000 deployments:                    {:7.2} ms ({:.2})   {}",
        ms(full),
        ms(full_best),
        summary(&p)
    );
    let (reference, reference_best, p) = time(runs, || place(&small, &lattice).unwrap());
    println!(
        "   1 000 deployments (reference):        {:7.2} ms ({:.2})   {}",
        ms(reference),
        ms(reference_best),
        summary(&p)
    );
    let (exhaustive, exhaustive_best, pe) = time(3, || place_exhaustive(&big, &lattice).unwrap());
    println!(
        "  10 000 deployments, exhaustive ranking: {:6.2} ms ({:.2})   same result: {}",
        ms(exhaustive),
        ms(exhaustive_best),
        pe == place(&big, &lattice).unwrap()
    );
    let (tight_time, tight_best, pt) = time(runs, || place(&big, &tight).unwrap());
    println!(
        "  10 000 deployments, memory-tight:      {:7.2} ms ({:.2})   {}",
        ms(tight_time),
        ms(tight_best),
        summary(&pt)
    );

    // A join: how many replicas move.
    let before = place(&big, &lattice).unwrap();
    let mut grown = lattice.clone();
    let mut newcomer = lattice[0].clone();
    newcomer.id = [0xee; 32];
    grown.push(newcomer);
    let after = place(&big, &grown).unwrap();
    let (mut moved, mut total) = (0usize, 0usize);
    for (name, hosts) in &before.assignments {
        let new: BTreeSet<_> = after.assignments[name].iter().map(|(id, _)| id).collect();
        total += hosts.len();
        moved += hosts.iter().filter(|(id, _)| !new.contains(id)).count();
    }
    let weight: u64 = grown
        .iter()
        .filter(|m| m.alive)
        .map(|m| m.capacity_memory)
        .sum();
    println!(
        "  one member joins: {moved} of {total} hosts change ({:.3} %; its share of the weight: {:.3} %)",
        moved as f64 / total as f64 * 100.0,
        grown[grown.len() - 1].capacity_memory as f64 / weight as f64 * 100.0
    );
    println!(
        "ratio 10 000 / 1 000 deployments: {:.1}x; exhaustive / top-k: {:.1}x; bar 100 ms: {}",
        ms(full) / ms(reference),
        ms(exhaustive) / ms(full),
        if full <= Duration::from_millis(100) {
            "met"
        } else {
            "MISSED"
        }
    );
}
