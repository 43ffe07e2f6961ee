//! JSON bodies of the admin API.

use serde::{Deserialize, Serialize};

/// `GET /v1/status`: the node and what it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// `aether-d` version.
    pub version: String,
    /// Address of the HTTP ingress.
    pub http_addr: String,
    /// Address of this admin API.
    pub admin_addr: String,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Deployed components.
    pub components: Vec<ComponentStatus>,
}

/// One deployed component.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ComponentStatus {
    /// Name from its manifest.
    pub name: String,
    /// Version from its manifest, if any.
    pub version: Option<String>,
    /// Hex SHA-256 of the component bytes.
    pub content_hash: String,
    /// Key that signed the essence.
    pub publisher: String,
    /// Routes it serves, as `host/path` or `/path`.
    pub routes: Vec<String>,
    /// `running` (later: `pending`, `failed`, `scaled-to-zero`).
    pub state: String,
    /// Instances running right now.
    pub instances: usize,
    /// Most instances allowed at once.
    pub max_concurrency: u32,
    /// Requests served since deploy.
    pub requests: u64,
    /// Milliseconds the last activation took.
    pub activation_ms: f64,
    /// Whether the compiled code came from the cache (`hit`, `miss`, `uncached`).
    pub compile_cache: String,
    /// When it was deployed, Unix seconds.
    pub deployed_at: u64,
}

/// `POST /v1/deploy` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployResponse {
    /// The component now running.
    pub component: ComponentStatus,
    /// Whether it replaced an earlier deployment of the same name.
    pub replaced: bool,
}

/// One log line, as streamed by `GET /v1/logs/NAME` (one JSON object per line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogLineJson {
    /// Component name.
    pub component: String,
    /// Sequence number within the component.
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// `stdout`, `stderr` or `host`.
    pub stream: String,
    /// The text.
    pub text: String,
}

/// Error body of every non-2xx admin answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    /// What went wrong, with what to do next when known.
    pub error: String,
}
