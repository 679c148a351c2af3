//! The `silences` table: while a silence covers a notification, the notifier records it as
//! suppressed (with the silence's id) instead of sending it. A silence matches on service,
//! rule, department and severity, each optional (absent matches anything), and covers a span
//! of time: once, from `starts_at` to `ends_at`, or in windows that repeat on given weekdays
//! (a maintenance window), between `starts_at` and an optional `ends_at`.
//!
//! People manage silences through the API; the notifier asks [`covering`].

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Days, NaiveTime, SubsecRound, TimeDelta, Utc};
use schemas::{Severity, Span};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::notifications::OptionalSeverity;
use crate::{Page, Sort, SortField};

/// Longest comment, in characters.
pub const MAX_COMMENT_CHARS: usize = 2000;

/// The matchers a silence may have; it needs at least one.
pub const MATCHERS: &[&str] = &["service_id", "rule_id", "department_id", "severity"];

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SilenceRecord {
    pub id: Uuid,
    /// Only notifications about this service; any service when null.
    pub service_id: Option<String>,
    /// Only notifications about this rule's incidents; any rule when null.
    pub rule_id: Option<Uuid>,
    /// Only notifications to this department; any department when null.
    pub department_id: Option<Uuid>,
    /// Only notifications of this severity; any severity when null.
    #[sqlx(try_from = "OptionalSeverity")]
    pub severity: Option<Severity>,
    /// The silence covers nothing before this time.
    pub starts_at: DateTime<Utc>,
    /// The silence covers nothing from this time on; null only for a recurring silence, which
    /// then repeats for good.
    pub ends_at: Option<DateTime<Utc>>,
    /// When set, the silence covers only the recurring windows (a maintenance window).
    #[sqlx(json(nullable))]
    pub recurrence: Option<Recurrence>,
    pub comment: String,
    /// Who created the silence, such as `key:ops`.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Whether the silence covered the moment it was read.
    #[sqlx(skip)]
    pub active: bool,
}

impl SilenceRecord {
    /// Whether the silence's time covers `at`: within `[starts_at, ends_at)` and, for a
    /// recurring silence, inside one of its windows. Matchers are not considered.
    pub fn covers(&self, at: DateTime<Utc>) -> bool {
        covers(self.starts_at, self.ends_at, self.recurrence.as_ref(), at)
    }

    fn read_at(mut self, now: DateTime<Utc>) -> SilenceRecord {
        self.active = self.covers(now);
        self
    }
}

fn covers(
    starts_at: DateTime<Utc>,
    ends_at: Option<DateTime<Utc>>,
    recurrence: Option<&Recurrence>,
    at: DateTime<Utc>,
) -> bool {
    starts_at <= at && ends_at.is_none_or(|end| at < end) && recurrence.is_none_or(|r| r.covers(at))
}

/// A day of the week, written `mon` to `sun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    pub fn as_str(self) -> &'static str {
        match self {
            Day::Mon => "mon",
            Day::Tue => "tue",
            Day::Wed => "wed",
            Day::Thu => "thu",
            Day::Fri => "fri",
            Day::Sat => "sat",
            Day::Sun => "sun",
        }
    }
}

