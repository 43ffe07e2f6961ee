//! The bounded buffer of verified updates waiting for causal predecessors.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::update::SignedUpdate;

pub(crate) type Slot = (String, Bytes);

/// A verified update that arrived before its causal predecessors.
#[derive(Debug, Clone)]
pub(crate) struct PendingItem {
    pub update: SignedUpdate,
    pub forward: bool,
    pub deadline: u64,
    pub size: usize,
}

/// Items in arrival order (`seq`), indexed by slot and by deadline; bounded
/// by count and bytes, oldest evicted first.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pending {
    items: BTreeMap<u64, PendingItem>,
    by_slot: BTreeSet<(Slot, u64)>,
    by_deadline: BTreeSet<(u64, u64)>,
    bytes: usize,
    next_seq: u64,
}

fn slot_of(u: &SignedUpdate) -> Slot {
    (u.bucket().to_owned(), u.key().clone())
}

impl Pending {
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first().map(|(d, _)| *d)
    }

    fn seqs_for<'a>(&'a self, slot: &Slot) -> impl Iterator<Item = u64> + 'a {
        let start = (slot.clone(), 0);
        let slot = slot.clone();
        self.by_slot
            .range(start..)
            .take_while(move |(s, _)| *s == slot)
            .map(|(_, seq)| *seq)
    }

    pub fn has_slot(&self, slot: &Slot) -> bool {
        self.seqs_for(slot).next().is_some()
    }

    /// The sequence number of a waiting copy of `u`, if any.
    pub fn find(&self, u: &SignedUpdate) -> Option<u64> {
        self.seqs_for(&slot_of(u))
            .find(|seq| self.items.get(seq).is_some_and(|i| i.update == *u))
    }

    /// The items waiting for `slot`, oldest first.
    pub fn items_for(&self, slot: &Slot) -> Vec<(u64, &SignedUpdate)> {
        self.seqs_for(slot)
            .filter_map(|seq| self.items.get(&seq).map(|i| (seq, &i.update)))
            .collect()
    }

    /// Inserts `item`, evicting the oldest items while the buffer would
    /// exceed `max_count` items or `max_bytes` bytes; returns how many items
    /// were evicted (the new item itself counts if it alone is too big).
    pub fn insert(&mut self, item: PendingItem, max_count: usize, max_bytes: usize) -> u64 {
        if max_count == 0 || item.size > max_bytes {
            return 1;
        }
        let mut evicted = 0;
        while self.items.len() + 1 > max_count || self.bytes + item.size > max_bytes {
            let Some(oldest) = self.items.keys().next().copied() else {
                break;
            };
            self.remove(oldest);
            evicted += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.bytes += item.size;
        self.by_slot.insert((slot_of(&item.update), seq));
        self.by_deadline.insert((item.deadline, seq));
        self.items.insert(seq, item);
        evicted
    }

    pub fn remove(&mut self, seq: u64) -> Option<PendingItem> {
        let item = self.items.remove(&seq)?;
        self.bytes -= item.size;
        self.by_slot.remove(&(slot_of(&item.update), seq));
        self.by_deadline.remove(&(item.deadline, seq));
        Some(item)
    }

    /// Removes and returns the item with the earliest deadline if it is due.
    pub fn pop_expired(&mut self, now_ms: u64) -> Option<PendingItem> {
        let &(deadline, seq) = self.by_deadline.first()?;
        if deadline > now_ms {
            return None;
        }
        self.remove(seq)
    }
}
