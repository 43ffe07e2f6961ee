//! The admission chain end to end: invites, node certificates, the
//! single-use ledger and revocations.

use aether_identity::{
    AdmissionError, AdmissionLedger, ClaimStatus, INVITE_TOKEN_PREFIX, Invite, InviteCertificate,
    InviteConstraints, InviteToken, Labels, LatticeId, MAX_REVOCATION_REASON_LEN,
    MAX_SET_ENCODED_LEN, NodeCertificate, Region, Revocation, RevocationSet, SecretKey,
};
use rand::SeedableRng as _;
use rand::rngs::StdRng;

const NOW: u64 = 1_800_000_000;
const HOUR: u64 = 3600;

struct Lattice {
    root: SecretKey,
    id: LatticeId,
}

impl Lattice {
    fn new(seed: u8) -> Self {
        let root = SecretKey::from_bytes(&[seed; 32]);
        let id = LatticeId::of_root(&root.public());
        Self { root, id }
    }

    fn invite(&self, constraints: InviteConstraints, single_use: bool) -> InviteToken {
        Invite::issue(
            &self.root,
            self.id,
            constraints,
            NOW + HOUR,
            single_use,
            NOW,
        )
        .expect("issue invite")
    }
}

fn eu_gold() -> InviteConstraints {
    let mut labels = Labels::new();
    labels.insert_pair("tier=gold").expect("label");
    InviteConstraints {
        region: Some(Region::new("eu-west").expect("region")),
        labels,
    }
}

#[test]
fn valid_chain_admits() {
    let lattice = Lattice::new(1);
    let token = lattice.invite(eu_gold(), false);
    // The token travels as text.
    let text = token.to_text();
    assert!(text.starts_with(INVITE_TOKEN_PREFIX));
    let received: InviteToken = text.parse().expect("parse token");
    assert_eq!(received.id(), token.id());
    assert_eq!(received.to_bytes(), token.to_bytes());
    assert_eq!(received.lattice(), lattice.id);
    // The new machine learns the root to trust from the token alone.
    assert_eq!(received.root(), &lattice.root.public());
    assert!(received.certificate().verify(received.root()).is_ok());
    assert!(!format!("{received:?}").contains(&text[INVITE_TOKEN_PREFIX.len()..]));

    let node = SecretKey::generate();
    let mut labels = Labels::new();
    labels.insert("disk", "ssd").expect("label");
    let cert = NodeCertificate::issue(&received, &node, None, labels, NOW + 60).expect("certify");
    // The certificate travels as bytes.
    let bytes = cert.to_bytes();
    let cert = NodeCertificate::from_bytes(&bytes).expect("decode");
    assert_eq!(cert.to_bytes(), bytes);

    let admitted = cert
        .verify(&lattice.root.public(), NOW + 120)
        .expect("admitted");
    assert_eq!(admitted.node(), &node.public());
    assert_eq!(admitted.lattice(), lattice.id);
    assert_eq!(admitted.invite(), token.id());
    assert_eq!(admitted.region().map(Region::as_str), Some("eu-west"));
    assert_eq!(admitted.labels().get("tier"), Some("gold"));
    assert_eq!(admitted.labels().get("disk"), Some("ssd"));
    assert_eq!(admitted.issued_at(), NOW + 60);
    assert!(!admitted.single_use());

    let mut ledger = AdmissionLedger::new();
    let outcome = ledger.admit(&admitted, NOW + 120).expect("ledger admits");
    assert!(!outcome.already_known && outcome.displaced.is_none());
    assert!(ledger.is_admitted(&admitted));

    // A node certificate has no expiry of its own.
    assert!(
        cert.verify(&lattice.root.public(), NOW + 1000 * HOUR)
            .is_ok()
    );
    assert!(
        ledger
            .admit(&admitted, NOW + 1000 * HOUR)
            .expect("still admitted")
            .already_known
    );

    // A multi-use invite admits more nodes.
    let second = NodeCertificate::issue(&token, &SecretKey::generate(), None, Labels::new(), NOW)
        .expect("certify")
        .verify(&lattice.root.public(), NOW)
        .expect("admitted");
    ledger.admit(&second, NOW + 1).expect("multi-use");
}

