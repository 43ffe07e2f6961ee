//! The admin API of rollouts:
//!
//! - `POST /v1/rollouts[?strategy=canary&steps=5,25,100&interval=30s]` (body: an essence):
//!   starts a rollout, 202 with its id; the query overrides the Aetherfile's `[rollout]`;
//! - `GET /v1/rollouts`, `GET /v1/rollouts/ID`: what the journals say;
//! - `POST /v1/rollouts/ID/pause|resume|cancel` (`pause?before=STEP`: go on until that step and
//!   hold there; `POST /v1/rollouts?pause_before=STEP` starts a rollout with such a hold);
//! - `GET /v1/history/NAME`: the component's versions;
//! - `POST /v1/rollback/NAME[?to=VERSION]`: a rollout back to an earlier version (all at once
//!   unless the query asks for a canary);
//! - `POST /v1/drain/NODE`: a drain workflow (its status under `/v1/rollouts/ID`);
//!   `DELETE /v1/drain/NODE`: cancel it, or undo a finished one.

use aether_admin::types::{
    CanaryJson, HistoryJson, LeaseJson, RolloutNodeJson, RolloutStarted, RolloutStatusJson,
    RolloutStepJson, VersionHealthJson, VersionJson,
};
use aether_workflow::{Journal, LeaseReason, NodeId, Planner, StepResult};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use std::str::FromStr as _;
use std::sync::Arc;

use rand::RngCore as _;
use serde_json::Value;

use super::plan::{KIND, RolloutInput, RolloutPlanner};
use super::records::now_ms;
use super::records::{self, CANARY_BUCKET, CanaryShare, PROGRESS_BUCKET, Progress};
use super::service::Workflows;
use crate::admin_response::{AdminBody, error, json};
use crate::canary::Summary;
use crate::deployments::{DeployError, Deployments};

fn node_text(id: &NodeId) -> String {
    aether_identity::PublicKey::from_bytes(&id.0)
        .map(|k| k.to_string())
        .unwrap_or_else(|_| id.to_string())
}

/// Serves one rollout request; `segments` is the path after `v1`.
pub(crate) async fn handle(
    workflows: &Arc<Workflows>,
    deployments: &Deployments,
    caller: &aether_identity::PublicKey,
    method: &Method,
    segments: &[&str],
    query: Option<&str>,
    body: Bytes,
) -> Response<AdminBody> {
    match (method, segments) {
        (&Method::POST, ["rollouts"]) => start(workflows, deployments, caller, &body, query).await,
        (&Method::GET, ["rollouts"]) => {
            let ids: Vec<String> = workflows.engine().journals().keys().cloned().collect();
            let mut all = Vec::new();
            for id in ids {
                if let Some(s) = status(workflows, &id).await {
                    all.push(s);
                }
            }
            all.sort_by_key(|s| s.started_ms);
            json(StatusCode::OK, &all)
        }
        (&Method::GET, ["rollouts", id]) => match status(workflows, id).await {
            Some(s) => json(StatusCode::OK, &s),
            None => error(StatusCode::NOT_FOUND, format!("no rollout {id}")),
        },
        (&Method::POST, ["rollouts", id, action @ ("pause" | "resume" | "cancel")]) => control(
            workflows,
            id,
            action,
            query_value(query, "before").as_deref(),
        ),
        (&Method::GET, ["history", name]) => {
            let versions = history(workflows, name).await;
            if versions.is_empty() && deployments.get(name).is_none() {
                return error(
                    StatusCode::NOT_FOUND,
                    format!("no component named `{name}`"),
                );
            }
            json(
                StatusCode::OK,
                &HistoryJson {
                    component: name.to_string(),
                    versions,
                },
            )
        }
        (&Method::POST, ["rollback", name]) => {
            let to = query_value(query, "to");
            rollback(workflows, caller, name, to.as_deref(), query).await
        }
        (&Method::POST, ["drain", node]) => drain(workflows, caller, node).await,
        (&Method::DELETE, ["drain", node]) => undrain(workflows, node).await,
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// How long accepting a rollout waits for a second member to hold its essence.
const SECOND_COPY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The value of `key` in a query string.
fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
}

/// Drain workflows not ended for `node`, by id.
fn running_drains(workflows: &Workflows, node: &str) -> Vec<String> {
    workflows
        .engine()
        .journals()
        .iter()
        .filter(|(_, j)| j.end().is_none())
        .filter(|(_, j)| {
            j.definition().is_some_and(|d| {
                d.kind == super::drain::KIND && d.input["node"].as_str() == Some(node)
            })
        })
        .map(|(id, _)| id.clone())
        .collect()
}

async fn drain(
    workflows: &Arc<Workflows>,
    caller: &aether_identity::PublicKey,
    node: &str,
) -> Response<AdminBody> {
    if aether_identity::PublicKey::from_str(node).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{node:?} is not a node id (ed25519:…); `alkahest nodes` lists them"),
        );
    }
    if let Some(id) = running_drains(workflows, node).first() {
        return error(
            StatusCode::CONFLICT,
            format!("{node} is being drained already by {id}"),
        );
    }
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    let id = format!("d-{}", hex::encode(bytes));
    let input = super::drain::DrainInput {
        node: node.to_string(),
        requested_by: caller.to_string(),
    };
    let value = serde_json::to_value(&input).unwrap_or_default();
    if let Err(e) = workflows
        .engine()
        .start(&id, super::drain::KIND, value, now_ms())
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    }
    workflows.flush().await;
    tracing::info!(workflow = %id, %node, "drain started");
    json(
        StatusCode::ACCEPTED,
        &RolloutStarted {
            rollout: id,
            component: node.to_string(),
            essence_hash: String::new(),
        },
    )
}

