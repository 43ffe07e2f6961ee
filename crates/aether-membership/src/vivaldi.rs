//! Vivaldi network coordinates, as in Serf (`hashicorp/serf/coordinate`).
//!
//! Every node keeps a coordinate: an 8-dimensional Euclidean vector, a non-negative **height**
//! (the access-link latency that no direction can explain) and an **adjustment** (a local
//! correction learned from recent errors). The estimated RTT between `a` and `b` is
//! `|a.vec − b.vec| + a.height + b.height`, plus `a.adjustment + b.adjustment` when that sum
//! stays positive. All quantities are in seconds.
//!
//! On each RTT sample `rtt` to a peer with coordinate `other`:
//! 1. the sample goes through a per-peer **latency filter**: the median of the last
//!    [`LATENCY_FILTER_SIZE`] samples is used, which rejects single outliers;
//! 2. **Vivaldi step**: with `dist` the current estimate, `wrongness = |dist − rtt| / rtt`,
//!    `weight = error / (error + other.error)`, the local error becomes
//!    `CE·weight·wrongness + error·(1 − CE·weight)` (capped at [`ERROR_MAX`]), and the
//!    coordinate moves along the unit vector from `other` by `CC·weight·(rtt − dist)`; the
//!    height moves by the same force in proportion (floored at [`HEIGHT_MIN`]);
//! 3. **adjustment**: the last [`ADJUSTMENT_WINDOW`] values of `rtt − raw_distance` are kept
//!    and `adjustment = sum / (2·window)`;
//! 4. **gravity**: a force `−(|coord − origin| / GRAVITY_RHO)²` pulls the coordinate toward the
//!    origin so a whole cluster does not drift away.
//!
//! Coordinates received from the network are validated ([`Coordinate::is_valid`]): finite,
//! bounded components, error in `[0, ERROR_MAX]`; invalid ones are refused, and a local
//! coordinate that ever became invalid is reset (Serf does the same).

use std::collections::BTreeMap;
use std::time::Duration;

use rand010::RngExt;

/// Dimensions of the Euclidean part (Serf: 8).
pub const DIMENSIONS: usize = 8;
/// Maximum (and initial) error estimate (Serf `VivaldiErrorMax`: 1.5).
pub const ERROR_MAX: f64 = 1.5;
/// Error-update weight (Serf `VivaldiCE`: 0.25).
pub const CE: f64 = 0.25;
/// Coordinate-update weight (Serf `VivaldiCC`: 0.25).
pub const CC: f64 = 0.25;
/// Adjustment window in samples (Serf `AdjustmentWindowSize`: 20).
pub const ADJUSTMENT_WINDOW: usize = 20;
/// Minimum height in seconds (Serf `HeightMin`: 10 µs).
pub const HEIGHT_MIN: f64 = 10.0e-6;
/// Samples in the per-peer median filter (Serf `LatencyFilterSize`: 3).
pub const LATENCY_FILTER_SIZE: usize = 3;
/// Gravity constant in seconds (Serf `GravityRho`: 150).
pub const GRAVITY_RHO: f64 = 150.0;
/// Largest accepted absolute value of any component, in seconds.
pub const COMPONENT_MAX: f64 = 1.0e4;
const ZERO_THRESHOLD: f64 = 1.0e-6;

/// A Vivaldi coordinate (seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coordinate {
    /// Euclidean part.
    pub vec: [f64; DIMENSIONS],
    /// Confidence: 0 is certain, [`ERROR_MAX`] knows nothing.
    pub error: f64,
    /// Local correction added to distances.
    pub adjustment: f64,
    /// Non-Euclidean access latency.
    pub height: f64,
}

impl Default for Coordinate {
    fn default() -> Self {
        Self {
            vec: [0.0; DIMENSIONS],
            error: ERROR_MAX,
            adjustment: 0.0,
            height: HEIGHT_MIN,
        }
    }
}

