//! Per-second points for live charts: samples of the services a page shows, summed up per
//! series and second of event time, so a busy service costs the browser one point a second.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemas::MetricSample;
use serde::Serialize;

/// Most points kept between two flushes; beyond it samples are counted as dropped.
pub const MAX_POINTS: usize = 5_000;

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Point {
    pub service_id: String,
    pub metric_type: String,
    /// The start of the second, in event time.
    pub t: DateTime<Utc>,
    pub count: u64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    /// The value of the latest sample in the second.
    pub last: f64,
}

#[derive(Debug, Clone, Copy)]
struct Sums {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_at: DateTime<Utc>,
}

/// Samples gathered since the last flush.
#[derive(Debug, Default)]
pub struct Points {
    seconds: BTreeMap<(String, String, i64), Sums>,
    dropped: u64,
}

impl Points {
    pub fn add(&mut self, sample: &MetricSample) {
        let second = sample.recorded_at.timestamp();
        let key = (
            sample.service_id.clone(),
            sample.metric_type.clone(),
            second,
        );
        if let Some(sums) = self.seconds.get_mut(&key) {
            sums.count += 1;
            sums.sum += sample.value;
            sums.min = sums.min.min(sample.value);
            sums.max = sums.max.max(sample.value);
            if sample.recorded_at >= sums.last_at {
                sums.last = sample.value;
                sums.last_at = sample.recorded_at;
            }
            return;
        }
        if self.seconds.len() >= MAX_POINTS {
            self.dropped += 1;
            return;
        }
        self.seconds.insert(
            key,
            Sums {
                count: 1,
                sum: sample.value,
                min: sample.value,
                max: sample.value,
                last: sample.value,
                last_at: sample.recorded_at,
            },
        );
    }

    /// The points gathered, by series and then time, and how many samples did not fit.
    pub fn take(&mut self) -> (Vec<Point>, u64) {
        let points = std::mem::take(&mut self.seconds)
            .into_iter()
            .map(|((service_id, metric_type, second), s)| Point {
                service_id,
                metric_type,
                t: DateTime::from_timestamp(second, 0).unwrap_or_default(),
                count: s.count,
                avg: s.sum / s.count as f64,
                min: s.min,
                max: s.max,
                last: s.last,
            })
            .collect();
        (points, std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(service: &str, ms: i64, value: f64) -> MetricSample {
        MetricSample {
            service_id: service.to_owned(),
            metric_type: "LATENCY_MS".to_owned(),
            value,
            recorded_at: DateTime::from_timestamp_millis(ms).unwrap(),
            id: None,
            labels: Default::default(),
        }
    }

    #[test]
    fn samples_are_summed_per_series_and_second_of_event_time() {
        let mut points = Points::default();
        // Out of order within the second: `last` is the latest in event time.
        points.add(&sample("a", 10_900, 30.0));
        points.add(&sample("a", 10_100, 10.0));
        points.add(&sample("a", 10_500, 20.0));
        points.add(&sample("a", 11_000, 5.0));
        points.add(&sample("b", 10_000, 7.0));
        let (taken, dropped) = points.take();
        assert_eq!(dropped, 0);
        assert_eq!(taken.len(), 3);
        let first = &taken[0];
        assert_eq!((first.service_id.as_str(), first.t.timestamp()), ("a", 10));
        assert_eq!(first.count, 3);
        assert_eq!(
            (first.min, first.max, first.avg, first.last),
            (10.0, 30.0, 20.0, 30.0)
        );
        assert_eq!((taken[1].t.timestamp(), taken[1].last), (11, 5.0));
        assert_eq!(taken[2].service_id, "b");
        assert!(points.take().0.is_empty(), "a flush empties the points");
    }

    #[test]
    fn beyond_the_cap_samples_are_counted_as_dropped() {
        let mut points = Points::default();
        for i in 0..(MAX_POINTS as i64 + 3) {
            points.add(&sample("a", i * 1000, 1.0));
        }
        // A second already held still takes samples.
        points.add(&sample("a", 0, 2.0));
        let (taken, dropped) = points.take();
        assert_eq!((taken.len(), dropped), (MAX_POINTS, 3));
        assert_eq!(taken[0].count, 2);
    }
}
