//! Requests for components this node does not host travel one hop over the
//! mesh to a host (DESIGN §3.5).
//!
//! A forwarded request is one QUIC request stream on mesh channel
//! [`CHANNEL_HTTP`]: the request head, then the request body as raw bytes
//! until the sender finishes its half; the host answers on the same stream
//! with the response head, then the response body until it finishes. Bodies
//! stream both ways under QUIC flow control, so neither node holds a whole
//! body. Heads are length-prefixed and bounded ([`wire::MAX_HEAD`]):
//!
//! ```text
//! request head:  u32 len | u8 version=1 | str method | str path-and-query | headers
//! response head: u32 len | u8 version=1 | u16 status | headers
//! str:           u16 len | bytes           headers: u16 count | (str name | str value)*
//! ```
//!
//! The host always serves a forwarded request itself (one hop at most).
//! Hop-by-hop headers are dropped on both legs and `X-Forwarded-For`,
//! `-Host` and `-Proto` are set. A host that cannot be reached, or that
//! fails before answering, is retried on the next host when that is safe:
//! before any of the request body left this node, or for an idempotent
//! method without a body. Each ingress thread forwards from its own QUIC
//! endpoint to one of the host's ingress threads, which serves the request
//! where it arrives ([`Forwarder::start_worker`]); the node's endpoint is
//! the fallback. A host whose instance slots are all taken answers
//! 503 marked [`OVERLOADED`] without running the component; a request
//! without a body then goes to the next host. Among hosts about as near,
//! the least loaded goes first ([`try_order`]).
//!
//! This file is the sending side; `serve` is the host's side, `wire` the head encoding and the
//! headers that never cross a hop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use aether_identity::NodeId;
use aether_runtime::{HttpError, OVERLOADED, ResponseBody, host_response};
use aether_transport::{Endpoint, RecvStream, SendStream};
use bytes::Bytes;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Body, Frame};
use prometheus_client::metrics::counter::Counter;

use crate::deployments::Deployments;
use crate::schedule::{Host, short};

mod order;
mod serve;
mod wire;

use order::{try_order, with_relay_detours};
pub(crate) use wire::COMPONENT_HEADER;
use wire::{
    decode_response_head, encode_request_head, pump, read_head, set_forwarded, strip_hop_by_hop,
};

/// Mesh channel of forwarded HTTP requests.
pub const CHANNEL_HTTP: u8 = 4;
/// Mesh channel on which a node says on which UDP ports of its mesh
/// address its ingress threads take forwarded requests (one per line).
pub const CHANNEL_DIRECT: u8 = 6;
/// How long a host without a direct path is not asked again.
const DIRECT_RETRY: Duration = Duration::from_secs(10);
/// Bytes read from a stream at once.
const CHUNK: usize = 64 * 1024;
/// Bound on dialing a host that has no connection yet.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on reading a forwarded request's head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the host waits for the start of a response body, so that a
/// small response leaves in one write with its head.
const COALESCE_WAIT: Duration = Duration::from_millis(2);
/// Most body bytes sent along with the head.
const COALESCE_MAX: usize = 64 * 1024;

/// Counters of the forwarding path.
#[derive(Default, Debug)]
pub(crate) struct ForwardMetrics {
    /// Requests sent to a host.
    pub forwarded: Counter,
    /// Of those, requests sent from the ingress thread's own endpoint.
    pub direct: Counter,
    /// Attempts retried on another host.
    pub retried: Counter,
    /// Requests no host answered (502).
    pub failed: Counter,
    /// Requests served for peers.
    pub served: Counter,
    /// Requests no host answered that this node served itself.
    pub served_here: Counter,
    /// Requests no host answered that this node refused (503): it does not meet the intent.
    pub refused_here: prometheus_client::metrics::family::Family<RefusedLabels, Counter>,
}

/// Labels of a request refused for an unmet constraint: the component, and which constraint
/// (`region`, `label`, `arch`, `memory`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub(crate) struct RefusedLabels {
    pub component: String,
    pub constraint: String,
}

