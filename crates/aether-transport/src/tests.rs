//! Real sockets on 127.0.0.1; every wait is bounded.

use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_identity::{
    Invite, InviteConstraints, Labels, LatticeId, NodeCertificate, Revocation, RevocationSet,
    SecretKey,
};

use crate::{
    Config, Endpoint, Message, NodeIdentity, RefusalReason, SharedRevocations, TransportError,
    close_code,
};

const LIMIT: Duration = Duration::from_secs(20);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

async fn bounded<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {LIMIT:?}"))
}

/// Polls `cond` every 10 ms, at most `LIMIT`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    bounded(what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A node key and its node certificate, admitted by `root`.
fn admit(root: &SecretKey) -> (SecretKey, NodeCertificate) {
    let t = now();
    let token = Invite::issue(
        root,
        LatticeId::of_root(&root.public()),
        InviteConstraints::default(),
        t + 3600,
        false,
        t,
    )
    .expect("invite");
    let node = SecretKey::generate();
    let cert = NodeCertificate::issue(&token, &node, None, Labels::new(), t).expect("node cert");
    (node, cert)
}

fn identity(root: &SecretKey) -> NodeIdentity {
    let (node, cert) = admit(root);
    NodeIdentity::new(&node, &cert).expect("identity")
}

fn revocations() -> SharedRevocations {
    Arc::new(RwLock::new(RevocationSet::new()))
}

fn start(identity: NodeIdentity, root: &SecretKey, config: Config) -> Endpoint {
    Endpoint::bind(
        "127.0.0.1:0".parse().expect("addr"),
        identity,
        root.public(),
        revocations(),
        config,
    )
    .expect("bind")
}

fn node(root: &SecretKey) -> Endpoint {
    start(identity(root), root, Config::default())
}

fn addr(e: &Endpoint) -> std::net::SocketAddr {
    e.local_addr().expect("local addr")
}

async fn recv(e: &Endpoint) -> Message {
    bounded("recv", e.recv()).await.expect("endpoint open")
}

/// `dialer` fails to connect to `target`, which counts `reason` once.
async fn assert_refused_by_target(dialer: &Endpoint, target: &Endpoint, reason: RefusalReason) {
    let result = bounded("connect", dialer.connect(addr(target), None)).await;
    assert!(result.is_err(), "connect should fail, got {result:?}");
    eventually("refusal counted", || target.metrics().refused(reason) == 1).await;
    assert_eq!(target.metrics().refused_total(), 1);
    assert_eq!(target.metrics().connections_accepted(), 0);
    assert!(target.connected_peers().is_empty());
}

#[test]
fn identity_must_match_its_node_certificate() {
    let root = SecretKey::generate();
    let (_, cert) = admit(&root);
    let other = SecretKey::generate();
    assert!(matches!(
        NodeIdentity::new(&other, &cert),
        Err(TransportError::IdentityMismatch { .. })
    ));
}

#[tokio::test]
async fn admitted_nodes_connect_both_ways_and_exchange_messages() {
    let root = SecretKey::generate();
    let a = node(&root);
    let b = node(&root);
    let c = node(&root);

    // a dials b, expecting b.
    let id = bounded("connect", a.connect(addr(&b), Some(b.node_id())))
        .await
        .expect("a -> b");
    assert_eq!(id, b.node_id());
    a.send(&b.node_id(), 7, b"hello b").await.expect("send");
    let m = recv(&b).await;
    assert_eq!(
        (m.from, m.channel, &m.payload[..]),
        (a.node_id(), 7, &b"hello b"[..])
    );
    // b answers over the connection a opened.
    b.send(&a.node_id(), 9, b"hello a").await.expect("reply");
    let m = recv(&a).await;
    assert_eq!(
        (m.from, m.channel, &m.payload[..]),
        (b.node_id(), 9, &b"hello a"[..])
    );
    // Empty payloads are fine.
    a.send(&b.node_id(), 1, b"").await.expect("empty");
    assert!(recv(&b).await.payload.is_empty());

    // c dials a without knowing its id; a answers c.
    let id = bounded("connect", c.connect(addr(&a), None))
        .await
        .expect("c -> a");
    assert_eq!(id, a.node_id());
    c.send(&a.node_id(), 2, b"from c").await.expect("send");
    let m = recv(&a).await;
    assert_eq!((m.from, &m.payload[..]), (c.node_id(), &b"from c"[..]));
    a.send(&c.node_id(), 3, b"to c").await.expect("send");
    assert_eq!(recv(&c).await.from, a.node_id());

    // Dialing an admitted node that is not the one expected is refused.
    let someone_else = SecretKey::generate().public();
    let wrong = bounded("connect", c.connect(addr(&b), Some(someone_else))).await;
    assert!(wrong.is_err());
    assert_eq!(c.metrics().refused(RefusalReason::UnexpectedNode), 1);

    // Sending to an unknown node needs a connection first.
    assert!(matches!(
        b.send(&c.node_id(), 0, b"x").await,
        Err(TransportError::NotConnected(_))
    ));
}

