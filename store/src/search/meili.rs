//! Incident search in Meilisearch: the index's settings, loading documents (waiting for each
//! task to finish), and searching with typo tolerance, filters, facets and highlights.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use meilisearch_sdk::client::Client;
use meilisearch_sdk::errors::{Error as SdkError, ErrorType};
use meilisearch_sdk::indexes::Index;
use meilisearch_sdk::search::{MatchingStrategies, Selectors};
use meilisearch_sdk::settings::{FacetSortValue, FacetingSettings, PaginationSetting, Settings};
use meilisearch_sdk::task_info::TaskInfo;
use meilisearch_sdk::tasks::Task;
use serde_json::Value;
use uuid::Uuid;

use super::document::SearchDocument;
use super::{Facets, SearchHit, SearchQuery, SearchResult, MARK_END, MARK_START, MAX_FACET_VALUES};

/// The index incidents are kept in unless configured otherwise.
pub const DEFAULT_INDEX: &str = "incidents";
/// How long a task may take before waiting for it counts as a failure.
pub const TASK_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a search may take before it is answered from Postgres instead.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long searches skip Meilisearch after one failed.
pub const SEARCH_REST: Duration = Duration::from_secs(10);
/// Totals are exact up to this many hits. Meilisearch advises against more: it makes broad
/// queries slow.
pub const MAX_TOTAL_HITS: usize = 20_000;
/// Stand-ins for the highlight tags, so the text around them can be escaped first.
const PRE: &str = "\u{1}";
const POST: &str = "\u{2}";

const SEARCHABLE: &[&str] = &[
    "title",
    "message",
    "service_name",
    "service_id",
    "rule_name",
    "comments",
    "department_name",
];
const FILTERABLE: &[&str] = &[
    "status",
    "severity",
    "service_id",
    "department_id",
    "rule_id",
    "opened_at",
];
const SORTABLE: &[&str] = &["opened_at", "peak_value"];
/// Meilisearch's default rules, then the newest first among equals.
const RANKING: &[&str] = &[
    "words",
    "typo",
    "proximity",
    "attribute",
    "sort",
    "exactness",
    "opened_at:desc",
];
const FACETS: &[&str] = &["status", "severity", "service_id"];
const HIGHLIGHTED: &[&str] = &["title", "message", "comments"];

/// Why Meilisearch did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum MeiliError {
    /// It could not be reached, or failed in a way that may pass (a task that failed for lack
    /// of disk, an internal error, a wrong key that someone may fix).
    #[error("Meilisearch unavailable: {0}")]
    Unavailable(String),
    /// It refused the request itself as invalid: the data or settings are at fault, and
    /// sending the same again will fail again.
    #[error("Meilisearch refused the request: {0}")]
    Rejected(String),
}

impl From<SdkError> for MeiliError {
    fn from(e: SdkError) -> MeiliError {
        MeiliError::Unavailable(e.to_string())
    }
}

/// Where Meilisearch is, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeiliConfig {
    pub url: String,
    pub key: Option<String>,
    /// The index incidents are kept in.
    pub index: String,
}

/// Why writing verified documents failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Meili(#[from] MeiliError),
    #[error("reading incidents from Postgres: {0}")]
    Database(#[from] sqlx::Error),
}

/// Rounds of re-reading after a write before giving up on catching a busy incident; the next
/// change to it is indexed anyway.
const VERIFY_ROUNDS: usize = 5;

/// A Meilisearch server and the index incidents are kept in.
#[derive(Clone)]
pub struct Meili {
    client: Client,
    index: Index,
    /// Until when (unix milliseconds) searches skip Meilisearch after it failed one, so an
    /// outage costs one timeout, not one per search.
    resting_until: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl std::fmt::Debug for Meili {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meili")
            .field("index", &self.index.uid)
            .finish()
    }
}

impl Meili {
    /// A client for `url`; nothing is sent yet.
    pub fn new(url: &str, key: Option<&str>, index: &str) -> Result<Meili, MeiliError> {
        let client = Client::new(url, key).map_err(MeiliError::from)?;
        let index = client.index(index);
        Ok(Meili {
            client,
            index,
            resting_until: Default::default(),
        })
    }

    pub fn from_config(config: &MeiliConfig) -> Result<Meili, MeiliError> {
        Meili::new(&config.url, config.key.as_deref(), &config.index)
    }

    pub fn index_uid(&self) -> &str {
        &self.index.uid
    }

