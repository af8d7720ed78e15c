//! `GET /openapi.json`: served, OpenAPI 3.1, every route the service serves is in it with its
//! methods (and nothing else), and real answers are what it says.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_support::openapi::{METHODS, check_answer, methods_of};
use uuid::Uuid;

use crate::helpers::{Answer, Req, TestApp, spawn_shared_app};

async fn document(app: &TestApp) -> Value {
    let answer = app.get("/openapi.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    answer.body
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    let id = Uuid::now_v7().to_string();
    path.replace("{user_id}", &id).replace("{post_id}", &id)
}

#[tokio::test]
async fn the_document_is_served_and_is_the_code_s() {
    let app = spawn_shared_app().await;
    let served = document(&app).await;
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        served["openapi"]
    );
    assert_eq!(
        served["servers"],
        json!([{"url": "/", "description": "the host that serves this document"}])
    );
    assert_eq!(served, command_api::openapi_document());
    let mut paths: Vec<(&str, Vec<String>)> = served["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(|path| (path.as_str(), methods_of(&served, path)))
        .collect();
    paths.sort();
    let expected = [
        ("/healthz", vec!["GET"]),
        ("/metrics", vec!["GET"]),
        ("/openapi.json", vec!["GET"]),
        ("/readyz", vec!["GET"]),
        ("/v1/users", vec!["POST"]),
        ("/v1/users/{user_id}", vec!["PATCH", "DELETE"]),
        ("/v1/users/{user_id}/posts", vec!["POST"]),
        (
            "/v1/users/{user_id}/posts/{post_id}",
            vec!["PATCH", "DELETE"],
        ),
    ];
    assert_eq!(paths.len(), expected.len(), "{paths:?}");
    for ((path, methods), (expected_path, expected_methods)) in paths.iter().zip(expected) {
        assert_eq!(*path, expected_path);
        let mut methods = methods.clone();
        methods.sort();
        let mut expected_methods: Vec<String> =
            expected_methods.into_iter().map(str::to_owned).collect();
        expected_methods.sort();
        assert_eq!(methods, expected_methods, "{path}");
    }
}

/// The drift test: every documented path answers each documented method (not with the
/// no-such-route 404 nor a 405) and refuses every other with 405; a path the document does
/// not have is the no-such-route 404.
#[tokio::test]
async fn the_service_serves_exactly_the_documented_routes_and_methods() {
    let app = spawn_shared_app().await;
    let document = document(&app).await;
    for path in document["paths"].as_object().expect("paths").keys() {
        let documented = methods_of(&document, path);
        for method in METHODS {
            let answer = app
                .send(Req::new(
                    Method::from_bytes(method.as_bytes()).expect("a method"),
                    concrete(path),
                ))
                .await;
            if documented.iter().any(|m| m == method) {
                assert_ne!(
                    answer.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
                assert_ne!(answer.body["detail"], "no such route", "{method} {path}");
            } else {
                assert_eq!(
                    answer.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
            }
        }
    }
    let answer = app.get("/v1/undocumented").await;
    assert_eq!(
        answer.problem(StatusCode::NOT_FOUND)["detail"],
        "no such route"
    );
}

fn assert_documented(document: &Value, method: &str, path: &str, answer: &Answer) {
    let headers: Vec<(String, String)> = answer
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    check_answer(
        document,
        method,
        path,
        answer.status.as_u16(),
        &headers,
        answer.header("content-type"),
        &answer.body,
    )
    .unwrap_or_else(|error| panic!("{error}\n{}", answer.text));
}

#[tokio::test]
async fn real_answers_are_what_the_document_says() {
    let app = spawn_shared_app().await;
    let document = document(&app).await;

    let signed_up = app
        .send(Req::new(Method::POST, "/v1/users").json(json!({"display_name": "Ada"})))
        .await;
    assert_documented(&document, "POST", "/v1/users", &signed_up);
    let user = signed_up.accepted();
    let token = user.access_token();
    let user_path = format!("/v1/users/{}", user.aggregate_id);

    let edited = app
        .send(
            Req::new(Method::PATCH, &user_path)
                .bearer(token)
                .json(json!({"bio": "x"})),
        )
        .await;
    assert_eq!(edited.status, StatusCode::ACCEPTED);
    assert_documented(&document, "PATCH", "/v1/users/{user_id}", &edited);

    let invalid = app
        .send(
            Req::new(Method::PATCH, &user_path)
                .bearer(token)
                .json(json!({"nick": 1})),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_documented(&document, "PATCH", "/v1/users/{user_id}", &invalid);

    let unauthenticated = app.send(Req::new(Method::DELETE, &user_path)).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
    assert_documented(&document, "DELETE", "/v1/users/{user_id}", &unauthenticated);

    let malformed = app
        .send(
            Req::new(Method::POST, format!("{user_path}/posts"))
                .bearer(token)
                .raw_body("{", Some("application/json")),
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_documented(&document, "POST", "/v1/users/{user_id}/posts", &malformed);
}