#[test]
fn expired_invite_is_refused() {
    let lattice = Lattice::new(1);
    let token = lattice.invite(InviteConstraints::default(), false);
    let node = SecretKey::generate();
    let expires = NOW + HOUR;
    // The newcomer's own node refuses to certify itself with it.
    assert!(matches!(
        NodeCertificate::issue(&token, &node, None, Labels::new(), expires),
        Err(AdmissionError::InviteExpired { expires_at, used_at, .. })
            if expires_at == expires && used_at == expires
    ));
    // A certificate backdated by the token holder passes the offline check
    // but the ledger refuses a first admission after expiry.
    let backdated = NodeCertificate::issue(&token, &node, None, Labels::new(), NOW)
        .expect("certify")
        .verify(&lattice.root.public(), expires + 10)
        .expect("chain is valid");
    let mut ledger = AdmissionLedger::new();
    let err = ledger.admit(&backdated, expires + 10).expect_err("expired");
    assert!(
        matches!(err, AdmissionError::InviteExpired { used_at, .. } if used_at == expires + 10)
    );
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(
        ledger.status(backdated.invite(), backdated.node()),
        ClaimStatus::Unknown
    );
    // Issuing an invite that is already expired is refused too.
    assert!(matches!(
        Invite::issue(
            &lattice.root,
            lattice.id,
            InviteConstraints::default(),
            NOW,
            false,
            NOW
        ),
        Err(AdmissionError::Invalid {
            field: "expires_at",
            ..
        })
    ));
}

#[test]
fn invite_from_another_lattice_is_refused() {
    let ours = Lattice::new(1);
    let theirs = Lattice::new(2);
    let token = theirs.invite(InviteConstraints::default(), false);
    let cert = NodeCertificate::issue(&token, &SecretKey::generate(), None, Labels::new(), NOW)
        .expect("certify");
    let err = cert.verify(&ours.root.public(), NOW).expect_err("foreign");
    assert_eq!(
        err,
        AdmissionError::WrongLattice {
            expected: ours.id,
            found: theirs.id
        }
    );
    assert!(err.to_string().contains("another lattice"), "{err}");
    // A root cannot issue for a lattice that is not its own.
    assert!(matches!(
        Invite::issue(
            &theirs.root,
            ours.id,
            InviteConstraints::default(),
            NOW + HOUR,
            false,
            NOW
        ),
        Err(AdmissionError::WrongLattice { .. })
    ));
    // A foreign root's invite relabelled with our lattice id: forged.
    let mut bytes = token.certificate().to_bytes();
    bytes[1..33].copy_from_slice(ours.id.as_bytes());
    let relabelled = InviteCertificate::from_bytes(&bytes).expect("decodes");
    assert_eq!(
        relabelled.verify(&ours.root.public()),
        Err(AdmissionError::ForgedSignature {
            what: "invite certificate (root key signature)"
        })
    );
}

#[test]
fn token_root_must_name_and_sign_its_invite() {
    let ours = Lattice::new(1);
    let theirs = Lattice::new(2);
    let token = ours.invite(eu_gold(), true);
    assert_eq!(token.root(), &ours.root.public());
    let bytes = token.to_bytes();
    // Layout: tag (0), root key (1..33), invite certificate (its tag at 33,
    // its lattice at 34..66), ..., invite secret (last 32 bytes).
    assert_eq!(&bytes[1..33], ours.root.public().as_bytes());
    assert_eq!(&bytes[34..66], ours.id.as_bytes());

    // Another root in place of ours does not name the invite's lattice.
    let mut swapped = bytes.clone();
    swapped[1..33].copy_from_slice(theirs.root.public().as_bytes());
    let err = InviteToken::from_bytes(&swapped).expect_err("swapped root");
    assert!(matches!(err, AdmissionError::Malformed { .. }), "{err:?}");
    assert!(err.to_string().contains("names lattice"), "{err}");

    // Root and lattice both relabelled to another lattice: that root never
    // signed the invite.
    swapped[34..66].copy_from_slice(theirs.id.as_bytes());
    assert_eq!(
        InviteToken::from_bytes(&swapped).expect_err("forged"),
        AdmissionError::ForgedSignature {
            what: "invite token (its root key did not sign its invite)"
        }
    );

    // A foreign invite presented with our root: the lattice does not match.
    let foreign = theirs
        .invite(InviteConstraints::default(), false)
        .to_bytes();
    let mut mixed = foreign.clone();
    mixed[1..33].copy_from_slice(ours.root.public().as_bytes());
    assert!(matches!(
        InviteToken::from_bytes(&mixed),
        Err(AdmissionError::Malformed { .. })
    ));

    // A token of the first format (no root key) is refused with a hint.
    let mut old = vec![0xA2];
    old.extend_from_slice(&bytes[33..]);
    let err = InviteToken::from_bytes(&old).expect_err("old format");
    assert!(err.to_string().contains("new invite"), "{err}");
}

