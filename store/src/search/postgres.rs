//! Search answered by Postgres full-text search, when no Meilisearch is configured.
//!
//! Each incident's title, message, rule name, service id and display name, and the text of its
//! comments, are kept as a tsvector (english stemming) in `incident_search`, behind a GIN index
//! and kept current by triggers; see the `search` migration. A query is read in web-search
//! syntax: words match their stems (`timeouts` finds `timeout`), `"quoted words"` must appear
//! together, `or` offers alternatives and `-word` excludes. There is no typo tolerance: a
//! misspelt word matches only what stems the same.
//!
//! Hits come by relevance (`ts_rank_cd`, title words weighing most, then message and service,
//! then comments), newest first among equals; an empty query lists every incident the filters
//! allow, newest first. The total and the facets count every hit, not only the page's.
//!
//! Highlights are HTML: the source text has `&`, `<` and `>` escaped as entities before matches
//! are wrapped in [`MARK_START`] and [`MARK_END`], so the marks are the only markup. A field is
//! highlighted only when it contains a match; for comments, that is the oldest comment that
//! contains one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use schemas::{IncidentStatus, Severity};
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::document::TITLE_SQL;
use super::{Facets, SearchHit, SearchQuery, SearchResult, MARK_END, MARK_START, MAX_FACET_VALUES};

/// Whether the query has words to look for; otherwise it lists.
fn has_words(q: &SearchQuery) -> bool {
    !q.q.trim().is_empty()
}

/// Finds the page of incidents `q` asks for, with the total and facets over all hits.
pub async fn search(pool: &PgPool, q: &SearchQuery) -> Result<SearchResult, sqlx::Error> {
    let mut page = page_query(q, "");
    let mut facets = facets_query(q, "");
    // Built for this query's text and filters, and planned with their values: a generic plan
    // would parse the search text again for every row it filters.
    let (rows, counts) = tokio::try_join!(
        page.build_query_as::<HitRow>()
            .persistent(false)
            .fetch_all(pool),
        facets
            .build_query_as::<FacetRow>()
            .persistent(false)
            .fetch_all(pool),
    )?;
    let (total, facets) = tally(counts);
    Ok(SearchResult {
        hits: rows.into_iter().map(HitRow::into_hit).collect(),
        total,
        facets,
    })
}

/// The plans of [`search`]'s page and facet queries, as `EXPLAIN (FORMAT JSON)` gives them: how
/// tests and operators check that a search uses the GIN index.
pub async fn search_plans(
    pool: &PgPool,
    q: &SearchQuery,
) -> Result<[serde_json::Value; 2], sqlx::Error> {
    const EXPLAIN: &str = "EXPLAIN (FORMAT JSON) ";
    let page = page_query(q, EXPLAIN)
        .build_query_scalar()
        .persistent(false)
        .fetch_one(pool)
        .await?;
    let facets = facets_query(q, EXPLAIN)
        .build_query_scalar()
        .persistent(false)
        .fetch_one(pool)
        .await?;
    Ok([page, facets])
}

#[derive(sqlx::FromRow)]
struct HitRow {
    id: Uuid,
    title: String,
    message: String,
    service_id: String,
    service_name: String,
    rule_id: Uuid,
    rule_name: String,
    #[sqlx(try_from = "String")]
    severity: Severity,
    #[sqlx(try_from = "String")]
    status: IncidentStatus,
    department_id: Option<Uuid>,
    opened_at: DateTime<Utc>,
    closed_at: Option<DateTime<Utc>>,
    resolved_at: Option<DateTime<Utc>>,
    peak_value: f64,
    title_highlight: Option<String>,
    message_highlight: Option<String>,
    comment_highlight: Option<String>,
}

impl HitRow {
    fn into_hit(self) -> SearchHit {
        let highlights = [
            ("title", self.title_highlight),
            ("message", self.message_highlight),
            ("comments", self.comment_highlight),
        ]
        .into_iter()
        .filter_map(|(field, text)| {
            text.filter(|t| t.contains(MARK_START))
                .map(|t| (field.to_owned(), join_marks(&t)))
        })
        .collect();
        SearchHit {
            id: self.id,
            title: self.title,
            message: self.message,
            service_id: self.service_id,
            service_name: self.service_name,
            rule_id: self.rule_id,
            rule_name: self.rule_name,
            severity: self.severity,
            status: self.status,
            department_id: self.department_id,
            opened_at: self.opened_at,
            closed_at: self.closed_at,
            resolved_at: self.resolved_at,
            peak_value: self.peak_value,
            highlights,
        }
    }
}

