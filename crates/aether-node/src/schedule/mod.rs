//! This node's share of the lattice's placement (DESIGN §3.5).
//!
//! Every node runs the same pure function, [`aether_placement::place`], on
//! the deployments it holds (every node holds every deployment's essence,
//! replicated through the lattice state) and its membership view, and acts
//! only on its own share: a deployment placed here is *hosted* (loaded and
//! served), any other is on *standby* (its compiled code stays in the cache,
//! and requests for it are forwarded to a host). There is no leader: when a
//! member dies, each survivor recomputes the same ranking and the next node
//! in it starts the replica by itself.
//!
//! Placement is recomputed when the deployments change, when membership
//! changes (a member alive or not, its region, labels or memory), and every
//! few seconds (coordinates drift: latency targets and the nearest host).

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::hash::{Hash as _, Hasher as _};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aether_identity::NodeId;
use aether_manifest::Replicas;
use aether_mesh::{Member, MemberStatus, MeshHandle};
use arc_swap::ArcSwap;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::deployments::{Deployment, Deployments};

pub(crate) mod hosts;

/// How often membership is looked at for changes.
const PERIOD: Duration = Duration::from_millis(250);
/// Placement is recomputed at least this often, because coordinates move
/// (latency targets, and the order in which hosts are tried).
const REFRESH: Duration = Duration::from_secs(5);
/// A deployment not hosted here is unloaded once it has served nothing for
/// this long (it may have served requests no host could take).
const STANDBY_UNLOAD_AFTER: Duration = Duration::from_secs(5);
/// Placement changes remembered for `alkahest status`.
const CHANGES_KEPT: usize = 64;

/// Drained members by id, each with the deployments that may still stay on it.
pub(crate) type Drained = BTreeMap<[u8; 32], BTreeSet<String>>;

/// One host of a deployment, as this node sees it.
#[derive(Clone, Debug)]
pub(crate) struct Host {
    /// The member.
    pub id: NodeId,
    /// Instances placed on it.
    pub instances: u32,
    /// Where its mesh listens.
    pub mesh_addr: SocketAddr,
    /// Estimated round-trip time from this node.
    pub rtt: Option<Duration>,
    /// Alive (not merely suspect).
    pub healthy: bool,
    /// Its incarnation (raised when it restarts).
    pub incarnation: u32,
}

impl Host {
    /// `m` as a host of `instances` instances.
    fn of(m: &Member, instances: u32) -> Self {
        Self {
            id: m.id,
            instances,
            mesh_addr: m.mesh_addr,
            rtt: m.rtt,
            healthy: m.status == MemberStatus::Alive,
            incarnation: m.incarnation,
        }
    }
}

/// The placement this node computed last.
#[derive(Default)]
pub(crate) struct View {
    /// Whether it came from a membership view (false until the first
    /// computation, and on a node without a mesh).
    pub meshed: bool,
    /// Hosts of every deployment, in placement order.
    pub hosts: BTreeMap<String, Vec<Host>>,
    /// Replicas wanted per deployment.
    pub desired: BTreeMap<String, u32>,
    /// What placement could not satisfy.
    pub reports: Vec<aether_placement::Unsatisfied>,
    /// Unix milliseconds of the computation.
    pub computed_at_ms: u64,
    /// The member view placement ran on (for rankings).
    pub members: Vec<aether_placement::Member>,
    /// The deployments placement ran on, by name (for rankings).
    pub inputs: BTreeMap<String, aether_placement::Deployment>,
    /// Mesh addresses of the members.
    pub addresses: BTreeMap<NodeId, SocketAddr>,
    /// For each deployment scaled to zero, the member that would host its
    /// first replica: requests go there and activate it.
    pub standby: BTreeMap<String, Host>,
    /// Where other nodes send each deployment's requests, in the order to
    /// try: its hosts, healthy first, nearest first; or, scaled to zero, its
    /// standby member. Computed once per placement, not per request.
    pub forward: BTreeMap<String, Arc<[Host]>>,
}

/// Where the ingress sends a request for a deployment.
pub(crate) enum RouteTo {
    /// Serve it here.
    Here,
    /// Forward it to one of these hosts, in this order.
    Hosts(Arc<[Host]>),
    /// Placement found no host that satisfies the intent; why.
    Unplaced(String),
}

