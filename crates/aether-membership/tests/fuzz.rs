//! Garbage into `handle_data`: always an error or a no-op, never a panic, never a huge
//! allocation (decoders bound every length before allocating; this test checks the first two).

mod common;

use std::time::Duration;

use aether_membership::{Config, Identity, Membership, Metadata};
use common::{addr, node_id};
use rand010::rngs::StdRng;
use rand010::{RngExt, SeedableRng};

fn node(i: u32) -> Membership {
    let md = Metadata {
        region: "eu".into(),
        labels: vec![("a".into(), "b".into())],
        http_addr: Some(addr(100)),
        ..Metadata::default()
    };
    Membership::new(
        Identity::new(node_id(i), addr(i)),
        md,
        Config::lan(3),
        u64::from(i),
        Duration::ZERO,
    )
    .unwrap()
}

/// Real datagrams of every kind, from three nodes talking for a while.
fn corpus() -> (Vec<Vec<u8>>, [Membership; 3]) {
    let mut nodes = [node(0), node(1), node(2)];
    nodes[1].join(addr(0), Duration::ZERO).unwrap();
    nodes[2].join(addr(0), Duration::ZERO).unwrap();
    let mut seen = Vec::new();
    let mut now = Duration::ZERO;
    for _ in 0..400 {
        now += Duration::from_millis(50);
        for n in &mut nodes {
            if n.poll_timeout().is_some_and(|t| t <= now) {
                n.handle_timeout(now);
            }
        }
        let mut moved = Vec::new();
        for n in &mut nodes {
            while let Some(t) = n.poll_transmit() {
                moved.push(t);
            }
        }
        for t in moved {
            let to = common::sim_id(t.to).index();
            let _ = nodes[to].handle_data(&t.data, now);
            if seen.len() < 2000 {
                seen.push(t.data);
            }
        }
    }
    assert!(nodes[0].members().len() == 2);
    let tags: std::collections::BTreeSet<u8> = seen.iter().map(|d| d[0]).collect();
    assert_eq!(tags.len(), 5, "tags seen: {tags:?}");
    (seen, nodes)
}

#[test]
fn random_and_mutated_datagrams_never_panic() {
    // Feed the members of the cluster that produced the corpus (so packets addressed to them
    // go deep into foca) and a stranger.
    let (corpus, members) = corpus();
    let mut targets: Vec<Membership> = members.into_iter().collect();
    targets.push(node(7));
    let mut rng = StdRng::seed_from_u64(0xF022);
    let mut errors = 0u64;
    for i in 0..100_000u32 {
        let data: Vec<u8> = if i % 4 == 0 {
            // Pure noise, sometimes with a valid tag.
            let len = rng.random_range(0..1500);
            let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            if !d.is_empty() && rng.random_bool(0.5) {
                d[0] = rng.random_range(0..5);
            }
            d
        } else {
            // A real datagram, mutated.
            let mut d = corpus[rng.random_range(0..corpus.len())].clone();
            match rng.random_range(0..4) {
                0 => {
                    let n = rng.random_range(0..=d.len());
                    d.truncate(n);
                }
                1 => {
                    for _ in 0..rng.random_range(1..4) {
                        let j = rng.random_range(0..d.len());
                        d[j] = rng.random();
                    }
                }
                2 => {
                    let j = rng.random_range(0..d.len());
                    d[j] ^= 1 << rng.random_range(0..8);
                }
                _ => {
                    let extra = rng.random_range(1..64);
                    d.extend((0..extra).map(|_| rng.random::<u8>()));
                }
            }
            d
        };
        let target = &mut targets[i as usize % 4];
        if target
            .handle_data(&data, Duration::from_millis(u64::from(i)))
            .is_err()
        {
            errors += 1;
        }
        while target.poll_transmit().is_some() {}
        while target.poll_event().is_some() {}
        if i % 1000 == 0 {
            target.handle_timeout(Duration::from_millis(u64::from(i)) + Duration::from_secs(20));
        }
    }
    assert!(errors > 50_000, "{errors}");
    // The cluster members survived and still know each other.
    assert!(targets[0].members().len() == 2);
}