    /// Whether the server answers its health check.
    pub async fn health(&self) -> Result<(), MeiliError> {
        timed(self.client.health()).await.map(|_| ())
    }

    /// Whether the index can be used with the configured key: the health check needs no key,
    /// so this also reads the index.
    pub async fn check(&self) -> Result<(), MeiliError> {
        self.health().await?;
        timed(self.client.get_index(&self.index.uid))
            .await
            .map(|_| ())
    }

    /// Whether the index still has the settings [`Meili::apply_settings`] gives it; false when
    /// it was deleted and re-created with defaults.
    pub async fn settings_current(&self) -> Result<bool, MeiliError> {
        let mut filterable = timed(self.index.get_filterable_attributes()).await?;
        filterable.sort_unstable();
        let mut expected: Vec<&str> = FILTERABLE.to_vec();
        expected.sort_unstable();
        Ok(filterable == expected)
    }

    /// Creates the index if needed and applies its settings (searchable, filterable and
    /// sortable attributes, ranking), waiting until they are in force.
    pub async fn apply_settings(&self) -> Result<(), MeiliError> {
        let created = timed(self.client.create_index(&self.index.uid, Some("id"))).await?;
        // "Already exists" is the usual answer, and fine.
        let _ = self.wait(created).await;
        let settings = Settings::new()
            .with_searchable_attributes(SEARCHABLE)
            .with_filterable_attributes(FILTERABLE)
            .with_sortable_attributes(SORTABLE)
            .with_ranking_rules(RANKING)
            .with_pagination(PaginationSetting {
                max_total_hits: MAX_TOTAL_HITS,
            })
            // The same facet values as the Postgres engine: the most frequent first.
            .with_faceting(FacetingSettings {
                max_values_per_facet: MAX_FACET_VALUES,
                sort_facet_values_by: Some(BTreeMap::from([(
                    "*".to_owned(),
                    FacetSortValue::Count,
                )])),
            });
        let task = timed(self.index.set_settings(&settings)).await?;
        self.wait(task).await
    }

    /// Adds or replaces documents (by `id`) and waits until the index holds them.
    pub async fn upsert(&self, documents: &[SearchDocument]) -> Result<(), MeiliError> {
        if documents.is_empty() {
            return Ok(());
        }
        let task = timed(self.index.add_or_replace(documents, Some("id"))).await?;
        self.wait(task).await
    }

    /// After `sent` was written: reads the same incidents from Postgres again and rewrites those
    /// that changed meanwhile, until the index holds what Postgres holds. Another writer (a
    /// second index process, or a reindex) may have sent an older state after ours; whoever
    /// wrote last is checked last, and Meilisearch applies an index's tasks in order, so this
    /// converges. Returns how many were rewritten.
    pub async fn rewrite_changed(
        &self,
        pool: &sqlx::PgPool,
        sent: &[SearchDocument],
    ) -> Result<usize, SyncError> {
        let mut rewritten = 0;
        let mut last: std::collections::HashMap<Uuid, SearchDocument> =
            sent.iter().map(|d| (d.id, d.clone())).collect();
        for _ in 0..VERIFY_ROUNDS {
            let ids: Vec<Uuid> = last.keys().copied().collect();
            let fresh = super::document::for_incidents(pool, &ids).await?;
            let changed: Vec<SearchDocument> = fresh
                .into_iter()
                .filter(|d| last.get(&d.id) != Some(d))
                .collect();
            if changed.is_empty() {
                return Ok(rewritten);
            }
            self.upsert(&changed).await?;
            rewritten += changed.len();
            last = changed.into_iter().map(|d| (d.id, d)).collect();
        }
        Ok(rewritten)
    }

    /// Deletes the index itself, documents and settings.
    pub async fn delete_index(&self) -> Result<(), MeiliError> {
        let task = timed(self.index.clone().delete()).await?;
        self.wait(task).await
    }

    /// Removes every document (and keeps the settings).
    pub async fn clear(&self) -> Result<(), MeiliError> {
        let task = timed(self.index.delete_all_documents()).await?;
        self.wait(task).await
    }

    /// How many documents the index holds.
    pub async fn count(&self) -> Result<u64, MeiliError> {
        let mut query = meilisearch_sdk::documents::DocumentsQuery::new(&self.index);
        query.with_limit(1).with_fields(["id"]);
        let page = timed(query.execute::<IdOnly>()).await?;
        Ok(u64::from(page.total))
    }

