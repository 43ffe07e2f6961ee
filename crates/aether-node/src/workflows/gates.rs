//! A canary rollout's own steps on the node that drives it: give the new version a share of
//! requests (`canary-N`), hold that share for the interval while judging what the hosts measured
//! (`gate-N`), and take the share back when undoing (`canary-off`).
//!
//! A gate compares the new version with the serving one over the same requests window and the
//! same hosts. Error and fault rates are judged on 95% Wilson score bounds (the new version's
//! lower bound against the old one's upper bound), so a single unlucky error among few requests
//! does not fail a gate while a version failing a fifth of its requests fails within a few dozen.

use std::time::{Duration, Instant};

use aether_manifest::Gates;
use serde_json::{Value, json};

use super::plan::{RolloutInput, SUPERSEDED};
use super::records::{self, CANARY_BUCKET, CanaryShare};
use super::steps::{StepContext, newer_rollout};
use crate::canary::Summary;

/// How long every host of the component has to load the new version.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// How often a gate looks at what the hosts measured.
const JUDGE_EVERY: Duration = Duration::from_secs(1);
/// Latency slack added to the old version's p99 before comparing.
const P99_SLACK: Duration = Duration::from_millis(5);
/// Requests each version must have served before their p99s are compared.
const P99_MIN_REQUESTS: u64 = 100;
/// z for a two-sided 95% confidence interval.
const Z: f64 = 1.96;

/// The bounds of the 95% Wilson score interval of `k` successes in `n` trials.
fn wilson(k: u64, n: u64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z * Z;
    let centre = p + z2 / (2.0 * n);
    let spread = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let scale = 1.0 + z2 / n;
    (
        ((centre - spread) / scale).max(0.0),
        ((centre + spread) / scale).min(1.0),
    )
}

fn percent(k: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        100.0 * k as f64 / n as f64
    }
}

/// What a gate concludes from the two versions' summaries.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The new version did no worse than the gates allow.
    Pass,
    /// Too few requests reached the new version to judge.
    Unjudged,
    /// The new version did worse; why, in words.
    Fail(String),
}

/// Judges the new version (`new`) against the serving one (`old`).
pub(crate) fn judge(gates: &Gates, old: &Summary, new: &Summary) -> Verdict {
    if new.requests < u64::from(gates.min_requests) {
        return Verdict::Unjudged;
    }
    let rate = |what: &str, new_k: u64, old_k: u64, allowed: f64| -> Option<String> {
        let (new_low, _) = wilson(new_k, new.requests);
        let old_high = if old.requests == 0 {
            0.0
        } else {
            wilson(old_k, old.requests).1
        };
        (100.0 * new_low > 100.0 * old_high + allowed).then(|| {
            format!(
                "the new version {what} {:.1}% of requests ({new_k} of {}), the serving one {:.1}% ({old_k} of {}); the gate allows {allowed} percentage points more",
                percent(new_k, new.requests),
                new.requests,
                percent(old_k, old.requests),
                old.requests,
            )
        })
    };
    if let Some(why) = rate(
        "answered 5xx to",
        new.errors,
        old.errors,
        gates.max_error_increase,
    ) {
        return Verdict::Fail(why);
    }
    if let Some(why) = rate(
        "faulted on",
        new.faults,
        old.faults,
        gates.max_fault_increase,
    ) {
        return Verdict::Fail(why);
    }
    if new.requests >= P99_MIN_REQUESTS
        && old.requests >= P99_MIN_REQUESTS
        && let (Some(new_p99), Some(old_p99)) = (new.p99(), old.p99())
        && new_p99 > old_p99.mul_f64(gates.max_p99_ratio) + P99_SLACK
    {
        return Verdict::Fail(format!(
            "the new version's p99 latency is {:.1} ms, the serving one's {:.1} ms; the gate allows {}× plus 5 ms",
            new_p99.as_secs_f64() * 1000.0,
            old_p99.as_secs_f64() * 1000.0,
            gates.max_p99_ratio
        ));
    }
    Verdict::Pass
}

fn summary_json(s: &Summary) -> Value {
    json!({
        "requests": s.requests,
        "errors": s.errors,
        "faults": s.faults,
        "p99_ms": s.p99().map(|d| d.as_secs_f64() * 1000.0),
    })
}