impl View {
    /// The hosts of `name` other than `me`, in the order [`View::route`]
    /// would try them; `None` when there are none.
    pub(crate) fn other_hosts(&self, name: &str, me: &NodeId) -> Option<Arc<[Host]>> {
        let others: Arc<[Host]> = self
            .forward
            .get(name)?
            .iter()
            .filter(|h| h.id != *me)
            .cloned()
            .collect();
        (!others.is_empty()).then_some(others)
    }

    /// The constraint of `name`'s intent that `me` does not meet itself, when there is one (see
    /// [`aether_placement::unmet_constraint`]); `None` also when this view has no record of
    /// either.
    pub(crate) fn unmet_here(
        &self,
        name: &str,
        me: &NodeId,
    ) -> Option<aether_placement::Eligibility> {
        let deployment = self.inputs.get(name)?;
        let member = self.members.iter().find(|m| m.id == *me.as_bytes())?;
        aether_placement::unmet_constraint(deployment, member)
    }

    /// Where a request for `name` goes from node `me`: here when `me` hosts
    /// it (or before any placement was computed); else its hosts, healthy
    /// ones first, nearest first. A deployment scaled to zero goes to its
    /// best-ranked member, which activates it.
    pub(crate) fn route(&self, name: &str, me: &NodeId) -> RouteTo {
        if !self.meshed {
            return RouteTo::Here;
        }
        if let Some(targets) = self.forward.get(name) {
            return if targets.iter().any(|h| h.id == *me) {
                RouteTo::Here
            } else {
                RouteTo::Hosts(targets.clone())
            };
        }
        match self.desired.get(name) {
            // Newer than this placement (placed on the next round), or
            // scaled to zero with no member to activate it.
            None | Some(0) => RouteTo::Here,
            Some(_) => {
                let why: Vec<String> = self
                    .reports
                    .iter()
                    .filter(|r| r.deployment == name)
                    .map(|r| format!("{}: {}", r.constraint, r.detail))
                    .collect();
                RouteTo::Unplaced(if why.is_empty() {
                    "no member can host it".to_string()
                } else {
                    why.join("; ")
                })
            }
        }
    }
}

/// One placement change, for `alkahest status`.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Change {
    /// Unix seconds.
    pub at: u64,
    /// The deployment.
    pub deployment: String,
    /// Members that started hosting it.
    pub added: Vec<String>,
    /// Members that stopped hosting it.
    pub removed: Vec<String>,
    /// What changed in the inputs.
    pub reason: String,
}

/// Replicas wanted for a deployment: the fixed count, or for a range the
/// autoscaled value (`scaled`, clamped), else `max(min, 1)`.
pub fn desired(replicas: &Replicas, scaled: Option<u32>) -> u32 {
    match *replicas {
        Replicas::Fixed(n) => n,
        Replicas::Range { min, max } => scaled.unwrap_or(min.max(1)).clamp(min, max),
    }
}

/// Counters and gauges of the schedule (`aether_placement_*`).
#[derive(Default)]
pub(crate) struct ScheduleMetrics {
    recomputations: Counter,
    changes: Counter,
    hosted: Gauge,
    unsatisfied: Gauge,
    compute_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Autoscaling decisions this node recorded.
    pub(crate) scale_decisions: Counter,
}

impl ScheduleMetrics {
    /// Adds the metrics to `registry`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "aether_placement_recomputations",
            "Placement computations on this node",
            self.recomputations.clone(),
        );
        registry.register(
            "aether_placement_changes",
            "Changes of a deployment's hosts seen by this node",
            self.changes.clone(),
        );
        registry.register(
            "aether_placement_hosted",
            "Deployments placed on this node",
            self.hosted.clone(),
        );
        registry.register(
            "aether_placement_unsatisfied",
            "Intents placement could not fully satisfy",
            self.unsatisfied.clone(),
        );
        registry.register(
            "aether_placement_compute_seconds",
            "Duration of the last placement computation",
            self.compute_seconds.clone(),
        );
        registry.register(
            "aether_autoscale_decisions",
            "Replica counts this node decided and recorded",
            self.scale_decisions.clone(),
        );
    }
}

