//! The synchronisation core: convergence by push and by anti-entropy, bad
//! input, the pending buffer, tombstones, restore.

mod common;

use std::collections::BTreeMap;

use aether_identity::PublicKey;
use aether_state::{
    FetchRequest, Hlc, KeyList, KeySummary, NodeId, NodeRef, OriginRefused, Origins, Output,
    Replica, Rule, SignedUpdate, StateCore, SyncConfig, SyncMessage, Timestamp, WriteError,
};
use bytes::Bytes;
use common::{EPOCH_MS, Net, Rng, core, id, keyring, secret, signed};
use proptest::prelude::*;

// ----- scenarios: honest concurrent writers -----

#[derive(Debug, Clone)]
enum Step {
    Write {
        writer: usize,
        key: u8,
        value: Option<u8>,
    },
    Sync {
        from: usize,
        to: usize,
    },
    Tick,
}

fn step(writers: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..writers, 0u8..4, proptest::option::weighted(0.8, any::<u8>()))
            .prop_map(|(writer, key, value)| Step::Write { writer, key, value }),
        2 => (0..writers, 0..writers).prop_map(|(from, to)| Step::Sync { from, to }),
        1 => Just(Step::Tick),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (2usize..=4).prop_flat_map(|n| (Just(n), proptest::collection::vec(step(n), 1..40)))
}

/// Runs honest writers (state cores) through the script; every core starts
/// at the same clock, so writers that have not heard from each other write
/// identical timestamps (exact ties). Returns every update created.
fn run(n: usize, steps: &[Step]) -> Vec<SignedUpdate> {
    let keys = keyring(n);
    let mut nodes: Vec<StateCore> = (0..n).map(|_| core()).collect();
    let mut seen: Vec<Vec<SignedUpdate>> = vec![Vec::new(); n];
    let mut all = Vec::new();
    let mut now = EPOCH_MS;
    for s in steps {
        match *s {
            Step::Tick => now += 1,
            Step::Write { writer, key, value } => {
                let u = nodes[writer]
                    .write(
                        secret(writer),
                        "b",
                        &[key],
                        value.map(|v| Bytes::from(vec![v])),
                        now,
                    )
                    .unwrap();
                seen[writer].push(u.clone());
                all.push(u);
            }
            Step::Sync { from, to } => {
                let batch = seen[from].clone();
                nodes[to].receive(id(from), SyncMessage::Push(batch.clone()), &keys, now);
                // Resolve anything left pending (in-order delivery above
                // never leaves any, but be explicit).
                nodes[to].handle_timeout(u64::MAX);
                while nodes[to].poll_output().is_some() {}
                seen[to].extend(batch);
            }
        }
    }
    all
}

fn reference(all: &[SignedUpdate], n: usize) -> Replica {
    let keys = keyring(n);
    let mut r = Replica::default();
    for u in all {
        r.apply(u, &keys, u64::MAX / 2);
    }
    r
}

fn has_tie(updates: &[SignedUpdate]) -> bool {
    updates.iter().enumerate().any(|(i, a)| {
        updates[i + 1..].iter().any(|b| {
            a.key() == b.key() && a.timestamp() == b.timestamp() && a.origin() != b.origin()
        })
    })
}

