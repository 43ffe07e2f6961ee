//! Reachability probes and relaying between real endpoints on 127.0.0.1.

use std::time::Duration;

use aether_identity::SecretKey;

use super::{addr, bounded, eventually, identity, node, recv, start};
use crate::{Config, TransportError};

/// `a` and `b`, each connected to `relay`.
async fn both_connected_to(relay: &crate::Endpoint, a: &crate::Endpoint, b: &crate::Endpoint) {
    for e in [a, b] {
        bounded("connect", e.connect(addr(relay), Some(relay.node_id())))
            .await
            .expect("to the relay");
    }
}

/// Three endpoints of one lattice, `a` connected to `b` through the middle one, the relay.
async fn relayed_pair(root: &SecretKey) -> (crate::Endpoint, crate::Endpoint, crate::Endpoint) {
    let (a, relay, b) = (node(root), node(root), node(root));
    both_connected_to(&relay, &a, &b).await;
    bounded("relayed", a.connect_relayed(relay.node_id(), b.node_id()))
        .await
        .expect("a reaches b through the relay");
    (a, relay, b)
}

#[tokio::test]
async fn a_probe_proves_reachability_without_disturbing_connections() {
    let root = SecretKey::generate();
    let a = node(&root);
    let b = node(&root);
    bounded("connect", a.connect(addr(&b), Some(b.node_id())))
        .await
        .expect("a -> b");
    // Each side sees the other at the address its socket has.
    assert_eq!(b.remote_addr(&a.node_id()), Some(addr(&a)));
    assert_eq!(a.remote_addr(&b.node_id()), Some(addr(&b)));

    let short = Duration::from_millis(500);
    bounded("probe", a.probe(addr(&b), b.node_id(), short))
        .await
        .expect("b answers at its address");
    // Another node expected there, or nobody there: no.
    let someone_else = SecretKey::generate().public();
    assert!(
        bounded("probe", a.probe(addr(&b), someone_else, short))
            .await
            .is_err()
    );
    let nobody = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let silent = nobody.local_addr().expect("addr");
    assert!(matches!(
        bounded("probe", a.probe(silent, b.node_id(), short)).await,
        Err(TransportError::Timeout(_))
    ));
    // The probes registered nothing: one connection each way, still in use.
    assert_eq!(b.metrics().connections_accepted(), 1);
    assert_eq!(b.connected_peers(), vec![a.node_id()]);
    a.send(&b.node_id(), 7, b"still here").await.expect("send");
    assert_eq!(&recv(&b).await.payload[..], b"still here");
}

#[tokio::test]
async fn two_peers_talk_end_to_end_through_a_relay() {
    let root = SecretKey::generate();
    let (a, relay, b) = relayed_pair(&root).await;
    assert_eq!(a.relay_of(&b.node_id()), Some(relay.node_id()));
    a.send(&b.node_id(), 7, b"via the relay")
        .await
        .expect("send");
    let m = recv(&b).await;
    assert_eq!(
        (m.from, &m.payload[..]),
        (a.node_id(), &b"via the relay"[..])
    );
    // b answers over the same relayed connection.
    assert_eq!(b.relay_of(&a.node_id()), Some(relay.node_id()));
    b.send(&a.node_id(), 8, b"back").await.expect("reply");
    assert_eq!(&recv(&a).await.payload[..], b"back");
    let relayed = relay.relay_metrics().expect("the node's endpoint relays");
    assert!(
        relayed
            .relayed_packets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 4
    );
    assert!(
        a.relay_of(&relay.node_id()).is_none(),
        "a direct connection"
    );

    // The relay goes: the relayed connection is closed with it, at once.
    relay.close();
    eventually("the relayed connection closes", || {
        !a.is_connected(&b.node_id()) && !b.is_connected(&a.node_id())
    })
    .await;
}

#[tokio::test]
async fn a_relay_that_flips_bytes_spoils_only_those_datagrams() {
    let root = SecretKey::generate();
    let (a, relay, b) = relayed_pair(&root).await;
    // The next datagrams it passes on are damaged: QUIC drops each (it fails authentication)
    // and sends its contents again; every message arrives intact, the connection lives on.
    // (Four in a row: each loss doubles QUIC's probe timeout, so many more would only test
    // patience.)
    relay.damage_relayed(4);
    for i in 0..30u8 {
        a.send(&b.node_id(), 7, &[i; 900]).await.expect("send");
    }
    let mut got: Vec<u8> = Vec::new();
    for _ in 0..30 {
        let m = recv(&b).await;
        assert_eq!(m.payload.len(), 900);
        assert!(m.payload.iter().all(|x| *x == m.payload[0]), "intact");
        got.push(m.payload[0]);
    }
    got.sort_unstable();
    assert_eq!(got, (0..30).collect::<Vec<u8>>());
    assert!(a.is_connected(&b.node_id()), "the connection lives on");
    let m = relay.relay_metrics().expect("metrics");
    assert!(m.relayed_packets.load(std::sync::atomic::Ordering::Relaxed) > 30);
}

#[tokio::test]
async fn a_node_that_does_not_relay_drops_what_it_is_asked_to_pass_on() {
    let root = SecretKey::generate();
    let (a, b) = (node(&root), node(&root));
    let config = Config {
        relay: false,
        ..Config::default()
    };
    let relay = start(identity(&root), &root, config);
    both_connected_to(&relay, &a, &b).await;
    let attempt = tokio::time::timeout(
        Duration::from_secs(2),
        a.connect_relayed(relay.node_id(), b.node_id()),
    )
    .await;
    assert!(!matches!(attempt, Ok(Ok(_))), "{attempt:?}");
    let m = relay.relay_metrics().expect("metrics");
    assert_eq!(
        m.relayed_packets.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(m.dropped_packets.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
