//! Invites: the root key certifies a fresh invite key, and the newcomer gets
//! that certificate, the invite secret and the root public key as one
//! printable token.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::{CryptoRng, RngCore};

use super::{AdmissionError, InviteId, Labels, LatticeId, MAX_ENCODED_LEN, Region};
use crate::wire::{Reader, Writer};
use crate::{PublicKey, SecretKey, Signature};

/// Type tag that starts an encoded invite certificate.
const INVITE_CERT_TAG: u8 = 0xA1;
/// Type tag that started an invite token of the first format, which did not
/// carry the root key (refused with a message saying so).
const OLD_INVITE_TOKEN_TAG: u8 = 0xA2;
/// Type tag that starts an encoded invite token.
const INVITE_TOKEN_TAG: u8 = 0xA3;
/// Domain separation for the root's signature over an invite.
const INVITE_SIG_CONTEXT: &[u8] = b"aether-invite-certificate-v1\0";

/// Prefix of the printable invite token.
pub const INVITE_TOKEN_PREFIX: &str = "aether-invite-v1:";

/// What an invite allows a node to be.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct InviteConstraints {
    /// The only region an admitted node may claim (`None`: any region).
    pub region: Option<Region>,
    /// Labels every node admitted with this invite carries (the node
    /// certificate must contain each of them with the same value).
    pub labels: Labels,
}

/// The statement the root key signs: "the holder of `invite_key` may admit
/// nodes into `lattice` until `expires_at`, within these constraints".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Invite {
    lattice: LatticeId,
    id: InviteId,
    invite_key: PublicKey,
    issued_at: u64,
    expires_at: u64,
    single_use: bool,
    constraints: InviteConstraints,
}

impl Invite {
    /// Issues an invite: draws a fresh invite key and id from the OS's
    /// generator and signs the certificate with `root`.
    ///
    /// `lattice` must be `LatticeId::of_root(&root.public())` and `expires_at`
    /// must be after `now` (both Unix seconds).
    pub fn issue(
        root: &SecretKey,
        lattice: LatticeId,
        constraints: InviteConstraints,
        expires_at: u64,
        single_use: bool,
        now: u64,
    ) -> Result<InviteToken, AdmissionError> {
        Self::issue_with_rng(
            &mut rand::rngs::OsRng,
            root,
            lattice,
            constraints,
            expires_at,
            single_use,
            now,
        )
    }

    /// [`Invite::issue`] drawing the invite key and id from `rng`
    /// (deterministic simulations and tests).
    pub fn issue_with_rng<R: RngCore + CryptoRng>(
        rng: &mut R,
        root: &SecretKey,
        lattice: LatticeId,
        constraints: InviteConstraints,
        expires_at: u64,
        single_use: bool,
        now: u64,
    ) -> Result<InviteToken, AdmissionError> {
        let own = LatticeId::of_root(&root.public());
        if lattice != own {
            return Err(AdmissionError::WrongLattice {
                expected: own,
                found: lattice,
            });
        }
        if expires_at <= now {
            return Err(AdmissionError::Invalid {
                field: "expires_at",
                reason: format!("{expires_at} is not after now ({now})"),
            });
        }
        let mut secret = [0u8; 32];
        rng.fill_bytes(&mut secret);
        let secret = SecretKey::from_bytes(&secret);
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        let invite = Invite {
            lattice,
            id: InviteId::from_bytes(id),
            invite_key: secret.public(),
            issued_at: now,
            expires_at,
            single_use,
            constraints,
        };
        let signature = root.sign(&invite.signed_message());
        Ok(InviteToken {
            root: root.public(),
            certificate: InviteCertificate { invite, signature },
            secret,
        })
    }

    /// The lattice the invite admits into.
    pub fn lattice(&self) -> LatticeId {
        self.lattice
    }

    /// Its random id.
    pub fn id(&self) -> InviteId {
        self.id
    }

    /// The public invite key that signs node certificates.
    pub fn invite_key(&self) -> &PublicKey {
        &self.invite_key
    }

    /// When the root issued it (Unix seconds).
    pub fn issued_at(&self) -> u64 {
        self.issued_at
    }

    /// When it stops admitting nodes (Unix seconds, exclusive).
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// Whether it admits a single node.
    pub fn single_use(&self) -> bool {
        self.single_use
    }

    /// Its constraints.
    pub fn constraints(&self) -> &InviteConstraints {
        &self.constraints
    }

    fn encode_body(&self, w: &mut Writer) {
        w.u8(INVITE_CERT_TAG);
        w.raw(self.lattice.as_bytes());
        w.raw(self.id.as_bytes());
        w.key(&self.invite_key);
        w.u64(self.issued_at);
        w.u64(self.expires_at);
        w.bool(self.single_use);
        w.region(self.constraints.region.as_ref());
        w.labels(&self.constraints.labels);
    }

    fn signed_message(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(INVITE_SIG_CONTEXT);
        self.encode_body(&mut w);
        w.into_bytes()
    }
}

/// An [`Invite`] signed by the lattice root. Every node certificate embeds
/// one; it holds no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteCertificate {
    invite: Invite,
    signature: Signature,
}

impl InviteCertificate {
    /// The signed statement (not yet verified: see [`InviteCertificate::verify`]).
    pub fn invite(&self) -> &Invite {
        &self.invite
    }

    /// Checks that the invite is for the lattice of `root` and that `root`
    /// signed it. Expiry is checked against the node certificate that uses it.
    pub fn verify(&self, root: &PublicKey) -> Result<&Invite, AdmissionError> {
        let expected = LatticeId::of_root(root);
        if self.invite.lattice != expected {
            return Err(AdmissionError::WrongLattice {
                expected,
                found: self.invite.lattice,
            });
        }
        if !root.verify(&self.invite.signed_message(), &self.signature) {
            return Err(AdmissionError::ForgedSignature {
                what: "invite certificate (root key signature)",
            });
        }
        Ok(&self.invite)
    }

