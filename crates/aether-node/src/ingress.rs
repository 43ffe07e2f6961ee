//! The HTTP ingress: worker threads that accept connections and route requests.
//!
//! One acceptor thread hands each new connection to the worker with the
//! fewest open connections. Each worker owns a single-threaded tokio runtime,
//! so a connection, its requests and the instances serving them stay on one
//! thread: no work stealing and no cross-thread wake-ups on the hot path.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use http::{Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{mpsc, watch};

use aether_runtime::{ResponseBody, host_response};

use crate::deployments::{Deployment, Deployments};
use crate::forward::Forwarder;
use crate::schedule::{RouteTo, Schedule};

/// What the ingress needs to route a request: the deployments, and in a
/// lattice the placement and the way to a host.
pub(crate) struct Routing {
    pub deployments: Arc<Deployments>,
    pub lattice: Option<(Arc<Schedule>, Arc<Forwarder>)>,
}

pub(crate) struct IngressThreads {
    threads: Vec<JoinHandle<()>>,
}

/// Open connections per worker, for least-loaded assignment.
type Load = Arc<[AtomicUsize]>;

impl IngressThreads {
    pub(crate) fn start(
        listener: std::net::TcpListener,
        workers: usize,
        routing: Arc<Routing>,
        shutdown: watch::Receiver<bool>,
        drain_timeout: Duration,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let workers = workers.max(1);
        let load: Load = (0..workers).map(|_| AtomicUsize::new(0)).collect();
        let mut threads = Vec::new();
        let mut queues = Vec::new();
        for i in 0..workers {
            let (tx, rx) = mpsc::unbounded_channel::<std::net::TcpStream>();
            queues.push(tx);
            let routing = routing.clone();
            let shutdown = shutdown.clone();
            let load = load.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aether-ingress-{i}"))
                    .spawn(move || {
                        rt.block_on(async {
                            if let Some((_, forwarder)) = &routing.lattice {
                                forwarder.start_worker(i);
                            }
                            let lattice = routing.lattice.clone();
                            worker(i, rx, load, routing, shutdown, drain_timeout).await;
                            if let Some((_, forwarder)) = lattice {
                                forwarder.stop_worker().await;
                            }
                        });
                    })?,
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        threads.push(
            std::thread::Builder::new()
                .name("aether-accept".into())
                .spawn(move || rt.block_on(acceptor(listener, queues, load, shutdown)))?,
        );
        Ok(Self { threads })
    }

    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Accepts connections and hands each to the worker with the fewest open
/// connections, so a burst of connections never piles onto one core.
async fn acceptor(
    listener: std::net::TcpListener,
    queues: Vec<mpsc::UnboundedSender<std::net::TcpStream>>,
    load: Load,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("ingress cannot use the listener: {e}");
            return;
        }
    };
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted.and_then(|(s, _)| s.into_std()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let target = (0..queues.len())
                    .min_by_key(|i| load[*i].load(Ordering::Relaxed))
                    .unwrap_or(0);
                load[target].fetch_add(1, Ordering::Relaxed);
                if queues[target].send(stream).is_err() {
                    load[target].fetch_sub(1, Ordering::Relaxed);
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

async fn worker(
    index: usize,
    mut incoming: mpsc::UnboundedReceiver<std::net::TcpStream>,
    load: Load,
    routing: Arc<Routing>,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
        tokio::select! {
            stream = incoming.recv() => {
                let Some(stream) = stream else { break };
                let stream = match tokio::net::TcpStream::from_std(stream) {
                    Ok(s) => s,
                    Err(e) => {
                        load[index].fetch_sub(1, Ordering::Relaxed);
                        tracing::debug!("cannot serve a connection: {e}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let client = stream.peer_addr().ok();
                let routing = routing.clone();
                let service = service_fn(move |req| {
                    let routing = routing.clone();
                    async move { Ok::<_, Infallible>(route(&routing, req, client).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                let load = load.clone();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::trace!("connection ended: {e}");
                    }
                    load[index].fetch_sub(1, Ordering::Relaxed);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "drain timeout of {} s reached; closing remaining connections",
            drain_timeout.as_secs()
        );
    }
}

async fn route(
    routing: &Routing,
    req: hyper::Request<Incoming>,
    client: Option<std::net::SocketAddr>,
) -> Response<ResponseBody> {
    let deployments = &routing.deployments;
    let deployment = {
        let host = req.uri().host().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        });
        deployments.route(host, req.uri().path())
    };
    let Some(deployment) = deployment else {
        return host_response(
            StatusCode::NOT_FOUND,
            format!("no component serves {}\n", req.uri().path()),
        );
    };
    let mut req = req;
    // Only a virtual-address listener may name the component a request is for.
    req.headers_mut().remove(&crate::forward::COMPONENT_HEADER);
    serve_deployment(routing, deployment, req, client).await
}

/// Serves a request for `deployment`: here when this node hosts it (or must, being its only
/// way), else on a host over the mesh.
pub(crate) async fn serve_deployment(
    routing: &Routing,
    deployment: Arc<Deployment>,
    req: hyper::Request<Incoming>,
    client: Option<std::net::SocketAddr>,
) -> Response<ResponseBody> {
    let mut req = req;
    if !deployment.is_hosted()
        && let Some((schedule, forwarder)) = &routing.lattice
    {
        let route = schedule
            .view()
            .route(deployment.component.name(), schedule.me());
        match route {
            RouteTo::Here => {
                // Not hosted and no host to try (scaled to zero with no member to wake):
                // served here only where the intent allows it.
                let name = deployment.component.name();
                if let Some(unmet) = schedule.view().unmet_here(name, schedule.me()) {
                    return refuse_unmet(forwarder, name, &unmet, &[], "no host is placed");
                }
            }
            RouteTo::Hosts(hosts) => match forwarder.forward(req, &hosts, client).await {
                Ok(resp) => return resp,
                Err(unanswered) => {
                    let name = deployment.component.name();
                    if let Some(unmet) = schedule.view().unmet_here(name, schedule.me()) {
                        return refuse_unmet(
                            forwarder,
                            name,
                            &unmet,
                            &unanswered.tried,
                            &unanswered.last_error,
                        );
                    }
                    forwarder.metrics.served_here.inc();
                    req = unanswered.request;
                }
            },
            RouteTo::Unplaced(why) => {
                return host_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} has no replica: no member satisfies its intent ({why})\n",
                        deployment.component.name()
                    ),
                );
            }
        }
    }
    // Hosted here but every instance slot is taken: a request without a
    // body goes to another replica when there is one (it serves what it is
    // forwarded, so this is still one hop).
    if deployment.is_hosted()
        && deployment.component.is_at_capacity()
        && hyper::body::Body::is_end_stream(req.body())
        && let Some((schedule, forwarder)) = &routing.lattice
        && let Some(others) = schedule
            .view()
            .other_hosts(deployment.component.name(), schedule.me())
    {
        match forwarder.forward(req, &others, client).await {
            Ok(resp) => return resp,
            Err(unanswered) => req = unanswered.request,
        }
    }
    req.headers_mut().remove(&crate::forward::COMPONENT_HEADER);
    let mut resp = deployment.serve(req).await;
    resp.headers_mut().remove(aether_runtime::OVERLOADED);
    resp
}

/// The answer when no host of `name` answered and this node does not meet its intent: 503,
/// naming the constraint and the hosts tried, counted by component and constraint.
fn refuse_unmet(
    forwarder: &Forwarder,
    name: &str,
    unmet: &aether_placement::Eligibility,
    tried: &[String],
    last_error: &str,
) -> Response<ResponseBody> {
    use aether_placement::Eligibility;
    let constraint = match unmet {
        Eligibility::Region { .. } => "region",
        Eligibility::Label { .. } => "label",
        Eligibility::Arch { .. } => "arch",
        _ => "memory",
    };
    forwarder
        .metrics
        .refused_here
        .get_or_create(&crate::forward::RefusedLabels {
            component: name.to_string(),
            constraint: constraint.to_string(),
        })
        .inc();
    tracing::debug!(component = name, %unmet, "no host answered; not served here");
    let mut resp = host_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "{name}: no host answered (tried {}: {}) and this node does not meet its intent ({unmet}), so it does not serve it in their place\n",
            if tried.is_empty() {
                "none".to_string()
            } else {
                tried.join(", ")
            },
            last_error,
        ),
    );
    if let Ok(v) = http::HeaderValue::from_str(constraint) {
        resp.headers_mut().insert("aether-unmet-constraint", v);
    }
    resp.headers_mut()
        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
    resp
}
