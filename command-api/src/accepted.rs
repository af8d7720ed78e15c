//! The `202 Accepted` answer to a write the broker acknowledged: its `Location` and
//! `Consistency-Token` headers and its JSON body ([`AcceptedBody`], whose schema the OpenAPI
//! document shows).

use axum::Json;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use events::{AggregateType, ConsistencyToken, Envelope};
use serde::Serialize;
use uuid::Uuid;

pub const CONSISTENCY_TOKEN: HeaderName = HeaderName::from_static("consistency-token");

/// The 202 answer to an accepted write.
#[derive(Debug)]
pub struct Accepted {
    command_id: Uuid,
    aggregate_id: Uuid,
    resource: String,
    token: ConsistencyToken,
    /// A sign-up's token for the new user.
    access_token: Option<String>,
}

impl Accepted {
    /// The answer to the write `envelope` carried, which the broker acknowledged at `token`.
    pub fn new(envelope: &Envelope, token: ConsistencyToken) -> Accepted {
        Accepted {
            command_id: envelope.command_id,
            aggregate_id: envelope.aggregate_id,
            resource: resource_path(envelope.aggregate_type(), envelope.aggregate_id),
            token,
            access_token: None,
        }
    }

    /// The user or post the write is about; for a create, the new one.
    pub fn aggregate_id(&self) -> Uuid {
        self.aggregate_id
    }

    /// A sign-up's answer: with the new user's access token.
    pub fn with_access_token(self, access_token: String) -> Accepted {
        Accepted {
            access_token: Some(access_token),
            ..self
        }
    }
}

/// The path to read the aggregate an event belongs to (on the query API).
fn resource_path(aggregate_type: AggregateType, aggregate_id: Uuid) -> String {
    match aggregate_type {
        AggregateType::User => format!("/v1/users/{aggregate_id}"),
        AggregateType::Post => format!("/v1/posts/{aggregate_id}"),
    }
}

/// The body of a 202.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Accepted)]
// For the schema only (additionalProperties: false): this struct is never deserialized.
#[serde(deny_unknown_fields)]
pub struct AcceptedBody {
    command_id: Uuid,
    /// The user's or post's id; for a create, the new id.
    aggregate_id: Uuid,
    /// As the `Consistency-Token` header.
    consistency_token: String,
    /// Sign-ups only: the new user's bearer token for its other writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = String)]
    access_token: Option<String>,
    links: Links,
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Links {
    /// Where the decision on this write will be (query API).
    status: String,
    /// Where to read the user or post (query API).
    resource: String,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let status_path = format!("/v1/commands/{}", self.command_id);
        let token = self.token.to_string();
        let headers = [
            (header::LOCATION, status_path.clone()),
            (CONSISTENCY_TOKEN, token.clone()),
        ];
        let body = AcceptedBody {
            command_id: self.command_id,
            aggregate_id: self.aggregate_id,
            consistency_token: token,
            access_token: self.access_token,
            links: Links {
                status: status_path,
                resource: self.resource,
            },
        };
        (StatusCode::ACCEPTED, headers, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_is_where_the_query_api_serves_the_aggregate() {
        let id = Uuid::now_v7();
        assert_eq!(
            resource_path(AggregateType::Post, id),
            format!("/v1/posts/{id}")
        );
        assert_eq!(
            resource_path(AggregateType::User, id),
            format!("/v1/users/{id}")
        );
    }
}
