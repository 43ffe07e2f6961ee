//! The certificate verifiers both sides of a handshake run, and the refusal
//! counters they keep.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use aether_identity::{
    AdmissionError, AdmissionLedger, NodeCertificate, NodeId, PublicKey, RevocationSet,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, PeerMisbehaved,
    SignatureScheme,
};
use x509_parser::oid_registry::Oid;

use crate::identity::{ADMISSION_EXTENSION_OID, ed25519_spki};

/// The revocations a node knows, shared with the transport and updatable at
/// runtime: a handshake reads the set as it is at that moment.
pub type SharedRevocations = Arc<RwLock<RevocationSet>>;

/// The admission ledger a node keeps, shared with the transport and
/// updatable at runtime: a handshake records a peer's first admission in it
/// and refuses a peer it refuses. Merge other members' ledgers with
/// [`Endpoint::merge_ledger`](crate::Endpoint::merge_ledger), which also
/// closes the connections of nodes the merge displaces.
pub type SharedLedger = Arc<RwLock<AdmissionLedger>>;

/// What every handshake checks a peer against.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The lattice root public key every peer's admission chain must end at.
    pub root: PublicKey,
    /// Revoked nodes, refused in the handshake.
    pub revocations: SharedRevocations,
    /// Which nodes each invite admitted: a node seen for the first time must
    /// have an unexpired invite, and a single-use invite admits one node.
    pub ledger: SharedLedger,
}

impl Admission {
    /// Trusts `root`, with no revocation and an empty ledger.
    pub fn new(root: PublicKey) -> Self {
        Self {
            root,
            revocations: Arc::new(RwLock::new(RevocationSet::new())),
            ledger: Arc::new(RwLock::new(AdmissionLedger::new())),
        }
    }
}

/// Why a peer was refused during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The peer's certificate is not parseable X.509 (or carries the
    /// admission extension twice).
    BadCertificate,
    /// The certificate has no admission extension: the peer never joined.
    NoAdmission,
    /// The admission extension does not decode, or its chain does not verify
    /// (forged signature, invite expired before issue, constraints broken).
    BadChain,
    /// The node certificate chains to another lattice's root key.
    ForeignLattice,
    /// The node is revoked.
    Revoked,
    /// The TLS certificate's key is not the node key its admission certifies.
    KeyMismatch,
    /// The peer is admitted but is not the node the caller asked for.
    UnexpectedNode,
    /// The node's invite had expired when this node first saw it (a node
    /// already in the ledger stays admitted after its invite expires).
    InviteExpired,
    /// The node's single-use invite admitted another node.
    InviteUsed,
}

impl RefusalReason {
    /// Every reason, in counter order.
    pub const ALL: [RefusalReason; 9] = [
        RefusalReason::BadCertificate,
        RefusalReason::NoAdmission,
        RefusalReason::BadChain,
        RefusalReason::ForeignLattice,
        RefusalReason::Revoked,
        RefusalReason::KeyMismatch,
        RefusalReason::UnexpectedNode,
        RefusalReason::InviteExpired,
        RefusalReason::InviteUsed,
    ];

    /// A short snake_case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusalReason::BadCertificate => "bad_certificate",
            RefusalReason::NoAdmission => "no_admission",
            RefusalReason::BadChain => "bad_chain",
            RefusalReason::ForeignLattice => "foreign_lattice",
            RefusalReason::Revoked => "revoked",
            RefusalReason::KeyMismatch => "key_mismatch",
            RefusalReason::UnexpectedNode => "unexpected_node",
            RefusalReason::InviteExpired => "invite_expired",
            RefusalReason::InviteUsed => "invite_used",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused handshake: the reason and the details for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("peer refused ({reason}): {detail}")]
pub struct Refusal {
    /// The counted reason.
    pub reason: RefusalReason,
    /// What exactly failed.
    pub detail: String,
}

