//! What each rollout step does on the node that drives it. Every step is idempotent: a step cut
//! short by its driver's death runs again on the node that takes over.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_kv::KvHandle;
use aether_mesh::{MemberStatus, MeshHandle};
use aether_workflow::{Engine, Outcome, StepResult, Task};
use serde_json::{Value, json};

use super::gates;
use super::plan::{KIND, RolloutInput, SUPERSEDED, step_weight};
use super::records::{
    self, HISTORY_BUCKET, PREVIOUS_BUCKET, PROGRESS_BUCKET, Progress, STAGE_BUCKET, Stage, Version,
    now_ms,
};
use crate::deployments::Deployments;
use crate::replication::{self, DEPLOYMENTS_BUCKET, Replication};

/// How long every live member has to fetch the staged essence.
const DISTRIBUTE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long every live member has to compile it.
const PRECOMPILE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long every live member has to serve it after the switch.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);
/// How often progress is read while waiting.
const POLL: Duration = Duration::from_millis(100);

/// What the steps need of the node.
pub(crate) struct StepContext {
    pub kv: KvHandle,
    pub mesh: MeshHandle,
    pub deployments: Arc<Deployments>,
    pub replication: Arc<Replication>,
    pub engine: Arc<Mutex<Engine>>,
    pub schedule: Arc<crate::schedule::Schedule>,
}

/// Runs one step and returns its result.
pub(crate) async fn run(ctx: &StepContext, task: &Task) -> StepResult {
    let result = if task.kind == super::drain::KIND {
        match serde_json::from_value::<super::drain::DrainInput>(task.workflow_input.clone()) {
            Ok(input) => {
                super::drain::run(
                    &ctx.kv,
                    &ctx.schedule,
                    &ctx.deployments,
                    &task.workflow,
                    &task.name,
                    &input,
                )
                .await
            }
            Err(e) => Err(format!("unreadable drain input: {e}")),
        }
    } else {
        rollout_step(ctx, task).await
    };
    match result {
        Ok(v) => StepResult::Ok(v),
        Err(e) => StepResult::Err(e),
    }
}

async fn rollout_step(ctx: &StepContext, task: &Task) -> Result<Value, String> {
    let input: RolloutInput = serde_json::from_value(task.workflow_input.clone())
        .map_err(|e| format!("unreadable rollout input: {e}"))?;
    match task.name.as_str() {
        "verify" => verify(ctx, &input).await,
        "distribute" => distribute(ctx, &task.workflow, &input).await,
        "precompile" => {
            wait_for(
                ctx,
                &task.workflow,
                &input,
                "compile",
                PRECOMPILE_TIMEOUT,
                |p| p.compiled,
            )
            .await
        }
        "switch" => switch(ctx, &task.workflow, &input).await,
        "retire" => retire(ctx, &task.workflow, &input).await,
        "switch-back" => switch_back(ctx, &task.workflow, &input).await,
        "unstage" => unstage(ctx, &task.workflow, &input).await,
        "canary-off" => gates::clear_share(ctx, &task.workflow, &input).await,
        name => match (step_weight(name), &input.canary) {
            (Some(weight), _) if name.starts_with("canary-") => {
                gates::set_share(ctx, &task.workflow, &input, weight).await
            }
            (Some(weight), Some(plan)) => {
                let interval = Duration::from_millis(plan.interval_ms);
                gates::gate(ctx, &task.workflow, weight, interval, &plan.gates).await
            }
            _ => Err(format!("no step named {name:?} on this node")),
        },
    }
}

fn deployment_record(input: &RolloutInput) -> replication::Record {
    replication::Record {
        name: input.component.clone(),
        essence_hash: input.essence_hash.clone(),
        size: input.size,
        publisher: input.publisher.clone(),
        deployed_at: now_ms() / 1000,
    }
}

/// The driver holds the essence (from its store or a member's) and trusts its publisher.
async fn verify(ctx: &StepContext, input: &RolloutInput) -> Result<Value, String> {
    let bytes = ctx
        .replication
        .fetch(&deployment_record(input))
        .await
        .ok_or_else(|| format!("no member could send essence {}", input.essence_hash))?;
    let verified = ctx
        .deployments
        .verify_essence(&bytes)
        .map_err(|e| e.to_string())?;
    let manifest = verified.manifest();
    if manifest.name != input.component {
        return Err(format!(
            "the essence is component `{}`, not `{}`",
            manifest.name, input.component
        ));
    }
    // `fetch` checked the bytes against the hash.
    ctx.deployments
        .keep_as(&input.essence_hash, &bytes, None)
        .map_err(|e| e.to_string())?;
    Ok(json!({ "size": bytes.len(), "version": manifest.version }))
}