/// The scheduler of one node.
pub(crate) struct Schedule {
    me: NodeId,
    mesh: Option<MeshHandle>,
    deployments: Arc<Deployments>,
    view: ArcSwap<View>,
    changes: Mutex<VecDeque<Change>>,
    scaled: ArcSwap<BTreeMap<String, u32>>,
    wake: Notify,
    sampler: Arc<crate::deployment_load::LoadSampler>,
    /// Members being drained or drained (`alkahest drain`), each with the deployments that may
    /// still stay on it (a drain moves them one at a time): placement puts nothing else there.
    drained: ArcSwap<Drained>,
    /// Its metrics.
    pub(crate) metrics: ScheduleMetrics,
}

impl Schedule {
    pub(crate) fn new(
        me: NodeId,
        mesh: Option<MeshHandle>,
        deployments: Arc<Deployments>,
    ) -> Arc<Self> {
        Arc::new(Self {
            me,
            mesh,
            deployments,
            view: ArcSwap::from_pointee(View::default()),
            changes: Mutex::new(VecDeque::new()),
            scaled: ArcSwap::from_pointee(BTreeMap::new()),
            wake: Notify::new(),
            sampler: Arc::new(crate::deployment_load::LoadSampler::default()),
            drained: ArcSwap::from_pointee(Drained::new()),
            metrics: ScheduleMetrics::default(),
        })
    }

    /// Sets the members placement must leave empty (drained) but for the deployments each may
    /// still keep, and places again.
    pub(crate) fn set_drained(&self, drained: Drained) {
        self.drained.store(Arc::new(drained));
        self.wake.notify_one();
    }

    /// Whether `id` is being drained or is drained.
    pub(crate) fn is_drained(&self, id: &NodeId) -> bool {
        self.drained.load().contains_key(id.as_bytes())
    }

    /// Whether placement keeps `name` off `id` (it is drained, or being drained and `name` has
    /// moved or must move).
    pub(crate) fn excludes(&self, id: &NodeId, name: &str) -> bool {
        self.drained
            .load()
            .get(id.as_bytes())
            .is_some_and(|keep| !keep.contains(name))
    }

    /// This node's load sampler.
    pub(crate) fn sampler(&self) -> &Arc<crate::deployment_load::LoadSampler> {
        &self.sampler
    }

    /// Whether this node decides the scale of `name`: its first host, or
    /// while it has none, the best-ranked eligible member.
    pub(crate) fn decides_scale_of(&self, name: &str) -> bool {
        let view = self.view.load();
        if !view.meshed {
            return false;
        }
        if let Some(first) = view.hosts.get(name).and_then(|h| h.first()) {
            return first.id == self.me;
        }
        view.standby.get(name).is_some_and(|h| h.id == self.me)
    }

    /// The load of `name` summed over its hosts, or over every alive member
    /// with `everywhere` (while it has no host, whoever serves it does).
    pub(crate) async fn lattice_load(
        &self,
        name: &str,
        everywhere: bool,
    ) -> aether_placement::Observed {
        let view = self.view.load_full();
        let targets: Vec<Host> = if everywhere {
            view.members
                .iter()
                .filter(|m| m.alive)
                .filter_map(|m| {
                    let id = aether_identity::PublicKey::from_bytes(&m.id).ok()?;
                    let addr = view.addresses.get(&id).copied()?;
                    Some(Host {
                        id,
                        instances: 0,
                        mesh_addr: addr,
                        rtt: None,
                        healthy: true,
                        incarnation: 0,
                    })
                })
                .collect()
        } else {
            view.hosts.get(name).cloned().unwrap_or_default()
        };
        let states = futures::future::join_all(targets.iter().map(|h| self.ask(h, name))).await;
        crate::deployment_load::sum(states.into_iter().flatten().map(|s| s.load))
    }

    /// This node's id.
    pub(crate) fn me(&self) -> &NodeId {
        &self.me
    }

    /// The placement computed last.
    pub(crate) fn view(&self) -> arc_swap::Guard<Arc<View>> {
        self.view.load()
    }

