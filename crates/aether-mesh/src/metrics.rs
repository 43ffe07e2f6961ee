//! Prometheus metrics of the mesh: members by state, probes, suspicions,
//! refutations, bytes per peer and refused handshakes by reason.

use aether_membership::Stats;
use aether_transport::{RefusalReason, TransportMetrics};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: a member state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `alive`, `suspect`, `dead`, `left` or `revoked`.
    pub state: String,
}

/// Label: a peer node (its id).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The peer's node id.
    pub peer: String,
}

/// Label: why a handshake was refused.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A [`RefusalReason`] name.
    pub reason: String,
}

/// Handles to every mesh metric.
#[derive(Default, Debug)]
pub struct MeshMetrics {
    members: Family<StateLabel, Gauge>,
    probes: Counter,
    suspicions: Counter,
    refutations: Counter,
    messages_in: Counter,
    messages_out: Counter,
    messages_dropped: Counter,
    peer_bytes_in: Family<PeerLabel, Counter>,
    peer_bytes_out: Family<PeerLabel, Counter>,
    refused: Family<ReasonLabel, Counter>,
    revocations: Gauge,
    local_health: Gauge,
    self_refutations: Counter,
    relayed_packets: Counter,
    relayed_bytes: Counter,
    relay_dropped: Counter,
    last_relay: std::sync::Mutex<[u64; 3]>,
    last_stats: std::sync::Mutex<(Stats, [u64; RefusalReason::ALL.len()])>,
}

impl MeshMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "aether_mesh_members",
            "Members this node knows, by state (itself included)",
            self.members.clone(),
        );
        registry.register(
            "aether_mesh_probes",
            "Round-trip probes sent (they feed the network coordinates)",
            self.probes.clone(),
        );
        registry.register(
            "aether_mesh_suspicions",
            "Members seen going from alive to suspect",
            self.suspicions.clone(),
        );
        registry.register(
            "aether_mesh_refutations",
            "Suspected members seen alive again (false suspicions refuted)",
            self.refutations.clone(),
        );
        registry.register(
            "aether_mesh_gossip_messages_received",
            "Membership messages received",
            self.messages_in.clone(),
        );
        registry.register(
            "aether_mesh_gossip_messages_sent",
            "Membership messages produced",
            self.messages_out.clone(),
        );
        registry.register(
            "aether_mesh_messages_dropped",
            "Messages not sent: the send queue was full or the peer unreachable",
            self.messages_dropped.clone(),
        );
        registry.register(
            "aether_mesh_peer_received_bytes",
            "Mesh payload bytes received, by peer",
            self.peer_bytes_in.clone(),
        );
        registry.register(
            "aether_mesh_peer_sent_bytes",
            "Mesh payload bytes sent, by peer",
            self.peer_bytes_out.clone(),
        );
        registry.register(
            "aether_mesh_relayed_packets",
            "Datagrams this node passed on between two other members that cannot reach each other",
            self.relayed_packets.clone(),
        );
        registry.register(
            "aether_mesh_relayed_bytes",
            "Bytes of the datagrams this node relayed",
            self.relayed_bytes.clone(),
        );
        registry.register(
            "aether_mesh_relay_dropped_packets",
            "Datagrams this node was asked to relay and dropped (relaying off, an unknown member, over a pair's budget)",
            self.relay_dropped.clone(),
        );
        registry.register(
            "aether_mesh_refused_handshakes",
            "Peers refused during the QUIC handshake, by reason",
            self.refused.clone(),
        );
        registry.register(
            "aether_mesh_local_health",
            "Lifeguard local health multiplier: 0 healthy; probe timeouts scale by it plus one",
            self.local_health.clone(),
        );
        registry.register(
            "aether_mesh_self_refutations",
            "Suspicions about this node that it refuted",
            self.self_refutations.clone(),
        );
        registry.register(
            "aether_mesh_revoked_nodes",
            "Revocations this node knows",
            self.revocations.clone(),
        );
    }

    pub(crate) fn peer_in(&self, peer: &str, bytes: usize) {
        self.peer_bytes_in
            .get_or_create(&PeerLabel {
                peer: peer.to_string(),
            })
            .inc_by(bytes as u64);
    }

    pub(crate) fn peer_out(&self, peer: &str, bytes: usize) {
        self.peer_bytes_out
            .get_or_create(&PeerLabel {
                peer: peer.to_string(),
            })
            .inc_by(bytes as u64);
    }

    pub(crate) fn dropped(&self) {
        self.messages_dropped.inc();
    }

    /// Copies the relay counters of the node's endpoint into the metrics.
    pub(crate) fn update_relay(&self, relay: &aether_transport::RelayMetrics) {
        use std::sync::atomic::Ordering::Relaxed;
        let now = [
            relay.relayed_packets.load(Relaxed),
            relay.relayed_bytes.load(Relaxed),
            relay.dropped_packets.load(Relaxed),
        ];
        let mut last = self.last_relay.lock().unwrap_or_else(|p| p.into_inner());
        for (i, counter) in [
            &self.relayed_packets,
            &self.relayed_bytes,
            &self.relay_dropped,
        ]
        .into_iter()
        .enumerate()
        {
            counter.inc_by(now[i].saturating_sub(last[i]));
        }
        *last = now;
    }

    /// Copies the membership counters, the member counts and the
    /// transport's refusal counters into the metrics.
    pub(crate) fn update(
        &self,
        stats: &Stats,
        states: &[(&'static str, i64)],
        transport: &TransportMetrics,
        revocations: usize,
    ) {
        for (state, n) in states {
            self.members
                .get_or_create(&StateLabel {
                    state: (*state).to_string(),
                })
                .set(*n);
        }
        self.revocations.set(revocations as i64);
        self.local_health.set(i64::from(stats.local_health));
        let mut last = self.last_stats.lock().unwrap_or_else(|p| p.into_inner());
        let (old, old_refused) = &mut *last;
        self.probes
            .inc_by(stats.vivaldi_pings.saturating_sub(old.vivaldi_pings));
        self.suspicions
            .inc_by(stats.suspicions.saturating_sub(old.suspicions));
        self.refutations
            .inc_by(stats.refutations.saturating_sub(old.refutations));
        self.messages_in
            .inc_by(stats.datagrams_in.saturating_sub(old.datagrams_in));
        self.messages_out
            .inc_by(stats.datagrams_out.saturating_sub(old.datagrams_out));
        self.self_refutations
            .inc_by(stats.self_refutations.saturating_sub(old.self_refutations));
        *old = stats.clone();
        for (i, reason) in RefusalReason::ALL.iter().enumerate() {
            let now = transport.refused(*reason);
            let delta = now.saturating_sub(old_refused[i]);
            let counter = self.refused.get_or_create(&ReasonLabel {
                reason: reason.as_str().to_string(),
            });
            counter.inc_by(delta);
            old_refused[i] = now;
        }
    }
}