#[test]
fn every_single_byte_change_of_a_node_certificate_is_refused() {
    let lattice = Lattice::new(1);
    let token = lattice.invite(eu_gold(), true);
    let cert = NodeCertificate::issue(&token, &SecretKey::generate(), None, Labels::new(), NOW)
        .expect("certify");
    let root = lattice.root.public();
    let bytes = cert.to_bytes();
    assert!(cert.verify(&root, NOW).is_ok());
    let mut decoded = 0;
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut tampered = bytes.clone();
            tampered[i] ^= mask;
            if let Ok(cert) = NodeCertificate::from_bytes(&tampered) {
                decoded += 1;
                assert_eq!(cert.to_bytes(), tampered, "encoding is canonical");
                let result = cert.verify(&root, NOW);
                assert!(result.is_err(), "byte {i} ^ {mask:#x} was accepted");
            }
        }
    }
    // Most changes decode fine and are caught by a signature.
    assert!(decoded > bytes.len(), "{decoded} of {}", bytes.len() * 3);
    // Trailing and missing bytes are malformed.
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        NodeCertificate::from_bytes(&longer),
        Err(AdmissionError::Malformed { .. })
    ));
    for len in 0..bytes.len() {
        assert!(matches!(
            NodeCertificate::from_bytes(&bytes[..len]),
            Err(AdmissionError::Malformed { .. })
        ));
    }
}

#[test]
fn region_constraint_is_enforced() {
    let lattice = Lattice::new(1);
    let token = lattice.invite(eu_gold(), false);
    let node = SecretKey::generate();
    let err = NodeCertificate::issue(
        &token,
        &node,
        Some(Region::new("us-east").expect("region")),
        Labels::new(),
        NOW,
    )
    .expect_err("wrong region");
    assert!(matches!(err, AdmissionError::ConstraintViolated(_)));
    assert!(err.to_string().contains("eu-west"), "{err}");
    let mut labels = Labels::new();
    labels.insert("tier", "bronze").expect("label");
    assert!(matches!(
        NodeCertificate::issue(&token, &node, None, labels, NOW),
        Err(AdmissionError::ConstraintViolated(_))
    ));
    // The same region, spelled out, is fine.
    assert!(
        NodeCertificate::issue(
            &token,
            &node,
            Some(Region::new("eu-west").expect("region")),
            Labels::new(),
            NOW
        )
        .is_ok()
    );
}

#[test]
fn revoked_node_is_refused() {
    let lattice = Lattice::new(1);
    let root = lattice.root.public();
    let token = lattice.invite(InviteConstraints::default(), false);
    let node = SecretKey::generate();
    let cert = NodeCertificate::issue(&token, &node, None, Labels::new(), NOW).expect("certify");
    let admitted = cert.verify(&root, NOW).expect("admitted");

    let revocation =
        Revocation::issue(&lattice.root, admitted.node(), "disk stolen", NOW + 10).expect("revoke");
    // It travels as bytes.
    let bytes = revocation.to_bytes();
    let received = Revocation::from_bytes(&bytes).expect("decode");
    assert_eq!(received, revocation);
    let mut set = RevocationSet::new();
    assert!(set.check(admitted.node()).is_ok());
    assert!(set.insert_verified(&root, &received).expect("valid"));
    assert!(!set.insert_verified(&root, &received).expect("valid again"));
    assert!(set.is_revoked(&node.public()));
    let err = set.check(admitted.node()).expect_err("revoked");
    assert_eq!(
        err,
        AdmissionError::Revoked {
            node: Box::new(node.public()),
            reason: "disk stolen".to_string()
        }
    );
    assert!(err.to_string().contains("revoked"), "{err}");

    // Only the lattice's root can revoke.
    let other = Lattice::new(2);
    let foreign = Revocation::issue(&other.root, &node.public(), "", NOW).expect("revoke");
    assert!(matches!(
        foreign.verify(&root),
        Err(AdmissionError::WrongLattice { .. })
    ));
    for i in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        if let Ok(r) = Revocation::from_bytes(&tampered) {
            assert!(r.verify(&root).is_err(), "byte {i} accepted");
        }
    }
    assert!(matches!(
        Revocation::issue(&lattice.root, &node.public(), &"x".repeat(201), NOW),
        Err(AdmissionError::Invalid {
            field: "reason",
            ..
        })
    ));
    assert!(Revocation::issue(&lattice.root, &node.public(), "a\nb", NOW).is_err());

    // Sets converge whatever the order.
    let again = Revocation::issue(&lattice.root, &node.public(), "earlier", NOW).expect("revoke");
    let third = Revocation::issue(&lattice.root, &SecretKey::generate().public(), "x", NOW)
        .expect("revoke");
    let mut a = RevocationSet::new();
    let mut b = RevocationSet::new();
    for r in [&revocation, &again, &third] {
        a.insert(r.verify(&root).expect("valid"));
    }
    for r in [&third, &again, &revocation] {
        b.insert(r.verify(&root).expect("valid"));
    }
    assert_eq!(a, b);
    assert_eq!(
        a.get(&node.public()).map(Revocation::reason),
        Some("earlier")
    );
    let mut c = RevocationSet::new();
    assert_eq!(c.merge(&a).len(), 2);
    assert_eq!(c, a);
    assert!(c.merge(&b).is_empty());
}

