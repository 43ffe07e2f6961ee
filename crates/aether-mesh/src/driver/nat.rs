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
use crate::reachability::{OBSERVED_LABEL, REACHABILITY_LABEL};
use crate::{to_member_id, to_node_id};

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
        let id = to_member_id(&node);
        let Some(advertised) = self
            .membership
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.addr)
        else {
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

    /// Tries a hole punch to every live member that members see at a public address
    /// (`observed-addr`) and that has no connection with this node, at most once every
    /// [`PUNCH_EVERY`] each: dials that address (opening this side's NAT toward it) and asks a
    /// member connected to both to introduce this node, so the other dials back at once.
    pub(super) fn punch_holes(&mut self) {
        let me = self.endpoint.node_id();
        let now = Instant::now();
        self.punched_at
            .retain(|_, at| now.duration_since(*at) < PUNCH_EVERY);
        let live: Vec<(NodeId, SocketAddr, Option<SocketAddr>)> = self
            .membership
            .members()
            .into_iter()
            .filter(|m| {
                matches!(
                    m.state,
                    aether_membership::MemberState::Alive | aether_membership::MemberState::Suspect
                )
            })
            .filter_map(|m| {
                let node = to_node_id(&m.id)?;
                let observed = m.metadata.as_ref().and_then(|meta| {
                    meta.labels
                        .iter()
                        .find(|(k, _)| k == OBSERVED_LABEL)
                        .and_then(|(_, v)| v.parse().ok())
                });
                Some((node, m.addr, observed))
            })
            .filter(|(n, ..)| *n != me && !self.is_revoked(n))
            .collect();
        let connected: Vec<(NodeId, SocketAddr)> = live
            .iter()
            .filter(|(n, ..)| self.endpoint.is_connected(n))
            .map(|(n, a, _)| (*n, *a))
            .collect();
        for (node, _, observed) in &live {
            let Some(public) = *observed else {
                continue;
            };
            if self.endpoint.is_connected(node) || self.punched_at.contains_key(node) {
                continue;
            }
            self.punched_at.insert(*node, now);
            let introducers: Vec<&(NodeId, SocketAddr)> =
                connected.iter().filter(|(n, _)| n != node).collect();
            if let Some((via, via_addr)) = introducers.choose(&mut rand::thread_rng()) {
                let mut ask = vec![TAG_INTRODUCE];
                ask.extend(node.as_bytes());
                self.send_admission(*via, *via_addr, ask);
            }
            self.dial_public(*node, public);
        }
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
        let Some(target) = <[u8; 32]>::try_from(body)
            .ok()
            .and_then(|b| PublicKey::from_bytes(&b).ok())
        else {
            return;
        };
        if target == from || !self.endpoint.is_connected(&target) || self.is_revoked(&target) {
            return;
        }
        let Some(seen) = self.endpoint.remote_addr(&from) else {
            return;
        };
        let id = to_member_id(&target);
        let Some(target_addr) = self
            .membership
            .members()
            .into_iter()
            .find(|m| m.id == id)
            .map(|m| m.addr)
        else {
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
        let Some(peer) = <[u8; 32]>::try_from(id)
            .ok()
            .and_then(|b| PublicKey::from_bytes(&b).ok())
        else {
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
        if !live
            || self.is_revoked(&peer)
            || self.endpoint.is_connected(&peer)
            || self
                .punched_at
                .get(&peer)
                .is_some_and(|at| now.duration_since(*at) < PUNCH_EVERY / 4)
        {
            return;
        }
        self.punched_at.insert(peer, now);
        self.dial_public(peer, addr);
    }
}
