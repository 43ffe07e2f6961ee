//! Synchronisation messages and their bounded encoding.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::hlc::Timestamp;
use crate::tree::{NodeRef, NodeSummary, TREE_FANOUT};
use crate::update::{DecodeError, MAX_BUCKET_LEN, MAX_KEY_LEN, SignedUpdate};
use crate::vv::{MAX_WRITERS, NodeId, VersionVector};

/// Version byte that starts every message.
pub const WIRE_VERSION: u8 = 1;

/// Bytes a message adds around one update it carries (version, tag, count,
/// length prefix): an update is sendable when its encoding plus this fits
/// the message bound.
pub const MESSAGE_OVERHEAD: usize = 1 + 1 + 4 + 4;

const TAG_PUSH: u8 = 1;
const TAG_DIGEST: u8 = 2;
const TAG_RANGES: u8 = 3;
const TAG_KEYS: u8 = 4;
const TAG_FETCH: u8 = 5;
const TAG_UPDATES: u8 = 6;

/// Smallest possible encoded update (1-byte bucket and key, tombstone, one writer).
const MIN_UPDATE_LEN: usize = 1 + 2 + 1 + 2 + 1 + 1 + 4 + 40 + 12 + 32 + 64;
const MIN_RANGE_LEN: usize = 1 + 1 + TREE_FANOUT * (8 + 1);
const MIN_KEYLIST_LEN: usize = 1 + 1 + 4;
const KEY_SUMMARY_LEN: usize = 16;
const MIN_NODE_LEN: usize = 2;
const MIN_STATE_LEN: usize = 2 + 1 + 2 + 1 + 1;

/// One side's view of one entry, sent in a [`FetchRequest`] so the other side
/// can send exactly what it lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyState {
    /// Bucket of the entry.
    pub bucket: String,
    /// Key of the entry.
    pub key: Bytes,
    /// What the sender holds for it; `None`: nothing.
    pub have: Option<HaveState>,
}

/// What a node holds for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaveState {
    /// The merged vector.
    pub vector: VersionVector,
    /// The winner's timestamp.
    pub winner_timestamp: Timestamp,
    /// First 8 bytes of SHA-256 of the winner's encoding (identifies it).
    pub winner_hash: u64,
}

/// A node's children summaries, sent when the node differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeDigest {
    /// The (interior) node.
    pub node: NodeRef,
    /// Summaries of its [`TREE_FANOUT`] children, in order.
    pub children: [NodeSummary; TREE_FANOUT],
}

/// One key-hash group of entries inside a range: their key hash and the XOR
/// of their entry hashes (several entries share a group only if their key
/// hashes collide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySummary {
    /// The key hash.
    pub key_hash: u64,
    /// XOR of the entry hashes of the entries with this key hash.
    pub entry_hash: u64,
}

/// Every key-hash group of the sender inside a node, in ascending key hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyList {
    /// The node.
    pub node: NodeRef,
    /// The sender's groups in the node, ascending by key hash.
    pub keys: Vec<KeySummary>,
}

/// A request for updates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchRequest {
    /// Whether the receiver, seeing in `states` that the sender holds
    /// something it lacks, should fetch that back (with its own states).
    pub reply: bool,
    /// Send every update you hold in these nodes.
    pub ranges: Vec<NodeRef>,
    /// Send every update you hold with these key hashes, except for the
    /// entries named in `states`.
    pub hashes: Vec<u64>,
    /// For these entries, send what the given state lacks.
    pub states: Vec<KeyState>,
}

impl FetchRequest {
    fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.hashes.is_empty() && self.states.is_empty()
    }
}

/// A message between two state cores. See the crate docs for the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncMessage {
    /// Epidemic push of new updates.
    Push(Vec<SignedUpdate>),
    /// Anti-entropy opening: the sender's root summary.
    Digest(NodeSummary),
    /// The sender's children summaries of nodes that differ.
    Ranges(Vec<RangeDigest>),
    /// The sender's key summaries in nodes that differ.
    Keys(Vec<KeyList>),
    /// A request for updates.
    Fetch(FetchRequest),
    /// Updates sent in answer to anti-entropy or a fetch.
    Updates(Vec<SignedUpdate>),
}

