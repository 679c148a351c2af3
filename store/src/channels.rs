//! The `notification_channels` table: where each department hears about incidents. The API
//! manages channels as [`ChannelRecord`]s, which never carry the secret and mask Slack URLs;
//! the notifier reads full [`Channel`]s.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemas::{ParseEnumError, Severity, Span};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, QueryBuilder};
use uuid::Uuid;

use crate::{Page, Sort, SortField};

/// How a channel delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ChannelKind {
    /// A notification in Tracely itself, listed under `/api/notifications`.
    #[serde(rename = "in_app")]
    InApp,
    /// A signed JSON POST to a URL.
    #[serde(rename = "webhook")]
    Webhook,
    /// A message to a Slack incoming webhook.
    #[serde(rename = "slack")]
    Slack,
}

impl ChannelKind {
    pub const ALL: &'static [ChannelKind] =
        &[ChannelKind::InApp, ChannelKind::Webhook, ChannelKind::Slack];

    const NAMES: &'static [&'static str] = &["in_app", "webhook", "slack"];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::InApp => "in_app",
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
        }
    }
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ChannelKind {
    type Err = ParseEnumError;
    fn from_str(s: &str) -> Result<ChannelKind, ParseEnumError> {
        ChannelKind::ALL
            .iter()
            .copied()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| ParseEnumError {
                found: s.to_owned(),
                expected: ChannelKind::NAMES,
            })
    }
}

impl TryFrom<String> for ChannelKind {
    type Error = ParseEnumError;
    fn try_from(s: String) -> Result<ChannelKind, ParseEnumError> {
        s.parse()
    }
}

impl utoipa::PartialSchema for ChannelKind {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .enum_values(Some(ChannelKind::NAMES.iter().copied()))
            .into()
    }
}

impl utoipa::ToSchema for ChannelKind {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ChannelKind")
    }
}

/// A channel as the notifier sees it: everything needed to send, secret included.
#[derive(Debug, Clone, PartialEq)]
pub struct Channel {
    pub id: Uuid,
    pub department_id: Uuid,
    pub name: String,
    pub kind: ChannelKind,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub min_severity: Severity,
    pub send_resolved: bool,
    pub group_wait: Duration,
    pub repeat_interval: Option<Duration>,
    pub enabled: bool,
}

/// A channel as the API shows it. The secret is never included, only whether there is one; a
/// Slack URL is itself a credential, so only its scheme and host are shown.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ChannelRecord {
    pub id: Uuid,
    pub department_id: Uuid,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ChannelKind,
    /// The webhook URL; for Slack only `scheme://host/…`; null for in-app channels.
    pub url: Option<String>,
    /// Whether a signing secret is set. The secret itself is never returned.
    pub has_secret: bool,
    /// The least severe incidents the channel hears about.
    pub min_severity: Severity,
    /// Whether the channel also hears when an incident resolves.
    pub send_resolved: bool,
    /// Transitions for one service within this time go out as one message; `0` sends at once.
    pub group_wait: Span,
    /// How often to remind while an incident stays open; null never.
    pub repeat_interval: Option<Span>,
    pub enabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A channel to create, or every editable field of one to replace.
#[derive(Debug, Clone, PartialEq)]
pub struct NewChannel {
    pub name: String,
    pub kind: ChannelKind,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub min_severity: Severity,
    pub send_resolved: bool,
    pub group_wait: Duration,
    pub repeat_interval: Option<Duration>,
    pub enabled: bool,
}

/// A channel field that is missing, not allowed or out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct ChannelError {
    pub field: &'static str,
    pub reason: String,
}

/// Longest a channel may hold messages back to group them.
pub const MAX_GROUP_WAIT: Duration = Duration::from_secs(3600);
/// Shortest and longest reminder interval.
pub const MIN_REPEAT_INTERVAL: Duration = Duration::from_secs(60);
pub const MAX_REPEAT_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Length of a webhook signing secret, in characters.
pub const SECRET_CHARS: std::ops::RangeInclusive<usize> = 16..=256;
pub const MAX_NAME_CHARS: usize = 100;
pub const MAX_URL_CHARS: usize = 2048;

