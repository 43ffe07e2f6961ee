//! Convergence, forgery and decoding properties of the merge core.

use std::collections::BTreeMap;

use aether_identity::{PublicKey, SecretKey};
use aether_state::{
    ApplyResult, NodeId, Rejection, Replica, Rule, SignedUpdate, Timestamp, VersionVector,
};
use bytes::Bytes;
use proptest::prelude::*;

fn secret(i: usize) -> SecretKey {
    SecretKey::from_bytes(&[i as u8 + 1; 32])
}

fn keyring(n: usize) -> BTreeMap<NodeId, PublicKey> {
    (0..n)
        .map(|i| {
            let k = secret(i).public();
            (NodeId::from(&k), k)
        })
        .collect()
}

/// Deterministic shuffle-with-duplicates from a seed (xorshift64*).
fn delivery(updates: &[SignedUpdate], seed: u64) -> Vec<SignedUpdate> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut out: Vec<SignedUpdate> = updates.to_vec();
    // Duplicate roughly a third of the updates.
    for u in updates {
        if next() % 3 == 0 {
            out.push(u.clone());
        }
    }
    for i in (1..out.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        out.swap(i, j);
    }
    out
}

const FAR: u64 = 1_000_000;

fn replay(updates: &[SignedUpdate], keys: &BTreeMap<NodeId, PublicKey>) -> Replica {
    let mut r = Replica::default();
    for u in updates {
        let res = r.apply(u, keys, FAR);
        assert!(!matches!(res, ApplyResult::Rejected(_)), "{res:?}");
    }
    r
}

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
        4 => (0..writers, 0u8..3, proptest::option::weighted(0.8, any::<u8>()))
            .prop_map(|(writer, key, value)| Step::Write { writer, key, value }),
        2 => (0..writers, 0..writers).prop_map(|(from, to)| Step::Sync { from, to }),
        1 => Just(Step::Tick),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, Vec<Step>)> {
    (2usize..=4).prop_flat_map(|n| (Just(n), proptest::collection::vec(step(n), 1..40)))
}

/// Runs honest writers through the script; returns every update created.
fn run(n: usize, steps: &[Step]) -> Vec<SignedUpdate> {
    let keys = keyring(n);
    let mut nodes: Vec<Replica> = (0..n).map(|_| Replica::default()).collect();
    let mut seen: Vec<Vec<SignedUpdate>> = vec![Vec::new(); n];
    let mut all = Vec::new();
    // Time moves slowly, and every node starts at the same clock, so writers
    // that have not heard from each other produce identical timestamps.
    let mut now = 1000;
    for s in steps {
        match *s {
            Step::Tick => now += 1,
            Step::Write { writer, key, value } => {
                let u = nodes[writer]
                    .write(
                        &secret(writer),
                        "b",
                        vec![key],
                        value.map(|v| Bytes::from(vec![v])),
                        now,
                    )
                    .unwrap();
                seen[writer].push(u.clone());
                all.push(u);
            }
            Step::Sync { from, to } => {
                for u in seen[from].clone() {
                    let res = nodes[to].apply(&u, &keys, now);
                    assert!(!matches!(res, ApplyResult::Rejected(_)), "{res:?}");
                    seen[to].push(u);
                }
            }
        }
    }
    all
}

