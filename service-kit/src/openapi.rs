//! OpenAPI 3.1 documents: what every API's document has in common, and serving it.
//!
//! Each API describes its own routes with utoipa, registered together with the routes
//! (`utoipa_axum::routes!`), so that a route cannot be served undocumented. [`document`] then
//! adds what is the same for every service, in one place rather than in every route's
//! attributes:
//! - the routes of [`crate::http::with_common_layers`] (`/healthz`, `/metrics`) and
//!   `/openapi.json` itself;
//! - the limits' answers on every route ([`crate::limits`]: 414, 431, and 408 where there is a
//!   body);
//! - every error answer (4xx, 5xx) is `application/problem+json`: the [`Problem`] schema, with
//!   `status` fixed to the answer's code, and `errors` required in a 422 (`ValidationProblem`);
//! - `Retry-After` on every 429 and 503, and `x-request-id` on every answer;
//! - every response header it documents is marked `required` (utoipa's header object has no
//!   such field): a header is documented only where the service always sends it;
//! - `servers` is the relative `/`: the document describes whichever host serves it.
//!
//! [`serve`] answers `GET /openapi.json` with the document, serialized once.
//!
//! [`Problem`]: crate::Problem

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;

/// Where every service serves its document.
pub const PATH: &str = "/openapi.json";

const PROBLEM_JSON: &str = crate::problem::CONTENT_TYPE;

/// The complete document of an API from what its routes declare: see the module's doc.
pub fn document(api: OpenApi) -> Value {
    let mut document = match serde_json::to_value(api) {
        Ok(value) => value,
        // utoipa's types are plain data; serializing them cannot fail.
        Err(error) => unreachable!("an OpenAPI document does not serialize: {error}"),
    };
    document["servers"] =
        json!([{"url": "/", "description": "the host that serves this document"}]);
    let paths = object_at(&mut document, "paths");
    for (path, item) in common_paths() {
        paths.insert(path.to_owned(), item);
    }
    for item in paths.values_mut() {
        let Some(operations) = item.as_object_mut() else {
            continue;
        };
        for operation in operations.values_mut() {
            let has_body = operation.get("requestBody").is_some();
            if let Some(responses) = operation
                .get_mut("responses")
                .and_then(Value::as_object_mut)
            {
                add_limit_answers(responses, has_body);
                for (status, response) in responses.iter_mut() {
                    finish_response(status, response);
                }
            }
        }
    }
    let schemas = object_at(&mut document["components"], "schemas");
    for (name, schema) in problem_schemas() {
        schemas.insert(name.to_owned(), schema);
    }
    document
}

/// Adds `GET /openapi.json`, answering `document` (serialized here, once).
pub fn serve(router: Router, document: &Value) -> Router {
    let bytes = Bytes::from(document.to_string());
    router.route(
        PATH,
        get(move || {
            let bytes = bytes.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    bytes,
                )
            }
        }),
    )
}

/// The object at `key` of `value` (an object, or null), created empty if absent.
fn object_at<'a>(value: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    let slot = &mut value[key];
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(map) => map,
        _ => unreachable!("just made an object"),
    }
}

/// The answers [`crate::limits`] gives on any route (414, 431) and on any route with a body
/// (408), whatever the route itself declares.
fn add_limit_answers(responses: &mut Map<String, Value>, has_body: bool) {
    let mut add = |status: &str, description: &str| {
        responses
            .entry(status.to_owned())
            .or_insert_with(|| json!({ "description": description }));
    };
    add(
        "414",
        "The request target is longer than the server accepts.",
    );
    add(
        "431",
        "The request's headers are larger or more than the server accepts.",
    );
    if has_body {
        add(
            "408",
            "The body did not arrive within the server's body read timeout.",
        );
    }
}

