//! Property tests of the placement function: determinism, equality with the exhaustive
//! reference, constraints respected or reported, minimal movement on join and leave.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use aether_placement::{Deployment, Member, place, place_exhaustive};
use common::*;
use proptest::prelude::*;

const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-southeast"];
/// Where each region sits in the plane (ms).
const POSITIONS: [(f64, f64); 4] = [(0.0, 0.0), (70.0, 0.0), (40.0, 150.0), (-60.0, 90.0)];

#[derive(Clone, Debug)]
struct MemberSpec {
    region: usize,
    tier: u8,
    gpu: u8,
    memory: u64,
    alive: bool,
    coordinate: Option<(f64, f64)>,
}

fn member_spec(capacities: &'static [u64]) -> impl Strategy<Value = MemberSpec> {
    (
        0..3usize,
        0..3u8,
        0..3u8,
        prop::sample::select(capacities),
        prop::bool::weighted(0.9),
        prop::option::weighted(0.9, (-8.0..8.0f64, -8.0..8.0f64)),
    )
        .prop_map(
            |(region, tier, gpu, memory, alive, coordinate)| MemberSpec {
                region,
                tier,
                gpu,
                memory,
                alive,
                coordinate,
            },
        )
}

fn build_member(n: u32, salt: u8, s: &MemberSpec) -> Member {
    let mut m = member(n, REGIONS[s.region], s.memory);
    m.id[31] = salt;
    if let Some(tier) = [None, Some("edge"), Some("core")][s.tier as usize] {
        m.labels.insert("tier".into(), tier.into());
    }
    if let Some(gpu) = [None, Some("yes"), Some("no")][s.gpu as usize] {
        m.labels.insert("gpu".into(), gpu.into());
    }
    // Built-in label of every node: a third of the members run on aarch64.
    let arch = if n.is_multiple_of(3) {
        "aarch64"
    } else {
        "x86_64"
    };
    m.labels
        .insert(aether_placement::ARCH_LABEL.into(), arch.into());
    m.alive = s.alive;
    m.coordinate = s.coordinate.map(|(dx, dy)| {
        let (x, y) = POSITIONS[s.region];
        at(x + dx, y + dy)
    });
    m
}

#[derive(Clone, Debug)]
struct DeploymentSpec {
    desired: u32,
    regions: u8,
    tier: bool,
    gpu: bool,
    spread: bool,
    latency: Option<(usize, u64)>,
    memory: u64,
}

fn deployment_spec(memories: &'static [u64]) -> impl Strategy<Value = DeploymentSpec> {
    (
        0..7u32,
        prop::sample::select(&[0u8, 0, 0, 1, 2, 3, 4, 6][..]),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.15),
        any::<bool>(),
        prop::option::weighted(0.4, (0..3usize, 3..200u64)),
        prop::sample::select(memories),
    )
        .prop_map(
            |(desired, regions, tier, gpu, spread, latency, memory)| DeploymentSpec {
                desired,
                regions,
                tier,
                gpu,
                spread,
                latency,
                memory,
            },
        )
}

fn build_deployment(i: usize, s: &DeploymentSpec) -> Deployment {
    let mut d = deployment(&format!("app-{i}"), s.desired);
    d.intent.regions = (0..3)
        .filter(|r| s.regions & (1 << r) != 0)
        .map(|r| REGIONS[r].to_string())
        .collect();
    if s.tier {
        d.intent.labels.insert("tier".into(), "edge".into());
    }
    if s.gpu {
        d.intent.labels.insert("gpu".into(), "yes".into());
    }
    if i % 4 == 1 {
        d.intent.arch = vec!["aarch64".into()];
    }
    d.intent.spread = s.spread;
    d.intent.latency = s.latency.and_then(|(r, ms)| latency(REGIONS[r], ms));
    d.memory_per_replica = s.memory;
    d
}

const TIGHT_CAPACITIES: &[u64] = &[0, 128 * MIB, 256 * MIB, GIB, 4 * GIB];
const TIGHT_MEMORIES: &[u64] = &[0, 64 * MIB, 128 * MIB, 512 * MIB, 2 * GIB];
const AMPLE_CAPACITIES: &[u64] = &[1 << 40, 2 << 40, 4 << 40];
const AMPLE_MEMORIES: &[u64] = &[64 * MIB, GIB];

fn scenario(
    capacities: &'static [u64],
    memories: &'static [u64],
) -> impl Strategy<Value = (Vec<Member>, Vec<Deployment>)> {
    scenario_sized(capacities, memories, 0..24)
}

