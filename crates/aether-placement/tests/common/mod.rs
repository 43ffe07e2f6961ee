//! Builders and an independent checker shared by the placement tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aether_manifest::{Intent, LatencyTarget, Replicas};
use aether_membership::Coordinate;
use aether_membership::vivaldi::{DIMENSIONS, HEIGHT_MIN};
use aether_placement::{Constraint, Deployment, Member, MemberId, Placement};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// A member id that sorts by `n` but is otherwise arbitrary.
pub fn id(n: u32) -> MemberId {
    let mut id = [0x5a; 32];
    id[..4].copy_from_slice(&n.to_be_bytes());
    id
}

/// A coordinate at `(x, y)` milliseconds in the plane (RTT = Euclidean distance + 2 × height).
pub fn at(x_ms: f64, y_ms: f64) -> Coordinate {
    let mut vec = [0.0; DIMENSIONS];
    vec[0] = x_ms / 1000.0;
    vec[1] = y_ms / 1000.0;
    Coordinate {
        vec,
        error: 0.2,
        adjustment: 0.0,
        height: HEIGHT_MIN,
    }
}

pub fn member(n: u32, region: &str, memory: u64) -> Member {
    Member {
        id: id(n),
        region: region.to_string(),
        labels: BTreeMap::new(),
        capacity_memory: memory,
        reserved_memory: 0,
        cores: 4,
        alive: true,
        coordinate: None,
    }
}

pub fn deployment(name: &str, desired: u32) -> Deployment {
    Deployment {
        name: name.to_string(),
        content_hash: [7; 32],
        intent: Intent {
            replicas: Replicas::Fixed(desired.max(1)),
            ..Intent::default()
        },
        memory_per_replica: 64 * MIB,
        desired,
        excluded: Vec::new(),
    }
}

pub fn latency(from: &str, p99_ms: u64) -> Option<LatencyTarget> {
    Some(LatencyTarget {
        from: from.to_string(),
        p99: aether_manifest::Duration(Duration::from_millis(p99_ms)),
    })
}

pub fn hosts(p: &Placement, name: &str) -> BTreeSet<MemberId> {
    p.assignments[name].iter().map(|(id, _)| *id).collect()
}

fn eligible(d: &Deployment, m: &Member) -> bool {
    m.alive
        && m.allocatable_memory() > 0
        && (d.intent.regions.is_empty() || d.intent.regions.contains(&m.region))
        && d.intent
            .labels
            .iter()
            .all(|(k, v)| m.labels.get(k) == Some(v))
        && (d.intent.arch.is_empty()
            || m.labels
                .get(aether_placement::ARCH_LABEL)
                .is_some_and(|a| d.intent.arch.contains(a)))
}

/// RTT of `m` to region `from`: the median of its distances to the alive members of `from` with
/// coordinates (the crate takes at most 32 of them; the tests stay below that).
pub fn rtt_to(members: &[Member], m: &Member, from: &str) -> Option<f64> {
    let c = m.coordinate.as_ref().filter(|_| m.alive)?;
    let mut d: Vec<f64> = members
        .iter()
        .filter(|r| r.alive && r.region == from)
        .filter_map(|r| r.coordinate.as_ref())
        .map(|rc| c.distance_secs(rc))
        .collect();
    assert!(
        d.len() <= 32,
        "checker assumes every member of `from` is a representative"
    );
    if d.is_empty() {
        return None;
    }
    d.sort_by(f64::total_cmp);
    Some(d[d.len() / 2])
}

/// Every constraint is respected, or the deployment has a report for it. Independent of the
/// implementation: it only reads inputs and output.
pub fn check(deployments: &[Deployment], members: &[Member], p: &Placement) -> Result<(), String> {
    let by_id: BTreeMap<MemberId, &Member> = members.iter().map(|m| (m.id, m)).collect();
    let mut order: Vec<&Deployment> = deployments.iter().collect();
    order.sort_by(|a, b| a.name.cmp(&b.name));
    let mut used: BTreeMap<MemberId, u64> = BTreeMap::new();
    if p.assignments.len() != deployments.len() {
        return Err(format!(
            "{} assignments for {} deployments",
            p.assignments.len(),
            deployments.len()
        ));
    }
    for d in order {
        let name = &d.name;
        let hosts = p
            .assignments
            .get(name)
            .ok_or(format!("{name}: no assignment"))?;
        let reported = |c: Constraint| {
            p.reports
                .iter()
                .any(|r| &r.deployment == name && r.constraint == c)
        };
        let free_before =
            |m: &Member| m.allocatable_memory() - used.get(&m.id).copied().unwrap_or(0);
        let mut seen = BTreeSet::new();
        let mut total = 0u32;
        for (id, count) in hosts {
            let m = by_id.get(id).ok_or(format!("{name}: unknown host"))?;
            if !seen.insert(*id) || *count == 0 {
                return Err(format!("{name}: host listed twice or with 0 instances"));
            }
            if !eligible(d, m) {
                return Err(format!("{name}: ineligible host in {}", m.region));
            }
            if u64::from(*count) * d.memory_per_replica > free_before(m) {
                return Err(format!("{name}: host over memory"));
            }
            total += count;
        }
        if total > d.desired {
            return Err(format!("{name}: {total} placed, {} desired", d.desired));
        }
        let with_room: Vec<&Member> = members
            .iter()
            .filter(|m| eligible(d, m) && free_before(m) >= d.memory_per_replica)
            .collect();
        let stacked = hosts.iter().any(|(_, c)| *c > 1);
        if (stacked || total < d.desired) && with_room.iter().any(|m| !seen.contains(&m.id)) {
            return Err(format!(
                "{name}: stacked or short while an eligible member with room is unused"
            ));
        }
        if total < d.desired
            && ![
                Constraint::Replicas,
                Constraint::Regions,
                Constraint::Labels,
                Constraint::Arch,
                Constraint::Memory,
            ]
            .into_iter()
            .any(reported)
        {
            return Err(format!(
                "{name}: {total} of {} placed, no report",
                d.desired
            ));
        }
        if let (Some(target), true) = (&d.intent.latency, total > 0) {
            let p99 = target.p99.0.as_secs_f64();
            let met = hosts
                .iter()
                .any(|(id, _)| rtt_to(members, by_id[id], &target.from).is_some_and(|r| r <= p99));
            if met == reported(Constraint::Latency) {
                return Err(format!(
                    "{name}: latency met = {met}, but reported = {}",
                    !met
                ));
            }
        }
        for (id, count) in hosts {
            *used.entry(*id).or_default() += u64::from(*count) * d.memory_per_replica;
        }
    }
    Ok(())
}
