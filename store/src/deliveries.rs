//! The delivery log: what each channel was told (`deliveries` and their `delivery_items`) and
//! every attempt to send it (`delivery_attempts`). The notifier writes deliveries; the sender
//! claims, attempts and finishes them. Every write is idempotent or guarded by a lease, so
//! redelivered messages and competing processes never send a delivery twice at once.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Collecting items until `due_at`.
    Grouping,
    /// Waiting for its first or next attempt, or being attempted.
    Sending,
    Delivered,
    /// Gave up after the last attempt, or on a failure that retrying cannot fix.
    Failed,
    /// A silence covered it; nothing was sent.
    Suppressed,
    /// Its channel was deleted or disabled before it was sent.
    Cancelled,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Grouping => "grouping",
            DeliveryState::Sending => "sending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Suppressed => "suppressed",
            DeliveryState::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Grouping,
            DeliveryState::Sending,
            DeliveryState::Delivered,
            DeliveryState::Failed,
            DeliveryState::Suppressed,
            DeliveryState::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, DeliveryState::Grouping | DeliveryState::Sending)
    }
}

impl std::str::FromStr for DeliveryState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        DeliveryState::parse(s).ok_or_else(|| {
            format!(
                "{s:?} is not one of grouping, sending, delivered, failed, suppressed, cancelled"
            )
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct DeliveryRecord {
    /// Also the `Idempotency-Key` of every request that sends it.
    pub id: Uuid,
    pub channel_id: Option<Uuid>,
    pub channel_kind: String,
    pub channel_name: String,
    pub department_id: Option<Uuid>,
    pub service_id: String,
    /// `grouping`, `sending`, `delivered`, `failed`, `suppressed` or `cancelled`.
    pub state: String,
    /// The silence that suppressed it.
    pub silence_id: Option<Uuid>,
    /// When it may first be sent (the end of its grouping wait).
    pub due_at: DateTime<Utc>,
    pub attempts: i32,
    /// HTTP status of the last attempt, if it got one.
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl DeliveryRecord {
    pub fn state(&self) -> DeliveryState {
        DeliveryState::parse(&self.state).unwrap_or(DeliveryState::Failed)
    }
}

const COLUMNS: &str = "id, channel_id, channel_kind, channel_name, department_id, service_id, \
                       state, silence_id, due_at, attempts, last_status, last_error, created_at, \
                       finished_at";

/// A delivery to create.
#[derive(Debug, Clone)]
pub struct NewDelivery<'a> {
    pub id: Uuid,
    pub channel_id: Uuid,
    pub channel_kind: &'a str,
    pub channel_name: &'a str,
    pub department_id: Uuid,
    pub service_id: &'a str,
    pub state: DeliveryState,
    pub silence_id: Option<Uuid>,
    pub due_at: DateTime<Utc>,
}

/// Creates the delivery; returns false when it is a group and the channel already has one
/// collecting for the service (another notifier made it first).
pub async fn create<'e>(
    executor: impl PgExecutor<'e>,
    d: &NewDelivery<'_>,
) -> Result<bool, sqlx::Error> {
    let finished = d.state.is_finished();
    sqlx::query(
        "INSERT INTO deliveries (id, channel_id, channel_kind, channel_name, department_id,
                                 service_id, state, silence_id, due_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, CASE WHEN $10 THEN now() END)
         ON CONFLICT (channel_id, service_id) WHERE state = 'grouping' DO NOTHING",
    )
    .bind(d.id)
    .bind(d.channel_id)
    .bind(d.channel_kind)
    .bind(d.channel_name)
    .bind(d.department_id)
    .bind(d.service_id)
    .bind(d.state.as_str())
    .bind(d.silence_id)
    .bind(d.due_at)
    .bind(finished)
    .execute(executor)
    .await
    .map(|r| r.rows_affected() == 1)
}

pub async fn delete<'e>(executor: impl PgExecutor<'e>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM deliveries WHERE id = $1")
        .bind(id)
        .execute(executor)
        .await
        .map(|_| ())
}

pub async fn get<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<DeliveryRecord>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM deliveries WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// The channel's delivery for `service_id` that is still collecting items (even one past its
/// `due_at` that no sender has sealed yet), locked for the transaction so that it is not sealed
/// while an item joins it.
pub async fn open_group(
    tx: &mut PgConnection,
    channel_id: Uuid,
    service_id: &str,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM deliveries
         WHERE channel_id = $1 AND service_id = $2 AND state = 'grouping'
         FOR UPDATE",
    )
    .bind(channel_id)
    .bind(service_id)
    .fetch_optional(tx)
    .await
}

