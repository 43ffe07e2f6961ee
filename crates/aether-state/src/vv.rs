//! Version vectors.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// Most writers one update's version vector may name (checked when an update
/// is created and when one is decoded).
///
/// The merged vector of an entry (the join of every update received for it)
/// is not refused on receipt, because whether a join exceeds a limit would
/// depend on arrival order and break convergence; it is bounded by the number
/// of distinct writers of the entry. A local write whose vector would exceed
/// this limit is refused instead ([`VersionVector::incremented`]).
pub const MAX_WRITERS: usize = 256;

/// A node id: the raw 32 bytes of its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub [u8; 32]);

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl From<&aether_identity::PublicKey> for NodeId {
    fn from(key: &aether_identity::PublicKey) -> Self {
        Self(*key.as_bytes())
    }
}

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Same counters.
    Equal,
    /// `self` has seen everything `other` has, and more.
    After,
    /// `other` has seen everything `self` has, and more.
    Before,
    /// Each has seen something the other has not.
    Concurrent,
}

/// Errors about version vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VectorError {
    /// More than [`MAX_WRITERS`] writers.
    #[error("version vector names more than {MAX_WRITERS} writers")]
    TooManyWriters,
    /// A counter would overflow.
    #[error("version vector counter overflow")]
    CounterOverflow,
}

/// A version vector: node id → counter, absent meaning 0. Zero counters are
/// never stored, so equal vectors have equal representations.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct VersionVector(BTreeMap<NodeId, u64>);

impl VersionVector {
    /// The empty vector.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter for `node` (0 if absent).
    pub fn get(&self, node: &NodeId) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Sets the counter for `node` (0 removes it).
    pub fn set(&mut self, node: NodeId, counter: u64) {
        if counter == 0 {
            self.0.remove(&node);
        } else {
            self.0.insert(node, counter);
        }
    }

    /// Number of writers named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no writer is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The (node, counter) pairs in node order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &u64)> {
        self.0.iter()
    }

    /// Whether `self` has seen everything `other` has (`self >= other`
    /// component-wise; a vector descends from itself).
    pub fn descends(&self, other: &Self) -> bool {
        other.0.iter().all(|(n, c)| self.get(n) >= *c)
    }

    /// Whether neither descends from the other.
    pub fn concurrent(&self, other: &Self) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// How `self` relates to `other`.
    pub fn compare(&self, other: &Self) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }

    /// Component-wise maximum (least upper bound).
    pub fn join(&self, other: &Self) -> Self {
        let mut out = self.clone();
        out.join_in_place(other);
        out
    }

    /// `self = self.join(other)`.
    pub fn join_in_place(&mut self, other: &Self) {
        for (n, c) in &other.0 {
            let e = self.0.entry(*n).or_insert(0);
            *e = (*e).max(*c);
        }
    }

    /// A copy with `node`'s counter incremented: the vector of a new write by
    /// `node`. Refused if it would name more than [`MAX_WRITERS`] writers.
    pub fn incremented(&self, node: NodeId) -> Result<Self, VectorError> {
        let mut out = self.clone();
        let next = out
            .get(&node)
            .checked_add(1)
            .ok_or(VectorError::CounterOverflow)?;
        out.set(node, next);
        if out.len() > MAX_WRITERS {
            return Err(VectorError::TooManyWriters);
        }
        Ok(out)
    }

    /// Canonical encoding: u32 count, then (32-byte id, u64 counter) pairs in
    /// ascending id order, big-endian.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        let n = u32::try_from(self.0.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&n.to_be_bytes());
        for (id, c) in &self.0 {
            out.extend_from_slice(&id.0);
            out.extend_from_slice(&c.to_be_bytes());
        }
    }

    pub(crate) fn from_map_unchecked(map: BTreeMap<NodeId, u64>) -> Self {
        Self(map)
    }
}

impl PartialOrd for VersionVector {
    /// The causal partial order.
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        match self.compare(other) {
            Causality::Equal => Some(Ordering::Equal),
            Causality::After => Some(Ordering::Greater),
            Causality::Before => Some(Ordering::Less),
            Causality::Concurrent => None,
        }
    }
}

impl FromIterator<(NodeId, u64)> for VersionVector {
    fn from_iter<T: IntoIterator<Item = (NodeId, u64)>>(iter: T) -> Self {
        let mut v = Self::new();
        for (n, c) in iter {
            let c = c.max(v.get(&n));
            v.set(n, c);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn relations() {
        let a: VersionVector = [(n(1), 2), (n(2), 1)].into_iter().collect();
        let b: VersionVector = [(n(1), 1)].into_iter().collect();
        let c: VersionVector = [(n(3), 1)].into_iter().collect();
        assert!(a.descends(&b) && !b.descends(&a));
        assert_eq!(a.compare(&b), Causality::After);
        assert!(a.concurrent(&c));
        let j = a.join(&c);
        assert!(j.descends(&a) && j.descends(&c));
        assert_eq!(j.len(), 3);
        assert!(VersionVector::new().descends(&VersionVector::new()));
    }

    #[test]
    fn writer_limit() {
        let v: VersionVector = (0..=255u8).map(|i| (n(i), 1)).collect();
        assert_eq!(v.len(), MAX_WRITERS);
        assert!(v.incremented(n(0)).is_ok());
        let mut id = [0u8; 32];
        id[1] = 1;
        assert_eq!(v.incremented(NodeId(id)), Err(VectorError::TooManyWriters));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u8..4, 0u64..4), 0..5)
            .prop_map(|v| v.into_iter().map(|(n, c)| (NodeId([n; 32]), c)).collect())
    }

    proptest! {
        /// join is a semilattice join and agrees with descends.
        #[test]
        fn join_laws(a in vector(), b in vector(), c in vector()) {
            prop_assert_eq!(a.join(&b), b.join(&a));
            prop_assert_eq!(a.join(&b).join(&c), a.join(&b.join(&c)));
            prop_assert_eq!(a.join(&a), a.clone());
            let j = a.join(&b);
            prop_assert!(j.descends(&a) && j.descends(&b));
            prop_assert_eq!(a.descends(&b), a.join(&b) == a);
            prop_assert_eq!(a.concurrent(&b), a.partial_cmp(&b).is_none());
        }
    }
}
