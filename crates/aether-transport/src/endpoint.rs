//! The endpoint: one UDP socket, the admitted connections, framed messages. This file is the
//! API; `connections` keeps and reads the connections, `protocol` holds what both share.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aether_identity::{AdmissionLedger, NodeId, VerifiedRevocation};
use bytes::Bytes;
use quinn::VarInt;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::sign::SingleCertAndKey;
use tokio::sync::mpsc;

use crate::connections::{Cache, Dial, Inner, accept_loop, identify, read_reason, register};
use crate::identity::TLS_SERVER_NAME;
use crate::protocol::{
    Config, HELLO, HELLO_ACK, IncomingStream, Message, StreamHandler, StreamService, close_code,
};
use crate::relay::{RelayMetrics, RelaySocket, RelayTable, is_virtual};
use crate::verify::{ClientVerifier, PeerVerifier, ServerVerifier};
use crate::{
    Admission, NodeIdentity, SharedLedger, SharedRevocations, TransportError, TransportMetrics,
};

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
        // No lock at all while nothing has gone through a relay (the forwarding path asks).
        if !self.inner.relay.as_ref()?.in_use() {
            return None;
        }
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
    /// nobody accepts, is refused ([`crate::STREAM_REFUSED`]). A second call for a
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
    pub(crate) fn connection(&self, node: &NodeId) -> Option<quinn::Connection> {
        self.inner.cached(node)
    }
}
