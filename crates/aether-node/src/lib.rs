//! One `aether-d` node: the HTTP ingress that serves components, the admin
//! API that deploys them, and the set of deployments.
//!
//! [`Node::start`] binds both listeners (failing early with a clear message
//! when a port is taken), reloads the essences deployed before a restart, and
//! returns a [`NodeHandle`] whose [`NodeHandle::shutdown`] drains in-flight
//! requests before returning. The binary `aether-d` and `alkahest up` are thin
//! shells around it.
#![deny(missing_docs)]

mod admin;
mod config;
mod deployments;
mod ingress;
mod router;

pub use config::NodeConfig;
pub use deployments::{DeployError, Deployments};
pub use router::{RouteConflict, RouteTable, route_text};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use aether_runtime::Runtime;
use anyhow::Context as _;
use tokio::sync::watch;

/// A running node.
pub struct Node;

/// Control of a running node.
pub struct NodeHandle {
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    ingress: ingress::IngressThreads,
    admin_task: tokio::task::JoinHandle<()>,
    deployments: Arc<Deployments>,
}

impl Node {
    /// Binds the listeners, restores earlier deployments and starts serving.
    ///
    /// Must be called inside a tokio runtime (the admin API runs on it); the
    /// ingress runs on its own threads, one single-threaded runtime per worker.
    pub async fn start(config: NodeConfig) -> anyhow::Result<NodeHandle> {
        let started = Instant::now();
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("creating the data directory {}", config.data_dir.display())
        })?;
        // The node's own identity key, created on first start (0600).
        let node_key = aether_identity::SecretKey::load_or_create(&aether_identity::node_key_path(
            &config.data_dir,
        ))
        .context("loading the node key")?;
        tracing::info!(node = %node_key.public(), "node identity");
        let runtime = Runtime::new(config.runtime_config())?;
        let deployments = Arc::new(Deployments::new(&config, runtime));
        let restored = if config.restore {
            deployments.restore().await
        } else {
            0
        };
        if restored > 0 {
            tracing::info!(
                "restored {restored} deployment(s) from {}",
                config.data_dir.display()
            );
        }
        let (shutdown, shutdown_rx) = watch::channel(false);

        let http_listener = bind(config.http_addr, "HTTP ingress", "--listen")?;
        let http_addr = http_listener.local_addr()?;
        let admin_listener = bind(config.admin_addr, "admin API", "--admin-listen")?;
        let admin_addr = admin_listener.local_addr()?;

        let ingress = ingress::IngressThreads::start(
            http_listener,
            config.workers,
            deployments.clone(),
            shutdown_rx.clone(),
            config.drain_timeout,
        )?;
        let admin_state = Arc::new(admin::AdminState::new(
            &config,
            deployments.clone(),
            http_addr,
            admin_addr,
            started,
        ));
        admin_listener.set_nonblocking(true)?;
        let admin_listener = tokio::net::TcpListener::from_std(admin_listener)?;
        let admin_task = tokio::spawn(admin::serve(admin_listener, admin_state, shutdown_rx));
        tracing::info!(%http_addr, %admin_addr, "node serving");
        Ok(NodeHandle {
            http_addr,
            admin_addr,
            shutdown,
            ingress,
            admin_task,
            deployments,
        })
    }
}

fn bind(addr: SocketAddr, what: &str, flag: &str) -> anyhow::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_nodelay(true)?;
    match socket.bind(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot serve the {what} on {addr}: the address is already in use (is another \
             `aether-d` or `alkahest up` running?); stop it or choose another address with {flag}"
        ),
        Err(e) => {
            return Err(e).with_context(|| format!("binding the {what} to {addr}"));
        }
    }
    socket.listen(1024)?;
    Ok(socket.into())
}

impl NodeHandle {
    /// Address the HTTP ingress listens on.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Address the admin API listens on.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The deployments of this node (for in-process callers such as `alkahest up`).
    pub fn deployments(&self) -> &Arc<Deployments> {
        &self.deployments
    }

    /// Stops accepting, lets in-flight requests finish (up to the drain
    /// timeout), then stops.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let ingress = self.ingress;
        let _ = tokio::task::spawn_blocking(move || ingress.join()).await;
        let _ = self.admin_task.await;
    }
}

/// Waits for SIGTERM or SIGINT (Ctrl-C), the signals that stop a node gracefully.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
