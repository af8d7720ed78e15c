//! A fake of contract v1, in memory, for what the bare server cannot test: seeding, writes,
//! bearer tokens and the visibility-lag probe. One server answers both the command and the
//! query routes; a write is "projected" at once.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestServer, serve};

/// What the fake has seen and holds.
#[derive(Debug, Default)]
pub struct Ledger {
    pub users: HashMap<Uuid, String>,
    pub posts: HashMap<Uuid, Uuid>,
    pub commands: HashSet<Uuid>,
    pub registrations: usize,
    pub edits: usize,
    pub deletes: usize,
    /// Writes without the right bearer token.
    pub unauthorized: usize,
    /// Command reads that came without a consistency token.
    pub untokened_command_reads: usize,
    offset: u64,
}

type Shared = Arc<Mutex<Ledger>>;

/// A running fake; stops when dropped.
pub struct FakeApi {
    pub url: String,
    pub ledger: Shared,
    _server: TestServer,
}

pub async fn start() -> FakeApi {
    let ledger: Shared = Arc::default();
    let router = Router::new()
        .route("/v1/users", post(register))
        .route("/v1/users/{user_id}", get(read_user))
        .route(
            "/v1/users/{user_id}/posts",
            post(publish).get(list_user_posts),
        )
        .route(
            "/v1/users/{user_id}/posts/{post_id}",
            patch(edit).delete(delete),
        )
        .route("/v1/posts", get(feed))
        .route("/v1/posts/{post_id}", get(read_post))
        .route("/v1/commands/{command_id}", get(read_command))
        .with_state(Arc::clone(&ledger));
    let server = serve(router).await;
    FakeApi {
        url: server.url.clone(),
        ledger,
        _server: server,
    }
}

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().expect("ledger lock")
}

fn accepted(ledger: &mut Ledger, aggregate_id: Uuid, extra: Option<(&str, Value)>) -> Response {
    let command_id = Uuid::now_v7();
    ledger.commands.insert(command_id);
    ledger.offset += 1;
    let mut body = json!({
        "command_id": command_id,
        "aggregate_id": aggregate_id,
        "consistency_token": format!("v1.0.{}", ledger.offset),
        "links": {"status": format!("/v1/commands/{command_id}")},
    });
    if let Some((key, value)) = extra {
        body[key] = value;
    }
    (StatusCode::ACCEPTED, Json(body)).into_response()
}

/// True when the request carries the user's own token.
fn authorized(ledger: &mut Ledger, headers: &HeaderMap, user_id: Uuid) -> bool {
    let sent = headers
        .get("authorization")
        .and_then(|value| value.to_str().ok());
    let ok = ledger
        .users
        .get(&user_id)
        .is_some_and(|token| sent == Some(format!("Bearer {token}").as_str()));
    if !ok {
        ledger.unauthorized += 1;
    }
    ok
}

async fn register(State(ledger): State<Shared>, Json(body): Json<Value>) -> Response {
    assert!(body["display_name"].is_string());
    let mut ledger = lock(&ledger);
    let id = Uuid::now_v7();
    let token = format!("token-{}", Uuid::now_v7().simple());
    ledger.users.insert(id, token.clone());
    ledger.registrations += 1;
    accepted(&mut ledger, id, Some(("access_token", json!(token))))
}

async fn publish(
    State(ledger): State<Shared>,
    Path(user_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut ledger = lock(&ledger);
    if !authorized(&mut ledger, &headers, user_id) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let len = body["body"].as_str().map_or(0, str::len);
    assert!(body["title"].is_string() && len == 1024, "a 1 KB body");
    let id = Uuid::now_v7();
    ledger.posts.insert(id, user_id);
    accepted(&mut ledger, id, None)
}

async fn edit(
    State(ledger): State<Shared>,
    Path((user_id, post_id)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut ledger = lock(&ledger);
    if !authorized(&mut ledger, &headers, user_id) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    assert!(body["title"].is_string() && body["body"].is_string());
    ledger.edits += 1;
    accepted(&mut ledger, post_id, None)
}

async fn delete(
    State(ledger): State<Shared>,
    Path((user_id, post_id)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
) -> Response {
    let mut ledger = lock(&ledger);
    if !authorized(&mut ledger, &headers, user_id) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    ledger.posts.remove(&post_id);
    ledger.deletes += 1;
    accepted(&mut ledger, post_id, None)
}

async fn read_user(State(ledger): State<Shared>, Path(user_id): Path<Uuid>) -> Response {
    if lock(&ledger).users.contains_key(&user_id) {
        Json(json!({"id": user_id, "version": 1})).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn read_post(State(ledger): State<Shared>, Path(post_id): Path<Uuid>) -> Response {
    match lock(&ledger).posts.get(&post_id) {
        Some(author) => Json(json!({"id": post_id, "author_id": author})).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn list_user_posts(State(ledger): State<Shared>, Path(user_id): Path<Uuid>) -> Response {
    if lock(&ledger).users.contains_key(&user_id) {
        Json(json!({"items": [], "next_cursor": null})).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn feed() -> Json<Value> {
    Json(json!({"items": [], "next_cursor": null}))
}

async fn read_command(
    State(ledger): State<Shared>,
    Path(command_id): Path<Uuid>,
    headers: HeaderMap,
) -> Response {
    let mut ledger = lock(&ledger);
    if !headers.contains_key("consistency-token") {
        ledger.untokened_command_reads += 1;
    }
    if ledger.commands.contains(&command_id) {
        Json(json!({"command_id": command_id, "status": "applied"})).into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}
