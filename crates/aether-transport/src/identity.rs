//! A node's TLS identity: a self-signed X.509 certificate over its ed25519
//! node key, carrying its encoded [`NodeCertificate`] in a private extension.

use std::fmt;
use std::sync::Arc;

use aether_identity::{NodeCertificate, NodeId, SecretKey};
use quinn::ConnectionId;
use ring::hmac;
use ring::rand::SecureRandom as _;
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::TransportError;

/// OID of the X.509 extension that carries a node's encoded
/// [`NodeCertificate`] (see [`ADMISSION_EXTENSION_OID_TEXT`]).
///
/// It sits under the IANA private-enterprise arc `1.3.6.1.4.1`; the number
/// `62253` is not a registered enterprise number of this project, only
/// Aether nodes read the extension, and it is marked non-critical. The final
/// `.1.1` is "admission, version 1". The extension value (the bytes inside
/// `extnValue`) is [`NodeCertificate::to_bytes`] exactly, with no further
/// DER wrapping.
pub const ADMISSION_EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 62253, 1, 1];

/// [`ADMISSION_EXTENSION_OID`] in dotted form.
pub const ADMISSION_EXTENSION_OID_TEXT: &str = "1.3.6.1.4.1.62253.1.1";

/// Name the TLS certificate is issued for and clients ask for. It carries no
/// meaning: peers are identified by their node key, never by name.
pub(crate) const TLS_SERVER_NAME: &str = "aether-node";

/// [`SecretKey::derive_secret`] context of the stateless-reset key.
const RESET_KEY_CONTEXT: &str = "aether-transport/stateless-reset/v1";
/// [`SecretKey::derive_secret`] context of the connection id key.
const CID_KEY_CONTEXT: &str = "aether-transport/connection-id/v1";
/// Random bytes at the start of a connection id.
const CID_NONCE_LEN: usize = 3;
/// Connection id length: the nonce and a truncated HMAC of it.
const CID_LEN: usize = 8;

/// DER prefix of an ed25519 `SubjectPublicKeyInfo` (RFC 8410); the 32 key
/// bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER `SubjectPublicKeyInfo` of an ed25519 key.
pub(crate) fn ed25519_spki(key: &NodeId) -> [u8; 44] {
    let mut out = [0u8; 44];
    out[..12].copy_from_slice(&ED25519_SPKI_PREFIX);
    out[12..].copy_from_slice(key.as_bytes());
    out
}

/// What a node presents in every handshake: its node key (which signs the
/// TLS handshake) and a self-signed certificate over that key carrying its
/// [`NodeCertificate`].
///
/// It also keeps two HMAC keys derived from the node key, so that they are
/// the same after a restart: the QUIC stateless-reset key and the key that
/// tags the connection ids this node issues. A restarted node therefore
/// recognizes packets of its previous run's connections and answers them
/// with a stateless reset the peer accepts, closing the stale connection at
/// once instead of after its idle timeout.
#[derive(Clone)]
pub struct NodeIdentity {
    node: NodeId,
    certified: Arc<CertifiedKey>,
    reset_key: hmac::Key,
    cid_key: hmac::Key,
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeIdentity({})", self.node)
    }
}

impl NodeIdentity {
    /// The identity of the node holding `secret`, admitted by `certificate`.
    ///
    /// Fails when `certificate` certifies another key. The certificate's
    /// chain is not checked here: peers check it in every handshake.
    pub fn new(secret: &SecretKey, certificate: &NodeCertificate) -> Result<Self, TransportError> {
        if *certificate.node() != secret.public() {
            return Err(TransportError::IdentityMismatch {
                key: Box::new(secret.public()),
                certified: Box::new(*certificate.node()),
            });
        }
        Self::build(secret, Some(certificate.to_bytes()))
    }

