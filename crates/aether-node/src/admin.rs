//! The admin API server. Every route but `/metrics` and `/healthz` requires a
//! signed request (see `aether_admin::auth`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use aether_admin::auth::Verifier;
use aether_admin::types::{
    CapacityJson, DeployResponse, LoadJson, LogLineJson, MemberJson, NodeStatus, RevokeResponse,
};
use aether_runtime::LogLine;
use bytes::Bytes;
use futures::StreamExt as _;
use http::{HeaderValue, Method, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::admin_response::{AdminBody, body, error, json};
use crate::config::NodeConfig;
use crate::deployments::{DeployError, Deployments};

/// What the admin API serves.
pub(crate) struct Services {
    pub(crate) deployments: Arc<Deployments>,
    /// The node's workflows (rollouts), in a lattice.
    pub(crate) workflows: Option<Arc<crate::workflows::Workflows>>,
    pub(crate) mesh: Option<aether_mesh::MeshHandle>,
    pub(crate) kv: aether_kv::KvHandle,
    pub(crate) node_id: aether_identity::PublicKey,
    pub(crate) replication: Option<Arc<crate::replication::Replication>>,
    pub(crate) lattice: Option<Lattice>,
    /// The kernel data plane, when it is loaded.
    pub(crate) data_plane: Option<Arc<crate::data_plane::KernelDataPlane>>,
    /// The virtual addresses this node gives out.
    pub(crate) virtual_addresses: Arc<crate::virtual_addresses::VirtualAddressTable>,
    /// The lattice-wide settings, as this node follows them.
    pub(crate) settings: Arc<crate::settings::Settings>,
}

/// The placement and forwarding of a node in a lattice.
pub(crate) type Lattice = (
    Arc<crate::schedule::Schedule>,
    Arc<crate::forward::Forwarder>,
);

pub(crate) struct AdminState {
    verifier: Verifier,
    deployments: Arc<Deployments>,
    mesh: Option<aether_mesh::MeshHandle>,
    kv: aether_kv::KvHandle,
    node_id: aether_identity::PublicKey,
    replication: Option<Arc<crate::replication::Replication>>,
    workflows: Option<Arc<crate::workflows::Workflows>>,
    lattice: Option<Lattice>,
    registry: Registry,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    started: Instant,
    max_essence_bytes: usize,
    virtual_addresses: Arc<crate::virtual_addresses::VirtualAddressTable>,
    settings: Arc<crate::settings::Settings>,
}

impl AdminState {
    /// Fills in `status`'s virtual address, when its component asked for one.
    fn virtual_address(
        &self,
        status: &mut aether_admin::types::ComponentStatus,
        d: &crate::deployments::Deployment,
    ) {
        if !crate::virtual_addresses::wanted(d, &self.settings.get()) {
            return;
        }
        match self.virtual_addresses.of(d.component.name()) {
            Ok(addr) => status.virtual_address = addr,
            Err(why) => status.virtual_address_unavailable = Some(why),
        }
    }

    pub(crate) fn new(
        config: &NodeConfig,
        services: Services,
        http_addr: SocketAddr,
        admin_addr: SocketAddr,
        started: Instant,
    ) -> Self {
        let Services {
            deployments,
            mesh,
            kv,
            node_id,
            replication,
            workflows,
            lattice,
            data_plane,
            virtual_addresses,
            settings,
        } = services;
        let mut registry = Registry::default();
        deployments.runtime().metrics().register(&mut registry);
        if let Some(mesh) = &mesh {
            mesh.metrics().register(&mut registry);
        }
        kv.metrics().register(&mut registry);
        if let Some(w) = &workflows {
            w.metrics.register(&mut registry);
        }
        if let Some((schedule, forwarder)) = &lattice {
            forwarder.metrics.register(&mut registry);
            schedule.metrics.register(&mut registry);
        }
        if let Some(plane) = &data_plane {
            plane.metrics.register(&mut registry);
        }
        virtual_addresses.register(&mut registry);
        Self {
            verifier: Verifier::new(config.admin_keys.clone(), config.admin_window),
            deployments,
            mesh,
            kv,
            node_id,
            replication,
            workflows,
            lattice,
            registry,
            http_addr,
            admin_addr,
            started,
            max_essence_bytes: config.max_essence_bytes,
            virtual_addresses,
            settings,
        }
    }
}

/// While the lattice places no replica of a deployment (scaled to zero), a
/// node is not on standby for it: it is scaled to zero, or running when a
/// request has just activated it here.
fn lattice_state(status: &mut aether_admin::types::ComponentStatus, d: &crate::Deployment) {
    if status.placement.as_ref().is_some_and(|p| p.desired == 0) {
        status.state = if d.component.is_active() {
            "running"
        } else {
            "scaled-to-zero"
        }
        .into();
    }
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let state = state.clone();
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(&state, req).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move { let _ = conn.await; });
            }
            _ = shutdown.changed() => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

