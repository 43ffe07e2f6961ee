//! Helpers shared by the integration tests and the anti-entropy bench.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aether_identity::{PublicKey, SecretKey};
use aether_state::{
    Hlc, NodeId, Output, SignedUpdate, StateCore, SyncConfig, SyncMessage, Timestamp, VersionVector,
};
use bytes::Bytes;

/// Milliseconds of the simulated epoch (a realistic Unix time).
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// Writers the helpers know (deterministic keys, derived once).
pub const WRITERS: usize = 64;

fn writers() -> &'static [(SecretKey, NodeId)] {
    static W: OnceLock<Vec<(SecretKey, NodeId)>> = OnceLock::new();
    W.get_or_init(|| {
        (0..WRITERS)
            .map(|i| {
                let mut b = [0x11u8; 32];
                b[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
                let k = SecretKey::from_bytes(&b);
                let id = NodeId::from(&k.public());
                (k, id)
            })
            .collect()
    })
}

/// Deterministic secret key of writer `i` (< [`WRITERS`]).
pub fn secret(i: usize) -> &'static SecretKey {
    &writers()[i].0
}

/// Node id of writer `i`.
pub fn id(i: usize) -> NodeId {
    writers()[i].1
}

/// Keys of writers `0..n`.
pub fn keyring(n: usize) -> BTreeMap<NodeId, PublicKey> {
    (0..n)
        .map(|i| {
            let k = secret(i).public();
            (NodeId::from(&k), k)
        })
        .collect()
}

/// A core with the default config and skew bound.
pub fn core() -> StateCore {
    StateCore::new(SyncConfig::default(), Hlc::default())
}

/// xorshift64*: a small deterministic generator for tests.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Synchronous message pump between cores, through the real codec.
pub struct Net {
    pub cores: Vec<StateCore>,
    pub keys: BTreeMap<NodeId, PublicKey>,
    pub queue: VecDeque<(usize, usize, Vec<u8>)>,
    /// Every update each core reported `Applied`, in order.
    pub applied: Vec<Vec<SignedUpdate>>,
    /// Encoded bytes and count of the messages delivered, by kind.
    pub bytes: BTreeMap<&'static str, (u64, u64)>,
    pub now_ms: u64,
}

impl Net {
    pub fn new(cores: Vec<StateCore>, keys: BTreeMap<NodeId, PublicKey>) -> Self {
        let n = cores.len();
        Self {
            cores,
            keys,
            queue: VecDeque::new(),
            applied: vec![Vec::new(); n],
            bytes: BTreeMap::new(),
            now_ms: EPOCH_MS,
        }
    }

    pub fn index_of(&self, peer: &NodeId) -> usize {
        writers()
            .iter()
            .position(|(_, i)| i == peer)
            .expect("peer is a core")
    }

    /// Moves every output of core `i` into the queue or the applied log.
    pub fn drain(&mut self, i: usize) {
        while let Some(o) = self.cores[i].poll_output() {
            match o {
                Output::Send { to, msg } => {
                    let bytes = msg.encode();
                    assert_eq!(bytes.len(), msg.encoded_len(), "{}", msg.kind());
                    let e = self.bytes.entry(msg.kind()).or_default();
                    e.0 += bytes.len() as u64;
                    e.1 += 1;
                    let j = self.index_of(&to);
                    self.queue.push_back((i, j, bytes));
                }
                Output::Applied { update, .. } => self.applied[i].push(update),
            }
        }
    }

    /// Delivers the next queued message; false when the queue is empty.
    pub fn step(&mut self) -> bool {
        let Some((from, to, bytes)) = self.queue.pop_front() else {
            return false;
        };
        let now = self.now_ms;
        self.cores[to]
            .receive_bytes(id(from), &bytes, &self.keys, now)
            .expect("valid message");
        self.drain(to);
        true
    }

    pub fn run(&mut self) {
        while self.step() {}
    }

    /// One anti-entropy round from `a` to `b`, run to quiescence.
    pub fn anti_entropy(&mut self, a: usize, b: usize) {
        let now = self.now_ms;
        self.cores[a].start_anti_entropy(id(b), now);
        self.drain(a);
        self.run();
    }

    pub fn total_bytes(&self) -> u64 {
        self.bytes.values().map(|(b, _)| b).sum()
    }
}