impl Refusal {
    fn new(reason: RefusalReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// Counters of one endpoint. All are monotonic.
#[derive(Debug, Default)]
pub struct TransportMetrics {
    refused: [AtomicU64; RefusalReason::ALL.len()],
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_evicted: AtomicU64,
    pub(crate) connections_closed: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) frames_too_large: AtomicU64,
    pub(crate) streams_opened: AtomicU64,
    pub(crate) streams_accepted: AtomicU64,
    pub(crate) streams_refused: AtomicU64,
}

impl TransportMetrics {
    /// Handshakes refused for `reason` (either side: as server or client).
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()].load(Ordering::Relaxed)
    }

    /// Handshakes refused for any reason.
    pub fn refused_total(&self) -> u64 {
        RefusalReason::ALL.iter().map(|r| self.refused(*r)).sum()
    }

    /// Incoming connections admitted.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// Outgoing connections established (cache misses of `connect`).
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Request streams this node opened ([`Endpoint::open_stream`](crate::Endpoint::open_stream)).
    pub fn streams_opened(&self) -> u64 {
        self.streams_opened.load(Ordering::Relaxed)
    }

    /// Request streams from peers handed to a channel's handler.
    pub fn streams_accepted(&self) -> u64 {
        self.streams_accepted.load(Ordering::Relaxed)
    }

    /// Request streams from peers refused: no handler for the channel, its
    /// queue full, a revoked sender, or no channel byte in time.
    pub fn streams_refused(&self) -> u64 {
        self.streams_refused.load(Ordering::Relaxed)
    }

    /// Connections closed because the cache was full.
    pub fn connections_evicted(&self) -> u64 {
        self.connections_evicted.load(Ordering::Relaxed)
    }

    /// Connections closed by `close_peer`, a revocation or a ledger merge
    /// that displaced their node.
    pub fn connections_closed(&self) -> u64 {
        self.connections_closed.load(Ordering::Relaxed)
    }

    /// Messages handed to QUIC by `send`.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
    }

    /// Messages received and queued for `recv`.
    pub fn messages_received(&self) -> u64 {
        self.messages_received.load(Ordering::Relaxed)
    }

    /// Incoming frames over the size bound (each closed its connection).
    pub fn frames_too_large(&self) -> u64 {
        self.frames_too_large.load(Ordering::Relaxed)
    }

    fn count_refusal(&self, reason: RefusalReason) {
        self.refused[reason.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// The node id a verified certificate names (after the handshake: the
/// certificate was checked by [`PeerVerifier::admit`]).
pub(crate) fn peer_node_id(der: &CertificateDer<'_>) -> Option<NodeId> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let oid = Oid::from(ADMISSION_EXTENSION_OID).ok()?;
    let ext = cert.get_extension_unique(&oid).ok()??;
    NodeCertificate::from_bytes(ext.value)
        .ok()
        .map(|c| *c.node())
}

/// Called with a node that a handshake's ledger admission displaced (it won
/// a single-use invite until an earlier claim arrived).
type DisplacedHook = Box<dyn Fn(NodeId) + Send + Sync>;

/// The checks shared by both sides of a handshake.
pub(crate) struct PeerVerifier {
    admission: Admission,
    metrics: Arc<TransportMetrics>,
    provider: Arc<CryptoProvider>,
    on_displaced: OnceLock<DisplacedHook>,
}

impl fmt::Debug for PeerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerVerifier")
            .field("root", &self.admission.root)
            .finish_non_exhaustive()
    }
}

