//! `deploy` as a rollout, `rollout list|status|watch|pause|resume|cancel`, `history`, `rollback`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aether_admin::client::{AdminClient, ClientError};
use aether_admin::types::{
    ComponentStatus, HistoryJson, NodeStatus, RolloutStarted, RolloutStatusJson,
};
use bytes::Bytes;
use http::Method;

use crate::RolloutCommand;

/// How often a followed rollout is read.
const POLL: Duration = Duration::from_millis(200);
/// How long a followed rollout may be unreadable (its node restarting) before giving up.
const UNREACHABLE_FOR: Duration = Duration::from_secs(30);

/// Starts a rollout of `essence`; `None` when the node has no rollouts (not in a lattice), so
/// the caller deploys directly.
pub async fn start(
    client: &AdminClient,
    essence: Vec<u8>,
    query: &str,
) -> anyhow::Result<Option<RolloutStarted>> {
    let path = if query.is_empty() {
        "/v1/rollouts".to_string()
    } else {
        format!("/v1/rollouts?{query}")
    };
    match client
        .json::<RolloutStarted>(Method::POST, &path, Bytes::from(essence))
        .await
    {
        Ok(started) => Ok(Some(started)),
        Err(ClientError::Api { status, .. }) if status == http::StatusCode::NOT_FOUND => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// After `deploy` or `rollback` started a rollout: print its id (detached) or follow it to its
/// end. Fails unless it finished.
pub async fn after_start(
    client: &AdminClient,
    started: &RolloutStarted,
    detach: bool,
    json: bool,
    since: Instant,
) -> anyhow::Result<()> {
    if detach {
        if json {
            println!("{}", serde_json::to_string_pretty(started)?);
        } else {
            println!(
                "Rollout {} of {} started; follow it with `alkahest rollout watch {}`",
                started.rollout, started.component, started.rollout
            );
        }
        return Ok(());
    }
    if !json {
        println!(
            "Rollout {} of {} ({})",
            started.rollout,
            started.component,
            &started.essence_hash[..12.min(started.essence_hash.len())]
        );
    }
    let end = watch(client, &started.rollout, !json).await?;
    if end.state == "paused" {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "rollout": end }))?
            );
        } else {
            println!(
                "Rollout {} holds before `{}`; go on with `alkahest rollout resume {}`",
                end.id,
                end.pause_before.as_deref().unwrap_or("the next step"),
                end.id
            );
        }
        return Ok(());
    }
    if end.state != "finished" {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "rollout": end }))?
            );
        }
        anyhow::bail!(
            "rollout {} ended {}: {}",
            end.id,
            end.state,
            if end.outcome_reason.is_empty() {
                "no reason given"
            } else {
                &end.outcome_reason
            }
        );
    }
    let replaced = end
        .steps
        .iter()
        .find(|s| s.name == "switch")
        .is_some_and(|s| s.output["replaced"] == serde_json::Value::Bool(true));
    let component: Option<ComponentStatus> = client
        .json(
            Method::GET,
            &format!("/v1/components/{}", end.component),
            Bytes::new(),
        )
        .await
        .ok();
    if json {
        // What a direct deploy prints (`component`, `replaced`), plus the rollout.
        let out =
            serde_json::json!({ "component": component, "replaced": replaced, "rollout": end });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "Deployed {} ({}) to {} in {} ms{}",
        end.component,
        &end.essence_hash[..12.min(end.essence_hash.len())],
        client.addr(),
        since.elapsed().as_millis(),
        if replaced {
            ", replacing the previous version"
        } else {
            ""
        }
    );
    let status: NodeStatus = client.json(Method::GET, "/v1/status", Bytes::new()).await?;
    if let Some(c) = &component {
        crate::output::print_urls(&status.http_addr, c);
    }
    Ok(())
}

/// Reads one rollout.
async fn read(client: &AdminClient, id: &str) -> Result<RolloutStatusJson, ClientError> {
    client
        .json(Method::GET, &format!("/v1/rollouts/{id}"), Bytes::new())
        .await
}

