//! The computation behind [`place`](crate::place): eligibility groups, top-k ranking with an
//! exact fallback, and the walk that picks hosts.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::group::{Group, GroupKey, LatencyOutcome};
use crate::hash::{deployment_key, lower_bound_units, neg_ln, pair, unit};
use crate::report;
use crate::view::View;
use crate::{Deployment, Placement, PlacementError};

/// Deployments wanting more replicas than this are ranked exhaustively.
const FAST_MAX_REPLICAS: u32 = 48;
/// Extra candidates kept beyond the replicas wanted (the latency pick may be among them).
const SLACK: usize = 2;
/// Extra candidates kept per region beyond its share when spreading.
const SLACK_PER_REGION: usize = 1;
/// Candidates kept among the members that meet the latency target.
const LATENCY_CANDIDATES: usize = 2;

/// How many candidates the buckets keep: a few, more, or all. A walk that runs out of a
/// truncated bucket (members without room) ranks again one level deeper.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Depth {
    Shallow,
    Deep,
    Exhaustive,
}

/// One ranked member: rendezvous key `k` (smaller ranks first) and member index.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Entry {
    pub k: f64,
    pub idx: u32,
}

/// The ranking order: smaller `k` first, then smaller member index (smaller id).
pub(crate) fn cmp_entries(a: &Entry, b: &Entry) -> Ordering {
    a.k.total_cmp(&b.k).then(a.idx.cmp(&b.idx))
}

/// The rendezvous key of deployment key `kd` on member `i`: `−ln(u) / w`, where `u` comes from
/// the pair hash and `w` is the member's allocatable memory. The member with the smallest key
/// ranks first, which is the highest weighted-rendezvous score `w / −ln(u)`.
pub(crate) fn rank_key(view: &View<'_>, kd: u64, i: usize) -> f64 {
    let (u, _) = unit(pair(kd, view.key[i]));
    neg_ln(u) * view.inv_w[i]
}

/// The best `cap` entries of the members offered (all of them when unbounded), in rank order.
/// Only members with room for one more replica are offered.
#[derive(Default)]
struct Bucket {
    cap: usize,
    items: Vec<Entry>,
    /// Key of the worst kept entry once full (infinite before): a larger key cannot enter.
    threshold: f64,
}

impl Bucket {
    fn reset(&mut self, cap: usize) {
        self.cap = cap.max(1);
        self.items.clear();
        self.threshold = f64::INFINITY;
    }

    /// Whether `items` surely holds every member offered, not only the best: true while the
    /// bucket is not full (a full bucket may have turned members away).
    fn complete(&self) -> bool {
        self.items.len() < self.cap
    }

    #[inline]
    fn offer(&mut self, e: Entry) {
        if self.cap == usize::MAX {
            self.items.push(e);
            return;
        }
        if self.items.len() >= self.cap {
            match self.items.last() {
                Some(last) if cmp_entries(&e, last) == Ordering::Less => {
                    self.items.pop();
                }
                _ => return,
            }
        }
        // Insertion sort step: the bucket is short.
        self.items.push(e);
        let mut j = self.items.len() - 1;
        while j > 0 && cmp_entries(&e, &self.items[j - 1]) == Ordering::Less {
            self.items[j] = self.items[j - 1];
            j -= 1;
        }
        self.items[j] = e;
        if self.items.len() >= self.cap {
            self.threshold = self.items[self.items.len() - 1].k;
        }
    }

    fn finish(&mut self) {
        if self.cap == usize::MAX {
            self.items.sort_unstable_by(cmp_entries);
        }
    }
}

/// The latency target of one deployment, resolved against the member view.
#[derive(Clone, Copy)]
pub(crate) struct Latency<'r> {
    /// Estimated RTT (seconds) of every member to the `from` region.
    pub rtt: &'r [f64],
    /// The target in seconds.
    pub p99: f64,
}

/// Memory left on each member, and what one replica needs.
#[derive(Clone, Copy)]
pub(crate) struct Room<'f> {
    pub free: &'f [u64],
    pub mem: u64,
}

/// What the walk decided.
pub(crate) struct Outcome {
    pub placed: u32,
    pub latency: LatencyOutcome,
}

/// A truncated candidate list ran out: rank deeper and walk again.
struct NeedMore;

/// Buffers reused across deployments.
#[derive(Default)]
struct Scratch {
    main: Bucket,
    within: Bucket,
    regional: Vec<Bucket>,
    cursors: Vec<usize>,
    counts: Vec<u32>,
    stamp: Vec<u32>,
    epoch: u32,
    chosen: Vec<(u32, u32)>,
}

#[inline]
fn fits(free: u64, instances: u32, mem: u64) -> bool {
    u128::from(instances) * u128::from(mem) <= u128::from(free)
}

