//! One series' samples for one rule, in event time, and the aggregate over a sliding window.
//!
//! Samples wait in `pending` until their event time is final (the frontier has passed it);
//! evaluation points are the distinct sample times, taken in order. At point `p` the window
//! holds the samples with time in `(p - width, p]`, or exactly `p` when the width is zero.
//! Each sample moves from `pending` into the window once and leaves it once, and the running
//! sum and sorted values are kept up to date on the way, so evaluating is cheap.

use std::collections::VecDeque;

use schemas::Aggregation;

#[derive(Debug, Clone, Default)]
pub struct Window {
    /// Not yet evaluated, sorted by time.
    pending: VecDeque<(i64, f64)>,
    /// In the window, sorted by time.
    current: VecDeque<(i64, f64)>,
    /// Values of `current`, sorted, for min, max and percentiles only.
    sorted: Vec<f64>,
    /// Neumaier-compensated sum of `current`'s values.
    sum: f64,
    compensation: f64,
}

impl Window {
    /// Adds a sample not yet evaluated. Samples at or before the last evaluated point must not
    /// be added (they are late).
    pub fn push(&mut self, at: i64, value: f64) {
        match self.pending.back() {
            Some(&(last, _)) if last > at => {
                let index = self.pending.partition_point(|&(t, _)| t <= at);
                self.pending.insert(index, (at, value));
            }
            _ => self.pending.push_back((at, value)),
        }
    }

