//! The components this node runs, and their persistence across restarts.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aether_admin::types::ComponentStatus;
use aether_essence::{Essence, EssenceError};
use aether_identity::{PublicKey, TrustedKeys};
use aether_runtime::{CacheOutcome, FAULTED, LoadError, LoadedComponent, ResponseBody, Runtime};
use arc_swap::ArcSwap;
use http::Response;

use crate::canary::Canary;
use crate::config::NodeConfig;
use crate::router::{RouteConflict, RouteTable, route_text};

/// One deployed component.
pub struct Deployment {
    /// The loaded component.
    pub component: LoadedComponent,
    /// Key that signed its essence.
    pub publisher: PublicKey,
    /// Unix seconds of the deploy.
    pub deployed_at: u64,
    /// Hex SHA-256 of the essence file (names it across the lattice).
    pub essence_hash: String,
    /// Size of the essence file in bytes.
    pub essence_size: u64,
    /// Whether placement puts a replica on this node (always, without a
    /// mesh); otherwise requests go to a host.
    hosted: std::sync::atomic::AtomicBool,
    /// The new version a canary rollout has loaded beside this one, if any.
    canary: arc_swap::ArcSwapOption<Canary>,
}

impl Deployment {
    /// Whether this node hosts a replica (placement put one here).
    pub fn is_hosted(&self) -> bool {
        self.hosted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The canary loaded beside this version, if any.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.load_full()
    }

    /// Loads or drops the canary beside this version.
    pub(crate) fn set_canary(&self, canary: Option<Arc<Canary>>) {
        self.canary.store(canary);
    }

    /// Serves one request here: with this version, or with the canary when there is one and
    /// the request falls in its share; both versions' responses are then measured.
    pub async fn serve<B>(&self, req: hyper::Request<B>) -> Response<ResponseBody>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
        B::Error: Into<aether_runtime::HttpError>,
    {
        let Some(canary) = self.canary.load_full() else {
            let mut resp = self.component.handle(req, false).await;
            resp.headers_mut().remove(FAULTED);
            return resp;
        };
        let (component, stats) = if canary.picks_next() {
            (&canary.component, &canary.canary_stats)
        } else {
            (&self.component, &canary.stable_stats)
        };
        let started = std::time::Instant::now();
        let mut resp = component.handle(req, false).await;
        let faulted = resp.headers_mut().remove(FAULTED).is_some();
        stats.record(resp.status().as_u16(), faulted, started.elapsed());
        resp
    }

    /// Sets whether this node hosts a replica; returns the previous value.
    pub(crate) fn set_hosted(&self, hosted: bool) -> bool {
        self.hosted
            .swap(hosted, std::sync::atomic::Ordering::Relaxed)
    }
}

