//! Apply rate of signed updates through a node's full receive path (decode,
//! verify, merge, persist), with reference runs in the same invocation:
//! strict verification alone, batch verification alone (not used by the
//! node: see aether-state's docs), and the receive path without the disk.
//!
//! `cargo run --release -p aether-kv --example apply_bench -- [UPDATES]`

use std::collections::BTreeMap;
use std::time::Instant;

use aether_identity::{PublicKey, SecretKey};
use aether_kv::Store;
use aether_state::{Hlc, NodeId, Output, StateCore, SyncConfig, SyncMessage};
use bytes::Bytes;

const WRITERS: usize = 4;
const PER_MESSAGE: usize = 1000;

fn main() {
    let total: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let secrets: Vec<SecretKey> = (0..WRITERS)
        .map(|i| SecretKey::from_bytes(&[i as u8 + 1; 32]))
        .collect();
    let origins: BTreeMap<NodeId, PublicKey> = secrets
        .iter()
        .map(|s| (NodeId(*s.public().as_bytes()), s.public()))
        .collect();
    // Each writer writes its own keys, 100-byte values.
    let start_ms = 1_800_000_000_000u64;
    let mut updates = Vec::with_capacity(total);
    for (w, secret) in secrets.iter().enumerate() {
        let mut core = StateCore::new(SyncConfig::default(), Hlc::new(500));
        for i in 0..total / WRITERS {
            let key = format!("w{w}/key-{i:08}");
            let value = Bytes::from(vec![b'v'; 100]);
            let u = core
                .write(
                    secret,
                    "bench",
                    key.as_bytes(),
                    Some(value),
                    start_ms + i as u64,
                )
                .expect("write");
            updates.push(u);
        }
    }
    let now_ms = start_ms + total as u64;
    let messages: Vec<Vec<u8>> = updates
        .chunks(PER_MESSAGE)
        .map(|c| SyncMessage::Push(c.to_vec()).encode())
        .collect();
    let n = updates.len();
    let from = NodeId(*secrets[0].public().as_bytes());
    println!("{n} updates from {WRITERS} writers, {PER_MESSAGE} per message, 100-byte values");

    let t = Instant::now();
    for u in &updates {
        let key = origins.get(u.origin()).expect("origin");
        u.verify(key).expect("valid");
    }
    let strict = n as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    for chunk in updates.chunks(PER_MESSAGE) {
        let messages: Vec<Vec<u8>> = chunk.iter().map(|u| u.signed_bytes()).collect();
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let sigs: Vec<ed25519_dalek::Signature> = chunk
            .iter()
            .map(|u| ed25519_dalek::Signature::from_bytes(u.signature()))
            .collect();
        let keys: Vec<ed25519_dalek::VerifyingKey> = chunk
            .iter()
            .map(|u| ed25519_dalek::VerifyingKey::from_bytes(&u.origin().0).expect("key"))
            .collect();
        ed25519_dalek::verify_batch(&refs, &sigs, &keys).expect("batch");
    }
    let batch = n as f64 / t.elapsed().as_secs_f64();

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let receive = |persist: Option<&Store>, verify_threads: usize| {
        let config = SyncConfig {
            verify_threads,
            ..SyncConfig::default()
        };
        let mut core = StateCore::new(config, Hlc::new(500));
        let t = Instant::now();
        let mut applied = 0usize;
        for m in &messages {
            core.receive_bytes(from, m, &origins, now_ms)
                .expect("decode");
            let mut batch = Vec::new();
            while let Some(o) = core.poll_output() {
                if let Output::Applied { update, .. } = o {
                    batch.push(update);
                }
            }
            applied += batch.len();
            if let Some(store) = persist {
                store.append(&batch).expect("append");
            }
        }
        assert_eq!(applied, n, "every update applied");
        n as f64 / t.elapsed().as_secs_f64()
    };
    let in_memory = receive(None, 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("state.redb")).expect("store");
    let full = receive(Some(&store), 1);
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = Store::open(&dir2.path().join("state.redb")).expect("store");
    let parallel = receive(Some(&store2), threads);

    println!("| path | updates/s | vs strict verify alone |");
    println!("|---|---:|---:|");
    println!("| strict verify alone (reference) | {strict:.0} | 1.00× |");
    println!(
        "| batch verify alone (not used) | {batch:.0} | {:.2}× |",
        batch / strict
    );
    println!(
        "| decode + verify + merge | {in_memory:.0} | {:.2}× |",
        in_memory / strict
    );
    println!(
        "| decode + verify + merge + persist (redb, one commit per message) | {full:.0} | {:.2}× |",
        full / strict
    );
    println!(
        "| the same, signatures checked on {threads} threads (the node's setting) | {parallel:.0} | {:.2}× |",
        parallel / strict
    );
}