/// Follows a rollout until it ends, printing each step as it completes when `print`.
pub async fn watch(
    client: &AdminClient,
    id: &str,
    print: bool,
) -> anyhow::Result<RolloutStatusJson> {
    let mut shown: BTreeSet<(u32, String)> = BTreeSet::new();
    let mut leases_shown = 0;
    let mut strategy_shown = false;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let status = match read(client, id).await {
            Ok(s) => {
                unreachable_since = None;
                s
            }
            Err(e @ ClientError::Api { .. }) => return Err(e.into()),
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_FOR {
                    anyhow::bail!(
                        "{e}\nthe rollout goes on in the lattice: re-attach from another node with \
                         `alkahest --node ADDR rollout watch {id}`"
                    );
                }
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        if print {
            if !strategy_shown {
                strategy_shown = true;
                print_strategy(&status);
            }
            for lease in status
                .leases
                .iter()
                .skip(leases_shown)
                .filter(|l| l.reason != "started")
            {
                println!(
                    "  ↻ {} took over ({}) after step {}",
                    short(&lease.node),
                    lease.reason,
                    lease.resumed_at
                );
            }
            leases_shown = status.leases.len();
            for step in &status.steps {
                if step.state == "running" || step.state == "paused" {
                    continue;
                }
                if !shown.insert((step.index, step.state.clone())) {
                    continue;
                }
                let took = step
                    .finished_ms
                    .map_or(0, |f| f.saturating_sub(step.started_ms));
                match &step.error {
                    None => println!(
                        "  ✓ {:<12} {took} ms on {}{}",
                        step.name,
                        short(&step.node),
                        gate_detail(&step.output)
                    ),
                    Some(e) => println!("  ✗ {:<12} {e}", step.name),
                }
            }
        }
        // A rollout held before a step (`--pause-before`) is followed up to the hold.
        let held = status.state == "paused" && status.pause_before.is_some();
        if held || (status.state != "running" && status.state != "paused") {
            return Ok(status);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How the rollout moves traffic, in a line (and why it differs from what was asked).
fn print_strategy(s: &RolloutStatusJson) {
    if let Some(c) = &s.canary {
        let shares: Vec<String> = c
            .steps
            .iter()
            .chain(std::iter::once(&100))
            .map(|w| format!("{w}%"))
            .collect();
        println!(
            "  canary: {}, {} s per step, rolled back by itself if a health gate fails",
            shares.join(" → "),
            c.interval_ms / 1000
        );
    }
    if !s.strategy_note.is_empty() {
        println!("  note: {}", s.strategy_note);
    }
}

/// What a passed health gate saw, for its line.
fn gate_detail(output: &serde_json::Value) -> String {
    let (Some(new), Some(old)) = (output.get("new"), output.get("serving")) else {
        return String::new();
    };
    let side = |v: &serde_json::Value| {
        format!(
            "{} requests, {} 5xx, p99 {}",
            v["requests"],
            v["errors"],
            v["p99_ms"]
                .as_f64()
                .map_or("-".to_string(), |ms| format!("{ms:.1} ms"))
        )
    };
    let judged = if output["judged"] == serde_json::Value::Bool(true) {
        ""
    } else {
        " (too few requests to judge)"
    };
    format!(": new {}; serving {}{judged}", side(new), side(old))
}

fn short(node: &str) -> &str {
    let key = node.strip_prefix("ed25519:").unwrap_or(node);
    &key[..key.len().min(10)]
}

fn print_status(s: &RolloutStatusJson) {
    println!("{}  {}  {}  ({})", s.id, s.component, s.state, s.reason);
    print_strategy(s);
    if let Some(c) = s.canary.as_ref().filter(|c| c.weight > 0) {
        println!(
            "  traffic: new version {}% ({} requests, {} 5xx), serving version {} requests, {} 5xx",
            c.weight, c.new.requests, c.new.errors, c.serving.requests, c.serving.errors
        );
    }
    if !s.outcome_reason.is_empty() {
        println!("  why: {}", s.outcome_reason);
    }
    println!("  driver: {} (epoch {})", short(&s.driver), s.epoch);
    for l in s.leases.iter().filter(|l| l.reason != "started") {
        println!(
            "  takeover: {} ({}) after step {}",
            short(&l.node),
            l.reason,
            l.resumed_at
        );
    }
    for step in &s.steps {
        let detail = step.error.clone().unwrap_or_default();
        println!(
            "  {:>2} {:<12} {:<8} {} {detail}",
            step.index,
            step.name,
            step.state,
            short(&step.node)
        );
    }
    for n in &s.nodes {
        println!(
            "  node {}: fetched {} compiled {} serving {}{}",
            short(&n.node),
            n.fetched,
            n.compiled,
            n.serving,
            n.error
                .as_ref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default()
        );
    }
}

/// `alkahest rollout …`.
pub async fn rollout(client: &AdminClient, command: RolloutCommand) -> anyhow::Result<()> {
    match command {
        RolloutCommand::List { json } => {
            let all: Vec<RolloutStatusJson> = client
                .json(Method::GET, "/v1/rollouts", Bytes::new())
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else if all.is_empty() {
                println!("no rollouts");
            } else {
                for s in &all {
                    println!("{}  {:<20} {:<12} {}", s.id, s.component, s.state, s.reason);
                }
            }
        }
        RolloutCommand::Status { id, json } => {
            let s = read(client, &id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
        }
        RolloutCommand::Watch { id, json } => {
            let s = watch(client, &id, !json).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("{} {}", s.id, s.state);
            }
        }
        RolloutCommand::Pause { id, before, json } => {
            let action = match &before {
                Some(step) => format!(
                    "pause?{}",
                    form_urlencoded::Serializer::new(String::new())
                        .append_pair("before", step)
                        .finish()
                ),
                None => "pause".to_string(),
            };
            control(client, &id, &action, json).await?
        }
        RolloutCommand::Resume { id, json } => control(client, &id, "resume", json).await?,
        RolloutCommand::Cancel { id, json } => control(client, &id, "cancel", json).await?,
    }
    Ok(())
}

async fn control(client: &AdminClient, id: &str, action: &str, json: bool) -> anyhow::Result<()> {
    let answer: serde_json::Value = client
        .json(
            Method::POST,
            &format!("/v1/rollouts/{id}/{action}"),
            Bytes::new(),
        )
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "asked rollout {id} to {}",
            action.replace("?before=", " before ")
        );
    }
    Ok(())
}

/// `alkahest history NAME`.
pub async fn history(client: &AdminClient, name: &str, json: bool) -> anyhow::Result<()> {
    let h: HistoryJson = client
        .json(Method::GET, &format!("/v1/history/{name}"), Bytes::new())
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(());
    }
    if h.versions.is_empty() {
        println!("{name}: no versions rolled out yet");
    }
    for v in &h.versions {
        println!(
            "{}{:>3}  {}  {}  {}  by {}",
            if v.current { "*" } else { " " },
            v.version,
            &v.essence_hash[..12.min(v.essence_hash.len())],
            v.rollout,
            v.reason,
            short(&v.deployed_by)
        );
    }
    Ok(())
}

