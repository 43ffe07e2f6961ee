//! Anti-entropy figures: two replicas of N keys (default 100 000) differing
//! in 1 % of them; prints the bytes of every anti-entropy message of one
//! round against the encoded size of the differing updates (bar: ≤ 3×), and
//! the time the round takes (both cores in this process: encoding, decoding,
//! comparing, verifying and applying the updates).
//!
//! `cargo run --release -p aether-state --example antientropy_bench -- 100000 100`
//! (keys, then value length in bytes; more value lengths may follow)

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use common::{describe, diverged_pair, measure_round};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let keys = args.first().copied().unwrap_or(100_000);
    let value_lens = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![16, 100, 1000]
    };
    for value_len in value_lens {
        let t = Instant::now();
        let (a, b, differing) = diverged_pair(keys, 100, value_len);
        let build = t.elapsed();
        let (net, round) = measure_round(a, b);
        let total = net.total_bytes();
        let messages: u64 = net.bytes.values().map(|(_, n)| n).sum();
        println!(
            "{keys} keys, 1 % differ, {value_len}-byte values: {total} B in {messages} messages \
             for {differing} B of differing updates = ×{:.2} (bar ×3); round {:.1} ms \
             (fixture {:.1} s)\n  {}",
            total as f64 / differing as f64,
            round.as_secs_f64() * 1e3,
            build.as_secs_f64(),
            describe(&net)
        );
    }
}
