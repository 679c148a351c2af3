//! The `incidents` table. The pipeline writes it only through [`apply_snapshots`], which merges
//! monotonically, so transitions may be applied twice or out of order without harm.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemas::{IncidentSnapshot, IncidentStatus, Operator, Severity, Source};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

const COLUMNS: &str = "id, rule_id, rule_name, service_id, metric_type, series_key, labels, \
    department_id, severity, status, operator, threshold, message, value, peak_value, \
    last_value, violation_count, opened_at, last_violation_at, acknowledged_at, in_progress_at, \
    closed_at, resolved_at, source, last_sample_seq, auto_resolve, assignee, created_at, \
    updated_at";

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct IncidentRecord {
    pub id: Uuid,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub service_id: String,
    pub metric_type: String,
    pub series_key: String,
    #[schema(value_type = BTreeMap<String, String>)]
    pub labels: sqlx::types::Json<BTreeMap<String, String>>,
    pub department_id: Option<Uuid>,
    #[sqlx(try_from = "String")]
    pub severity: Severity,
    #[sqlx(try_from = "String")]
    pub status: IncidentStatus,
    #[sqlx(try_from = "String")]
    pub operator: Operator,
    pub threshold: f64,
    pub message: String,
    pub value: f64,
    pub peak_value: f64,
    pub last_value: f64,
    pub violation_count: i64,
    pub opened_at: DateTime<Utc>,
    pub last_violation_at: DateTime<Utc>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    #[sqlx(try_from = "String")]
    pub source: Source,
    #[serde(skip)]
    pub last_sample_seq: i64,
    /// Whether clearing closes the incident, as its rule said when it opened.
    pub auto_resolve: bool,
    /// Who is working the incident; set by people, never by the pipeline.
    pub assignee: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl IncidentRecord {
    /// The engine-owned part of the incident, to restore an open episode.
    pub fn to_snapshot(&self) -> IncidentSnapshot {
        IncidentSnapshot {
            id: self.id,
            rule_id: self.rule_id,
            rule_name: self.rule_name.clone(),
            service_id: self.service_id.clone(),
            metric_type: self.metric_type.clone(),
            series_key: self.series_key.clone(),
            labels: self.labels.0.clone(),
            department_id: self.department_id,
            severity: self.severity,
            operator: self.operator,
            threshold: self.threshold,
            message: self.message.clone(),
            value: self.value,
            peak_value: self.peak_value,
            last_value: self.last_value,
            violation_count: self.violation_count.max(0) as u64,
            opened_at: self.opened_at,
            last_violation_at: self.last_violation_at,
            resolved_at: self.resolved_at,
            source: self.source,
            last_sample_seq: self.last_sample_seq.max(0) as u64,
            auto_resolve: self.auto_resolve,
        }
    }
}

/// Filters of `GET /api/incidents`; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct IncidentFilter {
    pub status: Option<IncidentStatus>,
    pub severity: Option<Severity>,
    pub service_id: Option<String>,
    pub rule_id: Option<Uuid>,
    pub department_id: Option<Uuid>,
    /// Opened at or after.
    pub from: Option<DateTime<Utc>>,
    /// Opened before.
    pub to: Option<DateTime<Utc>>,
    /// A substring of the message, service id or rule name, any case.
    pub search: Option<String>,
    /// Live or backfilled.
    pub source: Option<Source>,
}

/// The text `search` looks in; the same expression is indexed with trigrams.
const SEARCH_TEXT: &str = "(message || ' ' || service_id || ' ' || rule_name)";

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("opened_at", "opened_at"),
    SortField::new("last_violation_at", "last_violation_at"),
    SortField::new("updated_at", "updated_at"),
    SortField::new("severity", crate::SEVERITY_RANK),
    SortField::new("status", "status"),
    SortField::new("service_id", "service_id"),
    SortField::new("peak_value", "peak_value"),
];

/// Newest first.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: true,
};

/// Inserts the incident or merges the snapshot into it: counts, peaks, sequences and times only
/// move forward, a resolution is never undone, and a live snapshot makes the row live. The
/// first resolution of an `auto_resolve` incident also closes it, unless people closed it
/// already. The fields people own (status otherwise, assignee, acknowledgement) are left alone.
/// Returns whether the row was created.
pub async fn apply_snapshot<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    s: &IncidentSnapshot,
) -> Result<bool, sqlx::Error> {
    Ok(!apply_snapshots(executor, &[s]).await?.is_empty())
}

