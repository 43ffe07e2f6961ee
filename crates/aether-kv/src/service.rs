//! The state service of a node: one thread owns the sans-IO core and the
//! store; the rest of the node talks to it through a [`KvHandle`].
//!
//! The thread runs its own single-threaded tokio runtime, so the store's
//! fsyncs never stall the node's other tasks. Messages from peers arrive on
//! the mesh channel [`aether_mesh::CHANNEL_STATE`]; what the core asks to
//! send goes out on the same channel through the mesh's endpoint.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aether_identity::{PublicKey, SecretKey};
use aether_mesh::{CHANNEL_STATE, MemberStatus, MeshHandle};
use aether_state::{
    Entry, Hlc, NodeId, OriginRefused, Origins, Output, SignedUpdate, StateCore, SyncConfig,
    SyncCounters, SyncMessage,
};
use bytes::Bytes;
use rand::seq::SliceRandom as _;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::metrics::KvMetrics;
use crate::store::{Store, StoreError};

/// Size bounds of the state, the same on every node.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest key, in bytes. Default 1 KiB.
    pub max_key_bytes: usize,
    /// Largest value, in bytes. Default 512 KiB.
    pub max_value_bytes: usize,
    /// Most bytes of live values in one bucket. Default 64 MiB.
    pub max_bucket_bytes: u64,
    /// Writes are refused while the disk holding the store has less free
    /// space than this. Default 16 MiB.
    pub min_free_disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 1024,
            max_value_bytes: 512 * 1024,
            max_bucket_bytes: 64 << 20,
            min_free_disk_bytes: 16 << 20,
        }
    }
}

/// Settings of the state service.
#[derive(Debug, Clone)]
pub struct KvConfig {
    /// The store file (`DATA_DIR/state.redb`).
    pub path: PathBuf,
    /// Size bounds.
    pub limits: Limits,
    /// Core settings (pending buffer, message bounds).
    pub sync: SyncConfig,
    /// Peers each new update is pushed to. Default 3.
    pub push_fanout: usize,
    /// How often an anti-entropy round starts with a random member. Default 2 s.
    pub anti_entropy_interval: Duration,
    /// A tombstone is collected once it is at least this old here **and**
    /// every live member has been found in sync with this node since it
    /// arrived. Default 1 h.
    pub tombstone_grace: Duration,
}

impl KvConfig {
    /// Defaults for a store at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            limits: Limits::default(),
            sync: SyncConfig {
                verify_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
                ..SyncConfig::default()
            },
            push_fanout: 3,
            anti_entropy_interval: Duration::from_secs(2),
            tombstone_grace: Duration::from_secs(3600),
        }
    }
}

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The store failed (disk full, I/O).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The write breaks a size bound or names an invalid bucket or key.
    #[error("{0}")]
    Invalid(String),
    /// The service has stopped.
    #[error("the state service has stopped")]
    Stopped,
}

/// One change delivered to a watcher.
#[derive(Debug, Clone)]
pub struct Change {
    /// The update that made it (its value is the entry's new value, or a
    /// tombstone).
    pub update: SignedUpdate,
}

/// A snapshot of the service's counters.
#[derive(Debug, Clone, Default)]
pub struct KvStats {
    /// The core's counters.
    pub sync: SyncCounters,
    /// Entries (tombstones included).
    pub entries: usize,
    /// Updates waiting for their predecessors.
    pub pending: usize,
    /// Bytes of those.
    pub pending_bytes: usize,
    /// Updates that could not be stored (the disk failed).
    pub store_failures: u64,
    /// The state digest (equal on converged nodes).
    pub digest: [u8; 32],
}

enum Command {
    Get(String, Bytes, oneshot::Sender<Option<Entry>>),
    List(String, Bytes, usize, oneshot::Sender<Vec<Entry>>),
    Put(
        String,
        Bytes,
        Option<Bytes>,
        oneshot::Sender<Result<Entry, KvError>>,
    ),
    History(
        String,
        Bytes,
        oneshot::Sender<Result<Vec<SignedUpdate>, KvError>>,
    ),
    Watch(String, Bytes, mpsc::Sender<Change>),
    Stats(oneshot::Sender<KvStats>),
}

/// Control of the state service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct KvHandle {
    commands: mpsc::Sender<Command>,
    metrics: Arc<KvMetrics>,
}

/// Starts the state service.
pub struct Kv;

