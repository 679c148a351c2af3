//! Liveness (`/health`) and readiness (`/ready`), with each dependency reported separately.

use std::future::Future;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::AppState;

/// The process is up and serving.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when every dependency answers, else 503; the body says which is down and why.
pub async fn ready(State(state): State<AppState>) -> Response {
    let timeout = state.ready_timeout;
    let (nats, postgres) = tokio::join!(
        check(timeout, check_nats(&state)),
        check(timeout, async {
            store::ping(&state.pool).await.map_err(|e| e.to_string())
        }),
    );
    let ok = nats["ok"] == true && postgres["ok"] == true;
    let body = json!({
        "status": if ok { "ready" } else { "not_ready" },
        "checks": {
            "nats": nats,
            "postgres": postgres,
            "meilisearch": { "ok": true, "state": "not_configured" },
        },
    });
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

async fn check(timeout: Duration, probe: impl Future<Output = Result<(), String>>) -> Value {
    match tokio::time::timeout(timeout, probe).await {
        Ok(Ok(())) => json!({ "ok": true }),
        Ok(Err(e)) => json!({ "ok": false, "error": e }),
        Err(_) => json!({ "ok": false, "error": format!("no answer within {timeout:?}") }),
    }
}