#[tokio::test]
async fn node_without_admission_extension_is_refused_both_ways() {
    let root = SecretKey::generate();
    let member = node(&root);
    let rogue_identity = NodeIdentity::build(&SecretKey::generate(), None).expect("identity");
    let rogue = start(rogue_identity, &root, Config::default());
    assert_refused_by_target(&rogue, &member, RefusalReason::NoAdmission).await;
    // The member dialing the rogue refuses it as a server too.
    assert!(
        bounded("connect", member.connect(addr(&rogue), None))
            .await
            .is_err()
    );
    assert_eq!(member.metrics().refused(RefusalReason::NoAdmission), 2);
}

#[tokio::test]
async fn node_of_another_lattice_is_refused() {
    let root = SecretKey::generate();
    let foreign_root = SecretKey::generate();
    let member = node(&root);
    // Admitted by another root, but trusting ours so that it goes on to
    // present its own certificate.
    let foreigner = start(identity(&foreign_root), &root, Config::default());
    assert_refused_by_target(&foreigner, &member, RefusalReason::ForeignLattice).await;
    // Dialing the foreigner, the member refuses it as a server too.
    assert!(
        bounded("connect", member.connect(addr(&foreigner), None))
            .await
            .is_err()
    );
    assert_eq!(member.metrics().refused(RefusalReason::ForeignLattice), 2);
}

#[tokio::test]
async fn certificate_key_differing_from_admitted_key_is_refused() {
    let root = SecretKey::generate();
    let member = node(&root);
    // A stolen, valid node certificate presented with another key.
    let (_, stolen) = admit(&root);
    let forger =
        NodeIdentity::build(&SecretKey::generate(), Some(stolen.to_bytes())).expect("identity");
    let forger = start(forger, &root, Config::default());
    assert_refused_by_target(&forger, &member, RefusalReason::KeyMismatch).await;
}

#[tokio::test]
async fn garbage_admission_extension_is_a_bad_chain() {
    let root = SecretKey::generate();
    let member = node(&root);
    let junk =
        NodeIdentity::build(&SecretKey::generate(), Some(vec![0xB1, 1, 2, 3])).expect("identity");
    let junk = start(junk, &root, Config::default());
    assert_refused_by_target(&junk, &member, RefusalReason::BadChain).await;
}