/// A random permutation of `all` with about a third duplicated.
fn shuffled(all: &[SignedUpdate], rng: &mut Rng) -> Vec<SignedUpdate> {
    let mut out = all.to_vec();
    for u in all {
        if rng.chance(0.33) {
            out.push(u.clone());
        }
    }
    for i in (1..out.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        out.swap(i, j);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Several cores receive every update by push, each in its own random
    /// order, in random batches, with duplicates and random delays (some
    /// pending deadlines expire before the predecessors arrive, some do
    /// not): all end byte-identical to the reference replica.
    #[test]
    fn push_in_any_order_converges((n, steps) in scenario(), seed in any::<u64>()) {
        let all = run(n, &steps);
        let want = reference(&all, n).digest();
        let keys = keyring(n);
        let mut rng = Rng::new(seed);
        let mut digests = Vec::new();
        let start = all.iter().map(|u| u.timestamp().physical_ms).max().unwrap_or(EPOCH_MS);
        for _ in 0..3 {
            let mut c = core();
            let mut now = start;
            let order = shuffled(&all, &mut rng);
            let mut i = 0;
            while i < order.len() {
                let k = 1 + rng.below(4) as usize;
                let batch: Vec<_> = order[i..(i + k).min(order.len())].to_vec();
                i += k;
                let from = rng.below(n as u64) as usize;
                c.receive(id(from), SyncMessage::Push(batch), &keys, now);
                now += rng.below(1500);
                c.handle_timeout(now);
                while let Some(o) = c.poll_output() {
                    if let Output::Applied { forward, .. } = o {
                        prop_assert!(forward);
                    }
                }
            }
            c.handle_timeout(now + 10_000);
            prop_assert_eq!(c.pending_len(), 0);
            let k = c.counters();
            prop_assert_eq!(k.forged + k.unknown_origin + k.from_the_future + k.clock_anomalies, 0);
            digests.push(c.digest());
        }
        for d in digests {
            prop_assert_eq!(d, want);
        }
    }

    /// Updates scattered over several cores (each held by one or two), then
    /// only anti-entropy between random pairs, with 10 % of messages lost:
    /// all end byte-identical to the reference replica.
    #[test]
    fn anti_entropy_alone_converges((n, steps) in scenario(), seed in any::<u64>(), nodes in 2usize..5) {
        let all = run(n, &steps);
        let want = reference(&all, n).digest();
        let mut rng = Rng::new(seed);
        let mut cores: Vec<StateCore> = (0..nodes).map(|_| core()).collect();
        for u in &all {
            let a = rng.below(nodes as u64) as usize;
            cores[a].restore(u.clone());
            if rng.chance(0.3) {
                cores[rng.below(nodes as u64) as usize].restore(u.clone());
            }
        }
        let mut net = Net::new(cores, keyring(n.max(nodes)));
        net.now_ms = EPOCH_MS + 60_000;
        let mut rounds = 0;
        while !net.cores.iter().all(|c| c.root() == net.cores[0].root()) {
            rounds += 1;
            prop_assert!(rounds < 200, "no convergence after 200 rounds");
            let a = rng.below(nodes as u64) as usize;
            let b = (a + 1 + rng.below(nodes as u64 - 1) as usize) % nodes;
            let now = net.now_ms;
            net.cores[a].start_anti_entropy(id(b), now);
            net.drain(a);
            while let Some((from, to, bytes)) = net.queue.pop_front() {
                if rng.chance(0.1) {
                    continue;
                }
                net.cores[to].receive_bytes(id(from), &bytes, &net.keys, now).unwrap();
                net.drain(to);
            }
        }
        for c in &net.cores {
            prop_assert_eq!(c.digest(), want);
            prop_assert_eq!(c.pending_len(), 0);
        }
    }
}

/// The generated scenarios do contain exact-timestamp ties.
#[test]
fn scenarios_contain_ties() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let ties = (0..100)
        .filter(|_| {
            let (n, steps) = scenario().new_tree(&mut runner).unwrap().current();
            has_tie(&run(n, &steps))
        })
        .count();
    assert!(ties > 10, "only {ties} scenarios with ties");
}

/// The core's digest is the replica digest, for the same updates.
#[test]
fn digest_matches_replica() {
    let mut c = core();
    let mut r = Replica::default();
    let keys = keyring(2);
    for i in 0..20u8 {
        let u = c
            .write(
                secret(usize::from(i % 2)),
                "b",
                &[i % 5],
                Some(Bytes::from(vec![i])),
                EPOCH_MS + u64::from(i),
            )
            .unwrap();
        r.apply(&u, &keys, EPOCH_MS + 100);
    }
    assert_eq!(c.digest(), r.digest());
    assert_eq!(c.len(), 5);
}

