//! Virtual addresses for components (DESIGN §3.7, the flat address space). Every deployment with
//! `[http] virtual_address = true` (every deployment, when the lattice setting
//! `virtual-addresses` is on) gets an address from the node's range (`--vip-range`), the
//! same on every node since it is computed from the deployments' names alone. This node listens
//! for each on a loopback port of its own, serving every request there with that component
//! (here or over the mesh, as the ingress does), and the kernel's cgroup programs connect a
//! process in the node's cgroup that dials `VIP:80` to that listener, with no proxy.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aether_ebpf::{Mode, Traffic, VipRange};
use arc_swap::ArcSwap;
use http::StatusCode;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::ingress::{Routing, serve_deployment};

/// How often the table follows the deployments.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// The port a virtual address answers on.
const VIP_PORT: u16 = 80;

/// Labels naming a component.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ComponentLabel {
    component: String,
}

/// Labels naming a component and a direction (`to` it or `from` it).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct ComponentDirection {
    component: String,
    direction: &'static str,
}

type CounterFamily<L> =
    prometheus_client::metrics::family::Family<L, prometheus_client::metrics::counter::Counter>;

/// The virtual addresses this node gives out, for status, and what went through them.
pub(crate) struct VirtualAddressTable {
    current: ArcSwap<BTreeMap<String, SocketAddrV4>>,
    /// Why there are none, when the kernel programs are not in use.
    unavailable: Option<String>,
    connections: CounterFamily<ComponentLabel>,
    packets: CounterFamily<ComponentDirection>,
    bytes: CounterFamily<ComponentDirection>,
}

impl VirtualAddressTable {
    /// Registers `aether_ebpf_vip_connections_total`, `aether_ebpf_vip_packets_total` and
    /// `aether_ebpf_vip_bytes_total`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "aether_ebpf_vip_connections",
            "Connections the kernel made to a component through its virtual address, from this node's cgroup",
            self.connections.clone(),
        );
        registry.register(
            "aether_ebpf_vip_packets",
            "IP packets this node's cgroup sent to (direction=to) and received from (direction=from) a component through its virtual address",
            self.packets.clone(),
        );
        registry.register(
            "aether_ebpf_vip_bytes",
            "Bytes of those packets, IP headers included",
            self.bytes.clone(),
        );
    }

    /// Adds the growth of each address's kernel counters since the last look (`before`).
    fn count(
        &self,
        names: &BTreeMap<String, SocketAddrV4>,
        connections: Vec<(SocketAddrV4, u64)>,
        traffic: Vec<(SocketAddrV4, Traffic)>,
        before: &mut BTreeMap<SocketAddrV4, (u64, Traffic)>,
    ) {
        let name_of = |vip: SocketAddrV4| {
            names
                .iter()
                .find(|(_, v)| **v == vip)
                .map(|(n, _)| n.clone())
        };
        for (vip, total) in connections {
            let seen = &mut before.entry(vip).or_default().0;
            let grown = total.saturating_sub(*seen);
            *seen = total;
            if let Some(component) = name_of(vip) {
                self.connections
                    .get_or_create(&ComponentLabel { component })
                    .inc_by(grown);
            }
        }
        for (vip, total) in traffic {
            let seen = &mut before.entry(vip).or_default().1;
            let grown = Traffic {
                packets_out: total.packets_out.saturating_sub(seen.packets_out),
                bytes_out: total.bytes_out.saturating_sub(seen.bytes_out),
                packets_in: total.packets_in.saturating_sub(seen.packets_in),
                bytes_in: total.bytes_in.saturating_sub(seen.bytes_in),
            };
            *seen = total;
            let Some(component) = name_of(vip) else {
                continue;
            };
            for (direction, packets, bytes) in [
                ("to", grown.packets_out, grown.bytes_out),
                ("from", grown.packets_in, grown.bytes_in),
            ] {
                let label = ComponentDirection {
                    component: component.clone(),
                    direction,
                };
                self.packets.get_or_create(&label).inc_by(packets);
                self.bytes.get_or_create(&label).inc_by(bytes);
            }
        }
    }

    /// The address of `name`, or why it has none here (when it asked for one).
    pub(crate) fn of(&self, name: &str) -> Result<Option<String>, String> {
        if let Some(a) = self.current.load().get(name) {
            return Ok(Some(a.to_string()));
        }
        match &self.unavailable {
            Some(why) => Err(why.clone()),
            None => Ok(None),
        }
    }
}

/// Whether `d` gets a virtual address: its manifest asks for one, or the lattice gives every
/// deployment one.
pub(crate) fn wanted(
    d: &crate::deployments::Deployment,
    settings: &aether_admin::types::LatticeSettings,
) -> bool {
    settings.virtual_addresses || d.component.manifest().http.virtual_address
}

/// The cgroup v2 directory this process runs in (`/proc/self/cgroup`'s `0::` line, under the
/// unified mount).
fn own_cgroup() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mount = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .iter()
        .map(Path::new)
        .find(|m| m.join("cgroup.threads").exists())?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// Starts following the deployments: listeners, the kernel's table, the status table.
