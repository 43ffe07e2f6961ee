//! Revocations: root-signed statements that a node is no longer admitted.
//! They spread through the lattice like any state; every member refuses the
//! revoked node's connections, packets and signatures.

use std::collections::BTreeMap;

use super::node::NodeId;
use super::{AdmissionError, LatticeId, MAX_ENCODED_LEN, MAX_SET_ENCODED_LEN};
use crate::wire::{Reader, Writer};
use crate::{PublicKey, SecretKey, Signature};

/// Type tag that starts an encoded revocation.
const REVOCATION_TAG: u8 = 0xC1;
/// Type tag that starts an encoded revocation set.
const REVOCATION_SET_TAG: u8 = 0xC2;
/// Encoded length of a revocation with an empty reason: tag, lattice, node,
/// reason length, `issued_at`, signature.
const MIN_REVOCATION_LEN: usize = 1 + 32 + 32 + 1 + 8 + 64;
/// Domain separation for the root's signature over a revocation.
const REVOCATION_SIG_CONTEXT: &[u8] = b"aether-revocation-v1\0";
/// Longest reason, in bytes.
pub const MAX_REVOCATION_REASON_LEN: usize = 200;

/// "Node `node` is revoked from `lattice`", signed by the lattice root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    lattice: LatticeId,
    node: NodeId,
    reason: String,
    issued_at: u64,
    signature: Signature,
}

impl Revocation {
    /// Revokes `node` with the root key (`alkahest revoke NODE`). `reason`
    /// is at most [`MAX_REVOCATION_REASON_LEN`] bytes without control
    /// characters; `now` is Unix seconds.
    pub fn issue(
        root: &SecretKey,
        node: &NodeId,
        reason: &str,
        now: u64,
    ) -> Result<Self, AdmissionError> {
        check_reason(reason).map_err(|reason| AdmissionError::Invalid {
            field: "reason",
            reason,
        })?;
        let mut revocation = Self {
            lattice: LatticeId::of_root(&root.public()),
            node: *node,
            reason: reason.to_string(),
            issued_at: now,
            signature: Signature::from_bytes(&[0; 64]),
        };
        revocation.signature = root.sign(&revocation.signed_message());
        Ok(revocation)
    }

    /// Checks that `root` signed it for its own lattice.
    pub fn verify(&self, root: &PublicKey) -> Result<VerifiedRevocation, AdmissionError> {
        let expected = LatticeId::of_root(root);
        if self.lattice != expected {
            return Err(AdmissionError::WrongLattice {
                expected,
                found: self.lattice,
            });
        }
        if !root.verify(&self.signed_message(), &self.signature) {
            return Err(AdmissionError::ForgedSignature {
                what: "revocation (root key signature)",
            });
        }
        Ok(VerifiedRevocation(self.clone()))
    }

    /// The revoked node.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The lattice it applies to.
    pub fn lattice(&self) -> LatticeId {
        self.lattice
    }

    /// The operator's reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// When the root signed it (Unix seconds).
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// Its canonical encoding, for gossip.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }

    /// Decodes a canonical encoding (signature checked by [`Revocation::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let mut r = Reader::new(bytes, "revocation", MAX_ENCODED_LEN)?;
        let revocation = Self::decode(&mut r)?;
        r.finish()?;
        Ok(revocation)
    }

    fn encode(&self, w: &mut Writer) {
        self.encode_body(w);
        w.signature(&self.signature);
    }

    fn decode(r: &mut Reader<'_>) -> Result<Self, AdmissionError> {
        r.expect_tag(REVOCATION_TAG)?;
        let lattice = r.lattice()?;
        let node = r.key()?;
        let reason = r.str()?;
        check_reason(reason).map_err(|e| r.err(e))?;
        let issued_at = r.u64()?;
        let signature = r.signature()?;
        Ok(Self {
            lattice,
            node,
            reason: reason.to_string(),
            issued_at,
            signature,
        })
    }

    fn encode_body(&self, w: &mut Writer) {
        w.u8(REVOCATION_TAG);
        w.raw(self.lattice.as_bytes());
        w.key(&self.node);
        w.str(&self.reason);
        w.u64(self.issued_at);
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(REVOCATION_SIG_CONTEXT);
        self.encode_body(&mut w);
        w.into_bytes()
    }
}