fn has_tie(updates: &[SignedUpdate]) -> bool {
    updates.iter().enumerate().any(|(i, a)| {
        updates[i + 1..].iter().any(|b| {
            a.key() == b.key() && a.timestamp() == b.timestamp() && a.origin() != b.origin()
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Every permutation with duplication yields the same digest, and honest
    /// writers never trigger a clock anomaly.
    #[test]
    fn any_delivery_order_converges((n, steps) in scenario(), seeds in proptest::array::uniform4(any::<u64>())) {
        let keys = keyring(n);
        let all = run(n, &steps);
        let reference = replay(&all, &keys);
        prop_assert_eq!(reference.counters().clock_anomalies, 0);
        for seed in seeds {
            let r = replay(&delivery(&all, seed), &keys);
            prop_assert_eq!(r.digest(), reference.digest());
            prop_assert_eq!(r.counters().clock_anomalies, 0);
        }
        let mut rev = all.clone();
        rev.reverse();
        prop_assert_eq!(replay(&rev, &keys).digest(), reference.digest());
    }

    /// Even writers that lie (arbitrary vectors and timestamps, including
    /// ties and clock regressions) cannot make replicas diverge.
    #[test]
    fn arbitrary_updates_converge(
        raw in proptest::collection::vec((0usize..3, 0u8..2, proptest::collection::vec(0u64..3, 3), 0u64..3, 0u32..2, any::<u8>()), 1..16),
        seeds in proptest::array::uniform4(any::<u64>()),
    ) {
        let keys = keyring(3);
        let ids: Vec<NodeId> = (0..3).map(|i| NodeId::from(&secret(i).public())).collect();
        let all: Vec<SignedUpdate> = raw
            .iter()
            .map(|(w, key, counters, phys, logical, v)| {
                let mut vv: VersionVector = ids.iter().copied().zip(counters.iter().copied()).collect();
                if vv.get(&ids[*w]) == 0 {
                    vv.set(ids[*w], 1);
                }
                SignedUpdate::new(&secret(*w), "b", vec![*key], Some(Bytes::from(vec![*v])), vv, Timestamp::new(1000 + phys, *logical)).unwrap()
            })
            .collect();
        let reference = replay(&all, &keys);
        for seed in seeds {
            prop_assert_eq!(replay(&delivery(&all, seed), &keys).digest(), reference.digest());
        }
    }

    /// A tampered update is rejected and nothing is stored.
    #[test]
    fn tampered_bytes_never_stored(index in any::<prop::sample::Index>(), bit in 0u8..8, value in proptest::collection::vec(any::<u8>(), 0..64)) {
        let keys = keyring(1);
        let mut w = Replica::default();
        let u = w.write(&secret(0), "b", &b"k"[..], Some(Bytes::from(value)), 1000).unwrap();
        let mut bytes = u.encode();
        let i = index.index(bytes.len());
        bytes[i] ^= 1 << bit;
        let mut r = Replica::default();
        let res = r.apply_bytes(&bytes, &keys, 2000);
        prop_assert!(matches!(res, ApplyResult::Rejected(_)), "{:?}", res);
        prop_assert!(r.is_empty());
    }

    /// Decoding arbitrary bytes never panics.
    #[test]
    fn decode_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SignedUpdate::decode(&bytes);
        let mut prefixed = vec![1u8];
        prefixed.extend_from_slice(&bytes);
        let _ = SignedUpdate::decode(&prefixed);
    }

    /// Decoding a truncated valid update fails cleanly.
    #[test]
    fn decode_truncated(cut in any::<prop::sample::Index>()) {
        let mut w = Replica::default();
        let u = w.write(&secret(0), "b", &b"k"[..], Some(Bytes::from_static(b"value")), 1000).unwrap();
        let bytes = u.encode();
        let cut = cut.index(bytes.len());
        prop_assert!(SignedUpdate::decode(&bytes[..cut]).is_err());
    }
}

fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for i in 0..=p.len() {
            let mut q = p.clone();
            q.insert(i, n - 1);
            out.push(q);
        }
    }
    out
}

/// Four fresh writers write the same key in the same millisecond: four-way
/// exact tie; all 24 delivery orders agree.
#[test]
fn four_way_tie_all_permutations() {
    let keys = keyring(4);
    let updates: Vec<SignedUpdate> = (0..4)
        .map(|i| {
            Replica::default()
                .write(
                    &secret(i),
                    "b",
                    &b"k"[..],
                    Some(Bytes::from(vec![i as u8])),
                    1000,
                )
                .unwrap()
        })
        .collect();
    assert!(has_tie(&updates));
    assert!(
        updates
            .iter()
            .all(|u| u.timestamp() == Timestamp::new(1000, 0))
    );
    let winner = updates.iter().max_by_key(|u| *u.signature()).unwrap();
    let mut digests = Vec::new();
    for p in permutations(4) {
        let order: Vec<_> = p.iter().map(|&i| updates[i].clone()).collect();
        let r = replay(&order, &keys);
        let e = r.get("b", b"k").unwrap();
        assert_eq!(e.winner(), winner);
        assert_eq!(e.vector().len(), 4);
        digests.push(r.digest());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
}

/// A writer whose clock ran backwards along a causal chain: the literal
/// rules would diverge here; the implementation converges and counts it.
#[test]
fn clock_regression_converges() {
    let keys = keyring(2);
    let (a, b) = (secret(0), secret(1));
    let (ia, ib) = (NodeId::from(&a.public()), NodeId::from(&b.public()));
    let vv = |x: u64, y: u64| -> VersionVector { [(ia, x), (ib, y)].into_iter().collect() };
    let v = Some(Bytes::from_static(b"v"));
    let ua1 = SignedUpdate::new(
        &a,
        "b",
        &b"k"[..],
        v.clone(),
        vv(1, 0),
        Timestamp::new(30, 0),
    )
    .unwrap();
    let ua2 = SignedUpdate::new(
        &a,
        "b",
        &b"k"[..],
        v.clone(),
        vv(2, 0),
        Timestamp::new(5, 0),
    )
    .unwrap();
    let ub1 = SignedUpdate::new(&b, "b", &b"k"[..], v, vv(0, 1), Timestamp::new(20, 0)).unwrap();
    let all = [ua1, ua2, ub1];
    let mut digests = Vec::new();
    let mut anomalies = 0;
    for p in permutations(3) {
        let order: Vec<_> = p.iter().map(|&i| all[i].clone()).collect();
        let r = replay(&order, &keys);
        anomalies += r.counters().clock_anomalies;
        digests.push(r.digest());
    }
    assert!(digests.windows(2).all(|w| w[0] == w[1]));
    assert!(anomalies > 0);
}

#[test]
fn unknown_origin_and_future_refused() {
    let keys = keyring(1);
    let stranger = SecretKey::from_bytes(&[99; 32]);
    let u = Replica::default()
        .write(&stranger, "b", &b"k"[..], None, 1000)
        .unwrap();
    let mut r = Replica::default();
    assert_eq!(
        r.apply(&u, &keys, 1000),
        ApplyResult::Rejected(Rejection::UnknownOrigin)
    );
    let f = Replica::default()
        .write(&secret(0), "b", &b"k"[..], None, 1501)
        .unwrap();
    assert!(matches!(
        r.apply(&f, &keys, 1000),
        ApplyResult::Rejected(Rejection::FromTheFuture(_))
    ));
    assert!(r.is_empty());
    // Accepted once local time has caught up (e.g. via anti-entropy).
    assert_eq!(r.apply(&f, &keys, 1001), ApplyResult::Applied(Rule::New));
    assert_eq!(r.counters().unknown_origin, 1);
    assert_eq!(r.counters().from_the_future, 1);
}

#[test]
fn forged_signature_rejected() {
    let keys = keyring(1);
    let u = Replica::default()
        .write(
            &secret(0),
            "b",
            &b"k"[..],
            Some(Bytes::from_static(b"value")),
            1000,
        )
        .unwrap();
    // Change the value after signing: still well-formed, signature broken.
    let mut bytes = u.encode();
    let value_end = 1 + 2 + 1 + 2 + 1 + 1 + 4 + 5;
    bytes[value_end - 1] ^= 0x20;
    let forged = SignedUpdate::decode(&bytes).unwrap();
    assert_eq!(forged.value().unwrap().as_ref(), b"valuE");
    let mut r = Replica::default();
    assert_eq!(
        r.apply(&forged, &keys, 1000),
        ApplyResult::Rejected(Rejection::Forged)
    );
    assert_eq!(
        r.apply_bytes(&bytes, &keys, 1000),
        ApplyResult::Rejected(Rejection::Forged)
    );
    assert!(r.is_empty());
    assert_eq!(r.counters().forged, 2);
    // The genuine one still goes in.
    assert_eq!(r.apply(&u, &keys, 1000), ApplyResult::Applied(Rule::New));
}

/// The random scenarios of `any_delivery_order_converges` do exercise every
/// case of the rule, exact timestamp ties included.
#[test]
fn scenarios_cover_every_rule() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;

    let mut runner = TestRunner::deterministic();
    let mut rules = BTreeSet::new();
    let mut ties = 0;
    for i in 0..200u64 {
        let (n, steps) = scenario().new_tree(&mut runner).unwrap().current();
        let keys = keyring(n);
        let all = run(n, &steps);
        ties += usize::from(has_tie(&all));
        let mut r = Replica::default();
        for u in delivery(&all, i) {
            match r.apply(&u, &keys, FAR) {
                ApplyResult::Applied(rule) | ApplyResult::Unchanged(rule) => {
                    rules.insert(format!("{rule:?}"));
                }
                ApplyResult::Rejected(e) => panic!("{e}"),
            }
        }
    }
    let expected = [
        "New",
        "Duplicate",
        "Descends",
        "Superseded",
        "ConcurrentNewer",
        "ConcurrentOlder",
        "TieWon",
        "TieLost",
    ];
    for e in expected {
        assert!(rules.contains(e), "rule {e} never exercised: {rules:?}");
    }
    assert!(!rules.contains("ClockAnomaly"));
    assert!(ties > 20, "only {ties} scenarios with ties");
}
