//! The engine one node runs: it folds every workflow's records, decides which workflows this
//! node drives, and asks its shell to write records and run steps.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::journal::Journal;
use crate::record::{
    Control, Definition, End, Epoch, Lease, LeaseReason, NodeId, Outcome, Record, StepRecord,
    StepResult, valid_id,
};

/// How often a takeover that is due but another member's to make is looked at again.
pub const RECHECK_MS: u64 = 500;

/// Timings of leases, in milliseconds of the node's clock.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How long a lease lasts from its last renewal.
    pub lease_ttl_ms: u64,
    /// How often the holder renews.
    pub renew_every_ms: u64,
    /// How long after a lease's expiry the others wait before taking over, to allow for clock
    /// skew and for a renewal still on its way; also how long a holder that stepped down waits
    /// before it takes its own work back.
    pub grace_ms: u64,
    /// How long after it starts a node takes over nothing, so the records written while it was
    /// down reach it first (at least one anti-entropy round of the lattice state): a node back
    /// from a crash must not judge leases by the journal it had before.
    pub startup_hold_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            lease_ttl_ms: 10_000,
            renew_every_ms: 2_000,
            grace_ms: 2_000,
            startup_hold_ms: 5_000,
        }
    }
}

/// What a planner sees besides the steps: the operator's requests.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanContext {
    /// An operator asked to cancel: undo what was done, then end as [`Outcome::Cancelled`].
    pub cancel_requested: bool,
}

/// What a workflow does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// Run this step (it becomes step number `steps.len()`).
    Step {
        /// What the executor runs.
        name: String,
        /// Its input.
        input: Value,
        /// The index of the step it undoes, for a compensation.
        compensates: Option<u32>,
    },
    /// Nothing more to do.
    End {
        /// How it ended.
        outcome: Outcome,
        /// Why, in words.
        reason: String,
    },
}

/// The code of one kind of workflow: a pure function from the input and the steps recorded so
/// far to what comes next. It must be deterministic (the same journal gives the same answer on
/// every node), so a node that takes over continues exactly where the last one stopped.
pub trait Planner: Send + Sync {
    /// What comes after `steps` (in journal order, each with its result).
    fn next(&self, input: &Value, steps: &[&StepRecord], ctx: &PlanContext) -> Next;
}

/// A step the shell must run, then report with [`Engine::step_finished`].
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// The workflow.
    pub workflow: String,
    /// Its kind.
    pub kind: String,
    /// The epoch it runs under.
    pub epoch: Epoch,
    /// Its index in the journal.
    pub index: u32,
    /// The step's name.
    pub name: String,
    /// The step's input.
    pub input: Value,
    /// The workflow's input.
    pub workflow_input: Value,
    /// The step it undoes, if a compensation.
    pub compensates: Option<u32>,
}

/// What the engine asks of its shell.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Write this record to the lattice state (its [`key`](Record::key) and
    /// [`encode`](Record::encode)d value, in [`BUCKET`](crate::BUCKET)).
    Write(Record),
    /// Run this step. Steps must be idempotent: a step cut short by a crash runs again on the
    /// node that takes over.
    Execute(Task),
}

/// Why a workflow could not start.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StartError {
    /// The id is not 1 to 64 of `[A-Za-z0-9._-]`.
    #[error("invalid workflow id {0:?}: use 1 to 64 letters, digits, '.', '_' or '-'")]
    InvalidId(String),
    /// A workflow with this id exists.
    #[error("workflow {0} exists already")]
    Exists(String),
    /// No planner is registered for the kind.
    #[error("no workflow kind {0:?} on this node")]
    UnknownKind(String),
}

