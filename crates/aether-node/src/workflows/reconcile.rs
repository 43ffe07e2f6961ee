//! After a partition heals: when both sides rolled out a version of one component, each side
//! finished its own rollout and switched the deployment record, and the lattice state's merge
//! rule kept whichever switch came later. The journals say which rollout started later; every
//! node brings the record back to that rollout's version, the same write everywhere.
//!
//! A rollout is judged superseded (in its status) when a rollout of the same component that
//! started later, but before it ended, finished too: both ran at once, and the later one wins,
//! as it does without a partition at the switch step.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aether_kv::KvHandle;
use aether_workflow::{Engine, Outcome};

use super::plan::{KIND, RolloutInput};
use super::records;
use crate::replication::{self, DEPLOYMENTS_BUCKET};

/// How often the records are compared with the journals.
pub(crate) const EVERY: Duration = Duration::from_secs(2);

/// A finished rollout: (started, id, input, ended).
type Finished = (u64, String, RolloutInput, u64);

/// Finished rollouts by component, oldest start first, and the components a rollout is still
/// running for.
fn finished_rollouts(engine: &Engine) -> (BTreeMap<String, Vec<Finished>>, BTreeSet<String>) {
    let mut finished: BTreeMap<String, Vec<Finished>> = BTreeMap::new();
    let mut running = BTreeSet::new();
    for (id, journal) in engine.journals() {
        let Some(def) = journal.definition() else {
            continue;
        };
        if def.kind != KIND {
            continue;
        }
        let Ok(input) = serde_json::from_value::<RolloutInput>(def.input.clone()) else {
            continue;
        };
        match journal.end() {
            None => {
                running.insert(input.component.clone());
            }
            Some(end) if end.outcome == Outcome::Finished => {
                finished.entry(input.component.clone()).or_default().push((
                    def.created_ms,
                    id.clone(),
                    input,
                    end.at_ms,
                ));
            }
            Some(_) => {}
        }
    }
    for list in finished.values_mut() {
        list.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    }
    (finished, running)
}

/// The rollout that took `id`'s place, if `id` finished while a later one of the same
/// component was already running and that one finished too.
pub(crate) fn superseded_by(engine: &Engine, id: &str) -> Option<String> {
    let (finished, _) = finished_rollouts(engine);
    finished.values().find_map(|list| {
        let pos = list.iter().position(|r| r.1 == id)?;
        let (_, _, _, ended) = &list[pos];
        list[pos + 1..]
            .iter()
            .find(|later| later.0 < *ended)
            .map(|later| later.1.clone())
    })
}

/// Puts each component's deployment record back to the version of its latest finished rollout
/// when it names an older rollout's version (left there by the other side of a partition).
pub(crate) async fn once(kv: &KvHandle, engine: &std::sync::Mutex<Engine>) {
    let (finished, running) = {
        let engine = engine.lock().unwrap_or_else(|p| p.into_inner());
        finished_rollouts(&engine)
    };
    for (component, list) in finished {
        if running.contains(&component) {
            continue;
        }
        let Some((_, newest_id, newest, _)) = list.last() else {
            continue;
        };
        let Some(current) = replication::lattice_record(kv, &component).await else {
            continue;
        };
        let older = &list[..list.len() - 1];
        if current.essence_hash == newest.essence_hash
            || !older
                .iter()
                .any(|r| r.2.essence_hash == current.essence_hash)
        {
            continue;
        }
        tracing::warn!(
            %component,
            rollout = %newest_id,
            "two rollouts ran at once (a partition); the later one's version serves"
        );
        let record = replication::Record {
            name: component.clone(),
            essence_hash: newest.essence_hash.clone(),
            size: newest.size,
            publisher: newest.publisher.clone(),
            deployed_at: current.deployed_at,
        };
        if let Err(e) = records::write(kv, DEPLOYMENTS_BUCKET, &component, &record).await {
            tracing::warn!(%component, "deployment record not put back: {e}");
        }
    }
}
