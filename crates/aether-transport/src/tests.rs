//! Real sockets on 127.0.0.1; every wait is bounded.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aether_identity::{
    AdmissionLedger, Invite, InviteConstraints, InviteToken, Labels, LatticeId, NodeCertificate,
    NodeId, Revocation, SecretKey, VerifiedRevocation,
};

use crate::{
    Admission, Config, Endpoint, Message, NodeIdentity, RefusalReason, TransportError, close_code,
};

mod relay;

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

/// An invite of `root` issued at `issued`, expiring at `expires`.
fn invite(root: &SecretKey, single_use: bool, issued: u64, expires: u64) -> InviteToken {
    Invite::issue(
        root,
        LatticeId::of_root(&root.public()),
        InviteConstraints::default(),
        expires,
        single_use,
        issued,
    )
    .expect("invite")
}

/// A fresh node key certified with `token` at `at`.
fn certify(token: &InviteToken, at: u64) -> (SecretKey, NodeCertificate) {
    let node = SecretKey::generate();
    let cert = NodeCertificate::issue(token, &node, None, Labels::new(), at).expect("node cert");
    (node, cert)
}

/// A node key and its node certificate, admitted by `root`.
fn admit(root: &SecretKey) -> (SecretKey, NodeCertificate) {
    let t = now();
    certify(&invite(root, false, t, t + 3600), t)
}

/// `root`'s verified revocation of `node`.
fn revoke_by(root: &SecretKey, node: &NodeId, reason: &str) -> VerifiedRevocation {
    Revocation::issue(root, node, reason, now())
        .expect("revocation")
        .verify(&root.public())
        .expect("verified")
}

fn identity(root: &SecretKey) -> NodeIdentity {
    let (node, cert) = admit(root);
    NodeIdentity::new(&node, &cert).expect("identity")
}

fn start_at(
    addr: SocketAddr,
    identity: NodeIdentity,
    root: &SecretKey,
    config: Config,
) -> Endpoint {
    Endpoint::bind(addr, identity, Admission::new(root.public()), config).expect("bind")
}

fn start(identity: NodeIdentity, root: &SecretKey, config: Config) -> Endpoint {
    start_at("127.0.0.1:0".parse().expect("addr"), identity, root, config)
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
    let revocation = revoke_by(&root, &outcast.node_id(), "decommissioned");
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
    let revocation = revoke_by(&root, &peer.node_id(), "compromised");
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

/// `dialer` fails to connect to `target`, which refuses it for `reason`.
async fn assert_refused_for(dialer: &Endpoint, target: &Endpoint, reason: RefusalReason) {
    let before = target.metrics().refused(reason);
    let result = bounded("connect", dialer.connect(addr(target), None)).await;
    assert!(result.is_err(), "connect should fail, got {result:?}");
    eventually("refusal counted", || {
        target.metrics().refused(reason) == before + 1
    })
    .await;
    assert!(!target.is_connected(&dialer.node_id()));
}

#[tokio::test]
async fn single_use_invite_admits_one_node() {
    let root = SecretKey::generate();
    let member = node(&root);
    let t = now();
    let token = invite(&root, true, t - 100, t + 3600);
    let (first_key, first_cert) = certify(&token, t - 50);
    let (second_key, second_cert) = certify(&token, t - 40);
    let first = start(
        NodeIdentity::new(&first_key, &first_cert).expect("identity"),
        &root,
        Config::default(),
    );
    let second = start(
        NodeIdentity::new(&second_key, &second_cert).expect("identity"),
        &root,
        Config::default(),
    );
    bounded(
        "connect",
        first.connect(addr(&member), Some(member.node_id())),
    )
    .await
    .expect("the first node to use the invite is admitted");
    assert_eq!(
        member.ledger().read().expect("lock").winner(token.id()),
        Some(first.node_id())
    );
    // The second machine to use it is refused, dialing or dialed.
    assert_refused_for(&second, &member, RefusalReason::InviteUsed).await;
    assert!(
        bounded("connect", member.connect(addr(&second), None))
            .await
            .is_err()
    );
    assert_eq!(member.metrics().refused(RefusalReason::InviteUsed), 2);
    assert_eq!(RefusalReason::InviteUsed.as_str(), "invite_used");
    // The winner is unaffected.
    first
        .send(&member.node_id(), 1, b"still here")
        .await
        .expect("send");
    assert_eq!(recv(&member).await.from, first.node_id());
}

#[tokio::test]
async fn merged_ledger_displaces_a_later_claim() {
    let root = SecretKey::generate();
    let member = node(&root);
    let t = now();
    let token = invite(&root, true, t - 100, t + 3600);
    let (later_key, later_cert) = certify(&token, t - 50);
    let later = start(
        NodeIdentity::new(&later_key, &later_cert).expect("identity"),
        &root,
        Config::default(),
    );
    bounded(
        "connect",
        later.connect(addr(&member), Some(member.node_id())),
    )
    .await
    .expect("admitted while no earlier claim is known");
    let conn = later.connection(&member.node_id()).expect("cached");
    // Another member admitted an earlier claim of the same invite.
    let (_, earlier_cert) = certify(&token, t - 60);
    let mut elsewhere = AdmissionLedger::new();
    elsewhere
        .admit(
            &earlier_cert.verify(&root.public(), t).expect("verify"),
            t - 60,
        )
        .expect("admit");
    assert_eq!(member.merge_ledger(&elsewhere), vec![later.node_id()]);
    assert!(!member.is_connected(&later.node_id()));
    let reason = bounded("closed", conn.closed()).await;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(close_code::DISPLACED)),
        "{reason:?}"
    );
    // Merging again changes nothing; reconnecting is refused.
    assert!(member.merge_ledger(&elsewhere).is_empty());
    assert_refused_for(&later, &member, RefusalReason::InviteUsed).await;
}