/// Two machines race for one single-use invite through two members.
#[test]
fn single_use_race_converges_on_one_winner() {
    let lattice = Lattice::new(1);
    let root = lattice.root.public();
    let token = lattice.invite(InviteConstraints::default(), true);
    let (a, b) = (SecretKey::generate(), SecretKey::generate());
    let cert_a = NodeCertificate::issue(&token, &a, None, Labels::new(), NOW + 5).expect("a");
    let cert_b = NodeCertificate::issue(&token, &b, None, Labels::new(), NOW + 5).expect("b");
    let node_a = cert_a.verify(&root, NOW + 5).expect("a verifies");
    let node_b = cert_b.verify(&root, NOW + 5).expect("b verifies");

    let mut ledger_1 = AdmissionLedger::new();
    let mut ledger_2 = AdmissionLedger::new();
    ledger_1.admit(&node_a, NOW + 5).expect("member 1 admits a");
    ledger_2.admit(&node_b, NOW + 5).expect("member 2 admits b");
    let before_1 = ledger_1.clone();
    let report_1 = ledger_1.merge(&ledger_2);
    let report_2 = ledger_2.merge(&before_1);
    assert_eq!(ledger_1, ledger_2);

    // Same issued_at: the smaller node key wins.
    let (winner, loser) = if a.public() < b.public() {
        (&node_a, &node_b)
    } else {
        (&node_b, &node_a)
    };
    for ledger in [&ledger_1, &ledger_2] {
        assert_eq!(ledger.winner(token.id()), Some(*winner.node()));
        assert_eq!(
            ledger.status(token.id(), winner.node()),
            ClaimStatus::Admitted
        );
        assert_eq!(
            ledger.status(token.id(), loser.node()),
            ClaimStatus::Refused {
                winner: *winner.node()
            }
        );
        assert_eq!(
            ledger.refused().collect::<Vec<_>>(),
            vec![(token.id(), *loser.node())]
        );
        // Only the winner counts as an admitted node.
        assert_eq!(
            ledger.admitted_nodes().into_iter().collect::<Vec<_>>(),
            vec![*winner.node()]
        );
    }
    // Exactly one member had admitted the loser and is told to drop it.
    let displaced: Vec<_> = report_1
        .displaced
        .iter()
        .chain(&report_2.displaced)
        .collect();
    assert_eq!(displaced, vec![&(token.id(), *loser.node())]);
    // Either ledger now refuses the loser with a clear reason.
    let mut ledger = ledger_1.clone();
    let err = ledger.admit(loser, NOW + 6).expect_err("loser refused");
    assert_eq!(
        err,
        AdmissionError::InviteAlreadyUsed {
            invite: token.id(),
            winner: Box::new(*winner.node())
        }
    );
    assert!(ledger.admit(winner, NOW + 6).is_ok());

    // On one member: a second distinct node is refused.
    let c = SecretKey::generate();
    let node_c = NodeCertificate::issue(&token, &c, None, Labels::new(), NOW + 9)
        .expect("c")
        .verify(&root, NOW + 9)
        .expect("c verifies");
    assert!(matches!(
        ledger.admit(&node_c, NOW + 9),
        Err(AdmissionError::InviteAlreadyUsed { .. })
    ));
    // An earlier claim heard of later wins everywhere, displacing the old winner.
    let d = SecretKey::generate();
    let node_d = NodeCertificate::issue(&token, &d, None, Labels::new(), NOW + 1)
        .expect("d")
        .verify(&root, NOW + 9)
        .expect("d verifies");
    let outcome = ledger.admit(&node_d, NOW + 9).expect("earliest claim");
    assert_eq!(outcome.displaced, Some(*winner.node()));
}

