//! The node admin API shared by `aether-d` (server) and `alkahest` (client).
//!
//! Every request except `GET /metrics` and `GET /healthz` is signed with an
//! operator key (see [`auth`]); the node answers 401 and changes nothing for
//! unsigned, badly signed, stale or replayed requests, or keys it does not
//! trust. Bodies are JSON ([`types`]), except deploys (essence bytes) and log
//! streams (newline-delimited JSON).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod client;
pub mod types;

/// Default TCP port of the admin API.
pub const DEFAULT_ADMIN_PORT: u16 = 7070;
/// Default TCP port of the HTTP ingress.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
