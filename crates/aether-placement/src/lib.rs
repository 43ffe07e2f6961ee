//! Placement as a pure function (DESIGN §3.5): (deployments, member view) → which members host
//! how many instances of what.
//!
//! Every node runs [`place`] on the deployments of the lattice state and its membership view and
//! starts or stops only its own share ([`Placement::hosted_by`]); there is no leader. Same
//! inputs, in any order, give the same [`Placement`] on every node: no I/O, no clock, no
//! randomness, no iteration-order dependence, and no platform-dependent floating point.
//!
//! # Ranking: weighted rendezvous hashing
//!
//! For each deployment, each eligible member gets the weighted rendezvous (highest random
//! weight) score `w / −ln(u)`, where
//! - `u ∈ (0, 1)` comes from a 64-bit pair hash: member and deployment each have a key, the first
//!   8 bytes (little endian) of SHA-256 over a domain tag and the member id or the deployment
//!   **name** (not its content hash, so a new version lands on the same nodes); the pair hash is
//!   wyhash's `wymix` of the two keys; `u = (⌊h/2¹²⌋ + ½)·2⁻⁵²`;
//! - `w` is the member's [allocatable memory](Member::allocatable_memory), so a member with
//!   twice the memory gets about twice the replicas. `w` deliberately does not follow the memory
//!   that placed replicas use: a weight that moved with placement would make placement feed on
//!   itself and replicas flap;
//! - `ln` is computed in the crate with basic IEEE operations only (`f64::ln` may differ between
//!   platforms); ties (practically impossible) go to the smaller member id.
//!
//! Members rank by descending score. Because each score depends only on its own (deployment,
//! member) pair, a member joining takes only the replicas for which it ranks in the top, and a
//! member leaving releases only the replicas it hosted (while memory is not binding).
//!
//! # Constraints, in the order they are applied
//!
//! 1. **Eligibility**: alive, offering memory, in one of `intent.regions` (empty: any region),
//!    carrying every `intent.labels` key with that value, and running on one of `intent.arch`
//!    (empty: any; matched against the member's built-in [`ARCH_LABEL`] label).
//! 2. **Memory**: deployments are placed in **name order**, and each replica takes
//!    [`Deployment::memory_per_replica`] from its member's allocatable memory; a member without
//!    room for one more replica is skipped. (So when memory is short, the deployment whose name
//!    sorts first wins.)
//! 3. **Latency target** (`latency = { from, p99 }`): a member's RTT to region `from` is the
//!    median of its Vivaldi distance estimates to up to 32 alive members of `from` (those with
//!    the smallest keys). A member is within the target when that RTT is at most `p99`: one round
//!    trip is the least any request costs, so a farther replica cannot meet the target whatever
//!    the component does. The best-ranked eligible member within the target that has room takes
//!    the first replica; when there is none, the nearest member with room takes it and the
//!    shortfall is reported.
//! 4. **Replicas**: the remaining replicas go one per member in rank order; with
//!    `intent.spread`, round-robin over regions instead (the region with the fewest replicas so
//!    far next, ties to the region whose next member ranks higher). **At most one replica per
//!    member** unless fewer members have room than replicas are wanted: then further instances
//!    stack on the chosen members, one more each per round in the same order, while memory
//!    allows. `desired = 0` (scaled to zero) places nothing.
//!
//! Whatever cannot be met is placed as well as possible and reported as an [`Unsatisfied`]
//! naming the constraint and by how much. [`explain`] shows one deployment's ranking.
//!
//! # Movement
//!
//! While memory is not binding and no member hosts two instances of one deployment, a member
//! joining only takes replicas (nothing moves between old members) and a member leaving only
//! releases its own. Two exceptions, both bounded: with `spread` and a latency target together,
//! a new latency pick in another region can shift one more replica; and a member of a latency
//! target's `from` region joining or leaving shifts that region's median RTTs, which can move
//! latency picks whose RTT sits near `p99`.
//!
//! # Cost
//!
//! Members are prepared once (sorted, keyed, regions interned); deployments sharing regions and
//! labels share their eligible set, stored contiguously. Each deployment keeps only its best
//! `replicas + 2` candidates with room (per region when spreading, `⌈replicas/regions⌉ + 1`),
//! skipping the logarithm for members whose lower bound `(1 − u)/w` already loses; a walk that
//! runs out of a truncated list ranks again deeper, then exhaustively, so the shortcut never
//! changes the result. 10 000 deployments on 1 000 members take about 50 ms
//! (`examples/placement_bench.rs`).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use aether_manifest::{Intent, Manifest};
use aether_membership::Coordinate;

mod autoscale;
mod engine;
mod explain;
mod group;
mod hash;
mod report;
mod view;

pub use autoscale::{Observed, ScaleMemory, ScalePolicy, autoscale};
pub use explain::{Candidate, Eligibility, explain, unmet_constraint};

/// The member label that names its CPU architecture (a built-in label every node sets), which
/// `intent.arch` is matched against.
pub const ARCH_LABEL: &str = "arch";

/// A member's id: its ed25519 public key, as membership names it.
pub type MemberId = [u8; 32];

/// The member label a node gives its reachability (`direct` when members can dial it), which
/// `intent.reachable` requires to be `direct`.
pub const REACHABILITY_LABEL: &str = "reachability";

