//! Node certificates: the newcomer's node key, certified by the invite key
//! (and countersigned by the node key), with the invite certificate embedded
//! so that any member can check the whole chain offline.

use super::invite::{InviteCertificate, InviteToken};
use super::{
    AdmissionError, InviteId, Labels, LatticeId, MAX_CLOCK_SKEW_SECS, MAX_ENCODED_LEN, Region,
};
use crate::wire::{Reader, Writer};
use crate::{PublicKey, SecretKey, Signature};

/// A node's identity: its ed25519 public key.
pub type NodeId = PublicKey;

/// Type tag that starts an encoded node certificate.
const NODE_CERT_TAG: u8 = 0xB1;
/// Domain separation for the invite key's signature over a node certificate.
const BY_INVITE_CONTEXT: &[u8] = b"aether-node-certificate-v1/invite-key\0";
/// Domain separation for the node key's own signature over its certificate.
const BY_NODE_CONTEXT: &[u8] = b"aether-node-certificate-v1/node-key\0";

/// A node's admission: "the holder of invite `invite_id` admits node key
/// `node` with this region and these labels", signed by the invite key and by
/// the node key itself, with the root-signed invite certificate embedded.
///
/// It carries no expiry of its own: it stays valid until the node is revoked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCertificate {
    invite: InviteCertificate,
    node: NodeId,
    invite_id: InviteId,
    region: Option<Region>,
    labels: Labels,
    issued_at: u64,
    invite_signature: Signature,
    node_signature: Signature,
}

impl NodeCertificate {
    /// The newcomer's side: certifies `node` with the invite in `token`.
    ///
    /// The invite's region, when it has one, is applied when `region` is
    /// `None` and must equal `region` otherwise; the invite's labels are
    /// added to `labels` and may not contradict them. Fails early, with the
    /// error members would give, if the invite has expired at `now`.
    pub fn issue(
        token: &InviteToken,
        node: &SecretKey,
        region: Option<Region>,
        mut labels: Labels,
        now: u64,
    ) -> Result<Self, AdmissionError> {
        let invite = token.invite();
        if now >= invite.expires_at() {
            return Err(AdmissionError::InviteExpired {
                invite: invite.id(),
                expires_at: invite.expires_at(),
                used_at: now,
            });
        }
        let constraints = invite.constraints();
        let region = match (&constraints.region, region) {
            (None, region) => region,
            (Some(allowed), None) => Some(allowed.clone()),
            (Some(allowed), Some(asked)) if *allowed == asked => Some(asked),
            (Some(allowed), Some(asked)) => {
                return Err(AdmissionError::ConstraintViolated(format!(
                    "the invite admits nodes in region {allowed} only, not {asked}"
                )));
            }
        };
        for (k, v) in constraints.labels.iter() {
            match labels.get(k) {
                Some(own) if own != v => {
                    return Err(AdmissionError::ConstraintViolated(format!(
                        "the invite sets label {k}={v}, the node asked for {k}={own}"
                    )));
                }
                _ => labels.insert(k, v)?,
            }
        }
        Ok(Self::sign(
            token.certificate(),
            token.secret(),
            node,
            region,
            labels,
            now,
        ))
    }

    /// Builds and signs a certificate without checking anything (tests craft
    /// invalid ones with it).
    fn sign(
        invite: &InviteCertificate,
        invite_secret: &SecretKey,
        node: &SecretKey,
        region: Option<Region>,
        labels: Labels,
        issued_at: u64,
    ) -> Self {
        let mut cert = Self {
            invite: invite.clone(),
            node: node.public(),
            invite_id: invite.invite().id(),
            region,
            labels,
            issued_at,
            invite_signature: Signature::from_bytes(&[0; 64]),
            node_signature: Signature::from_bytes(&[0; 64]),
        };
        let body = cert.body();
        cert.invite_signature = invite_secret.sign(&[BY_INVITE_CONTEXT, &body].concat());
        cert.node_signature = node.sign(&[BY_NODE_CONTEXT, &body].concat());
        cert
    }

