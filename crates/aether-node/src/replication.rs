//! Deployments replicated through the lattice state: deploy once, to any
//! node, and every node of the lattice runs the component.
//!
//! A deploy (or removal) accepted on a node is recorded in the state bucket
//! [`DEPLOYMENTS_BUCKET`]: key = component name, value = a JSON [`Record`]
//! naming the essence by its SHA-256. Every node watches the bucket; for a
//! record whose essence it does not run, it fetches the essence's bytes from
//! a member that runs it (mesh channel [`CHANNEL_ESSENCES`], in chunks that
//! fit the transport's frames), checks the hash, then deploys it like any
//! essence (publisher signature, trust, limits). A tombstone removes the
//! component everywhere.
//!
//! Every node holds every deployment (so any node can route to it and take
//! over a replica from its compile cache); placement (`schedule`) decides
//! which nodes load and serve it. Fetches run off the watch loop, one per
//! deployment at a time, and the whole bucket is applied again every
//! [`RESYNC`], which retries essences no member could send.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_kv::KvHandle;
use aether_mesh::{MemberStatus, MeshHandle};
use bytes::Bytes;
use rand::seq::SliceRandom as _;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::deployments::{Deployment, Deployments, essence_hash};

/// State bucket of the lattice's deployments.
pub const DEPLOYMENTS_BUCKET: &str = "sys:deployments";
/// Mesh channel on which essences are fetched.
pub const CHANNEL_ESSENCES: u8 = 3;
/// Bytes of essence per message (well under the 1 MiB frame bound).
const CHUNK: usize = 512 * 1024;
/// Largest essence fetched from a peer.
const MAX_ESSENCE: u64 = 256 << 20;
/// How often the whole bucket is applied again (retrying essences that
/// could not be fetched).
const RESYNC: Duration = Duration::from_secs(30);
/// How long one chunk may take before the fetch tries another member.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

const TAG_REQUEST: u8 = 1;
const TAG_CHUNK: u8 = 2;
const TAG_MISSING: u8 = 3;

/// What the state holds for one deployment.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    /// Component name.
    pub name: String,
    /// Hex SHA-256 of the essence file.
    pub essence_hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// The publisher key that signed it.
    pub publisher: String,
    /// Unix seconds of the deploy.
    pub deployed_at: u64,
}

/// The lattice's record of deployment `name`, if it has a live one.
pub(crate) async fn lattice_record(kv: &KvHandle, name: &str) -> Option<Record> {
    let entry = kv.get(DEPLOYMENTS_BUCKET, name.as_bytes()).await.ok()??;
    serde_json::from_slice(entry.value()?).ok()
}

type Pending = Mutex<HashMap<(String, u64), oneshot::Sender<Reply>>>;

enum Reply {
    Chunk { total: u64, bytes: Bytes },
    Missing,
}

/// The replication of one node.
pub(crate) struct Replication {
    kv: KvHandle,
    mesh: MeshHandle,
    deployments: Arc<Deployments>,
    pending: Pending,
    /// Deployments whose essence is being fetched.
    fetching: Mutex<std::collections::HashSet<String>>,
    /// Held while a fetched deployment's route claims are settled and it
    /// is deployed, so two arriving together are judged one after the other.
    applying: tokio::sync::Mutex<()>,
}

fn encode_head(tag: u8, name: &str, hash: &str, offset: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 2 + name.len() + 64 + 8);
    out.push(tag);
    out.extend_from_slice(&(name.len() as u16).to_be_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
    out
}

/// Decodes `tag, name, hash, offset` and returns the rest.
fn decode_head(bytes: &[u8]) -> Option<(u8, String, String, u64, &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let rest = rest.get(2..)?;
    if len > 128 {
        return None;
    }
    let name = std::str::from_utf8(rest.get(..len)?).ok()?.to_string();
    let rest = rest.get(len..)?;
    let hash = std::str::from_utf8(rest.get(..64)?).ok()?.to_string();
    if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let rest = rest.get(64..)?;
    let offset = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?);
    Some((tag, name, hash, offset, rest.get(8..)?))
}

