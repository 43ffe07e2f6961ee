//! JSON bodies of the admin API.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`: the node and what it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `aether-d` version.
    pub version: String,
    /// Address of the HTTP ingress.
    pub http_addr: String,
    /// Address of this admin API.
    pub admin_addr: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Deployed components.
    pub components: Vec<ComponentStatus>,
}

/// One deployed component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Name from its manifest.
    pub name: String,
    /// Version from its manifest, if any.
    pub version: Option<String>,
    /// Hex SHA-256 of the component bytes.
    pub content_hash: String,
    /// Key that signed the essence.
    pub publisher: String,
    /// Routes it serves, as `host/path` or `/path`.
    pub routes: Vec<String>,
    /// On the asked node: `running` (loaded and serving), `scaled-to-zero`
    /// (unloaded after its idle timeout; the next request activates it) or
    /// `standby` (placed on other members; requests here are forwarded).
    pub state: String,
    /// Instances running right now.
    pub instances: usize,
    /// Most instances allowed at once.
    pub max_concurrency: u32,
    /// Requests served since deploy.
    pub requests: u64,
    /// Milliseconds the last activation took.
    pub activation_ms: f64,
    /// Whether the compiled code came from the cache (`hit`, `miss`, `uncached`).
    pub compile_cache: String,
    /// When it was deployed, Unix seconds.
    pub deployed_at: u64,
    /// Where it runs across the lattice (absent on a node without a lattice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<PlacementJson>,
    /// Its virtual address (`IP:80`), when it asked for one and this node gives them out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_address: Option<String>,
    /// Why it has no virtual address on this node although it asked for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_address_unavailable: Option<String>,
}

/// Where a deployment runs across the lattice, and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PlacementJson {
    /// Replicas the intent wants now (the fixed count, or the autoscaled one).
    pub desired: u32,
    /// Replicas placed on members.
    pub placed: u32,
    /// Replicas loaded and serving on their hosts (hosts that answered; a
    /// host scaled to zero counts 0).
    pub running: u32,
    /// The hosts, in placement order.
    pub hosts: Vec<HostJson>,
    /// Every member in the deployment's ranking, best first, with why it is
    /// or is not eligible (only for one component's status).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranking: Vec<RankJson>,
    /// Constraints the placement could not meet, and by how much.
    pub unsatisfied: Vec<UnsatisfiedJson>,
    /// Recent changes of the hosts, oldest first.
    pub changes: Vec<PlacementChangeJson>,
    /// When the placement was computed, Unix milliseconds.
    pub computed_at_ms: u64,
}

/// One host of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostJson {
    /// Node id.
    pub node: String,
    /// Its region.
    pub region: String,
    /// Instances placed on it.
    pub instances: u32,
    /// `running`, `scaled-to-zero`, `starting` (placed, not yet loaded),
    /// `placed` (not asked) or `unreachable`.
    pub state: String,
    /// Estimated round-trip time from the asked node, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// Whether it is the asked node.
    pub is_self: bool,
}

/// One member in a deployment's ranking.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RankJson {
    /// Node id.
    pub node: String,
    /// Its region.
    pub region: String,
    /// Weighted rendezvous score (higher ranks first).
    pub score: f64,
    /// Whether it may host the deployment.
    pub eligible: bool,
    /// Why not, when it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Estimated RTT to the latency target's region, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_from_ms: Option<f64>,
    /// Whether it hosts a replica now.
    pub hosts: bool,
}

/// A constraint placement could not meet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UnsatisfiedJson {
    /// `replicas`, `regions`, `labels`, `memory` or `latency`.
    pub constraint: String,
    /// What failed and by how much.
    pub detail: String,
}

/// One change of a deployment's hosts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlacementChangeJson {
    /// Unix seconds.
    pub at: u64,
    /// Nodes that started hosting it.
    pub added: Vec<String>,
    /// Nodes that stopped hosting it.
    pub removed: Vec<String>,
    /// What changed in the inputs.
    pub reason: String,
}

/// `POST /v1/deploy` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResponse {
    /// The component now running.
    pub component: ComponentStatus,
    /// Whether it replaced an earlier deployment of the same name.
    pub replaced: bool,
}

/// One log line, as streamed by `GET /v1/logs/NAME` (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLineJson {
    /// Component name.
    pub component: String,
    /// Sequence number within the component.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// `stdout`, `stderr` or `host`.
    pub stream: String,
    /// The text.
    pub text: String,
}

/// Error body of every non-2xx admin answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, with what to do next when known.
    pub error: String,
}