#[tokio::test]
async fn expired_invite_admits_only_nodes_already_in_the_ledger() {
    let root = SecretKey::generate();
    let member = node(&root);
    let t = now();
    // Valid for a while, long ago: certificates issued then verify offline.
    let token = invite(&root, false, t - 100, t - 10);
    let (late_key, late_cert) = certify(&token, t - 50);
    let late = start(
        NodeIdentity::new(&late_key, &late_cert).expect("identity"),
        &root,
        Config::default(),
    );
    assert_refused_for(&late, &member, RefusalReason::InviteExpired).await;
    assert!(
        bounded("connect", member.connect(addr(&late), None))
            .await
            .is_err()
    );
    assert_eq!(member.metrics().refused(RefusalReason::InviteExpired), 2);
    assert_eq!(RefusalReason::InviteExpired.as_str(), "invite_expired");

    // A node the member recorded while the invite was valid stays admitted.
    let (known_key, known_cert) = certify(&token, t - 40);
    member
        .ledger()
        .write()
        .expect("lock")
        .admit(
            &known_cert.verify(&root.public(), t - 40).expect("verify"),
            t - 40,
        )
        .expect("recorded before expiry");
    let known = start(
        NodeIdentity::new(&known_key, &known_cert).expect("identity"),
        &root,
        Config::default(),
    );
    bounded(
        "connect",
        known.connect(addr(&member), Some(member.node_id())),
    )
    .await
    .expect("a known node stays admitted after its invite expired");
    known.send(&member.node_id(), 2, b"hi").await.expect("send");
    assert_eq!(recv(&member).await.from, known.node_id());
}

