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
mod admin_response;
mod autoscale;
mod canary;
mod config;
mod data_plane;
mod deployment_load;
mod deployments;
mod forward;
mod ingress;
mod keyvalue;
mod kv_api;
mod load;
mod replication;
mod router;
mod schedule;
mod settings;
mod virtual_addresses;
mod workflows;

pub use autoscale::{SCALE_BUCKET, ScaleRecord};
pub use config::{MeshSetup, NodeConfig};
pub use deployments::{DeployError, Deployment, Deployments};
pub use router::{RouteConflict, RouteTable, route_text};
pub use schedule::desired as desired_replicas;

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
    mesh: Option<aether_mesh::MeshHandle>,
    kv: aether_kv::KvHandle,
    replication: Option<Arc<replication::Replication>>,
    load_task: Option<tokio::task::JoinHandle<()>>,
    idle_task: tokio::task::JoinHandle<()>,
    lattice_tasks: Vec<tokio::task::JoinHandle<()>>,
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
        // The kernel data plane first, so the node advertises how its mesh traffic is admitted.
        let mut data_plane = match &config.mesh {
            Some(setup) => data_plane::load(config.ebpf, setup.config.listen)?,
            None => None,
        };
        let mesh = match &config.mesh {
            Some(setup) => {
                let name = data_plane
                    .as_ref()
                    .map_or(aether_ebpf::data_plane_name(None), |p| p.name());
                start_mesh(&config, setup, &node_key, name).await?
            }
            None => None,
        };
        if mesh.is_none() {
            data_plane = None;
        }
        // Listeners first, so a taken port fails with its own error before
        // anything else (the state store, restored deployments) is opened.
        let http_listener = bind(config.http_addr, "HTTP ingress", "--listen")?;
        let http_addr = http_listener.local_addr()?;
        let admin_listener = bind(config.admin_addr, "admin API", "--admin-listen")?;
        let admin_addr = admin_listener.local_addr()?;
        let kv = aether_kv::Kv::start(
            aether_kv::KvConfig::new(config.data_dir.join("state.redb")),
            node_key.clone(),
            mesh.clone(),
        )
        .await
        .context("starting the lattice state")?;

        // Components reach the lattice state through wasi:keyvalue.
        let mut runtime_config = config.runtime_config();
        runtime_config.keyvalue = Some(Arc::new(keyvalue::LatticeKeyValue::new(kv.clone())));
        let runtime = Runtime::new(runtime_config)?;
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
        let replication: Option<Arc<replication::Replication>> = match &mesh {
            Some(mesh) => Some(
                replication::Replication::start(kv.clone(), mesh.clone(), deployments.clone())
                    .await
                    .context("following the lattice's deployments")?,
            ),
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        // Components that may scale to zero are unloaded once idle long enough.
        let idle_task = {
            let deployments = deployments.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tick.tick().await;
                    for d in deployments.list() {
                        d.component.scale_to_zero_if_idle();
                    }
                }
            })
        };

        // In a lattice: placement decides what this node hosts, and requests
        // for the rest go to a host over the mesh.
        let schedule =
            schedule::Schedule::new(node_key.public(), mesh.clone(), deployments.clone());
        let workflows = match (&mesh, &replication) {
            (Some(mesh), Some(replication)) => Some(
                workflows::Workflows::start(
                    kv.clone(),
                    mesh.clone(),
                    node_key.public(),
                    deployments.clone(),
                    replication.clone(),
                    schedule.clone(),
                )
                .await
                .context("following the lattice's workflows")?,
            ),
            _ => None,
        };
        let mut lattice_tasks = Vec::new();
        let lattice = match &mesh {
            Some(mesh) => {
                let forwarder = forward::Forwarder::new(
                    mesh.endpoint().clone(),
                    tokio::runtime::Handle::current(),
                );
                forwarder.serve(deployments.clone());
                lattice_tasks.push(tokio::spawn(schedule.clone().run()));
                let control = mesh
                    .endpoint()
                    .accept_streams(schedule::hosts::CHANNEL_CONTROL, 256);
                lattice_tasks.push(tokio::spawn(schedule::hosts::serve_control(
                    control,
                    deployments.clone(),
                    schedule.sampler().clone(),
                )));
                if let Some(plane) = &data_plane {
                    let forwarder = forwarder.clone();
                    lattice_tasks.push(tokio::spawn(
                        plane
                            .clone()
                            .follow(mesh.clone(), move || forwarder.direct_ports()),
                    ));
                }
                lattice_tasks.push(tokio::spawn(autoscale::run(
                    kv.clone(),
                    schedule.clone(),
                    deployments.clone(),
                    schedule.sampler().clone(),
                )));
                Some((schedule.clone(), forwarder))
            }
            None => None,
        };
        let routing = Arc::new(ingress::Routing {
            deployments: deployments.clone(),
            lattice: lattice.clone(),
        });
        let settings = settings::start(kv.clone());
        let virtual_addresses = virtual_addresses::start(
            config.ebpf,
            config.vip_range,
            config.vip_cgroup.clone(),
            routing.clone(),
            settings.clone(),
        );
        let ingress = ingress::IngressThreads::start(
            http_listener,
            config.workers,
            routing,
            shutdown_rx.clone(),
            config.drain_timeout,
        )?;
        let admin_state = Arc::new(admin::AdminState::new(
            &config,
            admin::Services {
                deployments: deployments.clone(),
                mesh: mesh.clone(),
                kv: kv.clone(),
                node_id: node_key.public(),
                replication: replication.clone(),
                workflows,
                lattice,
                data_plane,
                virtual_addresses,
                settings,
            },
            http_addr,
            admin_addr,
            started,
        ));
        let load_task = mesh
            .clone()
            .map(|mesh| tokio::spawn(load::report(mesh, deployments.clone())));
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
            mesh,
            kv,
            replication,
            load_task,
            idle_task,
            lattice_tasks,
        })
    }
}

