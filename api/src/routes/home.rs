//! `/`: the overview page (incidents, rules, services, readiness), embedded in the binary.

use axum::response::Html;

const INDEX: &str = include_str!("../../assets/index.html");

pub async fn index() -> Html<&'static str> {
    Html(INDEX)
}
