//! Which nodes each invite admitted, so that a single-use invite admits one
//! node even when two machines race to use it.

use std::collections::BTreeMap;

use super::node::{AdmittedNode, NodeId};
use super::{AdmissionError, InviteId, MAX_SET_ENCODED_LEN};
use crate::wire::{Reader, Writer};

/// Most claims kept per single-use invite: the winner and the smallest
/// losers. Losers beyond it are refused all the same (they are not the
/// winner); keeping the smallest ones keeps merging deterministic.
pub const MAX_CLAIMS_PER_SINGLE_USE_INVITE: usize = 16;

/// Type tag that starts an encoded admission ledger.
const LEDGER_TAG: u8 = 0xD1;
/// Encoded length of one claim: node key, `issued_at`.
const CLAIM_LEN: usize = 32 + 8;
/// Encoded length of an invite record before its claims: id, single-use
/// flag, expiry, claim count.
const RECORD_HEAD_LEN: usize = 16 + 1 + 8 + 4;
/// Encoded length of the ledger before its records: tag, record count.
const LEDGER_HEAD_LEN: usize = 1 + 4;

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

    /// Every node the ledger admits (for a single-use invite, its winner
    /// only): the nodes whose signatures members accept.
    pub fn admitted_nodes(&self) -> std::collections::BTreeSet<NodeId> {
        let mut out = std::collections::BTreeSet::new();
        for record in self.invites.values() {
            if record.single_use {
                out.extend(record.winner().map(|(_, n)| n));
            } else {
                out.extend(record.claims.keys().copied());
            }
        }
        out
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

    /// Its canonical encoding, for exchanging ledgers between members:
    ///
    /// ```text
    /// 0xD1, u32 invite count, per invite in ascending id order:
    ///   id (16 bytes), single_use (0/1), expires_at (u64),
    ///   u32 claim count (at least 1), per claim in ascending node key order:
    ///     node key (32 bytes), issued_at (u64)
    /// ```
    ///
    /// Integers are big-endian. Fails with [`AdmissionError::TooLarge`] when
    /// the encoding would exceed [`MAX_SET_ENCODED_LEN`], which
    /// [`AdmissionLedger::from_bytes`] refuses.
    pub fn to_bytes(&self) -> Result<Vec<u8>, AdmissionError> {
        let len = self.invites.values().fold(LEDGER_HEAD_LEN, |len, record| {
            len.saturating_add(RECORD_HEAD_LEN)
                .saturating_add(record.claims.len().saturating_mul(CLAIM_LEN))
        });
        let too_large = || AdmissionError::TooLarge {
            what: "admission ledger",
            len,
            max: MAX_SET_ENCODED_LEN,
        };
        if len > MAX_SET_ENCODED_LEN {
            return Err(too_large());
        }
        let count = |n: usize| u32::try_from(n).map_err(|_| too_large());
        let mut w = Writer::new();
        w.u8(LEDGER_TAG);
        w.u32(count(self.invites.len())?);
        for (id, record) in &self.invites {
            w.raw(id.as_bytes());
            w.bool(record.single_use);
            w.u64(record.expires_at);
            w.u32(count(record.claims.len())?);
            for (node, issued_at) in &record.claims {
                w.key(node);
                w.u64(*issued_at);
            }
        }
        Ok(w.into_bytes())
    }

    /// Decodes [`AdmissionLedger::to_bytes`]: at most
    /// [`MAX_SET_ENCODED_LEN`] bytes, strictly ascending invite ids and node
    /// keys, at least one claim per invite, at most
    /// [`MAX_CLAIMS_PER_SINGLE_USE_INVITE`] per single-use invite, no trailing
    /// bytes, so every ledger has exactly one encoding.
    ///
    /// The claims are what the sending member says it admitted; nothing in
    /// them is signed. [`AdmissionLedger::merge`] trusts them, so decode
    /// ledgers only from admitted members.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let mut r = Reader::new(bytes, "admission ledger", MAX_SET_ENCODED_LEN)?;
        r.expect_tag(LEDGER_TAG)?;
        let count = r.count(RECORD_HEAD_LEN + CLAIM_LEN)?;
        let mut invites = BTreeMap::new();
        let mut previous: Option<InviteId> = None;
        for _ in 0..count {
            let id = r.invite_id()?;
            if previous.is_some_and(|p| p >= id) {
                return Err(r.err("invite ids are not in strictly ascending order"));
            }
            previous = Some(id);
            let single_use = r.bool()?;
            let expires_at = r.u64()?;
            let claim_count = r.count(CLAIM_LEN)?;
            if claim_count == 0 {
                return Err(r.err(format!("invite {id} has no claims")));
            }
            if single_use && claim_count > MAX_CLAIMS_PER_SINGLE_USE_INVITE {
                return Err(r.err(format!(
                    "single-use invite {id} has {claim_count} claims, at most {MAX_CLAIMS_PER_SINGLE_USE_INVITE} are kept"
                )));
            }
            let mut claims = BTreeMap::new();
            let mut previous_node: Option<NodeId> = None;
            for _ in 0..claim_count {
                let node = r.key()?;
                if previous_node.is_some_and(|p| p >= node) {
                    return Err(r.err(format!(
                        "claims of invite {id} are not in strictly ascending node key order"
                    )));
                }
                previous_node = Some(node);
                claims.insert(node, r.u64()?);
            }
            invites.insert(
                id,
                InviteRecord {
                    single_use,
                    expires_at,
                    claims,
                },
            );
        }
        r.finish()?;
        Ok(Self { invites })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    #[test]
    fn ledger_over_the_bound_is_not_encoded() {
        let claims = (MAX_SET_ENCODED_LEN - LEDGER_HEAD_LEN - RECORD_HEAD_LEN) / CLAIM_LEN + 1;
        let mut record = InviteRecord {
            single_use: false,
            expires_at: 10,
            claims: BTreeMap::new(),
        };
        for i in 0..claims {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
            record
                .claims
                .insert(SecretKey::from_bytes(&seed).public(), 1);
        }
        let mut ledger = AdmissionLedger::new();
        ledger
            .invites
            .insert(InviteId::from_bytes([1; 16]), record.clone());
        assert!(matches!(
            ledger.to_bytes(),
            Err(AdmissionError::TooLarge {
                what: "admission ledger",
                ..
            })
        ));
        // One claim fewer fits exactly at the bound and round-trips.
        let last = *record.claims.keys().next_back().expect("claims");
        record.claims.remove(&last);
        ledger.invites.insert(InviteId::from_bytes([1; 16]), record);
        let bytes = ledger.to_bytes().expect("fits");
        assert!(bytes.len() <= MAX_SET_ENCODED_LEN);
        assert_eq!(AdmissionLedger::from_bytes(&bytes).expect("decode"), ledger);
    }
}
