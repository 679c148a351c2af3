//! The `metric_samples` table: raw samples archived from METRICS, keyed by stream sequence so a
//! redelivered sample is stored once. Archiving also folds the samples it newly stored into
//! their per-minute rollups ([`crate::rollups`]) in the same statement, so a rollup counts every
//! stored sample exactly once, whatever is redelivered.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::{Page, Sort, SortField};

/// A decoded sample and where it sits in the METRICS stream.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSample {
    /// METRICS stream sequence: the sample's identity in the archive.
    pub stream_seq: u64,
    pub service_id: String,
    pub metric_type: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
    pub recorded_at: DateTime<Utc>,
    /// The publisher's idempotency key, if it sent one.
    pub sample_id: Option<String>,
}

/// An archived sample as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SampleRecord {
    /// METRICS stream sequence; unique.
    pub stream_seq: i64,
    pub service_id: String,
    pub metric_type: String,
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: sqlx::types::Json<BTreeMap<String, String>>,
    pub value: f64,
    /// Event time.
    pub recorded_at: DateTime<Utc>,
    /// The publisher's idempotency key, or null when it sent none.
    pub id: Option<String>,
}

/// What archiving one batch changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archived {
    /// Samples newly stored (and counted in rollups); the rest were stored before.
    pub inserted: u64,
}

/// Stores the samples not stored before and adds exactly those to their minute rollups, in
/// one statement: a sample already in the table (by stream sequence) is neither stored again
/// nor counted again. Run it inside the caller's transaction to commit with other writes.
pub async fn archive<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    samples: &[NewSample],
) -> Result<Archived, sqlx::Error> {
    let mut seqs = Vec::with_capacity(samples.len());
    let mut services = Vec::with_capacity(samples.len());
    let mut metrics = Vec::with_capacity(samples.len());
    let mut labels = Vec::with_capacity(samples.len());
    let mut values = Vec::with_capacity(samples.len());
    let mut times = Vec::with_capacity(samples.len());
    let mut ids = Vec::with_capacity(samples.len());
    for s in samples {
        seqs.push(i64::try_from(s.stream_seq).unwrap_or(i64::MAX));
        services.push(s.service_id.as_str());
        metrics.push(s.metric_type.as_str());
        labels.push(serde_json::to_string(&s.labels).expect("string maps serialize"));
        values.push(s.value);
        times.push(s.recorded_at);
        ids.push(s.sample_id.as_deref());
    }
    let inserted: i64 = sqlx::query_scalar(
        "WITH input AS (
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[],
                                  $5::float8[], $6::timestamptz[], $7::text[])
                 AS t(stream_seq, service_id, metric_type, labels, value, recorded_at, sample_id)
         ),
         inserted AS (
             INSERT INTO metric_samples
                 (stream_seq, service_id, metric_type, labels, value, recorded_at, sample_id)
             SELECT stream_seq, service_id, metric_type, labels::jsonb, value, recorded_at,
                    sample_id
             FROM input
             -- The same order in every process, so overlapping batches cannot deadlock.
             ORDER BY stream_seq
             ON CONFLICT (stream_seq) DO NOTHING
             RETURNING stream_seq, service_id, metric_type, value, recorded_at
         ),
         per_minute AS (
             SELECT service_id, metric_type,
                    date_bin('1 minute', recorded_at, TIMESTAMPTZ '1970-01-01 00:00:00+00')
                        AS minute,
                    count(*) AS count, sum(value) AS sum, min(value) AS min, max(value) AS max,
                    (array_agg(value ORDER BY recorded_at DESC, stream_seq DESC))[1] AS last,
                    max(recorded_at) AS last_at,
                    (array_agg(stream_seq ORDER BY recorded_at DESC, stream_seq DESC))[1]
                        AS last_seq
             FROM inserted
             GROUP BY 1, 2, 3
         ),
         rolled AS (
             INSERT INTO metric_rollups AS r
                 (service_id, metric_type, minute, count, sum, min, max, last, last_at, last_seq)
             SELECT service_id, metric_type, minute, count, sum, min, max, last, last_at,
                    last_seq
             FROM per_minute
             -- A fixed order, so concurrent archivers lock rollup rows in the same order.
             ORDER BY service_id, metric_type, minute
             ON CONFLICT (service_id, metric_type, minute) DO UPDATE SET
                 count = r.count + EXCLUDED.count,
                 sum = r.sum + EXCLUDED.sum,
                 min = LEAST(r.min, EXCLUDED.min),
                 max = GREATEST(r.max, EXCLUDED.max),
                 last = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_seq) > (r.last_at, r.last_seq)
                             THEN EXCLUDED.last ELSE r.last END,
                 last_seq = CASE WHEN (EXCLUDED.last_at, EXCLUDED.last_seq)
                                      > (r.last_at, r.last_seq)
                                 THEN EXCLUDED.last_seq ELSE r.last_seq END,
                 last_at = GREATEST(r.last_at, EXCLUDED.last_at)
             RETURNING 1
         )
         SELECT count(*) FROM inserted",
    )
    .bind(&seqs)
    .bind(&services)
    .bind(&metrics)
    .bind(&labels)
    .bind(&values)
    .bind(&times)
    .bind(&ids)
    .fetch_one(executor)
    .await?;
    Ok(Archived {
        inserted: inserted.max(0) as u64,
    })
}