    /// Its canonical encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.into_bytes()
    }

    /// Decodes a canonical encoding (signature not checked).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let mut r = Reader::new(bytes, "invite certificate", MAX_ENCODED_LEN)?;
        let cert = Self::decode(&mut r)?;
        r.finish()?;
        Ok(cert)
    }

    pub(crate) fn encode(&self, w: &mut Writer) {
        self.invite.encode_body(w);
        w.signature(&self.signature);
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, AdmissionError> {
        r.expect_tag(INVITE_CERT_TAG)?;
        let lattice = r.lattice()?;
        let id = r.invite_id()?;
        let invite_key = r.key()?;
        let issued_at = r.u64()?;
        let expires_at = r.u64()?;
        let single_use = r.bool()?;
        let region = r.region()?;
        let labels = r.labels()?;
        let signature = r.signature()?;
        Ok(Self {
            invite: Invite {
                lattice,
                id,
                invite_key,
                issued_at,
                expires_at,
                single_use,
                constraints: InviteConstraints { region, labels },
            },
            signature,
        })
    }
}

/// What the operator hands to a new machine: the lattice root public key,
/// the invite certificate and the invite secret key, printed as
/// `aether-invite-v1:<base64url>`.
///
/// The root key tells the new machine which lattice to trust: a decoded token
/// always carries a root whose [`LatticeId`] is the invite's lattice and
/// whose signature over the invite verifies. Anyone holding the token can
/// admit nodes within its constraints until it expires, so it is a secret;
/// its `Debug` form omits the secret key.
#[derive(Debug, Clone)]
pub struct InviteToken {
    root: PublicKey,
    certificate: InviteCertificate,
    secret: SecretKey,
}

impl InviteToken {
    /// The lattice root public key (checked on decoding: it names the
    /// invite's lattice and signed the invite).
    pub fn root(&self) -> &PublicKey {
        &self.root
    }

    /// The invite certificate (public).
    pub fn certificate(&self) -> &InviteCertificate {
        &self.certificate
    }

    /// The invite.
    pub fn invite(&self) -> &Invite {
        &self.certificate.invite
    }

    /// The invite id.
    pub fn id(&self) -> InviteId {
        self.certificate.invite.id
    }

    /// The lattice the invite admits into.
    pub fn lattice(&self) -> LatticeId {
        self.certificate.invite.lattice
    }

    pub(crate) fn secret(&self) -> &SecretKey {
        &self.secret
    }

    /// Its canonical binary encoding (contains the invite secret): tag, root
    /// key, invite certificate, invite secret.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(INVITE_TOKEN_TAG);
        w.key(&self.root);
        self.certificate.encode(&mut w);
        w.raw(&self.secret.to_bytes());
        w.into_bytes()
    }

    /// Decodes [`InviteToken::to_bytes`] and checks it is self-consistent:
    /// the secret matches the certified invite key
    /// ([`AdmissionError::Malformed`]), the root key hashes to the invite's
    /// lattice ([`AdmissionError::Malformed`]: the root or the invite was
    /// swapped) and the root signed the invite
    /// ([`AdmissionError::ForgedSignature`]). Expiry is not checked here.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, AdmissionError> {
        let mut r = Reader::new(bytes, "invite token", MAX_ENCODED_LEN)?;
        if bytes.first() == Some(&OLD_INVITE_TOKEN_TAG) {
            return Err(r.err(
                "this token is of an older format that does not carry the lattice root key; ask the operator for a new invite",
            ));
        }
        r.expect_tag(INVITE_TOKEN_TAG)?;
        let root = r.key()?;
        let certificate = InviteCertificate::decode(&mut r)?;
        let secret = SecretKey::from_bytes(&r.array::<32>()?);
        r.finish()?;
        if secret.public() != certificate.invite.invite_key {
            return Err(AdmissionError::Malformed {
                what: "invite token",
                reason: "the invite secret does not match the certified invite key".to_string(),
            });
        }
        let named = LatticeId::of_root(&root);
        if named != certificate.invite.lattice {
            return Err(AdmissionError::Malformed {
                what: "invite token",
                reason: format!(
                    "its root key {root} names lattice {named}, but its invite is for lattice {}",
                    certificate.invite.lattice
                ),
            });
        }
        certificate
            .verify(&root)
            .map_err(|_| AdmissionError::ForgedSignature {
                what: "invite token (its root key did not sign its invite)",
            })?;
        Ok(Self {
            root,
            certificate,
            secret,
        })
    }

    /// The printable form, `aether-invite-v1:<base64url>` (a secret).
    pub fn to_text(&self) -> String {
        format!(
            "{INVITE_TOKEN_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(self.to_bytes())
        )
    }

    /// Parses [`InviteToken::to_text`]; surrounding whitespace is ignored.
    pub fn from_text(text: &str) -> Result<Self, AdmissionError> {
        let bad = |reason: &str| AdmissionError::Malformed {
            what: "invite token",
            reason: reason.to_string(),
        };
        let text = text.trim();
        let body = text
            .strip_prefix(INVITE_TOKEN_PREFIX)
            .ok_or_else(|| bad("does not start with `aether-invite-v1:`"))?;
        if body.len() > MAX_ENCODED_LEN.div_ceil(3) * 4 {
            return Err(bad("too long"));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("not base64url (without padding)"))?;
        Self::from_bytes(&bytes)
    }
}

impl std::str::FromStr for InviteToken {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_text(s)
    }
}