/// [`apply_snapshot`] for each snapshot in turn, in one statement: snapshots of the same
/// incident are merged first, by the same rules. Rows are written in id order, so concurrent
/// writers lock them in the same order. Returns the ids of the rows created.
pub async fn apply_snapshots<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    snapshots: &[&IncidentSnapshot],
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut merged: Vec<Merged> = Vec::with_capacity(snapshots.len());
    let mut slots: std::collections::HashMap<Uuid, usize> = std::collections::HashMap::new();
    for s in snapshots {
        match slots.get(&s.id) {
            Some(&slot) => merged[slot].merge(s),
            None => {
                slots.insert(s.id, merged.len());
                merged.push(Merged::new(s));
            }
        }
    }
    merged.sort_unstable_by_key(|m| m.s.id);
    let rows = || merged.iter().map(|m| &m.s);
    let text = |f: fn(&IncidentSnapshot) -> &str| rows().map(f).collect::<Vec<_>>();
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let written: Vec<(Uuid, bool)> = sqlx::query_as(
        "INSERT INTO incidents (id, rule_id, rule_name, service_id, metric_type, series_key,
             labels, department_id, severity, operator, threshold, message, value, peak_value,
             last_value, violation_count, opened_at, last_violation_at, resolved_at, source,
             last_sample_seq, auto_resolve, status, closed_at)
         SELECT id, rule_id, rule_name, service_id, metric_type, series_key, labels,
                department_id, severity, operator, threshold, message, value, peak_value,
                last_value, violation_count, opened_at, last_violation_at, resolved_at, source,
                last_sample_seq, auto_resolve,
                CASE WHEN closes AND resolved_at IS NOT NULL THEN 'CLOSED' ELSE 'OPEN' END,
                CASE WHEN closes THEN resolved_at END
         FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::jsonb[], $8::uuid[], $9::text[], $10::text[], $11::float8[],
                     $12::text[], $13::float8[], $14::float8[], $15::float8[], $16::int8[],
                     $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::text[],
                     $21::int8[], $22::bool[], $23::bool[])
              WITH ORDINALITY AS s(id, rule_id, rule_name, service_id, metric_type, series_key,
                  labels, department_id, severity, operator, threshold, message, value,
                  peak_value, last_value, violation_count, opened_at, last_violation_at,
                  resolved_at, source, last_sample_seq, auto_resolve, closes, n)
         ORDER BY n
         ON CONFLICT (id) DO UPDATE SET
             -- EXCLUDED.status is CLOSED, and EXCLUDED.closed_at set, when the snapshot's
             -- resolution closes the incident.
             status = CASE WHEN EXCLUDED.status = 'CLOSED' AND incidents.resolved_at IS NULL
                           THEN 'CLOSED' ELSE incidents.status END,
             closed_at = CASE WHEN EXCLUDED.closed_at IS NOT NULL
                                   AND incidents.resolved_at IS NULL
                                   AND incidents.status <> 'CLOSED'
                              THEN EXCLUDED.closed_at ELSE incidents.closed_at END,
             peak_value = CASE WHEN incidents.operator IN ('<', '<=')
                               THEN LEAST(incidents.peak_value, EXCLUDED.peak_value)
                               ELSE GREATEST(incidents.peak_value, EXCLUDED.peak_value) END,
             last_value = CASE WHEN EXCLUDED.last_sample_seq >= incidents.last_sample_seq
                               THEN EXCLUDED.last_value ELSE incidents.last_value END,
             violation_count = GREATEST(incidents.violation_count, EXCLUDED.violation_count),
             last_violation_at = GREATEST(incidents.last_violation_at, EXCLUDED.last_violation_at),
             resolved_at = COALESCE(incidents.resolved_at, EXCLUDED.resolved_at),
             last_sample_seq = GREATEST(incidents.last_sample_seq, EXCLUDED.last_sample_seq),
             -- A live transition makes a backfilled row live: the evaluator restores it then.
             source = CASE WHEN EXCLUDED.source = 'live' THEN 'live' ELSE incidents.source END,
             updated_at = now()
         RETURNING id, (xmax = 0)",
    )
    .bind(rows().map(|s| s.id).collect::<Vec<_>>())
    .bind(rows().map(|s| s.rule_id).collect::<Vec<_>>())
    .bind(text(|s| &s.rule_name))
    .bind(text(|s| &s.service_id))
    .bind(text(|s| &s.metric_type))
    .bind(text(|s| &s.series_key))
    .bind(
        rows()
            .map(|s| sqlx::types::Json(&s.labels))
            .collect::<Vec<_>>(),
    )
    .bind(rows().map(|s| s.department_id).collect::<Vec<_>>())
    .bind(text(|s| s.severity.as_str()))
    .bind(text(|s| s.operator.as_str()))
    .bind(rows().map(|s| s.threshold).collect::<Vec<_>>())
    .bind(text(|s| &s.message))
    .bind(rows().map(|s| s.value).collect::<Vec<_>>())
    .bind(rows().map(|s| s.peak_value).collect::<Vec<_>>())
    .bind(rows().map(|s| s.last_value).collect::<Vec<_>>())
    .bind(rows().map(|s| count(s.violation_count)).collect::<Vec<_>>())
    .bind(rows().map(|s| s.opened_at).collect::<Vec<_>>())
    .bind(rows().map(|s| s.last_violation_at).collect::<Vec<_>>())
    .bind(rows().map(|s| s.resolved_at).collect::<Vec<_>>())
    .bind(text(|s| s.source.as_str()))
    .bind(rows().map(|s| count(s.last_sample_seq)).collect::<Vec<_>>())
    .bind(rows().map(|s| s.auto_resolve).collect::<Vec<_>>())
    .bind(merged.iter().map(|m| m.closes).collect::<Vec<_>>())
    .fetch_all(executor)
    .await?;
    Ok(written
        .into_iter()
        .filter_map(|(id, created)| created.then_some(id))
        .collect())
}

