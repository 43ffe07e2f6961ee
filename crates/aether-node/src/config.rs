//! Settings of one node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use aether_identity::{InviteToken, SecretKey, TrustedKeys};
use aether_mesh::MeshConfig;
use aether_runtime::RuntimeConfig;

/// Everything a node needs to start. Every field has a documented default in
/// `aether-d --help`.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the node keeps its deployments and compiled code.
    pub data_dir: PathBuf,
    /// Compiled-code cache; default `DATA_DIR/compile-cache`.
    pub cache_dir: Option<PathBuf>,
    /// HTTP ingress address. Default `127.0.0.1:8080`.
    pub http_addr: SocketAddr,
    /// Admin API address. Default `127.0.0.1:7070`: loopback only, so the
    /// admin API is not reachable from other machines unless asked for.
    pub admin_addr: SocketAddr,
    /// Keys allowed to call the admin API.
    pub admin_keys: TrustedKeys,
    /// Keys whose essences this node runs.
    pub publishers: TrustedKeys,
    /// Ingress worker threads. Default: one per CPU.
    pub workers: usize,
    /// How long shutdown waits for in-flight requests. Default 30 s.
    pub drain_timeout: Duration,
    /// Clock window of signed admin requests. Default 30 s.
    pub admin_window: Duration,
    /// Largest essence accepted by a deploy. Default 256 MiB.
    pub max_essence_bytes: usize,
    /// Whether to redeploy the essences stored by an earlier run. Default true.
    pub restore: bool,
    /// Engine and pool settings.
    pub runtime: RuntimeConfig,
    /// Lattice membership; `None` serves alone.
    pub mesh: Option<MeshSetup>,
    /// Whether the kernel admits mesh traffic (`--ebpf`). Default: where it loads.
    pub ebpf: aether_ebpf::Mode,
    /// Where virtual addresses come from (`--vip-range`). Default `127.77.0.0/16`.
    pub vip_range: aether_ebpf::VipRange,
    /// The cgroup whose processes reach virtual addresses (`--vip-cgroup`). Default: the
    /// node's own.
    pub vip_cgroup: Option<PathBuf>,
}

/// How a node takes its place in a lattice.
#[derive(Debug, Clone)]
pub struct MeshSetup {
    /// Mesh settings (its `data_dir` is replaced by the node's).
    pub config: MeshConfig,
    /// `--invite`: admits the node on its first start.
    pub invite: Option<InviteToken>,
    /// The operator's root key, when this machine has one: admits a node that
    /// has neither a stored certificate nor an invite (the first node).
    pub root_key: Option<SecretKey>,
    /// `--region`.
    pub region: Option<String>,
    /// `--label k=v`.
    pub labels: Vec<String>,
}

impl NodeConfig {
    /// Defaults for a node keeping its files in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            cache_dir: None,
            http_addr: SocketAddr::from(([127, 0, 0, 1], aether_admin::DEFAULT_HTTP_PORT)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], aether_admin::DEFAULT_ADMIN_PORT)),
            admin_keys: TrustedKeys::new(),
            publishers: TrustedKeys::new(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            drain_timeout: Duration::from_secs(30),
            admin_window: aether_admin::auth::DEFAULT_WINDOW,
            max_essence_bytes: 256 << 20,
            restore: true,
            runtime: RuntimeConfig::default(),
            mesh: None,
            ebpf: aether_ebpf::Mode::Auto,
            vip_range: aether_ebpf::VipRange::default(),
            vip_cgroup: None,
        }
    }

    pub(crate) fn runtime_config(&self) -> RuntimeConfig {
        let mut rc = self.runtime.clone();
        rc.cache_dir = Some(
            self.cache_dir
                .clone()
                .unwrap_or_else(|| self.data_dir.join("compile-cache")),
        );
        rc
    }

    pub(crate) fn essence_dir(&self) -> PathBuf {
        self.data_dir.join("essences")
    }
}
