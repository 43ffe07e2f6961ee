//! Every node's part in a canary: load the new version beside the serving one where this node
//! hosts the component, apply the share of requests the rollout's record gives it, drop it when
//! the record goes or names the serving version, and publish what both versions did here.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aether_kv::KvHandle;

use super::records::{self, CANARY_BUCKET, CanaryShare, HEALTH_BUCKET, Health};
use crate::canary::Canary;
use crate::deployments::{Deployment, Deployments};

/// How often the canary records are applied.
const APPLY_EVERY: Duration = Duration::from_millis(250);
/// How long after a failed load a canary is loaded again.
const RETRY_LOAD: Duration = Duration::from_secs(2);
/// How often a host publishes what it measured (when something changed).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Applies canary records and publishes health until the node stops.
pub(crate) async fn follow(kv: KvHandle, node: String, deployments: Arc<Deployments>) {
    let mut published: BTreeMap<String, Health> = BTreeMap::new();
    let mut failed: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    let mut last_publish = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(APPLY_EVERY);
    loop {
        tick.tick().await;
        let shares: BTreeMap<String, CanaryShare> = records::list(&kv, CANARY_BUCKET, "")
            .await
            .into_iter()
            .collect();
        for deployment in deployments.list() {
            let share = shares.get(deployment.component.name());
            apply(&deployments, &deployment, share, &mut failed).await;
        }
        let now = tokio::time::Instant::now();
        let first_report = deployments.list().iter().any(|d| {
            d.canary()
                .is_some_and(|c| !published.contains_key(&c.rollout))
        });
        if first_report || now - last_publish >= PUBLISH_EVERY {
            last_publish = now;
            publish(&kv, &node, &deployments, &mut published).await;
        }
    }
}

/// Brings one deployment's canary in line with its record. A load that failed is tried again
/// after [`RETRY_LOAD`] (`failed` holds when, by rollout).
async fn apply(
    deployments: &Deployments,
    d: &Arc<Deployment>,
    share: Option<&CanaryShare>,
    failed: &mut BTreeMap<String, tokio::time::Instant>,
) {
    let wanted = share.filter(|s| s.essence_hash != d.essence_hash && d.is_hosted());
    let loaded = d.canary();
    match (wanted, loaded) {
        (None, None) => {}
        (None, Some(c)) => {
            tracing::info!(component = %d.component.name(), rollout = %c.rollout, "canary unloaded");
            d.set_canary(None);
        }
        (Some(s), Some(c)) if c.rollout == s.rollout && c.essence_hash == s.essence_hash => {
            if c.weight() != s.weight {
                tracing::info!(component = %d.component.name(), rollout = %s.rollout, "canary now gets {}% of requests", s.weight);
                c.set_weight(s.weight);
            }
        }
        (Some(s), _) => match failed.get(&s.rollout) {
            Some(at) if at.elapsed() < RETRY_LOAD => {}
            _ => match load(deployments, d, s).await {
                Ok(canary) => {
                    failed.remove(&s.rollout);
                    tracing::info!(component = %d.component.name(), rollout = %s.rollout, "canary loaded, {}% of requests", s.weight);
                    d.set_canary(Some(Arc::new(canary)));
                }
                Err(e) => {
                    failed.insert(s.rollout.clone(), tokio::time::Instant::now());
                    tracing::warn!(component = %d.component.name(), rollout = %s.rollout, "canary not loaded: {e}");
                }
            },
        },
    }
}

/// Loads the canary's version from the kept essence (staged before any share is given).
async fn load(
    deployments: &Deployments,
    d: &Deployment,
    s: &CanaryShare,
) -> Result<Canary, String> {
    let bytes = deployments
        .kept_essence(&s.essence_hash)
        .ok_or_else(|| format!("essence {} is not kept here", s.essence_hash))?;
    let verified = deployments
        .verify_essence(&bytes)
        .map_err(|e| e.to_string())?;
    let (manifest, wasm) = verified.into_parts();
    if manifest.name != d.component.name() {
        return Err(format!(
            "essence {} is `{}`, not `{}`",
            s.essence_hash,
            manifest.name,
            d.component.name()
        ));
    }
    let runtime = deployments.runtime().clone();
    let logs = Some(d.component.logs().clone());
    let component =
        tokio::task::spawn_blocking(move || runtime.load_with_logs(&manifest, &wasm, logs))
            .await
            .map_err(|e| format!("loader stopped: {e}"))?
            .map_err(|e| e.to_string())?;
    Ok(Canary::new(
        s.rollout.clone(),
        s.essence_hash.clone(),
        component,
        s.weight,
    ))
}

/// Writes what each loaded canary measured here, when it changed since the last time.
async fn publish(
    kv: &KvHandle,
    node: &str,
    deployments: &Deployments,
    published: &mut BTreeMap<String, Health>,
) {
    let mut current = BTreeMap::new();
    for d in deployments.list() {
        let Some(c) = d.canary() else { continue };
        let health = Health {
            weight: c.weight(),
            stable: c.stable_stats.summary(),
            canary: c.canary_stats.summary(),
        };
        if published.get(&c.rollout) != Some(&health) {
            let key = format!("{}/{node}", c.rollout);
            if let Err(e) = records::write(kv, HEALTH_BUCKET, &key, &health).await {
                tracing::warn!("canary health not recorded: {e}");
                continue;
            }
        }
        current.insert(c.rollout.clone(), health);
    }
    *published = current;
}
