//! The lattice-state records rollouts use besides their journal: the staged version every node
//! prepares, each node's progress, the version served before a switch, the history, and a
//! canary's share of traffic and what the hosts measured of it.

use std::time::{SystemTime, UNIX_EPOCH};

use aether_kv::KvHandle;
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bucket of staged versions: `COMPONENT/ROLLOUT` → [`Stage`] (one key per rollout, so two
/// rollouts of one component never overwrite each other's).
pub(crate) const STAGE_BUCKET: &str = "sys:stage";
/// Bucket of each node's progress: `ROLLOUT/NODE` → [`Progress`].
pub(crate) const PROGRESS_BUCKET: &str = "sys:stage-progress";
/// Bucket of the deployment record a rollout replaced: `ROLLOUT` → the record, or `null`.
pub(crate) const PREVIOUS_BUCKET: &str = "sys:stage-previous";
/// Bucket of versions: `COMPONENT/ROLLOUT` → [`Version`].
pub(crate) const HISTORY_BUCKET: &str = "sys:history";

/// Bucket of canaries: `COMPONENT` → [`CanaryShare`] (one canary per component at a time).
pub(crate) const CANARY_BUCKET: &str = "sys:canary";
/// Bucket of what hosts measured during a canary: `ROLLOUT/NODE` → [`Health`].
pub(crate) const HEALTH_BUCKET: &str = "sys:canary-health";

/// The share of a component's requests a canary rollout gives its new version.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CanaryShare {
    /// The rollout.
    pub rollout: String,
    /// The new version's essence (staged, so every node holds it).
    pub essence_hash: String,
    /// Percent of requests, 0 to 100.
    pub weight: u32,
}

/// What one host measured of both versions since it loaded a canary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Health {
    /// The weight the host applies.
    pub weight: u32,
    /// The serving version.
    pub stable: crate::canary::Summary,
    /// The new version.
    pub canary: crate::canary::Summary,
}

/// A version every node should fetch and compile ahead of the switch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stage {
    /// The rollout that staged it.
    pub rollout: String,
    /// The component.
    pub component: String,
    /// Its essence.
    pub essence_hash: String,
    /// The essence's size.
    pub size: u64,
    /// The key that signed it.
    pub publisher: String,
}

impl Stage {
    /// Its key in [`STAGE_BUCKET`].
    pub(crate) fn key(&self) -> String {
        stage_key(&self.component, &self.rollout)
    }
}

/// The key in [`STAGE_BUCKET`] of `rollout`'s version of `component`.
pub(crate) fn stage_key(component: &str, rollout: &str) -> String {
    format!("{component}/{rollout}")
}

/// One node's progress with a staged version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Progress {
    /// The essence it concerns.
    pub essence_hash: String,
    /// The node holds the essence.
    pub fetched: bool,
    /// The node compiled it (or found it compiled).
    pub compiled: bool,
    /// The node serves it.
    pub serving: bool,
    /// What failed there.
    pub error: Option<String>,
}

/// One version of a component, written when its rollout retires the one before.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Version {
    /// The essence.
    pub essence_hash: String,
    /// Its size.
    pub size: u64,
    /// The key that signed it.
    pub publisher: String,
    /// The admin key that asked for the rollout.
    pub deployed_by: String,
    /// When it became current (ms since the Unix epoch).
    pub switched_ms: u64,
    /// The rollout.
    pub rollout: String,
    /// Why.
    pub reason: String,
}

/// Reads and decodes one JSON record; `None` when absent, deleted or unreadable.
pub(crate) async fn read<T: DeserializeOwned>(kv: &KvHandle, bucket: &str, key: &str) -> Option<T> {
    let entry = kv.get(bucket, key.as_bytes()).await.ok()??;
    serde_json::from_slice(entry.value()?).ok()
}

/// Writes one JSON record.
pub(crate) async fn write<T: Serialize>(
    kv: &KvHandle,
    bucket: &str,
    key: &str,
    value: &T,
) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    kv.put(bucket, key.as_bytes(), Some(Bytes::from(bytes)))
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot write {bucket}/{key}: {e}"))
}

/// Deletes one record.
pub(crate) async fn delete(kv: &KvHandle, bucket: &str, key: &str) -> Result<(), String> {
    kv.put(bucket, key.as_bytes(), None)
        .await
        .map(|_| ())
        .map_err(|e| format!("cannot delete {bucket}/{key}: {e}"))
}

/// Every record of `bucket` under `prefix`, decoded, with its key.
pub(crate) async fn list<T: DeserializeOwned>(
    kv: &KvHandle,
    bucket: &str,
    prefix: &str,
) -> Vec<(String, T)> {
    let Ok(entries) = kv.list(bucket, prefix.as_bytes(), 100_000).await else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let key = String::from_utf8_lossy(e.winner().key()).into_owned();
            let value = serde_json::from_slice(e.value()?).ok()?;
            Some((key, value))
        })
        .collect()
}

/// The versions of `component`, oldest first (numbered from 1 in this order).
pub(crate) async fn versions(kv: &KvHandle, component: &str) -> Vec<Version> {
    let mut all: Vec<Version> = list::<Version>(kv, HISTORY_BUCKET, &format!("{component}/"))
        .await
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    all.sort_by(|a, b| (a.switched_ms, &a.rollout).cmp(&(b.switched_ms, &b.rollout)));
    all
}

/// What every host measured of `rollout`'s canary, added up: (serving version, new version),
/// and each host's report by key (`ROLLOUT/NODE`).
pub(crate) async fn canary_health(
    kv: &KvHandle,
    rollout: &str,
) -> (
    crate::canary::Summary,
    crate::canary::Summary,
    Vec<(String, Health)>,
) {
    let reports: Vec<(String, Health)> = list(kv, HEALTH_BUCKET, &format!("{rollout}/")).await;
    let mut serving = crate::canary::Summary::default();
    let mut new = crate::canary::Summary::default();
    for (_, h) in &reports {
        serving.add(&h.stable);
        new.add(&h.canary);
    }
    (serving, new, reports)
}

/// Milliseconds since the Unix epoch, on this node's clock.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
