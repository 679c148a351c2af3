//! `/api/search`: incident search with highlights and facet counts. [`run`] picks the engine;
//! the response has the same shape whichever answers, and `meta.engine` names it.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use schemas::{IncidentStatus, Severity};
use serde::Serialize;
use store::search::{Engine, Facets, SearchHit, SearchQuery, SearchResult};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use crate::auth::{Caller, Viewer};
use crate::error::ApiError;
use crate::extract::{query_error, Params};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(search))
}

/// Longest search text, in characters, after trimming.
pub const MAX_QUERY_CHARS: usize = 200;

/// The query string of `GET /api/search`; the filters mean what they mean for
/// `GET /api/incidents`.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct SearchParams {
    /// What to look for in the title, message, rule, service and comments, up to 200
    /// characters. Words match their stems; `"quoted words"` must appear together, `or` offers
    /// alternatives and `-word` excludes. Empty or absent lists every incident the filters
    /// allow, newest first.
    #[param(max_length = 200)]
    q: Option<String>,
    /// Only incidents in this status.
    #[param(inline)]
    status: Option<IncidentStatus>,
    /// Only incidents of this severity.
    #[param(inline)]
    severity: Option<Severity>,
    /// Only incidents of this service.
    service_id: Option<String>,
    /// Only incidents owned by this department.
    department_id: Option<Uuid>,
    /// Opened at or after this time (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Opened before this time (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Hits per page, 1 to 1000; 50 when omitted.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Hits to skip.
    #[param(minimum = 0)]
    offset: Option<i64>,
}

/// A page of hits.
#[derive(Serialize, ToSchema)]
pub struct SearchPage {
    pub data: Vec<SearchHit>,
    pub meta: SearchMeta,
}

#[derive(Serialize, ToSchema)]
pub struct SearchMeta {
    /// How many incidents match, across all pages.
    pub total: u64,
    pub limit: i64,
    pub offset: i64,
    /// Which engine answered: `meilisearch`, or `postgres` when none is configured.
    pub engine: Engine,
    /// Over all hits, not just this page: how many have each status, severity and service (at
    /// most 100 services, those with the most hits).
    pub facets: Facets,
}

/// Searches incidents. With `q`, hits come by relevance, the newest first among equals, each
/// with `highlights`: for every field that matched (`title`, `message`, `comments`), its text
/// as HTML with each match wrapped in `<mark>` and `</mark>`; `&`, `<` and `>` in the text are
/// escaped, so the marks are its only markup. The Postgres engine does not tolerate typos.
#[utoipa::path(get, path = "/search", tag = "search",
    params(SearchParams),
    responses((status = 200, description = "A page of hits, with the total and facet counts.", body = SearchPage)))]
pub async fn search(
    _: Caller<Viewer>,
    State(state): State<AppState>,
    mut params: Params,
) -> Result<Response, ApiError> {
    let text = params.take::<String>("q")?.unwrap_or_default();
    let text = text.trim();
    let chars = text.chars().count();
    if chars > MAX_QUERY_CHARS {
        return Err(query_error(
            "q",
            &format!("must be at most {MAX_QUERY_CHARS} characters, got {chars}"),
        ));
    }
    let mut query = SearchQuery {
        q: text.to_owned(),
        status: params.take("status")?,
        severity: params.take("severity")?,
        service_id: params.take("service_id")?,
        department_id: params.take("department_id")?,
        from: params.take("from")?,
        to: params.take("to")?,
        ..SearchQuery::default()
    };
    let page = params.page()?;
    params.finish()?;
    (query.limit, query.offset) = (page.limit, page.offset);
    let (result, engine) = run(&state, &query).await?;
    Ok(Json(SearchPage {
        data: result.hits,
        meta: SearchMeta {
            total: result.total,
            limit: page.limit,
            offset: page.offset,
            engine,
            facets: result.facets,
        },
    })
    .into_response())
}

/// Answers from the engine in use, saying which: Meilisearch when it is configured and answers,
/// else Postgres full-text search (also while Meilisearch is down, so search keeps working).
async fn run(state: &AppState, query: &SearchQuery) -> Result<(SearchResult, Engine), ApiError> {
    if let Some(meili) = &state.meili {
        match meili.search(query).await {
            Ok(result) => return Ok((result, Engine::Meilisearch)),
            Err(e) => {
                metrics::counter!("tracely_search_fallbacks_total").increment(1);
                tracing::warn!(error = %e, "Meilisearch did not answer a search; answering from Postgres");
            }
        }
    }
    let result = store::search::postgres::search(&state.pool, query).await?;
    Ok((result, Engine::Postgres))
}
