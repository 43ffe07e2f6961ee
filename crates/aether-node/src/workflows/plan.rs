//! What a rollout does next: a pure function of its input and recorded steps, so whichever node
//! drives it continues the same way.
//!
//! Forward steps, in order: `verify` (the driver holds the essence and it is trusted), `distribute`
//! (every live member holds it), `precompile` (every live member compiled it), for a canary
//! `canary-N` then `gate-N` for each step `N` below 100 (the new version serves N% of requests,
//! held for the interval and judged by the health gates), `switch` (the lattice's deployment
//! record names it, every live member serves it), `retire` (the staging record and the canary's
//! share go, the version enters the history). When a step fails (a gate included), or an
//! operator cancels, the done steps are undone newest first: `switch-back` restores the version
//! served before, `canary-off` sends every request to it again, `unstage` drops the staging
//! record (written as the rollout is accepted, so it undoes `verify`). The outcome: `failed` when no request had reached the new version, `rolled-back` when
//! some had and the rollout undid that, `superseded` when a newer rollout of the component (or
//! the owner of a route) took its place, `cancelled` on request.

use aether_workflow::{Next, Outcome, PlanContext, Planner, Saga, StepRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind name rollouts are registered under.
pub(crate) const KIND: &str = "rollout";

/// The forward steps of an all-at-once rollout.
pub(crate) const STEPS: [&str; 5] = ["verify", "distribute", "precompile", "switch", "retire"];

/// A canary: the shares of requests the new version gets before the switch, how long each is
/// held, and the gates each must pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct CanaryPlan {
    /// Percentages below 100, increasing (100 is the switch).
    pub steps: Vec<u32>,
    /// How long each step is held, in ms.
    pub interval_ms: u64,
    /// What the new version must not do worse than the serving one.
    pub gates: aether_manifest::Gates,
}

/// The forward steps of a rollout with this input.
pub(crate) fn forward_steps(input: &Value) -> Vec<String> {
    let canary = serde_json::from_value::<RolloutInput>(input.clone())
        .ok()
        .and_then(|i| i.canary);
    let mut steps: Vec<String> = STEPS[..3].iter().map(|s| s.to_string()).collect();
    for weight in canary.iter().flat_map(|c| &c.steps) {
        steps.push(format!("canary-{weight}"));
        steps.push(format!("gate-{weight}"));
    }
    steps.extend(STEPS[3..].iter().map(|s| s.to_string()));
    steps
}

/// The weight of a `canary-N` or `gate-N` step.
pub(crate) fn step_weight(name: &str) -> Option<u32> {
    name.strip_prefix("canary-")
        .or_else(|| name.strip_prefix("gate-"))
        .and_then(|n| n.parse().ok())
}

/// Errors of a step that mean another rollout took this one's place start with this.
pub(crate) const SUPERSEDED: &str = "superseded: ";

/// What a rollout deploys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct RolloutInput {
    /// The component's name.
    pub component: String,
    /// Hex SHA-256 of the essence.
    pub essence_hash: String,
    /// Its size in bytes.
    pub size: u64,
    /// The key that signed it.
    pub publisher: String,
    /// The admin key that asked for the rollout.
    pub deployed_by: String,
    /// Why: `deploy`, or `rollback to version N`.
    pub reason: String,
    /// The canary's steps; none for an all-at-once rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryPlan>,
    /// Why the strategy differs from the one asked for, if it does.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub strategy_note: String,
}

/// The rollout planner.
pub(crate) struct RolloutPlanner;