    async fn wait(&self, task: TaskInfo) -> Result<(), MeiliError> {
        let waited = tokio::time::timeout(
            TASK_TIMEOUT + REQUEST_TIMEOUT,
            task.wait_for_completion(
                &self.client,
                Some(Duration::from_millis(50)),
                Some(TASK_TIMEOUT),
            ),
        )
        .await
        .map_err(|_| {
            MeiliError::Unavailable(format!(
                "a task did not finish within {} s",
                TASK_TIMEOUT.as_secs()
            ))
        })??;
        match waited {
            Task::Failed { content } => {
                let error = content.error;
                let reason = format!("{} ({:?})", error.error_message, error.error_code);
                // Only a request Meilisearch calls invalid is the data's fault; the rest
                // (disk, internal errors) may pass.
                if matches!(error.error_type, ErrorType::InvalidRequest) {
                    Err(MeiliError::Rejected(reason))
                } else {
                    Err(MeiliError::Unavailable(reason))
                }
            }
            _ => Ok(()),
        }
    }

    /// Searches with typo tolerance; filters, facets and highlights as [`SearchQuery`] says.
    /// After a failure, searches are refused at once for [`SEARCH_REST`], for the caller to
    /// answer otherwise.
    pub async fn search(&self, q: &SearchQuery) -> Result<SearchResult, MeiliError> {
        use std::sync::atomic::Ordering;
        let now = Utc::now().timestamp_millis();
        if now < self.resting_until.load(Ordering::Relaxed) {
            return Err(MeiliError::Unavailable(
                "resting after a failed search".to_owned(),
            ));
        }
        let result = self.search_now(q).await;
        if let Err(MeiliError::Unavailable(_)) = &result {
            let rest = i64::try_from(SEARCH_REST.as_millis()).unwrap_or(i64::MAX);
            self.resting_until.store(now + rest, Ordering::Relaxed);
        }
        result
    }

    async fn search_now(&self, q: &SearchQuery) -> Result<SearchResult, MeiliError> {
        let filter = filter(q);
        let sort = ["opened_at:desc"];
        let (limit, offset) = (
            usize::try_from(q.limit).unwrap_or(0),
            usize::try_from(q.offset).unwrap_or(0),
        );
        let mut query = self.index.search();
        query
            .with_query(&q.q)
            // Every word must match, as with Postgres.
            .with_matching_strategy(MatchingStrategies::ALL)
            .with_facets(Selectors::Some(FACETS))
            .with_attributes_to_highlight(Selectors::Some(HIGHLIGHTED))
            .with_highlight_pre_tag(PRE)
            .with_highlight_post_tag(POST);
        if !filter.is_empty() {
            query.with_filter(&filter);
        }
        if q.q.trim().is_empty() {
            query.with_sort(&sort);
        }
        // Pages give an exact total; an offset between pages only an estimate.
        if limit > 0 && offset % limit == 0 {
            query
                .with_hits_per_page(limit)
                .with_page(offset / limit + 1);
        } else {
            query.with_limit(limit).with_offset(offset);
        }
        let found =
            match tokio::time::timeout(SEARCH_TIMEOUT, query.execute::<SearchDocument>()).await {
                Ok(found) => found?,
                Err(_) => {
                    return Err(MeiliError::Unavailable(format!(
                        "no answer to a search within {} s",
                        SEARCH_TIMEOUT.as_secs()
                    )))
                }
            };
        let mut facets = Facets::default();
        for (name, values) in found.facet_distribution.unwrap_or_default() {
            let target = match name.as_str() {
                "status" => &mut facets.status,
                "severity" => &mut facets.severity,
                "service_id" => &mut facets.service_id,
                _ => continue,
            };
            target.extend(values.into_iter().map(|(k, v)| (k, v as u64)));
        }
        let hits = found
            .hits
            .into_iter()
            .filter_map(|hit| to_hit(hit.result, hit.formatted_result))
            .collect();
        Ok(SearchResult {
            hits,
            total: found.total_hits.or(found.estimated_total_hits).unwrap_or(0) as u64,
            facets,
        })
    }

    /// The ids of every document, for checking the index against Postgres.
    pub async fn ids(&self) -> Result<Vec<Uuid>, MeiliError> {
        let mut ids = Vec::new();
        let mut offset = 0;
        loop {
            let mut query = meilisearch_sdk::documents::DocumentsQuery::new(&self.index);
            query
                .with_limit(1000)
                .with_offset(offset)
                .with_fields(["id"]);
            let page = timed(query.execute::<IdOnly>()).await?;
            let n = page.results.len();
            ids.extend(page.results.into_iter().map(|d| d.id));
            if n < 1000 {
                break;
            }
            offset += n;
        }
        ids.sort_unstable();
        Ok(ids)
    }
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: Uuid,
}

