//! Serving one request with a fresh instance.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Body, Frame, SizeHint};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtx;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpCtx, WasiHttpView};

use crate::host::{HostState, MemoryLimiter, OutboundHooks};
use crate::keyvalue::KeyValueCtx;
use crate::load::LoadedComponent;
use crate::logs::{CapturedStdio, LogStream};
use crate::metrics::FaultLabels;

/// Body of every response the runtime produces: the guest's stream, or a
/// short message from the host.
pub type ResponseBody = UnsyncBoxBody<Bytes, HttpError>;

/// Why an instance did not produce a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServeError {
    /// The guest trapped (panic, unreachable, bad memory access).
    Trap(String),
    /// The request deadline passed.
    Deadline,
    /// The CPU budget (fuel) ran out.
    CpuBudget,
    /// The instance tried to grow memory past its limit.
    Memory,
    /// The request body was larger than `limits.max_body`.
    BodyTooLarge,
    /// The guest returned without setting a response.
    NoResponse,
    /// The guest set an error code instead of a response.
    GuestError(String),
}

/// Marks a 503 given because every instance slot was taken: the component
/// did not run, so the request may go to another replica. Nodes strip it
/// before a response leaves the lattice.
pub const OVERLOADED: HeaderName = HeaderName::from_static("aether-overloaded");

/// Marks a response the host gave because the instance faulted (trap, deadline, CPU budget,
/// memory limit, no response), as opposed to an error the component answered itself. Nodes
/// count it for canary health gates and strip it before a response leaves the node.
pub const FAULTED: HeaderName = HeaderName::from_static("aether-faulted");

impl ServeError {
    fn kind(&self) -> &'static str {
        match self {
            Self::Trap(_) | Self::NoResponse | Self::GuestError(_) => "trap",
            Self::Deadline => "deadline",
            Self::CpuBudget => "fuel",
            Self::Memory => "memory",
            Self::BodyTooLarge => "body",
        }
    }
}