impl Planner for RolloutPlanner {
    fn next(&self, input: &Value, steps: &[&StepRecord], ctx: &PlanContext) -> Next {
        let saga = Saga::of(steps);
        let forward = forward_steps(input);
        let forward: Vec<&str> = forward.iter().map(String::as_str).collect();
        if let Some(next) = saga.next_forward(&forward, ctx.cancel_requested) {
            return next;
        }
        let superseded = saga.failure.is_some_and(|(_, e)| e.starts_with(SUPERSEDED));
        // Only the latest share is taken back: one `canary-off` undoes them all.
        let last_share = saga
            .forward
            .iter()
            .filter(|s| s.name.starts_with("canary-"))
            .map(|s| s.index)
            .max();
        // A switch is undone even when it failed (its record may have been written), but not
        // when another deployment took the route or the name: the winner's record stays.
        let undo = |s: &StepRecord| match s.name.as_str() {
            "switch" if !superseded => Some("switch-back".to_string()),
            // The version is staged as the rollout is accepted, before `verify`.
            "verify" => Some("unstage".to_string()),
            name if name.starts_with("canary-") && Some(s.index) == last_share => {
                Some("canary-off".to_string())
            }
            _ => None,
        };
        if let Some(next) = saga.next_undo(undo) {
            return next;
        }
        let switched = saga
            .forward
            .iter()
            .any(|s| s.name == "switch" || s.name.starts_with("canary-"));
        match saga.failure {
            Some((_, e)) if superseded => Next::End {
                outcome: Outcome::Superseded,
                reason: e.trim_start_matches(SUPERSEDED).to_string(),
            },
            Some((step, e)) => Next::End {
                outcome: if switched {
                    Outcome::RolledBack
                } else {
                    Outcome::Failed
                },
                reason: format!("{step}: {e}"),
            },
            None => Next::End {
                outcome: Outcome::Cancelled,
                reason: "cancelled by an operator".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_workflow::{Epoch, NodeId, StepResult};

    fn record(
        index: u32,
        name: &str,
        ok: Result<(), &str>,
        compensates: Option<u32>,
    ) -> StepRecord {
        StepRecord {
            index,
            name: name.into(),
            input: Value::Null,
            compensates,
            result: match ok {
                Ok(()) => StepResult::Ok(Value::Null),
                Err(e) => StepResult::Err(e.into()),
            },
            epoch: Epoch {
                n: 1,
                holder: NodeId([1; 32]),
            },
            started_ms: 0,
            finished_ms: 0,
        }
    }

    /// Runs the planner to its end, with `fail` failing the named step; returns the step names
    /// and the outcome.
    fn run(fail: Option<(&str, &str)>, cancel_after: Option<usize>) -> (Vec<String>, Outcome) {
        run_with(&Value::Null, fail, cancel_after)
    }

    fn run_with(
        input: &Value,
        fail: Option<(&str, &str)>,
        cancel_after: Option<usize>,
    ) -> (Vec<String>, Outcome) {
        let mut steps: Vec<StepRecord> = Vec::new();
        loop {
            let refs: Vec<&StepRecord> = steps.iter().collect();
            let ctx = PlanContext {
                cancel_requested: cancel_after.is_some_and(|n| steps.len() >= n),
            };
            match RolloutPlanner.next(input, &refs, &ctx) {
                Next::Step {
                    name, compensates, ..
                } => {
                    let result = match fail {
                        Some((f, e)) if f == name => Err(e),
                        _ => Ok(()),
                    };
                    steps.push(record(steps.len() as u32, &name, result, compensates));
                }
                Next::End { outcome, .. } => {
                    return (steps.into_iter().map(|s| s.name).collect(), outcome);
                }
            }
        }
    }

    #[test]
    fn a_healthy_rollout_runs_every_step() {
        let (steps, outcome) = run(None, None);
        assert_eq!(steps, STEPS);
        assert_eq!(outcome, Outcome::Finished);
    }

    #[test]
    fn failures_undo_what_was_done() {
        assert_eq!(
            run(Some(("verify", "no member has it")), None),
            (
                vec!["verify".to_string(), "unstage".to_string()],
                Outcome::Failed
            )
        );
        let (steps, outcome) = run(Some(("precompile", "does not compile")), None);
        assert_eq!(steps, ["verify", "distribute", "precompile", "unstage"]);
        assert_eq!(outcome, Outcome::Failed);
        let (steps, outcome) = run(Some(("switch", "2 nodes did not switch")), None);
        assert_eq!(
            steps,
            [
                "verify",
                "distribute",
                "precompile",
                "switch",
                "switch-back",
                "unstage"
            ]
        );
        assert_eq!(outcome, Outcome::RolledBack);
        let (steps, outcome) = run(Some(("switch", "superseded: by r-2")), None);
        assert_eq!(
            steps,
            ["verify", "distribute", "precompile", "switch", "unstage"]
        );
        assert_eq!(outcome, Outcome::Superseded);
    }

    #[test]
    fn a_canary_grows_in_steps_and_a_failed_gate_takes_the_share_back() {
        let input = serde_json::to_value(RolloutInput {
            component: "c".into(),
            essence_hash: "h".into(),
            size: 1,
            publisher: "p".into(),
            deployed_by: "d".into(),
            reason: "deploy".into(),
            canary: Some(CanaryPlan {
                steps: vec![5, 25],
                interval_ms: 1000,
                gates: aether_manifest::Gates::default(),
            }),
            strategy_note: String::new(),
        })
        .expect("serializes");
        let (steps, outcome) = run_with(&input, None, None);
        assert_eq!(
            steps,
            [
                "verify",
                "distribute",
                "precompile",
                "canary-5",
                "gate-5",
                "canary-25",
                "gate-25",
                "switch",
                "retire"
            ]
        );
        assert_eq!(outcome, Outcome::Finished);
        let (steps, outcome) = run_with(&input, Some(("gate-25", "health gate at 25%")), None);
        assert_eq!(
            &steps[5..],
            ["canary-25", "gate-25", "canary-off", "unstage"],
            "one undo takes every share back"
        );
        assert_eq!(outcome, Outcome::RolledBack);
        let (steps, outcome) = run_with(&input, Some(("canary-5", "no host loaded it")), None);
        assert_eq!(&steps[3..], ["canary-5", "canary-off", "unstage"]);
        assert_eq!(outcome, Outcome::RolledBack);
    }

    #[test]
    fn a_cancel_undoes_and_a_finished_rollout_ignores_it() {
        let (steps, outcome) = run(None, Some(2));
        assert_eq!(steps, ["verify", "distribute", "unstage"]);
        let (steps, _) = run(None, Some(1));
        assert_eq!(steps, ["verify", "unstage"]);
        assert_eq!(outcome, Outcome::Cancelled);
        let (_, outcome) = run(None, Some(5));
        assert_eq!(outcome, Outcome::Finished);
    }
}
