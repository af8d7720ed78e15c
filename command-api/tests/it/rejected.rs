//! Every 4xx of every write route: the right status, a complete problem+json body, the fields
//! named, and no record appended.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Req, TestApp, config, spawn_app_with, spawn_shared_app};

/// A JSON object body of exactly `len` bytes: one string field padded with `x`.
pub fn padded_body(field: &str, len: usize) -> Vec<u8> {
    let overhead = format!(r#"{{"{field}":""}}"#).len();
    let body = format!(r#"{{"{field}":"{}"}}"#, "x".repeat(len - overhead));
    assert_eq!(body.len(), len);
    body.into_bytes()
}

/// One write route, as a client can reach it with valid input.
struct Route {
    method: Method,
    /// The path with valid ids.
    path: String,
    /// The path's user, whose token the route needs (none for the open sign-up).
    user: Option<Uuid>,
    /// The path with each id replaced in turn by something that is not a hyphenated UUID.
    bad_paths: Vec<String>,
    /// A body that passes every rule, for routes that take one.
    valid_body: Option<Value>,
    takes_if_match: bool,
    /// Bodies that break field rules, with the fields the 422 must name.
    invalid_bodies: Vec<(Value, Vec<&'static str>)>,
}

const NOT_UUIDS: [&str; 4] = [
    "not-a-uuid",
    "0190b6a0abcd7000800000000000000f",
    "0190b6a0-abcd-7000-8000-00000000000g",
    "0190b6a0-abcd-7000-8000-00000000000f0",
];

fn routes() -> Vec<Route> {
    let user = Uuid::now_v7();
    let post = Uuid::now_v7();
    let user_paths = |suffix: &str| {
        NOT_UUIDS
            .iter()
            .map(|bad| format!("/v1/users/{bad}{suffix}"))
            .collect::<Vec<_>>()
    };
    let post_paths = || {
        let mut paths: Vec<String> = NOT_UUIDS
            .iter()
            .map(|bad| format!("/v1/users/{bad}/posts/{post}"))
            .collect();
        paths.extend(
            NOT_UUIDS
                .iter()
                .map(|bad| format!("/v1/users/{user}/posts/{bad}")),
        );
        paths
    };
    let long = |n: usize| "é".repeat(n);
    vec![
        Route {
            method: Method::POST,
            path: "/v1/users".into(),
            user: None,
            bad_paths: vec![],
            valid_body: Some(json!({"display_name": "Ada"})),
            takes_if_match: false,
            invalid_bodies: vec![
                (json!({}), vec!["display_name"]),
                (json!({"bio": "b"}), vec!["display_name"]),
                (json!({"display_name": ""}), vec!["display_name"]),
                (json!({"display_name": long(101)}), vec!["display_name"]),
                (json!({"display_name": "a", "bio": long(1001)}), vec!["bio"]),
                (json!({"display_name": "a", "email": "a@b"}), vec!["email"]),
                (
                    json!({"display_name": 1, "bio": true}),
                    vec!["display_name", "bio"],
                ),
                (
                    json!({"display_name": null, "bio": null}),
                    vec!["display_name", "bio"],
                ),
                (
                    json!({"display_name": ["a"], "bio": {"a": 1}, "x": 1, "y": null}),
                    vec!["display_name", "bio", "x", "y"],
                ),
                (json!(["display_name"]), vec![""]),
                (json!("Ada"), vec![""]),
            ],
        },
        Route {
            method: Method::PATCH,
            path: format!("/v1/users/{user}"),
            user: Some(user),
            bad_paths: user_paths(""),
            valid_body: Some(json!({"bio": "b"})),
            takes_if_match: true,
            invalid_bodies: vec![
                (json!({}), vec![""]),
                (json!({"display_name": ""}), vec!["display_name"]),
                (json!({"display_name": long(101)}), vec!["display_name"]),
                (json!({"bio": long(1001)}), vec!["bio"]),
                (json!({"bio": "b", "avatar": "x"}), vec!["avatar"]),
                (json!({"avatar": "x"}), vec!["", "avatar"]),
                (json!({"display_name": 5}), vec!["display_name"]),
                (
                    json!({"display_name": null, "bio": null}),
                    vec!["display_name", "bio"],
                ),
                (json!(null), vec![""]),
            ],
        },
        Route {
            method: Method::DELETE,
            path: format!("/v1/users/{user}"),
            user: Some(user),
            bad_paths: user_paths(""),
            valid_body: None,
            takes_if_match: true,
            invalid_bodies: vec![],
        },
        Route {
            method: Method::POST,
            path: format!("/v1/users/{user}/posts"),
            user: Some(user),
            bad_paths: user_paths("/posts"),
            valid_body: Some(json!({"title": "t", "body": "b"})),
            takes_if_match: false,
            invalid_bodies: vec![
                (json!({}), vec!["title", "body"]),
                (json!({"title": "t"}), vec!["body"]),
                (json!({"title": "", "body": ""}), vec!["title", "body"]),
                (json!({"title": long(201), "body": "b"}), vec!["title"]),
                (
                    json!({"title": "t", "body": "x".repeat(16385)}),
                    vec!["body"],
                ),
                (json!({"title": "t", "body": "b", "tags": []}), vec!["tags"]),
                (json!({"title": 1, "body": false}), vec!["title", "body"]),
                (json!({"title": null, "body": null}), vec!["title", "body"]),
                (json!(42), vec![""]),
            ],
        },
        Route {
            method: Method::PATCH,
            path: format!("/v1/users/{user}/posts/{post}"),
            user: Some(user),
            bad_paths: post_paths(),
            valid_body: Some(json!({"body": "b"})),
            takes_if_match: true,
            invalid_bodies: vec![
                (json!({}), vec![""]),
                (json!({"title": ""}), vec!["title"]),
                (json!({"title": long(201)}), vec!["title"]),
                (json!({"body": "x".repeat(16385)}), vec!["body"]),
                (json!({"body": ""}), vec!["body"]),
                (json!({"title": "t", "author_id": "x"}), vec!["author_id"]),
                (json!({"title": 1.5}), vec!["title"]),
                (json!({"body": null}), vec!["body"]),
                (json!([]), vec![""]),
            ],
        },
        Route {
            method: Method::DELETE,
            path: format!("/v1/users/{user}/posts/{post}"),
            user: Some(user),
            bad_paths: post_paths(),
            valid_body: None,
            takes_if_match: true,
            invalid_bodies: vec![],
        },
    ]
}

/// A request to `route` that is valid apart from what the caller changes, with the token of the
/// path's user: these cases are about what comes after authentication (`auth.rs` has the rest).
fn valid_request(app: &TestApp, route: &Route) -> Req {
    let req = authorized(
        app,
        route,
        Req::new(route.method.clone(), route.path.clone()),
    );
    match &route.valid_body {
        Some(body) => req.json(body.clone()),
        None => req,
    }
}

fn authorized(app: &TestApp, route: &Route, req: Req) -> Req {
    match route.user {
        Some(user) => req.bearer(&app.token_for(user)),
        None => req,
    }
}

#[tokio::test]
async fn every_client_mistake_on_every_write_route_is_a_problem_and_appends_nothing() {
    // Hundreds of writes by one user in a second: far past any write rate limit, which is not
    // what this test is about (ratelimit.rs is), so limits are off here.
    let mut config = config(
        &test_support::kafka_brokers(),
        &test_support::unique_topic("command-api"),
    );
    config.write_rate_per_sec = 0;
    let app = spawn_app_with(config).await;
    let before = app.end_offset_sum().await;
    let mut checked = 0;

    for route in routes() {
        let name = format!("{} {}", route.method, route.path);
        let expect = |status: StatusCode, case: &str, answer: &crate::helpers::Answer| {
            assert_eq!(answer.status, status, "{name}: {case}: {}", answer.text);
            answer.problem(status);
        };

        for bad_path in &route.bad_paths {
            let mut req = valid_request(&app, &route);
            req.path = bad_path.clone();
            let answer = app.send(req).await;
            expect(StatusCode::BAD_REQUEST, bad_path, &answer);
            checked += 1;
        }

        let bad_keys: Vec<Vec<Vec<u8>>> = vec![
            vec![b"".to_vec()],
            vec![vec![b'k'; 201]],
            vec!["clé".as_bytes().to_vec()],
            vec![b"tab\there".to_vec()],
            vec![b"one".to_vec(), b"two".to_vec()],
        ];
        for values in bad_keys {
            let mut req = valid_request(&app, &route);
            for value in &values {
                req = req.header("idempotency-key", value.clone());
            }
            let answer = app.send(req).await;
            expect(
                StatusCode::BAD_REQUEST,
                &format!("Idempotency-Key {values:?}"),
                &answer,
            );
            checked += 1;
        }

        if route.takes_if_match {
            let bad_if_match: Vec<Vec<&str>> = vec![
                vec!["W/\"1\""],
                vec!["1"],
                vec!["\"0\""],
                vec!["\"-1\""],
                vec!["\"01\""],
                vec!["\"9223372036854775808\""],
                vec!["\"1\", \"2\""],
                vec!["\"1\"", "\"2\""],
                vec!["\"abc\""],
                vec![""],
            ];
            for values in bad_if_match {
                let mut req = valid_request(&app, &route);
                for value in &values {
                    req = req.header("if-match", *value);
                }
                let answer = app.send(req).await;
                expect(
                    StatusCode::BAD_REQUEST,
                    &format!("If-Match {values:?}"),
                    &answer,
                );
                checked += 1;
            }
        }

        if route.valid_body.is_none() {
            continue;
        }
        let with_body = |body: Vec<u8>, content_type: Option<&str>| {
            let req = Req::new(route.method.clone(), route.path.clone());
            authorized(&app, &route, req).raw_body(body, content_type)
        };
        let body_cases: Vec<(&str, Req, StatusCode)> = vec![
            (
                "truncated JSON",
                with_body(br#"{"title": "#.to_vec(), Some("application/json")),
                StatusCode::BAD_REQUEST,
            ),
            (
                "trailing garbage",
                with_body(br#"{"bio": "b"} x"#.to_vec(), Some("application/json")),
                StatusCode::BAD_REQUEST,
            ),
            (
                "empty body",
                with_body(Vec::new(), Some("application/json")),
                StatusCode::BAD_REQUEST,
            ),
            (
                "invalid UTF-8",
                with_body(
                    b"{\"title\": \"\xff\xfe\"}".to_vec(),
                    Some("application/json"),
                ),
                StatusCode::BAD_REQUEST,
            ),
            (
                "lone surrogate",
                with_body(br#"{"title": "\ud800"}"#.to_vec(), Some("application/json")),
                StatusCode::BAD_REQUEST,
            ),
            (
                "65537 bytes",
                with_body(padded_body("title", 65537), Some("application/json")),
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                "text/plain",
                with_body(
                    br#"{"title": "t", "body": "b"}"#.to_vec(),
                    Some("text/plain"),
                ),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "no content type",
                with_body(br#"{"title": "t", "body": "b"}"#.to_vec(), None),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                "application/xml",
                with_body(b"<user/>".to_vec(), Some("application/xml")),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
        ];
        for (case, req, status) in body_cases {
            let answer = app.send(req).await;
            expect(status, case, &answer);
            checked += 1;
        }

        for (body, fields) in &route.invalid_bodies {
            let answer = app
                .send(with_body(
                    serde_json::to_vec(body).expect("json"),
                    Some("application/json"),
                ))
                .await;
            let case = format!("{body:.80}");
            expect(StatusCode::UNPROCESSABLE_ENTITY, &case, &answer);
            assert_eq!(answer.error_fields(), *fields, "{name}: {case}");
            checked += 1;
        }
    }

    assert!(checked > 150, "only {checked} cases ran");
    assert_eq!(
        app.end_offset_sum().await,
        before,
        "a 4xx appended a record"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let app = spawn_shared_app().await;
    let user = Uuid::now_v7();
    let post = Uuid::now_v7();
    for (method, path) in [
        (Method::GET, "/nope".to_owned()),
        (Method::POST, "/v1/posts".to_owned()),
        (Method::POST, format!("/v1/users/{user}/likes")),
        (
            Method::DELETE,
            format!("/v1/users/{user}/posts/{post}/comments"),
        ),
    ] {
        let answer = app
            .send(Req::new(method.clone(), path.clone()).json(json!({})))
            .await;
        answer.problem(StatusCode::NOT_FOUND);
    }
    for (method, path) in [
        (Method::GET, "/v1/users".to_owned()),
        (Method::PUT, format!("/v1/users/{user}")),
        (Method::POST, format!("/v1/users/{user}")),
        (Method::GET, format!("/v1/users/{user}/posts")),
        (Method::POST, format!("/v1/users/{user}/posts/{post}")),
        (Method::DELETE, "/readyz".to_owned()),
    ] {
        let answer = app
            .send(Req::new(method.clone(), path.clone()).json(json!({})))
            .await;
        assert_eq!(
            answer.status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {}",
            answer.text
        );
        answer.problem(StatusCode::METHOD_NOT_ALLOWED);
    }
    assert_eq!(app.end_offset_sum().await, 0);
}

#[tokio::test]
async fn validation_answers_say_what_is_wrong() {
    let app = spawn_shared_app().await;
    let answer = app
        .send(
            Req::new(Method::POST, "/v1/users")
                .json(json!({"display_name": "", "bio": 3, "role": "admin"})),
        )
        .await;
    let body = answer.problem(StatusCode::UNPROCESSABLE_ENTITY).clone();
    assert_eq!(body["errors"][0]["field"], "display_name");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .expect("message")
            .contains("1 to 100"),
        "{body}"
    );
    assert!(
        body["errors"][1]["message"]
            .as_str()
            .expect("message")
            .contains("string"),
        "{body}"
    );
    assert!(
        body["errors"][2]["message"]
            .as_str()
            .expect("message")
            .contains("known"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().expect("detail").contains("role"),
        "{body}"
    );

    let answer = app
        .send(
            Req::new(Method::PATCH, "/v1/users/42")
                .json(json!({"bio": "b"}))
                .bearer(&app.token_for(Uuid::now_v7())),
        )
        .await;
    let body = answer.problem(StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().expect("detail").contains("user_id"),
        "{body}"
    );
}
