//! Which nodes each invite admitted, so that a single-use invite admits one
//! node even when two machines race to use it.

use std::collections::BTreeMap;

use super::node::{AdmittedNode, NodeId};
use super::{AdmissionError, InviteId};

/// Most claims kept per single-use invite: the winner and the smallest
/// losers. Losers beyond it are refused all the same (they are not the
/// winner); keeping the smallest ones keeps merging deterministic.
pub const MAX_CLAIMS_PER_SINGLE_USE_INVITE: usize = 16;

/// The admissions one member knows of, per invite (pure state, no I/O).
///
/// Verification alone cannot stop two machines from using one single-use
/// invite at the same time through two different members. Each member
/// records every admission here; for a single-use invite the **winner** is
/// the claim with the smallest `(issued_at, node key bytes)`, and every other
/// node is refused. [`AdmissionLedger::merge`] is a union (per node, the
/// earliest claim) and is commutative, associative and idempotent, so members
/// that exchange ledgers in any order converge on the same winner.
///
/// The ledger is also the record that a node was admitted while its invite
/// was valid, which is what lets its certificate stay valid after the invite
/// expires.
///
/// It is meant to be replicated through the lattice state (like
/// revocations); until then callers exchange ledgers and call `merge`. When it
/// is replicated, each claim will travel with its node certificate so that
/// receivers can re-verify it; `merge` trusts `other`, whose entries could
/// only have come from [`AdmissionLedger::admit`] on verified nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionLedger {
    invites: BTreeMap<InviteId, InviteRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct InviteRecord {
    single_use: bool,
    expires_at: u64,
    /// Node -> the earliest `issued_at` of its certificates for this invite.
    claims: BTreeMap<NodeId, u64>,
}

impl InviteRecord {
    fn winner(&self) -> Option<(u64, NodeId)> {
        self.claims.iter().map(|(n, t)| (*t, *n)).min()
    }

    /// Keeps the smallest claims of a single-use invite.
    fn trim(&mut self) {
        if !self.single_use || self.claims.len() <= MAX_CLAIMS_PER_SINGLE_USE_INVITE {
            return;
        }
        let mut sorted: Vec<(u64, NodeId)> = self.claims.iter().map(|(n, t)| (*t, *n)).collect();
        sorted.sort();
        self.claims = sorted
            .into_iter()
            .take(MAX_CLAIMS_PER_SINGLE_USE_INVITE)
            .map(|(t, n)| (n, t))
            .collect();
    }
}

/// A successful [`AdmissionLedger::admit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// Whether the ledger already knew this node for this invite.
    pub already_known: bool,
    /// For a single-use invite, the node that was the winner until this
    /// earlier claim arrived and is now refused (disconnect it).
    pub displaced: Option<NodeId>,
}

/// What the ledger says about one node and invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimStatus {
    /// The ledger has no admission of this node with this invite.
    Unknown,
    /// The node is admitted.
    Admitted,
    /// The invite is single-use and admitted another node.
    Refused {
        /// The node it admitted.
        winner: NodeId,
    },
}

/// Nodes that a [`AdmissionLedger::merge`] turned from admitted to refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MergeReport {
    /// `(invite, node)` for each node that was its single-use invite's winner
    /// before the merge and lost to an earlier claim.
    pub displaced: Vec<(InviteId, NodeId)>,
}