    /// Builds the identity without checking that `admission` (the extension
    /// value, if any) certifies `secret`: tests craft refused peers with it.
    pub(crate) fn build(
        secret: &SecretKey,
        admission: Option<Vec<u8>>,
    ) -> Result<Self, TransportError> {
        let node = secret.public();
        let mut params = rcgen::CertificateParams::new(vec![TLS_SERVER_NAME.to_string()])
            .map_err(TransportError::Certificate)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node.to_string());
        if let Some(bytes) = admission {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    ADMISSION_EXTENSION_OID,
                    bytes,
                ));
        }
        let key = RcgenKey {
            secret,
            public: *node.as_bytes(),
        };
        let cert = params
            .self_signed(&key)
            .map_err(TransportError::Certificate)?;
        let der = CertificateDer::from(cert.der().to_vec());
        let certified = CertifiedKey::new(vec![der], Arc::new(TlsKey(secret.clone())));
        Ok(Self {
            node,
            certified: Arc::new(certified),
            reset_key: hmac::Key::new(hmac::HMAC_SHA256, &secret.derive_secret(RESET_KEY_CONTEXT)),
            cid_key: hmac::Key::new(hmac::HMAC_SHA256, &secret.derive_secret(CID_KEY_CONTEXT)),
        })
    }

    /// The node key (the node's id).
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The DER certificate this node presents.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.certified.cert[0]
    }

    pub(crate) fn certified_key(&self) -> Arc<CertifiedKey> {
        self.certified.clone()
    }

    /// The QUIC endpoint configuration: stateless-reset key and connection
    /// id generator keyed by keys derived from the node key.
    pub(crate) fn endpoint_config(&self) -> quinn::EndpointConfig {
        let mut config = quinn::EndpointConfig::new(Arc::new(self.reset_key.clone()));
        let cid_key = self.cid_key.clone();
        config.cid_generator(move || {
            Box::new(CidGenerator {
                key: cid_key.clone(),
                rng: ring::rand::SystemRandom::new(),
                fallback: 0,
            })
        });
        config
    }
}

/// Issues 8-byte connection ids: 3 random bytes, then the first 5 bytes of
/// their HMAC under the node's connection id key. `validate` recognizes the
/// ids of this node, including those of its previous runs, so that packets
/// for a connection that no longer exists get a stateless reset while
/// packets with foreign ids are dropped silently.
struct CidGenerator {
    key: hmac::Key,
    rng: ring::rand::SystemRandom,
    /// Counter used as the nonce should the OS fail to give randomness.
    fallback: u32,
}

impl CidGenerator {
    fn tag(&self, nonce: &[u8]) -> [u8; CID_LEN - CID_NONCE_LEN] {
        let mut out = [0u8; CID_LEN - CID_NONCE_LEN];
        out.copy_from_slice(&hmac::sign(&self.key, nonce).as_ref()[..CID_LEN - CID_NONCE_LEN]);
        out
    }
}

impl quinn::ConnectionIdGenerator for CidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        if self.rng.fill(&mut bytes[..CID_NONCE_LEN]).is_err() {
            // quinn retries ids already in use, so a counter is a correct
            // (if linkable) fallback.
            self.fallback = self.fallback.wrapping_add(1);
            bytes[..CID_NONCE_LEN].copy_from_slice(&self.fallback.to_be_bytes()[1..]);
        }
        let tag = self.tag(&bytes[..CID_NONCE_LEN]);
        bytes[CID_NONCE_LEN..].copy_from_slice(&tag);
        ConnectionId::new(&bytes)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if cid.len() != CID_LEN {
            return Err(quinn_proto::InvalidCid);
        }
        if self.tag(&cid[..CID_NONCE_LEN])[..] == cid[CID_NONCE_LEN..] {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// The node key as an rcgen signer (the secret never leaves `SecretKey`).
struct RcgenKey<'a> {
    secret: &'a SecretKey,
    public: [u8; 32],
}

impl rcgen::PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

impl rcgen::SigningKey for RcgenKey<'_> {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        Ok(self.secret.sign(msg).to_bytes().to_vec())
    }
}

/// The node key as a rustls signing key: ed25519 only.
#[derive(Debug)]
struct TlsKey(SecretKey);

impl SigningKey for TlsKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(TlsSigner(self.0.clone())) as Box<dyn Signer>)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ED25519
    }
}

#[derive(Debug)]
struct TlsSigner(SecretKey);

impl Signer for TlsSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}
