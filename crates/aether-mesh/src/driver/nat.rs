//! The driver's side of NAT traversal: observed-address reports, dial-backs, the
//! reachability labels, and hole punching between members that cannot dial each other (each
//! dials the other's public address while a member connected to both tells the other to do
//! the same, so both NATs open a mapping for the pair).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use aether_identity::{NodeId, PublicKey};
use rand::seq::SliceRandom as _;

use super::{Driver, send_to};
use crate::CHANNEL_ADMISSION;
use crate::{to_member_id, to_node_id};
use aether_nat::{OBSERVED_LABEL, REACHABILITY_LABEL};

/// Tag of a report of the address the sender sees the receiver at (`IP:PORT` text).
pub(super) const TAG_OBSERVED: u8 = 3;
/// Tag of a request to dial the sender back at the address it advertises.
pub(super) const TAG_DIAL_BACK: u8 = 4;
/// Tag of the answer to [`TAG_DIAL_BACK`]: one byte, 1 when the handshake got through.
pub(super) const TAG_DIAL_BACK_RESULT: u8 = 5;
/// How long a dial-back waits for the handshake.
const DIAL_BACK_TIMEOUT: Duration = Duration::from_secs(3);
/// A member's dial-back requests are answered at most this often.
const DIAL_BACK_EVERY: Duration = Duration::from_secs(2);

/// Tag of a request to introduce the sender to a member (32-byte node id) for a hole punch.
pub(super) const TAG_INTRODUCE: u8 = 6;
/// Tag of an introduction: a member (32-byte node id) wants a direct path, at the address that
/// follows (`IP:PORT` text); dial it.
pub(super) const TAG_PUNCH: u8 = 7;
/// How often a hole punch to one member is tried while there is no connection with it.
const PUNCH_EVERY: Duration = Duration::from_secs(10);
/// How long a punch has to bring a connection before a relay is tried.
const PUNCH_WAIT: Duration = Duration::from_secs(3);
/// How often a relayed dial to one member is tried (each time through another relay).
const RELAY_EVERY: Duration = Duration::from_secs(3);

/// How this node is getting through to one member it cannot dial.
#[derive(Debug, Default)]
pub(super) struct Traversal {
    punched_at: Option<Instant>,
    relayed_at: Option<Instant>,
    last_relay: Option<NodeId>,
    /// The relay of the connection with it, while there is one.
    via: Option<NodeId>,
}

/// The node id in `bytes`, when they are exactly a valid key.
fn node_id(bytes: &[u8]) -> Option<NodeId> {
    PublicKey::from_bytes(&<[u8; 32]>::try_from(bytes).ok()?).ok()
}