impl Scratch {
    fn new(members: usize) -> Self {
        Self {
            stamp: vec![0; members],
            ..Self::default()
        }
    }

    /// Fill the candidate buckets for deployment key `kd` over `group`: the best few (per
    /// `depth`) overall, or per region when spreading, and among the members within the latency
    /// target.
    #[allow(clippy::too_many_arguments)]
    fn rank(
        &mut self,
        view: &View<'_>,
        kd: u64,
        group: &Group,
        n: u32,
        room: Room<'_>,
        spread: bool,
        latency: Option<Latency<'_>>,
        depth: Depth,
    ) {
        let depth = if n > FAST_MAX_REPLICAS {
            Depth::Exhaustive
        } else {
            depth
        };
        let cap = |c: usize| match depth {
            Depth::Shallow => c,
            Depth::Deep => 4 * c + 16,
            Depth::Exhaustive => usize::MAX,
        };
        let regions = group.regions.len();
        if spread {
            if self.regional.len() < regions {
                self.regional.resize_with(regions, Bucket::default);
            }
            let share = (n as usize).div_ceil(regions.max(1)) + SLACK_PER_REGION;
            for bucket in &mut self.regional[..regions] {
                bucket.reset(cap(share));
            }
        } else {
            self.main.reset(cap(n as usize + SLACK));
        }
        self.within.reset(cap(LATENCY_CANDIDATES));
        match (spread, latency) {
            (false, None) => self.scan::<false, false>(view, kd, group, room, &[], 0.0),
            (false, Some(l)) => self.scan::<false, true>(view, kd, group, room, l.rtt, l.p99),
            (true, None) => self.scan::<true, false>(view, kd, group, room, &[], 0.0),
            (true, Some(l)) => self.scan::<true, true>(view, kd, group, room, l.rtt, l.p99),
        }
        if spread {
            for b in &mut self.regional[..regions] {
                b.finish();
            }
        } else {
            self.main.finish();
        }
        self.within.finish();
    }

    /// The ranking loop, specialised on spreading and on having a latency target.
    #[inline(always)]
    fn scan<const SPREAD: bool, const LATENCY: bool>(
        &mut self,
        view: &View<'_>,
        kd: u64,
        group: &Group,
        room: Room<'_>,
        rtt: &[f64],
        p99: f64,
    ) {
        let Self {
            main,
            within,
            regional,
            ..
        } = self;
        for gm in &group.members {
            let h = pair(kd, gm.key);
            // −ln u ≥ 1 − u, so this bounds the key from below without a logarithm.
            let lower = lower_bound_units(h) * gm.scale;
            let bucket = if SPREAD {
                &mut regional[gm.slot as usize]
            } else {
                &mut *main
            };
            let is_within = LATENCY && rtt[gm.idx as usize] <= p99;
            if lower > bucket.threshold && (!is_within || lower > within.threshold) {
                continue;
            }
            // A member without room can take no replica of this deployment.
            if room.free[gm.idx as usize] < room.mem {
                continue;
            }
            let e = Entry {
                k: neg_ln(unit(h).0) * view.inv_w[gm.idx as usize],
                idx: gm.idx,
            };
            bucket.offer(e);
            if is_within {
                within.offer(e);
            }
        }
    }

    /// Choose hosts for `n` replicas of `mem` bytes from the ranked buckets, without changing
    /// `free`. Fails with [`NeedMore`] when it would read past a truncated bucket.
    #[allow(clippy::too_many_arguments)]
    fn walk(
        &mut self,
        view: &View<'_>,
        group: &Group,
        n: u32,
        mem: u64,
        free: &[u64],
        spread: bool,
        latency: Option<Latency<'_>>,
    ) -> Result<Outcome, NeedMore> {
        self.chosen.clear();
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.stamp.fill(0);
            self.epoch = 1;
        }
        let epoch = self.epoch;
        let room = |i: usize| fits(free[i], 1, mem);
        let regions = group.regions.len();
        if spread {
            self.cursors.clear();
            self.cursors.resize(regions, 0);
            self.counts.clear();
            self.counts.resize(regions, 0);
        }

