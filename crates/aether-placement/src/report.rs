//! What `alkahest status` says when an intent cannot be met: which constraint and by how much.

use std::fmt::Write;

use crate::group::{Group, LatencyOutcome};
use crate::view::View;
use crate::{Constraint, Deployment, Unsatisfied};

/// `134217728` → `"128 MiB"`, `1610612736` → `"1.5 GiB"`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.1}");
    let text = text.strip_suffix(".0").unwrap_or(&text);
    format!("{text} {}", UNITS[unit])
}

/// Seconds → `"48 ms"`, `"2.5 ms"`.
pub(crate) fn millis(secs: f64) -> String {
    let ms = secs * 1000.0;
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn list(items: &[&str]) -> String {
    format!("[{}]", items.join(", "))
}

/// `" in regions [eu-west] with labels {gpu=yes}"`, or `""` for an unconstrained intent.
fn scope(d: &Deployment) -> String {
    let mut s = String::new();
    if !d.intent.regions.is_empty() {
        let regions: Vec<&str> = d.intent.regions.iter().map(String::as_str).collect();
        let _ = write!(s, " in regions {}", list(&regions));
    }
    if !d.intent.labels.is_empty() {
        let labels: Vec<String> = d
            .intent
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = write!(s, " with labels {{{}}}", labels.join(", "));
    }
    if !d.intent.arch.is_empty() {
        let _ = write!(s, " on arch {}", d.intent.arch.join(" or "));
    }
    s
}

fn unsatisfied(d: &Deployment, constraint: Constraint, detail: String) -> Unsatisfied {
    Unsatisfied {
        deployment: d.name.clone(),
        constraint,
        detail,
    }
}

/// Fewer replicas placed than wanted: name the first constraint that rules the members out.
pub(crate) fn shortage(
    view: &View<'_>,
    d: &Deployment,
    group: &Group,
    placed: u32,
    free: &[u64],
) -> Unsatisfied {
    let n = d.desired;
    let mem = d.memory_per_replica;
    if group.members.is_empty() {
        let alive: Vec<usize> = (0..view.len()).filter(|&i| view.members[i].alive).collect();
        if alive.is_empty() {
            return unsatisfied(
                d,
                Constraint::Replicas,
                format!("wanted {n}, no member is alive"),
            );
        }
        let in_regions: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&i| {
                d.intent.regions.is_empty()
                    || d.intent.regions.iter().any(|r| r == view.region_name(i))
            })
            .collect();
        if in_regions.is_empty() {
            let mut present: Vec<&str> = alive.iter().map(|&i| view.region_name(i)).collect();
            present.sort_unstable();
            present.dedup();
            let wanted: Vec<&str> = d.intent.regions.iter().map(String::as_str).collect();
            return unsatisfied(
                d,
                Constraint::Regions,
                format!(
                    "wanted {n}, no alive member in regions {}; alive members are in {}",
                    list(&wanted),
                    list(&present)
                ),
            );
        }
        let labelled = in_regions.iter().filter(|&&i| {
            let labels = &view.members[i].labels;
            d.intent
                .labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        });
        let labelled: Vec<usize> = labelled.copied().collect();
        if labelled.is_empty() {
            let per_label: Vec<String> = d
                .intent
                .labels
                .iter()
                .map(|(k, v)| {
                    let count = in_regions
                        .iter()
                        .filter(|&&i| view.members[i].labels.get(k) == Some(v))
                        .count();
                    format!("{k}={v} on {count}")
                })
                .collect();
            let region_scope = if d.intent.regions.is_empty() {
                String::new()
            } else {
                let regions: Vec<&str> = d.intent.regions.iter().map(String::as_str).collect();
                format!(" in regions {}", list(&regions))
            };
            return unsatisfied(
                d,
                Constraint::Labels,
                format!(
                    "wanted {n}, none of the {} alive members{region_scope} carries all the labels ({})",
                    in_regions.len(),
                    per_label.join(", ")
                ),
            );
        }
        if !d.intent.arch.is_empty() {
            let on_arch = labelled.iter().filter(|&&i| {
                view.members[i]
                    .labels
                    .get(crate::ARCH_LABEL)
                    .is_some_and(|a| d.intent.arch.contains(a))
            });
            if on_arch.count() == 0 {
                let mut present: Vec<&str> = labelled
                    .iter()
                    .map(|&i| {
                        view.members[i]
                            .labels
                            .get(crate::ARCH_LABEL)
                            .map_or("unknown", String::as_str)
                    })
                    .collect();
                present.sort_unstable();
                present.dedup();
                return unsatisfied(
                    d,
                    Constraint::Arch,
                    format!(
                        "wanted {n} on arch {}, the {} alive members that qualify otherwise run on {}",
                        d.intent.arch.join(" or "),
                        labelled.len(),
                        list(&present)
                    ),
                );
            }
        }
        return unsatisfied(
            d,
            Constraint::Memory,
            format!(
                "wanted {n}, the alive members{} offer no memory to placement",
                scope(d)
            ),
        );
    }
    let eligible = group.members.len();
    let with_room = group
        .members
        .iter()
        .filter(|gm| free[gm.idx as usize] >= mem)
        .count();
    let largest_other = group
        .members
        .iter()
        .map(|gm| free[gm.idx as usize])
        .filter(|&f| f < mem)
        .max();
    let (how_many, verb) = if with_room == 0 {
        ("none".to_string(), "has")
    } else {
        (format!("only {with_room}"), "have")
    };
    let mut detail = format!(
        "wanted {n} replicas of {}, placed {placed}: {how_many} of the {eligible} eligible \
         nodes{} {verb} {} free after the deployments before it by name",
        bytes(mem),
        scope(d),
        bytes(mem)
    );
    if let Some(largest) = largest_other {
        let _ = write!(detail, "; the others have at most {} free", bytes(largest));
    }
    unsatisfied(d, Constraint::Memory, detail)
}