#[tokio::test]
async fn newest_connection_is_used_and_the_oldest_closed_past_the_bound() {
    let root = SecretKey::generate();
    let a = node(&root);
    let b = node(&root);
    bounded("connect", a.connect(addr(&b), Some(b.node_id())))
        .await
        .expect("a -> b");
    let first = a.connection(&b.node_id()).expect("cached");
    // b dials a too: a now uses b's connection.
    bounded("connect", b.connect(addr(&a), None))
        .await
        .expect("b -> a");
    let second = a.connection(&b.node_id()).expect("cached");
    assert_ne!(first.stable_id(), second.stable_id());
    assert!(
        first.close_reason().is_none(),
        "two connections may stay open"
    );
    // A third connection makes a close the oldest.
    bounded("connect", b.connect(addr(&a), None))
        .await
        .expect("b -> a again");
    let reason = bounded("closed", first.closed()).await;
    assert!(
        matches!(reason, quinn::ConnectionError::LocallyClosed),
        "{reason:?}"
    );
    let third = a.connection(&b.node_id()).expect("cached");
    assert_ne!(third.stable_id(), second.stable_id());
    assert!(second.close_reason().is_none());
    a.send(&b.node_id(), 3, b"over the newest")
        .await
        .expect("send");
    assert_eq!(recv(&b).await.from, a.node_id());
}

/// Binds `addr` (on `runtime`, if given), retrying while the previous
/// socket on it is released.
async fn rebind(
    runtime: Option<&tokio::runtime::Runtime>,
    addr: SocketAddr,
    identity: &NodeIdentity,
    root: &SecretKey,
) -> Endpoint {
    bounded("rebind", async {
        loop {
            let bound = {
                // Never held across an await: tasks of this runtime would
                // otherwise spawn onto the other one.
                let _context = runtime.map(|r| r.enter());
                Endpoint::bind(
                    addr,
                    identity.clone(),
                    Admission::new(root.public()),
                    Config::default(),
                )
            };
            match bound {
                Ok(e) => return e,
                Err(TransportError::Bind(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("bind: {e}"),
            }
        }
    })
    .await
}

/// A runtime of its own for a node: shutting it down kills the node without
/// a word to its peers, like a crash.
fn crashable_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Kills a node running on `runtime`: its tasks stop without closing
/// anything (no CONNECTION_CLOSE reaches its peers), then its socket is
/// released.
async fn crash(runtime: tokio::runtime::Runtime, endpoint: Endpoint) {
    // Wait until the runtime's worker has stopped: dropping the endpoint
    // while its driver still runs would send a close to the peers.
    bounded(
        "runtime shutdown",
        tokio::task::spawn_blocking(move || runtime.shutdown_timeout(LIMIT)),
    )
    .await
    .expect("shutdown");
    drop(endpoint);
}

#[tokio::test]
async fn restarted_node_is_reachable_at_once() {
    let root = SecretKey::generate();
    let a = node(&root);
    let b_identity = identity(&root);
    let b_id = b_identity.node_id();
    let runtime = crashable_runtime();
    let b = rebind(
        Some(&runtime),
        "127.0.0.1:0".parse().expect("addr"),
        &b_identity,
        &root,
    )
    .await;
    let b_addr = addr(&b);
    bounded("connect", a.connect(b_addr, Some(b_id)))
        .await
        .expect("a -> b");
    a.send(&b_id, 0, b"before").await.expect("send");
    assert_eq!(recv(&b).await.payload, &b"before"[..]);
    let stale = a.connection(&b_id).expect("cached");
    crash(runtime, b).await;

    // b restarts with the same key on the same address. a's cached
    // connection is stale; a's next packet on it draws a stateless reset from
    // the new b, which a accepts because the reset key (and the connection
    // id key) derive from b's node key, so a redials at once instead of
    // waiting out the 30 s idle timeout.
    let b = rebind(None, b_addr, &b_identity, &root).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut attempts = 0;
    loop {
        attempts += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted node was not reachable within 5 s ({attempts} attempts)"
        );
        if bounded("connect", a.connect(b_addr, Some(b_id)))
            .await
            .is_ok()
        {
            let _ = a.send(&b_id, 1, b"after").await;
        }
        match tokio::time::timeout(Duration::from_millis(100), b.recv()).await {
            Ok(Some(m)) => {
                assert_eq!((m.from, &m.payload[..]), (a.node_id(), &b"after"[..]));
                break;
            }
            Ok(None) => panic!("endpoint closed"),
            Err(_) => {}
        }
    }
    let reason = bounded("stale closed", stale.closed()).await;
    assert!(
        matches!(reason, quinn::ConnectionError::Reset),
        "{reason:?}"
    );
    assert_eq!(a.metrics().connections_opened(), 2);
    drop(b);

    // When the restarted node dials first, a reaches it through the new
    // connection (the newest is the one used; the stale one is also reset as
    // soon as a retransmits on it: see the test of the cache for the former
    // alone).
    let runtime = crashable_runtime();
    let b = rebind(Some(&runtime), b_addr, &b_identity, &root).await;
    bounded("connect", b.connect(addr(&a), Some(a.node_id())))
        .await
        .expect("b -> a");
    eventually("a registers b", || a.is_connected(&b_id)).await;
    let stale = a.connection(&b_id).expect("cached");
    crash(runtime, b).await;
    let b = rebind(None, b_addr, &b_identity, &root).await;
    bounded("connect", b.connect(addr(&a), Some(a.node_id())))
        .await
        .expect("restarted b -> a");
    eventually("a uses the new connection", || {
        a.connection(&b_id)
            .is_some_and(|c| c.stable_id() != stale.stable_id())
    })
    .await;
    a.send(&b_id, 2, b"first try").await.expect("send");
    assert_eq!(recv(&b).await.payload, &b"first try"[..]);
}

#[tokio::test]
async fn concurrent_connects_share_one_dial() {
    let root = SecretKey::generate();
    let a = node(&root);
    let b = node(&root);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (a, b_addr, b_id) = (a.clone(), addr(&b), b.node_id());
        tasks.spawn(async move { a.connect(b_addr, Some(b_id)).await });
    }
    let results = bounded("connects", tasks.join_all()).await;
    for result in results {
        assert_eq!(result.expect("connect"), b.node_id());
    }
    assert_eq!(a.metrics().connections_opened(), 1);
    eventually("b accepted", || b.metrics().connections_accepted() == 1).await;
    // A failed shared dial fails every caller, and the next call dials anew.
    let c = node(&root);
    let someone_else = SecretKey::generate().public();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let (a, c_addr) = (a.clone(), addr(&c));
        tasks.spawn(async move { a.connect(c_addr, Some(someone_else)).await });
    }
    for result in bounded("connects", tasks.join_all()).await {
        assert!(result.is_err());
    }
    assert_eq!(a.metrics().refused(RefusalReason::UnexpectedNode), 1);
    assert!(
        bounded("connect", a.connect(addr(&c), Some(someone_else)))
            .await
            .is_err()
    );
    assert_eq!(a.metrics().refused(RefusalReason::UnexpectedNode), 2);
}

