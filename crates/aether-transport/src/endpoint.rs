//! The endpoint: one UDP socket, the admitted connections, framed messages.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aether_identity::{AdmissionLedger, NodeId, VerifiedRevocation};
use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Connection, VarInt};
use rustls::pki_types::CertificateDer;
use rustls::sign::SingleCertAndKey;
use tokio::sync::{OnceCell, mpsc};

use crate::identity::TLS_SERVER_NAME;
use crate::relay::{RelayMetrics, RelaySocket, RelayTable, is_virtual};
use crate::verify::{ClientVerifier, PeerVerifier, ServerVerifier, peer_node_id};
use crate::{
    Admission, NodeIdentity, SharedLedger, SharedRevocations, TransportError, TransportMetrics,
};

/// Application close codes this crate sends.
pub mod close_code {
    /// The endpoint shut down.
    pub const SHUTDOWN: u32 = 0;
    /// The peer sent a frame over the size bound.
    pub const FRAME_TOO_LARGE: u32 = 1;
    /// Closed on request (`close_peer`), typically because the peer was revoked.
    pub const CLOSED: u32 = 2;
    /// Evicted from a full connection cache.
    pub const EVICTED: u32 = 3;
    /// The peer broke the framing protocol (bad hello, empty frame).
    pub const PROTOCOL: u32 = 4;
    /// The oldest connection with a node, closed because a newer one took
    /// the node past the per-node bound (the node reconnected).
    pub const TOO_MANY: u32 = 5;
    /// The peer lost a single-use invite to an earlier claim (ledger merge or
    /// handshake) and is no longer admitted.
    pub const DISPLACED: u32 = 6;
    /// A reachability probe ([`super::Endpoint::probe`]) done: the handshake was all it wanted.
    pub const PROBED: u32 = 7;
    /// The relay a connection went through is gone.
    pub const RELAY_GONE: u32 = 8;
}

/// What the dialer sends on its first bidirectional stream; the acceptor
/// answers [`HELLO_ACK`] once it has admitted the dialer. The dialer's
/// `connect` returns only after the answer, so a dialer the acceptor
/// refused sees the refusal as a `connect` error.
const HELLO: &[u8] = b"aether-transport/1";
const HELLO_ACK: &[u8] = b"aether-transport/1 ok";

/// Live connections one node may have with another (the newest, which is
/// used, plus one made concurrently by the other side). A newer connection
/// past the bound closes the oldest.
const MAX_CONNECTIONS_PER_NODE: usize = 2;

/// Tunables of an [`Endpoint`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Most peers with a cached connection; connecting to one more closes
    /// the least recently used. Default 256.
    pub max_connections: usize,
    /// Largest message payload in bytes. `send` refuses larger ones; a peer
    /// that sends one has its connection closed. Default 1 MiB.
    pub max_frame_len: usize,
    /// A connection with no traffic for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Send keep-alives this often (`None`: never, so idle connections
    /// close). Default `None`.
    pub keep_alive_interval: Option<Duration>,
    /// Bound on `connect` (handshake plus hello). Default 10 s.
    pub connect_timeout: Duration,
    /// Messages queued for [`Endpoint::recv`] before readers wait. Default 1024.
    pub incoming_queue: usize,
    /// Concurrent incoming message streams per connection. Default 128.
    pub max_concurrent_streams: u32,
    /// Concurrent request streams ([`Endpoint::open_stream`]) a peer may
    /// have open towards this node on one connection. Default 256.
    pub max_request_streams: u32,
    /// Whether the node's endpoint passes datagrams on between two other peers that cannot
    /// reach each other (relaying; `aether_nat::relay`). Default true.
    pub relay: bool,
    /// Bytes a second relayed for one pair of peers, at most. Default 8 MiB.
    pub relay_rate: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_frame_len: 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: None,
            connect_timeout: Duration::from_secs(10),
            incoming_queue: 1024,
            max_concurrent_streams: 128,
            max_request_streams: 256,
            relay: true,
            relay_rate: 8 << 20,
        }
    }
}

/// One message received from an admitted peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The sender, as proven in the handshake.
    pub from: NodeId,
    /// The channel byte the sender chose (which protocol it belongs to).
    pub channel: u8,
    /// The payload.
    pub payload: Bytes,
}

/// A request stream a peer opened on a channel: bytes both ways, each side
/// finishing its half when done. The channel byte is already consumed.
#[derive(Debug)]
pub struct IncomingStream {
    /// The peer, as proven in the handshake.
    pub from: NodeId,
    /// The channel the peer opened it on.
    pub channel: u8,
    /// This node's half: what it writes reaches the peer.
    pub send: quinn::SendStream,
    /// The peer's half.
    pub recv: quinn::RecvStream,
}

