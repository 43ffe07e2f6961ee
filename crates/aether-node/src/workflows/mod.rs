//! Durable workflows on this node (DESIGN §3.6), on `aether-workflow`: rollouts (a deployment
//! whose steps verify, distribute, precompile, switch to and retire a version of a component)
//! and drains (a node's replicas moved elsewhere).
//!
//! - `drain`: `alkahest drain NODE`, the second kind (cordon, move, mark drained);
//! - `plan`: what a rollout does next (pure, the same on every node);
//! - `steps`: what each step does on the node that drives it;
//! - `stage`: every node's part (fetch, compile, serve the staged version);
//! - `gates`: a canary's steps on its driver (share of requests, health gates);
//! - `traffic`: every node's part in a canary (load it beside the serving version, measure);
//! - `reconcile`: after a partition, the later of two rollouts of one component wins;
//! - `records`: the state records besides the journal (stage, progress, history);
//! - `service`: the engine's shell on this node;
//! - `api`: `/v1/rollouts`, `/v1/history`, `/v1/rollback`, `/v1/drain`.

pub(crate) mod api;
mod drain;
mod gates;
mod plan;
mod reconcile;
mod records;
pub(crate) mod service;
mod stage;
mod steps;
mod strategy;
mod traffic;

pub(crate) use service::Workflows;
