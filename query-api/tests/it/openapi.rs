//! `GET /openapi.json`: served, OpenAPI 3.1, every route the service serves is in it with its
//! methods (and nothing else), and real answers are what it says.

use std::time::Duration;

use reqwest::{Method, Response};
use serde_json::{Value, json};
use test_support::openapi::{METHODS, check_answer, methods_of};
use test_support::{TestDb, unique_topic};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use crate::seed;

async fn app_on(db: &TestDb) -> TestApp {
    spawn_app(&db.url, &unique_topic("query"), Duration::from_secs(5)).await
}

async fn document(app: &TestApp) -> Value {
    let response = app.get("/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.expect("a JSON document")
}

#[tokio::test]
async fn the_document_is_served_and_is_the_code_s() {
    let db = TestDb::migrated().await;
    let app = app_on(&db).await;
    let served = document(&app).await;
    assert!(
        served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "{}",
        served["openapi"]
    );
    assert_eq!(served["servers"][0]["url"], "/");
    assert_eq!(served, query_api::openapi_document());
    let mut paths: Vec<&str> = served["paths"]
        .as_object()
        .expect("paths")
        .keys()
        .map(String::as_str)
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/openapi.json",
            "/readyz",
            "/v1/commands/{command_id}",
            "/v1/posts",
            "/v1/posts/{post_id}",
            "/v1/streams/{aggregate_id}/events",
            "/v1/users/{user_id}",
            "/v1/users/{user_id}/posts",
        ]
    );
    for path in paths {
        assert_eq!(methods_of(&served, path), ["GET"], "{path}");
    }
}

/// The drift test: every documented path answers its documented methods (not with the
/// no-such-route 404 nor a 405) and refuses every other with 405; a path the document does
/// not have is the no-such-route 404.
#[tokio::test]
async fn the_service_serves_exactly_the_documented_routes_and_methods() {
    let db = TestDb::migrated().await;
    let app = app_on(&db).await;
    let document = document(&app).await;
    let client = test_support::http();
    let id = Uuid::now_v7().to_string();
    for path in document["paths"].as_object().expect("paths").keys() {
        let documented = methods_of(&document, path);
        let concrete = ["{user_id}", "{post_id}", "{command_id}", "{aggregate_id}"]
            .iter()
            .fold(path.clone(), |path, name| path.replace(name, &id));
        for method in METHODS {
            let method = Method::from_bytes(method.as_bytes()).expect("a method");
            let response = client
                .request(method.clone(), format!("{}{concrete}", app.address))
                .send()
                .await
                .expect("answered");
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if documented.iter().any(|m| m == method.as_str()) {
                assert_ne!(status, 405, "{method} {path}");
                assert_ne!(body["detail"], "no such route", "{method} {path}");
            } else {
                assert_eq!(status, 405, "{method} {path}");
            }
        }
    }
    let response = app.get("/v1/undocumented").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("a problem");
    assert_eq!(body["detail"], "no such route");
}

/// Checks one answer against the document's response for `path` (a template) and returns its
/// body.
async fn assert_documented(document: &Value, path: &str, response: Response) -> Value {
    let status = response.status().as_u16();
    let headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let text = response.text().await.expect("a body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    check_answer(
        document,
        "GET",
        path,
        status,
        &headers,
        content_type.as_deref(),
        &body,
    )
    .unwrap_or_else(|error| panic!("{error}\n{text}"));
    body
}

#[tokio::test]
async fn real_answers_are_what_the_document_says() {
    let db = TestDb::migrated().await;
    let pool = db.pool().await;
    let user = seed::user(&pool, "Ada", None, seed::at(0)).await;
    for n in 0..2 {
        seed::post(&pool, user, &format!("post {n}"), seed::at(n + 1)).await;
    }
    let post = seed::post(&pool, user, "latest", seed::at(10)).await;
    let applied = Uuid::now_v7();
    seed::applied(&pool, applied, user, 1).await;
    let rejected = Uuid::now_v7();
    seed::rejected(&pool, rejected, user, "version_conflict").await;
    seed::event(
        &pool,
        user,
        1,
        "user.registered",
        json!({"display_name": "Ada"}),
        seed::at(0),
    )
    .await;
    seed::event(
        &pool,
        user,
        2,
        "user.profile_updated",
        json!({"bio": "x"}),
        seed::at(1),
    )
    .await;
    let app = app_on(&db).await;
    let document = document(&app).await;

    let body = assert_documented(
        &document,
        "/v1/users/{user_id}",
        app.get(&format!("/v1/users/{user}")).await,
    )
    .await;
    assert_eq!(body["bio"], Value::Null);
    let etag = format!("\"{}\"", body["version"]);
    let not_modified = app
        .get_with(&format!("/v1/users/{user}"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(not_modified.status(), 304);
    assert_documented(&document, "/v1/users/{user_id}", not_modified).await;
    assert_documented(
        &document,
        "/v1/posts/{post_id}",
        app.get(&format!("/v1/posts/{post}")).await,
    )
    .await;
    let page = assert_documented(&document, "/v1/posts", app.get("/v1/posts?limit=2").await).await;
    assert!(page["next_cursor"].is_string(), "{page}");
    let last = assert_documented(
        &document,
        "/v1/users/{user_id}/posts",
        app.get(&format!("/v1/users/{user}/posts?limit=5")).await,
    )
    .await;
    assert_eq!(last["next_cursor"], Value::Null);
    for command in [applied, rejected] {
        assert_documented(
            &document,
            "/v1/commands/{command_id}",
            app.get(&format!("/v1/commands/{command}")).await,
        )
        .await;
    }
    let stream = assert_documented(
        &document,
        "/v1/streams/{aggregate_id}/events",
        app.get(&format!("/v1/streams/{user}/events?limit=1")).await,
    )
    .await;
    assert_eq!(stream["items"].as_array().map(Vec::len), Some(1));

    let missing = app.get(&format!("/v1/users/{}", Uuid::now_v7())).await;
    assert_eq!(missing.status(), 404);
    assert_documented(&document, "/v1/users/{user_id}", missing).await;
    let bad_limit = app.get("/v1/posts?limit=0").await;
    assert_eq!(bad_limit.status(), 400);
    assert_documented(&document, "/v1/posts", bad_limit).await;
}