/// One event a delivery tells about.
#[derive(Debug, Clone)]
pub struct NewItem<'a> {
    pub channel_id: Uuid,
    /// Identifies the event for this channel: one item per (channel, event) ever.
    pub event_key: &'a str,
    pub delivery_id: Uuid,
    pub incident_id: Uuid,
    pub kind: &'a str,
    pub at: DateTime<Utc>,
    /// The event as the payload carries it, frozen at fan-out.
    pub event: &'a serde_json::Value,
}

/// Adds the item unless the channel already has one for the event; returns whether it did.
pub async fn add_item<'e>(
    executor: impl PgExecutor<'e>,
    item: &NewItem<'_>,
) -> Result<bool, sqlx::Error> {
    sqlx::query(
        "INSERT INTO delivery_items (channel_id, event_key, delivery_id, incident_id, kind, at, event)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(item.channel_id)
    .bind(item.event_key)
    .bind(item.delivery_id)
    .bind(item.incident_id)
    .bind(item.kind)
    .bind(item.at)
    .bind(item.event)
    .execute(executor)
    .await
    .map(|r| r.rows_affected() == 1)
}

/// The delivery that holds the channel's item for an event, and whether it is finished.
pub async fn item_delivery<'e>(
    executor: impl PgExecutor<'e>,
    channel_id: Uuid,
    event_key: &str,
) -> Result<Option<(Uuid, DeliveryState)>, sqlx::Error> {
    let row: Option<(Uuid, String)> = sqlx::query_as(
        "SELECT d.id, d.state FROM delivery_items i JOIN deliveries d ON d.id = i.delivery_id
         WHERE i.channel_id = $1 AND i.event_key = $2",
    )
    .bind(channel_id)
    .bind(event_key)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|(id, state)| {
        (
            id,
            DeliveryState::parse(&state).unwrap_or(DeliveryState::Failed),
        )
    }))
}

/// An item as the sender reads it back.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRecord {
    pub incident_id: Uuid,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub event: serde_json::Value,
}

/// A delivery's items in the order they happened.
pub async fn items<'e>(
    executor: impl PgExecutor<'e>,
    delivery_id: Uuid,
) -> Result<Vec<ItemRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT incident_id, kind, at, event FROM delivery_items
         WHERE delivery_id = $1 ORDER BY at, event_key",
    )
    .bind(delivery_id)
    .fetch_all(executor)
    .await
}

/// A claimed attempt: its number and the exact body to send.
#[derive(Debug, Clone)]
pub struct Claim {
    pub attempt: i32,
    pub body: String,
}

/// Claims the next attempt of an unfinished, due delivery for `lease`: freezes its body (with
/// `build_body` on the first attempt), marks an attempt a crash cut short as `interrupted`, and
/// writes the new attempt as `in_flight` against `target`. `None` when the delivery is finished,
/// not due yet, or leased by another sender.
pub async fn claim(
    tx: &mut PgConnection,
    id: Uuid,
    lease: std::time::Duration,
    target: &str,
    build_body: impl FnOnce(&[ItemRecord]) -> String,
) -> Result<Option<Claim>, sqlx::Error> {
    let row: Option<(Option<String>, i32)> = sqlx::query_as(
        "SELECT body, attempts FROM deliveries
         WHERE id = $1 AND state IN ('grouping', 'sending') AND due_at <= now()
           AND (lease_until IS NULL OR lease_until < now())
         FOR UPDATE SKIP LOCKED",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((body, attempts)) = row else {
        return Ok(None);
    };
    let body = match body {
        Some(body) => body,
        None => build_body(&items(&mut *tx, id).await?),
    };
    let attempt = attempts + 1;
    sqlx::query(
        "UPDATE delivery_attempts SET outcome = 'interrupted', finished_at = now(),
                error = 'the sending process stopped before the outcome was recorded'
         WHERE delivery_id = $1 AND outcome = 'in_flight'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE deliveries SET state = 'sending', body = $2, attempts = $3,
                lease_until = now() + make_interval(secs => $4)
         WHERE id = $1",
    )
    .bind(id)
    .bind(&body)
    .bind(attempt)
    .bind(lease.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO delivery_attempts (delivery_id, attempt, outcome, target)
         VALUES ($1, $2, 'in_flight', $3)",
    )
    .bind(id)
    .bind(attempt)
    .bind(target)
    .execute(&mut *tx)
    .await?;
    Ok(Some(Claim { attempt, body }))
}

/// How one attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptResult<'a> {
    /// `ok`, `http_error`, `timeout`, `network` or `refused`.
    pub outcome: &'a str,
    pub status_code: Option<u16>,
    pub latency: std::time::Duration,
    pub error: Option<&'a str>,
}

