//! The command API's OpenAPI document: its parts that are not a route's own attributes.
//!
//! Each handler of the route modules carries its `#[utoipa::path]` (method, path, responses),
//! which names the types here. Here: the parameters each extractor reads ([`IntoParams`] for
//! [`UserPath`], [`PostPath`], [`ExpectedVersion`] and [`IdempotencyKey`], with the extractors'
//! own limits), the request bodies (from [`crate::command::schema`], the field rules' bounds),
//! the sign-up's answer, the bearer security scheme, and the answers that several writes share
//! ([`IntoResponses`] types that the routes' `responses(...)` name: [`WriteAccepted`],
//! [`OwnedWriteRefusals`], [`BodyRefusals`], [`NotAppended`]), so that each is said once and a
//! route's attribute says only what is its own. `service_kit::openapi::document` adds what all
//! services share.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::marker::PhantomData;

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AllOfBuilder, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type,
};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Required};
use utoipa::{IntoParams, IntoResponses, Modify, PartialSchema, ToSchema};

use crate::accepted::AcceptedBody;
use crate::command::schema::Body;
use crate::extract::{
    ExpectedVersion, IDEMPOTENCY_KEY_MAX_LEN, IdempotencyKey, PostPath, UserPath,
};

/// The name of the bearer security scheme that the writes under a user's path require.
pub const BEARER: &str = "bearer";

/// The document's title, version, description and security scheme.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "user-data command API",
        version = "1",
        description = "The writes of contract v1. A write is checked (shape, sizes, ids, who \
            asks), appended to the event log, and answered 202 once the log has it; the \
            projector then decides it (applied or rejected), which the query API's \
            `GET /v1/commands/{command_id}` tells. Every error is application/problem+json."
    ),
    tags(
        (name = "writes", description = "The six writes."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    ),
    // The bodies of the 202s, which `WriteAccepted` refers to by name.
    components(schemas(AcceptedBody, SignedUp)),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "The `access_token` of the sign-up's answer (POST /v1/users), for the \
                         writes under that user's path. A token of another user is 403.",
                    ))
                    .build(),
            ),
        );
    }
}

fn uuid_schema() -> Schema {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
        .build()
        .into()
}

fn path_id(name: &str, description: &str) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(format!(
            "{description} A UUID in its hyphenated form; anything else is 400."
        )))
        .schema(Some(uuid_schema()))
        .build()
}

fn user_id() -> Parameter {
    path_id(
        "user_id",
        "The user whose write it is: the bearer token must be this user's.",
    )
}

impl IntoParams for UserPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![user_id()]
    }
}

impl IntoParams for PostPath {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![user_id(), path_id("post_id", "One of the user's posts.")]
    }
}

/// `"N"` with N a version without leading zeros, or `*`. The pattern allows up to 18 digits
/// where the parser takes any N up to `i64::MAX` (19 digits): no aggregate gets near either,
/// and a pattern that is exact to the last digit would be unreadable.
const IF_MATCH_PATTERN: &str = r#"^(\*|"[1-9][0-9]{0,17}")$"#;

impl IntoParams for ExpectedVersion {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("If-Match")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "The version the write expects, as the ETag of a read: `\"3\"`. The \
                     projector rejects the write (version_conflict) if the aggregate is at \
                     another version when it decides. Without it, or with `*`, the write \
                     applies to whatever version is current. Anything else is 400.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .pattern(Some(IF_MATCH_PATTERN)),
                ))
                .build(),
        ]
    }
}

/// Printable ASCII, 1 to [`IDEMPOTENCY_KEY_MAX_LEN`] characters, as the extractor takes it;
/// first and last not a space, since HTTP drops a header value's surrounding blanks.
const IDEMPOTENCY_KEY_PATTERN: &str = r"^[\x21-\x7E]([\x20-\x7E]*[\x21-\x7E])?$";

impl IntoParams for IdempotencyKey {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            ParameterBuilder::new()
                .name("Idempotency-Key")
                .parameter_in(ParameterIn::Header)
                .required(Required::False)
                .description(Some(
                    "Makes retries safe: the same request with the same key answers the same \
                     command_id and aggregate_id and has its effect at most once, from any \
                     instance, also after a restart. Scoped to the path's user. A sign-up's key \
                     must be unguessable (a random UUID): a retry answers a token for the \
                     same user. Malformed is 400.",
                ))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .min_length(Some(1))
                        .max_length(Some(IDEMPOTENCY_KEY_MAX_LEN))
                        .pattern(Some(IDEMPOTENCY_KEY_PATTERN)),
                ))
                .build(),
        ]
    }
}

