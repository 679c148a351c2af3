//! The response envelopes: `{"data": …}` for one resource, `{"data": […], "meta": {…}}` for
//! lists. The structs are what the API document describes; the functions build responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::json;
use store::Page;
use utoipa::ToSchema;

/// One resource.
#[derive(Serialize, ToSchema)]
pub struct Data<T> {
    pub data: T,
}

/// A page of a list.
#[derive(Serialize, ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    pub meta: ListMeta,
}

#[derive(Serialize, ToSchema)]
pub struct ListMeta {
    /// How many items match the filters, across all pages.
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

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
