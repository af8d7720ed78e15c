//! Authentication of writes: sign-up answers a token, every other write needs its user's token
//! (401 without a valid one, 403 with another user's), checked before anything else; keys rotate;
//! tokens expire. No refused write appends anything.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use command_api::auth::{self, Key, Keys, encode};
use command_api::config::Secret;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{Answer, Req, TestApp, config, spawn_app_with, spawn_shared_app, test_keys};

/// The five writes that need a token, under `user`'s path, each with a valid body.
fn owned_writes(user: Uuid) -> Vec<Req> {
    let post = Uuid::now_v7();
    vec![
        Req::new(Method::PATCH, format!("/v1/users/{user}")).json(json!({"bio": "b"})),
        Req::new(Method::POST, format!("/v1/users/{user}/posts"))
            .json(json!({"title": "t", "body": "b"})),
        Req::new(Method::PATCH, format!("/v1/users/{user}/posts/{post}"))
            .json(json!({"title": "t2"})),
        Req::new(Method::DELETE, format!("/v1/users/{user}/posts/{post}")),
        Req::new(Method::DELETE, format!("/v1/users/{user}")),
    ]
}

fn claims(sub: Uuid, iat: i64) -> Value {
    json!({"sub": sub.to_string(), "iat": iat})
}

fn header(kid: &str) -> Value {
    json!({"alg": "HS256", "typ": "JWT", "kid": kid})
}

fn test_key() -> &'static Key {
    test_keys().first().expect("a test key")
}

fn random_key(kid: &str) -> Key {
    Keys::generate(kid)
        .expect("randomness")
        .first()
        .expect("one key")
        .clone()
}