/// Signs an update of writer `w` directly (no core), for building fixtures.
pub fn signed(
    w: usize,
    bucket: &str,
    key: &[u8],
    value: Option<Vec<u8>>,
    vector: &[(usize, u64)],
    ts: Timestamp,
) -> SignedUpdate {
    let vv: VersionVector = vector.iter().map(|(i, c)| (id(*i), *c)).collect();
    SignedUpdate::new(
        secret(w),
        bucket,
        Bytes::copy_from_slice(key),
        value.map(Bytes::from),
        vv,
        ts,
    )
    .expect("valid update")
}

/// Two replicas of `n` keys (writer 0 wrote them all) that differ in one
/// key out of `every`, four ways in turn: only on A; only on B; A holds a
/// newer write by writer 0; B holds a newer write by writer 1 (descending
/// the common one). Returns the cores and the encoded bytes of the updates
/// the other side needs.
pub fn diverged_pair(n: usize, every: usize, value_len: usize) -> (StateCore, StateCore, u64) {
    let (mut a, mut b) = (core(), core());
    let mut differing = 0u64;
    let value = |i: usize, v: u8| {
        let mut x = vec![v; value_len];
        x[..8.min(value_len)].copy_from_slice(&(i as u64).to_be_bytes()[..8.min(value_len)]);
        x
    };
    for i in 0..n {
        let key = format!("key-{i:08}");
        let ts = Timestamp::new(EPOCH_MS + i as u64, 0);
        let u = signed(0, "bench", key.as_bytes(), Some(value(i, 1)), &[(0, 1)], ts);
        if (i + 1) % every != 0 {
            a.restore(u.clone());
            b.restore(u);
            continue;
        }
        let later = Timestamp::new(ts.physical_ms + 1_000_000, 0);
        match (i / every) % 4 {
            0 => {
                differing += u.encoded_len() as u64;
                a.restore(u);
            }
            1 => {
                differing += u.encoded_len() as u64;
                b.restore(u);
            }
            2 => {
                let newer = signed(
                    0,
                    "bench",
                    key.as_bytes(),
                    Some(value(i, 2)),
                    &[(0, 2)],
                    later,
                );
                differing += newer.encoded_len() as u64;
                a.restore(u.clone());
                b.restore(u);
                a.restore(newer);
            }
            _ => {
                let newer = signed(
                    1,
                    "bench",
                    key.as_bytes(),
                    Some(value(i, 3)),
                    &[(0, 1), (1, 1)],
                    later,
                );
                differing += newer.encoded_len() as u64;
                a.restore(u.clone());
                b.restore(u);
                b.restore(newer);
            }
        }
    }
    (a, b, differing)
}

/// Runs one anti-entropy round between a diverged pair; returns the net
/// (for its byte counts) and the time of the exchange, after checking the
/// two converged.
pub fn measure_round(a: StateCore, b: StateCore) -> (Net, Duration) {
    let mut net = Net::new(vec![a, b], keyring(2));
    net.now_ms = EPOCH_MS + 10_000_000;
    let t = Instant::now();
    net.anti_entropy(0, 1);
    let elapsed = t.elapsed();
    assert_eq!(net.cores[0].root(), net.cores[1].root());
    assert_eq!(net.cores[0].digest(), net.cores[1].digest());
    (net, elapsed)
}

/// One line per message kind: count and bytes.
pub fn describe(net: &Net) -> String {
    net.bytes
        .iter()
        .map(|(k, (b, n))| format!("{k}: {n} msgs {b} B"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A message of every kind, for codec tests.
pub fn sample_messages() -> Vec<SyncMessage> {
    let (a, b, _) = diverged_pair(400, 10, 16);
    let mut net = Net::new(vec![a, b], keyring(2));
    net.now_ms = EPOCH_MS + 10_000_000;
    let mut seen = Vec::new();
    let now = net.now_ms;
    net.cores[0].start_anti_entropy(id(1), now);
    net.drain(0);
    while let Some((from, to, bytes)) = net.queue.pop_front() {
        seen.push(SyncMessage::decode(&bytes, usize::MAX).expect("decodes"));
        net.cores[to]
            .receive_bytes(id(from), &bytes, &net.keys, now)
            .expect("valid");
        net.drain(to);
    }
    let u = signed(
        0,
        "b",
        b"k",
        Some(vec![1, 2, 3]),
        &[(0, 1)],
        Timestamp::new(5, 6),
    );
    seen.push(SyncMessage::Push(vec![u]));
    seen
}