/// Snapshots of one incident merged as the upsert of [`apply_snapshots`] merges them into a
/// row, so that writing the result once equals writing each in turn. The operator is fixed at
/// opening, so the peak is merged by the first snapshot's.
struct Merged {
    s: IncidentSnapshot,
    /// Whether the resolution closes the incident: `auto_resolve` of the snapshot that brought
    /// the first resolution (it can differ from the first snapshot's after a rule change).
    closes: bool,
}

impl Merged {
    fn new(s: &IncidentSnapshot) -> Merged {
        Merged {
            s: s.clone(),
            closes: s.auto_resolve,
        }
    }

    fn merge(&mut self, next: &IncidentSnapshot) {
        let s = &mut self.s;
        s.peak_value = match s.operator {
            Operator::Lt | Operator::Le => s.peak_value.min(next.peak_value),
            _ => s.peak_value.max(next.peak_value),
        };
        if next.last_sample_seq >= s.last_sample_seq {
            s.last_value = next.last_value;
        }
        s.violation_count = s.violation_count.max(next.violation_count);
        s.last_violation_at = s.last_violation_at.max(next.last_violation_at);
        if s.resolved_at.is_none() && next.resolved_at.is_some() {
            s.resolved_at = next.resolved_at;
            self.closes = next.auto_resolve;
        }
        s.last_sample_seq = s.last_sample_seq.max(next.last_sample_seq);
        if next.source == Source::Live {
            s.source = Source::Live;
        }
    }
}

/// Unresolved live incidents: the open episodes an evaluator restores at start-up.
pub async fn unresolved_live(pool: &PgPool) -> Result<Vec<IncidentRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM incidents WHERE resolved_at IS NULL AND source = 'live'"
    ))
    .fetch_all(pool)
    .await
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<IncidentRecord>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM incidents WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// The incident, locked until the transaction ends, so that people's changes to it apply one
/// after the other and the pipeline's merges wait for them.
pub async fn lock(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
) -> Result<Option<IncidentRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM incidents WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(tx)
    .await
}

/// The fields people change while working an incident, as they should be after a change.
#[derive(Debug, Clone, PartialEq)]
pub struct Work {
    pub status: IncidentStatus,
    pub severity: Severity,
    pub assignee: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
    pub in_progress_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
}

impl Work {
    pub fn of(incident: &IncidentRecord) -> Work {
        Work {
            status: incident.status,
            severity: incident.severity,
            assignee: incident.assignee.clone(),
            acknowledged_at: incident.acknowledged_at,
            in_progress_at: incident.in_progress_at,
            closed_at: incident.closed_at,
        }
    }
}

/// Writes the people-owned fields of a (locked) incident and returns the updated row.
pub async fn set_work(
    tx: &mut sqlx::PgConnection,
    id: Uuid,
    work: &Work,
) -> Result<IncidentRecord, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE incidents SET status = $2, severity = $3, assignee = $4, acknowledged_at = $5,
             in_progress_at = $6, closed_at = $7, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(work.status.as_str())
    .bind(work.severity.as_str())
    .bind(&work.assignee)
    .bind(work.acknowledged_at)
    .bind(work.in_progress_at)
    .bind(work.closed_at)
    .fetch_one(tx)
    .await
}

/// Whether the incident exists.
pub async fn exists<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM incidents WHERE id = $1)")
        .bind(id)
        .fetch_one(executor)
        .await
}

