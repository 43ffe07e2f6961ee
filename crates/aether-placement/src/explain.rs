//! The ranking of one deployment, member by member, for `alkahest status`.

use std::cmp::Ordering;
use std::time::Duration;

use crate::engine::{Entry, cmp_entries, rank_key};
use crate::hash::deployment_key;
use crate::view::View;
use crate::{Deployment, Member, MemberId, PlacementError};

/// One member in a deployment's ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    /// The member.
    pub member: MemberId,
    /// Its region.
    pub region: String,
    /// Weighted rendezvous score `w / −ln(u)` with `w` the member's allocatable memory in GiB:
    /// higher ranks first; 0 for a member that offers no memory.
    pub score: f64,
    /// Estimated RTT to the latency target's `from` region, when the deployment has a target and
    /// both sides have coordinates.
    pub rtt_from: Option<Duration>,
    /// Whether `rtt_from` is within the target's `p99` (`None` without a target or an RTT).
    pub within_latency: Option<bool>,
    /// Whether the member may host the deployment, and if not, why.
    pub eligibility: Eligibility,
}

/// Why a member may or may not host a deployment (the first reason that applies, in this order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Eligibility {
    /// It may host replicas, memory permitting once earlier deployments are accounted.
    Eligible,
    /// Membership does not consider it alive.
    Dead,
    /// The deployment is kept off it (a drain is moving it elsewhere).
    Excluded,
    /// Its region is not among the intent's regions.
    Region {
        /// The member's region.
        region: String,
    },
    /// It lacks a label the intent requires, or carries another value.
    Label {
        /// The label key.
        key: String,
        /// The value the intent requires.
        wanted: String,
        /// The member's value, if it has the key.
        found: Option<String>,
    },
    /// It runs on an architecture the intent does not list.
    Arch {
        /// The architectures the intent allows.
        wanted: Vec<String>,
        /// The member's architecture, if it advertises one.
        found: Option<String>,
    },
    /// It offers no memory to placement.
    NoMemory,
    /// Its allocatable memory is below one replica's.
    TooSmall {
        /// Memory the member offers to placement.
        allocatable: u64,
        /// Memory one replica needs.
        needed: u64,
    },
}

impl std::fmt::Display for Eligibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Eligibility::Eligible => f.write_str("eligible"),
            Eligibility::Dead => f.write_str("not alive"),
            Eligibility::Excluded => f.write_str("being drained"),
            Eligibility::Region { region } => write!(f, "region {region} is not allowed"),
            Eligibility::Label {
                key,
                wanted,
                found: Some(found),
            } => write!(f, "label {key}={found}, intent wants {key}={wanted}"),
            Eligibility::Label {
                key,
                wanted,
                found: None,
            } => write!(f, "no label {key} (intent wants {key}={wanted})"),
            Eligibility::Arch {
                wanted,
                found: Some(found),
            } => write!(
                f,
                "runs on {found}, intent wants arch {}",
                wanted.join(" or ")
            ),
            Eligibility::Arch {
                wanted,
                found: None,
            } => write!(
                f,
                "advertises no architecture (intent wants arch {})",
                wanted.join(" or ")
            ),
            Eligibility::NoMemory => f.write_str("offers no memory"),
            Eligibility::TooSmall {
                allocatable,
                needed,
            } => write!(
                f,
                "offers {} MiB, one replica needs {} MiB",
                allocatable >> 20,
                needed >> 20
            ),
        }
    }
}

fn eligibility(d: &Deployment, m: &Member, allocatable: u64) -> Eligibility {
    if !m.alive {
        return Eligibility::Dead;
    }
    if d.excluded.binary_search(&m.id).is_ok() {
        return Eligibility::Excluded;
    }
    intent_eligibility(d, m, allocatable)
}

/// The constraint of `deployment`'s intent that `member` does not meet itself (regions, labels,
/// architecture, memory for one replica), whatever its liveness and drains; `None` when it
/// meets them all. A node that does not host a deployment serves a request for it only when
/// this is `None`: an intent's constraints are promises (data residency, hardware), kept even
/// when no host can be reached.
pub fn unmet_constraint(deployment: &Deployment, member: &Member) -> Option<Eligibility> {
    match intent_eligibility(deployment, member, member.allocatable_memory()) {
        Eligibility::Eligible => None,
        other => Some(other),
    }
}

fn intent_eligibility(d: &Deployment, m: &Member, allocatable: u64) -> Eligibility {
    if !d.intent.regions.is_empty() && !d.intent.regions.contains(&m.region) {
        return Eligibility::Region {
            region: m.region.clone(),
        };
    }
    for (key, wanted) in &d.intent.labels {
        let found = m.labels.get(key);
        if found != Some(wanted) {
            return Eligibility::Label {
                key: key.clone(),
                wanted: wanted.clone(),
                found: found.cloned(),
            };
        }
    }
    let arch = m.labels.get(crate::ARCH_LABEL);
    if !d.intent.arch.is_empty() && !arch.is_some_and(|a| d.intent.arch.contains(a)) {
        return Eligibility::Arch {
            wanted: d.intent.arch.clone(),
            found: arch.cloned(),
        };
    }
    if allocatable == 0 {
        return Eligibility::NoMemory;
    }
    if allocatable < d.memory_per_replica {
        return Eligibility::TooSmall {
            allocatable,
            needed: d.memory_per_replica,
        };
    }
    Eligibility::Eligible
}

/// Every member in `deployment`'s ranking: the eligible ones first in rank order (the order
/// [`place`](crate::place) tries them, before memory taken by other deployments), then the
/// others by score, each with why it is excluded. Errors as [`place`](crate::place) does.
pub fn explain(
    deployment: &Deployment,
    members: &[Member],
) -> Result<Vec<Candidate>, PlacementError> {
    let view = View::new(members)?;
    let kd = deployment_key(&deployment.name);
    let latency = deployment.intent.latency.as_ref().and_then(|l| {
        view.rtt_to_region(&l.from)
            .map(|table| (table, l.p99.0.as_secs_f64()))
    });
    let mut rows: Vec<(bool, Entry, Candidate)> = (0..view.len())
        .map(|i| {
            let m = view.members[i];
            let k = rank_key(&view, kd, i);
            let rtt = latency
                .as_ref()
                .map(|(table, _)| table[i])
                .filter(|r| r.is_finite());
            let eligibility = eligibility(deployment, m, view.alloc[i]);
            let candidate = Candidate {
                member: m.id,
                region: m.region.clone(),
                score: if k.is_finite() {
                    1.0 / (k * f64::from(1u32 << 30))
                } else {
                    0.0
                },
                rtt_from: rtt
                    .map(|r| Duration::try_from_secs_f64(r.max(0.0)).unwrap_or(Duration::MAX)),
                within_latency: latency.as_ref().and_then(|(_, p99)| rtt.map(|r| r <= *p99)),
                eligibility,
            };
            let eligible = candidate.eligibility == Eligibility::Eligible;
            (eligible, Entry { k, idx: i as u32 }, candidate)
        })
        .collect();
    rows.sort_by(|a, b| match (a.0, b.0) {
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        _ => cmp_entries(&a.1, &b.1),
    });
    Ok(rows.into_iter().map(|(_, _, c)| c).collect())
}
