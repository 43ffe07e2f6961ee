//! The HTTP ingress: worker threads that accept connections and route requests.
//!
//! Each worker owns a single-threaded tokio runtime and accepts from its own
//! handle to the one listening socket, so a connection, its requests and the
//! instances serving them stay on one thread: no work stealing and no
//! cross-thread wake-ups on the hot path.

use std::convert::Infallible;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::watch;

use aether_runtime::ResponseBody;

use crate::deployments::Deployments;

pub(crate) struct IngressThreads {
    threads: Vec<JoinHandle<()>>,
}

impl IngressThreads {
    pub(crate) fn start(
        listener: std::net::TcpListener,
        workers: usize,
        deployments: Arc<Deployments>,
        shutdown: watch::Receiver<bool>,
        drain_timeout: Duration,
    ) -> anyhow::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut threads = Vec::new();
        for i in 0..workers.max(1) {
            let listener = listener.try_clone()?;
            let deployments = deployments.clone();
            let shutdown = shutdown.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            threads.push(
                std::thread::Builder::new()
                    .name(format!("aether-ingress-{i}"))
                    .spawn(move || {
                        rt.block_on(worker(listener, deployments, shutdown, drain_timeout));
                    })?,
            );
        }
        Ok(Self { threads })
    }

    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

async fn worker(
    listener: std::net::TcpListener,
    deployments: Arc<Deployments>,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("ingress worker cannot use the listener: {e}");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let deployments = deployments.clone();
                let service = service_fn(move |req| {
                    let deployments = deployments.clone();
                    async move { Ok::<_, Infallible>(route(&deployments, req).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::trace!(%peer, "connection ended: {e}");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
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

fn plain(status: StatusCode, text: String) -> Response<ResponseBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn route(deployments: &Deployments, req: hyper::Request<Incoming>) -> Response<ResponseBody> {
    let host = req.uri().host().map(str::to_string).or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    });
    let Some(deployment) = deployments.route(host.as_deref(), req.uri().path()) else {
        return plain(
            StatusCode::NOT_FOUND,
            format!("no component serves {}\n", req.uri().path()),
        );
    };
    deployment.component.handle(req, false).await
}