fn finish_response(status: &str, response: &mut Value) {
    let code: u16 = status.parse().unwrap_or(0);
    if code >= 400 && response.get("content").is_none() {
        let problem = if code == 422 {
            "ValidationProblem"
        } else {
            "Problem"
        };
        response["content"] = json!({
            PROBLEM_JSON: {"schema": {"allOf": [
                {"$ref": format!("#/components/schemas/{problem}")},
                {"properties": {"status": {"const": code}}},
            ]}}
        });
    }
    let headers = object_at(response, "headers");
    if code == 429 || code == 503 {
        headers.entry("Retry-After").or_insert_with(|| {
            json!({
                "description": "Seconds to wait before retrying.",
                "schema": {"type": "integer", "minimum": 1},
            })
        });
    }
    headers.insert(
        "x-request-id".to_owned(),
        json!({
            "description": "The request's id: the caller's `x-request-id` if it sent one, else a \
                            new one. Every log line of the request carries it.",
            "schema": {"type": "string"},
        }),
    );
    for header in headers.values_mut() {
        header["required"] = Value::Bool(true);
    }
}

/// The routes every service has besides its own (`with_common_layers`, and [`serve`]).
fn common_paths() -> [(&'static str, Value); 3] {
    let plain = |description: &str, content_type: &str| json!({"description": description, "content": {content_type: {"schema": {"type": "string"}}}});
    [
        (
            "/healthz",
            json!({"get": {
                "tags": ["operations"],
                "summary": "Liveness: 200 while the process runs",
                "operationId": "healthz",
                "responses": {"200": plain("The process is alive.", "text/plain")},
            }}),
        ),
        (
            "/metrics",
            json!({"get": {
                "tags": ["operations"],
                "summary": "Metrics in Prometheus text format",
                "operationId": "metrics",
                "responses": {"200": plain("The metrics.", "text/plain")},
            }}),
        ),
        (
            PATH,
            json!({"get": {
                "tags": ["operations"],
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": {
                    "description": "The OpenAPI 3.1 document of this service.",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                }},
            }}),
        ),
    ]
}