/// `GET /v1/nodes`: one member of the lattice as the asked node sees it
/// (the asked node included, with `is_self`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberJson {
    /// Node id: its public key, `ed25519:<base64url>`.
    pub id: String,
    /// `alive`, `suspect`, `dead`, `left` or `revoked`.
    pub state: String,
    /// Region the node was admitted in (empty when none).
    pub region: String,
    /// Labels the node was admitted with.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Estimated round-trip time from the asked node, from network coordinates
    /// (0 for the asked node itself; `null` before any coordinate is known).
    pub rtt_ms: Option<f64>,
    /// Raised each time the node restarts or comes back after being declared dead.
    pub incarnation: u32,
    /// Mesh address (QUIC, UDP).
    pub mesh_addr: String,
    /// HTTP ingress address, when advertised.
    pub http_addr: Option<String>,
    /// `aether-d` version it runs.
    pub version: String,
    /// CPU cores and memory it has.
    pub capacity: CapacityJson,
    /// What it is doing.
    pub load: LoadJson,
    /// Whether this row is the node that answered.
    pub is_self: bool,
    /// How its mesh traffic is admitted: `ebpf`, `ebpf-audit` or `userspace`.
    #[serde(default)]
    pub data_plane: String,
    /// Whether members can dial it at its mesh address, as it learned from their dial-backs:
    /// `direct`, `nat` (reached only over the connections it opens) or `unknown`.
    #[serde(default)]
    pub reachability: String,
    /// The address members see it at, when that is not its mesh address (behind NAT).
    #[serde(default)]
    pub observed_addr: Option<String>,
    /// The asked node's path to it: `direct` (one of the two can dial the other), `punched`
    /// (both behind NAT, connected through a hole punch), `relayed via NODE` (through another
    /// member, NODE its short id), `none` (no connection yet), or `self`.
    #[serde(default)]
    pub path: String,
}

/// A member's resources.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CapacityJson {
    /// CPU cores.
    pub cores: u32,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

/// A member's load as it last advertised it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct LoadJson {
    /// Component instances running.
    pub instances: u32,
    /// Requests per second.
    pub request_rate: f32,
    /// CPU use, percent of all cores.
    pub cpu_percent: f32,
}

/// `POST /v1/revoke` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevokeResponse {
    /// The revoked node.
    pub node: String,
    /// Whether this node learnt of the revocation from this request (false:
    /// it already knew).
    pub new: bool,
    /// Connections with the node closed here.
    pub closed_connections: usize,
}

/// One entry (or one stored update) of the lattice state, as the admin API
/// shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvEntryJson {
    /// The bucket.
    pub bucket: String,
    /// The key, as text (invalid UTF-8 replaced).
    pub key: String,
    /// The value as text (invalid UTF-8 replaced); `null` when deleted.
    pub value: Option<String>,
    /// The value, base64 (standard alphabet); `null` when deleted.
    pub value_base64: Option<String>,
    /// Whether this is a tombstone.
    pub deleted: bool,
    /// HLC timestamp: milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// HLC timestamp: logical counter within the millisecond.
    pub logical: u32,
    /// The node that wrote it.
    pub origin: String,
    /// Version vector: writer node id → counter.
    pub version: std::collections::BTreeMap<String, u64>,
}

/// `GET /v1/kv` (no bucket): what the node's replica holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KvSummaryJson {
    /// Entries, tombstones included.
    pub entries: usize,
    /// Hex digest of the whole state (equal on nodes that have converged).
    pub digest: String,
    /// Updates waiting for their causal predecessors.
    pub pending: usize,
    /// Received updates applied.
    pub applied: u64,
    /// Received updates dropped because their signature did not verify.
    pub forged: u64,
    /// Received updates dropped because their origin is unknown or revoked.
    pub unknown_or_revoked_origin: u64,
}

/// `POST /v1/rollouts` and `POST /v1/rollback/NAME`: the rollout started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStarted {
    /// The rollout's id (`rollout status ID`).
    pub rollout: String,
    /// The component it deploys.
    pub component: String,
    /// The essence it deploys.
    pub essence_hash: String,
}