#[tokio::test]
async fn request_streams_carry_bytes_both_ways_in_both_directions() {
    let root = SecretKey::generate();
    let a = node(&root);
    let b = node(&root);
    let b_id = bounded("connect", a.connect(addr(&b), None))
        .await
        .expect("connect");
    let mut a_streams = a.accept_streams(9, 8);
    // An echo service on b: answers each stream with its bytes reversed,
    // after reading all of them (more than one flow-control window).
    b.serve_streams(
        9,
        std::sync::Arc::new(|mut s: crate::IncomingStream| {
            Box::pin(async move {
                let body = s.recv.read_to_end(64 << 20).await.expect("read");
                let reply: Vec<u8> = body.iter().rev().copied().collect();
                s.send.write_all(&reply).await.expect("write");
                let _ = s.send.finish();
            })
        }),
    );
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        let (mut send, mut recv) = bounded("open", a.open_stream(&b_id, 9))
            .await
            .expect("open stream");
        let writer = {
            let body = body.clone();
            tokio::spawn(async move {
                send.write_all(&body).await.expect("write");
                let _ = send.finish();
            })
        };
        let reply = bounded("reply", recv.read_to_end(64 << 20))
            .await
            .expect("reply");
        writer.await.expect("writer");
        assert_eq!(reply.len(), body.len());
        assert!(reply.iter().eq(body.iter().rev()));
    }
    assert_eq!(a.metrics().streams_opened(), 3);
    eventually("accepted counted", || b.metrics().streams_accepted() == 3).await;
    // The other direction uses the same connection.
    let a_id = a.node_id();
    let (mut send, _recv) = bounded("open back", b.open_stream(&a_id, 9))
        .await
        .expect("open back");
    send.write_all(b"hi").await.expect("write");
    let _ = send.finish();
    let mut s = bounded("accept", a_streams.recv()).await.expect("stream");
    assert_eq!(s.from, b_id.clone());
    assert_eq!(s.channel, 9);
    assert_eq!(s.recv.read_to_end(16).await.expect("read"), b"hi");
}