/// One mark around words marked one after the other: the parser splits `svc-423` into `svc`
/// and `-423`, and each is marked.
fn join_marks(text: &str) -> String {
    text.replace(&format!("{MARK_END}{MARK_START}"), "")
}

/// The columns of a hit, from `incidents i` and `services s`.
const HIT_COLUMNS: &str = "i.id, i.rule_name, i.message, i.service_id, i.rule_id, i.severity, \
    i.status, i.department_id, i.opened_at, i.closed_at, i.resolved_at, i.peak_value, \
    coalesce(s.display_name, i.service_id) AS service_name";

/// The page. With words, the hits are first collected with their rank (through the GIN index,
/// or through a filter's index when that finds fewer rows) and only the page's rows are then
/// read and highlighted; materialising the hits keeps Postgres from sorting every match by rank
/// before joining it, in the hope of stopping early, which it cannot when many ranks are equal.
fn page_query<'a>(q: &'a SearchQuery, prefix: &str) -> QueryBuilder<'a, Postgres> {
    let mut query = QueryBuilder::new(prefix);
    if !has_words(q) {
        query.push(format!(
            "SELECT {HIT_COLUMNS}, {TITLE_SQL} AS title, NULL::text AS title_highlight,
                    NULL::text AS message_highlight, NULL::text AS comment_highlight
             FROM incidents i JOIN services s ON s.id = i.service_id WHERE true"
        ));
        push_filters(&mut query, q);
        query.push(" ORDER BY i.opened_at DESC, i.id DESC");
        push_page(&mut query, q);
        return query;
    }
    query.push("WITH hits AS MATERIALIZED (SELECT i.id, i.opened_at, ts_rank_cd(x.document, ");
    push_tsquery(&mut query, q);
    query.push(") AS rank");
    push_matches(&mut query, q);
    query.push(
        "), page AS (SELECT id, opened_at, rank FROM hits
                     ORDER BY rank DESC, opened_at DESC, id DESC",
    );
    push_page(&mut query, q);
    let options = format!("StartSel={MARK_START}, StopSel={MARK_END}, HighlightAll=true");
    let headline = |query: &mut QueryBuilder<'a, Postgres>, text: &str| {
        query.push(format!("ts_headline('english', search_escape({text}), "));
        push_tsquery(query, q);
        query.push(", ").push_bind(options.clone()).push(")");
    };
    query.push(format!(") SELECT {HIT_COLUMNS}, {TITLE_SQL} AS title, "));
    headline(&mut query, TITLE_SQL);
    query.push(" AS title_highlight, ");
    headline(&mut query, "i.message");
    query.push(
        " AS message_highlight,
         (SELECT hl.text FROM incident_comments c CROSS JOIN LATERAL (SELECT ",
    );
    headline(&mut query, "c.body");
    query
        .push(
            " AS text) hl
            WHERE c.incident_id = i.id AND strpos(hl.text, ",
        )
        .push_bind(MARK_START)
        .push(
            ") > 0 ORDER BY c.created_at, c.id LIMIT 1) AS comment_highlight
         FROM page p JOIN incidents i ON i.id = p.id JOIN services s ON s.id = i.service_id
         ORDER BY p.rank DESC, p.opened_at DESC, p.id DESC",
        );
    query
}

/// Counts per status, severity and service, and in all (the empty grouping set), over every hit.
fn facets_query<'a>(q: &'a SearchQuery, prefix: &str) -> QueryBuilder<'a, Postgres> {
    let mut query = QueryBuilder::new(prefix);
    query.push(
        "SELECT CASE WHEN GROUPING(i.status) = 0 THEN 'status'
                     WHEN GROUPING(i.severity) = 0 THEN 'severity'
                     WHEN GROUPING(i.service_id) = 0 THEN 'service_id' END AS facet,
                coalesce(i.status, i.severity, i.service_id) AS value, count(*) AS count",
    );
    if has_words(q) {
        push_matches(&mut query, q);
    } else {
        query.push(" FROM incidents i WHERE true");
        push_filters(&mut query, q);
    }
    query.push(" GROUP BY GROUPING SETS ((), (i.status), (i.severity), (i.service_id))");
    query
}

/// ` FROM … WHERE …`: the incidents whose document matches the words and that pass the filters.
/// A text with no searchable word matches nothing; testing that first (a constant, once the
/// plan has the text) spares Postgres an empty query, which it would report at every row.
fn push_matches<'a>(query: &mut QueryBuilder<'a, Postgres>, q: &'a SearchQuery) {
    query.push(
        " FROM incident_search x JOIN incidents i ON i.id = x.incident_id
         WHERE numnode(",
    );
    push_tsquery(query, q);
    query.push(") > 0 AND x.document @@ ");
    push_tsquery(query, q);
    push_filters(query, q);
}