/// `GET /v1/rollouts/ID`: one rollout (or another workflow) as its journal tells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStatusJson {
    /// Its id.
    pub id: String,
    /// The kind of workflow (`rollout`).
    pub kind: String,
    /// The component it deploys.
    pub component: String,
    /// The essence it deploys.
    pub essence_hash: String,
    /// Why it was started (`deploy`, `rollback to version 2`).
    pub reason: String,
    /// `running`, `paused`, `finished`, `rolled-back`, `superseded`, `failed` or `cancelled`.
    pub state: String,
    /// Why it ended so, when it did not finish.
    pub outcome_reason: String,
    /// When it started (ms since the Unix epoch) and on which node.
    pub started_ms: u64,
    /// See `started_ms`.
    pub started_by: String,
    /// When it ended.
    pub ended_ms: Option<u64>,
    /// The node driving it now (or that ended it).
    pub driver: String,
    /// The driver's epoch (raised by every takeover).
    pub epoch: u64,
    /// Its steps so far, and the one running.
    pub steps: Vec<RolloutStepJson>,
    /// Every epoch taken: the start, then each takeover.
    pub leases: Vec<LeaseJson>,
    /// Progress per node of the distribute, precompile and switch steps.
    pub nodes: Vec<RolloutNodeJson>,
    /// An operator paused it.
    pub paused: bool,
    /// An operator asked to cancel it.
    pub cancel_requested: bool,
    /// The step it holds before, when an operator asked for a hold there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause_before: Option<String>,
    /// `all-at-once` or `canary`.
    #[serde(default)]
    pub strategy: String,
    /// Why the strategy differs from the one asked for, if it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub strategy_note: String,
    /// For a canary: what the hosts measured of both versions so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryJson>,
}

/// A canary rollout's traffic: the share the new version gets now and what both versions did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CanaryJson {
    /// Percent of requests the new version gets now (0 once the share was taken back).
    pub weight: u32,
    /// The shares, in order, below 100.
    pub steps: Vec<u32>,
    /// How long each share is held, in ms.
    pub interval_ms: u64,
    /// Requests the serving version answered during the canary, summed over the hosts.
    pub serving: VersionHealthJson,
    /// Requests the new version answered.
    pub new: VersionHealthJson,
}

/// What one version did during a canary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VersionHealthJson {
    /// Requests served.
    pub requests: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Instance faults.
    pub faults: u64,
    /// 99th-percentile latency in ms (bucketed), when any request was served.
    pub p99_ms: Option<f64>,
}

/// One step of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutStepJson {
    /// Its position.
    pub index: u32,
    /// `verify`, `distribute`, `precompile`, `switch`, `retire`, or an undo step.
    pub name: String,
    /// `done`, `failed` or `running`.
    pub state: String,
    /// For an undo step: the step it undoes.
    pub compensates: Option<u32>,
    /// The node that ran it.
    pub node: String,
    /// The epoch it ran under.
    pub epoch: u64,
    /// When it started and finished (ms since the Unix epoch).
    pub started_ms: u64,
    /// See `started_ms`.
    pub finished_ms: Option<u64>,
    /// What it produced.
    pub output: serde_json::Value,
    /// Why it failed.
    pub error: Option<String>,
}

/// An epoch of a workflow: who drove it from when, and why.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaseJson {
    /// The epoch's number.
    pub epoch: u64,
    /// Its holder.
    pub node: String,
    /// `started`, `holder-dead`, `lease-lapsed` or `resumed`.
    pub reason: String,
    /// Steps recorded when it was taken.
    pub resumed_at: u32,
    /// When it was taken (ms since the Unix epoch).
    pub taken_ms: u64,
}

/// One node's progress in a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolloutNodeJson {
    /// The node.
    pub node: String,
    /// It holds the essence.
    pub fetched: bool,
    /// It compiled it (or found it compiled).
    pub compiled: bool,
    /// It serves the new version.
    pub serving: bool,
    /// What went wrong there.
    pub error: Option<String>,
}

/// `GET /v1/history/NAME`: the versions a component has had, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HistoryJson {
    /// The component.
    pub component: String,
    /// Its versions, newest last.
    pub versions: Vec<VersionJson>,
}

/// One version of a component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionJson {
    /// 1 for the first version rolled out, then one more per rollout that finished.
    pub version: u32,
    /// Its essence.
    pub essence_hash: String,
    /// The essence's size in bytes.
    pub size: u64,
    /// The key that signed the essence.
    pub publisher: String,
    /// The admin key that asked for the rollout.
    pub deployed_by: String,
    /// When it became current (ms since the Unix epoch).
    pub switched_ms: u64,
    /// The rollout that made it current.
    pub rollout: String,
    /// Why (`deploy`, `rollback to version 1`).
    pub reason: String,
    /// Whether the lattice serves it now.
    pub current: bool,
}

/// `GET /v1/settings`: the settings every node of the lattice follows, kept in the replicated
/// state (`PUT /v1/settings/NAME` with the value as body changes one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatticeSettings {
    /// Every deployment gets a virtual address, as if its manifest said
    /// `[http] virtual_address = true`.
    pub virtual_addresses: bool,
}