fn check_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_REVOCATION_REASON_LEN {
        return Err(format!(
            "reason is {} bytes, at most {MAX_REVOCATION_REASON_LEN} allowed",
            reason.len()
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err("reason contains control characters".to_string());
    }
    Ok(())
}

/// A [`Revocation`] whose root signature verified; only
/// [`Revocation::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRevocation(Revocation);

impl VerifiedRevocation {
    /// The revocation.
    pub fn revocation(&self) -> &Revocation {
        &self.0
    }
}

/// The revoked nodes a member knows of. Revocations are permanent; when two
/// revoke the same node, the earliest (then smallest encoding) is kept, so
/// members converge whatever order they learn them in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationSet {
    by_node: BTreeMap<NodeId, Revocation>,
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a verified revocation; returns whether the node was not revoked
    /// before (the caller then closes its connections).
    pub fn insert(&mut self, revocation: VerifiedRevocation) -> bool {
        let revocation = revocation.0;
        match self.by_node.get_mut(&revocation.node) {
            None => {
                self.by_node.insert(revocation.node, revocation);
                true
            }
            Some(existing) => {
                let key = |r: &Revocation| (r.issued_at, r.to_bytes());
                if key(&revocation) < key(existing) {
                    *existing = revocation;
                }
                false
            }
        }
    }

    /// Verifies `revocation` against `root` and adds it; returns whether the
    /// node was newly revoked.
    pub fn insert_verified(
        &mut self,
        root: &PublicKey,
        revocation: &Revocation,
    ) -> Result<bool, AdmissionError> {
        Ok(self.insert(revocation.verify(root)?))
    }

    /// Whether `node` is revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.by_node.contains_key(node)
    }

    /// The revocation of `node`, if any.
    pub fn get(&self, node: &NodeId) -> Option<&Revocation> {
        self.by_node.get(node)
    }

    /// `Err(AdmissionError::Revoked)` if `node` is revoked.
    pub fn check(&self, node: &NodeId) -> Result<(), AdmissionError> {
        match self.by_node.get(node) {
            Some(r) => Err(AdmissionError::Revoked {
                node: Box::new(*node),
                reason: r.reason.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Adds every revocation of `other` (already verified when inserted
    /// there); returns the nodes newly revoked here.
    pub fn merge(&mut self, other: &RevocationSet) -> Vec<NodeId> {
        other
            .by_node
            .values()
            .filter_map(|r| self.insert(VerifiedRevocation(r.clone())).then_some(r.node))
            .collect()
    }

    /// The revocations, by node key.
    pub fn iter(&self) -> impl Iterator<Item = &Revocation> {
        self.by_node.values()
    }

    /// Its canonical encoding, for sending a member every revocation at
    /// once: `0xC2`, a big-endian `u32` count, then each
    /// [`Revocation::to_bytes`] in ascending node key order.
    ///
    /// Fails with [`AdmissionError::TooLarge`] when the encoding would exceed
    /// [`MAX_SET_ENCODED_LEN`], which [`RevocationSet::from_bytes`] refuses.
    pub fn to_bytes(&self) -> Result<Vec<u8>, AdmissionError> {
        let mut w = Writer::new();
        w.u8(REVOCATION_SET_TAG);
        w.u32(u32::try_from(self.by_node.len()).unwrap_or(u32::MAX));
        for revocation in self.by_node.values() {
            revocation.encode(&mut w);
        }
        let bytes = w.into_bytes();
        if bytes.len() > MAX_SET_ENCODED_LEN {
            return Err(AdmissionError::TooLarge {
                what: "revocation set",
                len: bytes.len(),
                max: MAX_SET_ENCODED_LEN,
            });
        }
        Ok(bytes)
    }

    /// Decodes [`RevocationSet::to_bytes`] and verifies every revocation
    /// against the lattice `root`, so the result holds only verified
    /// revocations, like a set built with [`RevocationSet::insert`]. Merge it
    /// into the member's own set with [`RevocationSet::merge`].
    ///
    /// Refuses, as a whole, more than [`MAX_SET_ENCODED_LEN`] bytes,
    /// revocations not in strictly ascending node key order (so a node
    /// appears once), trailing bytes
    /// ([`AdmissionError::Malformed`]) and any revocation that does not verify
    /// ([`AdmissionError::WrongLattice`], [`AdmissionError::ForgedSignature`]).
    /// Costs one signature check per revocation.
    pub fn from_bytes(bytes: &[u8], root: &PublicKey) -> Result<Self, AdmissionError> {
        let mut r = Reader::new(bytes, "revocation set", MAX_SET_ENCODED_LEN)?;
        r.expect_tag(REVOCATION_SET_TAG)?;
        let count = r.count(MIN_REVOCATION_LEN)?;
        let mut revocations = Vec::new();
        for _ in 0..count {
            let revocation = Revocation::decode(&mut r)?;
            if revocations
                .last()
                .is_some_and(|p: &Revocation| p.node >= revocation.node)
            {
                return Err(r.err("revocations are not in strictly ascending node key order"));
            }
            revocations.push(revocation);
        }
        r.finish()?;
        let mut by_node = BTreeMap::new();
        for revocation in revocations {
            let VerifiedRevocation(revocation) = revocation.verify(root)?;
            by_node.insert(revocation.node, revocation);
        }
        Ok(Self { by_node })
    }

    /// How many nodes are revoked.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}
