//! The admitted connections of one endpoint: the cache (the newest connection per peer wins),
//! accepting and registering connections, and reading what peers send on them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use aether_identity::NodeId;
use bytes::Bytes;
use quinn::{Connection, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::{OnceCell, mpsc};

use crate::protocol::{
    Config, HELLO, HELLO_ACK, IncomingStream, MAX_CONNECTIONS_PER_NODE, Message,
    STREAM_CHANNEL_TIMEOUT, STREAM_REFUSED, StreamHandler, close_code,
};
use crate::relay::RelayTable;
use crate::verify::{PeerVerifier, peer_node_id};
use crate::{Admission, NodeIdentity, TransportError, TransportMetrics};

/// The state of one endpoint, shared by its handle ([`crate::Endpoint`]) and the tasks that
/// accept and read its connections.
pub(crate) struct Inner {
    pub(crate) node: NodeId,
    pub(crate) quinn: quinn::Endpoint,
    pub(crate) verifier: Arc<PeerVerifier>,
    pub(crate) identity: NodeIdentity,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
    pub(crate) transport: Arc<quinn::TransportConfig>,
    pub(crate) config: Config,
    pub(crate) admission: Admission,
    pub(crate) metrics: Arc<TransportMetrics>,
    pub(crate) cache: Mutex<Cache>,
    /// Dials in progress to expected nodes; concurrent `connect`s to one
    /// node join the same dial.
    pub(crate) dials: Mutex<HashMap<NodeId, Dial>>,
    pub(crate) incoming_tx: mpsc::Sender<Message>,
    pub(crate) incoming_rx: tokio::sync::Mutex<mpsc::Receiver<Message>>,
    /// Where each channel's incoming request streams go.
    pub(crate) stream_handlers: Mutex<HashMap<u8, StreamHandler>>,
    /// Other endpoints of this node ([`crate::Endpoint::bind_sibling`]).
    pub(crate) siblings: Mutex<Vec<Weak<Inner>>>,
    /// For a sibling: the node's endpoint it was bound from.
    pub(crate) parent: Option<Weak<Inner>>,
    /// The node's endpoint's relaying (none on siblings).
    pub(crate) relay: Option<Arc<RelayTable>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.quinn
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
    }
}

/// One dial shared by concurrent `connect`s: its outcome, set once.
pub(crate) type Dial = Arc<OnceCell<Result<NodeId, TransportError>>>;

#[derive(Default)]
pub(crate) struct Cache {
    /// Logical clock: orders uses (for eviction) and registrations.
    pub(crate) clock: u64,
    /// The connection used to reach each peer (its newest admitted one),
    /// with its last use.
    pub(crate) primary: HashMap<NodeId, (Connection, u64)>,
    /// Every live admitted connection, by `stable_id`.
    pub(crate) all: HashMap<usize, Live>,
}

/// An admitted connection in the cache.
pub(crate) struct Live {
    pub(crate) node: NodeId,
    pub(crate) conn: Connection,
    /// The clock when it was registered (larger is newer).
    pub(crate) registered: u64,
}

impl Cache {
    /// The newest live connection with `node`, if any.
    pub(crate) fn newest(&self, node: &NodeId) -> Option<Connection> {
        self.all
            .values()
            .filter(|l| l.node == *node && l.conn.close_reason().is_none())
            .max_by_key(|l| l.registered)
            .map(|l| l.conn.clone())
    }
}

impl Inner {
    /// The node's endpoint and its live siblings.
    pub(crate) fn family(self: &Arc<Self>) -> Vec<Arc<Inner>> {
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
    pub(crate) fn close_everywhere(
        self: &Arc<Self>,
        node: &NodeId,
        code: u32,
        reason: &[u8],
    ) -> usize {
        self.family()
            .iter()
            .map(|e| e.close_peer(node, code, reason))
            .sum()
    }

    pub(crate) fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn lock_dials(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Dial>> {
        self.dials.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The live cached connection to `node`, marked as just used.
    pub(crate) fn cached(&self, node: &NodeId) -> Option<Connection> {
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
    pub(crate) fn is_revoked(&self, node: &NodeId) -> bool {
        self.admission
            .revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_revoked(node)
    }

    pub(crate) fn cached_peek(&self, node: &NodeId) -> bool {
        let cache = self.lock_cache();
        cache
            .primary
            .get(node)
            .is_some_and(|(c, _)| c.close_reason().is_none())
    }

    /// Drops `conn` from the cache (it closed).
    pub(crate) fn forget(&self, conn: &Connection) {
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

    pub(crate) fn close_peer(&self, node: &NodeId, code: u32, reason: &[u8]) -> usize {
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
pub(crate) fn identify(conn: &Connection) -> Option<NodeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    peer_node_id(certs.first()?)
}

pub(crate) fn read_reason(conn: &Connection, error: quinn::ReadToEndError) -> String {
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
pub(crate) fn register(inner: &Arc<Inner>, conn: Connection, node: NodeId) {
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

pub(crate) async fn accept_loop(quinn: quinn::Endpoint, inner: Weak<Inner>) {
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