/// One page in the given order, with the total number of matches.
pub async fn list(
    pool: &PgPool,
    filter: &IncidentFilter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<IncidentRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM incidents"));
    push_filter(&mut query, filter);
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;

    let mut count = QueryBuilder::new("SELECT count(*) FROM incidents");
    push_filter(&mut count, filter);
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

/// The query plans of [`list`]'s page and count queries, as `EXPLAIN (FORMAT JSON)` gives
/// them: how operators and tests check that the filters use indexes.
pub async fn list_plans(
    pool: &PgPool,
    filter: &IncidentFilter,
    sort: Sort,
    page: Page,
) -> Result<[serde_json::Value; 2], sqlx::Error> {
    let mut query = QueryBuilder::new(format!(
        "EXPLAIN (FORMAT JSON) SELECT {COLUMNS} FROM incidents"
    ));
    push_filter(&mut query, filter);
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_scalar().fetch_one(pool).await?;
    let mut count = QueryBuilder::new("EXPLAIN (FORMAT JSON) SELECT count(*) FROM incidents");
    push_filter(&mut count, filter);
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok([rows, total])
}

fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &IncidentFilter) {
    let mut sep = " WHERE ";
    let mut clause = |query: &mut QueryBuilder<'_, Postgres>, condition: &str| {
        query.push(sep).push(condition);
        sep = " AND ";
    };
    if let Some(status) = filter.status {
        clause(query, "status = ");
        query.push_bind(status.as_str());
    }
    if let Some(severity) = filter.severity {
        clause(query, "severity = ");
        query.push_bind(severity.as_str());
    }
    if let Some(source) = filter.source {
        clause(query, "source = ");
        query.push_bind(source.as_str());
    }
    if let Some(service_id) = &filter.service_id {
        clause(query, "service_id = ");
        query.push_bind(service_id.clone());
    }
    if let Some(rule_id) = filter.rule_id {
        clause(query, "rule_id = ");
        query.push_bind(rule_id);
    }
    if let Some(department_id) = filter.department_id {
        clause(query, "department_id = ");
        query.push_bind(department_id);
    }
    if let Some(from) = filter.from {
        clause(query, "opened_at >= ");
        query.push_bind(from);
    }
    if let Some(to) = filter.to {
        clause(query, "opened_at < ");
        query.push_bind(to);
    }
    if let Some(search) = &filter.search {
        clause(query, SEARCH_TEXT);
        query.push(" ILIKE ").push_bind(like_pattern(search));
    }
}

/// `%text%` with the LIKE wildcards in `text` taken literally.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Which of `ids` are resolved, and when.
pub async fn resolved_among(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, resolved_at FROM incidents WHERE id = ANY($1) AND resolved_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// Live incidents that are unresolved or resolved at or after `since`: the recent history a
/// restarted evaluator rebuilds its state against.
pub async fn live_recent(
    pool: &PgPool,
    since: DateTime<Utc>,
) -> Result<Vec<IncidentRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM incidents
         WHERE source = 'live' AND (resolved_at IS NULL OR resolved_at >= $1)"
    ))
    .bind(since)
    .fetch_all(pool)
    .await
}

/// Per (rule, series), the highest sample sequence applied to a live incident, for every series
/// touched after sample sequence `after`.
pub async fn live_watermarks_after(
    pool: &PgPool,
    after: u64,
) -> Result<Vec<(Uuid, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rule_id, series_key, max(last_sample_seq) FROM incidents
         WHERE last_sample_seq > $1 AND source = 'live' GROUP BY rule_id, series_key",
    )
    .bind(i64::try_from(after).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
}

/// Per (rule, series), the event time of the last resolution of a live incident.
pub async fn live_last_resolutions(
    pool: &PgPool,
) -> Result<Vec<(Uuid, String, DateTime<Utc>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rule_id, series_key, max(resolved_at) FROM incidents
         WHERE resolved_at IS NOT NULL AND source = 'live' GROUP BY rule_id, series_key",
    )
    .fetch_all(pool)
    .await
}

/// What a backfill compares its incidents with: an incident's episode and how far it got.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Episode {
    pub id: Uuid,
    pub rule_id: Uuid,
    pub series_key: String,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub peak_value: f64,
    pub violation_count: i64,
    pub last_sample_seq: i64,
}

/// Incidents of `rule_ids`, from any source, that were open at some point in `[from, to]`
/// (either end open when `None`).
pub async fn episodes_between(
    pool: &PgPool,
    rule_ids: &[Uuid],
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<Episode>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, rule_id, series_key, opened_at, resolved_at, peak_value, violation_count,
                last_sample_seq
         FROM incidents
         WHERE rule_id = ANY($1)
           AND ($2::timestamptz IS NULL OR resolved_at IS NULL OR resolved_at >= $2)
           AND ($3::timestamptz IS NULL OR opened_at <= $3)",
    )
    .bind(rule_ids)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_wildcards_are_taken_literally() {
        assert_eq!(like_pattern("50%_a\\b"), "%50\\%\\_a\\\\b%");
        assert_eq!(like_pattern("latency"), "%latency%");
    }
}