async fn undrain(workflows: &Workflows, node: &str) -> Response<AdminBody> {
    let running = running_drains(workflows, node);
    for id in &running {
        workflows.engine().control(id, None, true, now_ms());
    }
    workflows.wake();
    let cordoned: Option<super::drain::Drained> =
        records::read(workflows.kv(), super::drain::DRAINED_BUCKET, node).await;
    if cordoned.is_some()
        && let Err(e) = records::delete(workflows.kv(), super::drain::DRAINED_BUCKET, node).await
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, e);
    }
    if running.is_empty() && cordoned.is_none() {
        return error(StatusCode::NOT_FOUND, format!("{node} is not drained"));
    }
    json(
        StatusCode::OK,
        &serde_json::json!({ "node": node, "undrained": true, "cancelled": running }),
    )
}

fn new_id() -> String {
    let mut bytes = [0u8; 6];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("r-{}", hex::encode(bytes))
}

/// Starts a rollout of `input`, held before the step `pause_before` when given.
async fn begin(
    workflows: &Arc<Workflows>,
    input: &RolloutInput,
    pause_before: Option<String>,
) -> Response<AdminBody> {
    let id = new_id();
    let value = match serde_json::to_value(input) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let steps = super::plan::forward_steps(&value);
    if let Some(step) = &pause_before
        && !steps[1..].contains(step)
    {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "this rollout has no step {step:?} to pause before; its steps after the first: {}",
                steps[1..].join(", ")
            ),
        );
    }
    {
        let mut engine = workflows.engine();
        let now = now_ms();
        if let Err(e) = engine.start(&id, KIND, value, now) {
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
        if pause_before.is_some() {
            engine.pause_before(&id, pause_before, now);
        }
    }
    // The id is handed out once the rollout is durable here and its essence is on a second
    // member: the death of this node then loses neither.
    workflows.flush().await;
    if !super::steps::stage_early(workflows.steps(), &id, input, SECOND_COPY_TIMEOUT).await {
        tracing::warn!(rollout = %id, "no second member holds the essence yet; the rollout goes on");
    }
    tracing::info!(rollout = %id, component = %input.component, reason = %input.reason, "rollout started");
    json(
        StatusCode::ACCEPTED,
        &RolloutStarted {
            rollout: id,
            component: input.component.clone(),
            essence_hash: input.essence_hash.clone(),
        },
    )
}

