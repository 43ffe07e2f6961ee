//! Property tests of every decoder that reads bytes from the network:
//! garbage is an error, never a panic; random mutations of valid encodings
//! never verify; whatever decodes re-encodes to the same bytes.

use std::sync::OnceLock;

use aether_identity::{
    AdmissionLedger, AdmittedNode, Invite, InviteCertificate, InviteConstraints, InviteToken,
    Labels, LatticeId, NodeCertificate, Region, Revocation, RevocationSet, SecretKey,
};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    root: SecretKey,
    token: InviteToken,
    cert: Vec<u8>,
    revocation: Vec<u8>,
    /// Invites random ledgers are built from: two single-use, one multi-use.
    ledger_tokens: Vec<InviteToken>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = SecretKey::from_bytes(&[3; 32]);
        let mut labels = Labels::new();
        labels.insert("tier", "gold").expect("label");
        labels.insert("zone", "b").expect("label");
        let constraints = InviteConstraints {
            region: Some(Region::new("eu-west").expect("region")),
            labels,
        };
        let lattice = LatticeId::of_root(&root.public());
        let token =
            Invite::issue(&root, lattice, constraints, NOW + 3600, true, NOW).expect("issue");
        let node = SecretKey::from_bytes(&[4; 32]);
        let mut own = Labels::new();
        own.insert("disk", "ssd").expect("label");
        let cert = NodeCertificate::issue(&token, &node, None, own, NOW)
            .expect("certify")
            .to_bytes();
        let revocation = Revocation::issue(&root, &node.public(), "test", NOW)
            .expect("revoke")
            .to_bytes();
        let ledger_tokens = [true, true, false]
            .into_iter()
            .map(|single_use| {
                Invite::issue(
                    &root,
                    lattice,
                    InviteConstraints::default(),
                    NOW + 3600,
                    single_use,
                    NOW,
                )
                .expect("issue")
            })
            .collect();
        Fixture {
            root,
            token,
            cert,
            revocation,
            ledger_tokens,
        }
    })
}

/// Applies up to a few random edits: overwrite, insert, delete, truncate.
fn mutate(mut bytes: Vec<u8>, edits: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, at, value) in edits {
        let at = if bytes.is_empty() {
            0
        } else {
            at % bytes.len()
        };
        match kind % 4 {
            0 if !bytes.is_empty() => bytes[at] ^= value.max(1),
            1 => bytes.insert(at, value),
            2 if !bytes.is_empty() => {
                bytes.remove(at);
            }
            _ => bytes.truncate(at),
        }
    }
    bytes
}

fn edits() -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4)
}

/// A verified node for one of the fixture's ledger invites.
fn admitted(token: usize, node: u8, issued: u64) -> AdmittedNode {
    let f = fixture();
    let at = NOW + issued;
    NodeCertificate::issue(
        &f.ledger_tokens[token % f.ledger_tokens.len()],
        &SecretKey::from_bytes(&[node; 32]),
        None,
        Labels::new(),
        at,
    )
    .expect("certify")
    .verify(&f.root.public(), at)
    .expect("verify")
}

/// A ledger built as two members would: each admits some claims, then one
/// merges the other's ledger.
fn ledger(claims: &[(usize, u8, u64, bool)]) -> AdmissionLedger {
    let (mut first, mut second) = (AdmissionLedger::new(), AdmissionLedger::new());
    for &(token, node, issued, on_first) in claims {
        let target = if on_first { &mut first } else { &mut second };
        let _ = target.admit(&admitted(token, node, issued), NOW + issued);
    }
    first.merge(&second);
    first
}

fn claims() -> impl Strategy<Value = Vec<(usize, u8, u64, bool)>> {
    prop::collection::vec((0usize..3, 0u8..24, 0u64..4, any::<bool>()), 0..12)
}

/// A verified revocation set of the nodes with these seeds.
fn revocation_set(nodes: &[(u8, u64)]) -> RevocationSet {
    let f = fixture();
    let mut set = RevocationSet::new();
    for &(node, at) in nodes {
        let node = SecretKey::from_bytes(&[node; 32]).public();
        let reason = format!("reason {at}");
        let r = Revocation::issue(&f.root, &node, &reason, NOW + at).expect("revoke");
        set.insert(r.verify(&f.root.public()).expect("valid"));
    }
    set
}