impl ForwardMetrics {
    /// Adds the counters to `registry`.
    pub(crate) fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "aether_forward_requests",
            "Requests forwarded to a host over the mesh",
            self.forwarded.clone(),
        );
        registry.register(
            "aether_forward_direct_requests",
            "Forwarded requests sent from the ingress thread's own endpoint to a host's ingress thread",
            self.direct.clone(),
        );
        registry.register(
            "aether_forward_retries",
            "Forwarding attempts retried on another host",
            self.retried.clone(),
        );
        registry.register(
            "aether_forward_failures",
            "Forwarded requests no host answered (502)",
            self.failed.clone(),
        );
        registry.register(
            "aether_forward_served_for_peers",
            "Requests other nodes forwarded that this node served",
            self.served.clone(),
        );
        registry.register(
            "aether_forward_served_locally",
            "Requests no host answered that this node served itself",
            self.served_here.clone(),
        );
        registry.register(
            "aether_forward_refused_constraint",
            "Requests no host answered that this node refused (503) instead of serving, since it does not meet the component's intent",
            self.refused_here.clone(),
        );
    }
}

/// A request no host answered, handed back untouched (none of its body left this node, or it
/// may safely go again): the caller serves it itself or refuses it.
pub(crate) struct Unanswered<B> {
    /// The request as it came.
    pub(crate) request: Request<B>,
    /// The hosts tried, in order (short ids).
    pub(crate) tried: Vec<String>,
    /// Why the last one did not answer.
    pub(crate) last_error: String,
}

/// The forwarding side of one node.
pub(crate) struct Forwarder {
    endpoint: Endpoint,
    /// The node's main runtime: dials run there, where the transport lives.
    runtime: tokio::runtime::Handle,
    pub(crate) metrics: ForwardMetrics,
    /// Requests this node has forwarded to each host and not yet seen end.
    in_flight: Arc<InFlight>,
    /// Turns between equally loaded hosts.
    turn: AtomicUsize,
    /// The deployments, once [`Forwarder::serve`] runs.
    deployments: OnceLock<Arc<Deployments>>,
    /// The UDP ports where this node's ingress threads take forwarded
    /// requests directly.
    direct_ports: std::sync::Mutex<Vec<u16>>,
}

/// An ingress thread's own endpoint and its direct dials: state of that
/// thread alone, so the request path shares no lock for it.
struct Worker {
    index: usize,
    endpoint: Endpoint,
    /// The last direct dial to each host.
    dials: HashMap<NodeId, DirectDial>,
}

/// The last direct dial from one ingress thread to one host.
struct DirectDial {
    started: Instant,
    running: bool,
    incarnation: u32,
}

thread_local! {
    /// This ingress thread's own endpoint, when it has one.
    static WORKER: std::cell::RefCell<Option<Worker>> = const { std::cell::RefCell::new(None) };
}

/// Requests in flight from this node, per host.
#[derive(Default)]
struct InFlight(std::sync::Mutex<HashMap<NodeId, usize>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, id: &NodeId) -> usize {
        self.lock().get(id).copied().unwrap_or(0)
    }

    /// Counts one more request to `id` until the returned guard drops.
    fn start(self: &Arc<Self>, id: NodeId) -> InFlightGuard {
        *self.lock().entry(id).or_insert(0) += 1;
        InFlightGuard {
            counts: self.clone(),
            id,
        }
    }
}

/// One request in flight; dropped when its response ends or fails.
struct InFlightGuard {
    counts: Arc<InFlight>,
    id: NodeId,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.id);
            }
        }
    }
}

/// A body streamed from a peer.
type PeerBody = StreamBody<
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Frame<Bytes>, HttpError>> + Send>>,
>;

/// The rest of `recv` as a body, streamed chunk by chunk; `in_flight`, if
/// any, is held until the body ends.
fn stream_body(recv: RecvStream, in_flight: Option<InFlightGuard>) -> PeerBody {
    let stream = futures::stream::unfold(Some((recv, in_flight)), |state| async move {
        let (mut recv, in_flight) = state?;
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => Some((Ok(Frame::data(chunk.bytes)), Some((recv, in_flight)))),
            Ok(None) => None,
            Err(e) => {
                tracing::debug!("forwarded body ended early: {e}");
                Some((Err(HttpError::ConnectionTerminated), None))
            }
        }
    });
    StreamBody::new(Box::pin(stream))
}