impl NewChannel {
    /// Checks every field that can be judged without the network (the URL's target is checked
    /// by [`crate::targets::check`]); the error names the field.
    pub fn validate(&self) -> Result<(), ChannelError> {
        let err = |field, reason: String| Err(ChannelError { field, reason });
        let kind = self.kind;
        let name_chars = self.name.trim().chars().count();
        if name_chars == 0 || name_chars > MAX_NAME_CHARS {
            return err("name", format!("must be 1 to {MAX_NAME_CHARS} characters"));
        }
        match (kind, &self.url) {
            (ChannelKind::InApp, Some(_)) => {
                return err("url", "is not allowed for in_app channels".into())
            }
            (ChannelKind::Webhook | ChannelKind::Slack, None) => {
                return err("url", format!("is required for {kind} channels"))
            }
            (_, Some(url)) if url.chars().count() > MAX_URL_CHARS => {
                return err("url", format!("must be at most {MAX_URL_CHARS} characters"))
            }
            _ => {}
        }
        match (kind, &self.secret) {
            (ChannelKind::Webhook, None) => {
                return err(
                    "secret",
                    "is required for webhook channels: it signs every body".into(),
                )
            }
            (ChannelKind::Webhook, Some(secret))
                if !SECRET_CHARS.contains(&secret.chars().count()) =>
            {
                return err(
                    "secret",
                    format!(
                        "must be {} to {} characters",
                        SECRET_CHARS.start(),
                        SECRET_CHARS.end()
                    ),
                )
            }
            (ChannelKind::InApp | ChannelKind::Slack, Some(_)) => {
                return err("secret", format!("is not allowed for {kind} channels"))
            }
            _ => {}
        }
        if self.group_wait.subsec_nanos() != 0 {
            return err("group_wait", "must be whole seconds".into());
        }
        if self.group_wait > MAX_GROUP_WAIT {
            return err("group_wait", "must be at most 1h".into());
        }
        if kind == ChannelKind::InApp && !self.group_wait.is_zero() {
            return err(
                "group_wait",
                "must be 0 for in_app channels: grouping applies to messages sent out".into(),
            );
        }
        if let Some(repeat) = self.repeat_interval {
            if repeat.subsec_nanos() != 0 {
                return err("repeat_interval", "must be whole seconds".into());
            }
            if !(MIN_REPEAT_INTERVAL..=MAX_REPEAT_INTERVAL).contains(&repeat) {
                return err(
                    "repeat_interval",
                    "must be from 1m to 7d, or null for no reminders".into(),
                );
            }
        }
        Ok(())
    }
}

/// What a channel's URL shows through the API: the webhook URL as stored; for Slack, whose URL
/// is itself the credential, only `scheme://host/…`.
pub fn shown_url(kind: ChannelKind, url: Option<&str>) -> Option<String> {
    let url = url?;
    match kind {
        ChannelKind::Slack => Some(match url::Url::parse(url) {
            Ok(parsed) => format!(
                "{}://{}/…",
                parsed.scheme(),
                parsed.host_str().unwrap_or_default()
            ),
            Err(_) => "…".to_owned(),
        }),
        ChannelKind::InApp | ChannelKind::Webhook => Some(url.to_owned()),
    }
}

pub const SORT_FIELDS: &[SortField] = &[
    SortField::new("created_at", "created_at"),
    SortField::new("name", "name"),
];

/// Oldest first: the order the channels were added in.
pub const DEFAULT_SORT: Sort = Sort {
    field: SORT_FIELDS[0],
    descending: false,
};

const COLUMNS: &str = "id, department_id, name, kind, url, secret, min_severity, send_resolved, \
                       group_wait_secs, repeat_interval_secs, enabled, created_at, updated_at";

/// A row as stored; becomes a [`Channel`] or a [`ChannelRecord`].
#[derive(sqlx::FromRow)]
struct Row {
    id: Uuid,
    department_id: Uuid,
    name: String,
    #[sqlx(try_from = "String")]
    kind: ChannelKind,
    url: Option<String>,
    secret: Option<String>,
    #[sqlx(try_from = "String")]
    min_severity: Severity,
    send_resolved: bool,
    group_wait_secs: i32,
    repeat_interval_secs: Option<i32>,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// Seconds as stored (never negative: the table checks).
fn secs(stored: i32) -> Duration {
    Duration::from_secs(u64::try_from(stored).unwrap_or(0))
}

fn span(stored: i32) -> Span {
    Span(i64::from(stored) * 1000)
}

impl From<Row> for Channel {
    fn from(r: Row) -> Channel {
        Channel {
            id: r.id,
            department_id: r.department_id,
            name: r.name,
            kind: r.kind,
            url: r.url,
            secret: r.secret,
            min_severity: r.min_severity,
            send_resolved: r.send_resolved,
            group_wait: secs(r.group_wait_secs),
            repeat_interval: r.repeat_interval_secs.map(secs),
            enabled: r.enabled,
        }
    }
}

impl From<Row> for ChannelRecord {
    fn from(r: Row) -> ChannelRecord {
        ChannelRecord {
            id: r.id,
            department_id: r.department_id,
            url: shown_url(r.kind, r.url.as_deref()),
            name: r.name,
            kind: r.kind,
            has_secret: r.secret.is_some(),
            min_severity: r.min_severity,
            send_resolved: r.send_resolved,
            group_wait: span(r.group_wait_secs),
            repeat_interval: r.repeat_interval_secs.map(span),
            enabled: r.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Enabled channels of any of `departments`, ordered by department, then as created.
pub async fn enabled_for_departments<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    departments: &[Uuid],
) -> Result<Vec<Channel>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notification_channels
         WHERE department_id = ANY($1) AND enabled
         ORDER BY department_id, created_at, id"
    ))
    .bind(departments)
    .fetch_all(executor)
    .await?;
    Ok(rows.into_iter().map(Channel::from).collect())
}

