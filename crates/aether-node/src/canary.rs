//! A canary: a second version of a deployed component that serves a share of its requests while
//! a rollout judges it against the serving version, and what this node measured of both.
//!
//! The share is exact over every hundred requests a node serves: request `n` goes to the new
//! version when `(n × 61) mod 100` is below the weight, which spreads the chosen ones evenly
//! (61 is prime to 100, so every residue comes up once per hundred).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use aether_runtime::LoadedComponent;
use serde::{Deserialize, Serialize};

/// Latency buckets: bucket `i` holds requests that took at most `100 µs × 2^(i/2)`; the last
/// one holds everything slower (past about 100 s).
pub const LATENCY_BUCKETS: usize = 41;

/// The upper bound of latency bucket `i`.
pub fn bucket_bound(i: usize) -> Duration {
    let micros = 100.0 * 2f64.powf(i as f64 / 2.0);
    Duration::from_micros(micros as u64)
}

fn bucket_of(elapsed: Duration) -> usize {
    let micros = elapsed.as_micros().max(1) as f64;
    let i = (2.0 * (micros / 100.0).log2()).ceil();
    if i <= 0.0 {
        0
    } else {
        (i as usize).min(LATENCY_BUCKETS - 1)
    }
}

/// Counters of the requests one version served on this node.
pub struct VersionStats {
    requests: AtomicU64,
    errors: AtomicU64,
    faults: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
}

impl Default for VersionStats {
    fn default() -> Self {
        Self {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            faults: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl VersionStats {
    /// Counts one response: its status, whether the instance faulted, and how long it took.
    pub fn record(&self, status: u16, faulted: bool, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if faulted {
            self.faults.fetch_add(1, Ordering::Relaxed);
        }
        self.latency[bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as they are now.
    pub fn summary(&self) -> Summary {
        Summary {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
            latency: self
                .latency
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

/// Requests one version served: how many, how many answered 5xx, how many faulted, and a latency
/// histogram (see [`LATENCY_BUCKETS`]). Summaries from several nodes add up.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Requests served.
    pub requests: u64,
    /// Responses with a 5xx status, faults included.
    pub errors: u64,
    /// Responses the host gave because the instance faulted.
    pub faults: u64,
    /// Requests per latency bucket.
    pub latency: Vec<u64>,
}

impl Summary {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Summary) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.faults += other.faults;
        if self.latency.len() < other.latency.len() {
            self.latency.resize(other.latency.len(), 0);
        }
        for (mine, theirs) in self.latency.iter_mut().zip(&other.latency) {
            *mine += theirs;
        }
    }

    /// The 99th-percentile latency (a bucket's upper bound), if any request was served.
    pub fn p99(&self) -> Option<Duration> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = total - total / 100;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_bound(i));
            }
        }
        Some(bucket_bound(LATENCY_BUCKETS - 1))
    }
}

/// The new version of a component during a canary rollout, loaded beside the serving one.
pub struct Canary {
    /// The rollout that put it here.
    pub rollout: String,
    /// Hex SHA-256 of its essence.
    pub essence_hash: String,
    /// The loaded new version.
    pub component: LoadedComponent,
    weight: AtomicU32,
    next: AtomicU64,
    /// What the serving version did while this canary ran.
    pub stable_stats: VersionStats,
    /// What the new version did.
    pub canary_stats: VersionStats,
}

impl Canary {
    /// A canary of `component` getting `weight` percent of requests.
    pub fn new(
        rollout: String,
        essence_hash: String,
        component: LoadedComponent,
        weight: u32,
    ) -> Self {
        Self {
            rollout,
            essence_hash,
            component,
            weight: AtomicU32::new(weight.min(100)),
            next: AtomicU64::new(0),
            stable_stats: VersionStats::default(),
            canary_stats: VersionStats::default(),
        }
    }

    /// The percentage of requests it gets.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the percentage of requests it gets.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.min(100), Ordering::Relaxed);
    }

    /// Whether the next request goes to the new version.
    pub fn picks_next(&self) -> bool {
        picks(self.next.fetch_add(1, Ordering::Relaxed), self.weight())
    }
}

/// Whether request number `n` goes to a canary of `weight` percent.
fn picks(n: u64, weight: u32) -> bool {
    ((n % 100) * 61 % 100) < u64::from(weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_what_they_hold() {
        for micros in [
            1, 99, 100, 101, 141, 142, 1_000, 12_345, 1_000_000, 99_000_000,
        ] {
            let d = Duration::from_micros(micros);
            let i = bucket_of(d);
            assert!(d <= bucket_bound(i), "{micros} µs in bucket {i}");
            if i > 0 {
                assert!(
                    d > bucket_bound(i - 1),
                    "{micros} µs belongs lower than {i}"
                );
            }
        }
        assert_eq!(bucket_of(Duration::from_secs(10_000)), LATENCY_BUCKETS - 1);
    }

    #[test]
    fn the_weight_is_exact_over_every_hundred_requests() {
        for weight in [0, 1, 5, 25, 50, 99, 100] {
            let count = |from: u64| (from..from + 100).filter(|&n| picks(n, weight)).count();
            assert_eq!(count(0), weight as usize);
            assert_eq!(count(37), weight as usize, "any hundred in a row");
        }
        let first_twenty = (0..20).filter(|&n| picks(n, 25)).count();
        assert!((3..=7).contains(&first_twenty), "spread out, not bunched");
    }

    #[test]
    fn p99_is_the_bucket_of_the_99th_percentile() {
        let stats = VersionStats::default();
        for _ in 0..990 {
            stats.record(200, false, Duration::from_millis(1));
        }
        for _ in 0..10 {
            stats.record(500, true, Duration::from_millis(100));
        }
        let s = stats.summary();
        assert_eq!((s.requests, s.errors, s.faults), (1000, 10, 10));
        let p99 = s.p99().expect("requests were served");
        assert!(p99 >= Duration::from_millis(1) && p99 < Duration::from_micros(1500));
        let mut twice = s.clone();
        twice.add(&s);
        assert_eq!(twice.requests, 2000);
        assert_eq!(twice.p99(), s.p99());
        assert_eq!(Summary::default().p99(), None);
    }
}
