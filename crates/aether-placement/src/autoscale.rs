//! Autoscaling between `replicas.min` and `replicas.max` as a pure function of the observed load.
//!
//! The load is the concurrency of the deployment's instances summed over the lattice (requests
//! in flight, averaged over the observation window) and its request rate. The replicas wanted
//! are `⌈concurrency / target⌉`, where `target` is the concurrency one replica should carry
//! ([`ScalePolicy::target_concurrency`]), clamped to `min..=max`, and at least 1 while any
//! request arrives.
//!
//! Hysteresis, so that the count does not flap:
//! - **up** at once: more load needs capacity now;
//! - **down** only after the load has wanted fewer replicas for [`ScalePolicy::scale_down_after`]
//!   without interruption, and then to the largest count wanted during that period;
//! - **to zero** (only with `min = 0`) only after no request at all for
//!   [`ScalePolicy::idle_timeout`].
//!
//! The function is deterministic; the caller records its decision in the lattice state, so every
//! node places the same count.

use std::time::Duration;

/// How a deployment scales.
#[derive(Clone, Debug, PartialEq)]
pub struct ScalePolicy {
    /// Requests in flight one replica should carry; above it, replicas are added.
    pub target_concurrency: f64,
    /// How long the load must want fewer replicas before they are removed.
    pub scale_down_after: Duration,
    /// How long without any request before a `min = 0` deployment scales to zero.
    pub idle_timeout: Duration,
}

/// The load of one deployment over the last observation window, summed over the lattice.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Observed {
    /// Requests in flight, averaged over the window.
    pub concurrency: f64,
    /// Requests per second.
    pub request_rate: f64,
}

/// What the autoscaler remembers between decisions for one deployment.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScaleMemory {
    /// Since when the load has wanted fewer replicas than there are.
    low_since: Option<Duration>,
    /// The most replicas wanted since `low_since`.
    low_peak: u32,
    /// Since when no request has arrived.
    idle_since: Option<Duration>,
}

/// The replicas a deployment should have now, from `current`, its `min..=max` range, the load and
/// the time `now` (any monotonic origin). Updates `memory`.
pub fn autoscale(
    current: u32,
    min: u32,
    max: u32,
    observed: Observed,
    policy: &ScalePolicy,
    now: Duration,
    memory: &mut ScaleMemory,
) -> u32 {
    let max = max.max(min);
    let target = if policy.target_concurrency.is_finite() && policy.target_concurrency > 0.0 {
        policy.target_concurrency
    } else {
        1.0
    };
    let concurrency = if observed.concurrency.is_finite() {
        observed.concurrency.max(0.0)
    } else {
        0.0
    };
    let busy = concurrency > 0.0 || observed.request_rate > 0.0;
    let by_load = (concurrency / target).ceil().min(f64::from(u32::MAX)) as u32;
    let mut want = by_load.max(u32::from(busy)).clamp(min, max);
    if busy {
        memory.idle_since = None;
    } else {
        let since = *memory.idle_since.get_or_insert(now);
        if want == 0 {
            if now.saturating_sub(since) < policy.idle_timeout {
                want = current.min(1).clamp(min, max);
            } else {
                // Idle long enough: the idle period is the hysteresis.
                memory.low_since = None;
                memory.low_peak = 0;
                return 0;
            }
        }
    }
    let current = current.clamp(min, max);
    if want >= current {
        memory.low_since = None;
        memory.low_peak = 0;
        return want;
    }
    match memory.low_since {
        None => {
            memory.low_since = Some(now);
            memory.low_peak = want;
            current
        }
        Some(since) => {
            memory.low_peak = memory.low_peak.max(want);
            if now.saturating_sub(since) >= policy.scale_down_after {
                let next = memory.low_peak;
                memory.low_since = None;
                memory.low_peak = 0;
                next
            } else {
                current
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy {
            target_concurrency: 2.0,
            scale_down_after: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
        }
    }

    fn load(concurrency: f64) -> Observed {
        Observed {
            concurrency,
            request_rate: if concurrency > 0.0 { 10.0 } else { 0.0 },
        }
    }

    /// Runs `steps` decisions one second apart from `start`.
    fn run(mut current: u32, min: u32, max: u32, loads: &[f64]) -> Vec<u32> {
        let mut memory = ScaleMemory::default();
        loads
            .iter()
            .enumerate()
            .map(|(t, c)| {
                current = autoscale(
                    current,
                    min,
                    max,
                    load(*c),
                    &policy(),
                    Duration::from_secs(t as u64),
                    &mut memory,
                );
                current
            })
            .collect()
    }

    #[test]
    fn scales_up_at_once_and_within_max() {
        assert_eq!(run(1, 1, 5, &[7.0]), vec![4]);
        assert_eq!(run(1, 1, 3, &[100.0]), vec![3]);
        assert_eq!(run(2, 2, 5, &[0.5]), vec![2], "never below min");
    }

    #[test]
    fn scales_down_only_after_a_quiet_period_to_its_peak() {
        let mut loads = vec![8.0];
        loads.extend(std::iter::repeat_n(1.0, 20));
        loads.push(3.0); // peak within the low period: 2 replicas
        loads.extend(std::iter::repeat_n(1.0, 20));
        let out = run(1, 1, 5, &loads);
        assert_eq!(out[0], 4);
        assert!(out[1..31].iter().all(|n| *n == 4), "{out:?}");
        assert_eq!(out[31], 2, "down to the peak wanted while low: {out:?}");
    }

    #[test]
    fn a_burst_restarts_the_quiet_period() {
        let mut loads = vec![8.0];
        loads.extend(std::iter::repeat_n(1.0, 20));
        loads.push(8.0);
        loads.extend(std::iter::repeat_n(1.0, 25));
        let out = run(1, 1, 5, &loads);
        assert!(out.iter().all(|n| *n == 4), "{out:?}");
    }

    #[test]
    fn flapping_load_does_not_flap_replicas() {
        let loads: Vec<f64> = (0..200)
            .map(|i| if i % 2 == 0 { 3.9 } else { 1.9 })
            .collect();
        let out = run(1, 1, 5, &loads);
        let changes = out.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(changes, 0, "{out:?}");
        assert_eq!(out[0], 2);
    }

    #[test]
    fn scales_to_zero_only_after_the_idle_timeout() {
        let mut loads = vec![1.0];
        loads.extend(std::iter::repeat_n(0.0, 70));
        let out = run(1, 0, 3, &loads);
        assert!(out[..60].iter().all(|n| *n == 1), "{out:?}");
        assert_eq!(*out.last().expect("some"), 0, "{out:?}");
        // And back to one with the first request.
        let mut memory = ScaleMemory::default();
        let n = autoscale(0, 0, 3, load(0.01), &policy(), Duration::ZERO, &mut memory);
        assert_eq!(n, 1);
        // min = 1 never reaches zero.
        let out = run(1, 1, 3, &vec![0.0; 200]);
        assert!(out.iter().all(|n| *n == 1));
    }

    #[test]
    fn nonsense_inputs_stay_in_range() {
        let mut memory = ScaleMemory::default();
        for c in [f64::NAN, f64::INFINITY, -5.0, 1e300] {
            let n = autoscale(
                3,
                1,
                4,
                Observed {
                    concurrency: c,
                    request_rate: f64::NAN,
                },
                &ScalePolicy {
                    target_concurrency: 0.0,
                    ..policy()
                },
                Duration::ZERO,
                &mut memory,
            );
            assert!((1..=4).contains(&n), "{c} → {n}");
        }
    }
}
