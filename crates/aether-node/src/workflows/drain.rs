//! `alkahest drain NODE`, a second kind of workflow: `cordon` (placement puts nothing more on
//! the node; the deployments it hosts may stay for now, and the step records which), one
//! `move:NAME` per such deployment (it may no longer stay; wait until its replicas run
//! elsewhere, before the next one moves), `move` (nothing at all is left there, every host
//! running), `mark-drained`. A failure or a cancel undoes the cordon. The cordoned nodes, each
//! with the deployments it may still keep, live in the state bucket [`DRAINED_BUCKET`]; every
//! node's schedule follows it.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_identity::PublicKey;
use aether_kv::KvHandle;
use aether_workflow::{Next, Outcome, PlanContext, Planner, Saga, StepRecord};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::records;
use super::records::now_ms;
use crate::deployments::Deployments;
use crate::schedule::Schedule;

/// The kind name drains are registered under.
pub(crate) const KIND: &str = "drain";
/// Bucket of cordoned nodes: node id → [`Drained`].
pub(crate) const DRAINED_BUCKET: &str = "sys:drained";
/// How long the replicas have to move.
const MOVE_TIMEOUT: Duration = Duration::from_secs(300);

/// The forward steps: `cordon`, a `move:NAME` for each deployment the cordon found on the
/// node, then `move` and `mark-drained`.
fn forward_steps(steps: &[&StepRecord]) -> Vec<String> {
    let hosted: Vec<String> = steps
        .iter()
        .find(|s| s.name == "cordon" && s.compensates.is_none())
        .and_then(|s| match &s.result {
            aether_workflow::StepResult::Ok(v) => {
                serde_json::from_value(v["components"].clone()).ok()
            }
            aether_workflow::StepResult::Err(_) => None,
        })
        .unwrap_or_default();
    std::iter::once("cordon".to_string())
        .chain(hosted.into_iter().map(|c| format!("move:{c}")))
        .chain(["move".to_string(), "mark-drained".to_string()])
        .collect()
}

/// What a drain works on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DrainInput {
    /// The node (`ed25519:…`).
    pub node: String,
    /// The admin key that asked.
    pub requested_by: String,
}

/// A cordoned node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Drained {
    /// `draining` or `drained`.
    pub state: String,
    /// The drain workflow.
    pub workflow: String,
    /// When it last changed.
    pub at_ms: u64,
    /// The deployments that may still stay on the node (moved one at a time).
    #[serde(default)]
    pub keep: BTreeSet<String>,
}

/// The drain planner.
pub(crate) struct DrainPlanner;

impl Planner for DrainPlanner {
    fn next(&self, _input: &Value, steps: &[&StepRecord], ctx: &PlanContext) -> Next {
        let saga = Saga::of(steps);
        let forward = forward_steps(steps);
        let forward: Vec<&str> = forward.iter().map(String::as_str).collect();
        if let Some(next) = saga.next_forward(&forward, ctx.cancel_requested) {
            return next;
        }
        if let Some(next) = saga.next_undo(|s| (s.name == "cordon").then(|| "uncordon".to_string()))
        {
            return next;
        }
        match saga.failure {
            Some((step, e)) => Next::End {
                outcome: Outcome::RolledBack,
                reason: format!("{step}: {e}"),
            },
            None => Next::End {
                outcome: Outcome::Cancelled,
                reason: "cancelled by an operator".into(),
            },
        }
    }
}