    /// Recent placement changes, oldest first.
    pub(crate) fn changes(&self) -> Vec<Change> {
        self.lock_changes().iter().cloned().collect()
    }

    /// Asks for a recomputation now (the deployments changed).
    pub(crate) fn poke(&self) {
        self.wake.notify_one();
    }

    /// Sets the autoscaled replica counts (by deployment name).
    pub(crate) fn set_scaled(&self, scaled: BTreeMap<String, u32>) {
        if **self.scaled.load() != scaled {
            self.scaled.store(Arc::new(scaled));
            self.poke();
        }
    }

    /// The replicas wanted for `d` now.
    pub(crate) fn desired_for(&self, d: &Deployment) -> u32 {
        let name = d.component.name();
        desired(
            &d.component.manifest().intent.replicas,
            self.scaled.load().get(name).copied(),
        )
    }

    fn lock_changes(&self) -> std::sync::MutexGuard<'_, VecDeque<Change>> {
        self.changes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows membership and deployments until the node stops.
    pub(crate) async fn run(self: Arc<Self>) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        let mut last_inputs: Option<u64> = None;
        let mut last_compute = Instant::now();
        let mut previous_alive: BTreeSet<NodeId> = BTreeSet::new();
        let mut down: HashSet<NodeId> = HashSet::new();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = self.deployments.changed().notified() => {}
                _ = tokio::time::sleep(PERIOD) => {}
            }
            let Ok(members) = mesh.members().await else {
                continue;
            };
            // Connections to members declared dead or gone are closed at
            // once, so requests in flight to them fail over now rather than
            // at the QUIC idle timeout.
            for m in &members {
                let gone = matches!(
                    m.status,
                    MemberStatus::Dead | MemberStatus::Left | MemberStatus::Revoked
                );
                if gone && down.insert(m.id) {
                    mesh.endpoint().close_peer(&m.id);
                } else if !gone {
                    down.remove(&m.id);
                }
            }
            let deployments = self.deployments.list();
            let inputs = self.fingerprint(&members, &deployments);
            // Coordinates drift: latency picks and the nearest-host order
            // are refreshed every few seconds even when nothing else changed.
            let stale = last_compute.elapsed() >= REFRESH;
            let changed = last_inputs != Some(inputs);
            if changed || stale {
                last_inputs = Some(inputs);
                last_compute = Instant::now();
                let alive: BTreeSet<NodeId> = members
                    .iter()
                    .filter(|m| member_alive(m))
                    .map(|m| m.id)
                    .collect();
                let reason = if changed {
                    membership_reason(&previous_alive, &alive)
                } else {
                    "network coordinates moved".to_string()
                };
                previous_alive = alive;
                self.recompute(&members, &deployments, &reason);
            }
            self.unload_standby(&deployments);
        }
    }

    /// A hash of everything placement reads except coordinates.
    fn fingerprint(&self, members: &[Member], deployments: &[Arc<Deployment>]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.drained.load().hash(&mut h);
        for m in members {
            m.id.as_bytes().hash(&mut h);
            member_alive(m).hash(&mut h);
            (m.status == MemberStatus::Alive).hash(&mut h);
            if let Some(meta) = &m.metadata {
                meta.region.hash(&mut h);
                meta.labels.hash(&mut h);
                meta.capacity.memory_bytes.hash(&mut h);
            }
        }
        for d in deployments {
            d.component.name().hash(&mut h);
            d.essence_hash.hash(&mut h);
            self.desired_for(d).hash(&mut h);
        }
        h.finish()
    }

    /// Computes the placement, applies this node's share and records what
    /// moved.
    fn recompute(&self, members: &[Member], deployments: &[Arc<Deployment>], reason: &str) {
        let started = Instant::now();
        let drained = self.drained.load_full();
        let placement_members: Vec<aether_placement::Member> = members
            .iter()
            .filter_map(|m| {
                let meta = m.metadata.as_ref()?;
                Some(aether_placement::Member {
                    id: *m.id.as_bytes(),
                    region: meta.region.clone(),
                    labels: meta.labels.iter().cloned().collect(),
                    capacity_memory: meta.capacity.memory_bytes,
                    reserved_memory: 0,
                    cores: meta.capacity.cores,
                    alive: member_alive(m),
                    coordinate: m.coordinate,
                })
            })
            .collect();
        let wanted: Vec<aether_placement::Deployment> = deployments
            .iter()
            .map(|d| {
                let mut hash = [0u8; 32];
                let _ = hex::decode_to_slice(d.component.content_hash(), &mut hash);
                let mut wanted = aether_placement::Deployment::from_manifest(
                    d.component.manifest(),
                    hash,
                    self.desired_for(d),
                );
                // Sorted, as the map is.
                wanted.excluded = drained
                    .iter()
                    .filter(|(_, keep)| !keep.contains(d.component.name()))
                    .map(|(id, _)| *id)
                    .collect();
                wanted
            })
            .collect();
        let placement = match aether_placement::place(&wanted, &placement_members) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("placement not computed: {e}");
                return;
            }
        };
        let by_id: BTreeMap<[u8; 32], &Member> =
            members.iter().map(|m| (*m.id.as_bytes(), m)).collect();
        let mut hosts: BTreeMap<String, Vec<Host>> = BTreeMap::new();
        for (name, assigned) in &placement.assignments {
            let list = assigned
                .iter()
                .filter_map(|(id, instances)| {
                    let m = by_id.get(id)?;
                    Some(Host::of(m, *instances))
                })
                .collect();
            hosts.insert(name.clone(), list);
        }
        let mut standby = BTreeMap::new();
        for d in wanted.iter().filter(|d| d.desired == 0) {
            let best = aether_placement::explain(d, &placement_members)
                .ok()
                .and_then(|ranking| {
                    ranking
                        .into_iter()
                        .find(|c| c.eligibility == aether_placement::Eligibility::Eligible)
                });
            if let Some(m) = best.and_then(|c| by_id.get(&c.member).copied()) {
                standby.insert(d.name.clone(), Host::of(m, 0));
            }
        }
        let mut forward: BTreeMap<String, Arc<[Host]>> = hosts
            .iter()
            .filter(|(_, h)| !h.is_empty())
            .map(|(name, h)| {
                let mut order = h.clone();
                order.sort_by_key(|h| (!h.healthy, h.rtt.unwrap_or(Duration::MAX)));
                (name.clone(), order.into())
            })
            .collect();
        for (name, h) in &standby {
            forward.insert(name.clone(), Arc::from([h.clone()]));
        }
        let desired: BTreeMap<String, u32> =
            wanted.iter().map(|d| (d.name.clone(), d.desired)).collect();
        let view = View {
            meshed: true,
            hosts,
            desired,
            reports: placement.reports,
            computed_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            members: placement_members,
            inputs: wanted.into_iter().map(|d| (d.name.clone(), d)).collect(),
            addresses: members.iter().map(|m| (m.id, m.mesh_addr)).collect(),
            standby,
            forward,
        };
        self.metrics.recomputations.inc();
        self.metrics
            .compute_seconds
            .set(started.elapsed().as_secs_f64());
        let unsatisfied: BTreeSet<&str> =
            view.reports.iter().map(|r| r.deployment.as_str()).collect();
        self.metrics.unsatisfied.set(unsatisfied.len() as i64);
        let hosted_here = view
            .hosts
            .values()
            .filter(|h| h.iter().any(|h| h.id == self.me))
            .count();
        self.metrics.hosted.set(hosted_here as i64);
        let old = self.view.swap(Arc::new(view));
        let new = self.view.load();
        self.record_changes(&old, &new, reason);
        for report in &new.reports {
            tracing::warn!("placement: {report}");
        }
        for d in deployments {
            let name = d.component.name();
            let hosted = new
                .hosts
                .get(name)
                .is_some_and(|h| h.iter().any(|h| h.id == self.me));
            let was = d.set_hosted(hosted);
            if hosted && !was {
                tracing::info!(component = %name, "placed on this node; starting it");
                let d = d.clone();
                tokio::spawn(async move {
                    if let Err(e) = d.component.activate().await {
                        tracing::warn!(component = %d.component.name(), "cannot start: {e}");
                    }
                });
            } else if !hosted && was {
                tracing::info!(component = %name, "no longer placed on this node");
            }
        }
    }

    fn record_changes(&self, old: &View, new: &View, reason: &str) {
        if !old.meshed {
            return;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let names: BTreeSet<&String> = old.hosts.keys().chain(new.hosts.keys()).collect();
        let mut changes = self.lock_changes();
        for name in names {
            let before: BTreeSet<NodeId> = old
                .hosts
                .get(name)
                .map(|h| h.iter().map(|h| h.id).collect())
                .unwrap_or_default();
            let after: BTreeSet<NodeId> = new
                .hosts
                .get(name)
                .map(|h| h.iter().map(|h| h.id).collect())
                .unwrap_or_default();
            if before == after {
                continue;
            }
            let reason = if old.desired.get(name) != new.desired.get(name) {
                format!(
                    "replicas wanted {} → {}",
                    old.desired.get(name).copied().unwrap_or(0),
                    new.desired.get(name).copied().unwrap_or(0)
                )
            } else {
                reason.to_string()
            };
            self.metrics.changes.inc();
            changes.push_back(Change {
                at: now,
                deployment: name.clone(),
                added: after.difference(&before).map(ToString::to_string).collect(),
                removed: before.difference(&after).map(ToString::to_string).collect(),
                reason,
            });
            while changes.len() > CHANGES_KEPT {
                changes.pop_front();
            }
        }
    }

    /// Unloads deployments this node does not host once they are idle.
    fn unload_standby(&self, deployments: &[Arc<Deployment>]) {
        if !self.view.load().meshed {
            return;
        }
        for d in deployments {
            if !d.is_hosted()
                && d.component.is_active()
                && d.component.idle_for() >= STANDBY_UNLOAD_AFTER
            {
                d.component.deactivate();
            }
        }
    }
}