/// Deletes up to `limit` samples recorded before `before` whose stream sequence is below
/// `below_seq`, oldest first; returns how many. Called repeatedly, so no single statement holds
/// locks for long. Rollups are kept.
///
/// `below_seq` must be the first sequence still in the METRICS stream: a sample that could
/// still be redelivered must keep its row, or its redelivery would be stored and counted in
/// its rollup again.
pub async fn prune(
    pool: &PgPool,
    before: DateTime<Utc>,
    below_seq: u64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "DELETE FROM metric_samples WHERE stream_seq IN (
             SELECT stream_seq FROM metric_samples WHERE recorded_at < $1 AND stream_seq < $2
             ORDER BY recorded_at LIMIT $3)",
    )
    .bind(before)
    .bind(i64::try_from(below_seq).unwrap_or(i64::MAX))
    .bind(limit)
    .execute(pool)
    .await
    .map(|r| r.rows_affected())
}

/// Filters of `GET /api/metrics`; `None` means any. Shared with [`crate::rollups`].
#[derive(Debug, Clone, Default)]
pub struct MetricFilter {
    pub service_id: Option<String>,
    pub metric_type: Option<String>,
    /// At or after (event time).
    pub from: Option<DateTime<Utc>>,
    /// Before (event time).
    pub to: Option<DateTime<Utc>>,
}

impl MetricFilter {
    /// Appends ` WHERE …` over the given time column.
    pub(crate) fn push(&self, query: &mut QueryBuilder<'_, Postgres>, time_column: &str) {
        let mut sep = " WHERE ";
        if let Some(service_id) = &self.service_id {
            query
                .push(sep)
                .push("service_id = ")
                .push_bind(service_id.clone());
            sep = " AND ";
        }
        if let Some(metric_type) = &self.metric_type {
            query
                .push(sep)
                .push("metric_type = ")
                .push_bind(metric_type.clone());
            sep = " AND ";
        }
        if let Some(from) = self.from {
            query
                .push(sep)
                .push(time_column)
                .push(" >= ")
                .push_bind(from);
            sep = " AND ";
        }
        if let Some(to) = self.to {
            query.push(sep).push(time_column).push(" < ").push_bind(to);
        }
    }
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("recorded_at", "recorded_at"),
    SortField::new("value", "value"),
];

/// Newest first.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: true,
};

/// One page of archived samples in the given order, with the total number of matches.
pub async fn list(
    pool: &PgPool,
    filter: &MetricFilter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<SampleRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(
        "SELECT stream_seq, service_id, metric_type, labels, value, recorded_at,
                sample_id AS id
         FROM metric_samples",
    );
    filter.push(&mut query, "recorded_at");
    sort.push_order_and_page(&mut query, "stream_seq", page);
    let rows = query.build_query_as().fetch_all(pool).await?;

    let mut count = QueryBuilder::new("SELECT count(*) FROM metric_samples");
    filter.push(&mut count, "recorded_at");
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

/// The highest stream sequence archived, if any.
pub async fn highest_sequence(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(stream_seq) FROM metric_samples")
        .fetch_one(pool)
        .await
}
