//! The load of each deployment on this node, averaged over a short window: the
//! figure nodes answer each other with when one of them decides a replica count.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aether_placement::Observed;
use serde::{Deserialize, Serialize};

use crate::deployments::Deployments;

/// The window load is averaged over.
pub(crate) const WINDOW: Duration = Duration::from_secs(2);

/// One deployment's load on this node over the last window.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub(crate) struct LocalLoad {
    /// Instances running, averaged.
    pub concurrency: f64,
    /// Requests per second.
    pub rate: f64,
}

struct Samples {
    /// (when, instances running, requests served so far).
    ring: VecDeque<(Instant, usize, u64)>,
}

/// This node's load sampler.
#[derive(Default)]
pub(crate) struct LoadSampler {
    samples: Mutex<HashMap<String, Samples>>,
}

impl LoadSampler {
    /// Records one sample of every deployment this node runs.
    pub(crate) fn sample(&self, deployments: &Deployments) {
        let now = Instant::now();
        let mut all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let list = deployments.list();
        all.retain(|name, _| list.iter().any(|d| d.component.name() == name));
        for d in list {
            let name = d.component.name();
            let requests = deployments.runtime().metrics().requests_for(name);
            let entry = all.entry(name.to_string()).or_insert_with(|| Samples {
                ring: VecDeque::new(),
            });
            entry
                .ring
                .push_back((now, d.component.running_instances(), requests));
            while entry
                .ring
                .front()
                .is_some_and(|(t, _, _)| now.duration_since(*t) > WINDOW)
            {
                entry.ring.pop_front();
            }
        }
    }

    /// The load of `name` over the last window.
    pub(crate) fn load(&self, name: &str) -> LocalLoad {
        let all = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let Some(s) = all.get(name) else {
            return LocalLoad::default();
        };
        let (Some(first), Some(last)) = (s.ring.front(), s.ring.back()) else {
            return LocalLoad::default();
        };
        let concurrency =
            s.ring.iter().map(|(_, n, _)| *n as f64).sum::<f64>() / s.ring.len() as f64;
        let span = last.0.duration_since(first.0).as_secs_f64();
        let rate = if span > 0.0 {
            last.2.saturating_sub(first.2) as f64 / span
        } else {
            0.0
        };
        LocalLoad { concurrency, rate }
    }
}

/// The load summed over the hosts that answered.
pub(crate) fn sum(loads: impl IntoIterator<Item = LocalLoad>) -> Observed {
    loads
        .into_iter()
        .fold(Observed::default(), |acc, l| Observed {
            concurrency: acc.concurrency + l.concurrency,
            request_rate: acc.request_rate + l.rate,
        })
}
