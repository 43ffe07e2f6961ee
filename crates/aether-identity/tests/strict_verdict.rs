//! `PublicKey::verify` must give ed25519-dalek's `verify_strict` verdict on
//! every input, including the crafted ones where plain (cofactorless)
//! verification accepts and the strict rules refuse.

use aether_identity::{PublicKey, SecretKey, Signature};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Verifier as _, VerifyingKey};
use proptest::prelude::*;
use sha2::{Digest as _, Sha512};
use std::collections::BTreeSet;

/// Both verdicts for raw bytes; asserts they agree and returns it.
fn verdict(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    let sig = Signature::from_bytes(signature);
    let ours = PublicKey::from_bytes(key)
        .map(|k| k.verify(message, &sig))
        .unwrap_or(false);
    let strict = VerifyingKey::from_bytes(key)
        .map(|k| k.verify_strict(message, &sig).is_ok())
        .unwrap_or(false);
    assert_eq!(ours, strict, "key {key:02x?} signature {signature:02x?}");
    ours
}

/// Plain (non-strict) verification, to show a crafted case really is one
/// the strict rules alone refuse.
fn plain(key: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    VerifyingKey::from_bytes(key)
        .map(|k| k.verify(message, &Signature::from_bytes(signature)).is_ok())
        .unwrap_or(false)
}

fn challenge(r: &[u8; 32], key: &[u8; 32], message: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(key);
    h.update(message);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

fn signature(r: [u8; 32], s: Scalar) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r);
    out[32..].copy_from_slice(s.as_bytes());
    out
}

/// A point of order 8.
fn order_eight() -> EdwardsPoint {
    let bytes: [u8; 32] = hex("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a");
    let t = CompressedEdwardsY(bytes).decompress().expect("a point");
    assert!((t * Scalar::from(8u64)).compress() == EdwardsPoint::default().compress());
    assert!((t * Scalar::from(4u64)).compress() != EdwardsPoint::default().compress());
    t
}

fn hex(text: &str) -> [u8; 32] {
    hex::decode(text)
        .expect("hex")
        .try_into()
        .expect("32 bytes")
}

fn small_order_encodings() -> BTreeSet<[u8; 32]> {
    let t = order_eight();
    (0u64..8)
        .map(|k| (t * Scalar::from(k)).compress().to_bytes())
        .collect()
}

#[test]
fn honest_signatures_and_their_mutations() {
    for seed in 1..=4u8 {
        let key = SecretKey::from_bytes(&[seed; 32]);
        let public = *key.public().as_bytes();
        let message = format!("update {seed}").into_bytes();
        let sig = key.sign(&message).to_bytes();
        assert!(verdict(&public, &message, &sig));
        for i in 0..64 {
            let mut bad = sig;
            bad[i] ^= 1 << (i % 8);
            assert!(!verdict(&public, &message, &bad));
        }
        let mut other = message.clone();
        other[0] ^= 1;
        assert!(!verdict(&public, &other, &sig));
        // S + l: the same point equation, a non-canonical scalar.
        let s = Scalar::from_canonical_bytes(sig[32..].try_into().expect("32")).expect("canonical");
        let l_bytes = hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
        let mut wide = [0u16; 33];
        for i in 0..32 {
            wide[i] += s.as_bytes()[i] as u16 + l_bytes[i] as u16;
            wide[i + 1] += wide[i] >> 8;
            wide[i] &= 0xff;
        }
        if wide[32] == 0 {
            let mut bad = sig;
            for i in 0..32 {
                bad[32 + i] = wide[i] as u8;
            }
            assert!(!verdict(&public, &message, &bad));
        }
        // R with a small-order part added.
        let r = CompressedEdwardsY(sig[..32].try_into().expect("32"))
            .decompress()
            .expect("R");
        let mut bad = sig;
        bad[..32].copy_from_slice(&(r + order_eight()).compress().to_bytes());
        assert!(!verdict(&public, &message, &bad));
    }
}

#[test]
fn r_of_small_order_is_refused() {
    // A = [a]B, R = identity, S = k·a: [S]B - [k]A is the identity, so plain
    // verification accepts; the strict rules refuse R of small order.
    let a = Scalar::from(0x5eed_u64) * Scalar::from(0x1234_5678_9abc_u64);
    let public = EdwardsPoint::mul_base(&a).compress().to_bytes();
    let r = EdwardsPoint::default().compress().to_bytes();
    let message = b"identity R";
    let sig = signature(r, challenge(&r, &public, message) * a);
    assert!(plain(&public, message, &sig));
    assert!(!verdict(&public, message, &sig));
}

/// Signs messages with `key` (whose small-order part is `t`) and an `R`
/// among the small-order points, `S` from `s(k)`, wherever `-[k]T` is that
/// `R`: plain verification accepts each such signature, the strict rules
/// must refuse it. Returns how many were found (about one message in eight).
fn crafted_small_order_r(
    public: &[u8; 32],
    t: EdwardsPoint,
    s: impl Fn(Scalar) -> Scalar,
) -> usize {
    let mut found = 0;
    for i in 0..400u32 {
        let message = i.to_le_bytes();
        for r in small_order_encodings() {
            let k = challenge(&r, public, &message);
            if (-(t * k)).compress().to_bytes() == r {
                let sig = signature(r, s(k));
                assert!(plain(public, &message, &sig));
                assert!(!verdict(public, &message, &sig));
                found += 1;
            }
        }
    }
    found
}

#[test]
fn key_with_a_small_order_part_and_small_order_r() {
    // A = [a]B + T (not of small order itself), S = k·a: [S]B - [k]A = -[k]T.
    let t = order_eight();
    let a = Scalar::from(987_654_321_u64);
    let public = (EdwardsPoint::mul_base(&a) + t).compress().to_bytes();
    assert!(!VerifyingKey::from_bytes(&public).expect("key").is_weak());
    let found = crafted_small_order_r(&public, t, |k| k * a);
    assert!(found > 10, "crafted cases found: {found}");
}

#[test]
fn weak_key_is_refused() {
    // A of order 8, S = 0: [S]B - [k]A = -[k]A, a small-order R.
    let t = order_eight();
    let found = crafted_small_order_r(&t.compress().to_bytes(), t, |_| Scalar::ZERO);
    assert!(found > 10, "crafted cases found: {found}");
}

proptest! {
    #[test]
    fn arbitrary_bytes_get_the_same_verdict(
        key in proptest::array::uniform32(any::<u8>()),
        r in proptest::array::uniform32(any::<u8>()),
        s in proptest::array::uniform32(any::<u8>()),
        message in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r);
        sig[32..].copy_from_slice(&s);
        verdict(&key, &message, &sig);
    }
}
