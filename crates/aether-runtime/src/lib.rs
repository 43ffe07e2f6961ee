//! Runs WebAssembly components for one node.
//!
//! The runtime owns one wasmtime [`Engine`](wasmtime::Engine) configured for
//! serving many short requests: a pooling allocator whose slots stay resident
//! between requests, copy-on-write memory images, epoch interruption for
//! deadlines and fuel for CPU budgets. Compiled code is cached on disk keyed by
//! the component's content hash and the engine's settings, so restarting a
//! node or deploying the same component twice never compiles again.
//!
//! A [`Runtime`] turns component bytes plus a [`Manifest`](aether_manifest::Manifest)
//! into a [`LoadedComponent`]; each incoming request then gets a fresh
//! instance with [`LoadedComponent::handle`]. Everything a component may touch
//! is granted by its manifest and nothing else: no host directories, only the
//! listed environment and config values, outbound HTTP only to listed hosts,
//! `wasi:keyvalue` only for the listed buckets (see [`keyvalue`] for the
//! buckets, the backend and what atomics mean across nodes), no sockets.
#![deny(missing_docs)]

mod cache;
mod capabilities;
pub mod compile;
mod engine;
mod host;
pub mod keyvalue;
mod load;
mod logs;
mod metrics;
mod serve;

pub use cache::{CacheOutcome, CompileCache};
pub use capabilities::OutboundPolicy;
pub use engine::{Runtime, RuntimeConfig};
pub use keyvalue::{CasOutcome, KeyPage, KeyValueBackend, KeyValueError, KvFuture};
pub use load::{DEFAULT_IDLE_TIMEOUT, LoadError, LoadedComponent, content_hash};
pub use logs::{LogLine, LogSink, LogStream};
pub use metrics::RuntimeMetrics;
pub use serve::{FAULTED, OVERLOADED, ResponseBody, ServeError, host_response};
/// The error type of request and response bodies (`wasi:http`'s).
pub use wasmtime_wasi_http::Error as HttpError;