#[tokio::test]
async fn revoked_node_is_refused_and_its_connection_closed() {
    let root = SecretKey::generate();
    let member = node(&root);
    let peer = node(&root);
    let outcast = node(&root);

    // A node revoked before it dials is refused in the handshake.
    let revocation = Revocation::issue(&root, &outcast.node_id(), "decommissioned", now())
        .expect("revocation")
        .verify(&root.public())
        .expect("verified");
    member
        .revocations()
        .write()
        .expect("lock")
        .insert(revocation);
    assert_refused_by_target(&outcast, &member, RefusalReason::Revoked).await;

    // An established connection is closed when the node is revoked.
    bounded(
        "connect",
        peer.connect(addr(&member), Some(member.node_id())),
    )
    .await
    .expect("connect");
    peer.send(&member.node_id(), 0, b"before")
        .await
        .expect("send");
    assert_eq!(recv(&member).await.from, peer.node_id());
    let conn = peer.connection(&member.node_id()).expect("cached");
    let revocation = Revocation::issue(&root, &peer.node_id(), "compromised", now())
        .expect("revocation")
        .verify(&root.public())
        .expect("verified");
    assert!(member.revoke(revocation));
    assert!(!member.is_connected(&peer.node_id()));
    assert_eq!(member.metrics().connections_closed(), 1);
    let reason = bounded("closed", conn.closed()).await;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(close_code::CLOSED)),
        "{reason:?}"
    );
    eventually("peer drops the closed connection", || {
        !peer.is_connected(&member.node_id())
    })
    .await;
    // Reconnecting is refused.
    assert!(
        bounded("connect", peer.connect(addr(&member), None))
            .await
            .is_err()
    );
    eventually("second revoked refusal", || {
        member.metrics().refused(RefusalReason::Revoked) == 2
    })
    .await;
}

#[tokio::test]
async fn oversized_frames_are_rejected() {
    let root = SecretKey::generate();
    let config = Config {
        max_frame_len: 1024,
        ..Config::default()
    };
    let a = start(identity(&root), &root, config.clone());
    let b = start(identity(&root), &root, config);
    bounded("connect", a.connect(addr(&b), Some(b.node_id())))
        .await
        .expect("connect");
    // The sender refuses to send one.
    assert!(matches!(
        a.send(&b.node_id(), 0, &[0; 1025]).await,
        Err(TransportError::FrameTooLarge {
            len: 1025,
            max: 1024
        })
    ));
    // The bound itself is fine.
    a.send(&b.node_id(), 0, &[5; 1024]).await.expect("at bound");
    assert_eq!(recv(&b).await.payload.len(), 1024);
    // A peer writing past the bound anyway has its connection closed.
    let conn = a.connection(&b.node_id()).expect("cached");
    let mut stream = conn.open_uni().await.expect("stream");
    // Channel byte plus 1025 payload bytes; the write may fail once b closes.
    let _ = stream.write_all(&[0; 1026]).await;
    let _ = stream.finish();
    let reason = bounded("closed", conn.closed()).await;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(close_code::FRAME_TOO_LARGE)),
        "{reason:?}"
    );
    assert_eq!(b.metrics().frames_too_large(), 1);
    assert_eq!(b.metrics().messages_received(), 1);
}

#[tokio::test]
async fn connection_cache_reuses_and_evicts() {
    let root = SecretKey::generate();
    let a = start(
        identity(&root),
        &root,
        Config {
            max_connections: 2,
            ..Config::default()
        },
    );
    let b = node(&root);
    for _ in 0..10 {
        bounded("connect", a.connect(addr(&b), Some(b.node_id())))
            .await
            .expect("connect");
    }
    for i in 0..100u32 {
        a.send(&b.node_id(), 4, &i.to_be_bytes())
            .await
            .expect("send");
    }
    let mut seen = Vec::new();
    for _ in 0..100 {
        let m = recv(&b).await;
        assert_eq!(m.from, a.node_id());
        seen.push(u32::from_be_bytes(
            m.payload[..].try_into().expect("4 bytes"),
        ));
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    assert_eq!(a.metrics().connections_opened(), 1);
    assert_eq!(b.metrics().connections_accepted(), 1);
    assert_eq!(a.metrics().messages_sent(), 100);

    // A full cache evicts the least recently used peer.
    let c = node(&root);
    let d = node(&root);
    bounded("connect", a.connect(addr(&c), Some(c.node_id())))
        .await
        .expect("connect c");
    a.send(&b.node_id(), 0, b"touch b").await.expect("send"); // c is now the LRU
    bounded("connect", a.connect(addr(&d), Some(d.node_id())))
        .await
        .expect("connect d");
    let mut peers = a.connected_peers();
    peers.sort();
    let mut want = vec![b.node_id(), d.node_id()];
    want.sort();
    assert_eq!(peers, want);
    assert_eq!(a.metrics().connections_evicted(), 1);
    eventually("c sees the eviction", || !c.is_connected(&a.node_id())).await;
}
