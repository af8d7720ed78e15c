//! The query API's OpenAPI document: its parts that are not a route's own attributes.
//!
//! Each handler in [`crate::routes`] carries its `#[utoipa::path]`, and [`crate::routes::routes`]
//! registers it with `utoipa_axum::routes!`, which takes the route from that attribute: a read
//! cannot be served undocumented. Here: the parameters that the extractors read ([`IntoParams`]
//! for [`PageRequest`], [`StreamPageRequest`], [`ReadAfter`] and [`IfNoneMatch`], with the
//! pagination's own constants), the document's title, and the answers that several reads
//! share, so that each is said once and a route's attribute says only what is its own: the
//! [`IntoResponses`] types that the routes' `responses(...)` name ([`MalformedIdOrToken`],
//! [`ReadUnavailable`]), and what a read that takes `If-None-Match` answers besides, which
//! [`document`] adds ([`conditional_reads`]). `service_kit::openapi::document` then adds what
//! all services share.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{OpenApi, RefOr, Required};
use utoipa::{IntoParams, IntoResponses};

use crate::extract::{IfNoneMatch, ReadAfter};
use crate::pagination::{DEFAULT_LIMIT, FIRST_VERSION, MAX_LIMIT, PageRequest, StreamPageRequest};

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "user-data query API",
        version = "1",
        description = "The reads of contract v1, from the read models the projector keeps. \
            Reads are public. A read may be stale by the projection lag, unless it sends a \
            write's Consistency-Token. Every error is application/problem+json."
    ),
    tags(
        (name = "reads", description = "Users, posts, decisions and event streams."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    )
)]
pub struct ApiDoc;

/// A `v1.{partition}.{offset}` token as the command API issues them. The pattern bounds the
/// partition to 5 digits and the offset to 18, inside what the parser takes (partitions up to
/// 100,000, offsets up to `i64::MAX`), so that whatever matches it also parses.
const CONSISTENCY_TOKEN_PATTERN: &str = r"^v1\.[0-9]{1,5}\.[0-9]{1,18}$";

/// A cursor is base64url without padding: 25 bytes for a page of posts, 9 for a stream's.
const POST_CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{34}$";
const STREAM_CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{12}$";

fn string(pattern: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .pattern(Some(pattern))
}

fn query(name: &str, description: &str, schema: ObjectBuilder) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

fn limit() -> Parameter {
    query(
        "limit",
        "Items per page. Anything else than an integer in range is 400.",
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .maximum(Some(MAX_LIMIT))
            .default(Some(DEFAULT_LIMIT.into())),
    )
}

fn cursor(pattern: &str) -> Parameter {
    query(
        "cursor",
        "Where the page starts: the `next_cursor` of the page before, as it was. Opaque; one \
         this API did not issue is 400.",
        string(pattern),
    )
}

impl IntoParams for PageRequest {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![limit(), cursor(POST_CURSOR_PATTERN)]
    }
}

impl IntoParams for StreamPageRequest {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            query(
                "from_version",
                "The first version to list. With a cursor, the page starts at whichever is \
                 later. Anything else than an integer from 1 up is 400.",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(FIRST_VERSION))
                    .default(Some(FIRST_VERSION.into())),
            ),
            limit(),
            cursor(STREAM_CURSOR_PATTERN),
        ]
    }
}

impl IntoParams for ReadAfter {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("Consistency-Token")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "A write's token (its answer's Consistency-Token): the read is answered \
                     once the read model includes that write, or 503 with Retry-After after a \
                     bounded wait (5 s by default). Malformed is 400.",
                ))
                .schema(Some(string(CONSISTENCY_TOKEN_PATTERN)))
                .build(),
        ]
    }
}

impl IntoParams for IfNoneMatch {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("If-None-Match")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "ETags the client has (`\"3\"`, a list, or `*`; weak ones compare too): \
                     304 when one is the resource's. Entries that do not parse match nothing.",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
                .build(),
        ]
    }
}

/// The complete document of the query API from what its routes declare: [`conditional_reads`],
/// then what every service's has (`service_kit::openapi::document`).
pub fn document(mut api: OpenApi) -> serde_json::Value {
    conditional_reads(&mut api);
    service_kit::openapi::document(api)
}

/// A read that takes `If-None-Match` ([`IfNoneMatch`]) is of a versioned resource
/// ([`crate::answer::Answer::respond`]): its 200 carries the resource's ETag, and it answers
/// 304, with the ETag, when the client has it.
pub fn conditional_reads(api: &mut OpenApi) {
    let etag = HeaderBuilder::new()
        .schema(ObjectBuilder::new().schema_type(Type::String))
        .description(Some("The version, quoted: `\"3\"`."))
        .build();
    for operation in api
        .paths
        .paths
        .values_mut()
        .filter_map(|item| item.get.as_mut())
    {
        let takes_if_none_match = operation
            .parameters
            .iter()
            .flatten()
            .any(|parameter| parameter.name == "If-None-Match");
        if !takes_if_none_match {
            continue;
        }
        let responses = &mut operation.responses.responses;
        if let Some(RefOr::T(found)) = responses.get_mut("200") {
            found.headers.insert("ETag".to_owned(), etag.clone());
        }
        let not_modified = ResponseBuilder::new()
            .description("Not modified: If-None-Match has the resource's ETag.")
            .header("ETag", etag.clone())
            .build();
        responses.insert("304".to_owned(), RefOr::T(not_modified));
    }
}

/// The 400 of a read by id: the id, or the `Consistency-Token` ([`ReadAfter`]), does not parse.
#[derive(IntoResponses)]
#[response(
    status = 400,
    description = "A path id that is not a UUID, or a malformed Consistency-Token."
)]
pub struct MalformedIdOrToken;

/// The 503 of every read of a read model: PostgreSQL is unreachable, or the bounded wait of
/// [`ReadAfter`] ended first.
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "The database is unreachable, or the read model did not reach the Consistency-Token in time."
)]
pub struct ReadUnavailable;

#[cfg(test)]
mod tests {
    use chrono::DateTime;
    use events::ConsistencyToken;
    use uuid::Uuid;

    use super::*;
    use crate::pagination::{Cursor, StreamCursor};

    /// The patterns promise that whatever matches them parses: their longest matches do.
    #[test]
    fn the_longest_strings_the_patterns_allow_parse() {
        let longest = format!("v1.{}.{}", "9".repeat(5), "9".repeat(18));
        assert!(longest.parse::<ConsistencyToken>().is_ok(), "{longest}");
        assert!(
            CONSISTENCY_TOKEN_PATTERN.contains("{1,5}")
                && CONSISTENCY_TOKEN_PATTERN.contains("{1,18}")
        );
    }

    #[test]
    fn the_cursor_patterns_have_the_cursors_lengths() {
        let created_at = DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("a time");
        let post = Cursor {
            created_at,
            id: Uuid::now_v7(),
        }
        .encode();
        assert!(
            POST_CURSOR_PATTERN.contains(&format!("{{{}}}", post.len())),
            "{post}"
        );
        let stream = StreamCursor { version: 7 }.encode();
        assert!(
            STREAM_CURSOR_PATTERN.contains(&format!("{{{}}}", stream.len())),
            "{stream}"
        );
    }
}
