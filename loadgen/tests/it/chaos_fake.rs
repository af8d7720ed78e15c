//! A fake of contract v1 for `loadgen chaos`: users, posts, decisions and event streams in
//! memory, every write decided at once, idempotency keys honoured, and [`Faults`] that break
//! one promise each, for the checks to catch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestServer, serve};

/// Promises the fake breaks, each once.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// The first publication is answered 202 and never decided, nor applied.
    pub lose_first_publish: bool,
    /// The first publication's event is in the post's stream twice.
    pub duplicate_first_publish: bool,
    /// The first token read of a user whose name changed shows the name before the change.
    pub stale_profile_read: bool,
    /// The first write after the sign-ups answers 500 and appends nothing.
    pub fail_first_write: bool,
    /// The first write after the sign-ups answers 503 with `Retry-After: 1` and appends nothing.
    pub unavailable_first_write: bool,
}

#[derive(Debug)]
struct User {
    token: String,
    display_name: String,
    previous_name: Option<String>,
    post_count: u64,
    stream: Vec<Value>,
}

#[derive(Debug)]
struct Post {
    author: Uuid,
    title: String,
    stream: Vec<Value>,
}

/// What the fake holds, and counts of what it saw.
#[derive(Debug, Default)]
pub struct Ledger {
    faults: Faults,
    users: HashMap<Uuid, User>,
    posts: HashMap<Uuid, Post>,
    decisions: HashMap<Uuid, Value>,
    /// The 202 body answered per (scope, idempotency key): a retry gets it again.
    answered: HashMap<(Uuid, String), Value>,
    offset: u64,
    /// Writes other than sign-ups that reached a handler, retries included.
    pub writes: usize,
    publishes: usize,
    stale_served: bool,
    /// Writes without their user's bearer token, or without an idempotency key.
    pub refused: usize,
}

type Shared = Arc<Mutex<Ledger>>;

/// A running fake; stops when dropped.
pub struct ChaosFake {
    pub url: String,
    pub ledger: Shared,
    _server: TestServer,
}

pub async fn start(faults: Faults) -> ChaosFake {
    let ledger: Shared = Arc::new(Mutex::new(Ledger {
        faults,
        ..Ledger::default()
    }));
    let router = Router::new()
        .route("/v1/users", post(register))
        .route("/v1/users/{user_id}", get(read_user).patch(update_profile))
        .route("/v1/users/{user_id}/posts", post(publish))
        .route("/v1/users/{user_id}/posts/{post_id}", patch(edit))
        .route("/v1/posts/{post_id}", get(read_post))
        .route("/v1/commands/{command_id}", get(read_command))
        .route("/v1/streams/{aggregate_id}/events", get(read_stream))
        .with_state(Arc::clone(&ledger));
    let server = serve(router).await;
    ChaosFake {
        url: server.url.clone(),
        ledger,
        _server: server,
    }
}

impl ChaosFake {
    pub fn writes(&self) -> usize {
        lock(&self.ledger).writes
    }
}

fn lock(ledger: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    ledger.lock().expect("ledger lock")
}

fn problem(status: StatusCode) -> Response {
    let body = json!({"type": "about:blank", "title": "fake", "status": status.as_u16()});
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert("retry-after", "1".parse().expect("header value"));
    }
    response
}

fn accepted(body: &Value) -> Response {
    (StatusCode::ACCEPTED, Json(body.clone())).into_response()
}

fn event(event_type: &str, version: usize, data: Value) -> Value {
    json!({"event_id": Uuid::now_v7(), "type": event_type, "version": version,
           "occurred_at": "2025-01-01T00:00:00Z", "data": data})
}

impl Ledger {
    /// A new command's 202 body, remembered under its key.
    fn accept(
        &mut self,
        scope: Uuid,
        key: String,
        aggregate_id: Uuid,
        extra: Option<(&str, Value)>,
    ) -> (Uuid, Value) {
        let command_id = Uuid::now_v7();
        self.offset += 1;
        let mut body = json!({
            "command_id": command_id,
            "aggregate_id": aggregate_id,
            "consistency_token": format!("v1.0.{}", self.offset),
            "links": {"status": format!("/v1/commands/{command_id}")},
        });
        if let Some((field, value)) = extra {
            body[field] = value;
        }
        self.answered.insert((scope, key), body.clone());
        (command_id, body)
    }