impl PeerVerifier {
    pub(crate) fn new(
        admission: Admission,
        metrics: Arc<TransportMetrics>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            admission,
            metrics,
            provider,
            on_displaced: OnceLock::new(),
        }
    }

    /// Sets what to do with a node displaced by a handshake (the endpoint
    /// closes its connections). Only the first call has an effect.
    pub(crate) fn on_displaced(&self, hook: impl Fn(NodeId) + Send + Sync + 'static) {
        let _ = self.on_displaced.set(Box::new(hook));
    }

    /// Every admission check on the peer's end-entity certificate, in order:
    /// X.509 parse, admission extension present, node certificate decodes
    /// and chains to our root at `now`, TLS key equals the admitted node
    /// key, not revoked, (client side) the node asked for, and finally the
    /// ledger admits it at `now` (recording a first admission).
    pub(crate) fn admit(
        &self,
        der: &CertificateDer<'_>,
        now: u64,
        expected: Option<&NodeId>,
    ) -> Result<NodeId, Refusal> {
        use RefusalReason::*;
        let (rest, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| Refusal::new(BadCertificate, format!("not an X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(Refusal::new(
                BadCertificate,
                "trailing bytes after the certificate",
            ));
        }
        let oid = Oid::from(ADMISSION_EXTENSION_OID)
            .map_err(|_| Refusal::new(BadCertificate, "admission OID does not encode"))?;
        let ext = cert
            .get_extension_unique(&oid)
            .map_err(|e| Refusal::new(BadCertificate, format!("admission extension: {e}")))?
            .ok_or_else(|| {
                Refusal::new(
                    NoAdmission,
                    "certificate carries no admission extension: the peer was never admitted to a lattice",
                )
            })?;
        let node_cert = NodeCertificate::from_bytes(ext.value)
            .map_err(|e| Refusal::new(BadChain, e.to_string()))?;
        let admitted = node_cert
            .verify(&self.admission.root, now)
            .map_err(|e| match e {
                AdmissionError::WrongLattice { .. } => Refusal::new(ForeignLattice, e.to_string()),
                other => Refusal::new(BadChain, other.to_string()),
            })?;
        let node = *admitted.node();
        if cert.public_key().raw != ed25519_spki(&node).as_slice() {
            return Err(Refusal::new(
                KeyMismatch,
                format!(
                    "the TLS certificate's key is not node key {node} that its admission certifies"
                ),
            ));
        }
        self.admission
            .revocations
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .check(&node)
            .map_err(|e| Refusal::new(Revoked, e.to_string()))?;
        if let Some(expected) = expected
            && *expected != node
        {
            return Err(Refusal::new(
                UnexpectedNode,
                format!("expected node {expected}, the peer is node {node}"),
            ));
        }
        let outcome = self
            .admission
            .ledger
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .admit(&admitted, now);
        match outcome {
            Ok(outcome) => {
                if let Some(displaced) = outcome.displaced {
                    tracing::warn!(
                        node = %displaced,
                        winner = %node,
                        "an earlier claim of a single-use invite displaced a node; closing its connections"
                    );
                    if let Some(hook) = self.on_displaced.get() {
                        hook(displaced);
                    }
                }
                Ok(node)
            }
            Err(e @ AdmissionError::InviteExpired { .. }) => {
                Err(Refusal::new(InviteExpired, e.to_string()))
            }
            Err(e @ AdmissionError::InviteAlreadyUsed { .. }) => {
                Err(Refusal::new(InviteUsed, e.to_string()))
            }
            Err(other) => Err(Refusal::new(BadChain, other.to_string())),
        }
    }

    /// [`PeerVerifier::admit`], counting and logging a refusal and turning it
    /// into the TLS error that aborts the handshake.
    fn check(
        &self,
        der: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        expected: Option<&NodeId>,
        peer_role: &'static str,
    ) -> Result<NodeId, rustls::Error> {
        let result = if intermediates.is_empty() {
            self.admit(der, now.as_secs(), expected)
        } else {
            Err(Refusal::new(
                RefusalReason::BadCertificate,
                "peer sent a certificate chain; nodes present one self-signed certificate",
            ))
        };
        result.map_err(|refusal| {
            self.metrics.count_refusal(refusal.reason);
            tracing::warn!(
                peer_role,
                reason = refusal.reason.as_str(),
                detail = %refusal.detail,
                "refused peer during the TLS handshake"
            );
            let error = match refusal.reason {
                RefusalReason::Revoked => CertificateError::Revoked,
                _ => CertificateError::Other(OtherError(Arc::new(refusal))),
            };
            rustls::Error::InvalidCertificate(error)
        })
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
        }
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
}

fn no_tls12() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is not accepted between nodes".to_string())
}

/// The client side: checks the server (the node we dial).
#[derive(Debug)]
pub(crate) struct ServerVerifier {
    pub(crate) inner: Arc<PeerVerifier>,
    pub(crate) expected: Option<NodeId>,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .check(
                end_entity,
                intermediates,
                now,
                self.expected.as_ref(),
                "server",
            )
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The server side: checks the client (the node dialing us). Client
/// certificates are mandatory.
#[derive(Debug)]
pub(crate) struct ClientVerifier {
    pub(crate) inner: Arc<PeerVerifier>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .check(end_entity, intermediates, now, None, "client")
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(no_tls12())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