/// Runs one drain step.
pub(crate) async fn run(
    kv: &KvHandle,
    schedule: &Schedule,
    deployments: &Deployments,
    workflow: &str,
    name: &str,
    input: &DrainInput,
) -> Result<Value, String> {
    let node =
        PublicKey::from_str(&input.node).map_err(|e| format!("bad node id {}: {e}", input.node))?;
    let mark = |state: &str, keep: BTreeSet<String>| Drained {
        state: state.to_string(),
        workflow: workflow.to_string(),
        at_ms: now_ms(),
        keep,
    };
    let current: Option<Drained> = records::read(kv, DRAINED_BUCKET, &input.node)
        .await
        .filter(|d: &Drained| d.workflow == workflow);
    match name {
        "cordon" => {
            // Run again after a takeover, the cordon keeps what it first found.
            let keep = match current {
                Some(d) => d.keep,
                None => {
                    let view = schedule.view();
                    let hosted: BTreeSet<String> = view
                        .hosts
                        .iter()
                        .filter(|(_, hosts)| {
                            hosts.iter().any(|h| h.id.as_bytes() == node.as_bytes())
                        })
                        .map(|(name, _)| name.clone())
                        .collect();
                    let drained = mark("draining", hosted.clone());
                    records::write(kv, DRAINED_BUCKET, &input.node, &drained).await?;
                    hosted
                }
            };
            Ok(json!({ "components": keep }))
        }
        name if name.starts_with("move:") => {
            let component = &name["move:".len()..];
            let Some(mut drained) = current else {
                return Err(format!(
                    "{} is no longer being drained by {workflow}",
                    input.node
                ));
            };
            if drained.keep.remove(component) {
                drained.at_ms = now_ms();
                records::write(kv, DRAINED_BUCKET, &input.node, &drained).await?;
            }
            let started = Instant::now();
            loop {
                let moved = match deployments.get(component) {
                    None => true,
                    Some(d) => {
                        schedule.excludes(&node, component)
                            && schedule.placement_json(&d, true).await.is_some_and(|p| {
                                p.hosts.iter().all(|h| {
                                    h.node != input.node
                                        && matches!(h.state.as_str(), "running" | "scaled-to-zero")
                                })
                            })
                    }
                };
                if moved {
                    return Ok(json!({ "ms": started.elapsed().as_millis() as u64 }));
                }
                if started.elapsed() > MOVE_TIMEOUT {
                    return Err(format!(
                        "{component} did not move off the node within {} s",
                        MOVE_TIMEOUT.as_secs()
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        "move" => {
            let started = Instant::now();
            loop {
                let mut waiting = Vec::new();
                if !schedule.is_drained(&node) {
                    waiting.push("the cordon to reach this node's placement".to_string());
                }
                for d in deployments.list() {
                    let Some(p) = schedule.placement_json(&d, true).await else {
                        continue;
                    };
                    if let Some(h) = p.hosts.iter().find(|h| {
                        h.node == input.node
                            || !matches!(h.state.as_str(), "running" | "scaled-to-zero")
                    }) {
                        waiting.push(format!(
                            "{} ({} on {})",
                            d.component.name(),
                            h.state,
                            h.node
                        ));
                    }
                }
                if waiting.is_empty() {
                    return Ok(
                        json!({ "deployments": deployments.list().len(), "ms": started.elapsed().as_millis() as u64 }),
                    );
                }
                if started.elapsed() > MOVE_TIMEOUT {
                    return Err(format!(
                        "replicas did not move within {} s: {}",
                        MOVE_TIMEOUT.as_secs(),
                        waiting.join(", ")
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        "mark-drained" => {
            let drained = mark("drained", BTreeSet::new());
            records::write(kv, DRAINED_BUCKET, &input.node, &drained).await?;
            Ok(Value::Null)
        }
        "uncordon" => {
            if current.is_some() {
                records::delete(kv, DRAINED_BUCKET, &input.node).await?;
            }
            Ok(Value::Null)
        }
        other => Err(format!("no drain step named {other:?}")),
    }
}

/// Keeps the schedule's set of drained nodes in step with [`DRAINED_BUCKET`].
pub(crate) async fn follow(kv: KvHandle, schedule: Arc<Schedule>) {
    let mut last: Option<BTreeMap<[u8; 32], BTreeSet<String>>> = None;
    let mut watch = kv.watch(DRAINED_BUCKET, b"", 256).await.ok();
    loop {
        let set: BTreeMap<[u8; 32], BTreeSet<String>> =
            records::list::<Drained>(&kv, DRAINED_BUCKET, "")
                .await
                .into_iter()
                .filter_map(|(node, d)| {
                    PublicKey::from_str(&node)
                        .ok()
                        .map(|k| (*k.as_bytes(), d.keep))
                })
                .collect();
        if last.as_ref() != Some(&set) {
            schedule.set_drained(set.clone());
            last = Some(set);
        }
        match &mut watch {
            Some(w) => {
                tokio::select! {
                    change = w.recv() => if change.is_none() {
                        watch = kv.watch(DRAINED_BUCKET, b"", 256).await.ok();
                    },
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
            None => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                watch = kv.watch(DRAINED_BUCKET, b"", 256).await.ok();
            }
        }
    }
}
