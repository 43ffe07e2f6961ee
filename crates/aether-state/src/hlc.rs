//! Hybrid logical clock.

use std::fmt;

/// Default bound on how far a remote timestamp may be ahead of the local
/// physical clock before it is refused: 500 ms.
///
/// NTP-synchronised hosts are normally within a few tens of milliseconds of
/// each other; 500 ms leaves room for a badly synchronised host while keeping
/// a node with a runaway clock from dragging every HLC in the lattice into the
/// future. A refusal is not final: the same update is accepted later (for
/// example by anti-entropy) once the receiver's clock has caught up.
pub const DEFAULT_MAX_FORWARD_SKEW_MS: u64 = 500;

/// An HLC timestamp: physical milliseconds and a logical counter.
///
/// Timestamps are totally ordered, physical time first. There is no node
/// tie-break inside the timestamp: equal timestamps are resolved by the merge
/// rule (signatures), see the crate docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch (as told by the caller).
    pub physical_ms: u64,
    /// Counter ordering events within one millisecond.
    pub logical: u32,
}

impl Timestamp {
    /// A timestamp from its two parts.
    pub const fn new(physical_ms: u64, logical: u32) -> Self {
        Self {
            physical_ms,
            logical,
        }
    }

    /// The smallest timestamp strictly greater than `self`.
    fn successor(self) -> Self {
        match self.logical.checked_add(1) {
            Some(logical) => Self::new(self.physical_ms, logical),
            // 2^32 events in one millisecond: borrow the next millisecond.
            None => Self::new(self.physical_ms.saturating_add(1), 0),
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.physical_ms, self.logical)
    }
}

/// Errors of [`Hlc::observe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The remote timestamp is further ahead of local time than the tolerance.
    #[error(
        "remote timestamp {remote} is more than {tolerance_ms} ms ahead of local time {now_ms}"
    )]
    TooFarAhead {
        /// The refused timestamp.
        remote: Timestamp,
        /// Local physical time when it was refused.
        now_ms: u64,
        /// The configured tolerance.
        tolerance_ms: u64,
    },
}

/// A hybrid logical clock (Kulkarni et al.): never goes backwards, stays
/// close to physical time, and orders every event after everything it has
/// observed. Time is always an argument (sans-IO).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hlc {
    last: Timestamp,
    max_forward_skew_ms: u64,
}

impl Default for Hlc {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FORWARD_SKEW_MS)
    }
}

impl Hlc {
    /// A clock refusing remote timestamps more than `max_forward_skew_ms`
    /// ahead of local time.
    pub fn new(max_forward_skew_ms: u64) -> Self {
        Self {
            last: Timestamp::default(),
            max_forward_skew_ms,
        }
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> Timestamp {
        self.last
    }

    /// The configured tolerance.
    pub fn max_forward_skew_ms(&self) -> u64 {
        self.max_forward_skew_ms
    }

    /// A timestamp for a local event at physical time `now_ms`: strictly
    /// greater than every timestamp issued or observed before.
    pub fn tick(&mut self, now_ms: u64) -> Timestamp {
        let next = if now_ms > self.last.physical_ms {
            Timestamp::new(now_ms, 0)
        } else {
            self.last.successor()
        };
        self.last = next;
        next
    }

    /// Checks `remote` against the tolerance without changing the clock.
    pub fn check(&self, remote: Timestamp, now_ms: u64) -> Result<(), ClockError> {
        if remote.physical_ms > now_ms.saturating_add(self.max_forward_skew_ms) {
            return Err(ClockError::TooFarAhead {
                remote,
                now_ms,
                tolerance_ms: self.max_forward_skew_ms,
            });
        }
        Ok(())
    }

    /// Advances the clock to at least `seen` without the skew check: for
    /// timestamps of state restored from disk, which were checked when first
    /// accepted. Later ticks are then ordered after them.
    pub fn witness(&mut self, seen: Timestamp) {
        self.last = self.last.max(seen);
    }

    /// Observes a remote timestamp at physical time `now_ms` and returns the
    /// timestamp of the receive event, strictly greater than both `remote`
    /// and everything before. Refuses (and leaves the clock unchanged) when
    /// `remote` is further in the future than the tolerance.
    pub fn observe(&mut self, remote: Timestamp, now_ms: u64) -> Result<Timestamp, ClockError> {
        self.check(remote, now_ms)?;
        self.last = self.last.max(remote);
        Ok(self.tick(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_monotonic_even_if_time_goes_back() {
        let mut c = Hlc::default();
        let a = c.tick(1000);
        let b = c.tick(999);
        let d = c.tick(1000);
        let e = c.tick(1001);
        assert!(a < b && b < d && d < e);
        assert_eq!(e, Timestamp::new(1001, 0));
    }

    #[test]
    fn observe_orders_after_remote_and_refuses_far_future() {
        let mut c = Hlc::new(500);
        c.tick(1000);
        let r = Timestamp::new(1400, 7);
        let t = c.observe(r, 1000).unwrap();
        assert!(t > r);
        let before = c.last();
        assert!(matches!(
            c.observe(Timestamp::new(1501, 0), 1000),
            Err(ClockError::TooFarAhead { .. })
        ));
        assert_eq!(c.last(), before);
    }

    #[test]
    fn logical_overflow_borrows_next_millisecond() {
        let mut c = Hlc::default();
        c.observe(Timestamp::new(10, u32::MAX), 10).unwrap();
        assert!(c.last() > Timestamp::new(10, u32::MAX));
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Every issued timestamp is strictly greater than all issued or
        /// accepted before, whatever the physical clock does.
        #[test]
        fn strictly_increasing(events in proptest::collection::vec((any::<bool>(), 0u64..2000, 0u64..3000, any::<u32>()), 1..100)) {
            let mut c = Hlc::default();
            let mut max = Timestamp::default();
            for (local, now, rphys, rlog) in events {
                let t = if local {
                    c.tick(now)
                } else {
                    let r = Timestamp::new(rphys, rlog);
                    match c.observe(r, now) {
                        Ok(t) => { prop_assert!(t > r); max = max.max(r); t }
                        Err(_) => { prop_assert!(rphys > now + DEFAULT_MAX_FORWARD_SKEW_MS); continue }
                    }
                };
                prop_assert!(t > max);
                prop_assert!(t.physical_ms >= now);
                max = t;
            }
        }
    }
}