/// Request bodies: see [`crate::command::schema`].
macro_rules! body_schema {
    ($($name:ident => $body:expr),* $(,)?) => {$(
        #[doc = concat!("The request body of ", stringify!($body), ".")]
        #[derive(Debug)]
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                $body.schema()
            }
        }

        impl ToSchema for $name {}
    )*};
}

body_schema! {
    RegisterUser => Body::RegisterUser,
    UpdateProfile => Body::UpdateProfile,
    PublishPost => Body::PublishPost,
    EditPost => Body::EditPost,
}

/// The sign-up's 202: an [`Accepted`](crate::accepted::Accepted) whose `access_token` is always
/// there.
#[derive(Debug)]
pub struct SignedUp;

impl PartialSchema for SignedUp {
    fn schema() -> RefOr<Schema> {
        AllOfBuilder::new()
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                AcceptedBody::name(),
            )))
            .item(ObjectBuilder::new().required("access_token"))
            .description(Some(
                "The write's answer, and the new user's access token for its other writes.",
            ))
            .into()
    }
}

impl ToSchema for SignedUp {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SignedUp")
    }

    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((AcceptedBody::name().into_owned(), AcceptedBody::schema()));
        <AcceptedBody as ToSchema>::schemas(schemas);
    }
}

/// The 202 of every write: the event is in the log, with `Body` (an [`AcceptedBody`], or the
/// sign-up's [`SignedUp`]) and the headers of [`crate::accepted::Accepted`]. Its schema is
/// referred to by name: the document's `components` must have it (see [`ApiDoc`]).
pub struct WriteAccepted<Body = AcceptedBody>(PhantomData<Body>);

impl<Body: ToSchema> IntoResponses for WriteAccepted<Body> {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let header = |description: &str| {
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(description))
                .build()
        };
        let accepted = ResponseBuilder::new()
            .description(
                "Accepted: the event is in the log. The projector decides it next \
                 (GET /v1/commands/{command_id} on the query API).",
            )
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(Body::name())))
                    .build(),
            )
            .header(
                "Location",
                header("/v1/commands/{command_id}: where the decision will be."),
            )
            .header(
                "Consistency-Token",
                header(
                    "The write's log position: a read that sends it back is answered once the \
                     read model includes this write.",
                ),
            )
            .build();
        BTreeMap::from([("202".to_owned(), accepted.into())])
    }
}

/// The refusals of `require_path_user`, the route layer of every write under a user's path: they
/// come before the handler looks at anything else.
#[derive(IntoResponses)]
pub enum OwnedWriteRefusals {
    #[response(
        status = 401,
        description = "No valid bearer token.",
        headers(("WWW-Authenticate" = String, description = "The Bearer challenge (RFC 6750), with `error=\"invalid_token\"` when a token was sent."))
    )]
    Unauthenticated,
    #[response(
        status = 403,
        description = "The bearer token is another user's than the path's."
    )]
    Forbidden,
    #[response(
        status = 429,
        description = "Over the caller's write rate limit (by user); nothing appended."
    )]
    RateLimited,
}

/// The refusals of a write's JSON body ([`crate::extract::JsonBody`] and the field rules).
#[derive(IntoResponses)]
pub enum BodyRefusals {
    #[response(status = 413, description = "The body is larger than 64 KiB.")]
    TooLarge,
    #[response(
        status = 415,
        description = "The Content-Type is not JSON (application/json or application/*+json)."
    )]
    NotJson,
    #[response(
        status = 422,
        description = "Well-formed JSON that breaks a field rule: `errors` names each field."
    )]
    BreaksAFieldRule,
}

/// A write that the broker did not take, or not in time ([`crate::appender`], and the bound on
/// writes in flight).
#[derive(IntoResponses)]
#[response(
    status = 503,
    description = "Not appended (too many writes waiting, or the log unreachable), or unknown after a timeout: retry, with the same Idempotency-Key."
)]
pub struct NotAppended;