pub(crate) fn start(
    mode: Mode,
    range: VipRange,
    cgroup: Option<PathBuf>,
    routing: Arc<Routing>,
    settings: Arc<crate::settings::Settings>,
) -> Arc<VirtualAddressTable> {
    let attached = if mode == Mode::Off {
        Err("the eBPF data plane is off (--ebpf off)".to_string())
    } else {
        match cgroup.or_else(own_cgroup) {
            None => Err("no cgroup v2 to attach to".to_string()),
            Some(dir) => attach(&dir),
        }
    };
    let (kernel, unavailable) = match attached {
        Ok(k) => {
            tracing::info!(cgroup = %k.cgroup().display(), range = %range, "virtual addresses: cgroup programs attached");
            (Some(k), None)
        }
        Err(why) => {
            tracing::info!("virtual addresses unavailable on this node: {why}");
            (None, Some(why))
        }
    };
    let table = Arc::new(VirtualAddressTable {
        current: ArcSwap::from_pointee(BTreeMap::new()),
        unavailable,
        connections: Default::default(),
        packets: Default::default(),
        bytes: Default::default(),
    });
    if let Some(kernel) = kernel {
        tokio::spawn(follow(kernel, range, routing, settings, table.clone()));
    }
    table
}

#[cfg(target_os = "linux")]
type Kernel = aether_ebpf::VirtualAddresses;

#[cfg(target_os = "linux")]
fn attach(dir: &Path) -> Result<Kernel, String> {
    aether_ebpf::VirtualAddresses::attach(dir).map_err(|e| e.to_string())
}

#[cfg(not(target_os = "linux"))]
struct Kernel;

#[cfg(not(target_os = "linux"))]
impl Kernel {
    fn cgroup(&self) -> &Path {
        Path::new("")
    }
    fn set(
        &mut self,
        _: &BTreeMap<SocketAddrV4, SocketAddrV4>,
    ) -> Result<(), aether_ebpf::DataPlaneError> {
        Ok(())
    }
    fn connections(&self) -> Vec<(SocketAddrV4, u64)> {
        Vec::new()
    }
    fn traffic(&self) -> Vec<(SocketAddrV4, Traffic)> {
        Vec::new()
    }
}

#[cfg(not(target_os = "linux"))]
fn attach(_: &Path) -> Result<Kernel, String> {
    Err("virtual addresses need Linux".into())
}

/// One component's listener.
struct Listener {
    addr: SocketAddrV4,
    task: tokio::task::JoinHandle<()>,
}

async fn follow(
    mut kernel: Kernel,
    range: VipRange,
    routing: Arc<Routing>,
    settings: Arc<crate::settings::Settings>,
    table: Arc<VirtualAddressTable>,
) {
    let mut listeners: BTreeMap<String, Listener> = BTreeMap::new();
    let mut counted: BTreeMap<SocketAddrV4, (u64, Traffic)> = BTreeMap::new();
    let mut tick = tokio::time::interval(FOLLOW_EVERY);
    loop {
        tick.tick().await;
        let deployments = routing.deployments.list();
        let settings = settings.get();
        let names: Vec<&str> = deployments
            .iter()
            .filter(|d| wanted(d, &settings))
            .map(|d| d.component.name())
            .collect();
        let allocated = range.allocate(names);
        listeners.retain(|name, l| {
            let keep = allocated.contains_key(name);
            if !keep {
                l.task.abort();
            }
            keep
        });
        for name in allocated.keys() {
            if listeners.contains_key(name) {
                continue;
            }
            match listen(name, routing.clone()).await {
                Ok(l) => {
                    listeners.insert(name.clone(), l);
                }
                Err(e) => {
                    tracing::warn!(component = %name, "no listener for its virtual address: {e}")
                }
            }
        }
        let mut kernel_table = BTreeMap::new();
        let mut status = BTreeMap::new();
        for (name, ip) in &allocated {
            let Some(l) = listeners.get(name) else {
                continue;
            };
            let vip = SocketAddrV4::new(*ip, VIP_PORT);
            kernel_table.insert(vip, l.addr);
            status.insert(name.clone(), vip);
        }
        if let Err(e) = kernel.set(&kernel_table) {
            tracing::warn!("virtual addresses not updated in the kernel: {e}");
            continue;
        }
        table.count(
            &status,
            kernel.connections(),
            kernel.traffic(),
            &mut counted,
        );
        if **table.current.load() != status {
            for (name, vip) in &status {
                if table.current.load().get(name) != Some(vip) {
                    tracing::info!(component = %name, address = %vip, "virtual address");
                }
            }
            table.current.store(Arc::new(status));
        }
    }
}

/// Binds a loopback port for `name` and serves every request there with it.
async fn listen(name: &str, routing: Arc<Routing>) -> std::io::Result<Listener> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = match listener.local_addr()? {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(_) => return Err(std::io::Error::other("bound to IPv6")),
    };
    let name = name.to_string();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, client)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (routing, name) = (routing.clone(), name.clone());
            tokio::spawn(async move {
                let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    let (routing, name) = (routing.clone(), name.clone());
                    // Served by this component whatever the path, here or on a host.
                    if let Ok(value) = http::HeaderValue::from_str(&name) {
                        req.headers_mut()
                            .insert(crate::forward::COMPONENT_HEADER, value);
                    }
                    async move {
                        let resp = match routing.deployments.get(&name) {
                            Some(d) => serve_deployment(&routing, d, req, Some(client)).await,
                            None => aether_runtime::host_response(
                                StatusCode::NOT_FOUND,
                                format!("component `{name}` is no longer deployed\n"),
                            ),
                        };
                        Ok::<_, Infallible>(resp)
                    }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::trace!("virtual-address connection ended: {e}");
                }
            });
        }
    });
    Ok(Listener { addr, task })
}