impl SyncMessage {
    /// Empty when nothing would be sent (no updates, no ranges…).
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Self::Push(u) | Self::Updates(u) => u.is_empty(),
            Self::Digest(_) => false,
            Self::Ranges(r) => r.is_empty(),
            Self::Keys(k) => k.is_empty(),
            Self::Fetch(f) => f.is_empty(),
        }
    }

    /// A short name of the kind of message (for counters and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Push(_) => "push",
            Self::Digest(_) => "digest",
            Self::Ranges(_) => "ranges",
            Self::Keys(_) => "keys",
            Self::Fetch(_) => "fetch",
            Self::Updates(_) => "updates",
        }
    }

    /// The length of [`encode`](Self::encode)'s output, computed without encoding.
    pub fn encoded_len(&self) -> usize {
        2 + match self {
            Self::Push(us) | Self::Updates(us) => {
                4 + us.iter().map(|u| 4 + u.encoded_len()).sum::<usize>()
            }
            Self::Digest(s) => 8 + varint_len(s.count),
            Self::Ranges(rs) => 4 + rs.iter().map(range_len).sum::<usize>(),
            Self::Keys(ks) => {
                4 + ks
                    .iter()
                    .map(|k| node_len(k.node) + 4 + KEY_SUMMARY_LEN * k.keys.len())
                    .sum::<usize>()
            }
            Self::Fetch(f) => {
                1 + 4
                    + f.ranges.iter().map(|n| node_len(*n)).sum::<usize>()
                    + 4
                    + 8 * f.hashes.len()
                    + 4
                    + f.states.iter().map(state_len).sum::<usize>()
            }
        }
    }

    /// The encoding: `version:u8 tag:u8 body` (big-endian integers, LEB128
    /// varints for counts and node indices).
    ///
    /// ```text
    /// push | updates = n:u32 { len:u32 update }*
    /// digest         = hash:u64 count:varint
    /// ranges         = n:u32 { node { hash:u64 count:varint }×4 }*
    /// keys           = n:u32 { node k:u32 { key_hash:u64 entry_hash:u64 }* }*
    /// fetch          = reply:u8 n:u32 node* n:u32 key_hash:u64* n:u32 state*
    /// node           = depth:u8 index:varint
    /// state          = bucket_len:u16 bucket key_len:u16 key has:u8
    ///                  [ writers:u32 { id:[u8;32] counter:u64 }* physical_ms:u64 logical:u32 winner_hash:u64 ]
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.push(WIRE_VERSION);
        match self {
            Self::Push(us) | Self::Updates(us) => {
                out.push(if matches!(self, Self::Push(_)) {
                    TAG_PUSH
                } else {
                    TAG_UPDATES
                });
                put_u32(&mut out, us.len());
                for u in us {
                    let bytes = u.encode();
                    put_u32(&mut out, bytes.len());
                    out.extend_from_slice(&bytes);
                }
            }
            Self::Digest(s) => {
                out.push(TAG_DIGEST);
                out.extend_from_slice(&s.hash.to_be_bytes());
                put_varint(&mut out, s.count);
            }
            Self::Ranges(rs) => {
                out.push(TAG_RANGES);
                put_u32(&mut out, rs.len());
                for r in rs {
                    put_node(&mut out, r.node);
                    for c in &r.children {
                        out.extend_from_slice(&c.hash.to_be_bytes());
                        put_varint(&mut out, c.count);
                    }
                }
            }
            Self::Keys(ks) => {
                out.push(TAG_KEYS);
                put_u32(&mut out, ks.len());
                for k in ks {
                    put_node(&mut out, k.node);
                    put_u32(&mut out, k.keys.len());
                    for s in &k.keys {
                        out.extend_from_slice(&s.key_hash.to_be_bytes());
                        out.extend_from_slice(&s.entry_hash.to_be_bytes());
                    }
                }
            }
            Self::Fetch(f) => {
                out.push(TAG_FETCH);
                out.push(u8::from(f.reply));
                put_u32(&mut out, f.ranges.len());
                for n in &f.ranges {
                    put_node(&mut out, *n);
                }
                put_u32(&mut out, f.hashes.len());
                for h in &f.hashes {
                    out.extend_from_slice(&h.to_be_bytes());
                }
                put_u32(&mut out, f.states.len());
                for s in &f.states {
                    put_state(&mut out, s);
                }
            }
        }
        out
    }

    /// Decodes one message of at most `max` bytes. Every count and length is
    /// checked against the bytes that remain before anything is allocated,
    /// so decoding allocates at most a small multiple of `bytes.len()`;
    /// never panics.
    pub fn decode(bytes: &[u8], max: usize) -> Result<Self, MessageError> {
        if bytes.len() > max {
            return Err(MessageError::Oversized {
                len: bytes.len(),
                max,
            });
        }
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != WIRE_VERSION {
            return Err(MessageError::UnknownVersion(version));
        }
        let tag = r.u8()?;
        let msg = match tag {
            TAG_PUSH => Self::Push(r.updates()?),
            TAG_UPDATES => Self::Updates(r.updates()?),
            TAG_DIGEST => {
                let hash = r.u64()?;
                let count = r.varint()?;
                Self::Digest(NodeSummary { hash, count })
            }
            TAG_RANGES => {
                let n = r.count(MIN_RANGE_LEN)?;
                let mut rs = Vec::with_capacity(n);
                for _ in 0..n {
                    let node = r.node()?;
                    if node.is_leaf() {
                        return Err(MessageError::BadNode);
                    }
                    let mut children = [NodeSummary::default(); TREE_FANOUT];
                    for c in &mut children {
                        c.hash = r.u64()?;
                        c.count = r.varint()?;
                    }
                    rs.push(RangeDigest { node, children });
                }
                Self::Ranges(rs)
            }
            TAG_KEYS => {
                let n = r.count(MIN_KEYLIST_LEN)?;
                let mut ks = Vec::with_capacity(n);
                for _ in 0..n {
                    let node = r.node()?;
                    let k = r.count(KEY_SUMMARY_LEN)?;
                    let mut keys = Vec::with_capacity(k);
                    for _ in 0..k {
                        keys.push(KeySummary {
                            key_hash: r.u64()?,
                            entry_hash: r.u64()?,
                        });
                    }
                    ks.push(KeyList { node, keys });
                }
                Self::Keys(ks)
            }
            TAG_FETCH => {
                let reply = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(MessageError::BadField("reply flag")),
                };
                let n = r.count(MIN_NODE_LEN)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    ranges.push(r.node()?);
                }
                let n = r.count(8)?;
                let mut hashes = Vec::with_capacity(n);
                for _ in 0..n {
                    hashes.push(r.u64()?);
                }
                let n = r.count(MIN_STATE_LEN)?;
                let mut states = Vec::with_capacity(n);
                for _ in 0..n {
                    states.push(r.state()?);
                }
                Self::Fetch(FetchRequest {
                    reply,
                    ranges,
                    hashes,
                    states,
                })
            }
            t => return Err(MessageError::UnknownTag(t)),
        };
        if !r.0.is_empty() {
            return Err(MessageError::TrailingBytes);
        }
        Ok(msg)
    }
}

