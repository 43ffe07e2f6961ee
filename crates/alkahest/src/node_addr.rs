//! Finding the node to talk to.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs as _};

use aether_identity::home::Home;
use anyhow::Context as _;

/// Resolves `--node` (or the node `alkahest up` recorded, or the default).
pub fn resolve(given: Option<&str>, home: &Home) -> anyhow::Result<SocketAddr> {
    let text = match given {
        Some(t) => t.to_string(),
        None => match std::fs::read_to_string(home.node_file()) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => format!("127.0.0.1:{}", aether_admin::DEFAULT_ADMIN_PORT),
        },
    };
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, aether_admin::DEFAULT_ADMIN_PORT));
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let with_port = if text.contains(':') {
        text.clone()
    } else {
        format!("{text}:{}", aether_admin::DEFAULT_ADMIN_PORT)
    };
    with_port
        .to_socket_addrs()
        .with_context(|| {
            format!("`{text}` is not a node address (expected IP, IP:PORT or HOST:PORT)")
        })?
        .next()
        .with_context(|| format!("`{text}` resolves to no address"))
}