    fn decide(&mut self, command_id: Uuid, aggregate_id: Uuid, reason: Option<&str>) {
        let decision = match reason {
            None => {
                json!({"command_id": command_id, "status": "applied", "aggregate_id": aggregate_id})
            }
            Some(reason) => json!({"command_id": command_id, "status": "rejected",
                                   "reason": reason, "aggregate_id": aggregate_id}),
        };
        self.decisions.insert(command_id, decision);
    }

    /// The checks every write but a sign-up goes through: its user's token, a key, the faults
    /// of the first write, a retry's earlier answer. `Err` is the answer to give instead.
    fn admit(&mut self, headers: &HeaderMap, user_id: Uuid) -> Result<String, Box<Response>> {
        let sent = headers.get("authorization").and_then(|v| v.to_str().ok());
        let token_ok = self
            .users
            .get(&user_id)
            .is_some_and(|user| sent == Some(format!("Bearer {}", user.token).as_str()));
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let Some(key) = key.filter(|_| token_ok) else {
            self.refused += 1;
            return Err(Box::new(problem(StatusCode::UNAUTHORIZED)));
        };
        self.writes += 1;
        if self.writes == 1 && self.faults.fail_first_write {
            return Err(Box::new(problem(StatusCode::INTERNAL_SERVER_ERROR)));
        }
        if self.writes == 1 && self.faults.unavailable_first_write {
            return Err(Box::new(problem(StatusCode::SERVICE_UNAVAILABLE)));
        }
        if let Some(body) = self.answered.get(&(user_id, key.clone())) {
            return Err(Box::new(accepted(body)));
        }
        Ok(key)
    }
}

async fn register(
    State(ledger): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut ledger = lock(&ledger);
    let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        ledger.refused += 1;
        return problem(StatusCode::BAD_REQUEST);
    };
    if let Some(body) = ledger.answered.get(&(Uuid::nil(), key.to_owned())) {
        return accepted(body);
    }
    let Some(name) = body["display_name"].as_str() else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY);
    };
    let id = Uuid::now_v7();
    let token = format!("token-{}", Uuid::now_v7().simple());
    let (command_id, answer) = ledger.accept(
        Uuid::nil(),
        key.to_owned(),
        id,
        Some(("access_token", json!(token))),
    );
    ledger.users.insert(
        id,
        User {
            token,
            display_name: name.to_owned(),
            previous_name: None,
            post_count: 0,
            stream: vec![event("user.registered", 1, body.clone())],
        },
    );
    ledger.decide(command_id, id, None);
    accepted(&answer)
}

async fn update_profile(
    State(ledger): State<Shared>,
    Path(user_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut ledger = lock(&ledger);
    let key = match ledger.admit(&headers, user_id) {
        Ok(key) => key,
        Err(answer) => return *answer,
    };
    let Some(name) = body["display_name"].as_str() else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY);
    };
    let (command_id, answer) = ledger.accept(user_id, key, user_id, None);
    let user = ledger
        .users
        .get_mut(&user_id)
        .expect("admitted users exist");
    user.previous_name = Some(std::mem::replace(&mut user.display_name, name.to_owned()));
    let version = user.stream.len() + 1;
    user.stream
        .push(event("user.profile_updated", version, body.clone()));
    ledger.decide(command_id, user_id, None);
    accepted(&answer)
}