/// Many claims spread over three members, merged in different orders.
#[test]
fn ledgers_converge_whatever_the_merge_order() {
    let lattice = Lattice::new(1);
    let root = lattice.root.public();
    let mut rng = StdRng::seed_from_u64(7);
    let tokens: Vec<InviteToken> = (0..3)
        .map(|i| {
            Invite::issue_with_rng(
                &mut rng,
                &lattice.root,
                lattice.id,
                InviteConstraints::default(),
                NOW + HOUR,
                i != 2,
                NOW,
            )
            .expect("issue")
        })
        .collect();
    let mut ledgers = vec![AdmissionLedger::new(); 3];
    for i in 0..30u8 {
        let token = &tokens[usize::from(i) % 3];
        let node = SecretKey::from_bytes(&[i + 100; 32]);
        let at = NOW + u64::from(i % 4);
        let admitted = NodeCertificate::issue(token, &node, None, Labels::new(), at)
            .expect("certify")
            .verify(&root, at)
            .expect("verify");
        let _ = ledgers[usize::from(i * 7 % 3)].admit(&admitted, at);
    }
    let mut forward = AdmissionLedger::new();
    for l in &ledgers {
        forward.merge(l);
    }
    let mut backward = ledgers[2].clone();
    backward.merge(&ledgers[1]);
    backward.merge(&ledgers[0]);
    backward.merge(&ledgers[2]);
    assert_eq!(forward, backward);
    for token in &tokens[..2] {
        assert!(forward.winner(token.id()).is_some());
    }
    assert_eq!(
        forward.winner(tokens[2].id()),
        None,
        "multi-use has no winner"
    );
    // Idempotent.
    let snapshot = forward.clone();
    assert!(forward.merge(&snapshot).displaced.is_empty());
    assert_eq!(forward, snapshot);
}

/// Ledgers and revocation sets travel between members as bytes.
#[test]
fn ledgers_and_revocation_sets_travel_as_bytes() {
    let lattice = Lattice::new(1);
    let root = lattice.root.public();
    let single = lattice.invite(InviteConstraints::default(), true);
    let multi = lattice.invite(InviteConstraints::default(), false);
    let mut ledger = AdmissionLedger::new();
    let empty = ledger.to_bytes().expect("encode");
    assert_eq!(AdmissionLedger::from_bytes(&empty).expect("decode"), ledger);
    for (i, token) in [&single, &single, &multi, &multi].into_iter().enumerate() {
        let at = NOW + i as u64;
        let admitted =
            NodeCertificate::issue(token, &SecretKey::generate(), None, Labels::new(), at)
                .expect("certify")
                .verify(&root, at)
                .expect("verify");
        let _ = ledger.admit(&admitted, at);
    }
    let bytes = ledger.to_bytes().expect("encode");
    let back = AdmissionLedger::from_bytes(&bytes).expect("decode");
    assert_eq!(back, ledger);
    assert_eq!(back.winner(single.id()), ledger.winner(single.id()));
    assert_eq!(back.refused().count(), 1);
    // A count that cannot fit in the input is refused before allocating.
    let err = AdmissionLedger::from_bytes(&[0xD1, 0xff, 0xff, 0xff, 0xff]).expect_err("bomb");
    assert!(err.to_string().contains("do not fit"), "{err}");
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(AdmissionLedger::from_bytes(&longer).is_err());
    assert!(
        AdmissionLedger::from_bytes(&vec![0; MAX_SET_ENCODED_LEN + 1])
            .expect_err("too long")
            .to_string()
            .contains("allowed")
    );

    // Revocation sets are verified as they are decoded.
    let mut set = RevocationSet::new();
    let empty = set.to_bytes().expect("encode");
    assert_eq!(
        RevocationSet::from_bytes(&empty, &root).expect("decode"),
        set
    );
    let mut revocations: Vec<Revocation> = (0..3)
        .map(|i| {
            Revocation::issue(
                &lattice.root,
                &SecretKey::generate().public(),
                "gone",
                NOW + i,
            )
            .expect("revoke")
        })
        .collect();
    for r in &revocations {
        set.insert(r.verify(&root).expect("valid"));
    }
    let bytes = set.to_bytes().expect("encode");
    assert_eq!(
        RevocationSet::from_bytes(&bytes, &root).expect("decode"),
        set
    );
    // Another lattice's root verifies none of them.
    assert!(matches!(
        RevocationSet::from_bytes(&bytes, &Lattice::new(2).root.public()),
        Err(AdmissionError::WrongLattice { .. })
    ));
    // Out of order or repeated nodes are not canonical.
    revocations.sort_by_key(|r| *r.node());
    let encode = |list: &[&Revocation]| {
        let mut out = vec![0xC2];
        out.extend_from_slice(&(list.len() as u32).to_be_bytes());
        for r in list {
            out.extend_from_slice(&r.to_bytes());
        }
        out
    };
    let [a, b, c] = [&revocations[0], &revocations[1], &revocations[2]];
    assert_eq!(encode(&[a, b, c]), bytes);
    for bad in [encode(&[b, a, c]), encode(&[a, a, c])] {
        assert!(matches!(
            RevocationSet::from_bytes(&bad, &root),
            Err(AdmissionError::Malformed { .. })
        ));
    }
    // A forged revocation spoils the whole set.
    let mut forged = bytes.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(matches!(
        RevocationSet::from_bytes(&forged, &root),
        Err(AdmissionError::ForgedSignature { .. })
    ));
}