        // 1. The latency target: the best-ranked member within it that has room takes the
        //    first replica; failing that, the nearest member with room.
        let mut latency_outcome = LatencyOutcome::NotAsked;
        if let Some(l) = latency {
            let mut pick = self
                .within
                .items
                .iter()
                .find(|e| room(e.idx as usize))
                .map(|e| e.idx as usize);
            if pick.is_some() {
                latency_outcome = LatencyOutcome::Met;
            } else {
                if !self.within.complete() {
                    return Err(NeedMore);
                }
                let mut best = f64::INFINITY;
                let mut within = 0;
                let mut nearest: Option<(f64, usize)> = None;
                for gm in &group.members {
                    let (i, rtt) = (gm.idx as usize, l.rtt[gm.idx as usize]);
                    best = best.min(rtt);
                    within += usize::from(rtt <= l.p99);
                    if rtt.is_finite() && room(i) && nearest.is_none_or(|(r, _)| rtt < r) {
                        nearest = Some((rtt, i));
                    }
                }
                let placed_at = nearest.map(|(r, _)| r);
                pick = nearest.map(|(_, i)| i);
                latency_outcome = if within == 0 {
                    LatencyOutcome::NoneWithin {
                        best: best.is_finite().then_some(best),
                        placed_at,
                    }
                } else {
                    LatencyOutcome::NoRoom { within, placed_at }
                };
            }
            if let Some(i) = pick {
                self.chosen.push((i as u32, 1));
                self.stamp[i] = epoch;
                if spread {
                    let slot = group.regions.partition_point(|&r| r < view.region[i]);
                    self.counts[slot] += 1;
                }
            }
        }

        // 2. One replica per member, in rank order (round-robin over regions when spreading).
        if spread {
            while self.chosen.len() < n as usize {
                let mut best: Option<(usize, u32, Entry)> = None;
                for slot in 0..regions {
                    let bucket = &self.regional[slot];
                    let cursor = &mut self.cursors[slot];
                    while let Some(e) = bucket.items.get(*cursor) {
                        let i = e.idx as usize;
                        if self.stamp[i] != epoch && room(i) {
                            break;
                        }
                        *cursor += 1;
                    }
                    let Some(e) = bucket.items.get(*cursor) else {
                        if !bucket.complete() {
                            return Err(NeedMore);
                        }
                        continue;
                    };
                    let count = self.counts[slot];
                    let better = match &best {
                        None => true,
                        Some((_, c, b)) => {
                            count < *c || (count == *c && cmp_entries(e, b) == Ordering::Less)
                        }
                    };
                    if better {
                        best = Some((slot, count, *e));
                    }
                }
                let Some((slot, _, e)) = best else { break };
                self.counts[slot] += 1;
                self.cursors[slot] += 1;
                self.stamp[e.idx as usize] = epoch;
                self.chosen.push((e.idx, 1));
            }
        } else {
            let mut cursor = 0;
            while self.chosen.len() < n as usize {
                let Some(e) = self.main.items.get(cursor) else {
                    if !self.main.complete() {
                        return Err(NeedMore);
                    }
                    break;
                };
                cursor += 1;
                let i = e.idx as usize;
                if self.stamp[i] != epoch && room(i) {
                    self.stamp[i] = epoch;
                    self.chosen.push((e.idx, 1));
                }
            }
        }

        // 3. Fewer members with room than replicas: stack further instances on the chosen
        //    members, one more each per round, while memory allows.
        let mut placed = self.chosen.len() as u32;
        while placed < n {
            let before = placed;
            for (i, count) in &mut self.chosen {
                if placed == n {
                    break;
                }
                if fits(free[*i as usize], *count + 1, mem) {
                    *count += 1;
                    placed += 1;
                }
            }
            if placed == before {
                break;
            }
        }
        Ok(Outcome {
            placed,
            latency: latency_outcome,
        })
    }
}