#[tokio::test]
async fn request_streams_on_a_channel_nobody_serves_are_refused() {
    let root = SecretKey::generate();
    let a = node(&root);
    let b = node(&root);
    let b_id = bounded("connect", a.connect(addr(&b), None))
        .await
        .expect("connect");
    let (mut send, mut recv) = bounded("open", a.open_stream(&b_id, 42))
        .await
        .expect("open stream");
    let _ = send.write_all(b"hello").await;
    let _ = send.finish();
    let read = bounded("refusal", recv.read_to_end(16)).await;
    assert!(read.is_err(), "a refused stream must not answer: {read:?}");
    eventually("refusal counted", || b.metrics().streams_refused() == 1).await;
    // Not connected: a clear error, nothing opened.
    let stranger = SecretKey::generate().public();
    assert!(matches!(
        a.open_stream(&stranger, 42).await,
        Err(TransportError::NotConnected(_))
    ));
}

#[tokio::test]
async fn a_sibling_endpoint_shares_identity_and_admission_and_closes_with_its_node() {
    let root = SecretKey::generate();
    let host = node(&root);
    let sibling = host
        .bind_sibling("127.0.0.1:0".parse().expect("addr"))
        .expect("sibling");
    assert_ne!(addr(&sibling), addr(&host));
    assert_eq!(sibling.node_id(), host.node_id());
    let peer = node(&root);
    let outcast = node(&root);

    // A peer dials the sibling and is served there, under the host's id.
    sibling.serve_streams(
        7,
        std::sync::Arc::new(|mut stream: crate::IncomingStream| {
            Box::pin(async move {
                let _ = stream.send.write_all(b"from the sibling").await;
                let _ = stream.send.finish();
            })
        }),
    );
    bounded(
        "connect",
        peer.connect(addr(&sibling), Some(host.node_id())),
    )
    .await
    .expect("connect to the sibling");
    let (mut send, mut recv) = bounded("open", peer.open_stream(&host.node_id(), 7))
        .await
        .expect("open");
    let _ = send.finish();
    let reply = bounded("reply", recv.read_to_end(64)).await.expect("reply");
    assert_eq!(reply, b"from the sibling");

    // Revoking on the node closes the sibling's connection too, and the
    // sibling refuses the revoked node from then on.
    let revocation = revoke_by(&root, &peer.node_id(), "compromised");
    assert!(host.revoke(revocation));
    assert!(!sibling.is_connected(&peer.node_id()));
    eventually("peer drops the closed connection", || {
        !peer.is_connected(&host.node_id())
    })
    .await;
    assert!(
        bounded("connect", peer.connect(addr(&sibling), None))
            .await
            .is_err()
    );

    // Closing a peer on the node (declared dead) closes it on the sibling.
    bounded(
        "connect",
        outcast.connect(addr(&sibling), Some(host.node_id())),
    )
    .await
    .expect("connect");
    eventually("sibling caches the connection", || {
        sibling.is_connected(&outcast.node_id())
    })
    .await;
    assert_eq!(host.close_peer(&outcast.node_id()), 1);
    assert!(!sibling.is_connected(&outcast.node_id()));

    // Closing the node's endpoint closes the sibling.
    let late = node(&root);
    host.close();
    assert!(
        bounded("connect", late.connect(addr(&sibling), None))
            .await
            .is_err()
    );
}