async fn handle(state: &AdminState, req: hyper::Request<Incoming>) -> Response<AdminBody> {
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let path = req.uri().path().to_string();

    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return Response::new(body("ok\n")),
        (&Method::GET, "/sd/prometheus") => return prometheus_targets(state).await,
        (&Method::GET, "/metrics") => {
            let mut text = String::new();
            if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
            }
            let mut resp = Response::new(body(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            return resp;
        }
        _ => {}
    }

    let (parts, incoming) = req.into_parts();
    let limit = match method {
        Method::POST => state.max_essence_bytes,
        // State values: the store's own limit answers with a clear error
        // up to here.
        Method::PUT => 1 << 20,
        _ => 64 * 1024,
    };
    let bytes = match Limited::new(incoming, limit).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body refused: {e} (limit {limit} bytes)"),
            );
        }
    };
    let caller =
        match state
            .verifier
            .verify(method.as_str(), &path_and_query, &parts.headers, &bytes)
        {
            Ok(key) => key,
            Err(e) => {
                tracing::warn!(%path, "admin request refused: {e}");
                return error(StatusCode::UNAUTHORIZED, e.to_string());
            }
        };

    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["v1", "status"]) => {
            let mut components = Vec::new();
            for d in state.deployments.list() {
                let mut status = state.deployments.status(&d);
                if let Some((schedule, _)) = &state.lattice {
                    status.placement = schedule.placement_json(&d, false).await;
                    lattice_state(&mut status, &d);
                }
                state.virtual_address(&mut status, &d);
                components.push(status);
            }
            json(
                StatusCode::OK,
                &NodeStatus {
                    version: env!("CARGO_PKG_VERSION").into(),
                    http_addr: state.http_addr.to_string(),
                    admin_addr: state.admin_addr.to_string(),
                    uptime_secs: state.started.elapsed().as_secs(),
                    components,
                },
            )
        }
        (&Method::POST, ["v1", "deploy"]) => match state.deployments.deploy(bytes.to_vec()).await {
            Ok((d, replaced)) => {
                if let Some(r) = &state.replication {
                    r.published(&d).await;
                }
                json(
                    StatusCode::OK,
                    &DeployResponse {
                        component: state.deployments.status(&d),
                        replaced,
                    },
                )
            }
            Err(e) => {
                let status = match &e {
                    DeployError::Essence(aether_essence::EssenceError::Untrusted(_)) => {
                        StatusCode::FORBIDDEN
                    }
                    DeployError::Conflict(_) => StatusCode::CONFLICT,
                    DeployError::Storage { .. } => StatusCode::INSUFFICIENT_STORAGE,
                    _ => StatusCode::BAD_REQUEST,
                };
                tracing::warn!("deploy refused: {e}");
                error(status, e.to_string())
            }
        },
        (&Method::GET, ["v1", "components", name]) => match state.deployments.get(name) {
            Some(d) => {
                let mut status = state.deployments.status(&d);
                if let Some((schedule, _)) = &state.lattice {
                    status.placement = schedule.placement_json(&d, true).await;
                    lattice_state(&mut status, &d);
                }
                state.virtual_address(&mut status, &d);
                json(StatusCode::OK, &status)
            }
            None => match crate::replication::lattice_record(&state.kv, name).await {
                Some(record) => error(
                    StatusCode::NOT_FOUND,
                    format!(
                        "`{name}` is deployed in the lattice (essence {}, {} bytes) but this node \
                         has not got its essence: no member could send it yet (retried every 30 s)",
                        record.essence_hash, record.size
                    ),
                ),
                None => error(
                    StatusCode::NOT_FOUND,
                    format!("no component named `{name}`"),
                ),
            },
        },
        (&Method::DELETE, ["v1", "components", name]) => {
            match state.deployments.remove(name).await {
                Ok(true) => {
                    if let Some(r) = &state.replication {
                        r.removed(name).await;
                    }
                    json(StatusCode::OK, &serde_json::json!({ "removed": name }))
                }
                Ok(false) => match (
                    &state.replication,
                    crate::replication::lattice_record(&state.kv, name).await,
                ) {
                    // Recorded in the lattice without ever arriving here.
                    (Some(r), Some(_)) => {
                        r.removed(name).await;
                        json(StatusCode::OK, &serde_json::json!({ "removed": name }))
                    }
                    _ => error(
                        StatusCode::NOT_FOUND,
                        format!("no component named `{name}`"),
                    ),
                },
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        (&Method::GET, ["v1", "logs", name]) => logs(state, name, parts.uri.query()),
        (&Method::GET, ["v1", "nodes"]) => nodes(state).await,
        (&Method::POST, ["v1", "revoke"]) => revoke(state, &bytes).await,
        (_, ["v1", rest @ ..])
            if matches!(
                rest.first(),
                Some(&("rollouts" | "history" | "rollback" | "drain"))
            ) =>
        {
            match &state.workflows {
                Some(w) => {
                    crate::workflows::api::handle(
                        w,
                        &state.deployments,
                        &caller,
                        &method,
                        rest,
                        parts.uri.query(),
                        bytes,
                    )
                    .await
                }
                None => error(
                    StatusCode::NOT_FOUND,
                    "this node is not in a lattice: rollouts need one (POST /v1/deploy deploys here directly)",
                ),
            }
        }
        (_, ["v1", "settings", rest @ ..]) => {
            crate::settings::handle(&state.kv, &method, rest, bytes).await
        }
        (_, ["v1", "kv", rest @ ..]) => {
            crate::kv_api::handle(&state.kv, &method, rest, parts.uri.query(), bytes).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            format!("no admin endpoint {method} {path}"),
        ),
    }
}

