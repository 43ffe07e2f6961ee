//! Node-to-node transport of an Aether lattice: QUIC (quinn) with TLS 1.3
//! and mutual authentication chained to the lattice root.
//!
//! # The handshake
//!
//! Every node presents one self-signed X.509 certificate
//! ([`NodeIdentity`]). Its subject key is the node's ed25519 node key, the
//! same key its [`NodeCertificate`](aether_identity::NodeCertificate)
//! certifies, and the encoded node certificate rides in a private,
//! non-critical extension ([`ADMISSION_EXTENSION_OID_TEXT`]). The X.509
//! issuer, validity dates and name carry no meaning; no web PKI is involved.
//!
//! Both sides run the same checks on the peer's certificate (the server's
//! `ClientCertVerifier` on the dialer, the dialer's `ServerCertVerifier` on
//! the server; client certificates are mandatory), in this order, refusing
//! with the first that fails:
//!
//! 1. it is one parseable X.509 certificate, no chain
//!    ([`RefusalReason::BadCertificate`]);
//! 2. it carries the admission extension, exactly once
//!    ([`RefusalReason::NoAdmission`]);
//! 3. the extension decodes as a node certificate and
//!    [`NodeCertificate::verify`](aether_identity::NodeCertificate::verify)
//!    accepts it against our lattice root at the handshake's clock: invite
//!    signed by the root, node certificate signed by the invite key and the
//!    node key, issued before the invite expired, constraints kept
//!    ([`RefusalReason::ForeignLattice`] when the chain ends at another
//!    root, [`RefusalReason::BadChain`] otherwise);
//! 4. the certificate's `SubjectPublicKeyInfo` is exactly the admitted node
//!    key ([`RefusalReason::KeyMismatch`]: a stolen node certificate is
//!    useless without the node's secret key);
//! 5. the node is not in the shared [`RevocationSet`](aether_identity::RevocationSet)
//!    as it is at that moment ([`RefusalReason::Revoked`]);
//! 6. when dialing with an expected node id, the peer is that node
//!    ([`RefusalReason::UnexpectedNode`]);
//! 7. the shared [`AdmissionLedger`](aether_identity::AdmissionLedger)
//!    admits it at the handshake's clock and records its first admission
//!    ([`AdmissionLedger::admit`](aether_identity::AdmissionLedger::admit)):
//!    a node seen for the first time needs an unexpired invite
//!    ([`RefusalReason::InviteExpired`]; a node already in the ledger stays
//!    admitted after expiry), and a single-use invite admits only its
//!    winner ([`RefusalReason::InviteUsed`]). When the new node's claim is
//!    earlier than the winner's, the former winner is displaced and its
//!    connections closed ([`close_code::DISPLACED`]), as they are for nodes
//!    displaced by [`Endpoint::merge_ledger`].
//!
//! The root, revocations and ledger are given to [`Endpoint::bind`] as an
//! [`Admission`].
//!
//! TLS then checks the peer's `CertificateVerify`: an ed25519 signature
//! (the only scheme offered or accepted) over the handshake transcript by
//! the certificate's key, which step 4 tied to the admitted node key. So
//! the peer proved possession of an admitted node key before any
//! application byte flows. Only TLS 1.3 is enabled.
//!
//! Each refusal aborts the handshake, increments its counter in
//! [`TransportMetrics`] and logs a `tracing` warning saying why. A revoked
//! peer gets the `certificate_revoked` alert; the others get
//! `bad_certificate`.
//!
//! After the handshake the dialer sends a short hello on a bidirectional
//! stream and waits for the acceptor's answer, so that
//! [`Endpoint::connect`] returns only once the acceptor has admitted the
//! dialer too (in TLS 1.3 the client finishes before the server has
//! checked its certificate).
//!
//! # Messages
//!
//! [`Endpoint::send`] writes one message as one unidirectional QUIC stream:
//! a channel byte, then the payload, then FIN. The receiver reads at most
//! [`Config::max_frame_len`] payload bytes; a longer stream closes the
//! connection ([`close_code::FRAME_TOO_LARGE`]). Messages of one peer may be
//! delivered out of order. [`Endpoint::recv`] yields them as [`Message`]s
//! tagged with the sender's proven node id.
//!
//! # Connections
//!
//! One connection per peer is cached (at most [`Config::max_connections`]
//! peers, least recently used evicted): the newest admitted connection with
//! a node is the one used, so a node that restarted is reachable through its
//! new connection at once. At most two connections per peer stay open (for
//! when both dial at once); a newer one closes the oldest
//! ([`close_code::TOO_MANY`]). [`Endpoint::connect`] with an expected node
//! id reuses the cached connection, and concurrent calls for one node share
//! a single dial. [`Endpoint::close_peer`] and [`Endpoint::revoke`] close
//! every connection with a node; a message arriving from a node revoked
//! since its handshake is dropped and its connections closed.
//!
//! The QUIC stateless-reset key and the key that tags this node's
//! connection ids are derived from the node key ([`NodeIdentity`]). A node
//! restarted with the same key on the same address therefore answers a
//! packet of a connection from its previous run with a stateless reset the
//! peer accepts, and the peer drops that stale connection immediately
//! rather than after [`Config::idle_timeout`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::net::SocketAddr;