    /// Checks the chain offline against the lattice `root` public key, with
    /// the verifier's clock `now` (Unix seconds):
    ///
    /// 1. the invite names the lattice of `root` ([`AdmissionError::WrongLattice`])
    ///    and `root` signed it ([`AdmissionError::ForgedSignature`]);
    /// 2. the invite key and the node key both signed this certificate
    ///    ([`AdmissionError::ForgedSignature`]);
    /// 3. it was issued before the invite expired
    ///    ([`AdmissionError::InviteExpired`]) and not in the future beyond
    ///    [`MAX_CLOCK_SKEW_SECS`] ([`AdmissionError::IssuedInFuture`]);
    /// 4. its region and labels satisfy the invite
    ///    ([`AdmissionError::ConstraintViolated`]).
    ///
    /// It does not consult revocations ([`crate::RevocationSet::check`]) nor
    /// single use ([`crate::AdmissionLedger::admit`]). `issued_at` is chosen
    /// by the invite holder, who could backdate it: a node joining for the
    /// first time must go through [`crate::AdmissionLedger::admit`], which
    /// also requires the invite to be unexpired at the admitting member's
    /// `now`.
    pub fn verify(&self, root: &PublicKey, now: u64) -> Result<AdmittedNode, AdmissionError> {
        let invite = self.invite.verify(root)?;
        if self.invite_id != invite.id() {
            return Err(AdmissionError::Malformed {
                what: "node certificate",
                reason: format!(
                    "it names invite {} but embeds invite {}",
                    self.invite_id,
                    invite.id()
                ),
            });
        }
        let body = self.body();
        if !invite
            .invite_key()
            .verify(&[BY_INVITE_CONTEXT, &body].concat(), &self.invite_signature)
        {
            return Err(AdmissionError::ForgedSignature {
                what: "node certificate (invite key signature)",
            });
        }
        if !self
            .node
            .verify(&[BY_NODE_CONTEXT, &body].concat(), &self.node_signature)
        {
            return Err(AdmissionError::ForgedSignature {
                what: "node certificate (node key signature)",
            });
        }
        if self.issued_at > now.saturating_add(MAX_CLOCK_SKEW_SECS) {
            return Err(AdmissionError::IssuedInFuture {
                issued_at: self.issued_at,
                now,
            });
        }
        if self.issued_at >= invite.expires_at() {
            return Err(AdmissionError::InviteExpired {
                invite: invite.id(),
                expires_at: invite.expires_at(),
                used_at: self.issued_at,
            });
        }
        let constraints = invite.constraints();
        if let Some(allowed) = &constraints.region
            && self.region.as_ref() != Some(allowed)
        {
            return Err(AdmissionError::ConstraintViolated(format!(
                "the invite admits nodes in region {allowed} only, the certificate says {}",
                self.region.as_ref().map_or("none", Region::as_str)
            )));
        }
        if !constraints.labels.is_subset_of(&self.labels) {
            return Err(AdmissionError::ConstraintViolated(
                "the certificate lacks or changes labels its invite sets".to_string(),
            ));
        }
        Ok(AdmittedNode {
            node: self.node,
            lattice: invite.lattice(),
            invite: invite.id(),
            region: self.region.clone(),
            labels: self.labels.clone(),
            issued_at: self.issued_at,
            invite_expires_at: invite.expires_at(),
            single_use: invite.single_use(),
        })
    }

    /// The certified node key (not yet verified: see [`NodeCertificate::verify`]).
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The embedded invite certificate.
    pub fn invite(&self) -> &InviteCertificate {
        &self.invite
    }

    /// The invite id it names.
    pub fn invite_id(&self) -> InviteId {
        self.invite_id
    }

    /// The region it claims.
    pub fn region(&self) -> Option<&Region> {
        self.region.as_ref()
    }

    /// The labels it claims.
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// When the newcomer signed it (Unix seconds).
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// Its canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_body(&mut w);
        w.signature(&self.invite_signature);
        w.signature(&self.node_signature);
        w.into_bytes()
    }

    /// Decodes a canonical encoding: at most [`MAX_ENCODED_LEN`] bytes, no
    /// trailing bytes (signatures are checked by [`NodeCertificate::verify`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let mut r = Reader::new(bytes, "node certificate", MAX_ENCODED_LEN)?;
        r.expect_tag(NODE_CERT_TAG)?;
        let invite = InviteCertificate::decode(&mut r)?;
        let node = r.key()?;
        let invite_id = r.invite_id()?;
        let region = r.region()?;
        let labels = r.labels()?;
        let issued_at = r.u64()?;
        let invite_signature = r.signature()?;
        let node_signature = r.signature()?;
        r.finish()?;
        Ok(Self {
            invite,
            node,
            invite_id,
            region,
            labels,
            issued_at,
            invite_signature,
            node_signature,
        })
    }

    fn encode_body(&self, w: &mut Writer) {
        w.u8(NODE_CERT_TAG);
        self.invite.encode(w);
        w.key(&self.node);
        w.raw(self.invite_id.as_bytes());
        w.region(self.region.as_ref());
        w.labels(&self.labels);
        w.u64(self.issued_at);
    }

    /// The signed part: everything but the two signatures.
    fn body(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_body(&mut w);
        w.into_bytes()
    }
}