/// One deployment to place, as the lattice state records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Deployment {
    /// The component's name, unique in the lattice; it (not the content hash) seeds the ranking.
    pub name: String,
    /// SHA-256 of the component; carried for the caller, not used in the ranking.
    pub content_hash: [u8; 32],
    /// The Aetherfile's intent. `intent.memory` and `intent.replicas` are not read here: the
    /// caller resolves them into `memory_per_replica` and `desired`.
    pub intent: Intent,
    /// Memory reserved per replica: `intent.memory`, else `limits.memory`.
    pub memory_per_replica: u64,
    /// Replicas to place: the fixed count, or what autoscaling chose within `min..=max`.
    pub desired: u32,
    /// Members it must not be placed on although they satisfy its intent (a drain moving it
    /// off them), sorted. Default: none.
    pub excluded: Vec<MemberId>,
}

impl Deployment {
    /// A deployment of `manifest` with `desired` replicas; the memory per replica is
    /// `intent.memory`, else `limits.memory`. `intent.reachable` becomes the label requirement
    /// `reachability = "direct"` ([`REACHABILITY_LABEL`]).
    pub fn from_manifest(manifest: &Manifest, content_hash: [u8; 32], desired: u32) -> Self {
        let mut intent = manifest.intent.clone();
        if intent.reachable {
            intent
                .labels
                .insert(REACHABILITY_LABEL.to_string(), "direct".to_string());
        }
        Self {
            name: manifest.name.clone(),
            content_hash,
            intent,
            memory_per_replica: manifest.intent.memory.unwrap_or(manifest.limits.memory).0,
            desired,
            excluded: Vec::new(),
        }
    }
}

/// One member of the lattice as the membership view shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    /// The member's id.
    pub id: MemberId,
    /// Its region, e.g. `eu-west`.
    pub region: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its memory in bytes.
    pub capacity_memory: u64,
    /// Memory not available to placement (the daemon, the OS, anything not placed by this
    /// crate). Must not include the replicas placement assigns, or placement would chase its
    /// own tail. 0 when unknown.
    pub reserved_memory: u64,
    /// CPU cores; shown by `alkahest status`, not used in the ranking (memory is what intents
    /// reserve).
    pub cores: u32,
    /// Whether membership considers it alive; dead members host nothing.
    pub alive: bool,
    /// Its Vivaldi coordinate; `None` or an invalid one means its RTTs are unknown.
    pub coordinate: Option<Coordinate>,
}

impl Member {
    /// Memory offered to placement: `capacity_memory − reserved_memory` (at least 0). It is the
    /// member's rendezvous weight and its budget for the replicas placed on it.
    pub fn allocatable_memory(&self) -> u64 {
        self.capacity_memory.saturating_sub(self.reserved_memory)
    }
}

/// Which constraint of an intent could not be met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Constraint {
    /// Not enough members at all (none alive).
    Replicas,
    /// No alive member in the allowed regions.
    Regions,
    /// No alive member in the allowed regions carries the labels.
    Labels,
    /// No alive member in the allowed regions with the labels runs on one of the intent's
    /// architectures.
    Arch,
    /// Eligible members lack the memory for all the replicas.
    Memory,
    /// No replica could go within the latency target, or it could not be judged.
    Latency,
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Constraint::Replicas => "replicas",
            Constraint::Regions => "regions",
            Constraint::Labels => "labels",
            Constraint::Arch => "arch",
            Constraint::Memory => "memory",
            Constraint::Latency => "latency",
        })
    }
}

/// An intent placement could not fully satisfy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsatisfied {
    /// The deployment's name.
    pub deployment: String,
    /// The constraint that failed.
    pub constraint: Constraint,
    /// What failed and by how much, e.g. `best node 48 ms from ap-southeast, target 30 ms`.
    pub detail: String,
}

impl fmt::Display for Unsatisfied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.deployment, self.constraint, self.detail
        )
    }
}

/// The outcome of [`place`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Placement {
    /// For every deployment (by name), its hosts and how many instances each runs, in the order
    /// they were chosen (the latency pick first, then rank order). Empty for `desired = 0` or
    /// when nothing could be placed.
    pub assignments: BTreeMap<String, Vec<(MemberId, u32)>>,
    /// What could not be satisfied, in deployment name order.
    pub reports: Vec<Unsatisfied>,
}

impl Placement {
    /// The share of `member`: each deployment it hosts, with its instance count, by name.
    pub fn hosted_by(&self, member: &MemberId) -> Vec<(&str, u32)> {
        self.assignments
            .iter()
            .filter_map(|(name, hosts)| {
                hosts
                    .iter()
                    .find(|(id, _)| id == member)
                    .map(|(_, n)| (name.as_str(), *n))
            })
            .collect()
    }

    /// Instances placed for `deployment` across all members (0 if unknown).
    pub fn instances(&self, deployment: &str) -> u32 {
        self.assignments
            .get(deployment)
            .map_or(0, |hosts| hosts.iter().map(|(_, n)| n).sum())
    }
}

/// Input that no placement can be computed from.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// Two deployments share a name.
    #[error(
        "two deployments are named `{0}`; names are unique in the lattice, so pass one entry per name"
    )]
    DuplicateDeployment(String),
    /// Two members share an id.
    #[error("member {0} appears twice in the member view; pass one entry per member id")]
    DuplicateMember(String),
}

/// Place `deployments` on `members`: see the [crate documentation](crate) for the rules.
/// Errors only on duplicate deployment names or member ids.
pub fn place(deployments: &[Deployment], members: &[Member]) -> Result<Placement, PlacementError> {
    engine::place(deployments, members, false)
}

/// [`place`] with every deployment ranked exhaustively instead of by its top candidates: the
/// reference the fast path is tested and benchmarked against. Always the same result.
#[doc(hidden)]
pub fn place_exhaustive(
    deployments: &[Deployment],
    members: &[Member],
) -> Result<Placement, PlacementError> {
    engine::place(deployments, members, true)
}

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
