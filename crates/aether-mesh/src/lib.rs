//! A node's place in the lattice: its admission kept on disk, the QUIC
//! endpoint other members reach it on, and the SWIM membership core driven
//! over that endpoint.
//!
//! This crate is the I/O shell around two sans-IO parts: the admission chain
//! (`aether-identity`) and membership (`aether-membership`). One tokio task,
//! the driver, owns the membership core; it feeds it messages from
//! `aether-transport` and timer expiries, and sends what the core asks for.
//! Everything else talks to the driver through a [`MeshHandle`].
//!
//! Two channels share the transport: [`CHANNEL_MEMBERSHIP`] carries the
//! core's datagrams, [`CHANNEL_ADMISSION`] carries the admission ledger and
//! revocations (pushed on change and exchanged with a random member every
//! few seconds, so a member that missed one catches up).
#![deny(missing_docs)]

pub mod admission;
mod driver;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aether_identity::{LatticeId, NodeId, PublicKey, Revocation, SecretKey};
use aether_membership::{Capacity, Load, Metadata};
use aether_transport::{Endpoint, NodeIdentity};
use tokio::sync::{mpsc, oneshot};

pub use admission::{AdmissionRequest, AdmissionSource, NodeAdmission};
pub use metrics::MeshMetrics;

/// Transport channel of membership datagrams.
pub const CHANNEL_MEMBERSHIP: u8 = 0;
/// Transport channel of the admission ledger and revocations.
pub const CHANNEL_ADMISSION: u8 = 1;
/// Transport channel of the lattice state (`aether-kv`).
pub const CHANNEL_STATE: u8 = 2;

/// Default mesh port (UDP, QUIC), the one Serf and memberlist use.
pub const DEFAULT_MESH_PORT: u16 = 7946;

/// Errors of the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// A file of the data directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The node cannot be admitted (or its stored admission is not valid).
    #[error("admission: {0}")]
    Admission(String),
    /// The transport could not start.
    #[error("mesh transport: {0}")]
    Transport(#[from] aether_transport::TransportError),
    /// The membership core refused its settings.
    #[error("membership: {0}")]
    Membership(#[from] aether_membership::Error),
    /// A revocation is not for this lattice or not signed by its root.
    #[error("revocation refused: {0}")]
    Revocation(String),
    /// The driver task has stopped.
    #[error("the mesh has stopped")]
    Stopped,
}

/// Settings of the mesh.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Where the admission files live (the node's data directory).
    pub data_dir: PathBuf,
    /// UDP address the QUIC endpoint binds.
    pub listen: SocketAddr,
    /// Address other members are told to reach this node on. Default: the
    /// bound address.
    pub advertise: Option<SocketAddr>,
    /// Members to join through (any member's mesh address). Empty: this node
    /// starts a lattice, or rejoins through members that contact it.
    pub join: Vec<SocketAddr>,
    /// The node's HTTP ingress address, advertised in its metadata.
    pub http_addr: Option<SocketAddr>,
    /// Software version, advertised.
    pub version: String,
    /// SWIM and Vivaldi settings. Default: memberlist's LAN settings.
    pub membership: aether_membership::Config,
    /// QUIC settings.
    pub transport: aether_transport::Config,
    /// How often the admission ledger and revocations are exchanged with a
    /// random member. Default 5 s.
    pub sync_interval: Duration,
    /// How often to retry joining while no member is known. Default 2 s.
    pub join_retry: Duration,
    /// Largest number of membership messages being sent at once; more are
    /// dropped (and counted), as a datagram would be. Default 512.
    pub max_sends_in_flight: usize,
    /// Cores and memory this node advertises (placement weighs members by
    /// memory). Default: what the machine has ([`local_capacity`]); a small
    /// device may advertise less.
    pub capacity: Capacity,
    /// Labels the node itself advertises beside the built-in ones, such as `data-plane`
    /// (how its mesh traffic is admitted). A certificate label with the same key is not
    /// advertised. Default: none.
    pub extra_labels: Vec<(String, String)>,
}

impl MeshConfig {
    /// Defaults for a node keeping its files in `data_dir` and binding `listen`.
    pub fn new(data_dir: PathBuf, listen: SocketAddr) -> Self {
        let transport = aether_transport::Config {
            connect_timeout: Duration::from_secs(2),
            keep_alive_interval: Some(Duration::from_secs(2)),
            idle_timeout: Duration::from_secs(10),
            ..aether_transport::Config::default()
        };
        Self {
            data_dir,
            listen,
            advertise: None,
            join: Vec::new(),
            http_addr: None,
            version: String::new(),
            membership: aether_membership::Config::lan(5),
            transport,
            sync_interval: Duration::from_secs(5),
            join_retry: Duration::from_secs(2),
            max_sends_in_flight: 512,
            capacity: local_capacity(),
            extra_labels: Vec::new(),
        }
    }
}