/// Records how an attempt ended and moves the delivery on: to `delivered`, to `failed` when
/// `last`, or back to waiting until `retry_after` has passed (the backoff, enforced here so
/// that however many jobs name the delivery, none attempts it sooner). Returns false, writing
/// nothing, when the attempt is no longer the delivery's latest: its lease ran out and another
/// sender took over.
pub async fn finish_attempt(
    tx: &mut PgConnection,
    id: Uuid,
    attempt: i32,
    result: &AttemptResult<'_>,
    last: bool,
    retry_after: std::time::Duration,
) -> Result<bool, sqlx::Error> {
    let status = result.status_code.map(i32::from);
    let latency_ms = i32::try_from(result.latency.as_millis()).unwrap_or(i32::MAX);
    let state = if result.outcome == "ok" {
        DeliveryState::Delivered
    } else if last {
        DeliveryState::Failed
    } else {
        DeliveryState::Sending
    };
    let moved = sqlx::query(
        "UPDATE deliveries SET state = $3, last_status = $4, last_error = $5, lease_until = NULL,
                due_at = CASE WHEN $6 THEN due_at ELSE now() + make_interval(secs => $7) END,
                finished_at = CASE WHEN $6 THEN now() END
         WHERE id = $1 AND attempts = $2 AND state = 'sending'",
    )
    .bind(id)
    .bind(attempt)
    .bind(state.as_str())
    .bind(status)
    .bind(result.error)
    .bind(state.is_finished())
    .bind(retry_after.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if !moved {
        return Ok(false);
    }
    sqlx::query(
        "UPDATE delivery_attempts SET outcome = $3, status_code = $4, latency_ms = $5, error = $6,
                finished_at = now()
         WHERE delivery_id = $1 AND attempt = $2 AND outcome = 'in_flight'",
    )
    .bind(id)
    .bind(attempt)
    .bind(result.outcome)
    .bind(status)
    .bind(latency_ms)
    .bind(result.error)
    .execute(&mut *tx)
    .await?;
    Ok(true)
}

/// Unfinished deliveries whose next attempt is more than `overdue` late and that no sender
/// holds: their job was lost (a crash between commit and publish). At most `limit`.
pub async fn stalled<'e>(
    executor: impl PgExecutor<'e>,
    overdue: std::time::Duration,
    limit: i64,
) -> Result<Vec<(Uuid, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, channel_id FROM deliveries
         WHERE state IN ('grouping', 'sending') AND channel_id IS NOT NULL
           AND due_at < now() - make_interval(secs => $1)
           AND (lease_until IS NULL OR lease_until < now())
         ORDER BY due_at LIMIT $2",
    )
    .bind(overdue.as_secs_f64())
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Records a delivered in-app notification: a finished attempt, written at fan-out.
pub async fn record_in_app_attempt<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH attempt AS (
             INSERT INTO delivery_attempts (delivery_id, attempt, outcome, latency_ms, target, finished_at)
             VALUES ($1, 1, 'ok', 0, 'in_app', now()) ON CONFLICT DO NOTHING)
         UPDATE deliveries SET attempts = 1 WHERE id = $1",
    )
    .bind(id)
    .execute(executor)
    .await
    .map(|_| ())
}

/// Ends a delivery that will not be sent (its channel is gone or disabled).
pub async fn cancel<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE deliveries SET state = 'cancelled', last_error = $2, lease_until = NULL,
                finished_at = now()
         WHERE id = $1 AND state IN ('grouping', 'sending')",
    )
    .bind(id)
    .bind(reason)
    .execute(executor)
    .await
    .map(|_| ())
}

/// One attempt, as the log shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AttemptRecord {
    pub delivery_id: Uuid,
    pub attempt: i32,
    /// `in_flight`, `ok`, `http_error`, `timeout`, `network`, `refused` or `interrupted`.
    pub outcome: String,
    pub status_code: Option<i32>,
    pub latency_ms: Option<i32>,
    pub error: Option<String>,
    /// Where it was sent: scheme, host and port (never the path, which may hold a token).
    pub target: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

pub async fn attempts<'e>(
    executor: impl PgExecutor<'e>,
    delivery_id: Uuid,
) -> Result<Vec<AttemptRecord>, sqlx::Error> {
    sqlx::query_as(
        "SELECT delivery_id, attempt, outcome, status_code, latency_ms, error, target, started_at,
                finished_at
         FROM delivery_attempts WHERE delivery_id = $1 ORDER BY attempt",
    )
    .bind(delivery_id)
    .fetch_all(executor)
    .await
}