fn push_tsquery<'a>(query: &mut QueryBuilder<'a, Postgres>, q: &'a SearchQuery) {
    query
        .push("incident_search_query(")
        .push_bind(q.q.trim())
        .push(")");
}

/// The filters of `GET /api/incidents`, with the same meaning, on `incidents i`.
fn push_filters<'a>(query: &mut QueryBuilder<'a, Postgres>, q: &'a SearchQuery) {
    if let Some(status) = q.status {
        query.push(" AND i.status = ").push_bind(status.as_str());
    }
    if let Some(severity) = q.severity {
        query
            .push(" AND i.severity = ")
            .push_bind(severity.as_str());
    }
    if let Some(service_id) = &q.service_id {
        query
            .push(" AND i.service_id = ")
            .push_bind(service_id.as_str());
    }
    if let Some(department_id) = q.department_id {
        query
            .push(" AND i.department_id = ")
            .push_bind(department_id);
    }
    if let Some(from) = q.from {
        query.push(" AND i.opened_at >= ").push_bind(from);
    }
    if let Some(to) = q.to {
        query.push(" AND i.opened_at < ").push_bind(to);
    }
}

fn push_page(query: &mut QueryBuilder<'_, Postgres>, q: &SearchQuery) {
    query
        .push(" LIMIT ")
        .push_bind(q.limit)
        .push(" OFFSET ")
        .push_bind(q.offset);
}

#[derive(sqlx::FromRow)]
struct FacetRow {
    facet: Option<String>,
    value: Option<String>,
    count: i64,
}

/// The total (the row of the empty grouping set) and each facet's most frequent values.
fn tally(rows: Vec<FacetRow>) -> (u64, Facets) {
    let mut total = 0;
    let mut counts: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for row in rows {
        let count = u64::try_from(row.count).unwrap_or(0);
        match (row.facet, row.value) {
            (Some(facet), Some(value)) => counts.entry(facet).or_default().push((value, count)),
            _ => total = count,
        }
    }
    let mut take = |facet: &str| -> BTreeMap<String, u64> {
        let mut values = counts.remove(facet).unwrap_or_default();
        values.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        values.truncate(MAX_FACET_VALUES);
        values.into_iter().collect()
    };
    let facets = Facets {
        status: take("status"),
        severity: take("severity"),
        service_id: take("service_id"),
    };
    (total, facets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_marks_become_one() {
        assert_eq!(
            join_marks("rule 22 on <mark>svc</mark><mark>-423</mark> and <mark>x</mark>"),
            "rule 22 on <mark>svc-423</mark> and <mark>x</mark>"
        );
    }

    fn row(facet: Option<&str>, value: Option<&str>, count: i64) -> FacetRow {
        FacetRow {
            facet: facet.map(str::to_owned),
            value: value.map(str::to_owned),
            count,
        }
    }

    #[test]
    fn the_total_is_the_row_of_the_empty_grouping_set() {
        let (total, facets) = tally(vec![
            row(Some("status"), Some("OPEN"), 2),
            row(None, None, 3),
            row(Some("status"), Some("CLOSED"), 1),
            row(Some("severity"), Some("HIGH"), 3),
            row(Some("service_id"), Some("S1"), 3),
        ]);
        assert_eq!(total, 3);
        assert_eq!(
            facets.status,
            BTreeMap::from([("CLOSED".into(), 1), ("OPEN".into(), 2)])
        );
        assert_eq!(facets.severity, BTreeMap::from([("HIGH".into(), 3)]));
        assert_eq!(facets.service_id, BTreeMap::from([("S1".into(), 3)]));
    }

    #[test]
    fn a_facet_keeps_its_most_frequent_values() {
        let mut rows: Vec<FacetRow> = (0..MAX_FACET_VALUES as i64 + 5)
            .map(|i| row(Some("service_id"), Some(&format!("svc-{i:03}")), 1 + i % 3))
            .collect();
        rows.push(row(None, None, 500));
        let (_, facets) = tally(rows);
        assert_eq!(facets.service_id.len(), MAX_FACET_VALUES);
        // Of 105 values, 35 are counted once, twice and three times each: the five left out
        // are the last, by value, of those counted once.
        let dropped: Vec<String> = (0..105)
            .filter(|i| i % 3 == 0)
            .map(|i| format!("svc-{i:03}"))
            .rev()
            .take(5)
            .collect();
        for id in &dropped {
            assert!(!facets.service_id.contains_key(id), "{id} kept");
        }
        assert!(facets.service_id.values().all(|&c| c >= 1));
    }
}
