//! One workflow's journal: the fold of its records, the same on every node that holds the same
//! records, whatever order they arrived in.

use std::collections::BTreeMap;

use crate::record::{Control, Definition, End, Epoch, Lease, Record, StepRecord};

/// Everything known of one workflow.
///
/// The fold is a join: records are only ever added (a lease renewal keeps the later expiry), and
/// every question below picks by epoch, so two nodes that hold the same records give the same
/// answers.
#[derive(Clone, Debug, Default)]
pub struct Journal {
    def: Option<Definition>,
    control: Option<Control>,
    leases: BTreeMap<Epoch, Lease>,
    steps: BTreeMap<u32, BTreeMap<Epoch, StepRecord>>,
    ends: BTreeMap<Epoch, End>,
}

impl Journal {
    /// Adds one record; returns whether anything changed.
    pub(crate) fn apply(&mut self, record: Record) -> bool {
        match record {
            Record::Definition(_, d) => {
                if self.def.is_none() {
                    self.def = Some(d);
                    return true;
                }
                false
            }
            Record::Control(_, c) => {
                // Last writer wins, as in the lattice state (ties: the one that asks for more).
                let newer = match &self.control {
                    None => true,
                    Some(old) => {
                        (c.at_ms, c.cancel, c.paused) > (old.at_ms, old.cancel, old.paused)
                    }
                };
                if newer {
                    self.control = Some(c);
                }
                newer
            }
            Record::Lease(_, l) => match self.leases.get_mut(&l.epoch) {
                Some(old) if old.expires_ms >= l.expires_ms => false,
                Some(old) => {
                    *old = l;
                    true
                }
                None => {
                    self.leases.insert(l.epoch, l);
                    true
                }
            },
            Record::Step(_, s) => {
                let at = self.steps.entry(s.index).or_default();
                if at.contains_key(&s.epoch) {
                    return false;
                }
                at.insert(s.epoch, s);
                true
            }
            Record::End(_, e) => {
                if self.ends.contains_key(&e.epoch) {
                    return false;
                }
                self.ends.insert(e.epoch, e);
                true
            }
        }
    }

    /// What the workflow is, once its definition has arrived.
    pub fn definition(&self) -> Option<&Definition> {
        self.def.as_ref()
    }

    /// The operator's requests.
    pub fn control(&self) -> Control {
        self.control.clone().unwrap_or_default()
    }

    /// The lease of the highest epoch: who drives now (or last did).
    pub fn lease(&self) -> Option<&Lease> {
        self.leases.values().next_back()
    }

    /// Every lease taken, oldest epoch first: the first is the start, each later one a takeover.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// The highest epoch any record names.
    pub fn max_epoch(&self) -> Option<Epoch> {
        let lease = self.leases.keys().next_back().copied();
        let step = self
            .steps
            .values()
            .filter_map(|m| m.keys().next_back().copied())
            .max();
        let end = self.ends.keys().next_back().copied();
        [lease, step, end].into_iter().flatten().max()
    }

    /// The completed steps from the first on, each as recorded by the highest epoch that
    /// recorded it; stops at the first index without a record.
    pub fn steps(&self) -> Vec<&StepRecord> {
        let mut out = Vec::new();
        for (i, (&index, by_epoch)) in self.steps.iter().enumerate() {
            if index as usize != i {
                break;
            }
            match by_epoch.values().next_back() {
                Some(s) => out.push(s),
                None => break,
            }
        }
        out
    }

    /// Every record of step `index`, one per epoch that ran it (more than one only when two
    /// drivers overlapped, as on both sides of a partition).
    pub fn step_records(&self, index: u32) -> impl Iterator<Item = &StepRecord> {
        self.steps.get(&index).into_iter().flat_map(|m| m.values())
    }

    /// How many times the journal shows a step run by more than one epoch.
    pub fn overlapping_steps(&self) -> usize {
        self.steps.values().filter(|m| m.len() > 1).count()
    }

