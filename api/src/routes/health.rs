//! Liveness (`/health`) and readiness (`/ready`), with each dependency reported separately.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` when every dependency answers, else `not_ready`.
    pub status: String,
    pub checks: Checks,
}

#[derive(Serialize, ToSchema)]
pub struct Checks {
    pub nats: Check,
    pub postgres: Check,
    pub meilisearch: Check,
}

#[derive(Serialize, ToSchema)]
pub struct Check {
    pub ok: bool,
    /// Why the dependency is not usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For Meilisearch: `not_configured` (search is served by Postgres), `ok`, `catching_up`
    /// (the index consumer has a backlog) or `unavailable` (search falls back to Postgres
    /// meanwhile, and the backlog waits in the stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// For Meilisearch: INCIDENTS messages the index consumer has not finished yet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog: Option<u64>,
}

/// The process is up and serving.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is up.", body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".to_owned(),
    })
}

/// 200 when every dependency answers, else 503; the body says which is down and why.
#[utoipa::path(get, path = "/ready", tag = "operations", responses(
    (status = 200, description = "Every dependency answers.", body = Readiness),
    (status = 503, description = "A dependency is down; `checks` says which.", body = Readiness),
))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let timeout = state.settings.ready_timeout;
    let (nats, postgres, meilisearch) = tokio::join!(
        check(timeout, check_nats(&state)),
        check(timeout, async {
            store::ping(&state.pool).await.map_err(|e| e.to_string())
        }),
        check_meilisearch(&state, timeout),
    );
    // Search falls back to Postgres, so Meilisearch does not decide readiness.
    let ok = nats.ok && postgres.ok;
    let body = Readiness {
        status: if ok { "ready" } else { "not_ready" }.to_owned(),
        checks: Checks {
            nats,
            postgres,
            meilisearch,
        },
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn check_nats(state: &AppState) -> Result<(), String> {
    if state.nats.connection_state() != async_nats::connection::State::Connected {
        return Err("not connected".to_owned());
    }
    state
        .js
        .query_account()
        .await
        .map(|_| ())
        .map_err(|e| format!("JetStream unavailable: {e}"))
}

async fn check(timeout: Duration, probe: impl Future<Output = Result<(), String>>) -> Check {
    let error = match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("no answer within {timeout:?}")),
    };
    Check {
        ok: error.is_none(),
        error,
        state: None,
        backlog: None,
    }
}

async fn check_meilisearch(state: &AppState, timeout: Duration) -> Check {
    let Some(meili) = &state.meili else {
        return Check {
            ok: true,
            error: None,
            state: Some("not_configured".to_owned()),
            backlog: None,
        };
    };
    let mut result = check(timeout, async {
        meili.check().await.map_err(|e| e.to_string())
    })
    .await;
    let backlog = tokio::time::timeout(timeout, async {
        let stream = state.js.get_stream("INCIDENTS").await.ok()?;
        let info = stream.consumer_info("index").await.ok()?;
        Some(info.num_pending + info.num_ack_pending as u64)
    })
    .await
    .ok()
    .flatten();
    result.state = Some(
        match (result.ok, backlog) {
            (false, _) => "unavailable",
            (true, Some(n)) if n > 0 => "catching_up",
            (true, _) => "ok",
        }
        .to_owned(),
    );
    result.backlog = backlog;
    result
}
