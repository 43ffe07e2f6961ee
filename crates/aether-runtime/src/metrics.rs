//! Prometheus metrics of the runtime.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels naming a component.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabel {
    /// Component name from its manifest.
    pub component: String,
}

/// Labels naming a component and a response status class.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Component name from its manifest.
    pub component: String,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub status: &'static str,
}

/// Labels naming a component and why an instance was stopped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaultLabels {
    /// Component name from its manifest.
    pub component: String,
    /// `trap`, `deadline`, `fuel`, `memory` or `overload`.
    pub kind: &'static str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_05, 2.0, 20,
    ))
}

fn activation_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.000_5, 2.0, 16,
    ))
}

/// All runtime metrics; cheap to clone (shared handles).
#[derive(Clone)]
pub struct RuntimeMetrics {
    /// Requests served, by component and status class.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds until the response head, by component.
    pub latency: Family<ComponentLabel, Histogram, fn() -> Histogram>,
    /// Instances running now, by component.
    pub instances: Family<ComponentLabel, Gauge>,
    /// Instances created (one per request), by component.
    pub instances_created: Family<ComponentLabel, Counter>,
    /// Instances stopped by a fault or refused by a limit.
    pub faults: Family<FaultLabels, Counter>,
    /// Component activations (deploy or restart) and how long they took.
    pub activation: Family<ComponentLabel, Histogram, fn() -> Histogram>,
    /// Activations that loaded compiled code from disk.
    pub cache_hits: Counter,
    /// Activations that had to compile.
    pub cache_misses: Counter,
}

impl Default for RuntimeMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            instances: Family::default(),
            instances_created: Family::default(),
            faults: Family::default(),
            activation: Family::new_with_constructor(activation_histogram),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        }
    }
}

/// One component's hot-path metric handles, looked up once at load so a
/// request touches no label map.
#[derive(Clone)]
pub(crate) struct ComponentMetrics {
    /// Requests by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub(crate) requests: [Counter; 5],
    pub(crate) latency: Histogram,
    pub(crate) instances: Gauge,
    pub(crate) instances_created: Counter,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl ComponentMetrics {
    /// Counts one response with `status`.
    pub(crate) fn count(&self, status: u16) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.requests[class].inc();
    }
}

impl RuntimeMetrics {
    pub(crate) fn for_component(&self, label: &ComponentLabel) -> ComponentMetrics {
        let requests = STATUS_CLASSES.map(|status| {
            self.requests
                .get_or_create(&RequestLabels {
                    component: label.component.clone(),
                    status,
                })
                .clone()
        });
        ComponentMetrics {
            requests,
            latency: self.latency.get_or_create(label).clone(),
            instances: self.instances.get_or_create(label).clone(),
            instances_created: self.instances_created.get_or_create(label).clone(),
        }
    }

    /// Requests served by `component` since the node started, all statuses.
    pub fn requests_for(&self, component: &str) -> u64 {
        STATUS_CLASSES
            .into_iter()
            .map(|status| {
                self.requests
                    .get_or_create(&RequestLabels {
                        component: component.to_string(),
                        status,
                    })
                    .get()
            })
            .sum()
    }

    /// Registers every metric under the `aether` prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "aether_component_requests",
            "Requests served by a component, by status class",
            self.requests.clone(),
        );
        registry.register(
            "aether_component_request_duration_seconds",
            "Time from request to response head",
            self.latency.clone(),
        );
        registry.register(
            "aether_component_instances",
            "Component instances running now",
            self.instances.clone(),
        );
        registry.register(
            "aether_component_instances_created",
            "Component instances created (one per request)",
            self.instances_created.clone(),
        );
        registry.register(
            "aether_component_faults",
            "Instances stopped by a trap, deadline, CPU budget or memory limit, or refused for overload",
            self.faults.clone(),
        );
        registry.register(
            "aether_component_cold_start_seconds",
            "Time to activate a component (load compiled code or compile, then pre-instantiate)",
            self.activation.clone(),
        );
        registry.register(
            "aether_compile_cache_hits",
            "Activations that loaded compiled code from the cache",
            self.cache_hits.clone(),
        );
        registry.register(
            "aether_compile_cache_misses",
            "Activations that compiled the component",
            self.cache_misses.clone(),
        );
    }
}