impl AdmissionLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the admission of a verified node at the member's clock `now`
    /// (Unix seconds).
    ///
    /// A node new to the ledger is refused if its invite has expired at `now`
    /// ([`AdmissionError::InviteExpired`]), which defeats backdated
    /// certificates; a node already recorded stays admitted after expiry. For
    /// a single-use invite, a node is refused
    /// ([`AdmissionError::InviteAlreadyUsed`]) unless its claim is the
    /// smallest known; its claim is recorded either way so that merges agree.
    pub fn admit(&mut self, node: &AdmittedNode, now: u64) -> Result<Admitted, AdmissionError> {
        let id = node.invite();
        let key = *node.node();
        if let Some(record) = self.invites.get(&id)
            && record.claims.contains_key(&key)
        {
            return match record.winner() {
                Some((_, winner)) if record.single_use && winner != key => {
                    Err(AdmissionError::InviteAlreadyUsed {
                        invite: id,
                        winner: Box::new(winner),
                    })
                }
                _ => Ok(Admitted {
                    already_known: true,
                    displaced: None,
                }),
            };
        }
        if now >= node.invite_expires_at() {
            return Err(AdmissionError::InviteExpired {
                invite: id,
                expires_at: node.invite_expires_at(),
                used_at: now,
            });
        }
        let record = self.invites.entry(id).or_insert_with(|| InviteRecord {
            single_use: node.single_use(),
            expires_at: node.invite_expires_at(),
            claims: BTreeMap::new(),
        });
        record.single_use |= node.single_use();
        record.expires_at = record.expires_at.min(node.invite_expires_at());
        let before = record.winner().map(|(_, n)| n);
        record.claims.insert(key, node.issued_at());
        record.trim();
        let winner = record.winner().map(|(_, n)| n);
        if !record.single_use || winner == Some(key) {
            Ok(Admitted {
                already_known: false,
                displaced: before.filter(|b| record.single_use && *b != key),
            })
        } else {
            Err(AdmissionError::InviteAlreadyUsed {
                invite: id,
                winner: Box::new(winner.expect("a record with a claim has a winner")),
            })
        }
    }

    /// Folds `other` into this ledger. Both converge on the same state
    /// whatever the order of merges; the report lists the nodes this ledger
    /// admitted that are now refused.
    pub fn merge(&mut self, other: &AdmissionLedger) -> MergeReport {
        let mut report = MergeReport::default();
        for (id, theirs) in &other.invites {
            let Some(ours) = self.invites.get_mut(id) else {
                self.invites.insert(*id, theirs.clone());
                continue;
            };
            let before = ours.winner().map(|(_, n)| n);
            ours.single_use |= theirs.single_use;
            ours.expires_at = ours.expires_at.min(theirs.expires_at);
            for (node, at) in &theirs.claims {
                ours.claims
                    .entry(*node)
                    .and_modify(|t| *t = (*t).min(*at))
                    .or_insert(*at);
            }
            ours.trim();
            let after = ours.winner().map(|(_, n)| n);
            if let Some(before) = before
                && ours.single_use
                && after != Some(before)
            {
                report.displaced.push((*id, before));
            }
        }
        report
    }

    /// What the ledger says about `node` and `invite`.
    pub fn status(&self, invite: InviteId, node: &NodeId) -> ClaimStatus {
        let Some(record) = self.invites.get(&invite) else {
            return ClaimStatus::Unknown;
        };
        match record.winner() {
            Some((_, winner)) if record.single_use && winner != *node => {
                ClaimStatus::Refused { winner }
            }
            _ if record.claims.contains_key(node) => ClaimStatus::Admitted,
            _ => ClaimStatus::Unknown,
        }
    }

    /// Whether the ledger records `node` as admitted by its invite.
    pub fn is_admitted(&self, node: &AdmittedNode) -> bool {
        self.status(node.invite(), node.node()) == ClaimStatus::Admitted
    }

    /// The node a single-use invite admitted, if known.
    pub fn winner(&self, invite: InviteId) -> Option<NodeId> {
        let record = self.invites.get(&invite)?;
        if !record.single_use {
            return None;
        }
        record.winner().map(|(_, n)| n)
    }

    /// The nodes refused by single-use invites, as `(invite, node)`.
    pub fn refused(&self) -> impl Iterator<Item = (InviteId, NodeId)> + '_ {
        self.invites.iter().flat_map(|(id, record)| {
            let winner = record.winner().map(|(_, n)| n);
            record
                .claims
                .keys()
                .filter(move |n| record.single_use && Some(**n) != winner)
                .map(move |n| (*id, *n))
        })
    }

    /// How many invites the ledger knows.
    pub fn len(&self) -> usize {
        self.invites.len()
    }

    /// Whether it knows none.
    pub fn is_empty(&self) -> bool {
        self.invites.is_empty()
    }
}
