//! `alkahest drain NODE`, a second kind of workflow: `cordon` (placement puts nothing more on
//! the node), `move` (wait until every deployment's replicas are placed elsewhere and running
//! there), `mark-drained`. A failure or a cancel undoes the cordon. The set of cordoned nodes
//! lives in the state bucket [`DRAINED_BUCKET`]; every node's schedule follows it.

use std::collections::BTreeSet;
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

const STEPS: [&str; 3] = ["cordon", "move", "mark-drained"];

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
}

/// The drain planner.
pub(crate) struct DrainPlanner;

impl Planner for DrainPlanner {
    fn next(&self, _input: &Value, steps: &[&StepRecord], ctx: &PlanContext) -> Next {
        let saga = Saga::of(steps);
        if let Some(next) = saga.next_forward(&STEPS, ctx.cancel_requested) {
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
    let mark = |state: &str| Drained {
        state: state.to_string(),
        workflow: workflow.to_string(),
        at_ms: now_ms(),
    };
    match name {
        "cordon" => {
            records::write(kv, DRAINED_BUCKET, &input.node, &mark("draining")).await?;
            Ok(Value::Null)
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
            records::write(kv, DRAINED_BUCKET, &input.node, &mark("drained")).await?;
            Ok(Value::Null)
        }
        "uncordon" => {
            let current: Option<Drained> = records::read(kv, DRAINED_BUCKET, &input.node).await;
            if current.is_some_and(|c| c.workflow == workflow) {
                records::delete(kv, DRAINED_BUCKET, &input.node).await?;
            }
            Ok(Value::Null)
        }
        other => Err(format!("no drain step named {other:?}")),
    }
}

/// Keeps the schedule's set of drained nodes in step with [`DRAINED_BUCKET`].
pub(crate) async fn follow(kv: KvHandle, schedule: Arc<Schedule>) {
    let mut last: Option<BTreeSet<[u8; 32]>> = None;
    let mut watch = kv.watch(DRAINED_BUCKET, b"", 256).await.ok();
    loop {
        let set: BTreeSet<[u8; 32]> = records::list::<Drained>(&kv, DRAINED_BUCKET, "")
            .await
            .into_iter()
            .filter_map(|(node, _)| PublicKey::from_str(&node).ok().map(|k| *k.as_bytes()))
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
