//! Incident search: what a query asks, what a hit shows, and the facets, shared by both
//! engines. [`postgres`] answers from Postgres full-text search when no Meilisearch is
//! configured; [`meili`] answers from Meilisearch and loads its index; [`document`] builds what the `index` consumer sends to Meilisearch, always from the
//! incident's current row.

pub mod document;
pub mod meili;
pub mod postgres;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemas::{IncidentStatus, Severity};
use serde::Serialize;
use uuid::Uuid;

/// What `GET /api/search` asks. An empty `q` matches every incident the filters allow, newest
/// first; otherwise hits come by relevance.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    pub q: String,
    pub status: Option<IncidentStatus>,
    pub severity: Option<Severity>,
    pub service_id: Option<String>,
    pub department_id: Option<Uuid>,
    /// Opened at or after.
    pub from: Option<DateTime<Utc>>,
    /// Opened before.
    pub to: Option<DateTime<Utc>>,
    pub limit: i64,
    pub offset: i64,
}

/// One incident found.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SearchHit {
    pub id: Uuid,
    /// `<rule name> on <service name>`.
    pub title: String,
    pub message: String,
    pub service_id: String,
    /// The service's display name, or its id when it has none.
    pub service_name: String,
    pub rule_id: Uuid,
    pub rule_name: String,
    pub severity: Severity,
    pub status: IncidentStatus,
    pub department_id: Option<Uuid>,
    pub opened_at: DateTime<Utc>,
    pub closed_at: Option<DateTime<Utc>>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub peak_value: f64,
    /// The fields that matched (`title`, `message`, `comments`), with each match wrapped in
    /// `<mark>` and `</mark>`. The values are HTML: `&`, `<` and `>` of the text are escaped,
    /// so the marks are the only markup.
    pub highlights: BTreeMap<String, String>,
}

/// How many of all the hits (not just this page) have each value; at most 100 values per facet
/// (`MAX_FACET_VALUES`), those with the most hits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Facets {
    pub status: BTreeMap<String, u64>,
    pub severity: BTreeMap<String, u64>,
    pub service_id: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResult {
    pub hits: Vec<SearchHit>,
    /// Hits across all pages.
    pub total: u64,
    pub facets: Facets,
}

/// Which engine answered, as `meta.engine` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    Meilisearch,
    Postgres,
}

/// The most values a facet lists: those with the most hits, ties by value. Meilisearch's default
/// `maxValuesPerFacet`.
pub const MAX_FACET_VALUES: usize = 100;

/// Highlighted matches are wrapped in these.
pub const MARK_START: &str = "<mark>";
pub const MARK_END: &str = "</mark>";