// ----- bad input -----

struct Revoking(BTreeMap<NodeId, PublicKey>, NodeId);

impl Origins for Revoking {
    fn key(&self, origin: &NodeId) -> Result<PublicKey, OriginRefused> {
        if *origin == self.1 {
            return Err(OriginRefused::Revoked);
        }
        self.0.key(origin)
    }
}

fn assert_nothing_stored(c: &mut StateCore) {
    assert!(c.is_empty());
    assert_eq!(c.pending_len(), 0);
    while let Some(o) = c.poll_output() {
        assert!(!matches!(o, Output::Applied { .. }), "{o:?}");
    }
}

#[test]
fn forged_unknown_revoked_and_future_updates_are_dropped_and_counted() {
    let origins = Revoking(keyring(3), id(2));
    let now = EPOCH_MS + 1000;
    let good = signed(
        0,
        "b",
        b"k",
        Some(b"value".to_vec()),
        &[(0, 1)],
        Timestamp::new(now, 0),
    );
    // Forged: value changed after signing (still well-formed).
    let mut bytes = good.encode();
    let at = bytes.len() - 64 - 32 - 12 - 4 - 40 - 1;
    bytes[at] ^= 0x20;
    let forged = SignedUpdate::decode(&bytes).unwrap();
    assert_ne!(forged, good);
    // Unknown: writer 9 is not in the keyring.
    let unknown = signed(9, "b", b"k", None, &[(9, 1)], Timestamp::new(now, 0));
    // Revoked: writer 2.
    let revoked = signed(2, "b", b"k", None, &[(2, 1)], Timestamp::new(now, 0));
    // Future: 10 s ahead of local time, beyond the 500 ms bound.
    let future = signed(
        1,
        "b",
        b"k",
        None,
        &[(1, 1)],
        Timestamp::new(now + 10_000, 0),
    );
    // Writer 0's signature on writer 1's update: forged too.
    let mut swapped = signed(1, "b", b"k2", None, &[(1, 1)], Timestamp::new(now, 0)).encode();
    let len = swapped.len();
    swapped[len - 64..].copy_from_slice(good.signature());
    let swapped = SignedUpdate::decode(&swapped).unwrap();

    for via_push in [true, false] {
        let mut c = core();
        let batch = vec![
            forged.clone(),
            unknown.clone(),
            revoked.clone(),
            future.clone(),
            swapped.clone(),
        ];
        let msg = if via_push {
            SyncMessage::Push(batch)
        } else {
            SyncMessage::Updates(batch)
        };
        c.receive(id(1), msg, &origins, now);
        let k = *c.counters();
        assert_eq!(
            (
                k.forged,
                k.unknown_origin,
                k.revoked_origin,
                k.from_the_future,
                k.applied
            ),
            (2, 1, 1, 1, 0),
            "{k:?}"
        );
        assert_nothing_stored(&mut c);
        // Replays of the same bad updates are refused again.
        c.receive(
            id(1),
            SyncMessage::Push(vec![forged.clone(), revoked.clone()]),
            &origins,
            now,
        );
        assert_eq!(c.counters().forged, 3);
        assert_eq!(c.counters().revoked_origin, 2);
        assert_nothing_stored(&mut c);
        // The genuine update goes in; the future one once time has caught up.
        c.receive(id(1), SyncMessage::Push(vec![good.clone()]), &origins, now);
        c.receive(
            id(1),
            SyncMessage::Updates(vec![future.clone()]),
            &origins,
            now + 9_600,
        );
        assert_eq!(c.counters().applied, 2);
        assert_eq!(c.get("b", b"k").unwrap().winner(), &future);
    }
}

