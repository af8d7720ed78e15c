//! `Idempotency-Key`: a retry gets the same ids from any instance; a reused key with another
//! request gets the same resource id but another command id.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Req, read_record, spawn_app, spawn_shared_app};

#[tokio::test]
async fn a_retry_gets_the_same_ids_from_any_instance() {
    let brokers = test_support::kafka_brokers();
    let topic = test_support::unique_topic("command-api-idem");
    let first = spawn_app(&brokers, &topic).await;
    let second = spawn_app(&brokers, &topic).await;
    let sign_up = || {
        Req::new(Method::POST, "/v1/users")
            .json(json!({"display_name": "Ada"}))
            .header("idempotency-key", "sign-up-42")
    };

    let original = first.send(sign_up()).await.accepted();
    let retry_same_instance = first.send(sign_up()).await.accepted();
    let retry_other_instance = second.send(sign_up()).await.accepted();
    for retry in [&retry_same_instance, &retry_other_instance] {
        assert_eq!(retry.command_id, original.command_id);
        assert_eq!(retry.aggregate_id, original.aggregate_id);
        assert_eq!(retry.token.partition, original.token.partition);
    }
    // Each attempt is in the log (the projector applies the command once); the event id is
    // the same too, so any consumer can tell the copies apart from new events.
    let a = read_record(&brokers, &topic, original.token).await;
    let b = read_record(&brokers, &topic, retry_other_instance.token).await;
    assert_ne!(original.token, retry_other_instance.token);
    assert_eq!(a.envelope.event_id, b.envelope.event_id);
    assert_eq!(a.envelope.event, b.envelope.event);

    // A retried sign-up names the same user, so its token is that user's too.
    for retry in [&retry_same_instance, &retry_other_instance] {
        let retried_token = first
            .tokens
            .verify(retry.access_token(), command_api::auth::unix_now());
        assert_eq!(retried_token, Ok(original.aggregate_id));
    }

    // Under another user's scope (the caller's), the same key is another command.
    let user_id = original.aggregate_id;
    let other_user = first.register_user("Other").await.aggregate_id;
    let post = |user| {
        Req::new(Method::POST, format!("/v1/users/{user}/posts"))
            .json(json!({"title": "t", "body": "b"}))
            .header("idempotency-key", "sign-up-42")
            .bearer(&first.token_for(user))
    };
    let mine = first.send(post(user_id)).await.accepted();
    let mine_again = second.send(post(user_id)).await.accepted();
    let theirs = first.send(post(other_user)).await.accepted();
    assert_eq!(
        (mine.command_id, mine.aggregate_id),
        (mine_again.command_id, mine_again.aggregate_id)
    );
    assert_ne!(mine.command_id, theirs.command_id);
    assert_ne!(mine.aggregate_id, theirs.aggregate_id);

    // The nil user is the sign-ups' scope; a post created there with the sign-up's key must
    // still not get the signed-up user's id.
    let under_nil = first.send(post(uuid::Uuid::nil())).await.accepted();
    assert_ne!(
        under_nil.aggregate_id, original.aggregate_id,
        "a post never gets a user's id"
    );
}

#[tokio::test]
async fn a_key_reused_with_another_request_names_the_same_resource_under_another_command() {
    let app = spawn_shared_app().await;
    let sign_up = |name: &str| {
        Req::new(Method::POST, "/v1/users")
            .json(json!({"display_name": name}))
            .header("idempotency-key", "reused")
    };
    let first = app.send(sign_up("Ada")).await.accepted();
    let second = app.send(sign_up("Grace")).await.accepted();
    assert_eq!(second.aggregate_id, first.aggregate_id);
    assert_ne!(second.command_id, first.command_id);

    // For a PATCH, another precondition is another request as well.
    let user_id = first.aggregate_id;
    let patch = |if_match: &str, bio: &str| {
        Req::new(Method::PATCH, format!("/v1/users/{user_id}"))
            .json(json!({"bio": bio}))
            .header("if-match", if_match)
            .header("idempotency-key", "patch-1")
            .bearer(first.access_token())
    };
    let base = app.send(patch("\"1\"", "b")).await.accepted();
    assert_eq!(
        app.send(patch("\"1\"", "b")).await.accepted().command_id,
        base.command_id
    );
    assert_ne!(
        app.send(patch("\"2\"", "b")).await.accepted().command_id,
        base.command_id
    );
    assert_ne!(
        app.send(patch("\"1\"", "c")).await.accepted().command_id,
        base.command_id
    );

    // Without a key, every request is a new command.
    let plain = || Req::new(Method::POST, "/v1/users").json(json!({"display_name": "Ada"}));
    let a = app.send(plain()).await.accepted();
    let b = app.send(plain()).await.accepted();
    assert_ne!(a.command_id, b.command_id);
    assert_ne!(a.aggregate_id, b.aggregate_id);
}