/// One channel, enabled or not.
pub async fn get<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<Channel>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notification_channels WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Channel::from))
}

/// One channel of a department, as shown; `None` when it does not exist or belongs to another
/// department.
pub async fn get_in(
    pool: &PgPool,
    department_id: Uuid,
    id: Uuid,
) -> Result<Option<ChannelRecord>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM notification_channels WHERE id = $1 AND department_id = $2"
    ))
    .bind(id)
    .bind(department_id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(ChannelRecord::from))
}

/// A page of a department's channels and how many it has.
pub async fn list(
    pool: &PgPool,
    department_id: Uuid,
    sort: Sort,
    page: Page,
) -> Result<(Vec<ChannelRecord>, i64), sqlx::Error> {
    let mut query = QueryBuilder::new(format!(
        "SELECT {COLUMNS} FROM notification_channels WHERE department_id = "
    ));
    query.push_bind(department_id);
    sort.push_order_and_page(&mut query, "id", page);
    let rows: Vec<Row> = query.build_query_as().fetch_all(pool).await?;
    let total =
        sqlx::query_scalar("SELECT count(*) FROM notification_channels WHERE department_id = $1")
            .bind(department_id)
            .fetch_one(pool)
            .await?;
    Ok((rows.into_iter().map(ChannelRecord::from).collect(), total))
}

/// Creates a validated channel. A department that does not exist fails with a foreign-key
/// violation (SQLSTATE 23503).
pub async fn insert(
    pool: &PgPool,
    department_id: Uuid,
    channel: &NewChannel,
) -> Result<ChannelRecord, sqlx::Error> {
    let row: Row = sqlx::query_as(&format!(
        "INSERT INTO notification_channels (id, department_id, name, kind, url, secret,
                min_severity, send_resolved, group_wait_secs, repeat_interval_secs, enabled)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(department_id)
    .bind_channel(channel)
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

/// Replaces every editable field of a department's channel (the API merges a PATCH onto the
/// current channel first). `None` when there is no such channel in that department.
pub async fn update(
    pool: &PgPool,
    department_id: Uuid,
    id: Uuid,
    channel: &NewChannel,
) -> Result<Option<ChannelRecord>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "UPDATE notification_channels
         SET name = $3, kind = $4, url = $5, secret = $6, min_severity = $7,
             send_resolved = $8, group_wait_secs = $9, repeat_interval_secs = $10,
             enabled = $11, updated_at = now()
         WHERE id = $1 AND department_id = $2
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(department_id)
    .bind_channel(channel)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(ChannelRecord::from))
}

/// Deletes a department's channel; returns whether it existed there.
pub async fn delete(pool: &PgPool, department_id: Uuid, id: Uuid) -> Result<bool, sqlx::Error> {
    let result =
        sqlx::query("DELETE FROM notification_channels WHERE id = $1 AND department_id = $2")
            .bind(id)
            .bind(department_id)
            .execute(pool)
            .await?;
    Ok(result.rows_affected() > 0)
}