#[test]
fn revocation_set_over_the_bound_is_not_encoded() {
    let lattice = Lattice::new(1);
    let reason = "r".repeat(MAX_REVOCATION_REASON_LEN);
    let mut set = RevocationSet::new();
    // Each revocation with the longest reason encodes to 338 bytes.
    for i in 0..(MAX_SET_ENCODED_LEN / 338 + 1) as u64 {
        let node = SecretKey::generate().public();
        let r = Revocation::issue(&lattice.root, &node, &reason, NOW + i).expect("revoke");
        set.insert(r.verify(&lattice.root.public()).expect("valid"));
    }
    assert!(matches!(
        set.to_bytes(),
        Err(AdmissionError::TooLarge {
            what: "revocation set",
            ..
        })
    ));
}

#[test]
fn garbage_and_truncated_tokens_are_errors() {
    let lattice = Lattice::new(1);
    let text = lattice.invite(eu_gold(), true).to_text();
    for len in 0..text.len() {
        assert!(
            InviteToken::from_text(&text[..len]).is_err(),
            "prefix {len}"
        );
    }
    let bytes = InviteToken::from_text(&text).expect("valid").to_bytes();
    for len in 0..bytes.len() {
        assert!(InviteToken::from_bytes(&bytes[..len]).is_err());
    }
    for garbage in [
        "",
        "aether-invite-v1:",
        "aether-invite-v1:====",
        "aether-invite-v1:!!!",
        "aether-invite-v2:AAAA",
        "hello",
        "aether-invite-v1:AAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        assert!(matches!(
            InviteToken::from_text(garbage),
            Err(AdmissionError::Malformed { .. })
        ));
    }
    let huge = format!("{INVITE_TOKEN_PREFIX}{}", "A".repeat(1 << 20));
    assert!(InviteToken::from_text(&huge).is_err());
    // A token whose secret does not match its certified invite key.
    let mut wrong_secret = bytes.clone();
    let n = wrong_secret.len();
    wrong_secret[n - 1] ^= 1;
    assert!(InviteToken::from_bytes(&wrong_secret).is_err());
    // Surrounding whitespace (a pasted token) is fine.
    assert!(InviteToken::from_text(&format!("  {text}\n")).is_ok());
}

#[test]
fn node_key_is_created_once_with_mode_0600() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = aether_identity::node_key_path(&dir.path().join("data"));
    let first = SecretKey::load_or_create(&path).expect("create");
    let again = SecretKey::load_or_create(&path).expect("load");
    assert_eq!(first.public(), again.public());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(SecretKey::load_or_create(&path).is_err());
    }
}
