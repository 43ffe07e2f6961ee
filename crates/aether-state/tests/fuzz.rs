//! Random and mutated bytes into `SyncMessage::decode` and into a core:
//! never a panic, and decoding never allocates more than a small multiple
//! of its input (measured by a counting allocator, per thread).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use aether_state::{SyncMessage, TREE_DEPTH};
use common::{EPOCH_MS, Rng, diverged_pair, id, keyring, sample_messages};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only adds bookkeeping in a
// const-initialised thread-local (which never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated by this thread while running `f`.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let out = f();
    (out, ALLOCATED.with(Cell::get) - before)
}

/// Decoding allocates at most this much for `len` input bytes.
fn bound(len: usize) -> usize {
    32 * len + 4096
}

const MAX: usize = 1 << 20;

#[test]
fn random_and_mutated_messages_never_panic_nor_overallocate() {
    let corpus: Vec<Vec<u8>> = sample_messages().iter().map(SyncMessage::encode).collect();
    let kinds: std::collections::BTreeSet<u8> = corpus.iter().map(|m| m[1]).collect();
    assert_eq!(kinds.len(), 6, "corpus lacks a kind: {kinds:?}");
    // A core with some state to feed whatever decodes.
    let (mut target, _, _) = diverged_pair(500, 10, 16);
    let keys = keyring(2);
    let mut rng = Rng::new(0xF022);
    let (mut ok, mut err, mut worst) = (0u64, 0u64, 0f64);
    for i in 0..60_000u32 {
        let data: Vec<u8> = if i % 4 == 0 {
            let len = rng.below(700) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if d.len() >= 2 && rng.chance(0.7) {
                d[0] = 1;
                d[1] = 1 + rng.below(6) as u8;
            }
            d
        } else {
            let mut d = corpus[rng.below(corpus.len() as u64) as usize].clone();
            match rng.below(6) {
                0 => d.truncate(rng.below(d.len() as u64 + 1) as usize),
                1 => {
                    for _ in 0..1 + rng.below(4) {
                        let j = rng.below(d.len() as u64) as usize;
                        d[j] = rng.next() as u8;
                    }
                }
                2 => {
                    let j = rng.below(d.len() as u64) as usize;
                    d[j] ^= 1 << rng.below(8);
                }
                3 => {
                    // Inflate a count or length field.
                    if d.len() > 6 {
                        let j = 2 + rng.below(d.len() as u64 - 6) as usize;
                        d[j..j + 4].copy_from_slice(&[0xFF, 0xFF, 0xFF, rng.next() as u8]);
                    }
                }
                4 => {
                    let j = rng.below(d.len() as u64) as usize;
                    d[j] = TREE_DEPTH + rng.below(3) as u8;
                }
                _ => d.extend((0..1 + rng.below(64)).map(|_| rng.next() as u8)),
            }
            d
        };
        let (res, bytes) = allocated_by(|| SyncMessage::decode(&data, MAX));
        assert!(
            bytes <= bound(data.len()),
            "{bytes} B allocated decoding {} B",
            data.len()
        );
        worst = worst.max(bytes as f64 / data.len().max(1) as f64);
        match res {
            Ok(msg) => {
                ok += 1;
                // Whatever decodes re-encodes to the same bytes.
                assert_eq!(msg.encode(), data);
                target.receive(id(1), msg, &keys, EPOCH_MS + 20_000_000);
                while target.poll_output().is_some() {}
            }
            Err(_) => err += 1,
        }
    }
    eprintln!("{ok} decoded, {err} refused, worst {worst:.1} B allocated per input byte");
    assert!(ok > 1000 && err > 10_000, "{ok} {err}");
}

#[test]
fn oversized_input_is_refused_before_any_allocation() {
    let data = vec![1u8; 4096];
    let (res, bytes) = allocated_by(|| SyncMessage::decode(&data, 1024));
    assert!(res.is_err());
    assert_eq!(bytes, 0);
}

#[test]
fn every_sample_roundtrips() {
    for m in sample_messages() {
        let bytes = m.encode();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(SyncMessage::decode(&bytes, MAX).unwrap(), m);
        for cut in 0..bytes.len() {
            assert!(SyncMessage::decode(&bytes[..cut], MAX).is_err());
        }
    }
}
