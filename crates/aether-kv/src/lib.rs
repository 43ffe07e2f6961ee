//! A node's replica of the lattice state: durable history in redb, driven by
//! the sans-IO core of `aether-state`, replicated over the mesh.
//!
//! Consistency: a write returns once it is durable on the node that made
//! it, and that node reads it back at once (read-your-writes). Every other
//! node sees it eventually: pushed at once to a few random members, who push
//! it on, and brought by anti-entropy (a random member every two seconds) to
//! any node that missed it, was partitioned or was down.
#![deny(missing_docs)]

mod metrics;
mod service;
pub mod store;

pub use metrics::KvMetrics;
pub use service::{Change, Kv, KvConfig, KvError, KvHandle, KvStats, Limits};
pub use store::{Store, StoreError};
