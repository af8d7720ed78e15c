//! `cargo xtask walkthrough`: the README's walk through the API, against a running `up`. Each
//! step says what it shows; each request is printed with its answer (status line, the headers a
//! client acts on, body), and an answer other than the step's expected status ends the walk.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

use crate::output::say;
use crate::settings::var_or;
use crate::stack::random_hex;

/// The headers a client acts on, printed with each answer.
const SHOWN_HEADERS: [&str; 5] = [
    "location",
    "consistency-token",
    "etag",
    "retry-after",
    "www-authenticate",
];

/// The last answer: its status and body.
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// A top-level field of the body, as text (empty when absent or null).
    fn field(&self, name: &str) -> String {
        match self.body.get(name) {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
        }
    }

    fn expect(&self, expected: u16, what: &str) -> anyhow::Result<()> {
        if self.status != expected {
            bail!("expected {expected} for {what}, got {}", self.status);
        }
        Ok(())
    }
}

struct Walk {
    http: reqwest::Client,
}

impl Walk {
    /// Sends one request, prints it and its answer.
    async fn request(
        &self,
        method: Method,
        url: &str,
        build: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> anyhow::Result<Answer> {
        println!("\n$ {method} {url}");
        let answer = build(self.http.request(method, url))
            .send()
            .await
            .with_context(|| format!("no answer from {url}: is the stack up (./dev up)?"))?;
        println!("{:?} {}", answer.version(), answer.status());
        for (name, value) in answer.headers() {
            if SHOWN_HEADERS.contains(&name.as_str()) {
                println!("{name}: {}", String::from_utf8_lossy(value.as_bytes()));
            }
        }
        let status = answer.status().as_u16();
        let text = answer
            .text()
            .await
            .with_context(|| format!("no answer from {url}: is the stack up (./dev up)?"))?;
        let text = text.trim_end_matches('\n');
        if !text.is_empty() {
            println!("{text}");
        }
        Ok(Answer {
            status,
            body: serde_json::from_str(text).unwrap_or(Value::Null),
        })
    }

    async fn get(&self, url: &str, token: Option<&str>) -> anyhow::Result<Answer> {
        self.request(Method::GET, url, |request| match token {
            Some(token) => request.header("consistency-token", token),
            None => request,
        })
        .await
    }
}

pub async fn run() -> anyhow::Result<ExitCode> {
    let writes = format!("http://{}", var_or("COMMAND_API_ADDR", "127.0.0.1:8080"));
    let reads = format!("http://{}", var_or("QUERY_API_ADDR", "127.0.0.1:8081"));
    let walk = Walk {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot make an HTTP client")?,
    };

    say(
        "Register a user: 202 with the command id, the new user's id, a consistency token and the user's access token",
    );
    let answer = walk
        .request(Method::POST, &format!("{writes}/v1/users"), |r| {
            r.json(&json!({"display_name": "Ada", "bio": "first programmer"}))
        })
        .await?;
    answer.expect(202, "registering a user")?;
    let user = answer.field("aggregate_id");
    let token = answer.field("consistency_token");
    let command = answer.field("command_id");
    let access = answer.field("access_token");
    if access.is_empty() {
        bail!("the sign-up answered no access_token");
    }
    let bearer = format!("Bearer {access}");

    say(
        "Read it back: with the token, the query API answers once the projector has applied the write",
    );
    walk.get(&format!("{reads}/v1/users/{user}"), Some(&token))
        .await?
        .expect(200, "reading the user")?;

    say("The decision on the command");
    walk.get(&format!("{reads}/v1/commands/{command}"), Some(&token))
        .await?
        .expect(200, "reading the decision")?;

    say("The user's history: its applied events, oldest first, with their data");
    walk.get(&format!("{reads}/v1/streams/{user}/events"), None)
        .await?
        .expect(200, "reading the user's stream")?;

    let post = json!({"title": "Hello", "body": "My first post"});
    say(
        "Every write but a sign-up needs the user's token: without it, 401 with a Bearer challenge",
    );
    walk.request(
        Method::POST,
        &format!("{writes}/v1/users/{user}/posts"),
        |r| r.json(&post),
    )
    .await?
    .expect(401, "publishing without a token")?;

    say("Publish a post, with the token");
    let answer = walk
        .request(
            Method::POST,
            &format!("{writes}/v1/users/{user}/posts"),
            |r| r.json(&post).header("authorization", &bearer),
        )
        .await?;
    answer.expect(202, "publishing a post")?;
    let post_id = answer.field("aggregate_id");
    let token = answer.field("consistency_token");
    walk.get(&format!("{reads}/v1/posts/{post_id}"), Some(&token))
        .await?
        .expect(200, "reading the post")?;

    let edit_url = format!("{writes}/v1/users/{user}/posts/{post_id}");
    say("Edit it with If-Match \"1\": applied, the post is now at version 2");
    let answer = walk
        .request(Method::PATCH, &edit_url, |r| {
            r.json(&json!({"title": "Hello, world"}))
                .header("authorization", &bearer)
                .header("if-match", "\"1\"")
        })
        .await?;
    answer.expect(202, "editing the post")?;
    walk.get(
        &format!("{reads}/v1/commands/{}", answer.field("command_id")),
        Some(&answer.field("consistency_token")),
    )
    .await?;

    say(
        "The same If-Match again: accepted by the command API, then rejected with version_conflict",
    );
    let answer = walk
        .request(Method::PATCH, &edit_url, |r| {
            r.json(&json!({"title": "Hello again"}))
                .header("authorization", &bearer)
                .header("if-match", "\"1\"")
        })
        .await?;
    answer.expect(202, "editing the post with a stale version")?;
    walk.get(
        &format!("{reads}/v1/commands/{}", answer.field("command_id")),
        Some(&answer.field("consistency_token")),
    )
    .await?;

    say("The post's history: published, then edited; the rejected edit is not part of it");
    walk.get(
        &format!("{reads}/v1/streams/{post_id}/events?from_version=1&limit=10"),
        None,
    )
    .await?
    .expect(200, "reading the post's stream")?;

    say("Pages, newest first");
    walk.get(&format!("{reads}/v1/posts?limit=3"), None).await?;
    walk.get(&format!("{reads}/v1/users/{user}/posts?limit=3"), None)
        .await?;

    say(
        "Safe retries: the same Idempotency-Key gives the same command and user ids (and a token for that user,",
    );
    say("so a sign-up's key must be as unguessable as a password: here, 128 random bits)");
    let key = format!("signup-{}", random_hex(16)?);
    let users = format!("{writes}/v1/users");
    let sign_up = || {
        walk.request(Method::POST, &users, |r| {
            r.json(&json!({"display_name": "Bo"}))
                .header("idempotency-key", &key)
        })
    };
    sign_up().await?;
    let answer = sign_up().await?;
    answer.expect(202, "retrying a sign-up")?;

    say("Bo's token on Ada's path: 403, and nothing is written");
    let bo = format!("Bearer {}", answer.field("access_token"));
    walk.request(Method::DELETE, &format!("{writes}/v1/users/{user}"), |r| {
        r.header("authorization", &bo)
    })
    .await?
    .expect(403, "deleting another user")?;
    println!();
    say("Walkthrough done");
    Ok(ExitCode::SUCCESS)
}
