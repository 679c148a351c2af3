//! The `metric_rollups` table: per service, metric and minute of event time, the count, sum,
//! minimum, maximum and last value of the archived samples. Written only by
//! [`crate::samples::archive`]; charts and the `1m` resolution of the metrics list read it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, QueryBuilder};

use crate::samples::MetricFilter;
use crate::{Page, Sort, SortField};

/// One minute of one series, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct RollupRecord {
    pub service_id: String,
    pub metric_type: String,
    /// Start of the minute (UTC).
    pub minute: DateTime<Utc>,
    /// Samples recorded in the minute.
    pub count: i64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    /// The value of the latest sample in the minute (by event time, then stream order).
    pub last: f64,
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("minute", "minute"),
    SortField::new("count", "count"),
    SortField::new("avg", "(sum / count)"),
    SortField::new("min", "min"),
    SortField::new("max", "max"),
    SortField::new("last", "last"),
];

/// Newest first.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: true,
};

/// One page of minute rollups in the given order, with the total number of matches. `from`
/// and `to` apply to the start of the minute.
pub async fn list(
    pool: &PgPool,
    filter: &MetricFilter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<RollupRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(
        "SELECT service_id, metric_type, minute, count, sum / count AS avg, min, max, last
         FROM metric_rollups",
    );
    filter.push(&mut query, "minute");
    sort.push_order_and_page(&mut query, "service_id, metric_type, minute", page);
    let rows = query.build_query_as().fetch_all(pool).await?;

    let mut count = QueryBuilder::new("SELECT count(*) FROM metric_rollups");
    filter.push(&mut count, "minute");
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

/// One bucket of a chart.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ChartBucket {
    /// Start of the bucket (UTC), aligned to the Unix epoch: a `1h` bucket starts on the hour.
    pub bucket_start: DateTime<Utc>,
    /// Samples in the bucket.
    pub count: i64,
    pub avg: f64,
    pub min: f64,
    pub max: f64,
    /// The last value of the latest minute in the bucket.
    pub last: f64,
}

/// The buckets of `bucket_secs` seconds between `from` and `to` (minutes starting in
/// `[from, to)`), oldest first. Buckets without samples are left out.
pub async fn chart(
    pool: &PgPool,
    service_id: &str,
    metric_type: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<ChartBucket>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {BUCKET_COLUMNS}
         FROM metric_rollups
         WHERE service_id = $1 AND metric_type = $2 AND minute >= $3 AND minute < $4
         GROUP BY 1
         ORDER BY 1",
        BUCKET_COLUMNS = bucket_columns("$5")
    ))
    .bind(service_id)
    .bind(metric_type)
    .bind(from)
    .bind(to)
    .bind(bucket_secs as f64)
    .fetch_all(pool)
    .await
}

/// The columns of a [`ChartBucket`], summing minutes into buckets of `seconds` (a bind
/// parameter) seconds aligned to the Unix epoch; the bucket start must be grouped on.
fn bucket_columns(seconds: &str) -> String {
    format!(
        "date_bin(make_interval(secs => {seconds}), minute, TIMESTAMPTZ '1970-01-01 00:00:00+00')
             AS bucket_start,
         sum(count)::bigint AS count,
         sum(sum) / sum(count) AS avg,
         min(min) AS min,
         max(max) AS max,
         (array_agg(last ORDER BY minute DESC))[1] AS last"
    )
}

/// One series' chart among many.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SeriesChart {
    pub service_id: String,
    pub metric_type: String,
    /// Non-empty buckets, oldest first, as [`chart`] gives them.
    pub buckets: Vec<ChartBucket>,
}

/// [`chart`] for every metric of each of `service_ids` at once, by service and then metric.
pub async fn charts(
    pool: &PgPool,
    service_ids: &[String],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    bucket_secs: i64,
) -> Result<Vec<SeriesChart>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        service_id: String,
        metric_type: String,
        #[sqlx(flatten)]
        bucket: ChartBucket,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT service_id, metric_type, {BUCKET_COLUMNS}
         FROM metric_rollups
         WHERE service_id = ANY($1) AND minute >= $2 AND minute < $3
         GROUP BY 1, 2, 3
         ORDER BY 1, 2, 3",
        BUCKET_COLUMNS = bucket_columns("$4")
    ))
    .bind(service_ids)
    .bind(from)
    .bind(to)
    .bind(bucket_secs as f64)
    .fetch_all(pool)
    .await?;
    let mut charts: Vec<SeriesChart> = Vec::new();
    for row in rows {
        match charts.last_mut() {
            Some(last)
                if last.service_id == row.service_id && last.metric_type == row.metric_type =>
            {
                last.buckets.push(row.bucket)
            }
            _ => charts.push(SeriesChart {
                service_id: row.service_id,
                metric_type: row.metric_type,
                buckets: vec![row.bucket],
            }),
        }
    }
    Ok(charts)
}