/// Counters a shell exports as metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Steps handed to the shell.
    pub steps_started: u64,
    /// Step records written.
    pub steps_recorded: u64,
    /// Epochs taken from another holder (or from this node's earlier self).
    pub takeovers: u64,
    /// Lease renewals written.
    pub lease_renewals: u64,
    /// Times this node stopped driving because it saw a higher epoch or its lease lapsed.
    pub stepped_down: u64,
    /// Workflows this node ended, by outcome: finished, rolled back or cancelled, other.
    pub ended_finished: u64,
    /// See `ended_finished`.
    pub ended_rolled_back: u64,
    /// See `ended_finished`.
    pub ended_other: u64,
}

/// This node's driving state for one workflow.
#[derive(Clone, Copy, Debug)]
struct Driving {
    epoch: Epoch,
    taken_ms: u64,
    resumed_at: u32,
    reason: LeaseReason,
    renewed_ms: u64,
    expires_ms: u64,
    in_flight: Option<u32>,
}

/// The workflow engine of one node. Sans-IO: records, member views, step results and the time
/// go in; [`Action`]s come out of [`poll_action`](Engine::poll_action).
pub struct Engine {
    me: NodeId,
    config: Config,
    planners: BTreeMap<String, Arc<dyn Planner>>,
    journals: BTreeMap<String, Journal>,
    /// The members believed alive; `None` until the shell first gives a view, and until then
    /// no holder is judged dead (a node that just started knows nothing of the others yet).
    alive: Option<BTreeSet<NodeId>>,
    driving: BTreeMap<String, Driving>,
    /// Not before this time does this node take back an epoch it held (after a restart or a
    /// lapse), so records written meanwhile by others have time to arrive.
    hold_until: BTreeMap<String, u64>,
    started_ms: Option<u64>,
    last_poll_ms: Option<u64>,
    actions: VecDeque<Action>,
    counters: Counters,
}

impl Engine {
    /// An engine for node `me`.
    pub fn new(me: NodeId, config: Config) -> Self {
        Engine {
            me,
            config,
            planners: BTreeMap::new(),
            journals: BTreeMap::new(),
            alive: None,
            driving: BTreeMap::new(),
            hold_until: BTreeMap::new(),
            started_ms: None,
            last_poll_ms: None,
            actions: VecDeque::new(),
            counters: Counters::default(),
        }
    }

