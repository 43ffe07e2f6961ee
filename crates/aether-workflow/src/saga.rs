//! Helpers for the usual shape of a planner: forward steps in a fixed order, and when one fails
//! (or an operator cancels), undo steps for what was done, newest first.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::engine::Next;
use crate::record::{Outcome, StepRecord, StepResult};

/// What a journal says of a saga so far.
pub struct Saga<'a> {
    /// The forward steps recorded, in order.
    pub forward: Vec<&'a StepRecord>,
    /// The first forward step that failed: its name and error.
    pub failure: Option<(&'a str, &'a str)>,
    /// The indices of the forward steps already undone.
    pub undone: BTreeSet<u32>,
}

impl<'a> Saga<'a> {
    /// Reads the recorded steps.
    pub fn of(steps: &[&'a StepRecord]) -> Self {
        let forward: Vec<&StepRecord> = steps
            .iter()
            .copied()
            .filter(|s| s.compensates.is_none())
            .collect();
        let failure = forward.iter().find_map(|s| match &s.result {
            StepResult::Err(e) => Some((s.name.as_str(), e.as_str())),
            StepResult::Ok(_) => None,
        });
        let undone = steps.iter().filter_map(|s| s.compensates).collect();
        Saga {
            forward,
            failure,
            undone,
        }
    }

    /// While nothing failed and no cancel applies (a cancel after the last forward step does
    /// not): the next of `names`, or the end as finished. `None` once the saga must unwind.
    pub fn next_forward(&self, names: &[&str], cancel_requested: bool) -> Option<Next> {
        let all_done = self.forward.len() >= names.len();
        if self.failure.is_some() || (cancel_requested && !all_done) {
            return None;
        }
        Some(match names.get(self.forward.len()) {
            Some(name) => Next::Step {
                name: (*name).to_string(),
                input: Value::Null,
                compensates: None,
            },
            None => Next::End {
                outcome: Outcome::Finished,
                reason: String::new(),
            },
        })
    }

    /// The next undo step while unwinding: for the newest forward step not undone yet that
    /// `undo` names an undo step for, that step.
    pub fn next_undo(&self, undo: impl Fn(&StepRecord) -> Option<String>) -> Option<Next> {
        self.forward
            .iter()
            .rev()
            .filter(|s| !self.undone.contains(&s.index))
            .find_map(|s| {
                undo(s).map(|name| Next::Step {
                    name,
                    input: Value::Null,
                    compensates: Some(s.index),
                })
            })
    }
}
