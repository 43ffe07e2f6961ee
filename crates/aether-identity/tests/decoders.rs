//! Property tests of every decoder that reads bytes from the network:
//! garbage is an error, never a panic; random mutations of valid encodings
//! never verify; whatever decodes re-encodes to the same bytes.

use std::sync::OnceLock;

use aether_identity::{
    Invite, InviteCertificate, InviteConstraints, InviteToken, Labels, LatticeId, NodeCertificate,
    Region, Revocation, SecretKey,
};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

struct Fixture {
    root: SecretKey,
    token: InviteToken,
    cert: Vec<u8>,
    revocation: Vec<u8>,
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
        Fixture {
            root,
            token,
            cert,
            revocation,
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = NodeCertificate::from_bytes(&bytes);
        let _ = InviteCertificate::from_bytes(&bytes);
        let _ = InviteToken::from_bytes(&bytes);
        let _ = Revocation::from_bytes(&bytes);
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
    fn mutated_tokens_never_yield_a_different_valid_invite(edits in edits()) {
        let f = fixture();
        let original = f.token.to_bytes();
        let bytes = mutate(original.clone(), &edits);
        prop_assume!(bytes != original);
        if let Ok(token) = InviteToken::from_bytes(&bytes) {
            prop_assert_eq!(token.to_bytes(), bytes);
            prop_assert!(token.certificate().verify(&f.root.public()).is_err());
        }
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
    let cert = NodeCertificate::from_bytes(&f.cert).expect("decode");
    assert!(cert.verify(&f.root.public(), NOW).is_ok());
    assert!(
        Revocation::from_bytes(&f.revocation)
            .expect("decode")
            .verify(&f.root.public())
            .is_ok()
    );
}
