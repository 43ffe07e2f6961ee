//! What hosts say about the deployments they run: the question peers ask on mesh channel
//! [`CHANNEL_CONTROL`], and the placement status built from the answers (`alkahest status`).

use std::sync::Arc;
use std::time::Duration;

use aether_identity::NodeId;

use super::{Host, Schedule};
use crate::deployments::{Deployment, Deployments};

/// Mesh channel on which nodes ask each other what they run.
pub const CHANNEL_CONTROL: u8 = 5;
/// Bound on asking one host for its state.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// What a host says about one deployment.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct HostState {
    /// It holds the deployment.
    pub known: bool,
    /// Placement puts a replica on it, as it sees it.
    pub hosted: bool,
    /// It is loaded (not scaled to zero).
    pub active: bool,
    /// Instances running now.
    pub instances: usize,
    /// Its load over the last window.
    #[serde(default)]
    pub load: crate::deployment_load::LocalLoad,
}

pub(super) fn local_state(
    deployments: &Deployments,
    sampler: &crate::deployment_load::LoadSampler,
    name: &str,
) -> HostState {
    match deployments.get(name) {
        Some(d) => HostState {
            known: true,
            hosted: d.is_hosted(),
            active: d.component.is_active(),
            instances: d.component.running_instances(),
            load: sampler.load(name),
        },
        None => HostState::default(),
    }
}

/// Answers peers asking what this node runs, until the node stops.
pub(crate) async fn serve_control(
    mut incoming: tokio::sync::mpsc::Receiver<aether_transport::IncomingStream>,
    deployments: Arc<Deployments>,
    sampler: Arc<crate::deployment_load::LoadSampler>,
) {
    while let Some(mut stream) = incoming.recv().await {
        let deployments = deployments.clone();
        let sampler = sampler.clone();
        tokio::spawn(async move {
            let Ok(Ok(name)) =
                tokio::time::timeout(ASK_TIMEOUT, stream.recv.read_to_end(256)).await
            else {
                return;
            };
            let state = local_state(&deployments, &sampler, &String::from_utf8_lossy(&name));
            let reply = serde_json::to_vec(&state).unwrap_or_default();
            let _ = stream.send.write_all(&reply).await;
            let _ = stream.send.finish();
        });
    }
}

impl Schedule {
    /// Asks `host` what it runs of `name`; `None` when it does not answer in time.
    pub(super) async fn ask(&self, host: &Host, name: &str) -> Option<HostState> {
        if host.id == self.me {
            return Some(local_state(&self.deployments, &self.sampler, name));
        }
        let mesh = self.mesh.as_ref()?;
        let endpoint = mesh.endpoint().clone();
        let ask = async {
            endpoint.connect(host.mesh_addr, Some(host.id)).await.ok()?;
            let (mut send, mut recv) = endpoint
                .open_stream_with(
                    &host.id,
                    CHANNEL_CONTROL,
                    bytes::Bytes::copy_from_slice(name.as_bytes()),
                )
                .await
                .ok()?;
            let _ = send.finish();
            let reply = recv.read_to_end(4096).await.ok()?;
            serde_json::from_slice(&reply).ok()
        };
        tokio::time::timeout(ASK_TIMEOUT, ask).await.ok().flatten()
    }

    /// Where `d` runs across the lattice; with `detailed`, also its ranking
    /// and each host's state (asked over the mesh).
    pub(crate) async fn placement_json(
        &self,
        d: &Deployment,
        detailed: bool,
    ) -> Option<aether_admin::types::PlacementJson> {
        use aether_admin::types::{
            HostJson, PlacementChangeJson, PlacementJson, RankJson, UnsatisfiedJson,
        };
        let view = self.view.load_full();
        if !view.meshed {
            return None;
        }
        let name = d.component.name();
        let hosts = view.hosts.get(name).cloned().unwrap_or_default();
        let region_of = |id: &NodeId| {
            view.members
                .iter()
                .find(|m| m.id == *id.as_bytes())
                .map(|m| m.region.clone())
                .unwrap_or_default()
        };
        let states: Vec<Option<HostState>> = if detailed {
            futures::future::join_all(hosts.iter().map(|h| self.ask(h, name))).await
        } else {
            hosts
                .iter()
                .map(|h| {
                    (h.id == self.me).then(|| local_state(&self.deployments, &self.sampler, name))
                })
                .collect()
        };
        let mut running = 0;
        let host_rows = hosts
            .iter()
            .zip(&states)
            .map(|(h, state)| {
                let state = match state {
                    Some(s) if s.active && s.hosted => {
                        running += h.instances;
                        "running"
                    }
                    Some(s) if s.hosted => "scaled-to-zero",
                    Some(_) => "starting",
                    None if detailed || h.id == self.me => "unreachable",
                    None => "placed",
                };
                HostJson {
                    node: h.id.to_string(),
                    region: region_of(&h.id),
                    instances: h.instances,
                    state: state.to_string(),
                    rtt_ms: h.rtt.map(|r| r.as_secs_f64() * 1000.0),
                    is_self: h.id == self.me,
                }
            })
            .collect();
        let ranking = match (detailed, view.inputs.get(name)) {
            (true, Some(input)) => aether_placement::explain(input, &view.members)
                .unwrap_or_default()
                .into_iter()
                .map(|c| {
                    let eligible = c.eligibility == aether_placement::Eligibility::Eligible;
                    RankJson {
                        node: aether_identity::PublicKey::from_bytes(&c.member)
                            .map_or_else(|_| hex::encode(c.member), |k| k.to_string()),
                        region: c.region,
                        score: c.score,
                        eligible,
                        reason: (!eligible).then(|| c.eligibility.to_string()),
                        rtt_from_ms: c.rtt_from.map(|r| r.as_secs_f64() * 1000.0),
                        hosts: hosts.iter().any(|h| *h.id.as_bytes() == c.member),
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        Some(PlacementJson {
            desired: view.desired.get(name).copied().unwrap_or(0),
            placed: hosts.iter().map(|h| h.instances).sum(),
            running,
            hosts: host_rows,
            ranking,
            unsatisfied: view
                .reports
                .iter()
                .filter(|r| r.deployment == name)
                .map(|r| UnsatisfiedJson {
                    constraint: r.constraint.to_string(),
                    detail: r.detail.clone(),
                })
                .collect(),
            changes: self
                .changes()
                .into_iter()
                .filter(|c| c.deployment == name)
                .map(|c| PlacementChangeJson {
                    at: c.at,
                    added: c.added,
                    removed: c.removed,
                    reason: c.reason,
                })
                .collect(),
            computed_at_ms: view.computed_at_ms,
        })
    }
}