async fn start(
    workflows: &Arc<Workflows>,
    deployments: &Deployments,
    caller: &aether_identity::PublicKey,
    essence: &[u8],
    query: Option<&str>,
) -> Response<AdminBody> {
    let verified = match deployments.verify_essence(essence) {
        Ok(v) => v,
        Err(e) => {
            let status = match e {
                aether_essence::EssenceError::Untrusted(_) => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            return error(status, e.to_string());
        }
    };
    if let Some(c) = deployments.route_conflicts(essence).into_iter().next() {
        return error(StatusCode::CONFLICT, DeployError::Conflict(c).to_string());
    }
    let name = verified.manifest().name.clone();
    let hash = crate::deployments::essence_hash(essence);
    let serving = crate::replication::lattice_record(workflows.kv(), &name)
        .await
        .is_some_and(|r| r.essence_hash != hash);
    let (canary, strategy_note) =
        match super::strategy::resolve(&verified.manifest().rollout, query, serving) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
    if let Err(e) = deployments.keep_as(&hash, essence, None) {
        return error(StatusCode::INSUFFICIENT_STORAGE, e.to_string());
    }
    let input = RolloutInput {
        component: name,
        essence_hash: hash,
        size: essence.len() as u64,
        publisher: verified.publisher().to_string(),
        deployed_by: caller.to_string(),
        reason: "deploy".into(),
        canary,
        strategy_note,
    };
    begin(workflows, &input, query_value(query, "pause_before")).await
}

fn control(
    workflows: &Workflows,
    id: &str,
    action: &str,
    before: Option<&str>,
) -> Response<AdminBody> {
    let mut engine = workflows.engine();
    let Some(journal) = engine.journal(id) else {
        return error(StatusCode::NOT_FOUND, format!("no rollout {id}"));
    };
    if let Some(end) = journal.end() {
        return error(
            StatusCode::CONFLICT,
            format!(
                "rollout {id} has ended ({}): nothing to {action}",
                end.outcome.as_str()
            ),
        );
    }
    match (action, before) {
        ("pause", Some(step)) => {
            engine.pause_before(id, Some(step.to_string()), now_ms());
        }
        _ => {
            let (paused, cancel) = match action {
                "pause" => (Some(true), false),
                "resume" => (Some(false), false),
                _ => (None, true),
            };
            engine.control(id, paused, cancel, now_ms());
        }
    }
    drop(engine);
    workflows.wake();
    json(
        StatusCode::OK,
        &serde_json::json!({ "rollout": id, "requested": action }),
    )
}

async fn history(workflows: &Workflows, name: &str) -> Vec<VersionJson> {
    let versions = records::versions(workflows.kv(), name).await;
    let current = crate::replication::lattice_record(workflows.kv(), name).await;
    let current_index = current.and_then(|c| {
        versions
            .iter()
            .rposition(|v| v.essence_hash == c.essence_hash)
    });
    versions
        .into_iter()
        .enumerate()
        .map(|(i, v)| VersionJson {
            version: i as u32 + 1,
            essence_hash: v.essence_hash,
            size: v.size,
            publisher: v.publisher,
            deployed_by: v.deployed_by,
            switched_ms: v.switched_ms,
            rollout: v.rollout,
            reason: v.reason,
            current: Some(i) == current_index,
        })
        .collect()
}

async fn rollback(
    workflows: &Arc<Workflows>,
    caller: &aether_identity::PublicKey,
    name: &str,
    to: Option<&str>,
    query: Option<&str>,
) -> Response<AdminBody> {
    // A rollback goes all at once unless the command line asks for a canary.
    let (canary, strategy_note) =
        match super::strategy::resolve(&aether_manifest::Rollout::default(), query, true) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        };
    let versions = history(workflows, name).await;
    if versions.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!("`{name}` has no versions rolled out: nothing to roll back to"),
        );
    }
    let current = versions.iter().position(|v| v.current);
    let target = match to {
        Some(text) => {
            let Ok(n) = text.trim_start_matches('v').parse::<u32>() else {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("--to {text:?} is not a version number"),
                );
            };
            match versions.iter().find(|v| v.version == n) {
                Some(v) if v.current => {
                    return error(
                        StatusCode::CONFLICT,
                        format!("version {n} of `{name}` is already current"),
                    );
                }
                Some(v) => v,
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "`{name}` has no version {n}; it has versions 1 to {}",
                            versions.len()
                        ),
                    );
                }
            }
        }
        None => {
            let before = current.unwrap_or(versions.len());
            match versions[..before]
                .iter()
                .rev()
                .find(|v| current.is_none_or(|c| v.essence_hash != versions[c].essence_hash))
            {
                Some(v) => v,
                None => {
                    return error(
                        StatusCode::CONFLICT,
                        format!("`{name}` has no version before the current one to roll back to"),
                    );
                }
            }
        }
    };
    let input = RolloutInput {
        component: name.to_string(),
        essence_hash: target.essence_hash.clone(),
        size: target.size,
        publisher: target.publisher.clone(),
        deployed_by: caller.to_string(),
        reason: format!("rollback to version {}", target.version),
        canary,
        strategy_note,
    };
    begin(workflows, &input, None).await
}

