//! What the endpoint's API and its peers share: tunables, close codes, the hello, messages and
//! request streams.

use std::sync::Arc;
use std::time::Duration;

use aether_identity::NodeId;
use bytes::Bytes;
use tokio::sync::mpsc;

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
    /// A reachability probe ([`crate::Endpoint::probe`]) done: the handshake was all it wanted.
    pub const PROBED: u32 = 7;
    /// The relay a connection went through is gone.
    pub const RELAY_GONE: u32 = 8;
}

/// What the dialer sends on its first bidirectional stream; the acceptor
/// answers [`HELLO_ACK`] once it has admitted the dialer. The dialer's
/// `connect` returns only after the answer, so a dialer the acceptor
/// refused sees the refusal as a `connect` error.
pub(crate) const HELLO: &[u8] = b"aether-transport/1";
pub(crate) const HELLO_ACK: &[u8] = b"aether-transport/1 ok";

/// Live connections one node may have with another (the newest, which is
/// used, plus one made concurrently by the other side). A newer connection
/// past the bound closes the oldest.
pub(crate) const MAX_CONNECTIONS_PER_NODE: usize = 2;

/// Tunables of an [`crate::Endpoint`].
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
    /// Messages queued for [`crate::Endpoint::recv`] before readers wait. Default 1024.
    pub incoming_queue: usize,
    /// Concurrent incoming message streams per connection. Default 128.
    pub max_concurrent_streams: u32,
    /// Concurrent request streams ([`crate::Endpoint::open_stream`]) a peer may
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

/// A function that serves one request stream; see [`crate::Endpoint::serve_streams`].
pub type StreamService = Arc<
    dyn Fn(IncomingStream) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

/// What a channel's request streams are handed to.
#[derive(Clone)]
pub(crate) enum StreamHandler {
    /// Queued for a reader.
    Queue(mpsc::Sender<IncomingStream>),
    /// Served at once, each on the task that accepted it.
    Serve(StreamService),
}

/// How long a peer has to name the channel of a stream it opened.
pub(crate) const STREAM_CHANNEL_TIMEOUT: Duration = Duration::from_secs(10);

/// Application error code on streams refused by the receiver.
pub const STREAM_REFUSED: u32 = 1;
