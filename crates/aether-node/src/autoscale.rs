//! Autoscaling of `replicas = { min, max }` deployments across the lattice.
//!
//! Every node samples, every [`SAMPLE`], how many instances of each
//! deployment it runs, and counts the requests it served; it answers peers
//! with the averages over the last [`WINDOW`](crate::deployment_load::WINDOW) (mesh channel
//! [`CHANNEL_CONTROL`](crate::schedule::hosts::CHANNEL_CONTROL)).
//!
//! For each scalable deployment one node decides: its first host in
//! placement order (or, while it has no host, the best-ranked eligible
//! member). Every [`DECIDE`] it sums the load its hosts report, runs the
//! pure [`aether_placement::autoscale`] (up at once, down after a quiet
//! period, to zero after the idle timeout) and, when the count changes,
//! records it in the state bucket [`SCALE_BUCKET`]. Every node follows that
//! bucket and places the recorded count, so every node reaches the same
//! decision; if two nodes briefly both decide, the merge rule keeps one
//! record everywhere.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aether_kv::KvHandle;
use aether_manifest::Replicas;
use aether_placement::{ScaleMemory, ScalePolicy};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::deployment_load::LoadSampler;
use crate::deployments::Deployments;
use crate::schedule::Schedule;

/// State bucket of the autoscaled replica counts (key: deployment name).
pub const SCALE_BUCKET: &str = "sys:scale";
/// How often instances are sampled.
const SAMPLE: Duration = Duration::from_millis(200);
/// How often the deciding node decides.
const DECIDE: Duration = Duration::from_secs(1);
/// Fraction of `limits.max_concurrency` one replica should carry.
const TARGET_UTILISATION: f64 = 0.7;
/// How long the load must want fewer replicas before they are removed.
pub const SCALE_DOWN_AFTER: Duration = Duration::from_secs(30);

/// An autoscaling decision as the state records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScaleRecord {
    /// Replicas to place.
    pub desired: u32,
    /// Unix seconds of the decision.
    pub at: u64,
    /// The node that decided.
    pub by: String,
    /// The load it saw.
    pub reason: String,
}

/// Runs sampling, deciding and following until the node stops.
pub(crate) async fn run(
    kv: KvHandle,
    schedule: Arc<Schedule>,
    deployments: Arc<Deployments>,
    sampler: Arc<LoadSampler>,
) {
    let follower = tokio::spawn(follow(kv.clone(), schedule.clone()));
    let mut memory: BTreeMap<String, ScaleMemory> = BTreeMap::new();
    let started = Instant::now();
    let mut last_decision = Instant::now();
    let mut tick = tokio::time::interval(SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        sampler.sample(&deployments);
        if last_decision.elapsed() < DECIDE {
            continue;
        }
        last_decision = Instant::now();
        let now = started.elapsed();
        for d in deployments.list() {
            let Replicas::Range { min, max } = d.component.manifest().intent.replicas else {
                continue;
            };
            let name = d.component.name().to_string();
            if !schedule.decides_scale_of(&name) {
                memory.remove(&name);
                continue;
            }
            let current = schedule.desired_for(&d);
            let observed = schedule.lattice_load(&name, current == 0).await;
            // A component that may idle to zero sooner than the usual quiet
            // period also gives up extra replicas that soon.
            let idle_timeout = d
                .component
                .idle_timeout()
                .unwrap_or(aether_runtime::DEFAULT_IDLE_TIMEOUT);
            let policy = ScalePolicy {
                target_concurrency: (f64::from(d.component.manifest().limits.max_concurrency)
                    * TARGET_UTILISATION)
                    .max(1.0),
                scale_down_after: SCALE_DOWN_AFTER.min(idle_timeout),
                idle_timeout,
            };
            let next = aether_placement::autoscale(
                current,
                min,
                max,
                observed,
                &policy,
                now,
                memory.entry(name.clone()).or_default(),
            );
            if next == current {
                continue;
            }
            let record = ScaleRecord {
                desired: next,
                at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                by: schedule.me().to_string(),
                reason: format!(
                    "{:.1} requests in flight, {:.1} requests/s over {current} replica(s)",
                    observed.concurrency, observed.request_rate
                ),
            };
            tracing::info!(component = %name, from = current, to = next, "autoscaling: {}", record.reason);
            schedule.metrics.scale_decisions.inc();
            let value = serde_json::to_vec(&record).unwrap_or_default();
            if let Err(e) = kv
                .put(SCALE_BUCKET, name.as_bytes(), Some(Bytes::from(value)))
                .await
            {
                tracing::warn!(component = %name, "cannot record the autoscaling decision: {e}");
            }
        }
        if follower.is_finished() {
            tracing::warn!("stopped following autoscaling decisions");
            return;
        }
    }
}

/// Follows [`SCALE_BUCKET`] and hands the counts to the schedule.
async fn follow(kv: KvHandle, schedule: Arc<Schedule>) {
    let Ok(mut watch) = kv.watch(SCALE_BUCKET, b"", 1024).await else {
        return;
    };
    let mut scaled: BTreeMap<String, u32> = BTreeMap::new();
    let read = |value: Option<&Bytes>| -> Option<u32> {
        serde_json::from_slice::<ScaleRecord>(value?)
            .ok()
            .map(|r| r.desired)
    };
    if let Ok(entries) = kv.list(SCALE_BUCKET, b"", 100_000).await {
        for entry in entries {
            let name = String::from_utf8_lossy(entry.winner().key()).into_owned();
            if let Some(n) = read(entry.value()) {
                scaled.insert(name, n);
            }
        }
    }
    schedule.set_scaled(scaled.clone());
    while let Some(change) = watch.recv().await {
        let name = String::from_utf8_lossy(change.update.key()).into_owned();
        match read(change.update.value()) {
            Some(n) => scaled.insert(name, n),
            None => scaled.remove(&name),
        };
        schedule.set_scaled(scaled.clone());
    }
}
