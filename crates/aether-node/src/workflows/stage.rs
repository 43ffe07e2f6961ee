//! Every node's part in a rollout: for each staged version, fetch the essence (from its own
//! store or a member's), compile it into the compiled-code cache, and say when it serves it,
//! each in this node's progress record, which the rollout's driver waits on.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aether_kv::KvHandle;

use super::records::{self, PROGRESS_BUCKET, Progress, STAGE_BUCKET, Stage};
use crate::deployments::Deployments;
use crate::replication::{self, Replication};

/// How often a staged version is checked for being served here.
const SERVING_POLL: Duration = Duration::from_millis(100);
/// How often the whole staging bucket is looked at again (a lagged watch, a retry).
const RESYNC: Duration = Duration::from_secs(5);

/// Follows the staging bucket until the node stops.
pub(crate) async fn follow(
    kv: KvHandle,
    node: String,
    deployments: Arc<Deployments>,
    replication: Arc<Replication>,
) {
    let active: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut watch = kv.watch(STAGE_BUCKET, b"", 1024).await.ok();
    let mut tick = tokio::time::interval(RESYNC);
    loop {
        let staged: Vec<Stage> = match &mut watch {
            Some(w) => tokio::select! {
                change = w.recv() => match change {
                    Some(c) => c.update.value().and_then(|v| serde_json::from_slice(v).ok()).into_iter().collect(),
                    None => {
                        watch = kv.watch(STAGE_BUCKET, b"", 1024).await.ok();
                        continue;
                    }
                },
                _ = tick.tick() => records::list(&kv, STAGE_BUCKET, "").await.into_iter().map(|(_, s)| s).collect(),
            },
            None => {
                tick.tick().await;
                watch = kv.watch(STAGE_BUCKET, b"", 1024).await.ok();
                records::list(&kv, STAGE_BUCKET, "")
                    .await
                    .into_iter()
                    .map(|(_, s)| s)
                    .collect()
            }
        };
        for stage in staged {
            let key = format!("{}/{node}", stage.rollout);
            let done: Option<Progress> = records::read(&kv, PROGRESS_BUCKET, &key).await;
            if done.is_some_and(|p| p.serving || p.error.is_some()) {
                continue;
            }
            if !active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(stage.rollout.clone())
            {
                continue;
            }
            let (kv, deployments, replication, active) = (
                kv.clone(),
                deployments.clone(),
                replication.clone(),
                active.clone(),
            );
            tokio::spawn(async move {
                prepare(&kv, &key, &stage, &deployments, &replication).await;
                active
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&stage.rollout);
            });
        }
    }
}

async fn report(kv: &KvHandle, key: &str, progress: &Progress) {
    if let Err(e) = records::write(kv, PROGRESS_BUCKET, key, progress).await {
        tracing::warn!("rollout progress not recorded: {e}");
    }
}

/// Fetch, compile, then wait to serve one staged version.
async fn prepare(
    kv: &KvHandle,
    key: &str,
    stage: &Stage,
    deployments: &Arc<Deployments>,
    replication: &Replication,
) {
    let mut progress = records::read::<Progress>(kv, PROGRESS_BUCKET, key)
        .await
        .filter(|p| p.essence_hash == stage.essence_hash)
        .unwrap_or(Progress {
            essence_hash: stage.essence_hash.clone(),
            ..Progress::default()
        });
    let record = replication::Record {
        name: stage.component.clone(),
        essence_hash: stage.essence_hash.clone(),
        size: stage.size,
        publisher: stage.publisher.clone(),
        deployed_at: 0,
    };
    let Some(bytes) = replication.fetch(&record).await else {
        progress.error = Some(format!(
            "no member could send essence {}",
            stage.essence_hash
        ));
        report(kv, key, &progress).await;
        return;
    };
    if let Err(e) = deployments.keep_as(&stage.essence_hash, &bytes, None) {
        progress.error = Some(e.to_string());
        report(kv, key, &progress).await;
        return;
    }
    if !progress.fetched {
        progress.fetched = true;
        report(kv, key, &progress).await;
    }
    if !progress.compiled {
        let compiled = match deployments.verify_essence(&bytes) {
            Ok(verified) => {
                let runtime = deployments.runtime().clone();
                let (manifest, wasm) = verified.into_parts();
                tokio::task::spawn_blocking(move || runtime.precompile(&manifest, &wasm))
                    .await
                    .map_err(|e| format!("compiler stopped: {e}"))
                    .and_then(|r| r.map(|_| ()).map_err(|e| e.to_string()))
            }
            Err(e) => Err(e.to_string()),
        };
        match compiled {
            Ok(()) => progress.compiled = true,
            Err(e) => progress.error = Some(e),
        }
        report(kv, key, &progress).await;
        if progress.error.is_some() {
            return;
        }
    }
    // Served once the lattice's deployment record names it and this node deployed it; given
    // up when the rollout's staging record is gone (retired or undone).
    loop {
        if deployments
            .get(&stage.component)
            .is_some_and(|d| d.essence_hash == stage.essence_hash)
        {
            progress.serving = true;
            report(kv, key, &progress).await;
            return;
        }
        let still: Option<Stage> = records::read(kv, STAGE_BUCKET, &stage.key()).await;
        if still.is_none() {
            return;
        }
        tokio::time::sleep(SERVING_POLL).await;
    }
}
