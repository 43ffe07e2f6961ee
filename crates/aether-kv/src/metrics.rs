//! Prometheus metrics of the lattice state.

use aether_state::SyncCounters;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label: why a received update was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `forged`, `unknown_origin`, `revoked_origin`, `from_the_future`,
    /// `malformed_message`, `oversized_message`, `invalid_message`.
    pub reason: String,
}

/// Handles to every state metric.
#[derive(Debug, Default)]
pub struct KvMetrics {
    entries: Gauge,
    pending: Gauge,
    pending_bytes: Gauge,
    writes: Counter,
    applied: Counter,
    unchanged: Counter,
    dropped: Family<ReasonLabel, Counter>,
    pending_evicted: Counter,
    pending_expired: Counter,
    anti_entropy_rounds: Counter,
    bytes_sent: Counter,
    bytes_received: Counter,
    store_failures: Counter,
    convergence_lag: Gauge<f64, std::sync::atomic::AtomicU64>,
    last: std::sync::Mutex<(SyncCounters, u64)>,
}

impl KvMetrics {
    /// Adds every metric to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry;
        r.register(
            "aether_state_entries",
            "Entries held, tombstones included",
            self.entries.clone(),
        );
        r.register(
            "aether_state_pending",
            "Updates waiting for their causal predecessors",
            self.pending.clone(),
        );
        r.register(
            "aether_state_pending_bytes",
            "Bytes of the updates waiting",
            self.pending_bytes.clone(),
        );
        r.register(
            "aether_state_writes",
            "Writes made on this node",
            self.writes.clone(),
        );
        r.register(
            "aether_state_updates_applied",
            "Received updates that changed the state",
            self.applied.clone(),
        );
        r.register(
            "aether_state_updates_unchanged",
            "Received valid updates already superseded",
            self.unchanged.clone(),
        );
        r.register(
            "aether_state_updates_dropped",
            "Received updates or messages dropped, by reason",
            self.dropped.clone(),
        );
        r.register(
            "aether_state_pending_evicted",
            "Waiting updates evicted because the buffer was full",
            self.pending_evicted.clone(),
        );
        r.register(
            "aether_state_pending_expired",
            "Waiting updates applied at their deadline",
            self.pending_expired.clone(),
        );
        r.register(
            "aether_state_anti_entropy_rounds",
            "Anti-entropy rounds started",
            self.anti_entropy_rounds.clone(),
        );
        r.register(
            "aether_state_sent_bytes",
            "State message bytes sent",
            self.bytes_sent.clone(),
        );
        r.register(
            "aether_state_received_bytes",
            "State message bytes received",
            self.bytes_received.clone(),
        );
        r.register(
            "aether_state_store_failures",
            "Applied updates the disk refused",
            self.store_failures.clone(),
        );
    }

    /// Sets the convergence-lag bound, in seconds.
    pub(crate) fn set_convergence_lag(&self, seconds: f64) {
        self.convergence_lag.set(seconds);
    }

    /// Copies the core's counters in.
    pub(crate) fn update(
        &self,
        c: &SyncCounters,
        entries: usize,
        pending: usize,
        pending_bytes: usize,
        store_failures: u64,
    ) {
        self.entries.set(entries as i64);
        self.pending.set(pending as i64);
        self.pending_bytes.set(pending_bytes as i64);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (o, old_failures) = &mut *last;
        let d = |new: u64, old: u64| new.saturating_sub(old);
        self.writes.inc_by(d(c.writes, o.writes));
        self.applied.inc_by(d(c.applied, o.applied));
        self.unchanged.inc_by(d(c.unchanged, o.unchanged));
        for (reason, new, old) in [
            ("forged", c.forged, o.forged),
            ("unknown_origin", c.unknown_origin, o.unknown_origin),
            ("revoked_origin", c.revoked_origin, o.revoked_origin),
            ("from_the_future", c.from_the_future, o.from_the_future),
            (
                "malformed_message",
                c.malformed_messages,
                o.malformed_messages,
            ),
            (
                "oversized_message",
                c.oversized_messages,
                o.oversized_messages,
            ),
            ("invalid_message", c.invalid_messages, o.invalid_messages),
        ] {
            self.dropped
                .get_or_create(&ReasonLabel {
                    reason: reason.to_string(),
                })
                .inc_by(d(new, old));
        }
        self.pending_evicted
            .inc_by(d(c.pending_evicted, o.pending_evicted));
        self.pending_expired
            .inc_by(d(c.pending_expired, o.pending_expired));
        self.anti_entropy_rounds
            .inc_by(d(c.ae_rounds_started, o.ae_rounds_started));
        self.bytes_sent.inc_by(d(c.bytes_sent, o.bytes_sent));
        self.bytes_received
            .inc_by(d(c.bytes_received, o.bytes_received));
        self.store_failures.inc_by(d(store_failures, *old_failures));
        *o = *c;
        *old_failures = store_failures;
    }
}