fn scenario_sized(
    capacities: &'static [u64],
    memories: &'static [u64],
    members: std::ops::Range<usize>,
) -> impl Strategy<Value = (Vec<Member>, Vec<Deployment>)> {
    (
        prop::collection::vec(member_spec(capacities), members),
        prop::collection::vec(deployment_spec(memories), 0..14),
        any::<u8>(),
    )
        .prop_map(|(ms, ds, salt)| {
            let members = ms
                .iter()
                .enumerate()
                .map(|(i, s)| build_member(i as u32, salt, s))
                .collect();
            let deployments = ds
                .iter()
                .enumerate()
                .map(|(i, s)| build_deployment(i, s))
                .collect();
            (members, deployments)
        })
}

/// A deterministic Fisher–Yates shuffle driven by `seed`.
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        v.swap(i, (seed >> 33) as usize % (i + 1));
    }
}

/// Deployments whose placement put at most one instance on each host.
fn unstacked(p: &aether_placement::Placement, name: &str) -> bool {
    p.assignments[name].iter().all(|(_, c)| *c == 1)
}

/// Regions some deployment measures latency from: a member there joining or leaving shifts
/// that region's median RTTs, which may legitimately move a latency pick.
fn from_regions(deployments: &[Deployment]) -> BTreeSet<String> {
    deployments
        .iter()
        .filter_map(|d| d.intent.latency.as_ref().map(|l| l.from.clone()))
        .collect()
}

/// Replicas a join or leave may move besides its own: none, except with both `spread` and a
/// latency target, where the region balance follows the latency pick, so a new pick in another
/// region can shift one more replica.
fn allowance(d: &Deployment) -> usize {
    usize::from(d.intent.spread && d.intent.latency.is_some())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn same_inputs_in_any_order_same_placement(
        (members, deployments) in scenario(TIGHT_CAPACITIES, TIGHT_MEMORIES),
        seed in any::<u64>(),
    ) {
        let a = place(&deployments, &members).unwrap();
        let (mut m2, mut d2) = (members.clone(), deployments.clone());
        shuffle(&mut m2, seed);
        shuffle(&mut d2, seed ^ 0x9e37_79b9_7f4a_7c15);
        let b = place(&d2, &m2).unwrap();
        prop_assert_eq!(&a, &b);
    }

    #[test]
    fn top_k_shortcut_equals_exhaustive_ranking(
        (members, deployments) in scenario_sized(TIGHT_CAPACITIES, TIGHT_MEMORIES, 20..120),
    ) {
        prop_assert_eq!(
            place(&deployments, &members).unwrap(),
            place_exhaustive(&deployments, &members).unwrap()
        );
    }

    #[test]
    fn constraints_respected_or_reported(
        (members, deployments) in scenario(TIGHT_CAPACITIES, TIGHT_MEMORIES),
    ) {
        let p = place(&deployments, &members).unwrap();
        if let Err(e) = check(&deployments, &members, &p) {
            return Err(TestCaseError::fail(format!("{e}\n{p:#?}")));
        }
    }

    #[test]
    fn a_join_moves_replicas_only_to_the_newcomer(
        (members, deployments) in scenario(AMPLE_CAPACITIES, AMPLE_MEMORIES),
        newcomer in member_spec(AMPLE_CAPACITIES),
    ) {
        let before = place(&deployments, &members).unwrap();
        let mut newcomer = newcomer;
        newcomer.alive = true;
        let mut joined = build_member(1000, 0, &newcomer);
        if from_regions(&deployments).contains(&joined.region) {
            joined.coordinate = None;
        }
        let new_id = joined.id;
        let mut grown = members.clone();
        grown.push(joined);
        let after = place(&deployments, &grown).unwrap();
        check(&deployments, &grown, &after).map_err(TestCaseError::fail)?;
        for d in &deployments {
            if !unstacked(&before, &d.name) || !unstacked(&after, &d.name) {
                continue;
            }
            let (old, new) = (hosts(&before, &d.name), hosts(&after, &d.name));
            let elsewhere = new.difference(&old).filter(|id| **id != new_id).count();
            prop_assert!(
                elsewhere <= allowance(d),
                "{}: {elsewhere} replicas moved to old members on a join", d.name
            );
        }
    }

    #[test]
    fn a_leave_moves_only_the_replicas_it_hosted(
        (members, deployments) in scenario(AMPLE_CAPACITIES, AMPLE_MEMORIES),
        pick in any::<prop::sample::Index>(),
    ) {
        prop_assume!(!members.is_empty());
        let gone = pick.get(&members).clone();
        prop_assume!(!from_regions(&deployments).contains(&gone.region));
        let before = place(&deployments, &members).unwrap();
        let shrunk: Vec<Member> = members.iter().filter(|m| m.id != gone.id).cloned().collect();
        let after = place(&deployments, &shrunk).unwrap();
        for d in &deployments {
            if !unstacked(&before, &d.name) || !unstacked(&after, &d.name) {
                continue;
            }
            let (old, new) = (hosts(&before, &d.name), hosts(&after, &d.name));
            let left = old.difference(&new).filter(|id| **id != gone.id).count();
            prop_assert!(
                left <= allowance(d),
                "{}: {left} replicas left members that stayed", d.name
            );
        }
    }
}