fn line_json(component: &str, line: &LogLine) -> Bytes {
    let time_ms = line
        .time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut v = serde_json::to_vec(&LogLineJson {
        component: component.to_string(),
        seq: line.seq,
        time_ms,
        stream: line.stream.as_str().into(),
        text: line.text.clone(),
    })
    .unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn logs(state: &AdminState, name: &str, query: Option<&str>) -> Response<AdminBody> {
    let Some(d) = state.deployments.get(name) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no component named `{name}`"),
        );
    };
    let mut tail = 100usize;
    let mut follow = false;
    for pair in query.unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("tail", n)) => tail = n.parse().unwrap_or(100),
            Some(("follow", v)) => follow = v == "1" || v == "true",
            _ => {}
        }
    }
    let sink = d.component.logs().clone();
    // Subscribe before reading the tail so no line falls between the two.
    let live = sink.follow();
    let past = sink.tail(tail);
    let last_seq = past.last().map(|l| l.seq);
    let component = name.to_string();
    let head = futures::stream::iter(
        past.iter()
            .map(|l| Ok::<_, std::io::Error>(Frame::data(line_json(&component, l))))
            .collect::<Vec<_>>(),
    );
    let mut resp = if follow {
        let component2 = component.clone();
        let rest = futures::stream::unfold(live, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(line) => return Some((line, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |l| futures::future::ready(last_seq.is_none_or(|s| l.seq > s)))
        .map(move |l| Ok(Frame::data(line_json(&component2, &l))));
        Response::new(BodyExt::boxed_unsync(StreamBody::new(head.chain(rest))))
    } else {
        Response::new(BodyExt::boxed_unsync(StreamBody::new(head)))
    };
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

fn member_json(m: &aether_mesh::Member) -> MemberJson {
    let meta = m.metadata.clone().unwrap_or_default();
    let data_plane = meta.label("data-plane").unwrap_or("userspace").to_string();
    let reachability = meta
        .label(aether_nat::REACHABILITY_LABEL)
        .unwrap_or("unknown")
        .to_string();
    let observed_addr = meta.label(aether_nat::OBSERVED_LABEL).map(str::to_string);
    MemberJson {
        data_plane,
        reachability,
        observed_addr,
        path: String::new(),
        id: m.id.to_string(),
        state: m.status.as_str().to_string(),
        region: meta.region,
        labels: meta.labels.into_iter().collect(),
        rtt_ms: m
            .rtt
            .map(|d| (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0),
        incarnation: m.incarnation,
        mesh_addr: m.mesh_addr.to_string(),
        http_addr: meta.http_addr.map(|a| a.to_string()),
        version: meta.version,
        capacity: CapacityJson {
            cores: meta.capacity.cores,
            memory_bytes: meta.capacity.memory_bytes,
        },
        load: LoadJson {
            instances: meta.load.instances,
            request_rate: meta.load.request_rate,
            cpu_percent: meta.load.cpu_percent,
        },
        is_self: m.is_self,
    }
}

/// `GET /v1/nodes`: the members this node knows, itself first. A node
/// outside any lattice lists itself alone.
async fn nodes(state: &AdminState) -> Response<AdminBody> {
    let Some(mesh) = &state.mesh else {
        let me = MemberJson {
            id: state.node_id.to_string(),
            state: "alive".into(),
            region: String::new(),
            labels: Default::default(),
            rtt_ms: Some(0.0),
            incarnation: 0,
            mesh_addr: String::new(),
            http_addr: Some(state.http_addr.to_string()),
            version: env!("CARGO_PKG_VERSION").into(),
            capacity: CapacityJson::default(),
            load: LoadJson::default(),
            is_self: true,
            data_plane: "userspace".into(),
            reachability: "unknown".into(),
            observed_addr: None,
            path: "self".into(),
        };
        return json(StatusCode::OK, &vec![me]);
    };
    match mesh.members().await {
        Ok(members) => {
            let mut rows: Vec<MemberJson> = members.iter().map(member_json).collect();
            let here_direct = rows.iter().any(|r| r.is_self && r.reachability == "direct");
            for (row, m) in rows.iter_mut().zip(&members) {
                let endpoint = mesh.endpoint();
                row.path = if m.is_self {
                    "self".to_string()
                } else if let Some(relay) = endpoint.relay_of(&m.id) {
                    format!("relayed via {}", crate::schedule::short(&relay))
                } else if here_direct || row.reachability == "direct" {
                    "direct".to_string()
                } else if endpoint.is_connected(&m.id) {
                    "punched".to_string()
                } else {
                    "none".to_string()
                };
            }
            json(StatusCode::OK, &rows)
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /v1/revoke`: the body is a root-signed revocation (binary).
async fn revoke(state: &AdminState, body: &[u8]) -> Response<AdminBody> {
    let Some(mesh) = &state.mesh else {
        return error(
            StatusCode::CONFLICT,
            "this node is not in a lattice, so there is nothing to revoke from",
        );
    };
    let revocation = match aether_identity::Revocation::from_bytes(body) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let node = revocation.node().to_string();
    match mesh.revoke(revocation).await {
        Ok(outcome) => json(
            StatusCode::OK,
            &RevokeResponse {
                node,
                new: outcome.new,
                closed_connections: outcome.closed_connections,
            },
        ),
        Err(e @ aether_mesh::MeshError::Revocation(_)) => {
            error(StatusCode::FORBIDDEN, e.to_string())
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// One target group of Prometheus' HTTP service discovery (`http_sd_configs`).
#[derive(serde::Serialize)]
struct TargetGroup {
    targets: Vec<String>,
    labels: std::collections::BTreeMap<String, String>,
}

/// `GET /sd/prometheus`: every live member's metrics target (its admin API, where `/metrics`
/// answers), in the format of Prometheus' `http_sd_configs`; unauthenticated, like `/metrics`.
/// A member that does not advertise its admin address is left out.
async fn prometheus_targets(state: &AdminState) -> Response<AdminBody> {
    let mut groups = Vec::new();
    let me = |addr: SocketAddr| TargetGroup {
        targets: vec![addr.to_string()],
        labels: [
            (
                "aether_node".to_string(),
                crate::schedule::short(&state.node_id),
            ),
            (
                "__meta_aether_node_id".to_string(),
                state.node_id.to_string(),
            ),
        ]
        .into_iter()
        .collect(),
    };
    let Some(mesh) = &state.mesh else {
        groups.push(me(state.admin_addr));
        return json(StatusCode::OK, &groups);
    };
    let members = match mesh.members().await {
        Ok(m) => m,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    for m in members {
        if !matches!(
            m.status,
            aether_mesh::MemberStatus::Alive | aether_mesh::MemberStatus::Suspect
        ) {
            continue;
        }
        let meta = m.metadata.unwrap_or_default();
        let label = |key: &str| meta.label(key).map(str::to_string);
        let target = if m.is_self && !state.admin_addr.ip().is_unspecified() {
            Some(state.admin_addr.to_string())
        } else {
            label(crate::ADMIN_ADDR_LABEL)
        };
        let Some(target) = target else {
            continue;
        };
        let mut labels = std::collections::BTreeMap::new();
        labels.insert("aether_node".to_string(), crate::schedule::short(&m.id));
        labels.insert("__meta_aether_node_id".to_string(), m.id.to_string());
        labels.insert(
            "__meta_aether_state".to_string(),
            m.status.as_str().to_string(),
        );
        if !meta.region.is_empty() {
            labels.insert("__meta_aether_region".to_string(), meta.region.clone());
        }
        if let Some(reach) = label(aether_nat::REACHABILITY_LABEL) {
            labels.insert("__meta_aether_reachability".to_string(), reach);
        }
        groups.push(TargetGroup {
            targets: vec![target],
            labels,
        });
    }
    json(StatusCode::OK, &groups)
}