impl Kv {
    /// Opens the store, replays it into the core and starts the service
    /// thread. With a mesh, the state is replicated with the other members;
    /// without, it is this node's alone. Must be called inside a tokio runtime.
    pub async fn start(
        config: KvConfig,
        node_key: SecretKey,
        mesh: Option<MeshHandle>,
    ) -> Result<KvHandle, KvError> {
        let path = config.path.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&path))
            .await
            .map_err(|_| KvError::Stopped)??;
        let store = Arc::new(store);
        let loaded = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.load_all())
                .await
                .map_err(|_| KvError::Stopped)??
        };
        let mut core = StateCore::new(
            config.sync.clone(),
            Hlc::new(aether_state::DEFAULT_MAX_FORWARD_SKEW_MS),
        );
        let restored = loaded.len();
        for update in loaded {
            core.restore(update);
        }
        let incoming = match &mesh {
            Some(m) => Some(
                m.subscribe(CHANNEL_STATE, 4096)
                    .await
                    .map_err(|e| KvError::Invalid(e.to_string()))?,
            ),
            None => None,
        };
        tracing::info!(
            restored,
            entries = core.len(),
            path = %config.path.display(),
            "lattice state loaded"
        );
        let (tx, rx) = mpsc::channel(1024);
        let runtime = tokio::runtime::Handle::current();
        let me = node_key.public();
        let (bucket_bytes, entry_bytes) = sizes(&core);
        let started_ms = now_ms();
        let tombstones = core
            .entries()
            .filter(|e| e.value().is_none())
            .map(|e| {
                let u = e.winner();
                ((u.bucket().to_string(), u.key().clone()), started_ms)
            })
            .collect();
        let metrics = Arc::new(KvMetrics::default());
        let service = Service {
            origins: MemberOrigins::new(me),
            bucket_bytes,
            entry_bytes,
            config,
            core,
            store,
            node_key,
            mesh,
            runtime,
            peers: HashMap::new(),
            watchers: Vec::new(),
            sends: Arc::new(Semaphore::new(256)),
            store_failures: 0,
            metrics: metrics.clone(),
            tombstones,
            in_sync: HashMap::new(),
            started_ms,
        };
        std::thread::Builder::new()
            .name("aether-state".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start the state service: {e}");
                        return;
                    }
                };
                rt.block_on(service.run(rx, incoming));
            })
            .map_err(|e| KvError::Invalid(format!("cannot start the state thread: {e}")))?;
        Ok(KvHandle {
            commands: tx,
            metrics,
        })
    }
}

/// Live bytes per bucket and per entry.
type Sizes = (HashMap<String, u64>, HashMap<(String, Bytes), u64>);

fn sizes(core: &StateCore) -> Sizes {
    let mut buckets = HashMap::new();
    let mut entries = HashMap::new();
    for entry in core.entries() {
        let u = entry.winner();
        let size = entry_size(u);
        *buckets.entry(u.bucket().to_string()).or_insert(0) += size;
        entries.insert((u.bucket().to_string(), u.key().clone()), size);
    }
    (buckets, entries)
}

fn entry_size(u: &SignedUpdate) -> u64 {
    (u.key().len() + u.value().map_or(0, |v| v.len())) as u64
}

impl KvHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, KvError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| KvError::Stopped)?;
        rx.await.map_err(|_| KvError::Stopped)
    }

    /// The state's metrics (register them once with [`KvMetrics::register`]).
    pub fn metrics(&self) -> &Arc<KvMetrics> {
        &self.metrics
    }

    /// The entry at `bucket`/`key` on this node (a tombstone when deleted).
    pub async fn get(&self, bucket: &str, key: &[u8]) -> Result<Option<Entry>, KvError> {
        let (b, k) = (bucket.to_string(), Bytes::copy_from_slice(key));
        self.ask(|tx| Command::Get(b, k, tx)).await
    }

    /// Up to `limit` live entries of `bucket` whose key starts with `prefix`, in key order.
    pub async fn list(
        &self,
        bucket: &str,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<Entry>, KvError> {
        let (b, p) = (bucket.to_string(), Bytes::copy_from_slice(prefix));
        self.ask(|tx| Command::List(b, p, limit, tx)).await
    }

    /// Writes `value` (`None` deletes). Returns once the update is durable
    /// on this node; other nodes see it eventually (read-your-writes here).
    pub async fn put(
        &self,
        bucket: &str,
        key: &[u8],
        value: Option<Bytes>,
    ) -> Result<Entry, KvError> {
        let (b, k) = (bucket.to_string(), Bytes::copy_from_slice(key));
        self.ask(|tx| Command::Put(b, k, value, tx)).await?
    }

    /// Every stored update of one entry, oldest first.
    pub async fn history(&self, bucket: &str, key: &[u8]) -> Result<Vec<SignedUpdate>, KvError> {
        let (b, k) = (bucket.to_string(), Bytes::copy_from_slice(key));
        self.ask(|tx| Command::History(b, k, tx)).await?
    }

    /// Changes to `bucket` entries whose key starts with `prefix`, in the
    /// order this node applies them. A watcher that falls `capacity` changes
    /// behind is dropped (its receiver ends); read the state again and watch
    /// anew.
    pub async fn watch(
        &self,
        bucket: &str,
        prefix: &[u8],
        capacity: usize,
    ) -> Result<mpsc::Receiver<Change>, KvError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.commands
            .send(Command::Watch(
                bucket.to_string(),
                Bytes::copy_from_slice(prefix),
                tx,
            ))
            .await
            .map_err(|_| KvError::Stopped)?;
        Ok(rx)
    }

    /// Counters and the state digest.
    pub async fn stats(&self) -> Result<KvStats, KvError> {
        self.ask(Command::Stats).await
    }
}