/// A plain-text response from the host (not from a component): `message`
/// with `status` and `text/plain; charset=utf-8`.
pub fn host_response(status: StatusCode, message: String) -> Response<ResponseBody> {
    let mut resp = Response::new(
        Full::new(Bytes::from(message))
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

impl LoadedComponent {
    /// Serves one request with a fresh instance and returns its response.
    ///
    /// Never fails: limits and faults become 4xx/5xx responses from the host
    /// (413 body too large, 503 with `Retry-After` when all instance slots are
    /// busy, 504 past the deadline, 500 for traps, CPU budget and memory), and
    /// every fault is logged with the component's name.
    pub async fn handle<B>(&self, req: hyper::Request<B>, https: bool) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let started = Instant::now();
        let resp = self.handle_inner(req, https).await;
        let stats = &self.inner.stats;
        stats.latency.observe(started.elapsed().as_secs_f64());
        stats.count(resp.status().as_u16());
        resp
    }

    fn fault(&self, error: &ServeError) -> Response<ResponseBody> {
        let status = match error {
            ServeError::Deadline => StatusCode::GATEWAY_TIMEOUT,
            ServeError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut resp = host_response(status, self.describe(error));
        if !matches!(error, ServeError::BodyTooLarge) {
            resp.headers_mut()
                .insert(FAULTED, HeaderValue::from_static("1"));
        }
        resp
    }

    /// The one text for a fault: the caller's response body and the log line.
    fn describe(&self, err: &ServeError) -> String {
        let name = &self.inner.name;
        let limits = &self.inner.manifest.limits;
        match err {
            ServeError::Trap(msg) => format!(
                "component `{name}` trapped: {msg} (its own message, if any, is in its stderr)"
            ),
            ServeError::Deadline => format!(
                "component `{name}` stopped: request deadline exceeded ({})",
                limits.timeout
            ),
            ServeError::CpuBudget => format!(
                "component `{name}` stopped: CPU budget of {} fuel exhausted",
                limits.fuel.unwrap_or(u64::MAX)
            ),
            ServeError::Memory => format!(
                "component `{name}` stopped: exceeded its memory limit of {}",
                limits.memory
            ),
            ServeError::BodyTooLarge => format!(
                "request body exceeds the limit of {} for component `{name}`",
                limits.max_body
            ),
            ServeError::NoResponse => format!("component `{name}` returned without a response"),
            ServeError::GuestError(code) => format!("component `{name}` failed: {code}"),
        }
    }

    async fn handle_inner<B>(&self, req: hyper::Request<B>, https: bool) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let c = &self.inner;
        let max_body = c.manifest.limits.max_body.0;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max_body) || req.body().size_hint().lower() > max_body {
            return self.fault(&ServeError::BodyTooLarge);
        }

        let Ok(permit) = c.slots.clone().try_acquire_owned() else {
            let m = &c.runtime.inner.metrics;
            m.faults
                .get_or_create(&FaultLabels {
                    component: c.label.component.clone(),
                    kind: "overload",
                })
                .inc();
            let mut resp = host_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "component `{}` is at its limit of {} concurrent instances",
                    c.name, c.manifest.limits.max_concurrency
                ),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp.headers_mut()
                .insert(OVERLOADED, HeaderValue::from_static("1"));
            return resp;
        };

        let pre = match self.active_pre().await {
            Ok(pre) => pre,
            Err(e) => {
                let text = format!("component `{}` could not be activated: {e}", c.name);
                c.logs.push(crate::logs::LogStream::Host, text.clone());
                return host_response(StatusCode::SERVICE_UNAVAILABLE, text);
            }
        };

        let has_body = !req.body().is_end_stream();
        let body_exceeded = Arc::new(AtomicBool::new(false));
        let memory_exceeded = Arc::new(AtomicBool::new(false));
        let req = req.map(|body| LimitedBody {
            inner: body,
            remaining: max_body,
            exceeded: body_exceeded.clone(),
        });

        let mut store = match self.new_store(pre.engine(), memory_exceeded.clone()) {
            Ok(store) => store,
            Err(e) => {
                return self.fault(&ServeError::Trap(format!("creating the instance: {e:#}")));
            }
        };
        let scheme = if https { Scheme::Https } else { Scheme::Http };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| -> wasmtime::Result<_> {
            let req = store.data_mut().http().new_incoming_request(scheme, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok((req, out))
        })();
        let (req_res, out_res) = match prepared {
            Ok(v) => v,
            Err(e) => {
                return host_response(StatusCode::BAD_REQUEST, format!("bad request: {e:#}"));
            }
        };

        let this = self.clone();
        let task_body_exceeded = body_exceeded.clone();
        let deadline = c.manifest.limits.timeout.0;
        let task = tokio::task::spawn(async move {
            let _permit = permit;
            let c = &this.inner;
            let gauge = &c.stats.instances;
            gauge.inc();
            c.stats.instances_created.inc();
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req_res, out_res)
                    .await
            };
            let result = match tokio::time::timeout(deadline, run).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(classify(&e, &memory_exceeded, &task_body_exceeded)),
                Err(_) => Err(ServeError::Deadline),
            };
            gauge.dec();
            if let Err(err) = &result {
                this.report(err);
            }
            result
        });

        match receiver.await {
            // The overload marker is the host's alone: a guest that set it
            // could make a forwarding node run a request twice.
            Ok(Ok(mut resp)) => {
                resp.headers_mut().remove(OVERLOADED);
                resp.headers_mut().remove(FAULTED);
                if has_body {
                    resp.map(|inner| {
                        GuardedBody {
                            inner,
                            exceeded: body_exceeded,
                        }
                        .boxed_unsync()
                    })
                } else {
                    resp
                }
            }
            Ok(Err(code)) => {
                if body_exceeded.load(Ordering::Relaxed) {
                    return self.fault(&ServeError::BodyTooLarge);
                }
                let err = ServeError::GuestError(format!("{code:?}"));
                self.fault(&err)
            }
            Err(_) => {
                let err = match task.await {
                    Ok(Ok(())) => {
                        let err = ServeError::NoResponse;
                        self.report(&err);
                        err
                    }
                    Ok(Err(err)) => err,
                    Err(join) => ServeError::Trap(format!("instance task failed: {join}")),
                };
                self.fault(&err)
            }
        }
    }

    fn report(&self, err: &ServeError) {
        let c = &self.inner;
        let m = &c.runtime.inner.metrics;
        m.faults
            .get_or_create(&FaultLabels {
                component: c.label.component.clone(),
                kind: err.kind(),
            })
            .inc();
        let message = self.describe(err);
        tracing::warn!(component = %c.name, kind = err.kind(), "{message}");
        c.logs.push(LogStream::Host, message);
    }

    fn new_store(
        &self,
        engine: &wasmtime::Engine,
        memory_exceeded: Arc<AtomicBool>,
    ) -> wasmtime::Result<Store<HostState>> {
        let c = &self.inner;
        let mut wasi = WasiCtx::builder();
        wasi.stdout(CapturedStdio {
            sink: c.logs.clone(),
            stream: LogStream::Stdout,
        })
        .stderr(CapturedStdio {
            sink: c.logs.clone(),
            stream: LogStream::Stderr,
        })
        .envs(&c.env)
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
        let limits = &c.manifest.limits;
        let state = HostState {
            table: wasmtime::component::ResourceTable::new(),
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                policy: c.outbound.clone(),
                component: c.name.clone(),
            },
            limiter: MemoryLimiter {
                max_memory: usize::try_from(limits.memory.0).unwrap_or(usize::MAX),
                max_table_elements: 1 << 20,
                exceeded: memory_exceeded,
            },
            config: c.config.clone(),
            keyvalue: KeyValueCtx::new(c.keyvalue.clone()),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        if let Some(fuel) = limits.fuel {
            store.set_fuel(fuel)?;
        }
        let deadline = Instant::now() + limits.timeout.0;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Ok(UpdateDeadline::Interrupt)
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        Ok(store)
    }
}

fn classify(
    err: &wasmtime::Error,
    memory_exceeded: &AtomicBool,
    body_exceeded: &AtomicBool,
) -> ServeError {
    if memory_exceeded.load(Ordering::Relaxed) {
        return ServeError::Memory;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => ServeError::Deadline,
        Some(Trap::OutOfFuel) => ServeError::CpuBudget,
        _ if body_exceeded.load(Ordering::Relaxed) => ServeError::BodyTooLarge,
        Some(trap) => ServeError::Trap(trap.to_string()),
        None => ServeError::Trap(root_message(err)),
    }
}

fn root_message(err: &wasmtime::Error) -> String {
    let text = format!("{err:#}");
    let first = text.lines().next().unwrap_or("");
    first
        .split(": error while executing at wasm backtrace")
        .next()
        .unwrap_or(first)
        .to_string()
}

/// A request body that stops with an error after `remaining` bytes.
struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    exceeded: Arc<AtomicBool>,
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<HttpError>,
{
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > self.remaining {
                        self.exceeded.store(true, Ordering::Relaxed);
                        self.remaining = 0;
                        return Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(None))));
                    }
                    self.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that fails (so the connection is aborted rather than the
/// response looking complete) once the request body went over its limit
/// after the guest had already started answering.
struct GuardedBody {
    inner: ResponseBody,
    exceeded: Arc<AtomicBool>,
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if self.exceeded.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(HttpError::HttpRequestBodySize(None))));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        !self.exceeded.load(Ordering::Relaxed) && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
