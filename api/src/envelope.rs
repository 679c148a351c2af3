//! The response envelopes: `{"data": …}` for one resource, `{"data": […], "meta": {…}}` for
//! lists.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use store::Page;

/// `{"data": value}` with 200.
pub fn data<T: Serialize>(value: T) -> Response {
    Json(json!({ "data": value })).into_response()
}

/// `{"data": value}` with 201, for a created resource.
pub fn created<T: Serialize>(value: T) -> Response {
    (StatusCode::CREATED, Json(json!({ "data": value }))).into_response()
}

/// `{"data": items, "meta": {"total", "limit", "offset"}}`.
pub fn list<T: Serialize>(items: Vec<T>, total: i64, page: Page) -> Response {
    Json(json!({
        "data": items,
        "meta": { "total": total, "limit": page.limit, "offset": page.offset },
    }))
    .into_response()
}