/// Decides the node's admission and, when it has one, starts its mesh.
/// The member label giving where a node's admin API answers (`IP:PORT`).
pub const ADMIN_ADDR_LABEL: &str = "admin-addr";

async fn start_mesh(
    config: &NodeConfig,
    setup: &MeshSetup,
    node_key: &aether_identity::SecretKey,
    data_plane: &str,
) -> anyhow::Result<Option<aether_mesh::MeshHandle>> {
    let request = aether_mesh::AdmissionRequest {
        invite: setup.invite.as_ref(),
        root_key: setup.root_key.as_ref(),
        region: setup.region.as_deref(),
        labels: &setup.labels,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let admission = aether_mesh::admission::prepare(&config.data_dir, node_key, &request, now)?;
    let Some(admission) = admission else {
        if !setup.config.join.is_empty() {
            anyhow::bail!(
                "cannot join {}: this node has not been admitted to a lattice; pass \
                 --invite TOKEN (from `alkahest invite` on the operator's machine)",
                setup
                    .config
                    .join
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        tracing::warn!(
            "not admitted to any lattice (no --invite, no stored certificate, no root key in \
             ALKAHEST_HOME): serving alone, without a mesh"
        );
        return Ok(None);
    };
    match admission.source {
        aether_mesh::AdmissionSource::Stored => {}
        aether_mesh::AdmissionSource::Invite => tracing::info!(
            lattice = %admission.admitted.lattice(),
            invite = %admission.admitted.invite(),
            "admitted with the invite"
        ),
        aether_mesh::AdmissionSource::RootKey => tracing::info!(
            lattice = %admission.admitted.lattice(),
            "admitted with the operator's root key (first node; the root key is not stored)"
        ),
    }
    let mut mesh_config = setup.config.clone();
    mesh_config.data_dir = config.data_dir.clone();
    if mesh_config.http_addr.is_none() {
        mesh_config.http_addr = Some(config.http_addr);
    }
    if mesh_config.version.is_empty() {
        mesh_config.version = env!("CARGO_PKG_VERSION").to_string();
    }
    mesh_config
        .extra_labels
        .push(("data-plane".to_string(), data_plane.to_string()));
    // Where this node's admin API (and `/metrics`) answers, for Prometheus discovery.
    if config.admin_addr.port() != 0 {
        let ip = match config.admin_addr.ip() {
            ip if ip.is_unspecified() => mesh_config
                .advertise
                .map_or(mesh_config.listen.ip(), |a| a.ip()),
            ip => ip,
        };
        mesh_config.extra_labels.push((
            ADMIN_ADDR_LABEL.to_string(),
            SocketAddr::new(ip, config.admin_addr.port()).to_string(),
        ));
    }
    let listen = mesh_config.listen;
    let handle = aether_mesh::Mesh::start(mesh_config, node_key, admission)
        .await
        .map_err(|e| match e {
            aether_mesh::MeshError::Transport(aether_transport::TransportError::Bind(io))
                if io.kind() == std::io::ErrorKind::AddrInUse =>
            {
                anyhow::anyhow!(
                    "cannot bind the mesh on {listen} (UDP): the address is already in use; \
                     choose another with --mesh-port or --mesh-listen"
                )
            }
            other => anyhow::Error::new(other).context("starting the mesh"),
        })?;
    Ok(Some(handle))
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

    /// Deploys an essence here and, in a lattice, records it so every node
    /// runs it (what `POST /v1/deploy` does).
    pub async fn deploy(&self, essence: Vec<u8>) -> Result<(Arc<Deployment>, bool), DeployError> {
        let (d, replaced) = self.deployments.deploy(essence).await?;
        if let Some(r) = &self.replication {
            r.published(&d).await;
        }
        Ok((d, replaced))
    }

    /// The node's replica of the lattice state.
    pub fn kv(&self) -> &aether_kv::KvHandle {
        &self.kv
    }

    /// The node's mesh, when it is in a lattice.
    pub fn mesh(&self) -> Option<&aether_mesh::MeshHandle> {
        self.mesh.as_ref()
    }

    /// Leaves the lattice gracefully, stops accepting, lets in-flight
    /// requests finish (up to the drain timeout), then stops.
    pub async fn shutdown(self) {
        if let Some(task) = &self.load_task {
            task.abort();
        }
        self.idle_task.abort();
        for task in &self.lattice_tasks {
            task.abort();
        }
        if let Some(mesh) = &self.mesh {
            mesh.leave(std::time::Duration::from_secs(3)).await;
        }
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