/// Whether placement may use `m`: alive or merely suspect (a suspect that
/// refutes keeps its replicas; one declared dead loses them).
fn member_alive(m: &Member) -> bool {
    matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect)
}

/// Why the inputs changed, in words, from the alive sets before and after.
fn membership_reason(before: &BTreeSet<NodeId>, after: &BTreeSet<NodeId>) -> String {
    let mut parts = Vec::new();
    let gone: Vec<String> = before.difference(after).map(short).collect();
    let came: Vec<String> = after.difference(before).map(short).collect();
    if !gone.is_empty() {
        parts.push(format!("member(s) down: {}", gone.join(", ")));
    }
    if !came.is_empty() && !before.is_empty() {
        parts.push(format!("member(s) up: {}", came.join(", ")));
    }
    if parts.is_empty() {
        "deployments or member metadata changed".to_string()
    } else {
        parts.join("; ")
    }
}

/// A node id shortened for messages.
pub(crate) fn short(id: &NodeId) -> String {
    let text = id.to_string();
    let key = text.strip_prefix("ed25519:").unwrap_or(&text);
    key.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_replicas_follow_the_intent() {
        assert_eq!(desired(&Replicas::Fixed(3), Some(7)), 3);
        assert_eq!(desired(&Replicas::Range { min: 0, max: 5 }, None), 1);
        assert_eq!(desired(&Replicas::Range { min: 2, max: 5 }, None), 2);
        assert_eq!(desired(&Replicas::Range { min: 0, max: 5 }, Some(0)), 0);
        assert_eq!(desired(&Replicas::Range { min: 1, max: 5 }, Some(9)), 5);
        assert_eq!(desired(&Replicas::Range { min: 2, max: 5 }, Some(0)), 2);
    }

    #[test]
    fn membership_reasons_name_the_members() {
        let a = aether_identity::SecretKey::generate().public();
        let b = aether_identity::SecretKey::generate().public();
        let before: BTreeSet<NodeId> = [a, b].into_iter().collect();
        let after: BTreeSet<NodeId> = [a].into_iter().collect();
        let reason = membership_reason(&before, &after);
        assert!(
            reason.contains("down") && reason.contains(&short(&b)),
            "{reason}"
        );
        assert!(membership_reason(&after, &before).contains("up"));
    }
}