/// A function that serves one request stream; see [`Endpoint::serve_streams`].
pub type StreamService = Arc<
    dyn Fn(IncomingStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// What a channel's request streams are handed to.
#[derive(Clone)]
enum StreamHandler {
    /// Queued for a reader.
    Queue(mpsc::Sender<IncomingStream>),
    /// Served at once, each on the task that accepted it.
    Serve(StreamService),
}

/// How long a peer has to name the channel of a stream it opened.
const STREAM_CHANNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Application error code on streams refused by the receiver.
pub const STREAM_REFUSED: u32 = 1;

/// A QUIC endpoint of one node: accepts admitted peers, dials them, caches
/// one connection per peer (its newest) and carries framed messages. Cheap
/// to clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("node", &self.inner.node)
            .field("local_addr", &self.inner.quinn.local_addr().ok())
            .finish_non_exhaustive()
    }
}

struct Inner {
    node: NodeId,
    quinn: quinn::Endpoint,
    verifier: Arc<PeerVerifier>,
    identity: NodeIdentity,
    provider: Arc<rustls::crypto::CryptoProvider>,
    transport: Arc<quinn::TransportConfig>,
    config: Config,
    admission: Admission,
    metrics: Arc<TransportMetrics>,
    cache: Mutex<Cache>,
    /// Dials in progress to expected nodes; concurrent `connect`s to one
    /// node join the same dial.
    dials: Mutex<HashMap<NodeId, Dial>>,
    incoming_tx: mpsc::Sender<Message>,
    incoming_rx: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    /// Where each channel's incoming request streams go.
    stream_handlers: Mutex<HashMap<u8, StreamHandler>>,
    /// Other endpoints of this node ([`Endpoint::bind_sibling`]).
    siblings: Mutex<Vec<Weak<Inner>>>,
    /// For a sibling: the node's endpoint it was bound from.
    parent: Option<Weak<Inner>>,
    /// The node's endpoint's relaying (none on siblings).
    relay: Option<Arc<RelayTable>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.quinn
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
    }
}

/// One dial shared by concurrent `connect`s: its outcome, set once.
type Dial = Arc<OnceCell<Result<NodeId, TransportError>>>;

#[derive(Default)]
struct Cache {
    /// Logical clock: orders uses (for eviction) and registrations.
    clock: u64,
    /// The connection used to reach each peer (its newest admitted one),
    /// with its last use.
    primary: HashMap<NodeId, (Connection, u64)>,
    /// Every live admitted connection, by `stable_id`.
    all: HashMap<usize, Live>,
}

/// An admitted connection in the cache.
struct Live {
    node: NodeId,
    conn: Connection,
    /// The clock when it was registered (larger is newer).
    registered: u64,
}

impl Cache {
    /// The newest live connection with `node`, if any.
    fn newest(&self, node: &NodeId) -> Option<Connection> {
        self.all
            .values()
            .filter(|l| l.node == *node && l.conn.close_reason().is_none())
            .max_by_key(|l| l.registered)
            .map(|l| l.conn.clone())
    }
}

impl Endpoint {
    /// Binds `addr` (UDP) and starts accepting peers admitted by
    /// `admission`: chained to its root, not revoked, and admitted by its
    /// ledger (which records their first admission). Must be called within
    /// a tokio runtime.
    ///
    /// The QUIC stateless-reset key and connection ids are derived from the
    /// node key, so after a restart with the same key on the same address,
    /// peers' stale connections to the previous run are reset at their next
    /// packet.
    pub fn bind(
        addr: SocketAddr,
        identity: NodeIdentity,
        admission: Admission,
        config: Config,
    ) -> Result<Self, TransportError> {
        Self::bind_with(
            addr,
            identity,
            admission,
            config,
            Arc::new(TransportMetrics::default()),
            None,
        )
    }

    /// Binds another endpoint of this node on `addr`, run by the current
    /// tokio runtime: same identity, admission and settings, and the same
    /// metrics. A peer closed on any of them ([`Endpoint::close_peer`],
    /// [`Endpoint::revoke`], a displaced invite) is closed on all, and
    /// [`Endpoint::close`] on the node's endpoint closes the siblings. A
    /// sibling carries request streams only: one-way messages sent to it
    /// are dropped (the node's endpoint receives those). A node gives each
    /// of its threads one, so a thread carries its own QUIC traffic without
    /// waking another.
    pub fn bind_sibling(&self, addr: SocketAddr) -> Result<Self, TransportError> {
        let inner = &self.inner;
        let sibling = Self::bind_with(
            addr,
            inner.identity.clone(),
            inner.admission.clone(),
            inner.config.clone(),
            inner.metrics.clone(),
            Some(Arc::downgrade(inner)),
        )?;
        let mut siblings = inner.siblings.lock().unwrap_or_else(|p| p.into_inner());
        siblings.retain(|s| s.strong_count() > 0);
        siblings.push(Arc::downgrade(&sibling.inner));
        Ok(sibling)
    }

