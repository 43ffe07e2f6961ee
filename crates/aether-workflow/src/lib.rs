//! Durable workflows (the "durable pulse" of the seeds, DESIGN §3.6), sans-IO.
//!
//! A workflow is a list of idempotent steps whose results are recorded in a **journal** that
//! lives in the lattice state (bucket [`BUCKET`]), so every node holds every journal. What the
//! next step is comes from a [`Planner`]: a deterministic function of the workflow's input and
//! the steps recorded so far, so any node that holds the journal can continue it. One node
//! drives a workflow at a time, under a **lease**; when it dies, another resumes from the last
//! recorded step.
//!
//! [`Engine`] is the core one node runs. It takes records (from the lattice state), the member
//! view, step results and the time, and gives back [`Action`]s: records to write, steps to run.
//! The node's shell does the I/O; the simulator tests drive the same engine on virtual time.
//!
//! # Records
//!
//! See [`record`]: a definition, a control record (pause, hold before a named step, cancel), one
//! lease per epoch, one record per (step, epoch), one end per epoch. Every key but the control record has a single
//! writer, so the lattice state's last-writer-wins rule never has to choose between two versions
//! of one: the journal is a grow-only set of records, and [`Journal`] folds it by epoch. Nodes
//! holding the same records give the same answers, whatever order they arrived in.
//!
//! # Leases and epochs
//!
//! An [`Epoch`] is a counter and its holder's id, ordered by counter then id. The node that starts
//! a workflow holds epoch 1. The holder renews its lease every [`Config::renew_every_ms`] (default
//! 2 s) to [`Config::lease_ttl_ms`] (10 s) ahead of its clock. Every other node takes over when
//! the holder is declared dead by membership, or when the lease has been expired for
//! [`Config::grace_ms`] (2 s) on its own clock. Only one node does so in a given member view:
//! [`successor`], the highest rendezvous score of (workflow, member) among the live members other
//! than the holder. It writes a lease for epoch `max + 1` under its own id and continues from the
//! last recorded step.
//!
//! A holder stops driving, before its next step, when it sees a record of a higher epoch, when
//! the workflow has an end, or when its own lease has lapsed on its clock (it was paused, or its
//! clock jumped): it renews a live lease, never a lapsed one, and takes its work back under a
//! new epoch [`Config::grace_ms`] later unless another node took it meanwhile. A node that has
//! just started takes over nothing for [`Config::startup_hold_ms`] (5 s), so the records
//! written while it was down reach it first; then it takes back work it held before its
//! restart under a new epoch, unless another took over meanwhile.
//!
//! # What is guaranteed
//!
//! In a connected lattice (records reach every node within the grace period, and clocks are
//! within the grace period of each other):
//!
//! - **One driver at a time.** A takeover happens only once the holder is dead or its lease is
//!   over, and the holder itself stops when its lease lapses, so two nodes never start steps of
//!   one workflow in the same epoch of time.
//! - **A recorded step is never run again.** The planner only ever asks for the step after the
//!   last recorded one, and every node holds every record.
//! - **A step cut short runs again**, exactly once more, by the node that takes over: a step may
//!   have partly happened when its driver died, which is why steps must be idempotent.
//! - **Every workflow ends**, as long as one node that can run its kind is alive: some live node
//!   is the successor in every view.
//!
//! When a partition (or a pause longer than the lease, or clocks further apart than the grace
//! period) lets both sides drive:
//!
//! - Each side may take its own epoch and run the same steps: a step's effect may happen once per
//!   side. Steps must be idempotent for this reason too.
//! - Once the sides hear of each other again, every node holds the union of the records, and the
//!   fold gives one answer everywhere: for each step, the record of the highest epoch that ran it;
//!   as the outcome, the end written under the highest epoch. A driver of a lower epoch stops at
//!   its next step; an end written under a lower epoch is not the outcome while the higher epoch
//!   drives ([`Journal::end`]). The highest epoch's driver goes on from the folded journal (a step
//!   the other side recorded is not run again) until it writes its own end.
//! - Effects that steps wrote outside the journal (a deployment record, say) are merged by the
//!   lattice state's own rule; a planner whose effects must match the outcome makes its last step
//!   re-assert them, which the highest epoch's driver then does after the partition heals.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod engine;
mod journal;
pub mod record;
pub mod saga;

pub use engine::{
    Action, Config, Counters, Engine, Next, PlanContext, Planner, RECHECK_MS, StartError, Task,
    successor,
};
pub use journal::Journal;
pub use record::{
    BUCKET, Control, DecodeError, Definition, End, Epoch, Lease, LeaseReason, NodeId, Outcome,
    Record, StepRecord, StepResult,
};
pub use saga::Saga;