/// Why bytes are not a [`SyncMessage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Longer than the bound given to `decode`.
    #[error("message of {len} bytes exceeds the {max}-byte bound")]
    Oversized {
        /// Length of the input.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// Input ends early (or a count exceeds what the input can hold).
    #[error("truncated message")]
    Truncated,
    /// Bytes after the message.
    #[error("trailing bytes after message")]
    TrailingBytes,
    /// Unknown version byte: the peer runs an incompatible release.
    #[error("unknown message version {0}; upgrade the older node")]
    UnknownVersion(u8),
    /// Unknown message tag.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A tree node that does not exist (or a leaf where children are expected).
    #[error("invalid tree node")]
    BadNode,
    /// A varint longer than 10 bytes or overflowing 64 bits.
    #[error("invalid varint")]
    BadVarint,
    /// A field with an invalid value.
    #[error("invalid {0}")]
    BadField(&'static str),
    /// An update inside the message is malformed.
    #[error("update {index} malformed: {error}")]
    Update {
        /// Position of the update in the message.
        index: usize,
        /// What is wrong with it.
        error: DecodeError,
    },
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn node_len(n: NodeRef) -> usize {
    1 + varint_len(u64::from(n.index()))
}

fn range_len(r: &RangeDigest) -> usize {
    node_len(r.node)
        + r.children
            .iter()
            .map(|c| 8 + varint_len(c.count))
            .sum::<usize>()
}

pub(crate) fn state_len(s: &KeyState) -> usize {
    2 + s.bucket.len()
        + 2
        + s.key.len()
        + 1
        + s.have
            .as_ref()
            .map_or(0, |h| 4 + 40 * h.vector.len() + 12 + 8)
}

pub(crate) fn node_encoded_len(n: NodeRef) -> usize {
    node_len(n)
}

pub(crate) fn range_encoded_len(r: &RangeDigest) -> usize {
    range_len(r)
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Every count is bounded by the message size, far below u32::MAX.
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_node(out: &mut Vec<u8>, n: NodeRef) {
    out.push(n.depth());
    put_varint(out, u64::from(n.index()));
}

fn put_state(out: &mut Vec<u8>, s: &KeyState) {
    out.extend_from_slice(&(s.bucket.len() as u16).to_be_bytes());
    out.extend_from_slice(s.bucket.as_bytes());
    out.extend_from_slice(&(s.key.len() as u16).to_be_bytes());
    out.extend_from_slice(&s.key);
    match &s.have {
        None => out.push(0),
        Some(h) => {
            out.push(1);
            h.vector.encode_into(out);
            out.extend_from_slice(&h.winner_timestamp.physical_ms.to_be_bytes());
            out.extend_from_slice(&h.winner_timestamp.logical.to_be_bytes());
            out.extend_from_slice(&h.winner_hash.to_be_bytes());
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        if n > self.0.len() {
            return Err(MessageError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], MessageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, MessageError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, MessageError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn varint(&mut self) -> Result<u64, MessageError> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            let bits = u64::from(b & 0x7F);
            if i == 9 && bits > 1 {
                return Err(MessageError::BadVarint);
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                // Minimal encodings only: one value, one encoding.
                if i > 0 && b == 0 {
                    return Err(MessageError::BadVarint);
                }
                return Ok(v);
            }
        }
        Err(MessageError::BadVarint)
    }
    /// A u32 count of items each at least `min_len` bytes long, refused if
    /// the remaining input cannot hold that many (so it bounds allocation).
    fn count(&mut self, min_len: usize) -> Result<usize, MessageError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_len) > self.0.len() {
            return Err(MessageError::Truncated);
        }
        Ok(n)
    }
    fn node(&mut self) -> Result<NodeRef, MessageError> {
        let depth = self.u8()?;
        let index = u32::try_from(self.varint()?).map_err(|_| MessageError::BadNode)?;
        NodeRef::new(depth, index).ok_or(MessageError::BadNode)
    }
    fn updates(&mut self) -> Result<Vec<SignedUpdate>, MessageError> {
        let n = self.count(4 + MIN_UPDATE_LEN)?;
        let mut us = Vec::with_capacity(n);
        for index in 0..n {
            let len = self.u32()? as usize;
            let bytes = self.take(len)?;
            let u = SignedUpdate::decode(bytes)
                .map_err(|error| MessageError::Update { index, error })?;
            us.push(u);
        }
        Ok(us)
    }
    fn state(&mut self) -> Result<KeyState, MessageError> {
        let bucket_len = usize::from(self.u16()?);
        if bucket_len == 0 || bucket_len > MAX_BUCKET_LEN {
            return Err(MessageError::BadField("bucket length"));
        }
        let bucket = std::str::from_utf8(self.take(bucket_len)?)
            .map_err(|_| MessageError::BadField("bucket (not UTF-8)"))?
            .to_owned();
        let key_len = usize::from(self.u16()?);
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return Err(MessageError::BadField("key length"));
        }
        let key = Bytes::copy_from_slice(self.take(key_len)?);
        let have = match self.u8()? {
            0 => None,
            1 => {
                let writers = self.u32()? as usize;
                if writers > MAX_WRITERS || writers * 40 > self.0.len() {
                    return Err(MessageError::BadField("version vector length"));
                }
                let mut map = BTreeMap::new();
                let mut prev: Option<NodeId> = None;
                for _ in 0..writers {
                    let id = NodeId(self.array::<32>()?);
                    let counter = self.u64()?;
                    if counter == 0 || prev.is_some_and(|p| p >= id) {
                        return Err(MessageError::BadField("version vector (not canonical)"));
                    }
                    prev = Some(id);
                    map.insert(id, counter);
                }
                let winner_timestamp = Timestamp::new(self.u64()?, self.u32()?);
                let winner_hash = self.u64()?;
                Some(HaveState {
                    vector: VersionVector::from_map_unchecked(map),
                    winner_timestamp,
                    winner_hash,
                })
            }
            _ => return Err(MessageError::BadField("state flag")),
        };
        Ok(KeyState { bucket, key, have })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v));
            assert_eq!(Reader(&out).varint().unwrap(), v);
        }
        let over = [0xFF; 10];
        assert_eq!(Reader(&over).varint(), Err(MessageError::BadVarint));
        let mut top = vec![0xFF; 9];
        top.push(0x02);
        assert_eq!(Reader(&top).varint(), Err(MessageError::BadVarint));
        assert_eq!(Reader(&[0x80, 0x00]).varint(), Err(MessageError::BadVarint));
    }
}
