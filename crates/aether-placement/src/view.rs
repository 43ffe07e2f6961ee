//! The member view prepared once per computation: members sorted by id, with their keys,
//! weights and interned regions, and the per-region RTT tables of latency targets.

use aether_membership::Coordinate;

use crate::hash::{bound_scale, member_key};
use crate::{Member, MemberId, PlacementError, hex};

/// At most this many members of the `from` region stand for it when latency is judged.
pub(crate) const REPRESENTATIVES: usize = 32;

/// Members in id order, with what the ranking needs in flat arrays.
pub(crate) struct View<'a> {
    /// The members, sorted by id.
    pub members: Vec<&'a Member>,
    /// [`member_key`] of each member.
    pub key: Vec<u64>,
    /// Memory each member offers to placement.
    pub alloc: Vec<u64>,
    /// `1 / alloc` (as `f64`), the factor of the rendezvous key; infinite when `alloc` is 0.
    pub inv_w: Vec<f64>,
    /// [`bound_scale`] of `inv_w`, for the candidate filter.
    pub bound_scale: Vec<f64>,
    /// Indices of the members that may host anything: alive and offering memory.
    pub usable: Vec<u32>,
    /// Index of each member's region in `region_names`.
    pub region: Vec<u32>,
    /// Distinct region names, sorted.
    pub region_names: Vec<&'a str>,
}

impl<'a> View<'a> {
    /// Prepare `members`; refuses two members with one id.
    pub fn new(members: &'a [Member]) -> Result<Self, PlacementError> {
        let mut sorted: Vec<&Member> = members.iter().collect();
        sorted.sort_by_key(|m| m.id);
        if let Some(w) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(PlacementError::DuplicateMember(hex(&w[0].id)));
        }
        let mut region_names: Vec<&str> = sorted.iter().map(|m| m.region.as_str()).collect();
        region_names.sort_unstable();
        region_names.dedup();
        let region = sorted
            .iter()
            .map(|m| region_names.binary_search(&m.region.as_str()).unwrap_or(0) as u32)
            .collect();
        let alloc: Vec<u64> = sorted.iter().map(|m| m.allocatable_memory()).collect();
        let inv_w: Vec<f64> = alloc.iter().map(|&a| 1.0 / a as f64).collect();
        let usable = (0..sorted.len())
            .filter(|&i| sorted[i].alive && alloc[i] > 0)
            .map(|i| i as u32)
            .collect();
        Ok(Self {
            usable,
            key: sorted.iter().map(|m| member_key(&m.id)).collect(),
            bound_scale: inv_w.iter().map(|&w| bound_scale(w)).collect(),
            inv_w,
            alloc,
            region,
            region_names,
            members: sorted,
        })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The member's id.
    pub fn id(&self, i: usize) -> &MemberId {
        &self.members[i].id
    }

    /// The member's region name.
    pub fn region_name(&self, i: usize) -> &'a str {
        self.region_names[self.region[i] as usize]
    }

    /// The member's coordinate, if it is alive and has a valid one.
    pub fn coordinate(&self, i: usize) -> Option<&'a Coordinate> {
        let m = self.members[i];
        m.coordinate.as_ref().filter(|c| m.alive && c.is_valid())
    }

    /// Each member's estimated RTT in seconds to region `from`: the median (the upper one for
    /// an even count) of its Vivaldi distances to the region's representatives, which are the
    /// alive members of `from` with a valid coordinate, the [`REPRESENTATIVES`] with the
    /// smallest member keys. Infinite for a member without a coordinate; `None` when `from` has
    /// no representative.
    pub fn rtt_to_region(&self, from: &str) -> Option<Vec<f64>> {
        let mut reps: Vec<(u64, &Coordinate)> = (0..self.len())
            .filter(|&i| self.region_name(i) == from)
            .filter_map(|i| self.coordinate(i).map(|c| (self.key[i], c)))
            .collect();
        if reps.is_empty() {
            return None;
        }
        reps.sort_by_key(|r| r.0);
        reps.truncate(REPRESENTATIVES);
        let mut buf = [0.0f64; REPRESENTATIVES];
        let rtts = (0..self.len())
            .map(|i| match self.coordinate(i) {
                Some(c) => {
                    let d = &mut buf[..reps.len()];
                    for (slot, (_, rep)) in d.iter_mut().zip(&reps) {
                        *slot = c.distance_secs(rep);
                    }
                    let middle = d.len() / 2;
                    *d.select_nth_unstable_by(middle, f64::total_cmp).1
                }
                None => f64::INFINITY,
            })
            .collect();
        Some(rtts)
    }
}