async fn timed<T>(
    request: impl std::future::Future<Output = Result<T, SdkError>>,
) -> Result<T, MeiliError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(MeiliError::from),
        Err(_) => Err(MeiliError::Unavailable(format!(
            "no answer within {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
    }
}

/// The filter expression for the query's filters; values are quoted and escaped.
fn filter(q: &SearchQuery) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut parts = Vec::new();
    if let Some(status) = q.status {
        parts.push(format!("status = {}", quote(status.as_str())));
    }
    if let Some(severity) = q.severity {
        parts.push(format!("severity = {}", quote(severity.as_str())));
    }
    if let Some(service) = &q.service_id {
        parts.push(format!("service_id = {}", quote(service)));
    }
    if let Some(department) = q.department_id {
        parts.push(format!(
            "department_id = {}",
            quote(&department.to_string())
        ));
    }
    if let Some(from) = q.from {
        parts.push(format!("opened_at >= {}", seconds(from)));
    }
    if let Some(to) = q.to {
        parts.push(format!("opened_at < {}", seconds(to)));
    }
    parts.join(" AND ")
}

/// Unix seconds with the microseconds, as documents hold times.
fn seconds(at: chrono::DateTime<Utc>) -> f64 {
    at.timestamp_micros() as f64 / 1e6
}

fn to_hit(
    doc: SearchDocument,
    formatted: Option<serde_json::Map<String, Value>>,
) -> Option<SearchHit> {
    let time = |secs: f64| Utc.timestamp_micros((secs * 1e6).round() as i64).single();
    let mut highlights = BTreeMap::new();
    for (field, value) in formatted.unwrap_or_default() {
        let text = match value {
            Value::String(s) => s,
            // As the Postgres engine does: the oldest comment that matches, whole.
            Value::Array(items) => match items
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .find(|s| s.contains(PRE))
            {
                Some(comment) => comment,
                None => continue,
            },
            _ => continue,
        };
        if HIGHLIGHTED.contains(&field.as_str()) && text.contains(PRE) {
            highlights.insert(field, mark(&text));
        }
    }
    Some(SearchHit {
        id: doc.id,
        title: doc.title,
        message: doc.message,
        service_id: doc.service_id,
        service_name: doc.service_name,
        rule_id: doc.rule_id,
        rule_name: doc.rule_name,
        severity: doc.severity.parse().ok()?,
        status: doc.status.parse().ok()?,
        department_id: doc.department_id,
        opened_at: time(doc.opened_at)?,
        closed_at: doc.closed_at.and_then(time),
        resolved_at: doc.resolved_at.and_then(time),
        peak_value: doc.peak_value,
        highlights,
    })
}

/// Escapes the text as HTML, then turns the stand-in tags into `<mark>` and `</mark>`.
fn mark(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace(PRE, MARK_START)
        .replace(POST, MARK_END)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_quote_and_combine() {
        let q = SearchQuery {
            status: Some(schemas::IncidentStatus::Open),
            service_id: Some("pay\"cell".into()),
            from: Some("2026-11-23T10:00:00Z".parse().unwrap()),
            to: Some("2026-11-23T11:00:00.5Z".parse().unwrap()),
            ..SearchQuery::default()
        };
        assert_eq!(
            filter(&q),
            "status = \"OPEN\" AND service_id = \"pay\\\"cell\" AND opened_at >= 1795428000 \
             AND opened_at < 1795431600.5"
        );
        assert_eq!(filter(&SearchQuery::default()), "");
    }

    #[tokio::test]
    async fn a_failed_search_rests_meilisearch_for_a_while() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let meili = Meili::new(&format!("http://{closed}"), None, DEFAULT_INDEX).unwrap();
        let first = meili.search(&SearchQuery::default()).await.unwrap_err();
        assert!(!first.to_string().contains("resting"), "{first}");
        let second = meili.search(&SearchQuery::default()).await.unwrap_err();
        assert!(second.to_string().contains("resting"), "{second}");
    }

    #[test]
    fn highlights_escape_the_text_around_the_marks() {
        assert_eq!(
            mark("a <b> \u{1}paycell\u{2} & c"),
            "a &lt;b&gt; <mark>paycell</mark> &amp; c"
        );
    }
}