/// A member's state as the asked node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MemberStatus {
    /// Answering probes.
    Alive,
    /// Failed a probe; has a while to refute.
    Suspect,
    /// Declared dead.
    Dead,
    /// Left gracefully.
    Left,
    /// Revoked by the lattice root: refused whatever it says.
    Revoked,
}

impl MemberStatus {
    /// Lower-case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Alive => "alive",
            MemberStatus::Suspect => "suspect",
            MemberStatus::Dead => "dead",
            MemberStatus::Left => "left",
            MemberStatus::Revoked => "revoked",
        }
    }
}

/// One member as the asked node sees it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its node key.
    pub id: NodeId,
    /// Its state.
    pub status: MemberStatus,
    /// Raised on every restart or return after being declared dead.
    pub incarnation: u32,
    /// Its mesh address.
    pub mesh_addr: SocketAddr,
    /// What it advertises (region, labels, capacity, load, addresses), once known.
    pub metadata: Option<Metadata>,
    /// Estimated round-trip time from the asked node.
    pub rtt: Option<Duration>,
    /// Its Vivaldi coordinate as the asked node knows it (its own for itself).
    pub coordinate: Option<aether_membership::Coordinate>,
    /// Whether this is the asked node.
    pub is_self: bool,
}

/// What a revocation did on the node it was submitted to.
#[derive(Debug, Clone, Copy)]
pub struct RevokeOutcome {
    /// Whether the node did not know it yet.
    pub new: bool,
    /// Connections with the revoked node that were closed.
    pub closed_connections: usize,
}

pub(crate) enum Command {
    Members(oneshot::Sender<Vec<Member>>),
    Revoke(
        Box<Revocation>,
        oneshot::Sender<Result<RevokeOutcome, MeshError>>,
    ),
    Load(Load),
    Subscribe(u8, mpsc::Sender<aether_transport::Message>),
    Leave(oneshot::Sender<()>),
}

/// Starts a node's mesh.
pub struct Mesh;

impl Mesh {
    /// Binds the QUIC endpoint, starts the driver and joins the members in
    /// `config.join`. Must be called inside a tokio runtime.
    pub async fn start(
        config: MeshConfig,
        node_key: &SecretKey,
        admission: NodeAdmission,
    ) -> Result<MeshHandle, MeshError> {
        let identity = NodeIdentity::new(node_key, &admission.certificate)?;
        let revocations = aether_identity::RevocationSet::new();
        let revocations = Arc::new(RwLock::new(revocations));
        let ledger = admission::load_ledger(&config.data_dir)?;
        let ledger = Arc::new(RwLock::new(ledger));
        let stored = admission::load_revocations(&config.data_dir, &admission.root)?;
        {
            let mut set = revocations.write().unwrap_or_else(|p| p.into_inner());
            for r in stored {
                set.insert(r);
            }
        }
        let endpoint = Endpoint::bind(
            config.listen,
            identity,
            aether_transport::Admission {
                root: admission.root,
                revocations: revocations.clone(),
                ledger: ledger.clone(),
            },
            config.transport.clone(),
        )?;
        let local_addr = endpoint.local_addr()?;
        let advertise = config.advertise.unwrap_or(local_addr);
        let incarnation = admission::next_incarnation(&config.data_dir)?;
        let mut labels: Vec<(String, String)> = Vec::new();
        for (k, v) in admission.admitted.labels().iter() {
            if BUILTIN_LABELS.contains(&k)
                || [aether_nat::REACHABILITY_LABEL, aether_nat::OBSERVED_LABEL].contains(&k)
                || config.extra_labels.iter().any(|(e, _)| e == k)
            {
                tracing::warn!(
                    label = %k,
                    "the node certificate carries label {k}={v}, a built-in label; advertising \
                     this machine's value instead"
                );
                continue;
            }
            labels.push((k.to_string(), v.to_string()));
        }
        labels.extend(builtin_labels(&config.capacity));
        labels.extend(config.extra_labels.iter().cloned());
        let metadata = Metadata {
            region: admission
                .admitted
                .region()
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
            labels,
            capacity: config.capacity.clone(),
            load: Load::default(),
            http_addr: config.http_addr,
            version: config.version.clone(),
        };
        let metrics = Arc::new(MeshMetrics::default());
        let (commands, rx) = mpsc::channel(64);
        let node = node_key.public();
        let lattice = admission.admitted.lattice();
        let root = admission.root;
        let task = driver::spawn(driver::Setup {
            config,
            endpoint: endpoint.clone(),
            admission,
            advertise,
            incarnation,
            metadata,
            metrics: metrics.clone(),
            commands: rx,
        })?;
        tracing::info!(
            node = %node,
            lattice = %lattice,
            mesh = %local_addr,
            incarnation,
            "mesh listening"
        );
        Ok(MeshHandle {
            commands,
            node,
            lattice,
            root,
            local_addr,
            metrics,
            endpoint,
            task: Arc::new(tokio::sync::Mutex::new(Some(task))),
        })
    }
}