/// Equal members, many deployments: one join moves about 1/(N+1) of the replicas, all to the
/// newcomer; one leave moves exactly the replicas the leaver hosted.
#[test]
fn movement_on_join_and_leave_is_about_one_over_n() {
    const N: u32 = 20;
    const D: usize = 3000;
    const R: u32 = 3;
    let regions = ["eu-west", "us-east", "ap-southeast"];
    let members: Vec<Member> = (0..N)
        .map(|i| member(i, regions[i as usize % 3], 1 << 40))
        .collect();
    let deployments: Vec<Deployment> = (0..D).map(|i| deployment(&format!("svc-{i}"), R)).collect();
    let before = place(&deployments, &members).unwrap();
    assert!(before.reports.is_empty());

    let count_moved = |a: &aether_placement::Placement, b: &aether_placement::Placement| {
        deployments
            .iter()
            .map(|d| hosts(a, &d.name).difference(&hosts(b, &d.name)).count())
            .sum::<usize>()
    };

    // Join.
    let mut grown = members.clone();
    grown.push(member(N, "eu-west", 1 << 40));
    let after = place(&deployments, &grown).unwrap();
    let moved = count_moved(&before, &after);
    let to_newcomer = after.hosted_by(&id(N)).len();
    let total = D * R as usize;
    let expected = total as f64 / f64::from(N + 1);
    eprintln!(
        "join: moved {moved} of {total} replicas (expected {expected:.0} = replicas/(N+1)), \
         {to_newcomer} to the newcomer"
    );
    assert_eq!(
        moved, to_newcomer,
        "every moved replica went to the newcomer"
    );
    assert!((moved as f64) < expected * 1.15 && (moved as f64) > expected * 0.85);

    // A newcomer with twice the memory takes about twice the share.
    let mut grown = members.clone();
    grown.push(member(N, "eu-west", 2 << 40));
    let after = place(&deployments, &grown).unwrap();
    let moved = count_moved(&before, &after) as f64;
    let expected = total as f64 * 2.0 / f64::from(N + 2);
    eprintln!("join with 2x memory: moved {moved} (expected about {expected:.0})");
    assert!(moved < expected * 1.15 && moved > expected * 0.85);

    // Leave.
    let shrunk: Vec<Member> = members[1..].to_vec();
    let after = place(&deployments, &shrunk).unwrap();
    let hosted = before.hosted_by(&id(0)).len();
    let moved = count_moved(&before, &after);
    eprintln!("leave: moved {moved}, the leaver hosted {hosted}");
    assert_eq!(moved, hosted);
}

/// Weights: a member with three times the memory gets about three times the replicas.
#[test]
fn replicas_follow_allocatable_memory() {
    let members = vec![member(1, "eu-west", GIB), member(2, "eu-west", 3 * GIB)];
    let deployments: Vec<Deployment> = (0..20_000)
        .map(|i| {
            let mut d = deployment(&format!("w-{i}"), 1);
            d.memory_per_replica = 0;
            d
        })
        .collect();
    let p = place(&deployments, &members).unwrap();
    let heavy = p.hosted_by(&id(2)).len() as f64 / 20_000.0;
    eprintln!("share of the 3 GiB member: {heavy:.4} (expected 0.75)");
    assert!((heavy - 0.75).abs() < 0.015, "{heavy}");
    let mut by_member: BTreeMap<_, usize> = BTreeMap::new();
    for hosts in p.assignments.values() {
        for (id, _) in hosts {
            *by_member.entry(*id).or_default() += 1;
        }
    }
    assert_eq!(by_member.values().sum::<usize>(), 20_000);
}