/// What the journal of `id` and the nodes' progress say.
pub(crate) async fn status(workflows: &Workflows, id: &str) -> Option<RolloutStatusJson> {
    let journal: Journal = workflows.engine().journal(id)?.clone();
    let def = journal.definition()?.clone();
    let input: Option<RolloutInput> = serde_json::from_value(def.input.clone()).ok();
    let progress: Vec<(String, Progress)> =
        records::list(workflows.kv(), PROGRESS_BUCKET, &format!("{id}/")).await;
    let control = journal.control();
    let end = journal.end().cloned();
    let lease = journal.lease().cloned();
    let mut steps: Vec<RolloutStepJson> = journal
        .steps()
        .into_iter()
        .map(|s| {
            let (output, error) = match &s.result {
                StepResult::Ok(v) => (v.clone(), None),
                StepResult::Err(e) => (Value::Null, Some(e.clone())),
            };
            RolloutStepJson {
                index: s.index,
                name: s.name.clone(),
                state: if error.is_some() { "failed" } else { "done" }.into(),
                compensates: s.compensates,
                node: node_text(&s.epoch.holder),
                epoch: s.epoch.n,
                started_ms: s.started_ms,
                finished_ms: Some(s.finished_ms),
                output,
                error,
            }
        })
        .collect();
    let mut held = false;
    if end.is_none() {
        let done = journal.steps();
        let ctx = aether_workflow::PlanContext {
            cancel_requested: control.cancel,
        };
        let next = if def.kind == KIND {
            RolloutPlanner.next(&def.input, &done, &ctx)
        } else {
            super::drain::DrainPlanner.next(&def.input, &done, &ctx)
        };
        if let aether_workflow::Next::Step {
            name, compensates, ..
        } = next
        {
            held |= control.pause_before.as_deref() == Some(name.as_str()) && !control.cancel;
            steps.push(RolloutStepJson {
                index: done.len() as u32,
                name,
                state: if control.paused || held {
                    "paused"
                } else {
                    "running"
                }
                .into(),
                compensates,
                node: lease
                    .as_ref()
                    .map(|l| node_text(&l.epoch.holder))
                    .unwrap_or_default(),
                epoch: lease.as_ref().map_or(0, |l| l.epoch.n),
                started_ms: done.last().map_or(def.created_ms, |s| s.finished_ms),
                finished_ms: None,
                output: Value::Null,
                error: None,
            });
        }
    }
    let superseded_by = super::reconcile::superseded_by(&workflows.engine(), id);
    let mut outcome_reason = end.as_ref().map(|e| e.reason.clone()).unwrap_or_default();
    let state = match (&end, control.paused, &superseded_by) {
        (Some(_), _, Some(later)) => {
            outcome_reason = format!(
                "rollout {later} of the same component started while this one ran (on the other side of a partition) and finished: its version serves"
            );
            "superseded".to_string()
        }
        (Some(e), _, None) => e.outcome.as_str().to_string(),
        (None, paused, _) if paused || held => "paused".into(),
        (None, _, _) => "running".into(),
    };
    Some(RolloutStatusJson {
        id: id.to_string(),
        kind: def.kind.clone(),
        component: input
            .as_ref()
            .map(|i| i.component.clone())
            .unwrap_or_default(),
        essence_hash: input
            .as_ref()
            .map(|i| i.essence_hash.clone())
            .unwrap_or_default(),
        reason: input.as_ref().map(|i| i.reason.clone()).unwrap_or_default(),
        state,
        outcome_reason,
        started_ms: def.created_ms,
        started_by: node_text(&def.created_by),
        ended_ms: end.as_ref().map(|e| e.at_ms),
        driver: lease
            .as_ref()
            .map(|l| node_text(&l.epoch.holder))
            .unwrap_or_default(),
        epoch: lease.as_ref().map_or(0, |l| l.epoch.n),
        steps,
        leases: journal
            .leases()
            .map(|l| LeaseJson {
                epoch: l.epoch.n,
                node: node_text(&l.epoch.holder),
                reason: match l.reason {
                    LeaseReason::Started => "started",
                    LeaseReason::HolderDead => "holder-dead",
                    LeaseReason::LeaseLapsed => "lease-lapsed",
                    LeaseReason::Resumed => "resumed",
                }
                .into(),
                resumed_at: l.resumed_at,
                taken_ms: l.taken_ms,
            })
            .collect(),
        nodes: progress
            .into_iter()
            .map(|(key, p)| RolloutNodeJson {
                node: key
                    .split_once('/')
                    .map(|(_, n)| n.to_string())
                    .unwrap_or(key),
                fetched: p.fetched,
                compiled: p.compiled,
                serving: p.serving,
                error: p.error,
            })
            .collect(),
        paused: control.paused || held,
        cancel_requested: control.cancel,
        pause_before: control.pause_before.clone(),
        strategy: match input.as_ref().and_then(|i| i.canary.as_ref()) {
            Some(_) => "canary",
            None => "all-at-once",
        }
        .into(),
        strategy_note: input
            .as_ref()
            .map(|i| i.strategy_note.clone())
            .unwrap_or_default(),
        canary: match &input {
            Some(i) if def.kind == KIND => canary_json(workflows, id, i).await,
            _ => None,
        },
    })
}

/// A canary rollout's share now and what the hosts measured of both versions.
async fn canary_json(workflows: &Workflows, id: &str, input: &RolloutInput) -> Option<CanaryJson> {
    let plan = input.canary.as_ref()?;
    let share: Option<CanaryShare> =
        records::read(workflows.kv(), CANARY_BUCKET, &input.component).await;
    let (serving, new, _) = records::canary_health(workflows.kv(), id).await;
    let health = |s: &Summary| VersionHealthJson {
        requests: s.requests,
        errors: s.errors,
        faults: s.faults,
        p99_ms: s.p99().map(|d| d.as_secs_f64() * 1000.0),
    };
    Some(CanaryJson {
        weight: share.filter(|s| s.rollout == id).map_or(0, |s| s.weight),
        steps: plan.steps.clone(),
        interval_ms: plan.interval_ms,
        serving: health(&serving),
        new: health(&new),
    })
}