#[test]
fn truncated_oversized_and_garbage_messages_are_counted() {
    let keys = keyring(2);
    let now = EPOCH_MS;
    let u = signed(
        0,
        "b",
        b"k",
        Some(vec![7; 100]),
        &[(0, 1)],
        Timestamp::new(now, 0),
    );
    let msg = SyncMessage::Push(vec![u.clone(), u]).encode();
    let mut c = core();
    for cut in 0..msg.len() {
        assert!(c.receive_bytes(id(1), &msg[..cut], &keys, now).is_err());
    }
    assert_eq!(c.counters().malformed_messages, msg.len() as u64);
    let mut long = msg.clone();
    long.push(0);
    assert!(c.receive_bytes(id(1), &long, &keys, now).is_err());
    let huge = vec![1u8; c.config().max_message_bytes + 1];
    assert!(c.receive_bytes(id(1), &huge, &keys, now).is_err());
    assert_eq!(c.counters().oversized_messages, 1);
    let mut rng = Rng::new(3);
    for _ in 0..2000 {
        let len = rng.below(300) as usize;
        let mut g: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if g.len() > 2 {
            g[0] = 1;
            g[1] = 1 + rng.below(6) as u8;
        }
        let _ = c.receive_bytes(id(1), &g, &keys, now);
    }
    assert_nothing_stored(&mut c);
    // A smaller configured bound refuses what the default accepts.
    let mut small = StateCore::new(
        SyncConfig {
            max_message_bytes: 100,
            ..SyncConfig::default()
        },
        Hlc::default(),
    );
    assert!(small.receive_bytes(id(1), &msg, &keys, now).is_err());
    assert_eq!(small.counters().oversized_messages, 1);
    // Well-formed but invalid content: unsorted keys.
    let bad = SyncMessage::Keys(vec![KeyList {
        node: NodeRef::ROOT,
        keys: vec![
            KeySummary {
                key_hash: 5,
                entry_hash: 1,
            },
            KeySummary {
                key_hash: 1,
                entry_hash: 1,
            },
        ],
    }]);
    c.receive(id(1), bad, &keys, now);
    assert_eq!(c.counters().invalid_messages, 1);
}

#[test]
fn write_too_large_for_a_message_is_refused() {
    let mut c = StateCore::new(
        SyncConfig {
            max_message_bytes: 4096,
            ..SyncConfig::default()
        },
        Hlc::default(),
    );
    let before = c.clock().last();
    let e = c.write(
        secret(0),
        "b",
        b"k",
        Some(Bytes::from(vec![0; 4000])),
        EPOCH_MS,
    );
    assert!(matches!(e, Err(WriteError::TooLarge { .. })), "{e:?}");
    assert_eq!(c.clock().last(), before);
    assert!(
        c.write(
            secret(0),
            "b",
            b"k",
            Some(Bytes::from(vec![0; 3000])),
            EPOCH_MS
        )
        .is_ok()
    );
}

// ----- pending buffer -----