impl Coordinate {
    /// Finite, bounded, error within range, height not negative.
    pub fn is_valid(&self) -> bool {
        let ok = |x: f64| x.is_finite() && x.abs() <= COMPONENT_MAX;
        self.vec.iter().all(|x| ok(*x))
            && ok(self.adjustment)
            && ok(self.height)
            && self.height >= 0.0
            && self.error.is_finite()
            && (0.0..=ERROR_MAX).contains(&self.error)
    }

    fn raw_distance(&self, other: &Self) -> f64 {
        magnitude(&diff(&self.vec, &other.vec)) + self.height + other.height
    }

    /// Estimated RTT in seconds.
    pub fn distance_secs(&self, other: &Self) -> f64 {
        let dist = self.raw_distance(other);
        let adjusted = dist + self.adjustment + other.adjustment;
        if adjusted > 0.0 { adjusted } else { dist }
    }

    /// Estimated RTT.
    pub fn estimate_rtt(&self, other: &Self) -> Duration {
        Duration::try_from_secs_f64(self.distance_secs(other).max(0.0)).unwrap_or(Duration::MAX)
    }

    fn apply_force(&mut self, force: f64, other: &Self, rng: &mut impl RngExt) {
        let (unit, mag) = unit_vector_at(&self.vec, &other.vec, rng);
        for (v, u) in self.vec.iter_mut().zip(unit) {
            *v += u * force;
        }
        if mag > ZERO_THRESHOLD {
            self.height =
                ((self.height + other.height) * force / mag + self.height).max(HEIGHT_MIN);
        }
    }
}

fn diff(a: &[f64; DIMENSIONS], b: &[f64; DIMENSIONS]) -> [f64; DIMENSIONS] {
    std::array::from_fn(|i| a[i] - b[i])
}

