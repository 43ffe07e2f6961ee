//! Eligibility groups (the members that satisfy a deployment's regions, labels and
//! architectures) and the outcome of a latency target: what the ranking in `engine` produces and
//! the explanations in `report` read.

use crate::view::View;

/// Signature of a deployment's eligibility: whether its regions are restricted, the indices
/// of its regions that some member is in (sorted), its labels, its architectures (sorted), and
/// the members it is kept off (sorted).
pub(crate) type GroupKey<'a> = (
    bool,
    Vec<u32>,
    Vec<(&'a str, &'a str)>,
    Vec<&'a str>,
    &'a [crate::MemberId],
);

/// A member of a [`Group`], with what the ranking loop reads, stored contiguously.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupMember {
    /// The member's key.
    pub key: u64,
    /// The member's [`bound_scale`](crate::hash::bound_scale).
    pub scale: f64,
    /// The member's index in the view.
    pub idx: u32,
    /// Position of the member's region in [`Group::regions`].
    pub slot: u32,
}

/// The members that satisfy a deployment's regions, labels and architectures (alive, offering
/// memory), shared by every deployment with the same ones.
pub(crate) struct Group {
    /// The members, by ascending index.
    pub members: Vec<GroupMember>,
    /// Distinct region indices of those members, ascending.
    pub regions: Vec<u32>,
}

impl Group {
    /// The group of `key`: regions restricted or not, the allowed region indices, the labels,
    /// the allowed architectures (empty: any).
    pub(crate) fn new(view: &View<'_>, key: &GroupKey<'_>) -> Self {
        let (restricted, regions, labels, arch, excluded) = key;
        let mut allowed = vec![!restricted; view.region_names.len()];
        for &r in regions {
            allowed[r as usize] = true;
        }
        let indices: Vec<usize> = view
            .usable
            .iter()
            .map(|&i| i as usize)
            .filter(|&i| {
                let member_labels = &view.members[i].labels;
                allowed[view.region[i] as usize]
                    && labels
                        .iter()
                        .all(|(k, v)| member_labels.get(*k).map(String::as_str) == Some(*v))
                    && (arch.is_empty()
                        || member_labels
                            .get(crate::ARCH_LABEL)
                            .is_some_and(|a| arch.contains(&a.as_str())))
                    && excluded.binary_search(&view.members[i].id).is_err()
            })
            .collect();
        let mut group_regions: Vec<u32> = indices.iter().map(|&i| view.region[i]).collect();
        group_regions.sort_unstable();
        group_regions.dedup();
        let mut slot_of_region = vec![0u32; view.region_names.len()];
        for (slot, &r) in group_regions.iter().enumerate() {
            slot_of_region[r as usize] = slot as u32;
        }
        let members = indices
            .iter()
            .map(|&i| {
                let slot = slot_of_region[view.region[i] as usize];
                GroupMember {
                    key: view.key[i],
                    scale: view.bound_scale[i],
                    idx: i as u32,
                    slot,
                }
            })
            .collect();
        Self {
            members,
            regions: group_regions,
        }
    }
}

/// How the latency target fared.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum LatencyOutcome {
    /// No target, or nothing to place.
    NotAsked,
    /// A replica is on a node within the target.
    Met,
    /// No eligible node is within the target. `best`: the nearest eligible node's RTT;
    /// `placed_at`: the RTT of the nearest node with room, which got the first replica.
    NoneWithin {
        best: Option<f64>,
        placed_at: Option<f64>,
    },
    /// `within` eligible nodes meet the target but none has room.
    NoRoom {
        within: usize,
        placed_at: Option<f64>,
    },
}