/// Stages the version, then waits until every live member holds its essence.
async fn distribute(ctx: &StepContext, id: &str, input: &RolloutInput) -> Result<Value, String> {
    write_stage(ctx, id, input).await?;
    wait_for(ctx, id, input, "fetch", DISTRIBUTE_TIMEOUT, |p| p.fetched).await
}

/// Writes the staging record of `id`'s version (members then fetch and compile it).
async fn write_stage(ctx: &StepContext, id: &str, input: &RolloutInput) -> Result<(), String> {
    let stage = Stage {
        rollout: id.to_string(),
        component: input.component.clone(),
        essence_hash: input.essence_hash.clone(),
        size: input.size,
        publisher: input.publisher.clone(),
    };
    let current: Option<Stage> = records::read(&ctx.kv, STAGE_BUCKET, &stage.key()).await;
    if current.as_ref() != Some(&stage) {
        records::write(&ctx.kv, STAGE_BUCKET, &stage.key(), &stage).await?;
    }
    Ok(())
}

/// Stages the version as soon as its rollout is accepted, and waits (up to `timeout`) until a
/// second live member holds the essence, so that the death of the node that took the upload
/// cannot lose the only copy. Returns whether a second copy exists (or no other member lives).
pub(crate) async fn stage_early(
    ctx: &StepContext,
    id: &str,
    input: &RolloutInput,
    timeout: Duration,
) -> bool {
    if let Err(e) = write_stage(ctx, id, input).await {
        tracing::warn!(rollout = %id, "not staged early: {e}");
        return false;
    }
    let started = Instant::now();
    loop {
        let live = live_members(ctx).await.map(|m| m.len()).unwrap_or(0);
        let progress: Vec<Progress> =
            records::list::<Progress>(&ctx.kv, PROGRESS_BUCKET, &format!("{id}/"))
                .await
                .into_iter()
                .map(|(_, p)| p)
                .filter(|p| p.essence_hash == input.essence_hash)
                .collect();
        let holders = progress.iter().filter(|p| p.fetched).count();
        if live < 2 || holders >= 2 {
            return true;
        }
        // A member could not fetch it: the rollout's own steps will say why.
        if progress.iter().any(|p| p.error.is_some()) {
            return false;
        }
        if started.elapsed() > timeout {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The members believed alive, by their key's text.
async fn live_members(ctx: &StepContext) -> Result<Vec<String>, String> {
    let members = ctx.mesh.members().await.map_err(|e| e.to_string())?;
    Ok(members
        .into_iter()
        .filter(|m| matches!(m.status, MemberStatus::Alive | MemberStatus::Suspect))
        .map(|m| m.id.to_string())
        .collect())
}

/// Waits until every live member's progress satisfies `done`; fails on a member's error or at
/// the deadline, naming the members that were not done.
async fn wait_for(
    ctx: &StepContext,
    id: &str,
    input: &RolloutInput,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Progress) -> bool,
) -> Result<Value, String> {
    let started = Instant::now();
    loop {
        let members = live_members(ctx).await?;
        let progress: Vec<(String, Progress)> =
            records::list(&ctx.kv, PROGRESS_BUCKET, &format!("{id}/")).await;
        let of = |m: &str| {
            progress
                .iter()
                .find(|(k, p)| k.ends_with(m) && p.essence_hash == input.essence_hash)
                .map(|(_, p)| p)
        };
        if let Some((node, err)) = members
            .iter()
            .find_map(|m| of(m).and_then(|p| p.error.clone()).map(|e| (m, e)))
        {
            return Err(format!("{node}: {err}"));
        }
        let waiting: Vec<&String> = members
            .iter()
            .filter(|m| !of(m).is_some_and(&done))
            .collect();
        if waiting.is_empty() {
            return Ok(
                json!({ "nodes": members.len(), "ms": started.elapsed().as_millis() as u64 }),
            );
        }
        if started.elapsed() > timeout {
            return Err(format!(
                "{} of {} nodes did not {what} within {} s: {}",
                waiting.len(),
                members.len(),
                timeout.as_secs(),
                waiting
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A newer rollout of the same component that has not failed, if any: it takes this one's place.
pub(crate) fn newer_rollout(ctx: &StepContext, id: &str, component: &str) -> Option<String> {
    let engine = ctx.engine.lock().unwrap_or_else(|p| p.into_inner());
    let me = engine.journal(id)?.definition()?.created_ms;
    engine
        .journals()
        .iter()
        .filter(|(other, _)| other.as_str() != id)
        .filter_map(|(other, j)| {
            let def = j.definition()?;
            let input: RolloutInput = serde_json::from_value(def.input.clone()).ok()?;
            let failed = j.end().is_some_and(|e| e.outcome != Outcome::Finished);
            (def.kind == KIND
                && input.component == component
                && !failed
                && (def.created_ms, other.as_str()) > (me, id))
                .then(|| other.clone())
        })
        .next()
}

/// Points the lattice's deployment record at the new version and waits until every live
/// member serves it.
async fn switch(ctx: &StepContext, id: &str, input: &RolloutInput) -> Result<Value, String> {
    if let Some(newer) = newer_rollout(ctx, id, &input.component) {
        return Err(format!(
            "{SUPERSEDED}rollout {newer} of `{}` started later",
            input.component
        ));
    }
    let current = replication::lattice_record(&ctx.kv, &input.component).await;
    let saved: Option<Option<replication::Record>> =
        records::read(&ctx.kv, PREVIOUS_BUCKET, id).await;
    let previous = match saved {
        Some(p) => p,
        None => {
            let previous = current
                .clone()
                .filter(|r| r.essence_hash != input.essence_hash);
            records::write(&ctx.kv, PREVIOUS_BUCKET, id, &previous).await?;
            previous
        }
    };
    if current
        .as_ref()
        .is_none_or(|r| r.essence_hash != input.essence_hash)
    {
        let mut record = deployment_record(input);
        // The route claim keeps the time the component was first deployed.
        if let Some(p) = &previous {
            record.deployed_at = p.deployed_at;
        }
        records::write(&ctx.kv, DEPLOYMENTS_BUCKET, &input.component, &record).await?;
    }
    let started = Instant::now();
    loop {
        match replication::lattice_record(&ctx.kv, &input.component).await {
            None => {
                return Err(format!(
                    "{SUPERSEDED}`{}` was removed from the lattice: one of its routes belongs to a component deployed first",
                    input.component
                ));
            }
            Some(r) if r.essence_hash != input.essence_hash => {
                return Err(format!(
                    "{SUPERSEDED}another deploy of `{}` (essence {}) replaced it",
                    input.component,
                    &r.essence_hash[..12.min(r.essence_hash.len())]
                ));
            }
            Some(_) => {}
        }
        let waited = wait_for(ctx, id, input, "serve it", Duration::ZERO, |p| p.serving).await;
        match waited {
            Ok(v) => {
                // Every node serves the new version as its own: a canary's share is moot.
                gates::clear_share(ctx, id, input).await?;
                return Ok(json!({
                    "replaced": previous.is_some(),
                    "previous": previous.map(|p| p.essence_hash),
                    "nodes": v["nodes"],
                    "ms": started.elapsed().as_millis() as u64,
                }));
            }
            Err(e) if started.elapsed() > SWITCH_TIMEOUT => return Err(e),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Drops the staging record and writes the version into the history.
async fn retire(ctx: &StepContext, id: &str, input: &RolloutInput) -> Result<Value, String> {
    let key = format!("{}/{id}", input.component);
    if records::read::<Version>(&ctx.kv, HISTORY_BUCKET, &key)
        .await
        .is_none()
    {
        let version = Version {
            essence_hash: input.essence_hash.clone(),
            size: input.size,
            publisher: input.publisher.clone(),
            deployed_by: input.deployed_by.clone(),
            switched_ms: now_ms(),
            rollout: id.to_string(),
            reason: input.reason.clone(),
        };
        records::write(&ctx.kv, HISTORY_BUCKET, &key, &version).await?;
    }
    unstage(ctx, id, input).await?;
    gates::clear_share(ctx, id, input).await?;
    let versions = records::versions(&ctx.kv, &input.component).await;
    let number = versions.iter().position(|v| v.rollout == id).map(|i| i + 1);
    Ok(json!({ "version": number }))
}

/// Puts back the deployment record the switch replaced (or removes the component if there was
/// none), unless another deploy replaced this one meanwhile.
async fn switch_back(ctx: &StepContext, id: &str, input: &RolloutInput) -> Result<Value, String> {
    let previous: Option<Option<replication::Record>> =
        records::read(&ctx.kv, PREVIOUS_BUCKET, id).await;
    let current = replication::lattice_record(&ctx.kv, &input.component).await;
    if current
        .as_ref()
        .is_none_or(|r| r.essence_hash != input.essence_hash)
    {
        return Ok(json!({ "restored": false }));
    }
    match previous.flatten() {
        Some(p) => {
            records::write(&ctx.kv, DEPLOYMENTS_BUCKET, &input.component, &p).await?;
            Ok(json!({ "restored": p.essence_hash }))
        }
        None => {
            records::delete(&ctx.kv, DEPLOYMENTS_BUCKET, &input.component).await?;
            Ok(json!({ "restored": null }))
        }
    }
}

/// Drops this rollout's staging record.
async fn unstage(ctx: &StepContext, id: &str, input: &RolloutInput) -> Result<Value, String> {
    let key = records::stage_key(&input.component, id);
    if records::read::<Stage>(&ctx.kv, STAGE_BUCKET, &key)
        .await
        .is_some()
    {
        records::delete(&ctx.kv, STAGE_BUCKET, &key).await?;
    }
    Ok(Value::Null)
}