/// `canary-N`: gives the new version `weight` percent of requests, and waits until every live
/// host of the component applies it.
pub(crate) async fn set_share(
    ctx: &StepContext,
    id: &str,
    input: &RolloutInput,
    weight: u32,
) -> Result<Value, String> {
    if let Some(newer) = newer_rollout(ctx, id, &input.component) {
        return Err(format!(
            "{SUPERSEDED}rollout {newer} of `{}` started later",
            input.component
        ));
    }
    let share = CanaryShare {
        rollout: id.to_string(),
        essence_hash: input.essence_hash.clone(),
        weight,
    };
    let current: Option<CanaryShare> =
        records::read(&ctx.kv, CANARY_BUCKET, &input.component).await;
    if current.as_ref() != Some(&share) {
        records::write(&ctx.kv, CANARY_BUCKET, &input.component, &share).await?;
    }
    let started = Instant::now();
    loop {
        let hosts: Vec<String> = ctx
            .schedule
            .view()
            .forward
            .get(&input.component)
            .map(|hosts| {
                hosts
                    .iter()
                    .filter(|h| h.healthy && h.instances > 0)
                    .map(|h| h.id.to_string())
                    .collect()
            })
            .unwrap_or_default();
        // Scaled to zero: the hosts that start it later load the canary as they do.
        if hosts.is_empty() {
            return Ok(json!({ "weight": weight, "hosts": 0 }));
        }
        let (_, _, reports) = records::canary_health(&ctx.kv, id).await;
        let applied = |host: &String| {
            reports
                .iter()
                .any(|(k, h)| k.ends_with(host.as_str()) && h.weight == weight)
        };
        let waiting: Vec<&String> = hosts.iter().filter(|h| !applied(h)).collect();
        if waiting.is_empty() {
            return Ok(json!({
                "weight": weight,
                "hosts": hosts.len(),
                "ms": started.elapsed().as_millis() as u64,
            }));
        }
        if started.elapsed() > LOAD_TIMEOUT {
            return Err(format!(
                "{} of {} hosts did not load the new version within {} s: {}",
                waiting.len(),
                hosts.len(),
                LOAD_TIMEOUT.as_secs(),
                waiting
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `gate-N`: holds the share for `interval`, judging what the hosts measured every second; fails
/// as soon as the new version does worse than `gates` allow. Cut short (and passed, for the undo
/// to follow) when an operator cancels.
pub(crate) async fn gate(
    ctx: &StepContext,
    id: &str,
    weight: u32,
    interval: Duration,
    gates: &Gates,
) -> Result<Value, String> {
    let started = Instant::now();
    loop {
        let (old, new, _) = records::canary_health(&ctx.kv, id).await;
        let verdict = judge(gates, &old, &new);
        if let Verdict::Fail(why) = &verdict {
            return Err(format!("health gate at {weight}%: {why}"));
        }
        let cancelled = {
            let engine = ctx.engine.lock().unwrap_or_else(|p| p.into_inner());
            engine.journal(id).is_some_and(|j| j.control().cancel)
        };
        if started.elapsed() >= interval || cancelled {
            return Ok(json!({
                "weight": weight,
                "judged": verdict == Verdict::Pass,
                "cut_short": cancelled,
                "serving": summary_json(&old),
                "new": summary_json(&new),
            }));
        }
        tokio::time::sleep(JUDGE_EVERY.min(interval.saturating_sub(started.elapsed()))).await;
    }
}

/// `canary-off`: takes the share back (when it is still this rollout's), so every request goes
/// to the serving version again.
pub(crate) async fn clear_share(
    ctx: &StepContext,
    id: &str,
    input: &RolloutInput,
) -> Result<Value, String> {
    let current: Option<CanaryShare> =
        records::read(&ctx.kv, CANARY_BUCKET, &input.component).await;
    if current.is_some_and(|c| c.rollout == id) {
        records::delete(&ctx.kv, CANARY_BUCKET, &input.component).await?;
        return Ok(json!({ "cleared": true }));
    }
    Ok(json!({ "cleared": false }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests: u64, errors: u64, latency_bucket: usize) -> Summary {
        let mut latency = vec![0; crate::canary::LATENCY_BUCKETS];
        latency[latency_bucket] = requests;
        Summary {
            requests,
            errors,
            faults: 0,
            latency,
        }
    }

    #[test]
    fn a_fifth_of_errors_fails_and_one_unlucky_error_does_not() {
        let gates = Gates::default();
        let old = summary(800, 0, 10);
        assert_eq!(judge(&gates, &old, &summary(19, 5, 10)), Verdict::Unjudged);
        let Verdict::Fail(why) = judge(&gates, &old, &summary(40, 8, 10)) else {
            panic!("20% of 5xx must fail the gate");
        };
        assert!(why.contains("20.0% of requests (8 of 40)"), "{why}");
        assert_eq!(judge(&gates, &old, &summary(20, 1, 10)), Verdict::Pass);
        assert_eq!(judge(&gates, &old, &summary(200, 0, 10)), Verdict::Pass);
        // As bad as the serving version is not worse.
        assert_eq!(
            judge(&gates, &summary(800, 160, 10), &summary(200, 40, 10)),
            Verdict::Pass
        );
    }

    #[test]
    fn a_slower_p99_fails_once_both_have_enough_requests() {
        let gates = Gates::default();
        let old = summary(500, 0, 10);
        assert_eq!(judge(&gates, &old, &summary(99, 0, 20)), Verdict::Pass);
        assert!(matches!(
            judge(&gates, &old, &summary(150, 0, 20)),
            Verdict::Fail(why) if why.contains("p99")
        ));
        assert_eq!(judge(&gates, &old, &summary(150, 0, 11)), Verdict::Pass);
    }

    #[test]
    fn wilson_bounds_hold_the_rate() {
        for (k, n) in [(0, 10), (1, 20), (8, 40), (500, 1000)] {
            let (low, high) = wilson(k, n);
            let p = k as f64 / n as f64;
            assert!(low <= p && p <= high && (0.0..=1.0).contains(&low) && high <= 1.0);
        }
        assert_eq!(wilson(0, 0), (0.0, 1.0));
    }
}