/// `alkahest drain NODE`.
pub async fn drain(
    client: &AdminClient,
    node: &str,
    detach: bool,
    json: bool,
) -> anyhow::Result<()> {
    let started: RolloutStarted = client
        .json(Method::POST, &format!("/v1/drain/{node}"), Bytes::new())
        .await?;
    if detach {
        if json {
            println!("{}", serde_json::to_string_pretty(&started)?);
        } else {
            println!(
                "Drain {} of {node} started; follow it with `alkahest rollout watch {}`",
                started.rollout, started.rollout
            );
        }
        return Ok(());
    }
    let end = watch(client, &started.rollout, !json).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&end)?);
    }
    if end.state != "finished" {
        anyhow::bail!(
            "drain {} ended {}: {}",
            end.id,
            end.state,
            end.outcome_reason
        );
    }
    if !json {
        println!("{node} is drained: placement puts nothing on it until `alkahest undrain`");
    }
    Ok(())
}

/// `alkahest undrain NODE`.
pub async fn undrain(client: &AdminClient, node: &str, json: bool) -> anyhow::Result<()> {
    let answer: serde_json::Value = client
        .json(Method::DELETE, &format!("/v1/drain/{node}"), Bytes::new())
        .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!("{node} is back in placement");
    }
    Ok(())
}

/// `alkahest rollback NAME [--to VERSION]`.
pub async fn rollback(
    client: &AdminClient,
    name: &str,
    to: Option<u32>,
    strategy: &crate::StrategyArgs,
    detach: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut query = strategy.query();
    if let Some(v) = to {
        query = format!("to={v}&{query}");
    }
    let path = format!("/v1/rollback/{name}?{query}");
    let started: RolloutStarted = client.json(Method::POST, &path, Bytes::new()).await?;
    after_start(client, &started, detach, json, Instant::now()).await
}