    fn bind_with(
        addr: SocketAddr,
        identity: NodeIdentity,
        admission: Admission,
        config: Config,
        metrics: Arc<TransportMetrics>,
        parent: Option<Weak<Inner>>,
    ) -> Result<Self, TransportError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(PeerVerifier::new(
            admission.clone(),
            metrics.clone(),
            provider.clone(),
        ));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(config.idle_timeout)
                    .map_err(|_| TransportError::Config("idle_timeout is too large"))?,
            ))
            .keep_alive_interval(config.keep_alive_interval)
            .max_concurrent_uni_streams(VarInt::from_u32(config.max_concurrent_streams))
            .max_concurrent_bidi_streams(VarInt::from_u32(config.max_request_streams.max(1)))
            .datagram_receive_buffer_size(None);
        let transport = Arc::new(transport);

        let tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TransportError::Tls)?
            .with_client_cert_verifier(Arc::new(ClientVerifier {
                inner: verifier.clone(),
            }))
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(identity.certified_key())));
        let quic = QuicServerConfig::try_from(tls)
            .map_err(|e| TransportError::Quic(format!("server TLS config: {e}")))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport.clone());

        let socket = std::net::UdpSocket::bind(addr).map_err(TransportError::Bind)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let (quinn, relay) = if parent.is_none() {
            // The node's endpoint relays and is reached through relays.
            let table = Arc::new(RelayTable::new(config.relay, config.relay_rate));
            let socket = Arc::new(RelaySocket {
                inner: quinn::Runtime::wrap_udp_socket(&*runtime, socket)
                    .map_err(TransportError::Bind)?,
                table: table.clone(),
            });
            let quinn = quinn::Endpoint::new_with_abstract_socket(
                identity.endpoint_config(),
                Some(server),
                socket,
                runtime,
            )
            .map_err(TransportError::Bind)?;
            (quinn, Some(table))
        } else {
            let quinn =
                quinn::Endpoint::new(identity.endpoint_config(), Some(server), socket, runtime)
                    .map_err(TransportError::Bind)?;
            (quinn, None)
        };
        let (incoming_tx, incoming_rx) = mpsc::channel(config.incoming_queue.max(1));
        let inner = Arc::new(Inner {
            node: identity.node_id(),
            quinn: quinn.clone(),
            verifier,
            identity,
            provider,
            transport,
            config,
            admission,
            metrics,
            cache: Mutex::new(Cache::default()),
            dials: Mutex::new(HashMap::new()),
            incoming_tx,
            incoming_rx: tokio::sync::Mutex::new(incoming_rx),
            stream_handlers: Mutex::new(HashMap::new()),
            siblings: Mutex::new(Vec::new()),
            parent: parent.clone(),
            relay,
        });
        let weak = Arc::downgrade(&inner);
        inner.verifier.on_displaced(move |node| {
            if let Some(inner) = weak.upgrade() {
                inner.close_everywhere(
                    &node,
                    close_code::DISPLACED,
                    b"invite used by another node",
                );
            }
        });
        tokio::spawn(accept_loop(quinn, Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.node
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner.quinn.local_addr().map_err(TransportError::Bind)
    }

    /// The counters of this endpoint.
    pub fn metrics(&self) -> &Arc<TransportMetrics> {
        &self.inner.metrics
    }

    /// The revocation set handshakes consult.
    pub fn revocations(&self) -> &SharedRevocations {
        &self.inner.admission.revocations
    }

    /// The admission ledger handshakes consult and record first admissions
    /// in. Writing to it directly affects later handshakes only; merge other
    /// members' ledgers with [`Endpoint::merge_ledger`].
    pub fn ledger(&self) -> &SharedLedger {
        &self.inner.admission.ledger
    }

    /// Merges `other` (another member's ledger) into the shared ledger and
    /// closes every connection with each node the merge displaced (it won a
    /// single-use invite here, and `other` knows an earlier claim); returns
    /// those nodes, sorted. They are refused from then on.
    pub fn merge_ledger(&self, other: &AdmissionLedger) -> Vec<NodeId> {
        let report = self
            .inner
            .admission
            .ledger
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .merge(other);
        let mut displaced: Vec<NodeId> = report.displaced.into_iter().map(|(_, n)| n).collect();
        displaced.sort();
        displaced.dedup();
        for node in &displaced {
            tracing::warn!(%node, "a merged ledger gives this node's single-use invite to an earlier claim; closing its connections");
            self.inner.close_everywhere(
                node,
                close_code::DISPLACED,
                b"invite used by another node",
            );
        }
        displaced
    }

    /// A connection to the node at `addr`, returning its node id.
    ///
    /// With `expected` set and a live cached connection to that node, reuses
    /// it without touching the network, and concurrent calls for the same
    /// node share one dial (to the address of the first) and its outcome.
    /// Otherwise dials `addr`: the handshake refuses a peer that fails
    /// admission or (with `expected`) is another node, and `connect` then
    /// also waits until the peer has admitted us.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<NodeId, TransportError> {
        let Some(node) = expected else {
            return self.dial(addr, None).await;
        };
        if self.inner.cached(&node).is_some() {
            return Ok(node);
        }
        let dial: Dial = self.inner.lock_dials().entry(node).or_default().clone();
        // If the caller that started the dial is cancelled, the next waiter
        // dials instead.
        let outcome = dial
            .get_or_init(|| async {
                // A dial that finished after our cache check counts too.
                if self.inner.cached(&node).is_some() {
                    return Ok(node);
                }
                self.dial(addr, Some(node)).await
            })
            .await;
        {
            let mut dials = self.inner.lock_dials();
            if dials.get(&node).is_some_and(|d| Arc::ptr_eq(d, &dial)) {
                dials.remove(&node);
            }
        }
        outcome.as_ref().copied().map_err(TransportError::duplicate)
    }

    /// Whether node `expected` answers a fresh handshake at `addr` (how long it took): a peer
    /// reachable at the address it advertises does, one behind NAT does not. The connection is
    /// closed right after the handshake, before any hello, so neither side registers it or
    /// disturbs the connections it has. Gives up after `timeout`.
    pub async fn probe(
        &self,
        addr: SocketAddr,
        expected: NodeId,
        timeout: Duration,
    ) -> Result<Duration, TransportError> {
        let started = std::time::Instant::now();
        let connecting = self
            .inner
            .quinn
            .connect_with(self.client_config(Some(expected))?, addr, TLS_SERVER_NAME)
            .map_err(|e| TransportError::Quic(format!("connect to {addr}: {e}")))?;
        let conn = tokio::time::timeout(timeout, connecting)
            .await
            .map_err(|_| TransportError::Timeout(addr))?
            .map_err(TransportError::Connection)?;
        conn.close(VarInt::from_u32(close_code::PROBED), b"probed");
        Ok(started.elapsed())
    }

    /// A connection to `expected` dialled at `addr` itself, whatever other dial to that node is
    /// under way (a hole punch: the peer's public address, while other dials may be trying the
    /// one it advertises); returns at once when a connection is cached.
    pub async fn connect_at(
        &self,
        addr: SocketAddr,
        expected: NodeId,
    ) -> Result<NodeId, TransportError> {
        if self.inner.cached(&expected).is_some() {
            return Ok(expected);
        }
        self.dial(addr, Some(expected)).await
    }

    /// The address `node`'s cached connection comes from, as this endpoint sees it (for a peer
    /// behind NAT: the NAT's public address and port, not the one it advertises); `None` when
    /// there is no connection, or it goes through a relay (which hides where the peer is).
    pub fn remote_addr(&self, node: &NodeId) -> Option<SocketAddr> {
        self.inner
            .cached(node)
            .map(|c| c.remote_address())
            .filter(|a| !is_virtual(a))
    }

    /// A connection to `peer` through `relay` (a peer this node has a connection with, which
    /// passes the datagrams on to `peer` over the connection `peer` has with it): for two
    /// members whose NATs defeat a hole punch. The QUIC handshake and everything after it are
    /// end to end, as on a direct path. Returns at once when a connection is cached.
    pub async fn connect_relayed(
        &self,
        relay: NodeId,
        peer: NodeId,
    ) -> Result<NodeId, TransportError> {
        if self.inner.cached(&peer).is_some() {
            return Ok(peer);
        }
        let table = self
            .inner
            .relay
            .as_ref()
            .ok_or_else(|| TransportError::Quic("this endpoint does not relay".into()))?;
        let relay_addr = table
            .addr_of(&relay)
            .ok_or_else(|| TransportError::NotConnected(Box::new(relay)))?;
        let virtual_addr = table.virtual_addr(relay_addr, peer);
        self.dial(virtual_addr, Some(peer)).await
    }

    /// The relay this endpoint's connection with `node` goes through, if it is relayed.
    pub fn relay_of(&self, node: &NodeId) -> Option<NodeId> {
        let addr = self.inner.cached(node)?.remote_address();
        if !is_virtual(&addr) {
            return None;
        }
        self.inner.relay.as_ref()?.relay_of(&addr)
    }

    /// Tests only: makes this endpoint, as a relay, flip a byte in each of the next `count`
    /// datagrams it passes on.
    #[cfg(test)]
    pub(crate) fn damage_relayed(&self, count: u64) {
        if let Some(relay) = &self.inner.relay {
            relay.to_damage.store(count, Ordering::Relaxed);
        }
    }

    /// What this endpoint relayed for other peers (none on a sibling).
    pub fn relay_metrics(&self) -> Option<&RelayMetrics> {
        self.inner.relay.as_ref().map(|r| &r.metrics)
    }

    /// The QUIC client configuration of a dial (expecting `expected`, when given).
    fn client_config(
        &self,
        expected: Option<NodeId>,
    ) -> Result<quinn::ClientConfig, TransportError> {
        let inner = &self.inner;
        let tls = rustls::ClientConfig::builder_with_provider(inner.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(TransportError::Tls)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier {
                inner: inner.verifier.clone(),
                expected,
            }))
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
                inner.identity.certified_key(),
            )));
        let quic = QuicClientConfig::try_from(tls)
            .map_err(|e| TransportError::Quic(format!("client TLS config: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        client.transport_config(inner.transport.clone());
        Ok(client)
    }

    /// Dials `addr` and registers the admitted connection.
    async fn dial(
        &self,
        addr: SocketAddr,
        expected: Option<NodeId>,
    ) -> Result<NodeId, TransportError> {
        let inner = &self.inner;
        let connecting = inner
            .quinn
            .connect_with(self.client_config(expected)?, addr, TLS_SERVER_NAME)
            .map_err(|e| TransportError::Quic(format!("connect to {addr}: {e}")))?;
        let dial = async {
            let conn = connecting.await.map_err(TransportError::Connection)?;
            let (mut send, mut recv) = conn.open_bi().await.map_err(TransportError::Connection)?;
            send.write_all(HELLO)
                .await
                .map_err(|e| TransportError::Quic(format!("hello to {addr}: {e}")))?;
            let _ = send.finish();
            let ack = recv.read_to_end(HELLO_ACK.len()).await.map_err(|e| {
                TransportError::Quic(format!(
                    "{addr} did not admit us: {}",
                    read_reason(&conn, e)
                ))
            })?;
            if ack != HELLO_ACK {
                conn.close(VarInt::from_u32(close_code::PROTOCOL), b"bad hello");
                return Err(TransportError::Quic(format!("{addr} answered a bad hello")));
            }
            Ok(conn)
        };
        let conn = tokio::time::timeout(inner.config.connect_timeout, dial)
            .await
            .map_err(|_| TransportError::Timeout(addr))??;
        let node = identify(&conn).ok_or_else(|| {
            TransportError::Quic("peer identity missing after the handshake".to_string())
        })?;
        inner
            .metrics
            .connections_opened
            .fetch_add(1, Ordering::Relaxed);
        register(inner, conn, node);
        Ok(node)
    }

    /// Sends `payload` to `node` on `channel` over its cached connection,
    /// as one QUIC stream. Fails with [`TransportError::NotConnected`] when
    /// there is none (call [`Endpoint::connect`] first), and with
    /// [`TransportError::FrameTooLarge`] over [`Config::max_frame_len`].
    pub async fn send(
        &self,
        node: &NodeId,
        channel: u8,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let max = self.inner.config.max_frame_len;
        if payload.len() > max {
            return Err(TransportError::FrameTooLarge {
                len: payload.len(),
                max,
            });
        }
        let conn = self
            .inner
            .cached(node)
            .ok_or_else(|| TransportError::NotConnected(Box::new(*node)))?;
        let write = async {
            let mut stream = conn.open_uni().await?;
            stream.write_all(&[channel]).await?;
            stream.write_all(payload).await?;
            let _ = stream.finish();
            Ok::<_, quinn::WriteError>(())
        };
        match write.await {
            Ok(()) => {
                self.inner
                    .metrics
                    .messages_sent
                    .fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.inner.forget(&conn);
                Err(TransportError::Send {
                    node: Box::new(*node),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Opens a request stream to `node` on `channel` over its cached
    /// connection (call [`Endpoint::connect`] first): both halves stream
    /// bytes until finished, with QUIC flow control, so neither side holds a
    /// whole body. The peer gets it through [`Endpoint::accept_streams`].
    pub async fn open_stream(
        &self,
        node: &NodeId,
        channel: u8,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        self.open_stream_with(node, channel, Bytes::new()).await
    }

    /// [`Endpoint::open_stream`], sending `first` right after the channel
    /// byte in the same write (a request head, say), so they leave together.
    pub async fn open_stream_with(
        &self,
        node: &NodeId,
        channel: u8,
        first: Bytes,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), TransportError> {
        let conn = self
            .inner
            .cached(node)
            .ok_or_else(|| TransportError::NotConnected(Box::new(*node)))?;
        let open = async {
            let (mut send, recv) = conn.open_bi().await?;
            let mut chunks = [Bytes::copy_from_slice(&[channel]), first];
            send.write_all_chunks(&mut chunks).await?;
            Ok::<_, quinn::WriteError>((send, recv))
        };
        match open.await {
            Ok(pair) => {
                self.inner
                    .metrics
                    .streams_opened
                    .fetch_add(1, Ordering::Relaxed);
                Ok(pair)
            }
            Err(e) => {
                if conn.close_reason().is_some() {
                    self.inner.forget(&conn);
                }
                Err(TransportError::Send {
                    node: Box::new(*node),
                    reason: e.to_string(),
                })
            }
        }
    }

    /// Request streams that admitted peers open on `channel`, queued up to
    /// `capacity`; a stream arriving while the queue is full, or on a channel
    /// nobody accepts, is refused ([`STREAM_REFUSED`]). A second call for a
    /// channel replaces the first.
    pub fn accept_streams(&self, channel: u8, capacity: usize) -> mpsc::Receiver<IncomingStream> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.inner
            .stream_handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel, StreamHandler::Queue(tx));
        rx
    }

    /// Serves the request streams admitted peers open on `channel` with
    /// `service`, each on the task that accepted it (no queue in between:
    /// the fast path for request/response protocols). At most
    /// [`Config::max_request_streams`] run at once per connection. Replaces
    /// an earlier handler of the channel.
    pub fn serve_streams(&self, channel: u8, service: StreamService) {
        self.inner
            .stream_handlers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(channel, StreamHandler::Serve(service));
    }

    /// The next message from any admitted peer. `None` once the endpoint is
    /// gone.
    pub async fn recv(&self) -> Option<Message> {
        self.inner.incoming_rx.lock().await.recv().await
    }

    /// Closes every connection with `node` (for example because it was
    /// revoked); returns how many were open.
    pub fn close_peer(&self, node: &NodeId) -> usize {
        self.inner
            .close_everywhere(node, close_code::CLOSED, b"closed")
    }

    /// Adds a verified revocation to the shared set and, when the node was
    /// not revoked before, closes its connections. Returns whether it was new.
    pub fn revoke(&self, revocation: VerifiedRevocation) -> bool {
        let node = *revocation.revocation().node();
        let new = self
            .inner
            .admission
            .revocations
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(revocation);
        self.close_peer(&node);
        new
    }

    /// Whether a live connection to `node` is cached.
    pub fn is_connected(&self, node: &NodeId) -> bool {
        self.inner.cached_peek(node)
    }

    /// The peers with a cached connection.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let cache = self.inner.lock_cache();
        cache.primary.keys().copied().collect()
    }

    /// Closes every connection and stops accepting; the node's endpoint
    /// closes its siblings too.
    pub fn close(&self) {
        let all = if self.inner.parent.is_some() {
            vec![self.inner.clone()]
        } else {
            self.inner.family()
        };
        for endpoint in all {
            endpoint
                .quinn
                .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        }
    }

    /// Closes the connections with `node` on this endpoint alone (not its
    /// siblings), so the next use dials again; returns how many were open.
    pub fn close_connections_here(&self, node: &NodeId) -> usize {
        self.inner.close_peer(node, close_code::CLOSED, b"closed")
    }

    /// The cached connection to `node` (tests write raw streams on it).
    #[cfg(test)]
    pub(crate) fn connection(&self, node: &NodeId) -> Option<Connection> {
        self.inner.cached(node)
    }
}

impl Inner {
    /// The node's endpoint and its live siblings.
    fn family(self: &Arc<Self>) -> Vec<Arc<Inner>> {
        let root = self
            .parent
            .as_ref()
            .and_then(Weak::upgrade)
            .unwrap_or_else(|| self.clone());
        let mut all: Vec<Arc<Inner>> = root
            .siblings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        all.push(root);
        all
    }

    /// Closes every connection with `node` on the node's endpoint and all
    /// its siblings; returns how many were open.
    fn close_everywhere(self: &Arc<Self>, node: &NodeId, code: u32, reason: &[u8]) -> usize {
        self.family()
            .iter()
            .map(|e| e.close_peer(node, code, reason))
            .sum()
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_dials(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Dial>> {
        self.dials.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live cached connection to `node`, marked as just used.
    fn cached(&self, node: &NodeId) -> Option<Connection> {
        let mut cache = self.lock_cache();
        cache.clock += 1;
        let now = cache.clock;
        let (conn, used) = cache.primary.get_mut(node)?;
        if conn.close_reason().is_some() {
            cache.primary.remove(node);
            return None;
        }
        *used = now;
        Some(conn.clone())
    }

    /// Whether `node` is revoked.
    fn is_revoked(&self, node: &NodeId) -> bool {
        self.admission
            .revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_revoked(node)
    }

    fn cached_peek(&self, node: &NodeId) -> bool {
        let cache = self.lock_cache();
        cache
            .primary
            .get(node)
            .is_some_and(|(c, _)| c.close_reason().is_none())
    }

    /// Drops `conn` from the cache (it closed).
    fn forget(&self, conn: &Connection) {
        let id = conn.stable_id();
        let mut cache = self.lock_cache();
        let Some(Live { node, .. }) = cache.all.remove(&id) else {
            return;
        };
        if let Some(relay) = &self.relay {
            // Connections that went through this peer as their relay lost their path.
            let through = relay.peer_down(conn.remote_address(), node);
            if !through.is_empty() {
                for live in cache.all.values() {
                    if through.contains(&live.conn.remote_address()) {
                        live.conn
                            .close(VarInt::from_u32(close_code::RELAY_GONE), b"relay gone");
                    }
                }
            }
        }
        if cache
            .primary
            .get(&node)
            .is_some_and(|(c, _)| c.stable_id() == id)
        {
            cache.primary.remove(&node);
            // Promote the newest other live connection with the node, if any.
            if let Some(other) = cache.newest(&node) {
                let now = cache.clock;
                cache.primary.insert(node, (other, now));
            }
        }
    }

    fn close_peer(&self, node: &NodeId, code: u32, reason: &[u8]) -> usize {
        let conns: Vec<Connection> = {
            let mut cache = self.lock_cache();
            cache.primary.remove(node);
            let ids: Vec<usize> = cache
                .all
                .iter()
                .filter(|(_, l)| l.node == *node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| cache.all.remove(&id).map(|l| l.conn))
                .collect()
        };
        for conn in &conns {
            conn.close(VarInt::from_u32(code), reason);
        }
        if matches!(code, close_code::CLOSED | close_code::DISPLACED) && !conns.is_empty() {
            self.metrics
                .connections_closed
                .fetch_add(conns.len() as u64, Ordering::Relaxed);
        }
        conns.len()
    }
}

/// The node id proven by `conn`'s handshake.
fn identify(conn: &Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    peer_node_id(certs.first()?)
}

fn read_reason(conn: &Connection, error: quinn::ReadToEndError) -> String {
    match conn.close_reason() {
        Some(reason) => reason.to_string(),
        None => error.to_string(),
    }
}

/// Adds an admitted connection to the cache as the node's primary one (the
/// newest admitted connection is the one used: after the node restarted, the
/// old one is dead), closes the node's oldest connections past
/// [`MAX_CONNECTIONS_PER_NODE`], evicts the least recently used peer when the
/// cache is full, and starts reading the connection's messages.
fn register(inner: &Arc<Inner>, conn: Connection, node: NodeId) {
    let mut evicted = Vec::new();
    let mut superseded = Vec::new();
    {
        let mut cache = inner.lock_cache();
        cache.clock += 1;
        let now = cache.clock;
        // The node's other connections, oldest first; closed ones are dropped.
        let mut mine: Vec<(u64, usize, bool)> = cache
            .all
            .iter()
            .filter(|(_, l)| l.node == node)
            .map(|(id, l)| (l.registered, *id, l.conn.close_reason().is_none()))
            .collect();
        mine.sort_unstable();
        let mut live = mine.iter().filter(|(_, _, open)| *open).count();
        for (_, id, open) in mine {
            if open && live < MAX_CONNECTIONS_PER_NODE {
                continue;
            }
            if let Some(old) = cache.all.remove(&id)
                && open
            {
                live -= 1;
                superseded.push(old.conn);
            }
        }
        cache.all.insert(
            conn.stable_id(),
            Live {
                node,
                conn: conn.clone(),
                registered: now,
            },
        );
        if let Some(relay) = &inner.relay {
            relay.peer_up(conn.remote_address(), node);
        }
        cache.primary.insert(node, (conn.clone(), now));
        while cache.primary.len() > inner.config.max_connections.max(1) {
            let Some(victim) = cache
                .primary
                .iter()
                .filter(|(n, _)| **n != node)
                .min_by_key(|(_, (_, used))| *used)
                .map(|(n, _)| *n)
            else {
                break;
            };
            cache.primary.remove(&victim);
            evicted.push(victim);
        }
    }
    for old in superseded {
        tracing::debug!(peer = %node, "a newer connection with the node replaces its oldest one");
        old.close(
            VarInt::from_u32(close_code::TOO_MANY),
            b"superseded by a newer connection",
        );
    }
    for victim in evicted {
        tracing::debug!(peer = %victim, "connection cache full; evicting the least recently used peer");
        inner.close_peer(&victim, close_code::EVICTED, b"evicted");
        inner
            .metrics
            .connections_evicted
            .fetch_add(1, Ordering::Relaxed);
    }
    tokio::spawn(read_loop(Arc::downgrade(inner), conn, node));
}

async fn accept_loop(quinn: quinn::Endpoint, inner: Weak<Inner>) {
    while let Some(incoming) = quinn.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let Some(timeout) = inner.upgrade().map(|i| i.config.connect_timeout) else {
                return;
            };
            let remote = incoming.remote_address();
            match tokio::time::timeout(timeout, accept_one(incoming, inner)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "incoming connection failed"),
                Err(_) => tracing::debug!(%remote, "incoming connection timed out"),
            }
        });
    }
}

/// Completes an incoming handshake (the client verifier admits or refuses
/// the dialer), answers its hello and registers the connection.
async fn accept_one(incoming: quinn::Incoming, inner: Weak<Inner>) -> Result<(), TransportError> {
    let conn = incoming.await.map_err(TransportError::Connection)?;
    let node = identify(&conn)
        .ok_or_else(|| TransportError::Quic("peer identity missing after the handshake".into()))?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(TransportError::Connection)?;
    let hello = recv
        .read_to_end(HELLO.len())
        .await
        .map_err(|e| TransportError::Quic(format!("hello: {e}")))?;
    if hello != HELLO {
        conn.close(VarInt::from_u32(close_code::PROTOCOL), b"bad hello");
        return Err(TransportError::Quic("bad hello".into()));
    }
    let Some(inner) = inner.upgrade() else {
        return Ok(());
    };
    inner
        .metrics
        .connections_accepted
        .fetch_add(1, Ordering::Relaxed);
    register(&inner, conn, node);
    send.write_all(HELLO_ACK)
        .await
        .map_err(|e| TransportError::Quic(format!("hello ack: {e}")))?;
    let _ = send.finish();
    Ok(())
}

/// Reads every message stream and request stream of one admitted
/// connection until it closes.
async fn read_loop(inner: Weak<Inner>, conn: Connection, node: NodeId) {
    loop {
        tokio::select! {
            stream = conn.accept_uni() => {
                let Ok(stream) = stream else { break };
                let Some(max) = inner.upgrade().map(|i| i.config.max_frame_len) else {
                    break;
                };
                tokio::spawn(read_message(inner.clone(), max, conn.clone(), node, stream));
            }
            stream = conn.accept_bi() => {
                let Ok((send, recv)) = stream else { break };
                tokio::spawn(route_stream(inner.clone(), node, send, recv));
            }
        }
    }
    if let Some(inner) = inner.upgrade() {
        inner.forget(&conn);
    }
}

/// Reads the channel byte of a peer's request stream and hands the stream to
/// that channel's handler, or refuses it.
async fn route_stream(
    inner: Weak<Inner>,
    node: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut channel = [0u8; 1];
    let named = tokio::time::timeout(STREAM_CHANNEL_TIMEOUT, recv.read_exact(&mut channel)).await;
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let refuse = |send: &mut quinn::SendStream, recv: &mut quinn::RecvStream| {
        inner
            .metrics
            .streams_refused
            .fetch_add(1, Ordering::Relaxed);
        let _ = send.reset(VarInt::from_u32(STREAM_REFUSED));
        let _ = recv.stop(VarInt::from_u32(STREAM_REFUSED));
    };
    if !matches!(named, Ok(Ok(()))) {
        refuse(&mut send, &mut recv);
        return;
    }
    let revoked = inner.is_revoked(&node);
    if revoked {
        refuse(&mut send, &mut recv);
        inner.close_peer(&node, close_code::CLOSED, b"revoked");
        return;
    }
    let handler = inner
        .stream_handlers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&channel[0])
        .cloned();
    let Some(handler) = handler else {
        tracing::debug!(peer = %node, channel = channel[0], "request stream on a channel nobody serves; refused");
        refuse(&mut send, &mut recv);
        return;
    };
    let stream = IncomingStream {
        from: node,
        channel: channel[0],
        send,
        recv,
    };
    match handler {
        StreamHandler::Queue(queue) => match queue.try_send(stream) {
            Ok(()) => {
                inner
                    .metrics
                    .streams_accepted
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let mut stream = e.into_inner();
                tracing::debug!(peer = %node, channel = channel[0], "request stream queue full or closed; refused");
                refuse(&mut stream.send, &mut stream.recv);
            }
        },
        StreamHandler::Serve(service) => {
            inner
                .metrics
                .streams_accepted
                .fetch_add(1, Ordering::Relaxed);
            drop(inner);
            service(stream).await;
        }
    }
}

async fn read_message(
    inner: Weak<Inner>,
    max: usize,
    conn: Connection,
    node: NodeId,
    mut stream: quinn::RecvStream,
) {
    let read = stream.read_to_end(max.saturating_add(1)).await;
    let Some(inner) = inner.upgrade() else {
        return;
    };
    let frame = match read {
        Ok(frame) => frame,
        Err(quinn::ReadToEndError::TooLong) => {
            inner
                .metrics
                .frames_too_large
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer = %node, max, "peer sent a frame over the size bound; closing its connection");
            conn.close(
                VarInt::from_u32(close_code::FRAME_TOO_LARGE),
                b"frame too large",
            );
            inner.forget(&conn);
            return;
        }
        Err(e) => {
            tracing::debug!(peer = %node, error = %e, "message stream failed");
            return;
        }
    };
    if frame.is_empty() {
        tracing::warn!(peer = %node, "peer sent an empty frame; closing its connection");
        conn.close(VarInt::from_u32(close_code::PROTOCOL), b"empty frame");
        inner.forget(&conn);
        return;
    }
    let revoked = inner.is_revoked(&node);
    if revoked {
        tracing::warn!(peer = %node, "message from a revoked node dropped; closing its connections");
        inner.close_peer(&node, close_code::CLOSED, b"revoked");
        return;
    }
    if inner.parent.is_some() {
        // Siblings carry request streams only; nobody reads their messages.
        return;
    }
    let channel = frame[0];
    let payload = Bytes::from(frame).slice(1..);
    inner
        .metrics
        .messages_received
        .fetch_add(1, Ordering::Relaxed);
    let tx = inner.incoming_tx.clone();
    drop(inner);
    let _ = tx
        .send(Message {
            from: node,
            channel,
            payload,
        })
        .await;
}