/// The schemas of `Problem`'s JSON body (see `problem.rs`, whose answers the tests below check
/// against them).
fn problem_schemas() -> [(&'static str, Value); 3] {
    [
        (
            "Problem",
            json!({
                "type": "object",
                "description": "An error answer (RFC 9457), always `application/problem+json`.",
                "required": ["type", "title", "status", "detail"],
                "additionalProperties": false,
                "properties": {
                    "type": {
                        "type": "string",
                        "format": "uri-reference",
                        "pattern": "^/problems/[a-z][a-z-]*$",
                        "description": "What kind of problem it is; stable, for programs.",
                    },
                    "title": {"type": "string", "minLength": 1, "description": "The kind, for people."},
                    "status": {"type": "integer", "minimum": 400, "maximum": 599},
                    "detail": {"type": "string", "description": "This occurrence, for people."},
                    "errors": {
                        "type": "array",
                        "items": {"$ref": "#/components/schemas/FieldError"},
                        "minItems": 1,
                        "description": "The fields that broke a rule (422 only).",
                    },
                },
            }),
        ),
        (
            "ValidationProblem",
            json!({
                "description": "A 422: well-formed JSON that breaks field rules, each named in `errors`.",
                "allOf": [
                    {"$ref": "#/components/schemas/Problem"},
                    {"required": ["errors"], "properties": {"type": {"const": "/problems/validation"}}},
                ],
            }),
        ),
        (
            "FieldError",
            json!({
                "type": "object",
                "required": ["field", "message"],
                "additionalProperties": false,
                "properties": {
                    "field": {
                        "type": "string",
                        "description": "The field's name; \"\" (the whole document) for rules about \
                                        the body as a whole.",
                    },
                    "message": {"type": "string"},
                },
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use utoipa::openapi::OpenApiBuilder;

    use super::*;
    use crate::{FieldError, Problem};

    fn sample() -> Value {
        let mut api = OpenApiBuilder::new().build();
        api.paths = serde_json::from_value(json!({"/things/{id}": {"get": {
            "responses": {
                "200": {"description": "ok", "headers": {"ETag": {"schema": {"type": "string"}}}},
                "404": {"description": "none"},
                "422": {"description": "bad"},
                "503": {"description": "down"},
            }
        }}}))
        .expect("paths");
        document(api)
    }

    #[test]
    fn errors_are_problems_with_their_status_and_headers_are_required() {
        let document = sample();
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(document["servers"][0]["url"], "/");
        let responses = &document["paths"]["/things/{id}"]["get"]["responses"];
        let schema = &responses["404"]["content"][PROBLEM_JSON]["schema"]["allOf"];
        assert_eq!(schema[0]["$ref"], "#/components/schemas/Problem");
        assert_eq!(schema[1]["properties"]["status"]["const"], 404);
        let schema = &responses["422"]["content"][PROBLEM_JSON]["schema"]["allOf"];
        assert_eq!(schema[0]["$ref"], "#/components/schemas/ValidationProblem");
        assert_eq!(responses["200"]["headers"]["ETag"]["required"], true);
        assert_eq!(
            responses["200"]["headers"]["x-request-id"]["required"],
            true
        );
        assert_eq!(responses["503"]["headers"]["Retry-After"]["required"], true);
        assert!(responses["404"]["headers"].get("Retry-After").is_none());
        assert!(responses["200"].get("content").is_none());
        for path in ["/healthz", "/metrics", PATH] {
            assert!(document["paths"][path]["get"].is_object(), "{path}");
        }
    }

    #[test]
    fn every_route_documents_the_limits_answers_and_a_route_with_a_body_the_timeout() {
        let mut api = OpenApiBuilder::new().build();
        api.paths = serde_json::from_value(json!({"/things": {
            "get": {"responses": {"200": {"description": "ok"}}},
            "post": {
                "requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"202": {"description": "ok"}},
            },
        }}))
        .expect("paths");
        let document = document(api);
        let get = &document["paths"]["/things"]["get"]["responses"];
        let post = &document["paths"]["/things"]["post"]["responses"];
        for responses in [get, post] {
            for status in ["414", "431"] {
                let schema = &responses[status]["content"][PROBLEM_JSON]["schema"]["allOf"];
                assert_eq!(
                    schema[0]["$ref"], "#/components/schemas/Problem",
                    "{status}"
                );
            }
        }
        assert!(get.get("408").is_none());
        assert!(post["408"]["content"][PROBLEM_JSON].is_object());
    }

    /// The body a `Problem` answers, parsed back.
    fn body_of(problem: Problem) -> Map<String, Value> {
        let response = problem.into_response();
        let bytes = body_bytes(response);
        serde_json::from_slice(&bytes).expect("a JSON object")
    }

    fn body_bytes(response: axum::response::Response) -> Bytes {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime
            .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
            .expect("a body")
    }

    #[test]
    fn problem_answers_have_exactly_the_schema_s_fields() {
        let schemas: Map<String, Value> = problem_schemas()
            .into_iter()
            .map(|(name, schema)| (name.to_owned(), schema))
            .collect();
        let problem = &schemas["Problem"];
        let properties = problem["properties"].as_object().expect("properties");
        let required: Vec<&str> = problem["required"]
            .as_array()
            .expect("required")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let pattern = |text: &str| {
            text.strip_prefix("/problems/").is_some_and(|kind| {
                kind.starts_with(|c: char| c.is_ascii_lowercase())
                    && kind.chars().all(|c| c.is_ascii_lowercase() || c == '-')
            })
        };
        for answer in [
            Problem::not_found("x"),
            Problem::bad_request("invalid-id", "x"),
            Problem::unavailable("x", 1),
            Problem::internal(),
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "T", "x"),
            Problem::validation(vec![FieldError::new("", "m"), FieldError::new("a", "m")]),
        ] {
            let status = answer.status.as_u16();
            let body = body_of(answer);
            for key in body.keys() {
                assert!(properties.contains_key(key), "{key} is not in the schema");
            }
            for key in &required {
                assert!(body.contains_key(*key), "{key} is missing");
            }
            assert_eq!(body["status"], status);
            assert!(
                pattern(body["type"].as_str().unwrap_or_default()),
                "{body:?}"
            );
            if status == 422 {
                assert_eq!(body["type"], "/problems/validation");
                let errors = body["errors"].as_array().expect("errors");
                assert!(!errors.is_empty());
                for error in errors {
                    let keys: Vec<&String> = error.as_object().expect("object").keys().collect();
                    assert_eq!(keys, ["field", "message"]);
                }
            } else {
                assert!(!body.contains_key("errors"));
            }
        }
    }
}