use aether_identity::NodeId;

mod connections;
mod endpoint;
mod identity;
mod protocol;
mod relay;
mod verify;

#[cfg(test)]
mod tests;

pub use endpoint::Endpoint;
pub use identity::{ADMISSION_EXTENSION_OID, ADMISSION_EXTENSION_OID_TEXT, NodeIdentity};
pub use protocol::{Config, IncomingStream, Message, STREAM_REFUSED, StreamService, close_code};
pub use quinn::{ReadError, RecvStream, SendStream, WriteError};
pub use relay::RelayMetrics;
pub use verify::{
    Admission, Refusal, RefusalReason, SharedLedger, SharedRevocations, TransportMetrics,
};

/// What can go wrong in the transport. Handshake refusals reach the dialer
/// as [`TransportError::Connection`] or [`TransportError::Quic`]; the
/// reason is logged and counted on the side that refused.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The node certificate certifies another key than the node's.
    #[error(
        "the node certificate certifies {certified}, but this node's key is {key}: use the certificate issued for this node's key"
    )]
    IdentityMismatch {
        /// This node's key (boxed: keeps the error small).
        key: Box<NodeId>,
        /// The key the node certificate names.
        certified: Box<NodeId>,
    },
    /// The TLS certificate could not be built.
    #[error("building the TLS certificate: {0}")]
    Certificate(rcgen::Error),
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(rustls::Error),
    /// A configuration value is out of range.
    #[error("invalid transport configuration: {0}")]
    Config(&'static str),
    /// The UDP socket could not be bound or queried.
    #[error("binding the mesh socket: {0} (is the port taken?)")]
    Bind(std::io::Error),
    /// The connection failed or was closed (a refused handshake included).
    #[error("connection failed: {0}")]
    Connection(quinn::ConnectionError),
    /// Another QUIC-level failure.
    #[error("{0}")]
    Quic(String),
    /// `connect` did not finish in time.
    #[error("connecting to {0} timed out")]
    Timeout(SocketAddr),
    /// No cached connection to the node: call `connect` first.
    #[error("not connected to node {0}")]
    NotConnected(Box<NodeId>),
    /// A message over the size bound.
    #[error("message of {len} bytes exceeds the {max}-byte frame bound")]
    FrameTooLarge {
        /// The payload length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Writing a message failed (the connection is dropped from the cache).
    #[error("sending to node {node} failed: {reason}")]
    Send {
        /// The peer (boxed: keeps the error small).
        node: Box<NodeId>,
        /// Why.
        reason: String,
    },
}

impl TransportError {
    /// An equal error, for each `connect` that shared one dial (variants
    /// holding an `io::Error` keep its kind and message).
    pub(crate) fn duplicate(&self) -> Self {
        match self {
            Self::IdentityMismatch { key, certified } => Self::IdentityMismatch {
                key: key.clone(),
                certified: certified.clone(),
            },
            Self::Certificate(e) => Self::Certificate(e.clone()),
            Self::Tls(e) => Self::Tls(e.clone()),
            Self::Config(s) => Self::Config(s),
            Self::Bind(e) => Self::Bind(std::io::Error::new(e.kind(), e.to_string())),
            Self::Connection(e) => Self::Connection(e.clone()),
            Self::Quic(s) => Self::Quic(s.clone()),
            Self::Timeout(addr) => Self::Timeout(*addr),
            Self::NotConnected(node) => Self::NotConnected(node.clone()),
            Self::FrameTooLarge { len, max } => Self::FrameTooLarge {
                len: *len,
                max: *max,
            },
            Self::Send { node, reason } => Self::Send {
                node: node.clone(),
                reason: reason.clone(),
            },
        }
    }
}