impl From<chrono::Weekday> for Day {
    fn from(day: chrono::Weekday) -> Day {
        match day {
            chrono::Weekday::Mon => Day::Mon,
            chrono::Weekday::Tue => Day::Tue,
            chrono::Weekday::Wed => Day::Wed,
            chrono::Weekday::Thu => Day::Thu,
            chrono::Weekday::Fri => Day::Fri,
            chrono::Weekday::Sat => Day::Sat,
            chrono::Weekday::Sun => Day::Sun,
        }
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A time of day in UTC to the minute, written `HH:MM` (`00:00` to `23:59`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeOfDay {
    hour: u8,
    minute: u8,
}

impl TimeOfDay {
    /// `None` unless `hour` < 24 and `minute` < 60.
    pub fn new(hour: u32, minute: u32) -> Option<TimeOfDay> {
        (hour < 24 && minute < 60).then_some(TimeOfDay {
            hour: hour as u8,
            minute: minute as u8,
        })
    }

    pub fn hour(self) -> u32 {
        self.hour.into()
    }

    pub fn minute(self) -> u32 {
        self.minute.into()
    }

    fn as_time(self) -> NaiveTime {
        NaiveTime::from_hms_opt(self.hour(), self.minute(), 0).expect("a valid time of day")
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    /// Exactly `HH:MM`, 24-hour.
    fn from_str(s: &str) -> Result<TimeOfDay, String> {
        let invalid = || format!("{s:?} is not a time of day such as 02:00 (HH:MM, 24-hour, UTC)");
        let b = s.as_bytes();
        if b.len() != 5 || b[2] != b':' || ![0, 1, 3, 4].iter().all(|&i| b[i].is_ascii_digit()) {
            return Err(invalid());
        }
        let digits = |i: usize| u32::from(b[i] - b'0') * 10 + u32::from(b[i + 1] - b'0');
        TimeOfDay::new(digits(0), digits(3)).ok_or_else(invalid)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TimeOfDay {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TimeOfDay, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Documented as the text it is read and written as.
impl utoipa::PartialSchema for TimeOfDay {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some("^([01][0-9]|2[0-3]):[0-5][0-9]$"))
            .description(Some("A time of day in UTC, HH:MM (24-hour)."))
            .examples([serde_json::json!("02:00")])
            .into()
    }
}

impl utoipa::ToSchema for TimeOfDay {}

/// Windows that repeat every week: one starts on each of `days` at `start` (UTC) and lasts
/// `duration`, possibly past midnight and into the following days. Stored as JSON, exactly as
/// clients write it: `{"days": ["sat", "sun"], "start": "02:00", "duration": "4h"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recurrence {
    /// The days a window starts on, each at most once; every day when empty or omitted.
    #[serde(default)]
    pub days: Vec<Day>,
    /// When each window starts, `HH:MM` in UTC.
    pub start: TimeOfDay,
    /// How long each window lasts: longer than 0, at most 7d.
    pub duration: Span,
}

impl Recurrence {
    /// Whether `at` falls in a window: one starting at or before `at` and ending after it.
    /// Windows longer than a day overlap the next ones; `at` is covered by any of them.
    pub fn covers(&self, at: DateTime<Utc>) -> bool {
        let today = at.date_naive();
        // A window lasts at most 7 days, so one covering `at` started within the last 7 days
        // (or 8 calendar dates back at most, when it starts later in the day than `at`).
        (0..=7).any(|back| {
            let Some(date) = today.checked_sub_days(Days::new(back)) else {
                return false;
            };
            if !self.days.is_empty() && !self.days.contains(&date.weekday().into()) {
                return false;
            }
            let start = date.and_time(self.start.as_time()).and_utc();
            start <= at && at - start < TimeDelta::milliseconds(self.duration.millis())
        })
    }

    fn validate(&self) -> Result<(), SilenceError> {
        for (i, day) in self.days.iter().enumerate() {
            if self.days[..i].contains(day) {
                return Err(invalid("recurrence.days", format!("lists {day} twice")));
            }
        }
        if self.duration.is_zero() || self.duration > schemas::duration::MAX {
            return Err(invalid(
                "recurrence.duration",
                "must be longer than 0 and at most 7d",
            ));
        }
        Ok(())
    }
}

/// Why a silence was refused.
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    /// A field is out of range or contradicts another; `field` is its path, such as `ends_at`
    /// or `recurrence.days`.
    #[error("field `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    /// No matcher is set: such a silence would mute every notification, which must never
    /// happen by accident.
    #[error(
        "a silence needs at least one matcher (service_id, rule_id, department_id or severity); \
         one that mutes every notification is refused"
    )]
    NoMatcher,
    #[error("department {0} does not exist")]
    UnknownDepartment(Uuid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SilenceError {
    SilenceError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A silence to create, or one as a patch leaves it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSilence {
    pub service_id: Option<String>,
    pub rule_id: Option<Uuid>,
    pub department_id: Option<Uuid>,
    pub severity: Option<Severity>,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub recurrence: Option<Recurrence>,
    pub comment: String,
    pub created_by: String,
}

impl NewSilence {
    /// Checks the invariants: at least one matcher, a valid service id, `ends_at` after
    /// `starts_at`, `ends_at` present unless the silence recurs, a valid recurrence, and a
    /// comment of at most [`MAX_COMMENT_CHARS`].
    pub fn validate(&self) -> Result<(), SilenceError> {
        if self.service_id.is_none()
            && self.rule_id.is_none()
            && self.department_id.is_none()
            && self.severity.is_none()
        {
            return Err(SilenceError::NoMatcher);
        }
        if let Some(service) = &self.service_id {
            schemas::sample::validate_service_id(service)
                .map_err(|reason| invalid("service_id", reason))?;
        }
        match (self.ends_at, &self.recurrence) {
            (Some(end), _) if end <= self.starts_at => {
                return Err(invalid(
                    "ends_at",
                    format!(
                        "must be after starts_at ({})",
                        self.starts_at
                            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                    ),
                ))
            }
            (None, None) => {
                return Err(invalid(
                    "ends_at",
                    "is required for a one-off silence; only a recurring one may be open-ended",
                ))
            }
            _ => {}
        }
        if let Some(recurrence) = &self.recurrence {
            recurrence.validate()?;
        }
        let chars = self.comment.chars().count();
        if chars > MAX_COMMENT_CHARS {
            return Err(invalid(
                "comment",
                format!("must be at most {MAX_COMMENT_CHARS} characters, got {chars}"),
            ));
        }
        Ok(())
    }

    /// Times as Postgres keeps them, to the microsecond, so that what is validated is what is
    /// stored.
    fn normalized(&self) -> NewSilence {
        NewSilence {
            starts_at: self.starts_at.trunc_subsecs(6),
            ends_at: self.ends_at.map(|t| t.trunc_subsecs(6)),
            ..self.clone()
        }
    }

    fn of(r: &SilenceRecord) -> NewSilence {
        NewSilence {
            service_id: r.service_id.clone(),
            rule_id: r.rule_id,
            department_id: r.department_id,
            severity: r.severity,
            starts_at: r.starts_at,
            ends_at: r.ends_at,
            recurrence: r.recurrence.clone(),
            comment: r.comment.clone(),
            created_by: r.created_by.clone(),
        }
    }
}

/// A change to a silence: `None` leaves a field as it is; `Some(None)` clears an optional one.
/// A recurrence is replaced whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SilencePatch {
    pub service_id: Option<Option<String>>,
    pub rule_id: Option<Option<Uuid>>,
    pub department_id: Option<Option<Uuid>>,
    pub severity: Option<Option<Severity>>,
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<Option<DateTime<Utc>>>,
    pub recurrence: Option<Option<Recurrence>>,
    pub comment: Option<String>,
}

impl SilencePatch {
    pub fn is_empty(&self) -> bool {
        *self == SilencePatch::default()
    }

    /// `silence` with the patch applied.
    pub fn apply(&self, silence: &NewSilence) -> NewSilence {
        let mut s = silence.clone();
        if let Some(v) = &self.service_id {
            s.service_id = v.clone();
        }
        if let Some(v) = self.rule_id {
            s.rule_id = v;
        }
        if let Some(v) = self.department_id {
            s.department_id = v;
        }
        if let Some(v) = self.severity {
            s.severity = v;
        }
        if let Some(v) = self.starts_at {
            s.starts_at = v;
        }
        if let Some(v) = self.ends_at {
            s.ends_at = v;
        }
        if let Some(v) = &self.recurrence {
            s.recurrence = v.clone();
        }
        if let Some(v) = &self.comment {
            s.comment = v.clone();
        }
        s
    }
}

/// Filters of `GET /api/silences`; `None` means any. Matcher filters compare the silence's own
/// matcher: `service_id: Some("S1")` finds silences set on S1, not those matching any service.
#[derive(Debug, Clone, Default)]
pub struct SilenceFilter {
    /// Silences that cover (or do not cover) the moment of the query.
    pub active: Option<bool>,
    pub service_id: Option<String>,
    pub rule_id: Option<Uuid>,
    pub department_id: Option<Uuid>,
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("created_at", "created_at"),
    SortField::new("starts_at", "starts_at"),
    SortField::new("ends_at", "ends_at"),
];

/// Newest first.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: true,
};

const COLUMNS: &str = "id, service_id, rule_id, department_id, severity, starts_at, ends_at, \
                       recurrence, comment, created_by, created_at, updated_at";

/// Creates a silence. Fails with [`SilenceError::Invalid`] or [`SilenceError::NoMatcher`]
/// when it breaks an invariant of [`NewSilence::validate`], and with
/// [`SilenceError::UnknownDepartment`] when its department does not exist.
pub async fn insert(pool: &PgPool, new: &NewSilence) -> Result<SilenceRecord, SilenceError> {
    let new = new.normalized();
    new.validate()?;
    let record: SilenceRecord = sqlx::query_as(&format!(
        "INSERT INTO silences (id, service_id, rule_id, department_id, severity, starts_at,
                               ends_at, recurrence, comment, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(&new.service_id)
    .bind(new.rule_id)
    .bind(new.department_id)
    .bind(new.severity.map(Severity::as_str))
    .bind(new.starts_at)
    .bind(new.ends_at)
    .bind(new.recurrence.as_ref().map(sqlx::types::Json))
    .bind(&new.comment)
    .bind(&new.created_by)
    .fetch_one(pool)
    .await
    .map_err(|e| classify(e, new.department_id))?;
    Ok(record.read_at(Utc::now()))
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<SilenceRecord>, sqlx::Error> {
    let record: Option<SilenceRecord> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM silences WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool)
            .await?;
    Ok(record.map(|r| r.read_at(Utc::now())))
}

/// A page of silences and how many match in all. Whether a recurring silence is active is
/// decided here rather than in SQL, so with the `active` filter every silence matching the
/// other filters is read and the page cut from those that pass; silences are few.
pub async fn list(
    pool: &PgPool,
    filter: &SilenceFilter,
    sort: Sort,
    page: Page,
) -> Result<(Vec<SilenceRecord>, i64), sqlx::Error> {
    let now = Utc::now();
    let mut query = QueryBuilder::new(format!("SELECT {COLUMNS} FROM silences"));
    push_filter(&mut query, filter);
    let Some(active) = filter.active else {
        sort.push_order_and_page(&mut query, "id", page);
        let rows: Vec<SilenceRecord> = query.build_query_as().fetch_all(pool).await?;
        let mut count = QueryBuilder::new("SELECT count(*) FROM silences");
        push_filter(&mut count, filter);
        let total = count.build_query_scalar().fetch_one(pool).await?;
        return Ok((rows.into_iter().map(|r| r.read_at(now)).collect(), total));
    };
    sort.push_order_and_page(&mut query, "id", Page::all());
    let rows: Vec<SilenceRecord> = query.build_query_as().fetch_all(pool).await?;
    let matching: Vec<SilenceRecord> = rows
        .into_iter()
        .map(|r| r.read_at(now))
        .filter(|r| r.active == active)
        .collect();
    let total = i64::try_from(matching.len()).unwrap_or(i64::MAX);
    let offset = usize::try_from(page.offset).unwrap_or(usize::MAX);
    let limit = usize::try_from(page.limit).unwrap_or(usize::MAX);
    let items = matching.into_iter().skip(offset).take(limit).collect();
    Ok((items, total))
}

fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &SilenceFilter) {
    let mut sep = " WHERE ";
    let mut clause = |query: &mut QueryBuilder<'_, Postgres>, condition: &str| {
        query.push(sep).push(condition);
        sep = " AND ";
    };
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
}

/// Applies a patch, checking the result as [`insert`] does; `None` when there is no such
/// silence. The row is locked while the patch is applied, so concurrent patches to different
/// fields both take effect.
pub async fn update(
    pool: &PgPool,
    id: Uuid,
    patch: &SilencePatch,
) -> Result<Option<SilenceRecord>, SilenceError> {
    let mut tx = pool.begin().await?;
    let current: Option<SilenceRecord> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM silences WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(current) = current else {
        return Ok(None);
    };
    let s = patch.apply(&NewSilence::of(&current)).normalized();
    s.validate()?;
    let record: SilenceRecord = sqlx::query_as(&format!(
        "UPDATE silences SET service_id = $2, rule_id = $3, department_id = $4, severity = $5,
                starts_at = $6, ends_at = $7, recurrence = $8, comment = $9, updated_at = now()
         WHERE id = $1 RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(&s.service_id)
    .bind(s.rule_id)
    .bind(s.department_id)
    .bind(s.severity.map(Severity::as_str))
    .bind(s.starts_at)
    .bind(s.ends_at)
    .bind(s.recurrence.as_ref().map(sqlx::types::Json))
    .bind(&s.comment)
    .fetch_one(&mut *tx)
    .await
    .map_err(|e| classify(e, s.department_id))?;
    tx.commit().await?;
    Ok(Some(record.read_at(Utc::now())))
}

/// Returns whether the silence existed.
pub async fn delete(pool: &PgPool, id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query("DELETE FROM silences WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() > 0)
}

/// What a notification is about, for [`covering`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SilenceMatch<'a> {
    pub service_id: &'a str,
    pub rule_id: Uuid,
    pub department_id: Uuid,
    pub severity: Severity,
}

/// The id of a silence covering a notification at `at` (the earliest created wins), if any.
///
/// A silence covers the notification when each of its matchers that is set equals the
/// notification's value, and its time covers `at` (see [`SilenceRecord::covers`]).
pub async fn covering<'e>(
    executor: impl PgExecutor<'e>,
    m: &SilenceMatch<'_>,
    at: DateTime<Utc>,
) -> Result<Option<Uuid>, sqlx::Error> {
    // The time range is checked here; recurring windows are checked below.
    let candidates: Vec<SilenceRecord> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM silences
         WHERE (service_id IS NULL OR service_id = $1)
           AND (rule_id IS NULL OR rule_id = $2)
           AND (department_id IS NULL OR department_id = $3)
           AND (severity IS NULL OR severity = $4)
           AND starts_at <= $5 AND (ends_at IS NULL OR ends_at > $5)
         ORDER BY created_at, id"
    ))
    .bind(m.service_id)
    .bind(m.rule_id)
    .bind(m.department_id)
    .bind(m.severity.as_str())
    .bind(at)
    .fetch_all(executor)
    .await?;
    Ok(candidates.into_iter().find(|s| s.covers(at)).map(|s| s.id))
}

fn classify(e: sqlx::Error, department_id: Option<Uuid>) -> SilenceError {
    match (
        e.as_database_error().and_then(|d| d.code()).as_deref(),
        department_id,
    ) {
        // The only foreign key: the department.
        (Some("23503"), Some(department)) => SilenceError::UnknownDepartment(department),
        _ => SilenceError::Db(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("an RFC 3339 time")
    }

    fn recurrence(json: serde_json::Value) -> Recurrence {
        serde_json::from_value(json).expect("a recurrence")
    }

    fn silence(
        starts_at: &str,
        ends_at: Option<&str>,
        recurrence: Option<Recurrence>,
    ) -> SilenceRecord {
        SilenceRecord {
            id: Uuid::nil(),
            service_id: Some("S1".into()),
            rule_id: None,
            department_id: None,
            severity: None,
            starts_at: at(starts_at),
            ends_at: ends_at.map(at),
            recurrence,
            comment: String::new(),
            created_by: "key:test".into(),
            created_at: at(starts_at),
            updated_at: at(starts_at),
            active: false,
        }
    }

    fn new_silence() -> NewSilence {
        NewSilence {
            service_id: Some("S1".into()),
            rule_id: None,
            department_id: None,
            severity: None,
            starts_at: at("2026-03-01T00:00:00Z"),
            ends_at: Some(at("2026-03-01T02:00:00Z")),
            recurrence: None,
            comment: String::new(),
            created_by: "key:test".into(),
        }
    }

    #[track_caller]
    fn refused_on(s: &NewSilence, field: &str) {
        match s.validate() {
            Err(SilenceError::Invalid { field: f, .. }) => assert_eq!(f, field, "{s:?}"),
            other => panic!("expected `{field}` to be refused, got {other:?}"),
        }
    }

    #[test]
    fn a_recurrence_reads_and_writes_the_documented_json() {
        let text = r#"{"days":["sat","sun"],"start":"02:00","duration":"4h"}"#;
        let r: Recurrence = serde_json::from_str(text).unwrap();
        assert_eq!(r.days, [Day::Sat, Day::Sun]);
        assert_eq!(r.start, TimeOfDay::new(2, 0).unwrap());
        assert_eq!(r.duration, Span(4 * 3_600_000));
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        let every_day = recurrence(serde_json::json!({"start": "23:30", "duration": "1h30m"}));
        assert!(every_day.days.is_empty());
        assert_eq!(
            serde_json::to_value(&every_day).unwrap(),
            serde_json::json!({"days": [], "start": "23:30", "duration": "1h30m"})
        );
    }

    #[test]
    fn a_recurrence_refuses_what_it_cannot_read() {
        for bad in [
            serde_json::json!({"start": "2:00", "duration": "1h"}),
            serde_json::json!({"start": "24:00", "duration": "1h"}),
            serde_json::json!({"start": "12:60", "duration": "1h"}),
            serde_json::json!({"start": "12:00:00", "duration": "1h"}),
            serde_json::json!({"start": "1a:00", "duration": "1h"}),
            serde_json::json!({"days": ["saturday"], "start": "02:00", "duration": "1h"}),
            serde_json::json!({"days": ["Sat"], "start": "02:00", "duration": "1h"}),
            serde_json::json!({"start": "02:00", "duration": "8d"}),
            serde_json::json!({"start": "02:00"}),
            serde_json::json!({"start": "02:00", "duration": "1h", "tz": "CET"}),
        ] {
            assert!(
                serde_json::from_value::<Recurrence>(bad.clone()).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn a_window_covers_its_start_but_not_its_end() {
        // 2026-03-07 is a Saturday.
        let r =
            recurrence(serde_json::json!({"days": ["sat"], "start": "02:00", "duration": "4h"}));
        assert!(!r.covers(at("2026-03-07T01:59:59.999Z")));
        assert!(r.covers(at("2026-03-07T02:00:00Z")));
        assert!(r.covers(at("2026-03-07T05:59:59.999Z")));
        assert!(!r.covers(at("2026-03-07T06:00:00Z")));
        // Other days have no window.
        assert!(!r.covers(at("2026-03-08T03:00:00Z")));
        assert!(!r.covers(at("2026-03-06T03:00:00Z")));
        // Next week's Saturday has one.
        assert!(r.covers(at("2026-03-14T03:00:00Z")));
    }

    #[test]
    fn a_window_may_cross_midnight() {
        // Friday 2026-03-06 at 23:00 for 3 hours: until Saturday 02:00.
        let r =
            recurrence(serde_json::json!({"days": ["fri"], "start": "23:00", "duration": "3h"}));
        assert!(!r.covers(at("2026-03-06T22:59:00Z")));
        assert!(r.covers(at("2026-03-06T23:00:00Z")));
        assert!(r.covers(at("2026-03-07T00:00:00Z")));
        assert!(r.covers(at("2026-03-07T01:59:00Z")));
        assert!(!r.covers(at("2026-03-07T02:00:00Z")));
        // Saturday night is not Friday night.
        assert!(!r.covers(at("2026-03-07T23:30:00Z")));
        assert!(!r.covers(at("2026-03-08T00:30:00Z")));
    }

    #[test]
    fn every_day_when_no_days_are_listed() {
        let r = recurrence(serde_json::json!({"start": "22:00", "duration": "4h"}));
        for day in 1..=14 {
            let night = at(&format!("2026-03-{day:02}T23:00:00Z"));
            assert!(r.covers(night), "{night}");
            assert!(r.covers(night + chrono::Duration::hours(2)), "{night} + 2h");
            assert!(
                !r.covers(night + chrono::Duration::hours(3)),
                "{night} + 3h"
            );
            assert!(
                !r.covers(night - chrono::Duration::hours(2)),
                "{night} - 2h"
            );
        }
    }

    #[test]
    fn windows_follow_their_weekdays() {
        // Weekdays at 09:00 for an hour; 2026-03-02 is a Monday.
        let r = recurrence(serde_json::json!({
            "days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "duration": "1h"
        }));
        let covered: Vec<bool> = (2..=8)
            .map(|day| r.covers(at(&format!("2026-03-{day:02}T09:30:00Z"))))
            .collect();
        assert_eq!(covered, [true, true, true, true, true, false, false]);
    }

    #[test]
    fn a_window_longer_than_a_day_runs_into_the_next_days() {
        // From Saturday 2026-03-07 at 20:00 for 2 days 6 hours: until Tuesday 02:00.
        let r =
            recurrence(serde_json::json!({"days": ["sat"], "start": "20:00", "duration": "2d6h"}));
        assert!(!r.covers(at("2026-03-07T19:59:00Z")));
        assert!(r.covers(at("2026-03-07T20:00:00Z")));
        assert!(r.covers(at("2026-03-08T12:00:00Z")));
        assert!(r.covers(at("2026-03-09T12:00:00Z")));
        assert!(r.covers(at("2026-03-10T01:59:59Z")));
        assert!(!r.covers(at("2026-03-10T02:00:00Z")));
        assert!(!r.covers(at("2026-03-11T12:00:00Z")));
    }

    #[test]
    fn a_week_long_window_never_lets_go() {
        let r =
            recurrence(serde_json::json!({"days": ["mon"], "start": "06:00", "duration": "7d"}));
        let mut t = at("2026-03-02T06:00:00Z");
        while t < at("2026-03-23T06:00:00Z") {
            assert!(r.covers(t), "{t}");
            t += chrono::Duration::minutes(37);
        }
        // Just before a Monday's start, the previous week's window is still open.
        assert!(r.covers(at("2026-03-02T05:59:00Z")));
        // Six days: a gap before each Monday's start.
        let r =
            recurrence(serde_json::json!({"days": ["mon"], "start": "06:00", "duration": "6d"}));
        assert!(r.covers(at("2026-03-08T05:59:00Z")));
        assert!(!r.covers(at("2026-03-08T06:00:00Z")));
        assert!(!r.covers(at("2026-03-09T05:59:00Z")));
        assert!(r.covers(at("2026-03-09T06:00:00Z")));
    }

    #[test]
    fn a_one_off_silence_covers_its_range_start_included_end_excluded() {
        let s = silence("2026-03-01T10:00:00Z", Some("2026-03-01T12:00:00Z"), None);
        assert!(!s.covers(at("2026-03-01T09:59:59.999Z")));
        assert!(s.covers(at("2026-03-01T10:00:00Z")));
        assert!(s.covers(at("2026-03-01T11:59:59.999Z")));
        assert!(!s.covers(at("2026-03-01T12:00:00Z")));
    }

    #[test]
    fn a_recurring_silence_covers_its_windows_within_its_range() {
        let nightly = recurrence(serde_json::json!({"start": "01:00", "duration": "2h"}));
        let open = silence("2026-03-03T00:00:00Z", None, Some(nightly.clone()));
        assert!(!open.covers(at("2026-03-02T02:00:00Z")), "before starts_at");
        assert!(open.covers(at("2026-03-03T02:00:00Z")));
        assert!(!open.covers(at("2026-03-03T12:00:00Z")), "between windows");
        assert!(open.covers(at("2036-03-03T02:00:00Z")), "open-ended");

        let bounded = silence(
            "2026-03-03T02:00:00Z",
            Some("2026-03-05T02:00:00Z"),
            Some(nightly),
        );
        assert!(
            !bounded.covers(at("2026-03-03T01:30:00Z")),
            "window began before starts_at"
        );
        assert!(bounded.covers(at("2026-03-03T02:00:00Z")));
        assert!(bounded.covers(at("2026-03-04T01:00:00Z")));
        assert!(bounded.covers(at("2026-03-05T01:59:00Z")));
        assert!(
            !bounded.covers(at("2026-03-05T02:00:00Z")),
            "window cut at ends_at"
        );
        assert!(!bounded.covers(at("2026-03-06T01:30:00Z")), "after ends_at");
    }

    #[test]
    fn validation_names_the_field() {
        assert!(new_silence().validate().is_ok());

        let no_matcher = NewSilence {
            service_id: None,
            ..new_silence()
        };
        assert!(matches!(
            no_matcher.validate(),
            Err(SilenceError::NoMatcher)
        ));
        let severity_only = NewSilence {
            severity: Some(Severity::Low),
            ..no_matcher
        };
        assert!(severity_only.validate().is_ok());

        refused_on(
            &NewSilence {
                service_id: Some("has space".into()),
                ..new_silence()
            },
            "service_id",
        );
        refused_on(
            &NewSilence {
                ends_at: Some(at("2026-03-01T00:00:00Z")),
                ..new_silence()
            },
            "ends_at",
        );
        refused_on(
            &NewSilence {
                ends_at: None,
                ..new_silence()
            },
            "ends_at",
        );
        let recurring = |json| NewSilence {
            ends_at: None,
            recurrence: Some(recurrence(json)),
            ..new_silence()
        };
        assert!(
            recurring(serde_json::json!({"start": "02:00", "duration": "1h"}))
                .validate()
                .is_ok()
        );
        refused_on(
            &recurring(
                serde_json::json!({"days": ["sat", "sun", "sat"], "start": "02:00", "duration": "1h"}),
            ),
            "recurrence.days",
        );
        refused_on(
            &recurring(serde_json::json!({"start": "02:00", "duration": "0"})),
            "recurrence.duration",
        );
        refused_on(
            &NewSilence {
                comment: "é".repeat(MAX_COMMENT_CHARS + 1),
                ..new_silence()
            },
            "comment",
        );
        assert!(NewSilence {
            comment: "é".repeat(MAX_COMMENT_CHARS),
            ..new_silence()
        }
        .validate()
        .is_ok());
    }

    #[test]
    fn times_are_kept_to_the_microsecond_before_they_are_checked() {
        // Apart by less than a microsecond: equal once stored, so refused.
        let s = NewSilence {
            starts_at: at("2026-03-01T00:00:00.0000001Z"),
            ends_at: Some(at("2026-03-01T00:00:00.0000009Z")),
            ..new_silence()
        };
        assert!(s.validate().is_ok());
        refused_on(&s.normalized(), "ends_at");
    }

    #[test]
    fn a_patch_replaces_only_what_it_names() {
        let base = new_silence();
        assert_eq!(SilencePatch::default().apply(&base), base);
        let patched = SilencePatch {
            service_id: Some(None),
            severity: Some(Some(Severity::High)),
            ends_at: Some(Some(at("2026-03-01T01:00:00Z"))),
            ..SilencePatch::default()
        }
        .apply(&base);
        assert_eq!(patched.service_id, None);
        assert_eq!(patched.severity, Some(Severity::High));
        assert_eq!(patched.ends_at, Some(at("2026-03-01T01:00:00Z")));
        assert_eq!(patched.starts_at, base.starts_at);
        assert_eq!(patched.created_by, base.created_by);
    }
}
