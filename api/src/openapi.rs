//! The OpenAPI 3 document served at `/api/openapi.json`. Paths, parameters and bodies come from
//! the `#[utoipa::path]` attribute on each handler, collected as routes are registered, so a
//! route cannot exist undocumented. The errors every `/api` operation can answer (bad query,
//! missing key, weak role, rate limit, unavailable dependency) are added here once.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Type};
use utoipa::{IntoParams, Modify, ToSchema};

use crate::error::ErrorBody;

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Tracely",
        description = "Streaming service-quality monitor: incidents, rules and their \
                       backtests, backfill jobs, services, metrics, departments, notifications, \
                       silences and API keys. Send \
                       `Authorization: Bearer <key>` on every `/api` request; `/health`, \
                       `/ready`, `/metrics` and this document are open."
    ),
    components(schemas(ErrorBody, SortDir))
)]
pub struct ApiDoc;

/// Applies the conventions below to a document whose paths are all registered.
pub fn finish(doc: &mut OpenApi) {
    Conventions.modify(doc);
}

/// `limit`, `offset`, `sort_by` and `sort_dir`, which every list takes.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// Items per page, 1 to 1000; 50 when omitted.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Items to skip.
    #[param(minimum = 0)]
    offset: Option<i64>,
    /// The field to sort by; each list names its fields in its description.
    sort_by: Option<String>,
    /// `asc` or `desc`; each list has its own default.
    #[param(inline)]
    sort_dir: Option<SortDir>,
}

#[derive(ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum SortDir {
    Asc,
    Desc,
}

/// Security scheme, the shared error responses, and no authentication on the open routes.
struct Conventions;

/// Routes that need no key.
const OPEN: &[&str] = &["/health", "/ready", "/metrics", "/api/openapi.json"];

impl Modify for Conventions {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let open = OPEN.contains(&path.as_str());
            let has_id = path.contains('{');
            for operation in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                if open {
                    operation.security = Some(Vec::new());
                    continue;
                }
                operation.security =
                    Some(vec![utoipa::openapi::security::SecurityRequirement::new(
                        "api_key",
                        Vec::<String>::new(),
                    )]);
                let has_body = operation.request_body.is_some();
                let responses = &mut operation.responses.responses;
                let mut add = |status: &str, response: Response| {
                    responses
                        .entry(status.to_owned())
                        .or_insert(RefOr::T(response));
                };
                add(
                    "400",
                    error("The query string or path is malformed, or names an unknown parameter."),
                );
                add(
                    "401",
                    with_header(
                        error("No API key, or an unknown or revoked one."),
                        "WWW-Authenticate",
                        "Always `Bearer`.",
                    ),
                );
                add(
                    "403",
                    error("The key's role is too weak for this operation."),
                );
                add(
                    "429",
                    with_header(
                        error("Too many requests from this key or address."),
                        "Retry-After",
                        "Seconds to wait before retrying.",
                    ),
                );
                add(
                    "500",
                    error("An unexpected failure; the server logs the cause."),
                );
                add(
                    "503",
                    error("A dependency (Postgres or NATS) is unavailable; retry later."),
                );
                if has_id {
                    add("404", error("No such resource."));
                }
                if has_body {
                    add("413", error("The body is larger than the limit."));
                    add("422", error("The body is well-formed JSON of the wrong shape; `details` names the fields."));
                }
            }
        }
    }
}

fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("ErrorBody")))
                .build(),
        )
        .build()
}

fn with_header(mut response: Response, name: &str, description: &str) -> Response {
    response.headers.insert(
        name.to_owned(),
        RefOr::T(
            HeaderBuilder::new()
                .schema(Some(
                    utoipa::openapi::ObjectBuilder::new().schema_type(Type::String),
                ))
                .description(Some(description))
                .build(),
        ),
    );
    response
}
