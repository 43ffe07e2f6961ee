//! The kernel data plane on this node (`aether-ebpf`, DESIGN §3.7). Loaded before the mesh
//! starts, so the node advertises how its mesh traffic is admitted (the `data-plane` label:
//! `ebpf`, `ebpf-audit` or `userspace`); then kept in step with the member view every 250 ms:
//! alive and suspect members' addresses are allowed, revoked members' denied, the ports of the
//! forwarding endpoints filtered as they bind. The per-source counters go to `/metrics`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_ebpf::{DataPlane, Mode, SourceStats};
use aether_mesh::{MemberStatus, MeshHandle};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// How often the maps follow the member view.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// Labels of the per-source counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

/// Labels of the outbound counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

/// The admission filter's counters, by source address, and what the node sent, by destination.
#[derive(Clone, Default)]
pub(crate) struct DataPlaneMetrics {
    passed: Family<SourceLabel, Counter>,
    dropped: Family<SourceLabel, Counter>,
    bytes: Family<SourceLabel, Counter>,
    sent_packets: Family<DestinationLabel, Counter>,
    sent_bytes: Family<DestinationLabel, Counter>,
}

impl DataPlaneMetrics {
    /// Registers `aether_ebpf_{passed,dropped}_packets_total` and `aether_ebpf_passed_bytes_total`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "aether_ebpf_passed_packets",
            "Datagrams to the mesh ports the kernel's admission filter passed, by source",
            self.passed.clone(),
        );
        registry.register(
            "aether_ebpf_dropped_packets",
            "Datagrams to the mesh ports the kernel's admission filter dropped (audit mode: would have), by source",
            self.dropped.clone(),
        );
        registry.register(
            "aether_ebpf_passed_bytes",
            "Bytes of the datagrams the admission filter passed, by source",
            self.bytes.clone(),
        );
        registry.register(
            "aether_ebpf_sent_packets",
            "Datagrams the node's mesh endpoints sent, by destination (counted on tc egress)",
            self.sent_packets.clone(),
        );
        registry.register(
            "aether_ebpf_sent_bytes",
            "Bytes the node's mesh endpoints sent, by destination",
            self.sent_bytes.clone(),
        );
    }

    /// Adds what the node sent since the last call (`last` holds the previous readings).
    fn update_sent(&self, now: &[(IpAddr, u64, u64)], last: &mut BTreeMap<IpAddr, (u64, u64)>) {
        for &(addr, packets, bytes) in now {
            let (p0, b0) = last.insert(addr, (packets, bytes)).unwrap_or_default();
            let label = DestinationLabel {
                destination: addr.to_string(),
            };
            let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
            self.sent_packets
                .get_or_create(&label)
                .inc_by(delta(packets, p0));
            self.sent_bytes
                .get_or_create(&label)
                .inc_by(delta(bytes, b0));
        }
    }

    /// Adds what the kernel counted since the last call (`last` holds the previous readings).
    fn update(&self, now: &[(IpAddr, SourceStats)], last: &mut BTreeMap<IpAddr, SourceStats>) {
        for (addr, stats) in now {
            let before = last.get(addr).copied().unwrap_or_default();
            let label = SourceLabel {
                source: addr.to_string(),
            };
            // A source the kernel's LRU map forgot and saw again starts from zero.
            let delta = |now: u64, then: u64| if now >= then { now - then } else { now };
            self.passed
                .get_or_create(&label)
                .inc_by(delta(stats.passed, before.passed));
            self.dropped
                .get_or_create(&label)
                .inc_by(delta(stats.dropped, before.dropped));
            self.bytes
                .get_or_create(&label)
                .inc_by(delta(stats.bytes, before.bytes));
            last.insert(*addr, *stats);
        }
    }
}

/// The data plane as this node runs it.
pub(crate) struct KernelDataPlane {
    plane: Mutex<DataPlane>,
    /// Its counters.
    pub(crate) metrics: DataPlaneMetrics,
}