/// Why a deploy was refused. Nothing changes on the node when it is.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// The essence is malformed, tampered, unsigned or untrusted.
    #[error(transparent)]
    Essence(#[from] EssenceError),
    /// The component cannot run here.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Its routes collide with another deployment's.
    #[error(transparent)]
    Conflict(#[from] RouteConflict),
    /// Persisting it failed (for example a full disk).
    #[error("could not store the essence in {path}: {source}")]
    Storage {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

struct Snapshot {
    by_name: BTreeMap<String, Arc<Deployment>>,
    routes: RouteTable<Deployment>,
}

/// The set of deployments, read lock-free by the ingress and replaced whole
/// by each deploy or removal.
pub struct Deployments {
    runtime: Runtime,
    publishers: TrustedKeys,
    essence_dir: PathBuf,
    current: ArcSwap<Snapshot>,
    writer: tokio::sync::Mutex<()>,
    changed: tokio::sync::Notify,
}

/// Hex SHA-256 of an essence file.
pub fn essence_hash(essence: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(essence))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Deployments {
    pub(crate) fn new(config: &NodeConfig, runtime: Runtime) -> Self {
        Self {
            runtime,
            publishers: config.publishers.clone(),
            essence_dir: config.essence_dir(),
            current: ArcSwap::from_pointee(Snapshot {
                by_name: BTreeMap::new(),
                routes: RouteTable::default(),
            }),
            writer: tokio::sync::Mutex::new(()),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// Notified after every deploy or removal (one waiter: the schedule).
    pub(crate) fn changed(&self) -> &tokio::sync::Notify {
        &self.changed
    }

    /// The runtime components run on.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Opens an essence and checks it against this node's trusted publishers.
    pub(crate) fn verify_essence(
        &self,
        essence: &[u8],
    ) -> Result<aether_essence::VerifiedEssence, EssenceError> {
        Essence::open(essence)?.verify(&self.publishers)
    }

    /// The deployment serving `host` and `path`, if any.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<Arc<Deployment>> {
        self.current.load().routes.lookup(host, path).cloned()
    }

    /// A deployment by name.
    pub fn get(&self, name: &str) -> Option<Arc<Deployment>> {
        self.current.load().by_name.get(name).cloned()
    }

    /// All deployments, by name.
    pub fn list(&self) -> Vec<Arc<Deployment>> {
        self.current.load().by_name.values().cloned().collect()
    }

    /// The deployments whose routes `essence`'s would collide with, one
    /// conflict per deployment. None when the essence is not valid here:
    /// deploying it says why.
    pub(crate) fn route_conflicts(&self, essence: &[u8]) -> Vec<RouteConflict> {
        let Ok(verified) = Essence::open(essence).and_then(|e| e.verify(&self.publishers)) else {
            return Vec::new();
        };
        let name = verified.manifest().name.as_str();
        let routes = verified.manifest().http.routes.as_slice();
        let snapshot = self.current.load();
        let mut found: Vec<RouteConflict> = Vec::new();
        loop {
            let existing = snapshot
                .by_name
                .iter()
                .filter(|(n, _)| n.as_str() != name && !found.iter().any(|c| &c.owner == *n))
                .map(|(n, d)| {
                    (
                        n.as_str(),
                        d.component.manifest().http.routes.as_slice(),
                        Arc::new(()),
                    )
                });
            // The newcomer goes last, so a conflict names the other owner.
            let all = existing.chain(std::iter::once((name, routes, Arc::new(()))));
            match RouteTable::build(all) {
                Ok(_) => return found,
                Err(conflict) => found.push(conflict),
            }
        }
    }

    /// Verifies, loads and starts serving an essence; persists it so a
    /// restart serves it again. Returns whether it replaced a deployment.
    pub async fn deploy(&self, essence: Vec<u8>) -> Result<(Arc<Deployment>, bool), DeployError> {
        let verified = Essence::open(&essence)?.verify(&self.publishers)?;
        let _guard = self.writer.lock().await;
        let publisher = verified.publisher();
        let name = verified.manifest().name.clone();
        let previous = self.get(&name);
        let runtime = self.runtime.clone();
        let logs = previous.as_ref().map(|p| p.component.logs().clone());
        let (manifest, wasm) = verified.into_parts();
        let component =
            tokio::task::spawn_blocking(move || runtime.load_with_logs(&manifest, &wasm, logs))
                .await
                .map_err(|e| {
                    DeployError::Load(LoadError::Invalid {
                        name: name.clone(),
                        reason: format!("loader stopped: {e}"),
                    })
                })??;
        let hash = essence_hash(&essence);
        let deployment = Arc::new(Deployment {
            component,
            publisher,
            deployed_at: now_secs(),
            essence_hash: hash.clone(),
            essence_size: essence.len() as u64,
            hosted: std::sync::atomic::AtomicBool::new(
                previous.as_ref().is_none_or(|p| p.is_hosted()),
            ),
            canary: arc_swap::ArcSwapOption::empty(),
        });
        let mut by_name = self.current.load().by_name.clone();
        by_name.insert(name.clone(), deployment.clone());
        let routes = build_routes(&by_name, Some(&name))?;
        self.persist(&name, &essence)?;
        self.keep_as(&hash, &essence, Some(&self.essence_path(&name)))?;
        self.current.store(Arc::new(Snapshot { by_name, routes }));
        self.changed.notify_one();
        tracing::info!(
            component = %name,
            hash = %deployment.component.content_hash(),
            "deployed ({} ms activation)",
            deployment.component.activation_time().as_millis()
        );
        Ok((deployment, previous.is_some()))
    }

    /// Stops serving `name` and forgets it across restarts.
    pub async fn remove(&self, name: &str) -> Result<bool, DeployError> {
        let _guard = self.writer.lock().await;
        let mut by_name = self.current.load().by_name.clone();
        if by_name.remove(name).is_none() {
            return Ok(false);
        }
        let routes = build_routes(&by_name, None)?;
        let path = self.essence_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DeployError::Storage { path, source }),
        }
        self.current.store(Arc::new(Snapshot { by_name, routes }));
        self.changed.notify_one();
        tracing::info!(component = %name, "removed");
        Ok(true)
    }

    /// Redeploys every essence stored before a restart; returns how many.
    pub(crate) async fn restore(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.essence_dir) else {
            return 0;
        };
        let mut restored = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("essence") {
                continue;
            }
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "cannot read stored essence: {e}");
                    continue;
                }
            };
            match self.deploy(bytes).await {
                Ok(_) => restored += 1,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "stored essence not restored: {e}")
                }
            }
        }
        restored
    }

    /// `len` bytes of `name`'s stored essence from `offset`, if `name` is
    /// deployed here with the essence `hash` (peers fetch essences this way).
    pub fn essence_chunk(
        &self,
        name: &str,
        hash: &str,
        offset: u64,
        len: usize,
    ) -> Option<(Vec<u8>, u64)> {
        use std::io::{Read as _, Seek as _};
        let path = match self.get(name) {
            Some(d) if d.essence_hash == hash => self.essence_path(name),
            _ => self.kept_path(hash)?,
        };
        let mut f = std::fs::File::open(path).ok()?;
        let size = f.metadata().ok()?.len();
        if offset > size {
            return None;
        }
        f.seek(std::io::SeekFrom::Start(offset)).ok()?;
        let mut buf = vec![0; len.min((size - offset) as usize)];
        f.read_exact(&mut buf).ok()?;
        Some((buf, size))
    }

    /// Keeps a copy of an essence under its hash (`DATA_DIR/essences/by-hash/`), so the
    /// versions a rollout stages, and earlier ones to roll back to, can be served to peers and
    /// deployed again. `hash` is the caller's check of the bytes; kept as a second link to
    /// `linked_from` (the same bytes already on disk) when given and possible, else as a copy.
    pub(crate) fn keep_as(
        &self,
        hash: &str,
        essence: &[u8],
        linked_from: Option<&std::path::Path>,
    ) -> Result<(), DeployError> {
        let dir = self.essence_dir.join("by-hash");
        let path = dir.join(format!("{hash}.essence"));
        if path.exists() {
            return Ok(());
        }
        let storage = |source| DeployError::Storage {
            path: path.clone(),
            source,
        };
        if let Some(from) = linked_from {
            std::fs::create_dir_all(&dir).map_err(storage)?;
            if std::fs::hard_link(from, &path).is_ok() {
                return Ok(());
            }
        }
        write_atomically(&dir, &path, essence).map_err(storage)
    }

    /// The kept essence with this hash, checked against it.
    pub(crate) fn kept_essence(&self, hash: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.kept_path(hash)?).ok()?;
        (essence_hash(&bytes) == hash).then_some(bytes)
    }

    fn kept_path(&self, hash: &str) -> Option<PathBuf> {
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let path = self
            .essence_dir
            .join("by-hash")
            .join(format!("{hash}.essence"));
        path.exists().then_some(path)
    }

    fn essence_path(&self, name: &str) -> PathBuf {
        self.essence_dir.join(format!("{name}.essence"))
    }

    fn persist(&self, name: &str, essence: &[u8]) -> Result<(), DeployError> {
        let path = self.essence_path(name);
        let storage = |source| DeployError::Storage {
            path: path.clone(),
            source,
        };
        write_atomically(&self.essence_dir, &path, essence).map_err(storage)
    }

    /// Status of one deployment for the admin API.
    pub fn status(&self, d: &Deployment) -> ComponentStatus {
        let c = &d.component;
        let m = c.manifest();
        let requests = self.runtime.metrics().requests_for(c.name());
        ComponentStatus {
            name: c.name().to_string(),
            version: m.version.clone(),
            content_hash: c.content_hash().to_string(),
            publisher: d.publisher.to_string(),
            routes: m.http.routes.iter().map(route_text).collect(),
            state: if !d.is_hosted() {
                "standby"
            } else if c.is_active() {
                "running"
            } else {
                "scaled-to-zero"
            }
            .into(),
            instances: c.running_instances(),
            max_concurrency: m.limits.max_concurrency,
            requests,
            activation_ms: c.activation_time().as_secs_f64() * 1000.0,
            compile_cache: match c.cache_outcome() {
                CacheOutcome::Hit => "hit",
                CacheOutcome::Miss => "miss",
                CacheOutcome::Uncached => "uncached",
            }
            .into(),
            deployed_at: d.deployed_at,
            placement: None,
            virtual_address: None,
            virtual_address_unavailable: None,
        }
    }
}

/// Writes `bytes` to `path` in `dir` through a temporary file, synced, then renamed.
fn write_atomically(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Builds the route table; `newcomer` goes last so a conflict names the
/// deployment that already had the route.
fn build_routes(
    by_name: &BTreeMap<String, Arc<Deployment>>,
    newcomer: Option<&str>,
) -> Result<RouteTable<Deployment>, RouteConflict> {
    let existing = by_name.iter().filter(|(n, _)| Some(n.as_str()) != newcomer);
    let new = by_name.iter().filter(|(n, _)| Some(n.as_str()) == newcomer);
    RouteTable::build(existing.chain(new).map(|(name, d)| {
        (
            name.as_str(),
            d.component.manifest().http.routes.as_slice(),
            d.clone(),
        )
    }))
}