/// `count` successive writes by writer 0 to one key.
fn chain(count: usize) -> Vec<SignedUpdate> {
    let mut w = core();
    (0..count)
        .map(|i| {
            w.write(
                secret(0),
                "b",
                b"k",
                Some(Bytes::from(vec![i as u8; 50])),
                EPOCH_MS + i as u64,
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn pending_waits_fetches_and_releases_in_order() {
    let keys = keyring(2);
    let ups = chain(3);
    let now = EPOCH_MS + 10;
    let mut c = core();
    // The third write arrives first: its predecessors are missing.
    c.receive(id(1), SyncMessage::Push(vec![ups[2].clone()]), &keys, now);
    assert!(c.get("b", b"k").is_none());
    assert_eq!(c.pending_len(), 1);
    assert_eq!(c.poll_timeout(), Some(now + 3_000));
    // A fetch of that key went back to the sender, with this node's state.
    match c.poll_output() {
        Some(Output::Send {
            to,
            msg: SyncMessage::Fetch(f),
        }) => {
            assert_eq!(to, id(1));
            assert_eq!(f.states.len(), 1);
            assert!(f.states[0].have.is_none());
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(c.counters().fetches_sent, 1);
    // The second arrives: still missing the first.
    c.receive(id(1), SyncMessage::Push(vec![ups[1].clone()]), &keys, now);
    assert_eq!(c.pending_len(), 2);
    // No second fetch for the same key.
    assert!(c.poll_output().is_none());
    // The first arrives: all three applied, in causal order.
    c.receive(id(1), SyncMessage::Push(vec![ups[0].clone()]), &keys, now);
    let applied: Vec<SignedUpdate> = std::iter::from_fn(|| c.poll_output())
        .filter_map(|o| match o {
            Output::Applied { update, .. } => Some(update),
            Output::Send { .. } => None,
        })
        .collect();
    assert_eq!(applied, ups);
    assert_eq!(c.pending_len(), 0);
    assert_eq!(c.counters().pending_released, 2);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn pending_answered_by_the_fetch_or_applied_at_deadline() {
    let keys = keyring(2);
    let ups = chain(4);
    let now = EPOCH_MS + 10;
    // The sender holds all four; the receiver gets only the last by push.
    let mut sender = core();
    for u in &ups {
        sender.restore(u.clone());
    }
    let mut net = Net::new(vec![core(), sender], keys.clone());
    net.now_ms = now;
    net.cores[0].receive(id(1), SyncMessage::Push(vec![ups[3].clone()]), &keys, now);
    net.drain(0);
    assert_eq!(net.cores[0].pending_len(), 1);
    net.run();
    // The answer carried the sender's winner (the same update): applied.
    assert_eq!(net.cores[0].pending_len(), 0);
    assert_eq!(net.cores[0].digest(), net.cores[1].digest());

    // Without an answer, the deadline applies it.
    let mut c = core();
    c.receive(id(1), SyncMessage::Push(vec![ups[2].clone()]), &keys, now);
    c.handle_timeout(now + 2_999);
    assert!(c.get("b", b"k").is_none());
    c.handle_timeout(now + 3_000);
    assert_eq!(c.get("b", b"k").unwrap().winner(), &ups[2]);
    assert_eq!(c.counters().pending_expired, 1);
    let applied = std::iter::from_fn(|| c.poll_output())
        .filter(|o| matches!(o, Output::Applied { forward: true, .. }))
        .count();
    assert_eq!(applied, 1);
}

#[test]
fn pending_is_bounded_by_count_and_bytes_oldest_evicted() {
    let keys = keyring(2);
    let now = EPOCH_MS + 100;
    // 20 different keys, each written twice; only the second writes arrive.
    let mut w = core();
    let mut seconds = Vec::new();
    for k in 0..20u8 {
        w.write(secret(0), "b", &[k], None, EPOCH_MS).unwrap();
        seconds.push(
            w.write(
                secret(0),
                "b",
                &[k],
                Some(Bytes::from(vec![k; 100])),
                EPOCH_MS + 1,
            )
            .unwrap(),
        );
    }
    let mut c = StateCore::new(
        SyncConfig {
            pending_max_count: 5,
            ..SyncConfig::default()
        },
        Hlc::default(),
    );
    c.receive(id(1), SyncMessage::Push(seconds.clone()), &keys, now);
    assert_eq!(c.pending_len(), 5);
    assert_eq!(c.counters().pending_buffered, 20);
    assert_eq!(c.counters().pending_evicted, 15);
    // The survivors are the newest five.
    c.handle_timeout(now + 3_000);
    for (i, u) in seconds.iter().enumerate() {
        assert_eq!(c.get("b", &[i as u8]).is_some(), i >= 15, "key {i}");
        if i >= 15 {
            assert_eq!(c.get("b", &[i as u8]).unwrap().winner(), u);
        }
    }

    let size = seconds[0].encoded_len();
    let mut c = StateCore::new(
        SyncConfig {
            pending_max_bytes: 3 * size + 10,
            ..SyncConfig::default()
        },
        Hlc::default(),
    );
    c.receive(id(1), SyncMessage::Push(seconds), &keys, now);
    assert_eq!(c.pending_len(), 3);
    assert!(c.pending_bytes() <= 3 * size + 10);
    assert_eq!(c.counters().pending_evicted, 17);
}

// ----- anti-entropy specifics -----

/// A concurrent loser still counts in the merged vector: anti-entropy must
/// carry it, or digests never converge.
#[test]
fn anti_entropy_carries_concurrent_losers() {
    let t = Timestamp::new(EPOCH_MS, 0);
    let w1 = signed(
        0,
        "b",
        b"k",
        Some(b"a".to_vec()),
        &[(0, 1)],
        Timestamp::new(EPOCH_MS + 5, 0),
    );
    let w2 = signed(1, "b", b"k", Some(b"b".to_vec()), &[(1, 1)], t);
    let mut x = core();
    x.restore(w1.clone());
    x.restore(w2.clone());
    assert_eq!(x.get("b", b"k").unwrap().winner(), &w1);
    assert_eq!(x.updates_of("b", b"k"), vec![w1.clone(), w2.clone()]);
    // y holds only the winner: same value, smaller merged vector.
    let mut y = core();
    y.restore(w1.clone());
    assert_ne!(x.digest(), y.digest());
    let mut net = Net::new(vec![x, y, core()], keyring(3));
    net.now_ms = EPOCH_MS + 1000;
    net.anti_entropy(0, 1);
    net.anti_entropy(2, 0);
    let d = net.cores[0].digest();
    assert!(net.cores.iter().all(|c| c.digest() == d));
    // A later write descending both leaves a single justifying update.
    let now = net.now_ms;
    let w3 = net.cores[1].write(secret(1), "b", b"k", None, now).unwrap();
    assert_eq!(w3.vector().len(), 2);
    assert_eq!(net.cores[1].updates_of("b", b"k"), vec![w3]);
}

/// A fresh node catches up from scratch, in several rounds when the reply
/// budget is small, and answers stay within the message bound.
#[test]
fn fresh_node_catches_up_within_bounds() {
    let config = SyncConfig {
        max_message_bytes: 2048,
        max_reply_bytes: 8 * 1024,
        ..SyncConfig::default()
    };
    let mut full = StateCore::new(config.clone(), Hlc::default());
    for i in 0..300u32 {
        full.write(
            secret(0),
            "b",
            &i.to_be_bytes(),
            Some(Bytes::from(vec![1; 40])),
            EPOCH_MS,
        )
        .unwrap();
    }
    let mut net = Net::new(
        vec![full, StateCore::new(config.clone(), Hlc::default())],
        keyring(2),
    );
    net.now_ms = EPOCH_MS + 10;
    let mut rounds = 0;
    while net.cores[0].root() != net.cores[1].root() {
        rounds += 1;
        assert!(rounds < 30);
        let (a, b) = if rounds % 2 == 0 { (0, 1) } else { (1, 0) };
        let now = net.now_ms;
        net.cores[a].start_anti_entropy(id(b), now);
        net.drain(a);
        while let Some((from, to, bytes)) = net.queue.pop_front() {
            assert!(bytes.len() <= config.max_message_bytes, "{}", bytes.len());
            net.cores[to]
                .receive_bytes(id(from), &bytes, &net.keys, now)
                .unwrap();
            net.drain(to);
        }
    }
    assert!(rounds > 1, "budget should have cut the first reply");
    assert!(
        net.cores[0].counters().replies_truncated + net.cores[1].counters().replies_truncated > 0
    );
    assert_eq!(net.cores[0].digest(), net.cores[1].digest());
}

#[test]
fn fetch_of_unknown_ranges_and_hashes_answers_what_is_there() {
    let mut c = core();
    let u = c
        .write(
            secret(0),
            "b",
            b"k",
            Some(Bytes::from_static(b"v")),
            EPOCH_MS,
        )
        .unwrap();
    let kh = aether_state::key_hash("b", b"k");
    let keys = keyring(1);
    c.receive(
        id(0),
        SyncMessage::Fetch(FetchRequest {
            hashes: vec![kh, kh ^ 1],
            ranges: vec![NodeRef::leaf_of(kh)],
            ..FetchRequest::default()
        }),
        &keys,
        EPOCH_MS,
    );
    let sent: Vec<SyncMessage> = std::iter::from_fn(|| c.poll_output())
        .filter_map(|o| match o {
            Output::Send { msg, .. } => Some(msg),
            Output::Applied { .. } => None,
        })
        .collect();
    // Asked twice (range and hash), sent once.
    assert_eq!(sent, vec![SyncMessage::Updates(vec![u])]);
}

// ----- tombstones, restore -----

#[test]
fn tombstones_are_kept_until_collected() {
    let mut c = core();
    c.write(
        secret(0),
        "b",
        b"gone",
        Some(Bytes::from_static(b"v")),
        EPOCH_MS,
    )
    .unwrap();
    let t = c
        .write(secret(0), "b", b"gone", None, EPOCH_MS + 1)
        .unwrap();
    c.write(
        secret(0),
        "b",
        b"kept",
        Some(Bytes::from_static(b"v")),
        EPOCH_MS + 2,
    )
    .unwrap();
    assert_eq!(c.len(), 2);
    assert!(c.get("b", b"gone").unwrap().value().is_none());
    assert!(c.collect_tombstones(|_| false).is_empty());
    assert_eq!(c.len(), 2);
    let root = c.root();
    assert_eq!(c.collect_tombstones(|u| u == &t), vec![t]);
    assert_eq!(c.len(), 1);
    assert!(c.get("b", b"gone").is_none());
    assert_eq!(c.root().count, root.count - 1);
    assert_eq!(c.counters().tombstones_collected, 1);
    // The index is consistent with a core that never had the key.
    let mut d = core();
    d.restore(c.updates_of("b", b"kept")[0].clone());
    assert_eq!(c.root(), d.root());
    assert_eq!(c.digest(), d.digest());
}

#[test]
fn restore_rebuilds_the_same_state_and_clock() {
    let keys = keyring(3);
    let mut a = core();
    let mut journal = Vec::new();
    for i in 0..30u64 {
        let w = (i % 3) as usize;
        if w == 0 {
            journal.push(
                a.write(secret(0), "b", &[(i % 4) as u8], None, EPOCH_MS + i)
                    .unwrap(),
            );
        } else {
            let u = signed(
                w,
                "b",
                &[(i % 4) as u8],
                Some(vec![i as u8]),
                &[(w, i + 1)],
                Timestamp::new(EPOCH_MS + 2 * i, 0),
            );
            a.receive(id(w), SyncMessage::Updates(vec![u]), &keys, EPOCH_MS + 100);
        }
        while let Some(o) = a.poll_output() {
            if let Output::Applied {
                update,
                rule,
                forward,
            } = o
            {
                assert!(!forward);
                assert_ne!(rule, Rule::Superseded);
                journal.push(update);
            }
        }
    }
    let mut b = core();
    for u in journal.iter().rev() {
        b.restore(u.clone());
    }
    assert_eq!(a.digest(), b.digest());
    assert_eq!(b.counters().restored, journal.len() as u64);
    // The restored clock is past every restored timestamp.
    let max = journal.iter().map(|u| u.timestamp()).max().unwrap();
    assert!(b.clock().last() >= max);
    let next = b.write(secret(0), "b", &[0], None, EPOCH_MS).unwrap();
    assert!(next.timestamp() > max);
}

/// The push scenarios above do exercise the pending buffer: updates wait,
/// are released by their predecessors, and expire at their deadline.
#[test]
fn push_scenarios_exercise_the_pending_buffer() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut buffered, mut released, mut expired) = (0, 0, 0);
    for seed in 0..60u64 {
        let (n, steps) = scenario().new_tree(&mut runner).unwrap().current();
        let all = run(n, &steps);
        let keys = keyring(n);
        let mut rng = Rng::new(seed);
        let mut c = core();
        let mut now = all
            .iter()
            .map(|u| u.timestamp().physical_ms)
            .max()
            .unwrap_or(EPOCH_MS);
        for u in shuffled(&all, &mut rng) {
            c.receive(id(0), SyncMessage::Push(vec![u]), &keys, now);
            now += rng.below(1500);
            c.handle_timeout(now);
        }
        c.handle_timeout(u64::MAX);
        assert_eq!(c.digest(), reference(&all, n).digest());
        let k = c.counters();
        buffered += k.pending_buffered;
        released += k.pending_released;
        expired += k.pending_expired;
    }
    assert!(
        buffered > 20 && released > 5 && expired > 5,
        "{buffered} {released} {expired}"
    );
}

/// A peer repeating one node many times in a message gets one answer, not
/// one walk of the whole state per repetition.
#[test]
fn repeated_nodes_in_one_message_are_handled_once() {
    let keys = keyring(1);
    let mut c = core();
    for i in 0..50u8 {
        c.write(secret(0), "b", &[i], None, EPOCH_MS).unwrap();
    }
    let sent_updates = |c: &mut StateCore| -> usize {
        std::iter::from_fn(|| c.poll_output())
            .map(|o| match o {
                Output::Send {
                    msg: SyncMessage::Updates(us),
                    ..
                } => us.len(),
                _ => 0,
            })
            .sum()
    };
    let fetch = FetchRequest {
        ranges: vec![NodeRef::ROOT; 10_000],
        ..FetchRequest::default()
    };
    c.receive(id(0), SyncMessage::Fetch(fetch), &keys, EPOCH_MS);
    assert_eq!(sent_updates(&mut c), 50);
    let lists = vec![
        KeyList {
            node: NodeRef::ROOT,
            keys: vec![]
        };
        10_000
    ];
    c.receive(id(0), SyncMessage::Keys(lists), &keys, EPOCH_MS);
    assert_eq!(sent_updates(&mut c), 50);
}

#[test]
fn parallel_signature_checks_decide_exactly_as_sequential_ones() {
    let now = EPOCH_MS + 1000;
    let mut updates: Vec<SignedUpdate> = (0..300)
        .map(|i| {
            signed(
                i % 3,
                "b",
                format!("k{i}").as_bytes(),
                Some(vec![b'v'; 10]),
                &[(i % 3, 1)],
                Timestamp::new(now, 0),
            )
        })
        .collect();
    // Forge every 37th: flip a value byte after signing.
    for i in (0..updates.len()).step_by(37) {
        let mut bytes = updates[i].encode();
        let at = bytes.len() - 64 - 32 - 12 - 4 - 40 - 1;
        bytes[at] ^= 0x20;
        updates[i] = SignedUpdate::decode(&bytes).expect("still well-formed");
    }
    // And one exact duplicate of a good update.
    updates.push(updates[1].clone());
    let forged = (0..300).step_by(37).count() as u64;
    let run = |threads: usize| {
        let config = SyncConfig {
            verify_threads: threads,
            ..SyncConfig::default()
        };
        let mut c = StateCore::new(config, Hlc::new(500));
        c.receive(id(0), SyncMessage::Push(updates.clone()), &keyring(3), now);
        (
            c.digest(),
            c.counters().forged,
            c.counters().duplicates,
            c.len(),
        )
    };
    let sequential = run(1);
    assert_eq!(sequential.1, forged, "{sequential:?}");
    assert_eq!(sequential.2, 1);
    assert_eq!(run(2), sequential);
    assert_eq!(run(4), sequential);
}
