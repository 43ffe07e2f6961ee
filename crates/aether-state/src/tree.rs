//! The anti-entropy index: a fixed-depth hash tree over key hashes.
//!
//! Every entry has a 64-bit **key hash** (where it lives in the tree) and a
//! 64-bit **entry hash** (what it holds: winner and merged vector). A node of
//! the tree covers a contiguous range of key hashes and summarises it as the
//! XOR of the entry hashes below it and their count, so adding, removing or
//! changing one entry touches exactly one node per level
//! ([`TREE_DEPTH`]` + 1` nodes).

use sha2::{Digest as _, Sha256};

/// Depth of the tree: leaves are at this depth, the root at 0.
pub const TREE_DEPTH: u8 = 8;
/// Children per interior node.
pub const TREE_FANOUT: usize = 4;
const BITS_PER_LEVEL: u32 = 2;

const KEY_HASH_DOMAIN: &[u8] = b"aether-state/key-hash/v1\0";
const ENTRY_HASH_DOMAIN: &[u8] = b"aether-state/entry-hash/v1\0";

/// Where (bucket, key) lives in the tree: the first 8 bytes (big-endian) of
/// SHA-256 over a domain, the bucket length (u16) and bytes, and the key.
pub fn key_hash(bucket: &str, key: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(KEY_HASH_DOMAIN);
    h.update((bucket.len() as u16).to_be_bytes());
    h.update(bucket.as_bytes());
    h.update(key);
    first_u64(&h.finalize())
}

/// The entry hash over an entry's canonical bytes (see
/// [`Entry::canonical_bytes`](crate::Entry::canonical_bytes)).
pub(crate) fn entry_hash(canonical: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update(ENTRY_HASH_DOMAIN);
    h.update(canonical);
    first_u64(&h.finalize())
}

pub(crate) fn first_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

/// A node of the tree: a depth and an index within that depth (`0 ..
/// 4^depth`). Node `(d, i)` covers the key hashes whose top `2·d` bits are `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeRef {
    depth: u8,
    index: u32,
}

impl NodeRef {
    /// The root, covering every key hash.
    pub const ROOT: Self = Self { depth: 0, index: 0 };

    /// The node `(depth, index)`, if it exists in the tree.
    pub fn new(depth: u8, index: u32) -> Option<Self> {
        if depth > TREE_DEPTH || u64::from(index) >= 1u64 << (BITS_PER_LEVEL * u32::from(depth)) {
            return None;
        }
        Some(Self { depth, index })
    }

    /// The leaf holding `key_hash`.
    pub fn leaf_of(key_hash: u64) -> Self {
        Self::at(TREE_DEPTH, key_hash)
    }

    /// The node at `depth` holding `key_hash`.
    fn at(depth: u8, key_hash: u64) -> Self {
        let bits = BITS_PER_LEVEL * u32::from(depth);
        let index = if bits == 0 {
            0
        } else {
            key_hash >> (64 - bits)
        };
        Self {
            depth,
            index: index as u32,
        }
    }

    /// Depth (0 is the root).
    pub fn depth(self) -> u8 {
        self.depth
    }

    /// Index within the depth.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Whether this is a leaf (no children).
    pub fn is_leaf(self) -> bool {
        self.depth == TREE_DEPTH
    }

    /// Child `i` (`0 .. TREE_FANOUT`), `None` for a leaf.
    pub fn child(self, i: usize) -> Option<Self> {
        if self.is_leaf() || i >= TREE_FANOUT {
            return None;
        }
        Some(Self {
            depth: self.depth + 1,
            index: (self.index << BITS_PER_LEVEL) | i as u32,
        })
    }

    /// The inclusive range of key hashes the node covers.
    pub fn key_range(self) -> (u64, u64) {
        let bits = BITS_PER_LEVEL * u32::from(self.depth);
        if bits == 0 {
            return (0, u64::MAX);
        }
        let shift = 64 - bits;
        let lo = u64::from(self.index) << shift;
        (lo, lo | (u64::MAX >> bits))
    }

    /// Whether the node covers `key_hash`.
    pub fn contains(self, key_hash: u64) -> bool {
        let (lo, hi) = self.key_range();
        (lo..=hi).contains(&key_hash)
    }
}

/// What a node of the tree summarises: XOR of the entry hashes below it and
/// how many entries there are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct NodeSummary {
    /// XOR of the entry hashes of the entries below.
    pub hash: u64,
    /// Number of entries below.
    pub count: u64,
}

/// The tree: one array of summaries per level (about 1 MiB in all).
#[derive(Debug, Clone)]
pub(crate) struct HashTree {
    hashes: Vec<Vec<u64>>,
    counts: Vec<Vec<u32>>,
}

impl HashTree {
    pub(crate) fn new() -> Self {
        let sizes = (0..=TREE_DEPTH).map(|d| 1usize << (BITS_PER_LEVEL * u32::from(d)));
        Self {
            hashes: sizes.clone().map(|n| vec![0; n]).collect(),
            counts: sizes.map(|n| vec![0; n]).collect(),
        }
    }

    pub(crate) fn get(&self, node: NodeRef) -> NodeSummary {
        let (d, i) = (usize::from(node.depth), node.index as usize);
        NodeSummary {
            hash: self.hashes[d][i],
            count: u64::from(self.counts[d][i]),
        }
    }

    pub(crate) fn root(&self) -> NodeSummary {
        self.get(NodeRef::ROOT)
    }

    /// Applies a change at `key_hash`: XOR `delta` into every node on the
    /// path, and add `count_delta` (-1, 0 or 1) to the counts.
    pub(crate) fn update(&mut self, key_hash: u64, delta: u64, count_delta: i32) {
        for d in 0..=TREE_DEPTH {
            let i = NodeRef::at(d, key_hash).index as usize;
            let d = usize::from(d);
            self.hashes[d][i] ^= delta;
            let c = &mut self.counts[d][i];
            *c = c.wrapping_add_signed(count_delta);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ranges_nest() {
        assert_eq!(NodeRef::ROOT.key_range(), (0, u64::MAX));
        let leaf = NodeRef::leaf_of(0xABCD_0000_0000_0001);
        assert_eq!(leaf.index(), 0xABCD);
        assert!(leaf.is_leaf() && leaf.child(0).is_none());
        let mut n = NodeRef::ROOT;
        for d in 0..TREE_DEPTH {
            let c = (0..TREE_FANOUT)
                .filter_map(|i| n.child(i))
                .find(|c| c.contains(0xABCD_0000_0000_0001))
                .unwrap();
            assert_eq!(c.depth(), d + 1);
            let (lo, hi) = c.key_range();
            let (plo, phi) = n.key_range();
            assert!(plo <= lo && hi <= phi);
            n = c;
        }
        assert_eq!(n, leaf);
        assert!(NodeRef::new(TREE_DEPTH + 1, 0).is_none());
        assert!(NodeRef::new(1, 4).is_none());
        assert!(NodeRef::new(1, 3).is_some());
    }

    #[test]
    fn updates_touch_the_path() {
        let mut t = HashTree::new();
        t.update(5, 0xFF, 1);
        t.update(u64::MAX, 0x0F, 1);
        assert_eq!(
            t.root(),
            NodeSummary {
                hash: 0xF0,
                count: 2
            }
        );
        assert_eq!(t.get(NodeRef::leaf_of(5)).count, 1);
        t.update(5, 0xFF, -1);
        assert_eq!(
            t.root(),
            NodeSummary {
                hash: 0x0F,
                count: 1
            }
        );
        assert_eq!(t.get(NodeRef::leaf_of(5)), NodeSummary::default());
    }
}