/// Asks node `id`, over the node's endpoint (run by `runtime`), on which
/// UDP ports of its mesh address its ingress threads take forwarded
/// requests.
async fn ask_direct(
    endpoint: Endpoint,
    runtime: &tokio::runtime::Handle,
    id: NodeId,
) -> Result<Vec<u16>, String> {
    let ask = async move {
        let (mut send, mut recv) = endpoint
            .open_stream(&id, CHANNEL_DIRECT)
            .await
            .map_err(|e| e.to_string())?;
        let _ = send.finish();
        let reply = recv.read_to_end(4096).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(
            String::from_utf8_lossy(&reply)
                .lines()
                .filter_map(|l| l.parse().ok())
                .collect(),
        )
    };
    let bounded = async move {
        tokio::time::timeout(DIAL_TIMEOUT, ask)
            .await
            .unwrap_or_else(|_| Err("the host did not say where to connect".into()))
    };
    match runtime.spawn(bounded).await {
        Ok(reply) => reply,
        Err(e) => Err(e.to_string()),
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

impl Forwarder {
    pub(crate) fn new(endpoint: Endpoint, runtime: tokio::runtime::Handle) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            runtime,
            metrics: ForwardMetrics::default(),
            in_flight: Arc::default(),
            turn: AtomicUsize::new(0),
            deployments: OnceLock::new(),
            direct_ports: std::sync::Mutex::new(Vec::new()),
        })
    }

    /// The ports of the ingress threads' own endpoints bound so far.
    pub(crate) fn direct_ports(&self) -> Vec<u16> {
        self.direct_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Gives ingress thread `index` its own QUIC endpoint (a sibling of the
    /// node's, on an ephemeral port of the same address), run by the
    /// calling thread's runtime. Requests this thread forwards leave from
    /// it, and requests peers forward to it run here, where they arrive,
    /// as a local request does: no thread wakes another on the way. Peers
    /// learn the address on [`CHANNEL_DIRECT`].
    pub(crate) fn start_worker(self: &Arc<Self>, index: usize) {
        let Ok(main) = self.endpoint.local_addr() else {
            return;
        };
        let sibling = match self.endpoint.bind_sibling(SocketAddr::new(main.ip(), 0)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("ingress thread {index} forwards through the node's endpoint: {e}");
                return;
            }
        };
        if let Ok(addr) = sibling.local_addr() {
            self.direct_ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(addr.port());
        }
        let this = self.clone();
        sibling.serve_streams(
            CHANNEL_HTTP,
            Arc::new(move |stream| {
                let this = this.clone();
                Box::pin(async move {
                    if let Some(deployments) = this.deployments.get().cloned() {
                        this.serve_one(stream, &deployments).await;
                    }
                })
            }),
        );
        WORKER.with(|w| {
            *w.borrow_mut() = Some(Worker {
                index,
                endpoint: sibling,
                dials: HashMap::new(),
            });
        });
    }

    /// Closes this ingress thread's own endpoint, while its runtime still
    /// runs to tell the peers.
    pub(crate) async fn stop_worker(&self) {
        if let Some(worker) = WORKER.with(|w| w.borrow_mut().take()) {
            worker.endpoint.close();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// This ingress thread's own endpoint, when its connection to one of
    /// `host`'s ingress threads is up. When it is not, starts dialing it in
    /// the background (the host is asked where its threads listen, over
    /// the node's endpoint) and gives `None`: this request takes the node's
    /// endpoint, later ones the direct path. A failed dial is retried after
    /// [`DIRECT_RETRY`], and a connection dialed before the host restarted
    /// is dialed again.
    fn direct_endpoint(&self, worker: &mut Worker, host: &Host) -> Option<Endpoint> {
        let local = &worker.endpoint;
        let dial = worker.dials.get(&host.id);
        let current = dial.is_some_and(|d| d.incarnation == host.incarnation);
        if local.is_connected(&host.id) {
            if current {
                return Some(local.clone());
            }
            // Its ingress threads listen on new ports now.
            local.close_connections_here(&host.id);
        }
        let waiting =
            current && dial.is_some_and(|d| d.running || d.started.elapsed() < DIRECT_RETRY);
        if waiting || !self.endpoint.is_connected(&host.id) {
            return None;
        }
        worker
            .dials
            .retain(|_, d| d.running || d.started.elapsed() < DIRECT_RETRY * 60);
        worker.dials.insert(
            host.id,
            DirectDial {
                started: Instant::now(),
                running: true,
                incarnation: host.incarnation,
            },
        );
        let (node, runtime) = (self.endpoint.clone(), self.runtime.clone());
        let (index, local, host) = (worker.index, worker.endpoint.clone(), host.clone());
        // On this thread's runtime, like the endpoint it dials from.
        tokio::spawn(async move {
            let dialed = async {
                // Thread i dials the host's thread i only: a node keeps at
                // most two connections with a peer per endpoint, and more
                // threads sharing one host thread would close each other's.
                let ports = ask_direct(node, &runtime, host.id).await?;
                let port = ports
                    .get(index)
                    .copied()
                    .ok_or("the host has fewer ingress threads than this thread's index")?;
                let addr = SocketAddr::new(host.mesh_addr.ip(), port);
                tokio::time::timeout(DIAL_TIMEOUT, local.connect(addr, Some(host.id)))
                    .await
                    .map_err(|_| format!("dialing {addr} timed out"))?
                    .map_err(|e| e.to_string())?;
                Ok::<(), String>(())
            }
            .await;
            if let Err(e) = &dialed {
                tracing::debug!(host = %short(&host.id), "no direct path: {e}");
            }
            WORKER.with(|w| {
                if let Some(dial) = w
                    .borrow_mut()
                    .as_mut()
                    .and_then(|w| w.dials.get_mut(&host.id))
                {
                    dial.running = false;
                }
            });
        });
        None
    }

    /// A stream to `host` that starts with `head`, dialing the host first
    /// when no connection is cached.
    async fn open(&self, host: &Host, head: Bytes) -> Result<(SendStream, RecvStream), String> {
        let direct = WORKER.with(|w| {
            w.borrow_mut()
                .as_mut()
                .and_then(|worker| self.direct_endpoint(worker, host))
        });
        if let Some(local) = direct {
            match local
                .open_stream_with(&host.id, CHANNEL_HTTP, head.clone())
                .await
            {
                Ok(stream) => {
                    self.metrics.direct.inc();
                    return Ok(stream);
                }
                Err(e) => {
                    tracing::debug!(host = %short(&host.id), "through the node's endpoint: {e}");
                }
            }
        }
        if !self.endpoint.is_connected(&host.id) {
            let endpoint = self.endpoint.clone();
            let (addr, id) = (host.mesh_addr, host.id);
            let dial = self.runtime.spawn(async move {
                tokio::time::timeout(DIAL_TIMEOUT, endpoint.connect(addr, Some(id))).await
            });
            match dial.await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => return Err(e.to_string()),
                Ok(Err(_)) => return Err(format!("dialing {addr} timed out")),
                Err(e) => return Err(e.to_string()),
            }
        }
        self.endpoint
            .open_stream_with(&host.id, CHANNEL_HTTP, head)
            .await
            .map_err(|e| e.to_string())
    }

    /// Forwards `req` to the first of `hosts` that answers, in
    /// [`try_order`]. When none answered and the request can still be served
    /// once (its body never sent, or no body and no host that may have run
    /// it, unless it is idempotent), hands it back so the caller can serve
    /// it itself.
    pub(crate) async fn forward<B>(
        &self,
        req: Request<B>,
        hosts: &[Host],
        client: Option<SocketAddr>,
    ) -> Result<Response<ResponseBody>, Box<Unanswered<B>>>
    where
        B: Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: std::fmt::Display + Send,
    {
        let (parts, body) = req.into_parts();
        let mut headers = parts.headers.clone();
        strip_hop_by_hop(&mut headers);
        set_forwarded(&mut headers, client, parts.uri.host());
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let Some(head) = encode_request_head(&parts.method, &path, &headers).map(Bytes::from)
        else {
            return Ok(host_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request headers too large to forward\n".into(),
            ));
        };
        let empty = body.is_end_stream();
        let retry_after_send = empty && is_idempotent(&parts.method);
        let mut body = Some(body);
        let mut last_error = String::from("no host");
        // A host got this bodiless request and failed without saying that
        // it did not run it.
        let mut may_have_run = false;
        let turn = self.turn.fetch_add(1, Ordering::Relaxed);
        let ranked = with_relay_detours(hosts, |id| self.endpoint.relay_of(id).is_some());
        let order = try_order(&ranked, |id| self.in_flight.count(id), turn);
        let tries = order.len();
        let mut tried = Vec::with_capacity(tries);
        for (attempt, host) in order.into_iter().map(|i| &ranked[i]).enumerate() {
            if attempt > 0 {
                self.metrics.retried.inc();
            }
            tried.push(short(&host.id));
            let in_flight = self.in_flight.start(host.id);
            let (mut send, mut recv) = match self.open(host, head.clone()).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(host = %short(&host.id), "cannot reach host: {e}");
                    last_error = e;
                    continue;
                }
            };
            self.metrics.forwarded.inc();
            if empty {
                let _ = send.finish();
            } else if let Some(body) = body.take() {
                tokio::spawn(async move {
                    if let Err(e) = pump(body, send).await {
                        tracing::debug!("forwarded request body: {e}");
                    }
                });
            }
            match read_head(&mut recv).await {
                Ok(bytes) => {
                    let Some((status, mut headers)) = decode_response_head(&bytes) else {
                        last_error = "host sent a malformed response head".into();
                        may_have_run = true;
                        break;
                    };
                    strip_hop_by_hop(&mut headers);
                    // Every instance slot of that host was taken and the
                    // component did not run: another replica may have room.
                    if headers.remove(OVERLOADED).is_some() && empty && attempt + 1 < tries {
                        tracing::debug!(host = %short(&host.id), "host at capacity; trying the next");
                        let _ = recv.stop(0u32.into());
                        last_error = "every host is at capacity".into();
                        continue;
                    }
                    if let Ok(v) = HeaderValue::from_str(&short(&host.id)) {
                        headers.insert("aether-forwarded-to", v);
                    }
                    let mut resp = Response::new(stream_body(recv, Some(in_flight)).boxed_unsync());
                    *resp.status_mut() = status;
                    *resp.headers_mut() = headers;
                    return Ok(resp);
                }
                Err(e) => {
                    tracing::debug!(host = %short(&host.id), "host failed before answering: {e}");
                    last_error = e;
                    if empty {
                        // The host may have run it: again only when that is harmless.
                        may_have_run = true;
                        if !retry_after_send {
                            break;
                        }
                    } else if body.is_none() {
                        // Its body has left; it cannot be sent again.
                        break;
                    }
                }
            }
        }
        if let Some(body) = body
            && !(may_have_run && !retry_after_send)
        {
            tracing::debug!("no host answered ({last_error})");
            return Err(Box::new(Unanswered {
                request: Request::from_parts(parts, body),
                tried,
                last_error,
            }));
        }
        self.metrics.failed.inc();
        Ok(host_response(
            StatusCode::BAD_GATEWAY,
            format!("no host of this component answered: {last_error}\n"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::wire::{decode_request_head, encode_response_head};
    use super::*;
    use http::{HeaderMap, header};

    fn id(n: u8) -> NodeId {
        aether_identity::SecretKey::from_bytes(&[n; 32]).public()
    }

    #[test]
    fn in_flight_counts_end_with_their_guards() {
        let counts = Arc::new(InFlight::default());
        let peer = id(7);
        let a = counts.start(peer);
        let b = counts.start(peer);
        assert_eq!(counts.count(&peer), 2);
        drop(a);
        assert_eq!(counts.count(&peer), 1);
        drop(b);
        assert_eq!(counts.count(&peer), 0);
        assert!(counts.lock().is_empty());
    }

    #[test]
    fn heads_round_trip_and_every_truncation_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        let framed = encode_request_head(&Method::POST, "/echo?x=1", &headers).expect("encodes");
        let head = &framed[4..];
        let (method, path, decoded) = decode_request_head(head).expect("decodes");
        assert_eq!((method, path.as_str()), (Method::POST, "/echo?x=1"));
        assert_eq!(decoded, headers);
        for cut in 0..head.len() {
            assert!(decode_request_head(&head[..cut]).is_none(), "cut at {cut}");
        }
        let framed = encode_response_head(StatusCode::CREATED, &headers).expect("encodes");
        let (status, decoded) = decode_response_head(&framed[4..]).expect("decodes");
        assert_eq!((status, decoded), (StatusCode::CREATED, headers));
        let mut trailing = framed[4..].to_vec();
        trailing.push(0);
        assert!(decode_response_head(&trailing).is_none(), "trailing byte");
    }

    #[test]
    fn garbage_heads_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..2000usize {
            let bytes: Vec<u8> = (0..len % 97)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed & 0xff) as u8
                })
                .collect();
            let _ = decode_request_head(&bytes);
            let _ = decode_response_head(&bytes);
        }
        assert!(
            decode_request_head(&[1, 0, 3, b'G', b'E', b'T', 0, 1, b'x', 0, 0]).is_none(),
            "a path must start with /"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_forwarded_headers_set() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::HOST, HeaderValue::from_static("app.example"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        headers.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut headers);
        set_forwarded(
            &mut headers,
            Some("127.0.0.9:5555".parse().expect("addr")),
            None,
        );
        assert!(headers.get(header::CONNECTION).is_none());
        assert!(headers.get("x-secret").is_none());
        assert!(headers.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(headers["x-kept"], "yes");
        assert_eq!(headers["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(headers["x-forwarded-host"], "app.example");
        assert_eq!(headers["x-forwarded-proto"], "http");
    }
}
