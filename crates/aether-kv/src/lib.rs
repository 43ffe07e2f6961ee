//! A node's replica of the lattice state: durable history in redb, driven by
//! the sans-IO core of `aether-state`.
#![deny(missing_docs)]

pub mod store;

pub use store::{Store, StoreError};
