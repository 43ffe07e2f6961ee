//! Sealing and opening essences, and every way one is refused.

use aether_essence::{Essence, EssenceError, seal, seal_unsigned_for_tests};
use aether_identity::{SecretKey, TrustedKeys};
use aether_manifest::Manifest;

fn manifest() -> Manifest {
    aether_manifest::parse(
        "name = \"x\"\ncomponent = \"x.wasm\"\n[http]\nroutes = [\"/\"]\n",
        "Aetherfile",
    )
    .expect("manifest")
}

const WASM: &[u8] = b"\0asm\x0d\0\x01\0pretend component bytes";

fn trusted(key: &SecretKey) -> TrustedKeys {
    [key.public()].into_iter().collect()
}

#[test]
fn sealed_essence_opens_and_verifies() {
    let key = SecretKey::generate();
    let bytes = seal(&manifest(), WASM, &key);
    let verified = Essence::open(&bytes)
        .expect("opens")
        .verify(&trusted(&key))
        .expect("verifies");
    assert_eq!(verified.component(), WASM);
    assert_eq!(verified.manifest(), &manifest());
    assert_eq!(verified.publisher(), key.public());
    assert_eq!(verified.component_hash().len(), 64);
}

#[test]
fn any_flipped_byte_is_refused() {
    let key = SecretKey::generate();
    let bytes = seal(&manifest(), WASM, &key);
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        let result = Essence::open(&bad).and_then(|e| e.verify(&trusted(&key)));
        assert!(result.is_err(), "flipping byte {i} went unnoticed");
    }
}

#[test]
fn tampered_component_names_the_part() {
    let key = SecretKey::generate();
    let mut bytes = seal(&manifest(), WASM, &key);
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    assert!(matches!(
        Essence::open(&bytes),
        Err(EssenceError::Tampered("component"))
    ));
}

#[test]
fn untrusted_unsigned_and_forged_are_refused() {
    let publisher = SecretKey::generate();
    let other = SecretKey::generate();
    let bytes = seal(&manifest(), WASM, &publisher);
    let err = Essence::open(&bytes)
        .expect("opens")
        .verify(&trusted(&other))
        .expect_err("untrusted");
    assert!(matches!(err, EssenceError::Untrusted(_)));
    assert!(err.to_string().contains("not trusted"));

    let unsigned = seal_unsigned_for_tests(&manifest(), WASM);
    assert!(matches!(
        Essence::open(&unsigned)
            .expect("opens")
            .verify(&trusted(&publisher)),
        Err(EssenceError::Unsigned)
    ));

    // Re-label a valid essence with another publisher key: the signature no
    // longer verifies.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let forged = text.replace(&publisher.public().to_string(), &other.public().to_string());
    let forged = Essence::open(forged.as_bytes()).expect("framing intact");
    assert!(matches!(
        forged.verify(&trusted(&other)),
        Err(EssenceError::BadSignature(_))
    ));
}

#[test]
fn garbage_and_truncation_are_errors_not_panics() {
    assert!(matches!(Essence::open(b""), Err(EssenceError::BadMagic)));
    assert!(matches!(
        Essence::open(b"not an essence"),
        Err(EssenceError::BadMagic)
    ));
    let key = SecretKey::generate();
    let bytes = seal(&manifest(), WASM, &key);
    for len in 0..bytes.len() {
        assert!(Essence::open(&bytes[..len]).is_err(), "truncated at {len}");
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Essence::open(&longer).is_err());
    // A header claiming a huge length must not allocate it.
    let mut huge = b"AETHESS1".to_vec();
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(Essence::open(&huge).is_err());
}