impl Replication {
    /// Starts serving essences to peers and following the deployments
    /// bucket. Must be called inside a tokio runtime.
    pub(crate) async fn start(
        kv: KvHandle,
        mesh: MeshHandle,
        deployments: Arc<Deployments>,
    ) -> anyhow::Result<Arc<Self>> {
        let mut incoming = mesh.subscribe(CHANNEL_ESSENCES, 256).await?;
        let watch = kv.watch(DEPLOYMENTS_BUCKET, b"", 4096).await?;
        let this = Arc::new(Self {
            kv,
            mesh,
            deployments,
            pending: Mutex::new(HashMap::new()),
            fetching: Mutex::new(std::collections::HashSet::new()),
            applying: tokio::sync::Mutex::new(()),
        });
        let server = this.clone();
        tokio::spawn(async move {
            while let Some(message) = incoming.recv().await {
                server.on_message(message).await;
            }
        });
        let follower = this.clone();
        tokio::spawn(async move { follower.follow(watch).await });
        Ok(this)
    }

    /// Records a deploy accepted on this node, unless a deployment from the
    /// lattice displaced it meanwhile.
    pub(crate) async fn published(&self, d: &Deployment) {
        let name = d.component.name().to_string();
        if self
            .deployments
            .get(&name)
            .is_none_or(|now| now.essence_hash != d.essence_hash)
        {
            tracing::warn!(component = %name, "not recorded in the lattice: another deployment took its route meanwhile");
            return;
        }
        let record = Record {
            name: name.clone(),
            essence_hash: d.essence_hash.clone(),
            size: d.essence_size,
            publisher: d.publisher.to_string(),
            deployed_at: d.deployed_at,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        if let Err(e) = self
            .kv
            .put(
                DEPLOYMENTS_BUCKET,
                name.as_bytes(),
                Some(Bytes::from(value)),
            )
            .await
        {
            tracing::warn!(component = %name, "cannot record the deployment in the lattice state: {e}");
        }
    }

    /// Records a removal accepted on this node.
    pub(crate) async fn removed(&self, name: &str) {
        if let Err(e) = self.kv.put(DEPLOYMENTS_BUCKET, name.as_bytes(), None).await {
            tracing::warn!(component = %name, "cannot record the removal in the lattice state: {e}");
        }
    }

    async fn on_message(&self, message: aether_transport::Message) {
        let Some((tag, name, hash, offset, rest)) = decode_head(&message.payload) else {
            tracing::debug!(peer = %message.from, "malformed essence message dropped");
            return;
        };
        match tag {
            TAG_REQUEST => {
                let reply = match self.deployments.essence_chunk(&name, &hash, offset, CHUNK) {
                    Some((bytes, total)) => {
                        let mut out = encode_head(TAG_CHUNK, &name, &hash, offset);
                        out.extend_from_slice(&total.to_be_bytes());
                        out.extend_from_slice(&bytes);
                        out
                    }
                    None => encode_head(TAG_MISSING, &name, &hash, offset),
                };
                let endpoint = self.mesh.endpoint().clone();
                if let Err(e) = endpoint.send(&message.from, CHANNEL_ESSENCES, &reply).await {
                    tracing::debug!(peer = %message.from, "essence chunk not sent: {e}");
                }
            }
            TAG_CHUNK | TAG_MISSING => {
                let waiter = self
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&(hash, offset));
                let Some(waiter) = waiter else {
                    return;
                };
                let reply = if tag == TAG_MISSING {
                    Reply::Missing
                } else {
                    let Some(total) = rest
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_be_bytes)
                    else {
                        return;
                    };
                    Reply::Chunk {
                        total,
                        bytes: Bytes::copy_from_slice(&rest[8..]),
                    }
                };
                let _ = waiter.send(reply);
            }
            _ => {}
        }
    }

    /// Follows the deployments bucket: first what it holds, then each change.
    async fn follow(self: Arc<Self>, mut watch: tokio::sync::mpsc::Receiver<aether_kv::Change>) {
        // Deployments this node ran before it (re)joined.
        for d in self.deployments.list() {
            let name = d.component.name().to_string();
            match self.kv.get(DEPLOYMENTS_BUCKET, name.as_bytes()).await {
                Ok(Some(entry)) if entry.value().is_none() => {
                    tracing::info!(component = %name, "removed from the lattice while this node was away");
                    let _ = self.deployments.remove(&name).await;
                }
                Ok(None) => self.published(&d).await,
                _ => {}
            }
        }
        self.resync().await;
        let mut tick = tokio::time::interval(RESYNC);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                change = watch.recv() => match change {
                    Some(change) => {
                        let update = change.update;
                        self.apply(update.key(), update.value()).await;
                    }
                    None => {
                        // The watch lagged (or the state restarted): follow
                        // again from what the bucket holds now.
                        tracing::warn!("the deployments watch lagged; following it again");
                        match self.kv.watch(DEPLOYMENTS_BUCKET, b"", 4096).await {
                            Ok(w) => {
                                watch = w;
                                self.resync().await;
                            }
                            Err(e) => {
                                tracing::warn!("cannot follow the lattice's deployments: {e}");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                },
                _ = tick.tick() => self.resync().await,
            }
        }
    }

    /// Applies every record of the bucket (those already in effect here are
    /// no-ops): catches up after a lagged watch, and retries essences no
    /// member could send earlier.
    async fn resync(self: &Arc<Self>) {
        if let Ok(entries) = self.kv.list(DEPLOYMENTS_BUCKET, b"", 100_000).await {
            for entry in entries {
                self.apply(entry.winner().key(), entry.value()).await;
            }
        }
    }

    /// Whether the bucket still names `hash` for `name`.
    async fn still_wanted(&self, name: &str, hash: &str) -> bool {
        let Ok(Some(entry)) = self.kv.get(DEPLOYMENTS_BUCKET, name.as_bytes()).await else {
            return false;
        };
        entry
            .value()
            .and_then(|v| serde_json::from_slice::<Record>(v).ok())
            .is_some_and(|r| r.essence_hash == hash)
    }

    async fn apply(self: &Arc<Self>, key: &[u8], value: Option<&Bytes>) {
        let name = String::from_utf8_lossy(key).into_owned();
        let Some(value) = value else {
            if self.deployments.get(&name).is_some() {
                match self.deployments.remove(&name).await {
                    Ok(_) => tracing::info!(component = %name, "removed (the lattice removed it)"),
                    Err(e) => tracing::warn!(component = %name, "cannot remove: {e}"),
                }
            }
            return;
        };
        let record: Record = match serde_json::from_slice(value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(component = %name, "unreadable deployment record: {e}");
                return;
            }
        };
        if self
            .deployments
            .get(&name)
            .is_some_and(|d| d.essence_hash == record.essence_hash)
        {
            return;
        }
        if record.size > MAX_ESSENCE {
            tracing::warn!(component = %name, size = record.size, "deployment too large to fetch");
            return;
        }
        // One fetch per deployment at a time, off the watch loop, so a slow
        // or impossible fetch never holds up other deployments.
        if !self
            .fetching
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.clone())
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let fetched = this.fetch(&record).await;
            match fetched {
                // The record may have changed or been removed meanwhile.
                Some(bytes) if this.still_wanted(&name, &record.essence_hash).await => {
                    let _applying = this.applying.lock().await;
                    if let Err(why) = this.make_room(&bytes, &record).await {
                        tracing::warn!(
                            component = %name,
                            "the lattice's deployment is refused here: {why}"
                        );
                    } else {
                        match this.deployments.deploy(bytes).await {
                            Ok((d, _)) => tracing::info!(
                                component = %name,
                                hash = %d.essence_hash,
                                "deployed from the lattice"
                            ),
                            Err(e) => tracing::warn!(
                                component = %name,
                                "the lattice's deployment is refused here: {e}"
                            ),
                        }
                    }
                }
                Some(_) => {}
                None => tracing::warn!(
                    component = %name,
                    essence = %record.essence_hash,
                    "no member could send the essence; retrying every {} s",
                    RESYNC.as_secs()
                ),
            }
            this.fetching
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
        });
    }

    /// Settles a route two deployments claim, the same way on every node:
    /// the one deployed first (then the smaller name) keeps it, as if the
    /// later deploy had been refused on a node that knew the first. Deploys
    /// on two nodes at about the same time can both be accepted there
    /// before either hears of the other; without this rule each node would
    /// keep whichever arrived first. The loser is removed from the lattice
    /// (its record deleted, if it is still the deploy that was judged) and
    /// a warning says why.
    async fn make_room(&self, essence: &[u8], record: &Record) -> Result<(), String> {
        let conflicts = self.deployments.route_conflicts(essence);
        for c in &conflicts {
            let owner_at = match self.kv.get(DEPLOYMENTS_BUCKET, c.owner.as_bytes()).await {
                Ok(Some(entry)) => match entry.value() {
                    Some(v) => {
                        serde_json::from_slice::<Record>(v)
                            .map_err(|e| format!("`{}`'s record is unreadable: {e}", c.owner))?
                            .deployed_at
                    }
                    // Deleted: it is being removed here too, and goes last.
                    None => u64::MAX,
                },
                // Deployed here and not recorded yet: its own deploy time.
                Ok(None) => self
                    .deployments
                    .get(&c.owner)
                    .map_or(u64::MAX, |d| d.deployed_at),
                Err(e) => return Err(format!("cannot read `{}`'s record: {e}", c.owner)),
            };
            if (owner_at, c.owner.as_str()) < (record.deployed_at, record.name.as_str()) {
                self.withdraw(&record.name, &record.essence_hash).await;
                return Err(format!(
                    "route `{}` belongs to `{}`, deployed first; `{}` is removed from the lattice",
                    c.route, c.owner, record.name
                ));
            }
        }
        for c in conflicts {
            tracing::warn!(
                component = %c.owner,
                "route `{}` belongs to `{}`, deployed first; `{}` is removed from the lattice",
                c.route,
                record.name,
                c.owner
            );
            if let Some(owner) = self.deployments.get(&c.owner) {
                self.withdraw(&c.owner, &owner.essence_hash).await;
            }
            if let Err(e) = self.deployments.remove(&c.owner).await {
                return Err(format!("cannot remove `{}` to make room: {e}", c.owner));
            }
        }
        Ok(())
    }

    /// Deletes the lattice's record of `name` if it still names `hash`.
    async fn withdraw(&self, name: &str, hash: &str) {
        if lattice_record(&self.kv, name)
            .await
            .is_some_and(|r| r.essence_hash == hash)
            && let Err(e) = self.kv.put(DEPLOYMENTS_BUCKET, name.as_bytes(), None).await
        {
            tracing::warn!(component = %name, "cannot remove the deployment record: {e}");
        }
    }

    /// Fetches a record's essence from the live members, one after another,
    /// until one sends all of it with the right hash.
    pub(crate) async fn fetch(&self, record: &Record) -> Option<Vec<u8>> {
        if let Some(bytes) = self.deployments.kept_essence(&record.essence_hash) {
            return Some(bytes);
        }
        for _attempt in 0..5 {
            let mut peers: Vec<_> = self
                .mesh
                .members()
                .await
                .ok()?
                .into_iter()
                .filter(|m| !m.is_self && m.status == MemberStatus::Alive)
                .collect();
            peers.shuffle(&mut rand::thread_rng());
            for peer in peers {
                if let Some(bytes) = self.fetch_from(peer.id, peer.mesh_addr, record).await {
                    if essence_hash(&bytes) == record.essence_hash {
                        return Some(bytes);
                    }
                    tracing::warn!(peer = %peer.id, component = %record.name, "a member sent an essence with the wrong hash");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        None
    }

    async fn fetch_from(
        &self,
        peer: aether_identity::PublicKey,
        addr: std::net::SocketAddr,
        record: &Record,
    ) -> Option<Vec<u8>> {
        let endpoint = self.mesh.endpoint().clone();
        endpoint.connect(addr, Some(peer)).await.ok()?;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let offset = out.len() as u64;
            let (tx, rx) = oneshot::channel();
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((record.essence_hash.clone(), offset), tx);
            let request = encode_head(TAG_REQUEST, &record.name, &record.essence_hash, offset);
            if endpoint
                .send(&peer, CHANNEL_ESSENCES, &request)
                .await
                .is_err()
            {
                return None;
            }
            let reply = tokio::time::timeout(CHUNK_TIMEOUT, rx).await.ok()?.ok()?;
            match reply {
                Reply::Missing => return None,
                Reply::Chunk { total, bytes } => {
                    if total != record.size || bytes.is_empty() && offset < total {
                        return None;
                    }
                    out.extend_from_slice(&bytes);
                    if out.len() as u64 >= total {
                        out.truncate(total as usize);
                        return Some(out);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_heads_round_trip_and_garbage_is_refused() {
        let hash = "ab".repeat(32);
        let bytes = encode_head(TAG_REQUEST, "hello", &hash, 1 << 40);
        let (tag, name, h, offset, rest) = decode_head(&bytes).expect("decodes");
        assert_eq!(
            (tag, name.as_str(), h.as_str(), offset, rest),
            (TAG_REQUEST, "hello", hash.as_str(), 1 << 40, &[][..])
        );
        for cut in 0..bytes.len() {
            assert!(decode_head(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[1 + 2 + 5] = b'z';
        assert!(decode_head(&bad).is_none(), "non-hex hash");
    }
}