/// Control of a running mesh. Cheap to clone.
#[derive(Clone)]
pub struct MeshHandle {
    commands: mpsc::Sender<Command>,
    node: NodeId,
    lattice: LatticeId,
    root: PublicKey,
    local_addr: SocketAddr,
    metrics: Arc<MeshMetrics>,
    endpoint: Endpoint,
    task: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl std::fmt::Debug for MeshHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshHandle")
            .field("node", &self.node)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl MeshHandle {
    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The lattice this node belongs to.
    pub fn lattice(&self) -> LatticeId {
        self.lattice
    }

    /// The lattice root public key.
    pub fn root(&self) -> PublicKey {
        self.root
    }

    /// The bound mesh address (UDP).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The mesh metrics (register them once with [`MeshMetrics::register`]).
    pub fn metrics(&self) -> &Arc<MeshMetrics> {
        &self.metrics
    }

    /// The transport endpoint (later parts send their own channels over it).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Every member this node knows, itself first.
    pub async fn members(&self) -> Result<Vec<Member>, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Members(tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)
    }

    /// Applies a root-signed revocation here and pushes it to every member.
    pub async fn revoke(&self, revocation: Revocation) -> Result<RevokeOutcome, MeshError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Revoke(Box::new(revocation), tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        rx.await.map_err(|_| MeshError::Stopped)?
    }

    /// Delivers every message arriving on `channel` (one of the channels
    /// this crate does not use itself) to the returned receiver, from
    /// admitted, unrevoked peers only. A later subscription to the same
    /// channel replaces the earlier one. When the receiver lags `capacity`
    /// messages behind, newer ones are dropped.
    pub async fn subscribe(
        &self,
        channel: u8,
        capacity: usize,
    ) -> Result<mpsc::Receiver<aether_transport::Message>, MeshError> {
        if channel == CHANNEL_MEMBERSHIP || channel == CHANNEL_ADMISSION {
            return Err(MeshError::Admission(format!(
                "channel {channel} is the mesh's own"
            )));
        }
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.commands
            .send(Command::Subscribe(channel, tx))
            .await
            .map_err(|_| MeshError::Stopped)?;
        Ok(rx)
    }

    /// Sets the load this node advertises (sent when it changes noticeably).
    pub fn set_load(&self, load: Load) {
        let _ = self.commands.try_send(Command::Load(load));
    }

    /// Leaves the lattice gracefully (members show this node as `left`), then
    /// closes the endpoint. Waits at most `timeout`.
    pub async fn leave(&self, timeout: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Leave(tx)).await.is_ok() {
            let _ = tokio::time::timeout(timeout, rx).await;
        }
        self.endpoint.close();
        if let Some(task) = self.task.lock().await.take() {
            task.abort();
        }
    }
}

/// Keys of the labels every node advertises about itself; `--label` may not set them.
///
/// - `arch`: the CPU architecture the node runs on, as Rust names it (`x86_64`, `aarch64`, …);
/// - `os`: the operating system (`linux`, `macos`, …);
/// - `cores`: the cores it advertises, a decimal number;
/// - `memory`: the memory it advertises, in whole MiB (`512MiB`).
pub const BUILTIN_LABELS: [&str; 4] = ["arch", "os", "cores", "memory"];

/// The built-in labels ([`BUILTIN_LABELS`]) of a node running this binary and advertising
/// `capacity`.
pub fn builtin_labels(capacity: &Capacity) -> [(String, String); 4] {
    [
        ("arch".into(), std::env::consts::ARCH.into()),
        ("os".into(), std::env::consts::OS.into()),
        ("cores".into(), capacity.cores.to_string()),
        (
            "memory".into(),
            format!("{}MiB", capacity.memory_bytes >> 20),
        ),
    ]
}

/// This machine's cores (those this process may run on) and memory (`MemTotal`, and the
/// cgroup's `memory.max` when that is lower).
pub fn local_capacity() -> Capacity {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let total = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024);
    let memory_bytes = match cgroup_memory_limit() {
        Some(limit) if total == 0 || limit < total => limit,
        _ => total,
    };
    Capacity {
        cores,
        memory_bytes,
    }
}

/// The `memory.max` of this process's cgroup (v2), when it sets one.
fn cgroup_memory_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}{path}/memory.max")).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Converts a node key into the membership core's id.
pub(crate) fn to_member_id(id: &NodeId) -> aether_membership::NodeId {
    aether_membership::NodeId(*id.as_bytes())
}

/// Converts a membership id back into a node key (`None` for bytes that are
/// not a valid key).
pub(crate) fn to_node_id(id: &aether_membership::NodeId) -> Option<NodeId> {
    PublicKey::from_bytes(&id.0).ok()
}