/// Deliveries telling about an incident, oldest first.
pub async fn for_incident<'e>(
    executor: impl PgExecutor<'e>,
    incident_id: Uuid,
) -> Result<Vec<DeliveryRecord>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM deliveries WHERE id IN
             (SELECT delivery_id FROM delivery_items WHERE incident_id = $1)
         ORDER BY created_at, id"
    ))
    .bind(incident_id)
    .fetch_all(executor)
    .await
}

/// A reminder that is due: the channel told about the incident's opening at least one repeat
/// interval ago, the incident is still open, and reminder `number` has not been made.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueReminder {
    pub channel_id: Uuid,
    pub incident_id: Uuid,
    pub number: i64,
}

/// Reminders due now, at most `limit`. The count of intervals since the channel was told of the
/// opening numbers them, so each is made once by however many notifiers run.
pub async fn due_reminders<'e>(
    executor: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<DueReminder>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id AS channel_id, i.id AS incident_id, r.number
         FROM incidents i
         JOIN delivery_items o ON o.incident_id = i.id AND o.kind = 'opened'
         JOIN notification_channels c ON c.id = o.channel_id
         CROSS JOIN LATERAL (
             SELECT floor(extract(epoch FROM now() - o.created_at) / c.repeat_interval_secs)::bigint
                 AS number) r
         WHERE i.status = 'OPEN' AND i.resolved_at IS NULL
           AND c.enabled AND c.repeat_interval_secs IS NOT NULL AND r.number >= 1
           AND array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], i.severity)
               >= array_position(ARRAY['LOW', 'MEDIUM', 'HIGH', 'CRITICAL'], c.min_severity)
           AND NOT EXISTS (
               SELECT 1 FROM delivery_items d
               WHERE d.channel_id = c.id AND d.event_key = i.id || ':reminder:' || r.number)
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(executor)
    .await
}

/// Filters of `GET /api/deliveries`; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub incident_id: Option<Uuid>,
    pub channel_id: Option<Uuid>,
    pub department_id: Option<Uuid>,
    pub state: Option<DeliveryState>,
}

pub const SORT_FIELDS: &[crate::SortField] = &[crate::SortField::new("created_at", "created_at")];

/// Newest first.
pub const DEFAULT_SORT: crate::Sort = crate::Sort {
    field: SORT_FIELDS[0],
    descending: true,
};

pub async fn list(
    pool: &sqlx::PgPool,
    filter: &DeliveryFilter,
    sort: crate::Sort,
    page: crate::Page,
) -> Result<(Vec<DeliveryRecord>, i64), sqlx::Error> {
    let mut query = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM deliveries"));
    push_filter(&mut query, filter);
    sort.push_order_and_page(&mut query, "id", page);
    let rows = query.build_query_as().fetch_all(pool).await?;
    let mut count = sqlx::QueryBuilder::new("SELECT count(*) FROM deliveries");
    push_filter(&mut count, filter);
    let total = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows, total))
}

fn push_filter(query: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>, filter: &DeliveryFilter) {
    let mut sep = " WHERE ";
    let mut clause = |query: &mut sqlx::QueryBuilder<'_, sqlx::Postgres>, condition: &str| {
        query.push(sep).push(condition);
        sep = " AND ";
    };
    if let Some(incident_id) = filter.incident_id {
        clause(
            query,
            "id IN (SELECT delivery_id FROM delivery_items WHERE incident_id = ",
        );
        query.push_bind(incident_id).push(")");
    }
    if let Some(channel_id) = filter.channel_id {
        clause(query, "channel_id = ");
        query.push_bind(channel_id);
    }
    if let Some(department_id) = filter.department_id {
        clause(query, "department_id = ");
        query.push_bind(department_id);
    }
    if let Some(state) = filter.state {
        clause(query, "state = ");
        query.push_bind(state.as_str());
    }
}

/// What a delivery told: one entry per item.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ItemSummary {
    pub incident_id: Uuid,
    /// `opened`, `resolved`, `status_changed` or `reminder`.
    pub kind: String,
    pub at: DateTime<Utc>,
}

pub async fn item_summaries<'e>(
    executor: impl PgExecutor<'e>,
    delivery_id: Uuid,
) -> Result<Vec<ItemSummary>, sqlx::Error> {
    sqlx::query_as(
        "SELECT incident_id, kind, at FROM delivery_items
         WHERE delivery_id = $1 ORDER BY at, event_key",
    )
    .bind(delivery_id)
    .fetch_all(executor)
    .await
}