/// [`place`](crate::place), with the choice of exhaustive ranking (the reference the top-k
/// shortcut must match).
pub(crate) fn place(
    deployments: &[Deployment],
    members: &[crate::Member],
    exhaustive: bool,
) -> Result<Placement, PlacementError> {
    let view = View::new(members)?;
    let mut order: Vec<&Deployment> = deployments.iter().collect();
    order.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = order.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(PlacementError::DuplicateDeployment(w[0].name.clone()));
    }

    let mut free = view.alloc.clone();
    let mut groups: BTreeMap<GroupKey<'_>, Group> = BTreeMap::new();
    let mut rtts: BTreeMap<&str, Option<Vec<f64>>> = BTreeMap::new();
    let mut scratch = Scratch::new(view.len());
    let mut placement = Placement::default();
    let mut assignments = Vec::with_capacity(order.len());

    for d in order {
        let n = d.desired;
        if n == 0 {
            assignments.push((d.name.clone(), Vec::new()));
            continue;
        }
        let mut regions: Vec<u32> = d
            .intent
            .regions
            .iter()
            .filter_map(|r| view.region_names.binary_search(&r.as_str()).ok())
            .map(|r| r as u32)
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let labels: Vec<(&str, &str)> = d
            .intent
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mut arch: Vec<&str> = d.intent.arch.iter().map(String::as_str).collect();
        arch.sort_unstable();
        arch.dedup();
        let group = groups
            .entry((
                !d.intent.regions.is_empty(),
                regions,
                labels,
                arch,
                d.excluded.as_slice(),
            ))
            .or_insert_with_key(|key| Group::new(&view, key));

        let latency = match &d.intent.latency {
            Some(target) => {
                let table = rtts
                    .entry(target.from.as_str())
                    .or_insert_with(|| view.rtt_to_region(&target.from));
                match table {
                    Some(rtt) => Some(Latency {
                        rtt,
                        p99: target.p99.0.as_secs_f64(),
                    }),
                    None => {
                        placement
                            .reports
                            .push(report::latency_unjudged(d, &target.from));
                        None
                    }
                }
            }
            None => None,
        };

        // Nothing eligible: the shortage report says why; latency has nothing to judge.
        let latency = latency.filter(|_| !group.members.is_empty());
        let kd = deployment_key(&d.name);
        let mem = d.memory_per_replica;
        let spread = d.intent.spread;
        let mut depth = if exhaustive {
            Depth::Exhaustive
        } else {
            Depth::Shallow
        };
        let outcome = loop {
            let room = Room { free: &free, mem };
            scratch.rank(&view, kd, group, n, room, spread, latency, depth);
            match scratch.walk(&view, group, n, mem, &free, spread, latency) {
                Ok(outcome) => break outcome,
                Err(NeedMore) => {
                    depth = match depth {
                        Depth::Shallow => Depth::Deep,
                        Depth::Deep => Depth::Exhaustive,
                        Depth::Exhaustive => unreachable!("an exhaustive ranking is complete"),
                    }
                }
            }
        };
        if outcome.placed < n {
            placement
                .reports
                .push(report::shortage(&view, d, group, outcome.placed, &free));
        }
        if let Some(report) = report::latency(d, outcome.latency) {
            placement.reports.push(report);
        }
        let mut hosts = Vec::with_capacity(scratch.chosen.len());
        for &(i, count) in &scratch.chosen {
            free[i as usize] -= u64::from(count) * mem;
            hosts.push((*view.id(i as usize), count));
        }
        assignments.push((d.name.clone(), hosts));
    }
    // Already in name order: the map is built in bulk.
    placement.assignments = assignments.into_iter().collect();
    Ok(placement)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Member;

    fn members(n: u32) -> Vec<Member> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_le_bytes());
                Member {
                    id,
                    region: ["a", "b", "c", "d"][i as usize % 4].to_string(),
                    labels: Default::default(),
                    capacity_memory: (1 + u64::from(i % 5)) << 30,
                    reserved_memory: 0,
                    cores: 1,
                    alive: true,
                    coordinate: None,
                }
            })
            .collect()
    }

    /// The truncated buckets are exact prefixes of the exhaustive ranking.
    #[test]
    fn top_k_buckets_are_prefixes_of_the_full_ranking() {
        let ms = members(300);
        let view = View::new(&ms).unwrap();
        let group = Group::new(&view, &(false, vec![], vec![], vec![], &[]));
        let rtt: Vec<f64> = (0..ms.len()).map(|i| (i % 7) as f64 * 0.01).collect();
        let latency = Latency {
            rtt: &rtt,
            p99: 0.025,
        };
        let mut fast = Scratch::new(view.len());
        let mut full = Scratch::new(view.len());
        for d in 0..200u64 {
            let kd = crate::hash::deployment_key(&format!("d{d}"));
            let n = (d % 9) as u32 + 1;
            for (spread, depth) in [false, true]
                .into_iter()
                .flat_map(|s| [(s, Depth::Shallow), (s, Depth::Deep)])
            {
                let free: Vec<u64> = (0..ms.len() as u64).map(|i| (i % 3) << 30).collect();
                let room = Room {
                    free: &free,
                    mem: 1 << 30,
                };
                fast.rank(&view, kd, &group, n, room, spread, Some(latency), depth);
                full.rank(
                    &view,
                    kd,
                    &group,
                    n,
                    room,
                    spread,
                    Some(latency),
                    Depth::Exhaustive,
                );
                let prefix = |a: &Bucket, b: &Bucket| {
                    assert!(a.items.len() <= b.items.len());
                    assert!(b.complete());
                    for (x, y) in a.items.iter().zip(&b.items) {
                        assert_eq!((x.k.to_bits(), x.idx), (y.k.to_bits(), y.idx));
                    }
                };
                if spread {
                    for s in 0..group.regions.len() {
                        prefix(&fast.regional[s], &full.regional[s]);
                    }
                } else {
                    prefix(&fast.main, &full.main);
                    let cap = n as usize + SLACK;
                    let cap = if depth == Depth::Deep {
                        4 * cap + 16
                    } else {
                        cap
                    };
                    assert_eq!(fast.main.items.len(), cap);
                }
                prefix(&fast.within, &full.within);
                assert!(fast.within.items.len() >= LATENCY_CANDIDATES);
                assert!(
                    fast.within
                        .items
                        .iter()
                        .all(|e| free[e.idx as usize] >= 1 << 30)
                );
            }
        }
    }
}