    /// Registers the planner of one kind of workflow.
    pub fn register(&mut self, kind: &str, planner: Arc<dyn Planner>) {
        self.planners.insert(kind.to_string(), planner);
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// The counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The members this node believes alive (itself always among them).
    pub fn set_alive(&mut self, alive: impl IntoIterator<Item = NodeId>) {
        let mut alive: BTreeSet<NodeId> = alive.into_iter().collect();
        alive.insert(self.me);
        self.alive = Some(alive);
    }

    /// One workflow's journal.
    pub fn journal(&self, id: &str) -> Option<&Journal> {
        self.journals.get(id)
    }

    /// Every workflow's journal, by id.
    pub fn journals(&self) -> &BTreeMap<String, Journal> {
        &self.journals
    }

    /// Whether this node drives `id` now, and under which epoch.
    pub fn driving(&self, id: &str) -> Option<Epoch> {
        self.driving.get(id).map(|d| d.epoch)
    }

    /// Workflows not ended.
    pub fn running(&self) -> usize {
        self.journals.values().filter(|j| j.end().is_none()).count()
    }

    /// Starts a workflow driven by this node: writes its definition and first lease.
    pub fn start(
        &mut self,
        id: &str,
        kind: &str,
        input: Value,
        now_ms: u64,
    ) -> Result<(), StartError> {
        if !valid_id(id) {
            return Err(StartError::InvalidId(id.to_string()));
        }
        if self
            .journals
            .get(id)
            .is_some_and(|j| j.definition().is_some())
        {
            return Err(StartError::Exists(id.to_string()));
        }
        if !self.planners.contains_key(kind) {
            return Err(StartError::UnknownKind(kind.to_string()));
        }
        self.write(Record::Definition(
            id.to_string(),
            Definition {
                kind: kind.to_string(),
                input,
                created_ms: now_ms,
                created_by: self.me,
            },
        ));
        self.take(
            id,
            Epoch {
                n: 1,
                holder: self.me,
            },
            LeaseReason::Started,
            0,
            now_ms,
        );
        self.poll(now_ms);
        Ok(())
    }

    /// Asks a running workflow to pause, resume or cancel (written as its control record).
    pub fn control(&mut self, id: &str, paused: Option<bool>, cancel: bool, now_ms: u64) -> bool {
        let Some(journal) = self.journals.get(id) else {
            return false;
        };
        let old = journal.control();
        let control = Control {
            paused: paused.unwrap_or(old.paused),
            cancel: old.cancel || cancel,
            at_ms: now_ms.max(old.at_ms + 1),
            // A resume lets the workflow past a hold too.
            pause_before: if paused == Some(false) {
                None
            } else {
                old.pause_before
            },
        };
        self.write(Record::Control(id.to_string(), control));
        true
    }

    /// Asks a running workflow to hold before starting the step named `step` (none: no hold);
    /// [`Engine::control`] with `paused: Some(false)` lets it go on.
    pub fn pause_before(&mut self, id: &str, step: Option<String>, now_ms: u64) -> bool {
        let Some(journal) = self.journals.get(id) else {
            return false;
        };
        let old = journal.control();
        let control = Control {
            at_ms: now_ms.max(old.at_ms + 1),
            pause_before: step,
            ..old
        };
        self.write(Record::Control(id.to_string(), control));
        true
    }

    /// A record from the lattice state (another node's, or this node's own read back after a
    /// restart). Decoding is the caller's ([`Record::decode`]).
    pub fn apply(&mut self, record: Record, now_ms: u64) {
        let id = record.workflow().to_string();
        if !self.journals.entry(id.clone()).or_default().apply(record) {
            return;
        }
        self.check_still_driving(&id, now_ms);
    }

    /// The shell ran `task`: record its result. Recorded even when this node no longer drives
    /// the workflow, so that whoever does now knows the step's effect happened.
    pub fn step_finished(&mut self, task: &Task, result: StepResult, started_ms: u64, now_ms: u64) {
        let record = StepRecord {
            index: task.index,
            name: task.name.clone(),
            input: task.input.clone(),
            compensates: task.compensates,
            result,
            epoch: task.epoch,
            started_ms,
            finished_ms: now_ms,
        };
        self.counters.steps_recorded += 1;
        self.write(Record::Step(task.workflow.clone(), record));
        if let Some(d) = self.driving.get_mut(&task.workflow)
            && d.epoch == task.epoch
            && d.in_flight == Some(task.index)
        {
            d.in_flight = None;
        }
        self.poll(now_ms);
    }

    /// The next thing the shell must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When the engine next needs [`poll`](Engine::poll), at the latest. A takeover that is due
    /// but not this node's to make (another member is the successor) is looked at again every
    /// [`RECHECK_MS`]; a changed member view should be followed by a `poll` as well.
    pub fn next_wakeup(&self) -> Option<u64> {
        let floor = self.last_poll_ms.map_or(0, |t| t + RECHECK_MS);
        let renewals = self
            .driving
            .values()
            .map(|d| d.renewed_ms + self.config.renew_every_ms);
        let takeovers = self.journals.iter().filter_map(|(id, j)| {
            if j.end().is_some() || self.driving.contains_key(id) {
                return None;
            }
            let lease_end = self
                .lease_of(j)
                .map(|(_, expires)| expires + self.config.grace_ms)?;
            let startup = self
                .started_ms
                .map_or(0, |t| t + self.config.startup_hold_ms);
            Some(
                lease_end
                    .max(self.hold_until.get(id).copied().unwrap_or(0))
                    .max(startup)
                    .max(floor),
            )
        });
        renewals.chain(takeovers).min()
    }

    /// Renews leases, takes over workflows whose driver is gone, starts next steps.
    pub fn poll(&mut self, now_ms: u64) {
        let started = *self.started_ms.get_or_insert(now_ms);
        self.last_poll_ms = Some(now_ms);
        let ids: Vec<String> = self.journals.keys().cloned().collect();
        for id in ids {
            self.check_still_driving(&id, now_ms);
            if self.driving.contains_key(&id) {
                self.drive(&id, now_ms);
            } else {
                self.maybe_take_over(&id, started, now_ms);
            }
        }
    }

    fn write(&mut self, record: Record) {
        self.journals
            .entry(record.workflow().to_string())
            .or_default()
            .apply(record.clone());
        self.actions.push_back(Action::Write(record));
    }

    fn lease_record(&self, id: &str, d: &Driving) -> Record {
        Record::Lease(
            id.to_string(),
            Lease {
                epoch: d.epoch,
                expires_ms: d.expires_ms,
                taken_ms: d.taken_ms,
                reason: d.reason,
                resumed_at: d.resumed_at,
            },
        )
    }

    fn take(&mut self, id: &str, epoch: Epoch, reason: LeaseReason, resumed_at: u32, now_ms: u64) {
        let d = Driving {
            epoch,
            taken_ms: now_ms,
            resumed_at,
            reason,
            renewed_ms: now_ms,
            expires_ms: now_ms + self.config.lease_ttl_ms,
            in_flight: None,
        };
        if reason != LeaseReason::Started {
            self.counters.takeovers += 1;
        }
        let record = self.lease_record(id, &d);
        self.driving.insert(id.to_string(), d);
        self.hold_until.remove(id);
        self.write(record);
    }

    /// Stops driving `id` when a higher epoch exists, the workflow has ended, or the lease
    /// lapsed on this node's clock (it was paused, or its clock jumped).
    fn check_still_driving(&mut self, id: &str, now_ms: u64) {
        let Some(d) = self.driving.get(id).copied() else {
            return;
        };
        let Some(journal) = self.journals.get(id) else {
            return;
        };
        let replaced = journal.max_epoch().is_some_and(|max| max > d.epoch);
        let ended = journal.end().is_some();
        let lapsed = now_ms >= d.expires_ms;
        if replaced || ended || lapsed {
            self.driving.remove(id);
            if !ended {
                self.counters.stepped_down += 1;
            }
            if lapsed && !replaced {
                self.hold_until
                    .insert(id.to_string(), now_ms + self.config.grace_ms);
            }
        }
    }

    fn drive(&mut self, id: &str, now_ms: u64) {
        let Some(mut d) = self.driving.get(id).copied() else {
            return;
        };
        if now_ms >= d.renewed_ms + self.config.renew_every_ms {
            d.renewed_ms = now_ms;
            d.expires_ms = now_ms + self.config.lease_ttl_ms;
            self.driving.insert(id.to_string(), d);
            self.counters.lease_renewals += 1;
            let record = self.lease_record(id, &d);
            self.write(record);
        }
        if d.in_flight.is_some() {
            return;
        }
        let Some(journal) = self.journals.get(id) else {
            return;
        };
        let Some(def) = journal.definition() else {
            return;
        };
        let control = journal.control();
        if control.paused && !control.cancel {
            return;
        }
        let Some(planner) = self.planners.get(&def.kind).cloned() else {
            return;
        };
        let steps = journal.steps();
        let index = steps.len() as u32;
        let ctx = PlanContext {
            cancel_requested: control.cancel,
        };
        let next = planner.next(&def.input, &steps, &ctx);
        if let Next::Step { name, .. } = &next
            && !control.cancel
            && control.pause_before.as_deref() == Some(name.as_str())
        {
            return;
        }
        let (kind, workflow_input) = (def.kind.clone(), def.input.clone());
        match next {
            Next::Step {
                name,
                input,
                compensates,
            } => {
                d.in_flight = Some(index);
                self.driving.insert(id.to_string(), d);
                self.counters.steps_started += 1;
                self.actions.push_back(Action::Execute(Task {
                    workflow: id.to_string(),
                    kind,
                    epoch: d.epoch,
                    index,
                    name,
                    input,
                    workflow_input,
                    compensates,
                }));
            }
            Next::End { outcome, reason } => {
                match outcome {
                    Outcome::Finished => self.counters.ended_finished += 1,
                    Outcome::RolledBack | Outcome::Cancelled => {
                        self.counters.ended_rolled_back += 1
                    }
                    _ => self.counters.ended_other += 1,
                }
                self.driving.remove(id);
                self.write(Record::End(
                    id.to_string(),
                    End {
                        epoch: d.epoch,
                        outcome,
                        reason,
                        at_ms: now_ms,
                    },
                ));
            }
        }
    }

    /// The current holder and expiry of a workflow: its highest lease, or for one whose first
    /// lease has not arrived, its starter with a lease from its creation.
    fn lease_of(&self, journal: &Journal) -> Option<(Epoch, u64)> {
        if let Some(l) = journal.lease() {
            return Some((l.epoch, l.expires_ms));
        }
        let def = journal.definition()?;
        Some((
            Epoch {
                n: 0,
                holder: def.created_by,
            },
            def.created_ms + self.config.lease_ttl_ms,
        ))
    }

    fn maybe_take_over(&mut self, id: &str, started_ms: u64, now_ms: u64) {
        let Some(journal) = self.journals.get(id) else {
            return;
        };
        if journal.end().is_some() {
            return;
        }
        let Some(def) = journal.definition() else {
            return;
        };
        if !self.planners.contains_key(&def.kind) {
            return;
        }
        if now_ms < started_ms + self.config.startup_hold_ms {
            return;
        }
        let Some((epoch, expires_ms)) = self.lease_of(journal) else {
            return;
        };
        let max = journal.max_epoch().unwrap_or(epoch).max(epoch);
        let resumed_at = journal.steps().len() as u32;
        let next = |reason| {
            (
                Epoch {
                    n: max.n + 1,
                    holder: self.me,
                },
                reason,
            )
        };
        let (new_epoch, reason) = if epoch.holder == self.me {
            // This node held it: it restarted, or stepped down after a lapse. It takes its work
            // back under a new epoch once records written meanwhile had time to arrive.
            if self.hold_until.get(id).is_some_and(|&hold| now_ms < hold) {
                return;
            }
            next(LeaseReason::Resumed)
        } else {
            let only_me = BTreeSet::from([self.me]);
            let alive = self.alive.as_ref();
            let dead = alive.is_some_and(|a| !a.contains(&epoch.holder));
            let lapsed = now_ms >= expires_ms + self.config.grace_ms;
            if !dead && !lapsed {
                return;
            }
            if successor(id, alive.unwrap_or(&only_me), epoch.holder) != Some(self.me) {
                return;
            }
            next(if dead {
                LeaseReason::HolderDead
            } else {
                LeaseReason::LeaseLapsed
            })
        };
        self.take(id, new_epoch, reason, resumed_at, now_ms);
        self.drive(id, now_ms);
    }
}

/// The member that takes over `id` from `holder`: the highest rendezvous score of (workflow,
/// member) among the members believed alive other than the holder; the same on every node with
/// the same view.
pub fn successor(id: &str, alive: &BTreeSet<NodeId>, holder: NodeId) -> Option<NodeId> {
    alive
        .iter()
        .filter(|m| **m != holder)
        .max_by_key(|m| {
            let mut h = Sha256::new();
            h.update(id.as_bytes());
            h.update([0]);
            h.update(m.0);
            let digest = h.finalize();
            let mut score = [0u8; 8];
            score.copy_from_slice(&digest[..8]);
            (u64::from_be_bytes(score), **m)
        })
        .copied()
}