/// Loads the admission filter for the mesh endpoint on `listen`, as `mode` asks. `None` when
/// the node admits in userspace (off, or `auto` and the kernel refused, said in one line);
/// an error only for `on`.
pub(crate) fn load(mode: Mode, listen: SocketAddr) -> anyhow::Result<Option<Arc<KernelDataPlane>>> {
    if mode == Mode::Off {
        tracing::info!(
            "eBPF data plane off (--ebpf off): mesh traffic is admitted by the node's QUIC stack"
        );
        return Ok(None);
    }
    match DataPlane::start(mode, listen.ip(), &[listen.port()]) {
        Ok(plane) => {
            let hooks: Vec<String> = plane
                .interfaces()
                .iter()
                .zip(plane.hooks())
                .map(|(i, h)| {
                    format!(
                        "{i} ({})",
                        if *h == aether_ebpf::Hook::Xdp {
                            "xdp"
                        } else {
                            "tc"
                        }
                    )
                })
                .collect();
            tracing::info!(
                interfaces = %hooks.join(", "),
                port = listen.port(),
                "eBPF admission filter attached ({})",
                if mode == Mode::Audit { "audit: counting, dropping nothing" } else { "dropping datagrams from non-members" }
            );
            Ok(Some(Arc::new(KernelDataPlane {
                plane: Mutex::new(plane),
                metrics: DataPlaneMetrics::default(),
            })))
        }
        Err(e) if mode == Mode::On => Err(anyhow::anyhow!("--ebpf on: {e}")),
        Err(e) => {
            tracing::warn!(
                "eBPF data plane not used ({e}); mesh traffic is admitted by the node's QUIC stack in userspace"
            );
            Ok(None)
        }
    }
}

impl KernelDataPlane {
    /// The name `alkahest nodes` shows for it.
    pub(crate) fn name(&self) -> &'static str {
        let mode = self.plane.lock().unwrap_or_else(|p| p.into_inner()).mode();
        aether_ebpf::data_plane_name(Some(mode))
    }

    /// Keeps the maps in step with the member view until the node stops; `ports` gives the
    /// mesh ports bound since the start.
    pub(crate) async fn follow(
        self: Arc<Self>,
        mesh: MeshHandle,
        ports: impl Fn() -> Vec<u16> + Send + 'static,
    ) {
        let mut last: BTreeMap<IpAddr, SourceStats> = BTreeMap::new();
        let mut last_sent: BTreeMap<IpAddr, (u64, u64)> = BTreeMap::new();
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        loop {
            tick.tick().await;
            let Ok(members) = mesh.members().await else {
                continue;
            };
            // A member's mesh address, and for one behind NAT the address its packets come
            // from: the one this node's connection with it sees, or the one members report.
            let allowed: BTreeSet<IpAddr> = members
                .iter()
                .filter(|m| {
                    m.is_self || matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect)
                })
                .flat_map(|m| {
                    let observed = m
                        .metadata
                        .as_ref()
                        .and_then(|meta| meta.label(aether_nat::OBSERVED_LABEL))
                        .and_then(|v| v.parse::<std::net::SocketAddr>().ok());
                    [
                        Some(m.mesh_addr),
                        mesh.endpoint().remote_addr(&m.id),
                        observed,
                    ]
                    .into_iter()
                    .flatten()
                    .map(|a| a.ip())
                })
                .collect();
            let denied: BTreeSet<IpAddr> = members
                .iter()
                .filter(|m| m.status == MemberStatus::Revoked)
                .map(|m| m.mesh_addr.ip())
                .collect();
            let mut mesh_ports = ports();
            mesh_ports.push(mesh.local_addr().port());
            let sources = {
                let mut plane = self.plane.lock().unwrap_or_else(|p| p.into_inner());
                match plane.set_members(&allowed, &denied) {
                    Ok(changes) if !changes.is_empty() => {
                        tracing::debug!(?changes, "admission maps updated")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!("admission maps not updated: {e}"),
                }
                if let Err(e) = plane.add_mesh_ports(&mesh_ports) {
                    tracing::warn!("mesh ports not filtered: {e}");
                }
                (plane.sources(), plane.sent())
            };
            let (sources, sent) = sources;
            self.metrics.update(&sources, &mut last);
            self.metrics.update_sent(&sent, &mut last_sent);
        }
    }
}