fn revoked_nodes() -> impl Strategy<Value = Vec<(u8, u64)>> {
    prop::collection::vec((0u8..32, 0u64..100), 0..6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = NodeCertificate::from_bytes(&bytes);
        let _ = InviteCertificate::from_bytes(&bytes);
        let _ = InviteToken::from_bytes(&bytes);
        let _ = Revocation::from_bytes(&bytes);
        let _ = AdmissionLedger::from_bytes(&bytes);
        let _ = RevocationSet::from_bytes(&bytes, &fixture().root.public());
    }

    #[test]
    fn garbage_after_a_set_tag_is_refused(
        tag in prop::sample::select(vec![0xD1u8, 0xC2]),
        body in prop::collection::vec(any::<u8>(), 0..600),
    ) {
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&body);
        // Random bytes essentially never form a canonical ledger or a set of
        // root-signed revocations (an empty one aside).
        let empty = body == [0, 0, 0, 0];
        prop_assert_eq!(AdmissionLedger::from_bytes(&bytes).is_ok(), tag == 0xD1 && empty);
        prop_assert_eq!(
            RevocationSet::from_bytes(&bytes, &fixture().root.public()).is_ok(),
            tag == 0xC2 && empty
        );
    }

    #[test]
    fn ledgers_round_trip(claims in claims()) {
        let ledger = ledger(&claims);
        let bytes = ledger.to_bytes().expect("encode");
        let back = AdmissionLedger::from_bytes(&bytes).expect("decode");
        prop_assert_eq!(&back, &ledger);
        prop_assert_eq!(back.to_bytes().expect("encode"), bytes);
    }

    #[test]
    fn truncated_or_extended_ledgers_are_refused(
        claims in claims(),
        cut in any::<usize>(),
        extra in any::<u8>(),
    ) {
        let bytes = ledger(&claims).to_bytes().expect("encode");
        prop_assert!(AdmissionLedger::from_bytes(&bytes[..cut % bytes.len()]).is_err());
        let mut longer = bytes.clone();
        longer.push(extra);
        prop_assert!(AdmissionLedger::from_bytes(&longer).is_err());
    }

    #[test]
    fn mutated_ledgers_decode_canonically_or_not_at_all(claims in claims(), edits in edits()) {
        let bytes = mutate(ledger(&claims).to_bytes().expect("encode"), &edits);
        if let Ok(ledger) = AdmissionLedger::from_bytes(&bytes) {
            prop_assert_eq!(ledger.to_bytes().expect("encode"), bytes);
        }
    }

    #[test]
    fn revocation_sets_round_trip(nodes in revoked_nodes()) {
        let set = revocation_set(&nodes);
        let bytes = set.to_bytes().expect("encode");
        let back = RevocationSet::from_bytes(&bytes, &fixture().root.public()).expect("decode");
        prop_assert_eq!(&back, &set);
        prop_assert_eq!(back.to_bytes().expect("encode"), bytes);
    }

    #[test]
    fn truncated_or_extended_revocation_sets_are_refused(
        nodes in revoked_nodes(),
        cut in any::<usize>(),
        extra in any::<u8>(),
    ) {
        let root = fixture().root.public();
        let bytes = revocation_set(&nodes).to_bytes().expect("encode");
        prop_assert!(RevocationSet::from_bytes(&bytes[..cut % bytes.len()], &root).is_err());
        let mut longer = bytes.clone();
        longer.push(extra);
        prop_assert!(RevocationSet::from_bytes(&longer, &root).is_err());
    }

    #[test]
    fn mutated_revocation_sets_hold_only_genuine_revocations(
        nodes in revoked_nodes(),
        edits in edits(),
    ) {
        let f = fixture();
        let set = revocation_set(&nodes);
        let bytes = mutate(set.to_bytes().expect("encode"), &edits);
        if let Ok(decoded) = RevocationSet::from_bytes(&bytes, &f.root.public()) {
            prop_assert_eq!(decoded.to_bytes().expect("encode"), bytes);
            // Edits can drop whole entries (count and length changed
            // together) but never make up one.
            for r in decoded.iter() {
                prop_assert_eq!(set.get(r.node()), Some(r));
            }
        }
    }

    #[test]
    fn garbage_text_never_panics(text in ".{0,300}") {
        let _ = InviteToken::from_text(&text);
        let _ = InviteToken::from_text(&format!("aether-invite-v1:{text}"));
        let _ = text.parse::<LatticeId>();
        let _ = aether_identity::parse_duration_secs(&text);
    }

    #[test]
    fn garbage_with_a_valid_prefix_never_panics(
        keep in 0usize..5000,
        tail in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let f = fixture();
        let mut bytes = f.cert[..keep.min(f.cert.len())].to_vec();
        bytes.extend_from_slice(&tail);
        if let Ok(cert) = NodeCertificate::from_bytes(&bytes) {
            prop_assert_eq!(cert.to_bytes(), bytes.clone());
            if bytes != f.cert {
                prop_assert!(cert.verify(&f.root.public(), NOW).is_err());
            }
        }
    }

    #[test]
    fn mutated_node_certificates_never_verify(edits in edits()) {
        let f = fixture();
        let bytes = mutate(f.cert.clone(), &edits);
        prop_assume!(bytes != f.cert);
        if let Ok(cert) = NodeCertificate::from_bytes(&bytes) {
            prop_assert_eq!(cert.to_bytes(), bytes);
            prop_assert!(cert.verify(&f.root.public(), NOW).is_err());
        }
    }

    #[test]
    fn mutated_tokens_are_refused(edits in edits()) {
        // Any change breaks the root's signature, the root-to-lattice hash,
        // the secret-to-invite-key match or the framing: a token checks
        // itself, so no mutation decodes.
        let f = fixture();
        let original = f.token.to_bytes();
        let bytes = mutate(original.clone(), &edits);
        prop_assume!(bytes != original);
        prop_assert!(InviteToken::from_bytes(&bytes).is_err());
    }

    #[test]
    fn mutated_revocations_never_verify(edits in edits()) {
        let f = fixture();
        let bytes = mutate(f.revocation.clone(), &edits);
        prop_assume!(bytes != f.revocation);
        if let Ok(r) = Revocation::from_bytes(&bytes) {
            prop_assert_eq!(r.to_bytes(), bytes);
            prop_assert!(r.verify(&f.root.public()).is_err());
        }
    }
}

#[test]
fn fixture_is_valid() {
    let f = fixture();
    assert_eq!(
        InviteToken::from_bytes(&f.token.to_bytes())
            .expect("decode")
            .root(),
        &f.root.public()
    );
    let cert = NodeCertificate::from_bytes(&f.cert).expect("decode");
    assert!(cert.verify(&f.root.public(), NOW).is_ok());
    assert!(
        Revocation::from_bytes(&f.revocation)
            .expect("decode")
            .verify(&f.root.public())
            .is_ok()
    );
}