/// The origins whose updates are accepted: the nodes the admission ledger
/// admits, plus the members heard of, minus the revoked.
struct MemberOrigins {
    me: PublicKey,
    /// Admitted keys, decoded once (a key's decompression costs about as
    /// much as a fifth of a signature check).
    admitted: HashMap<[u8; 32], PublicKey>,
    revoked: HashSet<[u8; 32]>,
}

impl MemberOrigins {
    fn new(me: PublicKey) -> Self {
        let mut admitted = HashMap::new();
        admitted.insert(*me.as_bytes(), me);
        Self {
            me,
            admitted,
            revoked: HashSet::new(),
        }
    }

    fn refresh(&mut self, mesh: &MeshHandle) {
        let endpoint = mesh.endpoint();
        let ledger = endpoint
            .ledger()
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .admitted_nodes();
        self.admitted = ledger.iter().map(|k| (*k.as_bytes(), *k)).collect();
        self.admitted.insert(*self.me.as_bytes(), self.me);
        let revocations = endpoint
            .revocations()
            .read()
            .unwrap_or_else(|p| p.into_inner());
        self.revoked = revocations.iter().map(|r| *r.node().as_bytes()).collect();
    }
}

impl Origins for MemberOrigins {
    fn key(&self, origin: &NodeId) -> Result<PublicKey, OriginRefused> {
        if self.revoked.contains(&origin.0) {
            return Err(OriginRefused::Revoked);
        }
        self.admitted
            .get(&origin.0)
            .copied()
            .ok_or(OriginRefused::Unknown)
    }
}

struct Watcher {
    bucket: String,
    prefix: Bytes,
    tx: mpsc::Sender<Change>,
}