/// Seconds as stored; validated channels fit easily.
fn stored_secs(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Binds a channel's fields as parameters $3 to $11 of an insert or update.
trait BindChannel<'q> {
    fn bind_channel(self, channel: &'q NewChannel) -> Self;
}

impl<'q, O> BindChannel<'q>
    for sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
{
    fn bind_channel(self, c: &'q NewChannel) -> Self {
        self.bind(&c.name)
            .bind(c.kind.as_str())
            .bind(&c.url)
            .bind(&c.secret)
            .bind(c.min_severity.as_str())
            .bind(c.send_resolved)
            .bind(stored_secs(c.group_wait))
            .bind(c.repeat_interval.map(stored_secs))
            .bind(c.enabled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook() -> NewChannel {
        NewChannel {
            name: "ops hook".into(),
            kind: ChannelKind::Webhook,
            url: Some("https://hooks.example.com/tracely".into()),
            secret: Some("s".repeat(16)),
            min_severity: Severity::Low,
            send_resolved: true,
            group_wait: Duration::from_secs(30),
            repeat_interval: Some(Duration::from_secs(4 * 3600)),
            enabled: true,
        }
    }

    #[test]
    fn kinds_read_and_write_their_wire_names() {
        for kind in ChannelKind::ALL {
            assert_eq!(kind.as_str().parse::<ChannelKind>(), Ok(*kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::json!(kind.as_str())
            );
        }
        let err = "email".parse::<ChannelKind>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"email\" is not one of in_app, webhook, slack"
        );
    }

    #[test]
    fn a_complete_webhook_is_valid() {
        assert_eq!(webhook().validate(), Ok(()));
    }

    #[test]
    fn each_invalid_field_is_named() {
        let field = |c: NewChannel| c.validate().unwrap_err().field;
        let in_app = NewChannel {
            kind: ChannelKind::InApp,
            url: None,
            secret: None,
            group_wait: Duration::ZERO,
            ..webhook()
        };
        assert_eq!(in_app.validate(), Ok(()));
        let slack = NewChannel {
            kind: ChannelKind::Slack,
            secret: None,
            ..webhook()
        };
        assert_eq!(slack.validate(), Ok(()));

        assert_eq!(
            field(NewChannel {
                name: " ".into(),
                ..webhook()
            }),
            "name"
        );
        assert_eq!(
            field(NewChannel {
                name: "n".repeat(101),
                ..webhook()
            }),
            "name"
        );
        assert_eq!(
            field(NewChannel {
                url: None,
                ..webhook()
            }),
            "url"
        );
        assert_eq!(
            field(NewChannel {
                url: None,
                ..slack.clone()
            }),
            "url"
        );
        let with_url = NewChannel {
            url: Some("https://x.example".into()),
            ..in_app.clone()
        };
        assert_eq!(field(with_url), "url");
        assert_eq!(
            field(NewChannel {
                secret: None,
                ..webhook()
            }),
            "secret"
        );
        assert_eq!(
            field(NewChannel {
                secret: Some("s".repeat(15)),
                ..webhook()
            }),
            "secret"
        );
        assert_eq!(
            field(NewChannel {
                secret: Some("s".repeat(257)),
                ..webhook()
            }),
            "secret"
        );
        assert_eq!(
            field(NewChannel {
                secret: Some("s".repeat(16)),
                ..slack
            }),
            "secret"
        );
        let too_long = Duration::from_secs(3601);
        assert_eq!(
            field(NewChannel {
                group_wait: too_long,
                ..webhook()
            }),
            "group_wait"
        );
        let fraction = Duration::from_millis(1500);
        assert_eq!(
            field(NewChannel {
                group_wait: fraction,
                ..webhook()
            }),
            "group_wait"
        );
        let grouped = NewChannel {
            group_wait: Duration::from_secs(5),
            ..in_app
        };
        assert_eq!(field(grouped), "group_wait");
        for repeat in [59, 7 * 24 * 3600 + 1] {
            let repeat = Some(Duration::from_secs(repeat));
            assert_eq!(
                field(NewChannel {
                    repeat_interval: repeat,
                    ..webhook()
                }),
                "repeat_interval"
            );
        }
        let edges = [
            (Duration::ZERO, Some(MIN_REPEAT_INTERVAL)),
            (MAX_GROUP_WAIT, Some(MAX_REPEAT_INTERVAL)),
        ];
        for (group_wait, repeat_interval) in edges {
            let edge = NewChannel {
                group_wait,
                repeat_interval,
                ..webhook()
            };
            assert_eq!(edge.validate(), Ok(()));
        }
    }

    #[test]
    fn slack_urls_show_only_scheme_and_host() {
        let url = "https://hooks.slack.com/services/T000/B000/XXXXXXXX";
        assert_eq!(
            shown_url(ChannelKind::Slack, Some(url)).as_deref(),
            Some("https://hooks.slack.com/…")
        );
        assert_eq!(
            shown_url(ChannelKind::Webhook, Some(url)).as_deref(),
            Some(url)
        );
        assert_eq!(shown_url(ChannelKind::InApp, None), None);
    }
}
