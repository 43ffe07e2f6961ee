//! What a rollout does next: a pure function of its input and recorded steps, so whichever node
//! drives it continues the same way.
//!
//! Forward steps, in order: `verify` (the driver holds the essence and it is trusted), `distribute`
//! (every live member holds it), `precompile` (every live member compiled it), `switch` (the
//! lattice's deployment record names it, every live member serves it), `retire` (the staging
//! record goes, the version enters the history). When a step fails, or an operator cancels, the
//! done steps are undone newest first: `switch-back` restores the version served before,
//! `unstage` drops the staging record. The outcome: `failed` when nothing had been switched,
//! `rolled-back` when the switch was undone, `superseded` when a newer rollout of the component
//! (or the owner of a route) took its place, `cancelled` on request.

use aether_workflow::{Next, Outcome, PlanContext, Planner, Saga, StepRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kind name rollouts are registered under.
pub(crate) const KIND: &str = "rollout";

/// The forward steps.
pub(crate) const STEPS: [&str; 5] = ["verify", "distribute", "precompile", "switch", "retire"];

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
}

/// The rollout planner.
pub(crate) struct RolloutPlanner;

impl Planner for RolloutPlanner {
    fn next(&self, _input: &Value, steps: &[&StepRecord], ctx: &PlanContext) -> Next {
        let saga = Saga::of(steps);
        if let Some(next) = saga.next_forward(&STEPS, ctx.cancel_requested) {
            return next;
        }
        let superseded = saga.failure.is_some_and(|(_, e)| e.starts_with(SUPERSEDED));
        // A switch is undone even when it failed (its record may have been written), but not
        // when another deployment took the route or the name: the winner's record stays.
        let undo = |s: &StepRecord| match s.name.as_str() {
            "switch" if !superseded => Some("switch-back".to_string()),
            "distribute" => Some("unstage".to_string()),
            _ => None,
        };
        if let Some(next) = saga.next_undo(undo) {
            return next;
        }
        let switched = saga.forward.iter().any(|s| s.name == "switch");
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
        let mut steps: Vec<StepRecord> = Vec::new();
        loop {
            let refs: Vec<&StepRecord> = steps.iter().collect();
            let ctx = PlanContext {
                cancel_requested: cancel_after.is_some_and(|n| steps.len() >= n),
            };
            match RolloutPlanner.next(&Value::Null, &refs, &ctx) {
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
            (vec!["verify".to_string()], Outcome::Failed)
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
    fn a_cancel_undoes_and_a_finished_rollout_ignores_it() {
        let (steps, outcome) = run(None, Some(2));
        assert_eq!(steps, ["verify", "distribute", "unstage"]);
        assert_eq!(outcome, Outcome::Cancelled);
        let (_, outcome) = run(None, Some(5));
        assert_eq!(outcome, Outcome::Finished);
    }
}
