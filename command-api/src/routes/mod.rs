//! The service's routes: the router with its layers, and the OpenAPI document it serves.
//!
//! One module per resource owns its paths and handlers ([`users`], [`posts`], and
//! [`operations`] for operators); [`layers`] holds the route layers in front of the writes.
//! Every route is registered with `utoipa_axum::routes!`, which takes its method and path from
//! the handler's `#[utoipa::path]`: a write cannot be served undocumented.

pub mod layers;
pub mod operations;
pub mod posts;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::extract::BODY_LIMIT;
use crate::openapi;
use crate::state::AppState;

/// The writes under a user's path, without their layer (see [`router`]).
fn owned_writes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(users::update_profile, users::delete_user))
        .routes(routes!(posts::publish_post))
        .routes(routes!(posts::edit_post, posts::delete_post))
}

fn sign_up() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(users::register_user))
}

fn readiness() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(operations::readyz))
}

/// The service's OpenAPI document, as `GET /openapi.json` answers it, without a running service:
/// [`router`] builds its own the same way from the same routes. The routes the common layers add
/// are `service_kit::openapi`'s.
pub fn openapi_document() -> serde_json::Value {
    let api = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(sign_up())
        .merge(owned_writes())
        .merge(readiness())
        .into_openapi();
    service_kit::openapi::document(api)
}

/// The service's routes, with the layers every service of the system has.
pub fn router(state: AppState) -> Router {
    let metrics = state.metrics.clone();
    // Every write under a user's path is that user's: the route layer authenticates the caller
    // and checks the path's user (401, 400, 403) before the handler's extractors look at
    // anything else, the body included. A route added here is protected without a second
    // thought; its handler's `Caller` extractor fails (500) if it ever is not. The same layer
    // applies the caller's write rate limit (429), once the caller is known and before the body
    // is read.
    let owned = owned_writes().route_layer(middleware::from_fn_with_state(
        state.clone(),
        layers::require_path_user,
    ));
    // Sign-up is open: it is how a client gets its token. Its rate limit is by peer IP, in a
    // route layer of its own so that it runs before the body is read.
    let sign_up = sign_up().route_layer(middleware::from_fn_with_state(
        state.clone(),
        layers::limit_sign_ups,
    ));
    let writes = sign_up
        .merge(owned)
        .layer(DefaultBodyLimit::max(BODY_LIMIT));
    let (api, document) = OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(writes)
        .merge(readiness())
        .with_state(state)
        .split_for_parts();
    let api = service_kit::openapi::serve(api, &service_kit::openapi::document(document));
    service_kit::http::with_common_layers(api, metrics)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use uuid::Uuid;

    use super::openapi_document;
    use crate::command::write::Write;
    use crate::openapi::BEARER;

    /// The idempotency fingerprint hashes each write's route template (`Write::route`): it must
    /// be the route the write is served at, which is the documented one.
    #[test]
    fn every_write_is_documented_at_its_route_and_method() {
        let document: Value = openapi_document();
        let id = Uuid::nil();
        for write in [
            Write::RegisterUser,
            Write::UpdateProfile { user_id: id },
            Write::DeleteUser { user_id: id },
            Write::PublishPost { user_id: id },
            Write::EditPost {
                user_id: id,
                post_id: id,
            },
            Write::DeletePost {
                user_id: id,
                post_id: id,
            },
        ] {
            let operation = &document["paths"][write.route()][write.method().to_ascii_lowercase()];
            assert!(
                operation.is_object(),
                "{} {}",
                write.method(),
                write.route()
            );
            let secured = operation["security"] == serde_json::json!([{BEARER: []}]);
            assert_eq!(secured, write != Write::RegisterUser, "{write:?}");
            let parameters: Vec<&str> = operation["parameters"]
                .as_array()
                .expect("parameters")
                .iter()
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert!(parameters.contains(&"Idempotency-Key"), "{write:?}");
            assert_eq!(
                parameters.contains(&"If-Match"),
                write.takes_if_match(),
                "{write:?}"
            );
        }
        let scheme = &document["components"]["securitySchemes"][BEARER];
        assert_eq!(scheme["type"], "http");
        assert_eq!(scheme["scheme"], "bearer");
    }
}