fn magnitude(v: &[f64; DIMENSIONS]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn unit_vector_at(
    a: &[f64; DIMENSIONS],
    b: &[f64; DIMENSIONS],
    rng: &mut impl RngExt,
) -> ([f64; DIMENSIONS], f64) {
    let mut d = diff(a, b);
    let mag = magnitude(&d);
    if mag > ZERO_THRESHOLD {
        return (d.map(|x| x / mag), mag);
    }
    // Coincident points: push in a random direction.
    for x in &mut d {
        *x = rng.random::<f64>() - 0.5;
    }
    let m = magnitude(&d);
    if m > ZERO_THRESHOLD {
        return (d.map(|x| x / m), 0.0);
    }
    let mut unit = [0.0; DIMENSIONS];
    unit[0] = 1.0;
    (unit, 0.0)
}

/// One node's Vivaldi state: its coordinate, per-peer latency filters and adjustment window.
#[derive(Clone, Debug)]
pub struct Vivaldi<K> {
    coord: Coordinate,
    filters: BTreeMap<K, Vec<f64>>,
    adjustment_samples: [f64; ADJUSTMENT_WINDOW],
    adjustment_index: usize,
    updates: u64,
}

impl<K: Ord + Clone> Default for Vivaldi<K> {
    fn default() -> Self {
        Self {
            coord: Coordinate::default(),
            filters: BTreeMap::new(),
            adjustment_samples: [0.0; ADJUSTMENT_WINDOW],
            adjustment_index: 0,
            updates: 0,
        }
    }
}

impl<K: Ord + Clone> Vivaldi<K> {
    /// The current coordinate.
    pub fn coordinate(&self) -> &Coordinate {
        &self.coord
    }

    /// Number of samples applied.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// Forget a peer's latency filter (when it leaves or dies).
    pub fn forget(&mut self, peer: &K) {
        self.filters.remove(peer);
    }

    /// Apply one RTT sample to `peer` whose coordinate is `other`. Invalid input is ignored;
    /// returns whether the sample was applied.
    pub fn update(
        &mut self,
        peer: &K,
        other: &Coordinate,
        rtt: Duration,
        rng: &mut impl RngExt,
    ) -> bool {
        let rtt = rtt.as_secs_f64();
        if !other.is_valid() || !rtt.is_finite() || rtt > COMPONENT_MAX {
            return false;
        }
        let filter = self.filters.entry(peer.clone()).or_default();
        filter.push(rtt);
        if filter.len() > LATENCY_FILTER_SIZE {
            filter.remove(0);
        }
        let mut sorted = filter.clone();
        sorted.sort_by(f64::total_cmp);
        let rtt = sorted[sorted.len() / 2];

        self.update_vivaldi(other, rtt, rng);
        self.update_adjustment(other, rtt);
        self.update_gravity(rng);
        if !self.coord.is_valid() {
            self.coord = Coordinate::default();
        }
        self.updates += 1;
        true
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt: f64, rng: &mut impl RngExt) {
        let rtt = rtt.max(ZERO_THRESHOLD);
        let dist = self.coord.distance_secs(other);
        let wrongness = (dist - rtt).abs() / rtt;
        let total_error = (self.coord.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coord.error / total_error;
        self.coord.error =
            (CE * weight * wrongness + self.coord.error * (1.0 - CE * weight)).min(ERROR_MAX);
        let force = CC * weight * (rtt - dist);
        self.coord.apply_force(force, other, rng);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        self.adjustment_samples[self.adjustment_index] = rtt - self.coord.raw_distance(other);
        self.adjustment_index = (self.adjustment_index + 1) % ADJUSTMENT_WINDOW;
        self.coord.adjustment =
            self.adjustment_samples.iter().sum::<f64>() / (2.0 * ADJUSTMENT_WINDOW as f64);
    }

    fn update_gravity(&mut self, rng: &mut impl RngExt) {
        let origin = Coordinate {
            vec: [0.0; DIMENSIONS],
            error: ERROR_MAX,
            adjustment: 0.0,
            height: HEIGHT_MIN,
        };
        let dist = self.coord.distance_secs(&origin);
        let force = -(dist / GRAVITY_RHO).powi(2);
        self.coord.apply_force(force, &origin, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand010::SeedableRng;
    use rand010::rngs::StdRng;

    #[test]
    fn two_nodes_learn_their_distance() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut a = Vivaldi::<u8>::default();
        let mut b = Vivaldi::<u8>::default();
        let rtt = Duration::from_millis(40);
        for _ in 0..200 {
            let cb = *b.coordinate();
            a.update(&1, &cb, rtt, &mut rng);
            let ca = *a.coordinate();
            b.update(&0, &ca, rtt, &mut rng);
        }
        let est = a.coordinate().estimate_rtt(b.coordinate()).as_secs_f64();
        assert!((est - 0.040).abs() < 0.004, "{est}");
        assert!(a.coordinate().error < 0.2);
    }

    #[test]
    fn invalid_input_is_refused() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut a = Vivaldi::<u8>::default();
        let mut bad = Coordinate::default();
        bad.vec[3] = f64::NAN;
        assert!(!a.update(&1, &bad, Duration::from_millis(1), &mut rng));
        bad.vec[3] = 1e9;
        assert!(!a.update(&1, &bad, Duration::from_millis(1), &mut rng));
        assert_eq!(a.coordinate(), &Coordinate::default());
    }

    #[test]
    fn latency_filter_takes_the_median() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut a = Vivaldi::<u8>::default();
        let other = Coordinate::default();
        for ms in [10, 10, 900] {
            a.update(&1, &other, Duration::from_millis(ms), &mut rng);
        }
        assert_eq!(a.filters[&1].len(), 3);
        // The 900 ms outlier did not dominate: the estimate stays near 10 ms.
        let est = a.coordinate().estimate_rtt(&other).as_secs_f64();
        assert!(est < 0.1, "{est}");
    }
}