async fn publish(
    State(ledger): State<Shared>,
    Path(user_id): Path<Uuid>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut ledger = lock(&ledger);
    let key = match ledger.admit(&headers, user_id) {
        Ok(key) => key,
        Err(answer) => return *answer,
    };
    let (Some(title), Some(text)) = (body["title"].as_str(), body["body"].as_str()) else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY);
    };
    assert!(text.len() < 1000, "chaos bodies are small");
    let post_id = Uuid::now_v7();
    let (command_id, answer) = ledger.accept(user_id, key, post_id, None);
    ledger.publishes += 1;
    let first = ledger.publishes == 1;
    if first && ledger.faults.lose_first_publish {
        return accepted(&answer);
    }
    let data = json!({"title": title, "body": text, "format": "plain"});
    let mut stream = vec![event("post.published", 1, data.clone())];
    if first && ledger.faults.duplicate_first_publish {
        stream.push(event("post.published", 2, data));
    }
    ledger.posts.insert(
        post_id,
        Post {
            author: user_id,
            title: title.to_owned(),
            stream,
        },
    );
    ledger
        .users
        .get_mut(&user_id)
        .expect("admitted users exist")
        .post_count += 1;
    ledger.decide(command_id, post_id, None);
    accepted(&answer)
}

async fn edit(
    State(ledger): State<Shared>,
    Path((user_id, post_id)): Path<(Uuid, Uuid)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let mut ledger = lock(&ledger);
    let key = match ledger.admit(&headers, user_id) {
        Ok(key) => key,
        Err(answer) => return *answer,
    };
    let Some(title) = body["title"].as_str() else {
        return problem(StatusCode::UNPROCESSABLE_ENTITY);
    };
    let (command_id, answer) = ledger.accept(user_id, key, post_id, None);
    match ledger.posts.get_mut(&post_id) {
        Some(post) if post.author == user_id => {
            post.title = title.to_owned();
            let version = post.stream.len() + 1;
            post.stream
                .push(event("post.edited", version, body.clone()));
            ledger.decide(command_id, post_id, None);
        }
        _ => ledger.decide(command_id, post_id, Some("not_found")),
    }
    accepted(&answer)
}

async fn read_user(
    State(ledger): State<Shared>,
    Path(user_id): Path<Uuid>,
    headers: HeaderMap,
) -> Response {
    let mut ledger = lock(&ledger);
    let stale = ledger.faults.stale_profile_read
        && !ledger.stale_served
        && headers.contains_key("consistency-token");
    let Some(user) = ledger.users.get(&user_id) else {
        return problem(StatusCode::NOT_FOUND);
    };
    let name = match (&user.previous_name, stale) {
        (Some(previous), true) => previous.clone(),
        _ => user.display_name.clone(),
    };
    let body = json!({"id": user_id, "display_name": name, "bio": null,
                      "post_count": user.post_count, "version": user.stream.len()});
    if stale && user.previous_name.is_some() {
        ledger.stale_served = true;
    }
    Json(body).into_response()
}

async fn read_post(State(ledger): State<Shared>, Path(post_id): Path<Uuid>) -> Response {
    match lock(&ledger).posts.get(&post_id) {
        Some(post) => Json(
            json!({"id": post_id, "author_id": post.author, "title": post.title,
                                  "version": post.stream.len()}),
        )
        .into_response(),
        None => problem(StatusCode::NOT_FOUND),
    }
}

async fn read_command(State(ledger): State<Shared>, Path(command_id): Path<Uuid>) -> Response {
    match lock(&ledger).decisions.get(&command_id) {
        Some(decision) => Json(decision.clone()).into_response(),
        None => problem(StatusCode::NOT_FOUND),
    }
}

/// Pages of `limit` events; the cursor is the last version of the previous page.
async fn read_stream(
    State(ledger): State<Shared>,
    Path(aggregate_id): Path<Uuid>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let ledger = lock(&ledger);
    let stream = match (
        ledger.users.get(&aggregate_id),
        ledger.posts.get(&aggregate_id),
    ) {
        (Some(user), _) => &user.stream,
        (None, Some(post)) => &post.stream,
        (None, None) => return problem(StatusCode::NOT_FOUND),
    };
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(20);
    let after: usize = query
        .get("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let items: Vec<Value> = stream.iter().skip(after).take(limit).cloned().collect();
    let next_cursor =
        (after + items.len() < stream.len()).then(|| (after + items.len()).to_string());
    Json(json!({"items": items, "next_cursor": next_cursor})).into_response()
}