/// A node whose certificate chain verified: what a member may rely on. Only
/// [`NodeCertificate::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmittedNode {
    node: NodeId,
    lattice: LatticeId,
    invite: InviteId,
    region: Option<Region>,
    labels: Labels,
    issued_at: u64,
    invite_expires_at: u64,
    single_use: bool,
}

impl AdmittedNode {
    /// The node's key.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// Its lattice.
    pub fn lattice(&self) -> LatticeId {
        self.lattice
    }

    /// The invite that admitted it.
    pub fn invite(&self) -> InviteId {
        self.invite
    }

    /// Its region.
    pub fn region(&self) -> Option<&Region> {
        self.region.as_ref()
    }

    /// Its labels (including those its invite set).
    pub fn labels(&self) -> &Labels {
        &self.labels
    }

    /// When its certificate was issued (Unix seconds).
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// When its invite expired or expires (Unix seconds).
    pub fn invite_expires_at(&self) -> u64 {
        self.invite_expires_at
    }

    /// Whether its invite was single-use.
    pub fn single_use(&self) -> bool {
        self.single_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Invite, InviteConstraints, LatticeId};

    const NOW: u64 = 1_800_000_000;

    fn setup(constraints: InviteConstraints) -> (SecretKey, InviteToken) {
        let root = SecretKey::from_bytes(&[1; 32]);
        let lattice = LatticeId::of_root(&root.public());
        let token =
            Invite::issue(&root, lattice, constraints, NOW + 3600, false, NOW).expect("issue");
        (root, token)
    }

    #[test]
    fn certificate_signed_by_an_uncertified_invite_key_is_forged() {
        let (root, token) = setup(InviteConstraints::default());
        let impostor = SecretKey::generate();
        let node = SecretKey::generate();
        let cert = NodeCertificate::sign(
            token.certificate(),
            &impostor,
            &node,
            None,
            Labels::new(),
            NOW,
        );
        assert_eq!(
            cert.verify(&root.public(), NOW),
            Err(AdmissionError::ForgedSignature {
                what: "node certificate (invite key signature)"
            })
        );
        // Signed by the invite key but not by the node key it names.
        let mut cert = NodeCertificate::sign(
            token.certificate(),
            token.secret(),
            &node,
            None,
            Labels::new(),
            NOW,
        );
        cert.node = SecretKey::generate().public();
        cert.invite_signature = token
            .secret()
            .sign(&[BY_INVITE_CONTEXT, &cert.body()].concat());
        assert_eq!(
            cert.verify(&root.public(), NOW),
            Err(AdmissionError::ForgedSignature {
                what: "node certificate (node key signature)"
            })
        );
    }

    #[test]
    fn invite_holder_cannot_break_constraints() {
        let mut labels = Labels::new();
        labels.insert("tier", "gold").expect("label");
        let region = Region::new("eu-west").expect("region");
        let (root, token) = setup(InviteConstraints {
            region: Some(region.clone()),
            labels: labels.clone(),
        });
        let node = SecretKey::generate();
        let sign = |region: Option<Region>, labels: Labels| {
            NodeCertificate::sign(
                token.certificate(),
                token.secret(),
                &node,
                region,
                labels,
                NOW,
            )
            .verify(&root.public(), NOW)
        };
        assert!(sign(Some(region.clone()), labels.clone()).is_ok());
        for bad_region in [None, Some(Region::new("us-east").expect("region"))] {
            assert!(matches!(
                sign(bad_region, labels.clone()),
                Err(AdmissionError::ConstraintViolated(_))
            ));
        }
        let mut other = Labels::new();
        other.insert("tier", "silver").expect("label");
        assert!(matches!(
            sign(Some(region.clone()), other),
            Err(AdmissionError::ConstraintViolated(_))
        ));
        assert!(matches!(
            sign(Some(region), Labels::new()),
            Err(AdmissionError::ConstraintViolated(_))
        ));
    }

    #[test]
    fn certificate_issued_after_expiry_or_in_the_future_is_refused() {
        let (root, token) = setup(InviteConstraints::default());
        let node = SecretKey::generate();
        let expires = token.invite().expires_at();
        let late = NodeCertificate::sign(
            token.certificate(),
            token.secret(),
            &node,
            None,
            Labels::new(),
            expires,
        );
        assert!(matches!(
            late.verify(&root.public(), expires + 10),
            Err(AdmissionError::InviteExpired { used_at, .. }) if used_at == expires
        ));
        let future = NodeCertificate::sign(
            token.certificate(),
            token.secret(),
            &node,
            None,
            Labels::new(),
            NOW + MAX_CLOCK_SKEW_SECS + 1,
        );
        assert!(matches!(
            future.verify(&root.public(), NOW),
            Err(AdmissionError::IssuedInFuture { .. })
        ));
        assert!(future.verify(&root.public(), NOW + 1).is_ok());
    }
}