impl Driver {
    /// Dials `node` back at the address it advertises, on a task, and tells it whether the
    /// handshake got through (over the connection it has with this node).
    pub(super) fn dial_back(&mut self, node: NodeId) {
        let now = Instant::now();
        if self
            .dialled_back
            .get(&node)
            .is_some_and(|at| now.duration_since(*at) < DIAL_BACK_EVERY)
        {
            return;
        }
        let Some(advertised) = self.advertised(&node) else {
            return;
        };
        self.dialled_back.insert(node, now);
        self.dialled_back
            .retain(|_, at| now.duration_since(*at) < DIAL_BACK_EVERY);
        let endpoint = self.endpoint.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let reached = endpoint
                .probe(advertised, node, DIAL_BACK_TIMEOUT)
                .await
                .inspect_err(|e| tracing::debug!(%node, %advertised, "dial-back missed: {e}"))
                .is_ok();
            let answer = [TAG_DIAL_BACK_RESULT, u8::from(reached)];
            send_to(
                &endpoint,
                &metrics,
                advertised,
                Some(node),
                CHANNEL_ADMISSION,
                &answer,
            )
            .await;
        });
    }

    /// Asks a member to dial back when it is time, and advertises what is known.
    pub(super) fn follow_reachability(&mut self) {
        let now = self.now();
        if self.reachability.wants_dial_back(now)
            && let Some((node, addr)) = self.live_members().choose(&mut rand::thread_rng()).copied()
        {
            self.reachability.asked(now);
            self.send_admission(node, addr, vec![TAG_DIAL_BACK]);
        }
        let mut metadata = self.membership.metadata().clone();
        let mut labels: Vec<(String, String)> = metadata
            .labels
            .iter()
            .filter(|(k, _)| k != REACHABILITY_LABEL && k != OBSERVED_LABEL)
            .cloned()
            .collect();
        labels.extend(self.reachability.labels(now));
        if labels != metadata.labels {
            tracing::info!(labels = ?self.reachability.labels(now), "reachability");
            metadata.labels = labels;
            if let Err(e) = self.membership.update_metadata(metadata, now) {
                tracing::debug!("metadata update refused: {e}");
            }
        }
    }

    /// Gets through to every live member that members see at a public address
    /// (`observed-addr`) and that has no connection with this node: first a hole punch (dial
    /// that address, opening this side's NAT toward it, and ask a member connected to both to
    /// introduce this node, so the other dials back at once), at most every [`PUNCH_EVERY`];
    /// when no connection came of it within [`PUNCH_WAIT`], a relay: a directly reachable
    /// member connected to this node, the nearest to both by network coordinates, another one
    /// each time. A member whose relayed connection was lost (its relay died) gets a new relay
    /// at once.
    pub(super) fn punch_holes(&mut self) {
        let me = self.endpoint.node_id();
        let now = Instant::now();
        let members = self.membership.members();
        let label = |m: &aether_membership::MemberInfo, key: &str| {
            m.metadata.as_ref()?.label(key).map(str::to_string)
        };
        let live: Vec<(NodeId, Option<SocketAddr>, bool)> = members
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    aether_membership::MemberState::Alive | aether_membership::MemberState::Suspect
                )
            })
            .filter_map(|m| {
                let node = to_node_id(&m.id)?;
                let observed = label(m, OBSERVED_LABEL).and_then(|v| v.parse().ok());
                let direct = label(m, REACHABILITY_LABEL).as_deref() == Some("direct");
                Some((node, observed, direct))
            })
            .filter(|(n, ..)| *n != me && !self.is_revoked(n))
            .collect();
        let connected: Vec<(NodeId, bool)> = live
            .iter()
            .filter(|(n, ..)| self.endpoint.is_connected(n))
            .map(|(n, _, direct)| (*n, *direct))
            .collect();
        let alive: std::collections::HashSet<NodeId> = live.iter().map(|(n, ..)| *n).collect();
        self.traversal.retain(|n, _| alive.contains(n));
        for (node, observed, _) in &live {
            let Some(public) = *observed else {
                continue;
            };
            let t = self.traversal.entry(*node).or_default();
            if self.endpoint.is_connected(node) {
                t.via = self.endpoint.relay_of(node);
                continue;
            }
            let lost_relay = t.via.take();
            let punch_due = t
                .punched_at
                .is_none_or(|at| now.duration_since(at) >= PUNCH_EVERY);
            if punch_due && lost_relay.is_none() {
                t.punched_at = Some(now);
                let introducer = connected
                    .iter()
                    .filter(|(n, _)| n != node)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .choose(&mut rand::thread_rng())
                    .copied();
                if let Some(via) = introducer
                    && let Some(via_addr) = self.advertised(&via)
                {
                    let mut ask = vec![TAG_INTRODUCE];
                    ask.extend(node.as_bytes());
                    self.send_admission(via, via_addr, ask);
                }
                self.dial_public(*node, public);
                continue;
            }
            let waited = t
                .punched_at
                .is_some_and(|at| now.duration_since(at) >= PUNCH_WAIT);
            let relay_due = t
                .relayed_at
                .is_none_or(|at| now.duration_since(at) >= RELAY_EVERY);
            if !(lost_relay.is_some() || (waited && relay_due)) {
                continue;
            }
            let avoid = lost_relay.or(t.last_relay);
            let target = to_member_id(node);
            let me_id = to_member_id(&me);
            let cost = |r: &NodeId| {
                let r = to_member_id(r);
                let leg = |a, b| {
                    self.membership
                        .estimate_rtt(a, b)
                        .map_or(1.0, |d| d.as_secs_f64())
                };
                leg(&me_id, &r) + leg(&r, &target)
            };
            let mut relays: Vec<NodeId> = connected
                .iter()
                .filter(|(n, direct)| *direct && n != node)
                .map(|(n, _)| *n)
                .collect();
            relays.sort_by(|a, b| cost(a).total_cmp(&cost(b)));
            let Some(relay) = relays
                .iter()
                .find(|r| Some(**r) != avoid)
                .or(relays.first())
                .copied()
            else {
                continue;
            };
            let t = self.traversal.entry(*node).or_default();
            t.relayed_at = Some(now);
            t.last_relay = Some(relay);
            let endpoint = self.endpoint.clone();
            let peer = *node;
            tokio::spawn(async move {
                match endpoint.connect_relayed(relay, peer).await {
                    Ok(_) => tracing::info!(%peer, %relay, "connected through a relay"),
                    Err(e) => tracing::debug!(%peer, %relay, "relayed dial failed: {e}"),
                }
            });
        }
    }

    /// The address `node` advertises, as membership knows it.
    fn advertised(&self, node: &NodeId) -> Option<SocketAddr> {
        let id = to_member_id(node);
        self.membership
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.addr)
    }

    /// Dials `node` at `public`, on a task.
    fn dial_public(&self, node: NodeId, public: SocketAddr) {
        let endpoint = self.endpoint.clone();
        tokio::spawn(async move {
            match endpoint.connect_at(public, node).await {
                Ok(_) => tracing::info!(%node, %public, "hole punched"),
                Err(e) => tracing::debug!(%node, %public, "hole punch missed: {e}"),
            }
        });
    }

    /// `from` asks to be introduced to the member named in `body`: when this node is connected
    /// to it, it tells it to dial `from` at the address this node sees `from` at.
    pub(super) fn introduce(&self, from: NodeId, body: &[u8]) {
        let Some(target) = node_id(body) else {
            return;
        };
        if target == from || !self.endpoint.is_connected(&target) || self.is_revoked(&target) {
            return;
        }
        let Some(seen) = self.endpoint.remote_addr(&from) else {
            return;
        };
        let Some(target_addr) = self.advertised(&target) else {
            return;
        };
        let mut punch = vec![TAG_PUNCH];
        punch.extend(from.as_bytes());
        punch.extend(seen.to_string().into_bytes());
        self.send_admission(target, target_addr, punch);
    }

    /// A member introduced `body`'s node: dial it at the address given (once per
    /// [`PUNCH_EVERY`], and only a live member this node has no connection with).
    pub(super) fn punch(&mut self, body: &[u8]) {
        if body.len() <= 32 {
            return;
        }
        let (id, addr) = body.split_at(32);
        let Some(peer) = node_id(id) else {
            return;
        };
        let Some(addr) = std::str::from_utf8(addr)
            .ok()
            .and_then(|t| t.parse::<SocketAddr>().ok())
        else {
            return;
        };
        let member = to_member_id(&peer);
        let live = self.membership.members().into_iter().any(|m| {
            m.id == member
                && matches!(
                    m.state,
                    aether_membership::MemberState::Alive | aether_membership::MemberState::Suspect
                )
        });
        let now = Instant::now();
        let t = self.traversal.entry(peer).or_default();
        if !live
            || t.punched_at
                .is_some_and(|at| now.duration_since(at) < PUNCH_EVERY / 4)
        {
            return;
        }
        t.punched_at = Some(now);
        if self.is_revoked(&peer) || self.endpoint.is_connected(&peer) {
            return;
        }
        self.dial_public(peer, addr);
    }
}