/// The latency target could not be met, or not judged.
pub(crate) fn latency(d: &Deployment, outcome: LatencyOutcome) -> Option<Unsatisfied> {
    let target = d.intent.latency.as_ref()?;
    let p99 = millis(target.p99.0.as_secs_f64());
    let from = &target.from;
    let placed = |at: Option<f64>| match at {
        Some(rtt) => format!(
            "; the nearest node with room ({}) got a replica",
            millis(rtt)
        ),
        None => "; no eligible node has both room and a known RTT".to_string(),
    };
    let detail = match outcome {
        LatencyOutcome::NotAsked | LatencyOutcome::Met => return None,
        LatencyOutcome::NoneWithin {
            best: Some(best),
            placed_at,
        } => format!(
            "best node {} from {from}, target {p99}{}",
            millis(best),
            placed(placed_at)
        ),
        LatencyOutcome::NoneWithin {
            best: None,
            placed_at: _,
        } => format!("no eligible node has a network coordinate to judge {p99} from {from}"),
        LatencyOutcome::NoRoom { within, placed_at } => format!(
            "{within} eligible nodes are within {p99} of {from} but none has {} free{}",
            bytes(d.memory_per_replica),
            placed(placed_at)
        ),
    };
    Some(unsatisfied(d, Constraint::Latency, detail))
}

/// No alive member of the `from` region has a coordinate: the target cannot be judged.
pub(crate) fn latency_unjudged(d: &Deployment, from: &str) -> Unsatisfied {
    let p99 = d
        .intent
        .latency
        .as_ref()
        .map(|l| millis(l.p99.0.as_secs_f64()))
        .unwrap_or_default();
    unsatisfied(
        d,
        Constraint::Latency,
        format!(
            "no alive member of region {from} has a network coordinate, so the target {p99} \
             cannot be judged; replicas placed without it"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(bytes(100), "100 B");
        assert_eq!(bytes(128 << 20), "128 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
        assert_eq!(millis(0.048), "48 ms");
        assert_eq!(millis(0.0025), "2.5 ms");
    }
}