    /// How the workflow ended: the end written under the highest epoch. An end written under a
    /// lower epoch (a driver that did not know it had been replaced) is not the outcome while a
    /// higher epoch still drives.
    pub fn end(&self) -> Option<&End> {
        let max = self.max_epoch()?;
        self.ends.get(&max)
    }

    /// Every end written, by epoch.
    pub fn ends(&self) -> impl Iterator<Item = &End> {
        self.ends.values()
    }

    /// A fingerprint of what the journal says (its steps as folded, lease epochs and end), for
    /// comparing nodes.
    pub fn summary(&self) -> String {
        let steps: Vec<String> = self
            .steps()
            .iter()
            .map(|s| format!("{}:{}@{}", s.index, s.name, s.epoch.n))
            .collect();
        format!(
            "steps=[{}] epoch={:?} end={:?}",
            steps.join(","),
            self.max_epoch().map(|e| (e.n, e.holder)),
            self.end().map(|e| (e.outcome, e.epoch.n))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{LeaseReason, NodeId, Outcome, StepResult};

    fn epoch(n: u64, h: u8) -> Epoch {
        Epoch {
            n,
            holder: NodeId([h; 32]),
        }
    }

    fn step(index: u32, e: Epoch, name: &str) -> Record {
        Record::Step(
            "w".into(),
            StepRecord {
                index,
                name: name.into(),
                input: serde_json::Value::Null,
                compensates: None,
                result: StepResult::Ok(serde_json::Value::Null),
                epoch: e,
                started_ms: 0,
                finished_ms: 0,
            },
        )
    }

    fn lease(e: Epoch, expires_ms: u64) -> Record {
        Record::Lease(
            "w".into(),
            Lease {
                epoch: e,
                expires_ms,
                taken_ms: 0,
                reason: LeaseReason::Started,
                resumed_at: 0,
            },
        )
    }

    fn end(e: Epoch, outcome: Outcome) -> Record {
        Record::End(
            "w".into(),
            End {
                epoch: e,
                outcome,
                reason: String::new(),
                at_ms: 0,
            },
        )
    }

    #[test]
    fn any_order_gives_the_same_fold() {
        let (low, high) = (epoch(1, 1), epoch(2, 2));
        let records = vec![
            lease(low, 10),
            lease(low, 30),
            step(0, low, "a"),
            step(1, low, "b-low"),
            end(low, Outcome::Finished),
            lease(high, 50),
            step(1, high, "b-high"),
            step(2, high, "c"),
            end(high, Outcome::RolledBack),
        ];
        let mut reference = None;
        // Every rotation and its reverse: enough orders to catch an order-dependent fold.
        for r in 0..records.len() {
            for rev in [false, true] {
                let mut order = records.clone();
                order.rotate_left(r);
                if rev {
                    order.reverse();
                }
                let mut j = Journal::default();
                for rec in order {
                    j.apply(rec);
                }
                let s = j.summary();
                assert_eq!(j.lease().map(|l| l.expires_ms), Some(50));
                assert_eq!(j.end().map(|e| e.outcome), Some(Outcome::RolledBack));
                assert_eq!(j.steps()[1].name, "b-high");
                assert_eq!(j.overlapping_steps(), 1);
                match &reference {
                    None => reference = Some(s),
                    Some(r) => assert_eq!(r, &s),
                }
            }
        }
    }

    #[test]
    fn an_end_under_a_replaced_epoch_is_not_the_outcome() {
        let mut j = Journal::default();
        j.apply(lease(epoch(1, 1), 10));
        j.apply(end(epoch(1, 1), Outcome::Finished));
        assert_eq!(j.end().map(|e| e.outcome), Some(Outcome::Finished));
        j.apply(lease(epoch(2, 3), 10));
        assert!(j.end().is_none(), "the higher epoch still drives");
        assert_eq!(j.ends().count(), 1);
    }

    #[test]
    fn steps_stop_at_the_first_gap() {
        let mut j = Journal::default();
        j.apply(step(0, epoch(1, 1), "a"));
        j.apply(step(2, epoch(1, 1), "c"));
        assert_eq!(j.steps().len(), 1);
    }
}