struct Service {
    config: KvConfig,
    core: StateCore,
    store: Arc<Store>,
    node_key: SecretKey,
    mesh: Option<MeshHandle>,
    runtime: tokio::runtime::Handle,
    origins: MemberOrigins,
    /// Live members: id → mesh address.
    peers: HashMap<[u8; 32], (PublicKey, SocketAddr)>,
    watchers: Vec<Watcher>,
    sends: Arc<Semaphore>,
    bucket_bytes: HashMap<String, u64>,
    entry_bytes: HashMap<(String, Bytes), u64>,
    store_failures: u64,
    metrics: Arc<KvMetrics>,
    /// When each tombstone arrived here (ms; restored ones: the start).
    tombstones: HashMap<(String, Bytes), u64>,
    /// When each peer was last found holding exactly this node's state.
    in_sync: HashMap<[u8; 32], u64>,
    /// When the service started (ms).
    started_ms: u64,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Free bytes on the file system holding `path`.
fn free_disk_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = path.parent().unwrap_or(path);
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `stat` a valid out pointer.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// The peers an update from `origin` is pushed to: `fanout` of `peers`
/// chosen at random, leaving out the origin, which has the update. A node
/// that receives a write directly from its writer therefore pushes it on
/// only to the others; in a lattice of `fanout + 2` nodes or fewer, every
/// node gets every write within two hops, whatever the random choices.
fn push_targets(
    peers: &[[u8; 32]],
    origin: &[u8; 32],
    fanout: usize,
    rng: &mut impl rand::Rng,
) -> Vec<[u8; 32]> {
    let mut targets: Vec<[u8; 32]> = peers.iter().filter(|p| *p != origin).copied().collect();
    targets.shuffle(rng);
    targets.truncate(fanout);
    targets
}

impl Service {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut incoming: Option<mpsc::Receiver<aether_transport::Message>>,
    ) {
        self.refresh_members().await;
        let mut anti_entropy = tokio::time::interval(self.config.anti_entropy_interval);
        anti_entropy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refresh = tokio::time::interval(Duration::from_secs(1));
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.drain();
            let wait = self
                .core
                .poll_timeout()
                .map_or(Duration::from_secs(1), |t| {
                    Duration::from_millis(t.saturating_sub(now_ms()))
                });
            tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => break,
                },
                message = async {
                    match incoming.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => match message {
                    Some(m) => self.message(m),
                    None => incoming = None,
                },
                _ = tokio::time::sleep(wait) => self.core.handle_timeout(now_ms()),
                _ = anti_entropy.tick() => self.anti_entropy(),
                _ = refresh.tick() => {
                    self.refresh_members().await;
                    self.collect_tombstones();
                    let now = now_ms();
                    let oldest = self
                        .peers
                        .keys()
                        .map(|p| self.in_sync.get(p).copied().unwrap_or(self.started_ms))
                        .min()
                        .unwrap_or(now);
                    self.metrics
                        .set_convergence_lag(now.saturating_sub(oldest) as f64 / 1000.0);
                    self.metrics.update(
                        self.core.counters(),
                        self.core.len(),
                        self.core.pending_len(),
                        self.core.pending_bytes(),
                        self.store_failures,
                    );
                }
            }
        }
    }

    async fn refresh_members(&mut self) {
        let Some(mesh) = self.mesh.clone() else {
            return;
        };
        self.origins.refresh(&mesh);
        if let Ok(members) = mesh.members().await {
            self.peers = members
                .iter()
                .filter(|m| {
                    !m.is_self && matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect)
                })
                .map(|m| (*m.id.as_bytes(), (m.id, m.mesh_addr)))
                .collect();
        }
    }

    fn message(&mut self, message: aether_transport::Message) {
        let from = NodeId(*message.from.as_bytes());
        if !self.origins.admitted.contains_key(&from.0)
            && let Some(mesh) = &self.mesh
        {
            // A peer the transport just admitted: learn it before judging its updates.
            self.origins.refresh(mesh);
        }
        let in_sync_before = self.core.counters().ae_in_sync;
        let now = now_ms();
        if let Err(e) = self
            .core
            .receive_bytes(from, &message.payload, &self.origins, now)
        {
            tracing::debug!(peer = %message.from, "state message refused: {e}");
        }
        if self.core.counters().ae_in_sync > in_sync_before {
            // The peer's digest equals ours: it holds everything we hold.
            self.in_sync.insert(from.0, now);
        }
    }

    fn anti_entropy(&mut self) {
        let peers: Vec<[u8; 32]> = self.peers.keys().copied().collect();
        if let Some(peer) = peers.choose(&mut rand::thread_rng()) {
            self.core.start_anti_entropy(NodeId(*peer), now_ms());
        }
    }

    /// Handles everything the core produced: sends, and applied updates
    /// (stored in one transaction, then shown to watchers, then pushed on).
    fn drain(&mut self) {
        let mut applied = Vec::new();
        let mut forward = Vec::new();
        while let Some(output) = self.core.poll_output() {
            match output {
                Output::Send { to, msg } => self.send(&to.0, &msg),
                Output::Applied {
                    update, forward: f, ..
                } => {
                    if f {
                        forward.push(update.clone());
                    }
                    applied.push(update);
                }
            }
        }
        if applied.is_empty() {
            return;
        }
        if let Err(e) = self.store.append(&applied) {
            self.store_failures += applied.len() as u64;
            tracing::error!(
                "{e}: {} received update(s) are served from memory only until anti-entropy brings them again after a restart",
                applied.len()
            );
        }
        for update in &applied {
            self.account(update.bucket(), update.key());
            self.notify(update);
        }
        self.push(forward);
    }

    /// Collects the tombstones every live member has seen (see
    /// [`KvConfig::tombstone_grace`]): from the core, then from the store.
    fn collect_tombstones(&mut self) {
        let now = now_ms();
        let grace = self.config.tombstone_grace.as_millis() as u64;
        let oldest_sync = self
            .peers
            .keys()
            .map(|p| self.in_sync.get(p).copied().unwrap_or(0))
            .min()
            .unwrap_or(u64::MAX);
        let ready = |arrived: u64| arrived.saturating_add(grace) <= now && arrived < oldest_sync;
        if !self.tombstones.values().any(|a| ready(*a)) {
            return;
        }
        let tombstones = &self.tombstones;
        let collected = self.core.collect_tombstones(|u| {
            tombstones
                .get(&(u.bucket().to_string(), u.key().clone()))
                .is_some_and(|a| ready(*a))
        });
        for u in collected {
            let slot = (u.bucket().to_string(), u.key().clone());
            self.tombstones.remove(&slot);
            self.entry_bytes.remove(&slot);
            if let Err(e) = self.store.forget(u.bucket(), u.key()) {
                tracing::warn!("cannot remove a collected tombstone's history: {e}");
            }
        }
    }

    /// Brings the size accounting of one entry up to date.
    fn account(&mut self, bucket: &str, key: &[u8]) {
        let now = self
            .core
            .get(bucket, key)
            .map_or(0, |e| entry_size(e.winner()));
        let old = self
            .entry_bytes
            .insert((bucket.to_string(), Bytes::copy_from_slice(key)), now)
            .unwrap_or(0);
        let total = self.bucket_bytes.entry(bucket.to_string()).or_insert(0);
        *total = total.saturating_sub(old) + now;
        let slot = (bucket.to_string(), Bytes::copy_from_slice(key));
        match self.core.get(bucket, key) {
            Some(e) if e.value().is_none() => {
                self.tombstones.insert(slot, now_ms());
            }
            _ => {
                self.tombstones.remove(&slot);
            }
        }
    }

    fn notify(&mut self, update: &SignedUpdate) {
        self.watchers.retain(|w| {
            if w.bucket != update.bucket() || !update.key().starts_with(&w.prefix) {
                return !w.tx.is_closed();
            }
            w.tx.try_send(Change {
                update: update.clone(),
            })
            .is_ok()
        });
    }

    /// Pushes `updates` to `push_fanout` random live peers, never back to
    /// an update's origin (see [`push_targets`]).
    fn push(&mut self, updates: Vec<SignedUpdate>) {
        if updates.is_empty() {
            return;
        }
        let mut by_origin: BTreeMap<[u8; 32], Vec<SignedUpdate>> = BTreeMap::new();
        for u in updates {
            by_origin.entry(u.origin().0).or_default().push(u);
        }
        let peers: Vec<[u8; 32]> = self.peers.keys().copied().collect();
        for (origin, updates) in by_origin {
            let targets = push_targets(
                &peers,
                &origin,
                self.config.push_fanout,
                &mut rand::thread_rng(),
            );
            if targets.is_empty() {
                continue;
            }
            for bytes in self.push_messages(updates) {
                for peer in &targets {
                    self.send_bytes(peer, bytes.clone());
                }
            }
        }
    }

    /// `updates` as Push messages, each within the transport's frame bound,
    /// encoded once for every peer.
    fn push_messages(&self, updates: Vec<SignedUpdate>) -> Vec<Bytes> {
        let max = self.config.sync.max_message_bytes;
        let mut batches: Vec<Vec<SignedUpdate>> = vec![Vec::new()];
        let mut size = 16;
        for u in updates {
            let len = u.encoded_len() + 8;
            if size + len > max
                && let Some(last) = batches.last()
                && !last.is_empty()
            {
                batches.push(Vec::new());
                size = 16;
            }
            size += len;
            if let Some(last) = batches.last_mut() {
                last.push(u);
            }
        }
        batches
            .into_iter()
            .map(|batch| Bytes::from(SyncMessage::Push(batch).encode()))
            .collect()
    }

    fn send(&self, to: &[u8; 32], msg: &SyncMessage) {
        if self.peers.contains_key(to) {
            self.send_bytes(to, Bytes::from(msg.encode()));
        }
    }

    fn send_bytes(&self, to: &[u8; 32], bytes: Bytes) {
        let (Some(mesh), Some((node, addr))) = (&self.mesh, self.peers.get(to).copied()) else {
            return;
        };
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            return;
        };
        let endpoint = mesh.endpoint().clone();
        self.runtime.spawn(async move {
            let _permit = permit;
            match endpoint.connect(addr, Some(node)).await {
                Ok(node) => {
                    if let Err(e) = endpoint.send(&node, CHANNEL_STATE, &bytes).await {
                        tracing::debug!(%addr, "state message not sent: {e}");
                    }
                }
                Err(e) => tracing::debug!(%addr, "state peer unreachable: {e}"),
            }
        });
    }

    fn check_write(&self, bucket: &str, key: &[u8], value: Option<&Bytes>) -> Result<(), KvError> {
        let limits = &self.config.limits;
        if key.is_empty() {
            return Err(KvError::Invalid("the key is empty".into()));
        }
        if key.len() > limits.max_key_bytes {
            return Err(KvError::Invalid(format!(
                "the key is {} bytes, over the limit of {} bytes",
                key.len(),
                limits.max_key_bytes
            )));
        }
        if let Some(v) = value
            && v.len() > limits.max_value_bytes
        {
            return Err(KvError::Invalid(format!(
                "the value is {} bytes, over the limit of {} bytes per entry",
                v.len(),
                limits.max_value_bytes
            )));
        }
        let old = self
            .core
            .get(bucket, key)
            .map_or(0, |e| entry_size(e.winner()));
        let new = (key.len() + value.map_or(0, |v| v.len())) as u64;
        let total = self.bucket_bytes.get(bucket).copied().unwrap_or(0);
        if new > old && total - old.min(total) + new > limits.max_bucket_bytes {
            return Err(KvError::Invalid(format!(
                "bucket `{bucket}` would hold {} bytes, over its limit of {} bytes",
                total - old.min(total) + new,
                limits.max_bucket_bytes
            )));
        }
        if let Some(free) = free_disk_bytes(self.store.path())
            && free < limits.min_free_disk_bytes
        {
            return Err(KvError::Store(StoreError::DiskFull {
                path: self.store.path().to_path_buf(),
            }));
        }
        Ok(())
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Get(bucket, key, reply) => {
                let _ = reply.send(self.core.get(&bucket, &key).cloned());
            }
            Command::List(bucket, prefix, limit, reply) => {
                let mut out: Vec<Entry> = self
                    .core
                    .entries()
                    .filter(|e| {
                        let u = e.winner();
                        u.bucket() == bucket && u.key().starts_with(&prefix) && u.value().is_some()
                    })
                    .cloned()
                    .collect();
                out.sort_by(|a, b| a.winner().key().cmp(b.winner().key()));
                out.truncate(limit);
                let _ = reply.send(out);
            }
            Command::Put(bucket, key, value, reply) => {
                let _ = reply.send(self.put(&bucket, &key, value));
            }
            Command::History(bucket, key, reply) => {
                let _ = reply.send(self.store.history(&bucket, &key).map_err(Into::into));
            }
            Command::Watch(bucket, prefix, tx) => {
                self.watchers.push(Watcher { bucket, prefix, tx })
            }
            Command::Stats(reply) => {
                let _ = reply.send(KvStats {
                    sync: *self.core.counters(),
                    entries: self.core.len(),
                    pending: self.core.pending_len(),
                    pending_bytes: self.core.pending_bytes(),
                    store_failures: self.store_failures,
                    digest: self.core.digest(),
                });
            }
        }
    }

    fn put(&mut self, bucket: &str, key: &[u8], value: Option<Bytes>) -> Result<Entry, KvError> {
        self.check_write(bucket, key, value.as_ref())?;
        let update = self
            .core
            .write(&self.node_key, bucket, key, value, now_ms())
            .map_err(|e| KvError::Invalid(e.to_string()))?;
        self.store.append(std::slice::from_ref(&update))?;
        self.account(bucket, key);
        self.notify(&update);
        self.push(vec![update]);
        self.core
            .get(bucket, key)
            .cloned()
            .ok_or_else(|| KvError::Invalid("the write was not applied".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::push_targets;
    use rand::SeedableRng as _;

    #[test]
    fn push_never_goes_back_to_the_origin_and_reaches_everyone_else_in_small_lattices() {
        let peers: Vec<[u8; 32]> = (1..=4u8).map(|i| [i; 32]).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..200 {
            // A node of five that got a write from node 1 pushes it to the other three.
            let mut targets = push_targets(&peers, &[1; 32], 3, &mut rng);
            targets.sort();
            assert_eq!(targets, vec![[2; 32], [3; 32], [4; 32]]);
            // Its own write: three of the four.
            let own = push_targets(&peers, &[9; 32], 3, &mut rng);
            assert_eq!(own.len(), 3);
            assert!(own.iter().all(|p| peers.contains(p)));
        }
        assert!(push_targets(&[[1; 32]], &[1; 32], 3, &mut rng).is_empty());
    }
}