/// Asserts a 401 problem with a Bearer challenge for the realm; `error="invalid_token"` exactly
/// when a bearer token was sent.
fn assert_401(answer: &Answer, token_sent: bool, case: &str) {
    assert_eq!(
        answer.status,
        StatusCode::UNAUTHORIZED,
        "{case}: {}",
        answer.text
    );
    let body = answer.problem(StatusCode::UNAUTHORIZED);
    assert_eq!(body["type"], "/problems/unauthenticated", "{case}");
    let challenge = answer
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("{case}: no WWW-Authenticate"));
    assert!(
        challenge.starts_with(r#"Bearer realm="user-data""#),
        "{case}: {challenge}"
    );
    assert_eq!(
        challenge.contains(r#"error="invalid_token""#),
        token_sent,
        "{case}: {challenge}"
    );
}

/// Decodes one part of a compact JWS without checking anything.
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a JWT part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[tokio::test]
async fn every_owned_write_needs_its_users_valid_token() {
    let app = spawn_shared_app().await;
    let owner = app.register_user("Owner").await;
    let other = app.register_user("Other").await;
    let user = owner.aggregate_id;
    let now = auth::unix_now();
    let before = app.end_offset_sum().await;

    let unsigned = |alg: &str| {
        let signed = encode(
            &json!({"alg": alg, "typ": "JWT", "kid": "test"}),
            &claims(user, now),
            test_key(),
        );
        format!("{}.", signed.rsplit_once('.').expect("a dot").0)
    };
    let no_token: Vec<(&str, Option<String>)> = vec![
        ("no Authorization", None),
        ("Basic credentials", Some("Basic b3duZXI6cHc=".into())),
    ];
    let bad_tokens: Vec<(&str, String)> = vec![
        ("not a JWT", "not-a-jwt".into()),
        ("empty bearer", "".into()),
        (
            "signed by another secret under the same kid",
            encode(&header("test"), &claims(user, now), &random_key("test")),
        ),
        (
            "an unknown kid",
            encode(
                &header("retired"),
                &claims(user, now),
                &random_key("retired"),
            ),
        ),
        (
            "expired",
            encode(
                &header("test"),
                &json!({"sub": user.to_string(), "iat": now - 120, "exp": now - 60}),
                test_key(),
            ),
        ),
        ("alg none, unsigned", unsigned("none")),
        (
            "alg none, signed",
            encode(
                &json!({"alg": "none", "kid": "test"}),
                &claims(user, now),
                test_key(),
            ),
        ),
        (
            "alg HS512",
            encode(
                &json!({"alg": "HS512", "kid": "test"}),
                &claims(user, now),
                test_key(),
            ),
        ),
        ("claims of the owner under the other user's signature", {
            let theirs = other.access_token().to_owned();
            let mut parts: Vec<String> = theirs.split('.').map(str::to_owned).collect();
            parts[1] = URL_SAFE_NO_PAD.encode(claims(user, now).to_string());
            parts.join(".")
        }),
    ];

    let mut refused = 0;
    for write in owned_writes(user) {
        let name = format!("{} {}", write.method, write.path);
        for (case, authorization) in &no_token {
            let mut req = write.clone();
            if let Some(value) = authorization {
                req = req.header("authorization", value.clone());
            }
            assert_401(&app.send(req).await, false, &format!("{name}: {case}"));
            refused += 1;
        }
        for (case, token) in &bad_tokens {
            let answer = app.send(write.clone().bearer(token)).await;
            assert_401(&answer, true, &format!("{name}: {case}"));
            refused += 1;
        }
        let answer = app.send(write.clone().bearer(other.access_token())).await;
        let body = answer.problem(StatusCode::FORBIDDEN);
        assert_eq!(body["type"], "/problems/forbidden", "{name}");
        refused += 1;

        app.send(write.bearer(owner.access_token()))
            .await
            .accepted();
    }
    assert_eq!(refused, 5 * (no_token.len() + bad_tokens.len() + 1));
    assert_eq!(
        app.end_offset_sum().await,
        before + 5,
        "only the five writes with the owner's token were appended"
    );
    let metrics = app.get("/metrics").await.text;
    for line in [
        r#"command_auth_refusals_total{reason="missing"} 10"#,
        r#"command_auth_refusals_total{reason="forbidden"} 5"#,
        r#"command_auth_refusals_total{reason="expired"} 5"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

#[tokio::test]
async fn authentication_and_ownership_are_checked_before_anything_else() {
    let app = spawn_shared_app().await;
    let owner = app.register_user("Owner").await;
    let other = app.register_user("Other").await;
    let user = owner.aggregate_id;
    let post = Uuid::now_v7();
    let before = app.end_offset_sum().await;
    let path = format!("/v1/users/{user}/posts/{post}");
    let patch = |body: Vec<u8>, content_type: Option<&str>| {
        Req::new(Method::PATCH, path.clone()).raw_body(body, content_type)
    };
    // Each request is broken in one way that a later check would refuse.
    let broken: Vec<(&str, Req, StatusCode)> = vec![
        (
            "bad If-Match",
            patch(br#"{"title": "t"}"#.to_vec(), Some("application/json"))
                .header("if-match", "W/\"1\""),
            StatusCode::BAD_REQUEST,
        ),
        (
            "bad Idempotency-Key",
            patch(br#"{"title": "t"}"#.to_vec(), Some("application/json"))
                .header("idempotency-key", ""),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            patch(br#"{"title": "t"}"#.to_vec(), Some("text/plain")),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "65537 bytes",
            patch(
                crate::rejected::padded_body("title", 65537),
                Some("application/json"),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "malformed JSON",
            patch(br#"{"title": "#.to_vec(), Some("application/json")),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a field rule",
            patch(br#"{"title": ""}"#.to_vec(), Some("application/json")),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a post id that is not a UUID",
            Req::new(Method::PATCH, format!("/v1/users/{user}/posts/42"))
                .json(json!({"title": "t"})),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (case, req, status) in broken {
        assert_401(&app.send(req.clone()).await, false, case);
        assert_401(
            &app.send(req.clone().bearer("a.b.c")).await,
            true,
            &format!("{case}, bad token"),
        );
        let answer = app.send(req.clone().bearer(other.access_token())).await;
        answer.problem(StatusCode::FORBIDDEN);
        let answer = app.send(req.bearer(owner.access_token())).await;
        assert_eq!(answer.status, status, "{case}: {}", answer.text);
        answer.problem(status);
    }

    // A path user that is not a UUID: 401 without a token, and 400 with any valid one (there is
    // no user to compare the token's with).
    let bad_user = || Req::new(Method::DELETE, "/v1/users/not-a-uuid");
    assert_401(&app.send(bad_user()).await, false, "bad user id");
    app.send(bad_user().bearer(owner.access_token()))
        .await
        .problem(StatusCode::BAD_REQUEST);
    assert_eq!(
        app.end_offset_sum().await,
        before,
        "a 4xx appended a record"
    );
}

#[tokio::test]
async fn sign_up_is_open_and_answers_a_token_for_the_new_user() {
    let app = spawn_shared_app().await;
    let before = auth::unix_now();
    // A stray Authorization header does not matter to the open route.
    let answer = app
        .send(
            Req::new(Method::POST, "/v1/users")
                .json(json!({"display_name": "Ada"}))
                .header("authorization", "Bearer garbage"),
        )
        .await;
    let user = answer.accepted();
    let after = auth::unix_now();
    let token = user.access_token();

    assert_eq!(
        jwt_part(token, 0),
        json!({"alg": "HS256", "typ": "JWT", "kid": "test"})
    );
    let token_claims = jwt_part(token, 1);
    assert_eq!(token_claims["sub"], user.aggregate_id.to_string());
    let iat = token_claims["iat"].as_i64().expect("iat");
    assert!((before..=after).contains(&iat), "{token_claims}");
    assert_eq!(token_claims.get("exp"), None, "no lifetime configured");
    assert_eq!(
        app.tokens.verify(token, after),
        Ok(user.aggregate_id),
        "signed with the configured key"
    );

    // It works for that user's writes and for no one else's.
    let post = |owner: Uuid| {
        Req::new(Method::POST, format!("/v1/users/{owner}/posts"))
            .json(json!({"title": "t", "body": "b"}))
            .bearer(token)
    };
    app.send(post(user.aggregate_id)).await.accepted();
    app.send(post(Uuid::now_v7()))
        .await
        .problem(StatusCode::FORBIDDEN);
    // Other answers carry no token.
    let answer = app.send(post(user.aggregate_id)).await;
    assert_eq!(answer.body.get("access_token"), None, "{}", answer.text);
}

/// An app on `topic` whose `AUTH_KEYS` are `keys` (and lifetime `ttl`).
async fn app_with_keys(topic: &str, keys: &[&Keys], ttl: Option<u64>) -> TestApp {
    let mut config = config(&test_support::kafka_brokers(), topic);
    let setting: Vec<String> = keys.iter().map(|k| k.to_setting()).collect();
    config.auth_keys = Some(Secret(setting.join(",")));
    config.auth_token_ttl_secs = ttl;
    spawn_app_with(config).await
}

#[tokio::test]
async fn keys_rotate_without_downtime() {
    let topic = test_support::unique_topic("command-api-rotation");
    let old = Keys::generate("old").expect("randomness");
    let new = Keys::generate("new").expect("randomness");
    // The rollout: every instance first verifies with both keys (old still signing), then signs
    // with the new one, then the old one is dropped.
    let before = app_with_keys(&topic, &[&old], None).await;
    let both_old_first = app_with_keys(&topic, &[&old, &new], None).await;
    let both_new_first = app_with_keys(&topic, &[&new, &old], None).await;
    let after = app_with_keys(&topic, &[&new], None).await;

    let veteran = before.register_user("Veteran").await;
    let newcomer = both_new_first.register_user("Newcomer").await;
    assert_eq!(jwt_part(veteran.access_token(), 0)["kid"], "old");
    assert_eq!(jwt_part(newcomer.access_token(), 0)["kid"], "new");
    let write = |user: Uuid, token: &str| {
        Req::new(Method::PATCH, format!("/v1/users/{user}"))
            .json(json!({"bio": "rotated"}))
            .bearer(token)
    };
    let (v, vt) = (veteran.aggregate_id, veteran.access_token());
    let (n, nt) = (newcomer.aggregate_id, newcomer.access_token());

    // While both keys are configured, tokens of either are accepted wherever they are.
    for app in [&both_old_first, &both_new_first] {
        app.send(write(v, vt)).await.accepted();
        app.send(write(n, nt)).await.accepted();
    }
    // Once the old key is gone, its tokens are refused, and the new ones still work.
    assert_401(
        &after.send(write(v, vt)).await,
        true,
        "old token after removal",
    );
    after.send(write(n, nt)).await.accepted();
    // An instance not rolled yet does not know the new key: the reason to add it everywhere
    // before anyone signs with it.
    assert_401(
        &before.send(write(n, nt)).await,
        true,
        "new token, old instance",
    );
    before.send(write(v, vt)).await.accepted();
}

#[tokio::test]
async fn tokens_expire_with_a_lifetime() {
    let topic = test_support::unique_topic("command-api-expiry");
    let keys = test_keys();
    let short = app_with_keys(&topic, &[keys], Some(3600)).await;
    let forever = app_with_keys(&topic, &[keys], None).await;

    let user = short.register_user("Brief").await;
    let token_claims = jwt_part(user.access_token(), 1);
    let iat = token_claims["iat"].as_i64().expect("iat");
    assert_eq!(token_claims["exp"], iat + 3600, "{token_claims}");
    let write = |token: &str| {
        Req::new(Method::PATCH, format!("/v1/users/{}", user.aggregate_id))
            .json(json!({"bio": "b"}))
            .bearer(token)
    };
    short.send(write(user.access_token())).await.accepted();

    // An already expired token, as a token issued an hour ago with the same lifetime is now.
    let now = auth::unix_now();
    let sub = user.aggregate_id.to_string();
    let expired = encode(
        &header("test"),
        &json!({"sub": sub, "iat": now - 3601, "exp": now - 1}),
        test_key(),
    );
    for app in [&short, &forever] {
        let answer = app.send(write(&expired)).await;
        assert_401(&answer, true, "expired");
        let challenge = answer.header("www-authenticate").expect("challenge");
        assert!(challenge.contains("expired"), "{challenge}");
    }
    // A token without exp, as tokens are when no lifetime is set, is bounded by the lifetime too.
    let old = encode(
        &header("test"),
        &claims(user.aggregate_id, now - 7200),
        test_key(),
    );
    assert_401(
        &short.send(write(&old)).await,
        true,
        "older than the lifetime",
    );
    forever.send(write(&old)).await.accepted();
}
