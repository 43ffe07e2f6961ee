//! Which strategy a rollout follows: the Aetherfile's `[rollout]` section, overridden by what the
//! command line asked for (`strategy`, `steps`, `interval` in the request's query), and all at
//! once whatever was asked when there is no serving version to compare a canary with.

use std::str::FromStr as _;

use aether_manifest::{Rollout, Strategy};

use super::plan::CanaryPlan;

/// The canary plan (none for all at once) and, when the strategy differs from the one asked
/// for, why.
pub(crate) fn resolve(
    section: &Rollout,
    query: Option<&str>,
    serving: bool,
) -> Result<(Option<CanaryPlan>, String), String> {
    let mut rollout = section.clone();
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "strategy" => {
                rollout.strategy = match value.as_ref() {
                    "all-at-once" => Strategy::AllAtOnce,
                    "canary" => Strategy::Canary,
                    other => {
                        return Err(format!(
                            "unknown strategy {other:?}: use `all-at-once` or `canary`"
                        ));
                    }
                }
            }
            "steps" => {
                rollout.steps = value
                    .split(',')
                    .map(|s| s.trim().trim_end_matches('%').parse::<u32>())
                    .collect::<Result<_, _>>()
                    .map_err(|_| {
                        format!("steps {value:?} are not percentages: write them as `5,25,100`")
                    })?;
            }
            "interval" => {
                rollout.interval = aether_manifest::Duration::from_str(&value)
                    .map_err(|e| format!("interval {value:?}: {}; {}", e.message(), e.help()))?;
            }
            _ => {}
        }
    }
    if rollout.steps.is_empty() || rollout.steps.len() > 20 {
        return Err("a canary takes 1 to 20 steps, e.g. `5,25,100`".into());
    }
    if let Some(bad) = rollout.steps.iter().find(|s| !(1..=100).contains(*s)) {
        return Err(format!("step {bad} is not a percentage between 1 and 100"));
    }
    if rollout.steps.windows(2).any(|w| w[1] <= w[0]) {
        return Err(format!(
            "steps {:?} must grow, e.g. `5,25,100`",
            rollout.steps
        ));
    }
    let interval = std::time::Duration::from(rollout.interval);
    if interval < std::time::Duration::from_secs(1)
        || interval > std::time::Duration::from_secs(86_400)
    {
        return Err(format!(
            "interval {} is not between 1s and 24h",
            rollout.interval
        ));
    }
    if rollout.strategy == Strategy::AllAtOnce {
        return Ok((None, String::new()));
    }
    if !serving {
        return Ok((
            None,
            "canary asked for, but no version serves yet to compare it with: all at once".into(),
        ));
    }
    Ok((
        Some(CanaryPlan {
            steps: rollout.steps.into_iter().filter(|&s| s < 100).collect(),
            interval_ms: interval.as_millis() as u64,
            gates: rollout.gates,
        }),
        String::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_overrides_the_aetherfile() {
        let canary = Rollout {
            strategy: Strategy::Canary,
            ..Rollout::default()
        };
        let (plan, note) = resolve(&canary, None, true).expect("valid");
        let plan = plan.expect("a canary");
        assert_eq!((plan.steps, plan.interval_ms), (vec![5, 25], 30_000));
        assert!(note.is_empty());
        let (plan, _) = resolve(&canary, Some("strategy=all-at-once"), true).expect("valid");
        assert_eq!(plan, None);
        let (plan, _) = resolve(
            &Rollout::default(),
            Some("strategy=canary&steps=10,50&interval=2s"),
            true,
        )
        .expect("valid");
        let plan = plan.expect("a canary");
        assert_eq!((plan.steps, plan.interval_ms), (vec![10, 50], 2_000));
    }

    #[test]
    fn a_first_deploy_is_all_at_once() {
        let (plan, note) =
            resolve(&Rollout::default(), Some("strategy=canary"), false).expect("valid");
        assert_eq!(plan, None);
        assert!(note.contains("no version serves yet"), "{note}");
    }

    #[test]
    fn bad_overrides_are_refused_with_the_reason() {
        let d = Rollout::default();
        for (query, needle) in [
            ("strategy=blue-green", "unknown strategy"),
            ("steps=5,x", "not percentages"),
            ("steps=50,25", "must grow"),
            ("steps=0,100", "between 1 and 100"),
            ("interval=2", "interval"),
            ("interval=48h", "between 1s and 24h"),
        ] {
            let err = resolve(&d, Some(query), true).expect_err(query);
            assert!(err.contains(needle), "{query}: {err}");
        }
    }
}