    /// The next evaluation point at or before `frontier`, if any.
    pub fn next_point(&self, frontier: i64) -> Option<i64> {
        self.pending
            .front()
            .map(|&(t, _)| t)
            .filter(|&t| t <= frontier)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Slides the window to end at `point`: takes in pending samples up to it and drops those at
    /// or before `point - width` (for a zero width, those before `point`).
    pub fn slide_to(&mut self, point: i64, width: i64, aggregation: Aggregation) {
        let keep_sorted = aggregation.needs_sorted();
        while let Some(&(t, v)) = self.pending.front() {
            if t > point {
                break;
            }
            self.pending.pop_front();
            self.current.push_back((t, v));
            self.add(v);
            if keep_sorted {
                let index = self.sorted.partition_point(|&x| x < v);
                self.sorted.insert(index, v);
            }
        }
        while let Some(&(t, v)) = self.current.front() {
            let expired = if width == 0 {
                t < point
            } else {
                t <= point - width
            };
            if !expired {
                break;
            }
            self.current.pop_front();
            self.add(-v);
            if keep_sorted {
                let index = self.sorted.partition_point(|&x| x < v);
                self.sorted.remove(index);
            }
        }
        if self.current.is_empty() {
            self.sum = 0.0;
            self.compensation = 0.0;
        }
    }

    fn add(&mut self, v: f64) {
        let t = self.sum + v;
        if self.sum.abs() >= v.abs() {
            self.compensation += (self.sum - t) + v;
        } else {
            self.compensation += (v - t) + self.sum;
        }
        self.sum = t;
    }

    /// The aggregate over the current window; `None` when it has no value (an empty window, or
    /// `rate` without two distinct times).
    pub fn value(&self, aggregation: Aggregation) -> Option<f64> {
        let n = self.current.len();
        if n == 0 {
            return (aggregation == Aggregation::Count).then_some(0.0);
        }
        let sum = self.sum + self.compensation;
        Some(match aggregation {
            Aggregation::Last => self.current[n - 1].1,
            Aggregation::Sum => sum,
            Aggregation::Avg => sum / n as f64,
            Aggregation::Count => n as f64,
            Aggregation::Min => self.sorted[0],
            Aggregation::Max => self.sorted[n - 1],
            Aggregation::Rate => {
                let (t0, v0) = self.current[0];
                let (t1, v1) = self.current[n - 1];
                if t1 == t0 {
                    return None;
                }
                (v1 - v0) / ((t1 - t0) as f64 / 1000.0)
            }
            percentile => nearest_rank(&self.sorted, percentile.quantile()),
        })
    }

    /// Samples held, pending or in the window.
    pub fn len(&self) -> usize {
        self.pending.len() + self.current.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held, for the state-size benchmark.
    pub fn heap_bytes(&self) -> usize {
        (self.pending.capacity() + self.current.capacity()) * std::mem::size_of::<(i64, f64)>()
            + self.sorted.capacity() * std::mem::size_of::<f64>()
    }
}

/// The nearest-rank percentile: the smallest value with at least `q` of the values at or below
/// it.
pub fn nearest_rank(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL: [Aggregation; 11] = [
        Aggregation::Last,
        Aggregation::Avg,
        Aggregation::Min,
        Aggregation::Max,
        Aggregation::Sum,
        Aggregation::Count,
        Aggregation::P50,
        Aggregation::P90,
        Aggregation::P95,
        Aggregation::P99,
        Aggregation::Rate,
    ];

    /// The aggregate computed from scratch over the samples in `(point - width, point]`.
    fn brute_force(
        samples: &[(i64, f64)],
        point: i64,
        width: i64,
        agg: Aggregation,
    ) -> Option<f64> {
        let mut inside: Vec<(i64, f64)> = samples
            .iter()
            .copied()
            .filter(|&(t, _)| {
                t <= point
                    && if width == 0 {
                        t == point
                    } else {
                        t > point - width
                    }
            })
            .collect();
        inside.sort_by_key(|&(t, _)| t);
        let n = inside.len();
        if n == 0 {
            return (agg == Aggregation::Count).then_some(0.0);
        }
        let mut values: Vec<f64> = inside.iter().map(|&(_, v)| v).collect();
        let sum: f64 = values.iter().sum();
        values.sort_by(f64::total_cmp);
        Some(match agg {
            Aggregation::Last => inside[n - 1].1,
            Aggregation::Sum => sum,
            Aggregation::Avg => sum / n as f64,
            Aggregation::Count => n as f64,
            Aggregation::Min => values[0],
            Aggregation::Max => values[n - 1],
            Aggregation::Rate => {
                let ((t0, v0), (t1, v1)) = (inside[0], inside[n - 1]);
                if t0 == t1 {
                    return None;
                }
                (v1 - v0) / ((t1 - t0) as f64 / 1000.0)
            }
            p => nearest_rank(&values, p.quantile()),
        })
    }

    fn close(a: Option<f64>, b: Option<f64>, scale: f64) -> bool {
        match (a, b) {
            (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * scale.max(1.0),
            (None, None) => true,
            _ => false,
        }
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(nearest_rank(&sorted, 0.5), 10.0);
        assert_eq!(nearest_rank(&sorted, 0.95), 19.0);
        assert_eq!(nearest_rank(&sorted, 0.99), 20.0);
        assert_eq!(nearest_rank(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn a_zero_width_window_holds_the_samples_at_the_point() {
        let mut w = Window::default();
        w.push(1_000, 5.0);
        w.push(2_000, 7.0);
        w.slide_to(1_000, 0, Aggregation::Last);
        assert_eq!(w.value(Aggregation::Last), Some(5.0));
        w.slide_to(2_000, 0, Aggregation::Last);
        assert_eq!(w.value(Aggregation::Last), Some(7.0));
        assert_eq!(w.len(), 1);
    }

    proptest! {
        /// Every aggregate, at every evaluation point, equals a computation from scratch.
        #[test]
        fn aggregates_equal_brute_force(
            samples in proptest::collection::vec((0i64..600_000, -1e6f64..1e6), 1..120),
            width in prop_oneof![Just(0i64), 1i64..300_000],
            agg_index in 0usize..ALL.len(),
        ) {
            let agg = ALL[agg_index];
            let mut window = Window::default();
            for &(t, v) in &samples {
                window.push(t, v);
            }
            let scale: f64 = samples.iter().map(|&(_, v)| v.abs()).sum();
            let mut points: Vec<i64> = samples.iter().map(|&(t, _)| t).collect();
            points.sort_unstable();
            points.dedup();
            for point in points {
                prop_assert_eq!(window.next_point(i64::MAX), Some(point));
                window.slide_to(point, width, agg);
                let want = brute_force(&samples, point, width, agg);
                let got = window.value(agg);
                let scale = if agg == Aggregation::Rate { scale * 1000.0 } else { scale };
                prop_assert!(close(got, want, scale), "{agg:?} at {point}: got {got:?}, want {want:?}");
            }
            prop_assert!(!window.has_pending());
        }
    }
}
