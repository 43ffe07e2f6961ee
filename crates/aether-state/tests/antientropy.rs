//! Anti-entropy transfers only what differs: bytes against the bar.

mod common;

use common::{describe, diverged_pair, measure_round};

/// 10 000 keys differing in 1 % (100 keys): all anti-entropy messages
/// together stay within 3× the encoded size of the differing updates. The
/// 100 000-key figure is printed by `examples/antientropy_bench.rs`.
#[test]
fn ten_thousand_keys_one_percent_within_three_times() {
    for value_len in [16, 100] {
        let (a, b, differing) = diverged_pair(10_000, 100, value_len);
        let (net, _) = measure_round(a, b);
        let total = net.total_bytes();
        let ratio = total as f64 / differing as f64;
        eprintln!(
            "10 000 keys, 1 % differ, {value_len}-byte values: {total} B of anti-entropy for \
             {differing} B of differing updates (×{ratio:.2}); {}",
            describe(&net)
        );
        assert!(total <= 3 * differing, "{total} > 3 × {differing}");
    }
}

/// In-sync nodes exchange one small digest.
#[test]
fn in_sync_costs_one_digest() {
    let (a, b, _) = diverged_pair(2_000, usize::MAX, 16);
    let (net, _) = measure_round(a, b);
    assert_eq!(net.bytes.len(), 1);
    assert!(net.total_bytes() < 16, "{}", net.total_bytes());
    assert_eq!(net.cores[1].counters().ae_in_sync, 1);
}
