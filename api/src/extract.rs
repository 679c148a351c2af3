//! Extractors whose rejections use the API's error envelope and name the offending field.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;
use store::{Page, Sort, SortField};

use crate::error::ApiError;

/// A JSON body. Malformed JSON is a 400; a body of the wrong shape is a 422 whose details name
/// the field path, such as `threshold`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|m| m.trim() == "application/json")
            });
        if !is_json {
            return Err(ApiError::bad_request(
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(format!("the body is too large: {e}"))
            } else {
                ApiError::bad_request(format!("could not read the body: {e}"))
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Deserializes JSON, reporting the path of the field that failed.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.classify() == serde_json::error::Category::Data {
            shape_error(&path, strip_position(&inner.to_string()))
        } else if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
            // serde_json reports some wrong types, such as a number where an enum's string
            // belongs, as syntax errors; well-formed JSON of the wrong shape is still a 422.
            shape_error(&path, "has the wrong type".to_owned())
        } else {
            ApiError::bad_request(format!("malformed JSON: {inner}"))
        }
    })
}

/// A 422 naming the failing field. serde reports a missing or repeated field at its parent's
/// path, naming it only in the message, so the name is taken from there.
fn shape_error(path: &str, message: String) -> ApiError {
    let named = ["missing field `", "duplicate field `", "duplicate key `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.strip_suffix('`'));
    match (path, named) {
        (".", Some(name)) => ApiError::invalid_field(name, message.clone()),
        (_, Some(name)) => ApiError::invalid_field(format!("{path}.{name}"), message.clone()),
        (".", None) => ApiError::Validation {
            message: message.clone(),
            details: json!([{ "field": null, "message": message }]),
        },
        (_, None) => ApiError::invalid_field(path, message),
    }
}

/// serde_json appends "at line 1 column 20"; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Query-string parameters, taken one by one by name so that errors name the parameter, and
/// unknown parameters are refused.
pub struct Params {
    values: BTreeMap<String, String>,
    known: Vec<&'static str>,
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))?;
        let mut values = BTreeMap::new();
        for (name, value) in pairs {
            if values.insert(name.clone(), value).is_some() {
                return Err(query_error(&name, "is given more than once"));
            }
        }
        Ok(Params {
            values,
            known: Vec::new(),
        })
    }
}

impl Params {
    /// Removes and parses one parameter; empty values count as absent.
    pub fn take<T>(&mut self, name: &'static str) -> Result<Option<T>, ApiError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.known.push(name);
        match self.values.remove(name) {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|e: T::Err| query_error(name, &e.to_string())),
        }
    }

    /// `limit` (default 50, at most 1000) and `offset` (default 0).
    pub fn page(&mut self) -> Result<Page, ApiError> {
        let limit = self.take::<i64>("limit")?.unwrap_or(Page::DEFAULT_LIMIT);
        if !(1..=Page::MAX_LIMIT).contains(&limit) {
            return Err(query_error(
                "limit",
                &format!("must be between 1 and {}", Page::MAX_LIMIT),
            ));
        }
        let offset = self.take::<i64>("offset")?.unwrap_or(0);
        if offset < 0 {
            return Err(query_error("offset", "must not be negative"));
        }
        Ok(Page { limit, offset })
    }

    /// `sort_by` (one of `fields`) and `sort_dir` (`asc` or `desc`). Without `sort_by` the list
    /// keeps its `default` order; `sort_dir` alone reverses or keeps that order.
    pub fn sort(&mut self, fields: &[SortField], default: Sort) -> Result<Sort, ApiError> {
        let field = match self.take::<String>("sort_by")? {
            None => default.field,
            Some(name) => *fields.iter().find(|f| f.name == name).ok_or_else(|| {
                let names: Vec<_> = fields.iter().map(|f| f.name).collect();
                query_error(
                    "sort_by",
                    &format!("cannot sort by {name:?}; use one of {}", names.join(", ")),
                )
            })?,
        };
        let descending = match self.take::<String>("sort_dir")?.as_deref() {
            None => default.descending,
            Some("asc") => false,
            Some("desc") => true,
            Some(other) => {
                return Err(query_error(
                    "sort_dir",
                    &format!("{other:?} is not asc or desc"),
                ))
            }
        };
        Ok(Sort { field, descending })
    }

    /// Fails if any parameter was not taken.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(unknown) => Err(ApiError::BadRequest {
                message: format!(
                    "unknown query parameter `{unknown}`; expected one of {}",
                    self.known.join(", ")
                ),
                details: json!([{ "field": unknown, "message": "unknown query parameter" }]),
            }),
        }
    }
}

/// A 400 naming a query parameter and what is wrong with it.
pub fn query_error(name: &str, reason: &str) -> ApiError {
    ApiError::BadRequest {
        message: format!("query parameter `{name}`: {reason}"),
        details: json!([{ "field": name, "message": reason }]),
    }
}

/// Deserializes an already-parsed JSON value, naming the failing field like [`parse_json`].
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        shape_error(&path, strip_position(&e.into_inner().to_string()))
    })
}

/// For `#[serde(default, deserialize_with = "present")]` on an `Option<Option<T>>` field: tells a
/// field sent as `null` (`Some(None)`) from one left out (`None`).
pub fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: serde::Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(deserializer).map(Some)
}

/// Text trimmed of surrounding space, 1 to `max` characters; the error names the field.
pub fn bounded_text<'a>(field: &str, text: &'a str, max: usize) -> Result<&'a str, ApiError> {
    let trimmed = text.trim();
    match trimmed.chars().count() {
        0 => Err(ApiError::invalid_field(field, "must not be empty")),
        n if n > max => Err(ApiError::invalid_field(
            field,
            format!("must be at most {max} characters, got {n}"),
        )),
        _ => Ok(trimmed),
    }
}

/// A comma-separated list of service ids in query parameter `name`: validated, sorted and
/// without repeats, between `min` and `max` of them.
pub fn service_id_list(
    raw: &str,
    name: &str,
    min: usize,
    max: usize,
) -> Result<Vec<String>, ApiError> {
    let mut ids: Vec<String> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() < min || ids.len() > max {
        return Err(query_error(
            name,
            &format!("{} services; give {min} to {max}", ids.len()),
        ));
    }
    for id in &ids {
        schemas::sample::validate_service_id(id)
            .map_err(|reason| query_error(name, &format!("{id:?}: {reason}")))?;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    enum Colour {
        Red,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        colour: Colour,
    }

    #[test]
    fn a_wrong_type_is_a_shape_error_and_broken_json_is_malformed() {
        match parse_json::<Body>(br#"{"colour": 3}"#) {
            Err(ApiError::Validation { details, .. }) => assert_eq!(details[0]["field"], "colour"),
            other => panic!("expected a validation error, got {other:?}"),
        }
        assert!(matches!(
            parse_json::<Body>(br#"{"colour": "#),
            Err(ApiError::BadRequest { .. })
        ));
    }
}
