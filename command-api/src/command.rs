//! The six writes as pure functions: which write it is, its JSON body checked field by field
//! into a domain event, and the envelope that carries it. No IO, so every rule is unit-tested.
//!
//! Field rules (contract v1): lengths of `display_name`, `bio` and `title` count Unicode scalar
//! values (`chars`), the post `body` counts UTF-8 bytes; strings are kept exactly as sent. A
//! body breaks the rules with every error it has, each naming its field. Two rules concern the
//! body as a whole rather than one field; their errors name the field `""` (the JSON Pointer of
//! the whole document): the body is not a JSON object, or a `PATCH` sets no field at all.

use chrono::{DateTime, Utc};
use events::{
    AggregateType, Envelope, Event, Idempotency, PostEdited, PostFormat, PostPublished,
    UserProfileUpdated, UserRegistered,
};
use serde_json::{Map, Value};
use service_kit::FieldError;
use uuid::Uuid;

use crate::ids::{CommandIds, Fingerprint};

/// The field name of errors about the body as a whole.
pub const WHOLE_BODY: &str = "";

/// Route templates, shared by the router and the idempotency fingerprint.
pub mod routes {
    pub const USERS: &str = "/v1/users";
    pub const USER: &str = "/v1/users/{user_id}";
    pub const USER_POSTS: &str = "/v1/users/{user_id}/posts";
    pub const USER_POST: &str = "/v1/users/{user_id}/posts/{post_id}";
}

/// One of the six writes, with the ids from its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    RegisterUser,
    UpdateProfile { user_id: Uuid },
    DeleteUser { user_id: Uuid },
    PublishPost { user_id: Uuid },
    EditPost { user_id: Uuid, post_id: Uuid },
    DeletePost { user_id: Uuid, post_id: Uuid },
}

impl Write {
    pub fn method(self) -> &'static str {
        match self {
            Write::RegisterUser | Write::PublishPost { .. } => "POST",
            Write::UpdateProfile { .. } | Write::EditPost { .. } => "PATCH",
            Write::DeleteUser { .. } | Write::DeletePost { .. } => "DELETE",
        }
    }

    pub fn route(self) -> &'static str {
        match self {
            Write::RegisterUser => routes::USERS,
            Write::UpdateProfile { .. } | Write::DeleteUser { .. } => routes::USER,
            Write::PublishPost { .. } => routes::USER_POSTS,
            Write::EditPost { .. } | Write::DeletePost { .. } => routes::USER_POST,
        }
    }

    /// The ids in the path, in path order.
    pub fn path_ids(self) -> Vec<Uuid> {
        match self {
            Write::RegisterUser => vec![],
            Write::UpdateProfile { user_id }
            | Write::DeleteUser { user_id }
            | Write::PublishPost { user_id } => vec![user_id],
            Write::EditPost { user_id, post_id } | Write::DeletePost { user_id, post_id } => {
                vec![user_id, post_id]
            }
        }
    }

    /// The scope of an `Idempotency-Key`: the path's user, or nil for a sign-up, which has no
    /// user yet.
    pub fn idempotency_scope(self) -> Uuid {
        self.path_ids().first().copied().unwrap_or_else(Uuid::nil)
    }

    /// Whether `If-Match` means anything for this write (creates have no version to match).
    pub fn takes_if_match(self) -> bool {
        self.method() != "POST"
    }
}

/// The envelope for `event`, the result of `write`, with the given ids.
pub fn envelope(
    write: Write,
    event: Event,
    ids: CommandIds,
    idempotency_key: Option<String>,
    expected_version: Option<i64>,
    accepted_at: DateTime<Utc>,
) -> Envelope {
    let (aggregate_id, partition_key) = match write {
        Write::RegisterUser => (ids.new_aggregate_id, ids.new_aggregate_id),
        Write::UpdateProfile { user_id } | Write::DeleteUser { user_id } => (user_id, user_id),
        Write::PublishPost { user_id } => (ids.new_aggregate_id, user_id),
        Write::EditPost { user_id, post_id } | Write::DeletePost { user_id, post_id } => {
            (post_id, user_id)
        }
    };
    Envelope {
        event_id: ids.event_id,
        aggregate_id,
        partition_key,
        command_id: ids.command_id,
        idempotency: idempotency_key.map(|key| Idempotency {
            scope: write.idempotency_scope(),
            key,
        }),
        expected_version: if write.takes_if_match() {
            expected_version
        } else {
            None
        },
        accepted_at,
        event,
    }
}

/// The ids for `write` carrying `event`: derived from the key when there is one, else fresh.
pub fn command_ids(
    write: Write,
    event: &Event,
    idempotency_key: Option<&str>,
    expected_version: Option<i64>,
) -> CommandIds {
    let Some(key) = idempotency_key else {
        return CommandIds::fresh();
    };
    let data = requested_data(event);
    let path_ids = write.path_ids();
    let fingerprint = Fingerprint {
        method: write.method(),
        route: write.route(),
        path_ids: &path_ids,
        expected_version: if write.takes_if_match() {
            expected_version
        } else {
            None
        },
        data: &data,
    };
    CommandIds::derive(
        write.idempotency_scope(),
        key,
        event.aggregate_type(),
        &fingerprint,
    )
}

/// What the client chose, as the idempotency fingerprint hashes it: the event's payload limited to
/// the request's fields. What the command API fills in itself (a post's `format`, since
/// post.published v2) stays out, so that an event schema change does not change the ids of a
/// retry whose first attempt an instance of the previous release answered.
fn requested_data(event: &Event) -> Value {
    match event {
        Event::PostPublished(post) => serde_json::json!({"title": post.title, "body": post.body}),
        _ => event.data(),
    }
}

/// The path to read the aggregate an event belongs to.
pub fn resource_path(aggregate_type: AggregateType, aggregate_id: Uuid) -> String {
    match aggregate_type {
        AggregateType::User => format!("/v1/users/{aggregate_id}"),
        AggregateType::Post => format!("/v1/posts/{aggregate_id}"),
    }
}

/// `POST /v1/users`: `{"display_name": 1..=100 chars, "bio"?: 0..=1000 chars}`.
pub fn register_user(body: Value) -> Result<Event, Vec<FieldError>> {
    let mut fields = Fields::of(body, &["display_name", "bio"])?;
    let display_name = fields.required("display_name", DISPLAY_NAME);
    let bio = fields.optional("bio", BIO);
    fields.finish()?;
    Ok(Event::UserRegistered(UserRegistered {
        // `finish` has failed unless the required field was there.
        display_name: display_name.unwrap_or_default(),
        bio,
    }))
}

/// `PATCH /v1/users/{user_id}`: `{"display_name"?, "bio"?}`, at least one.
pub fn update_profile(body: Value) -> Result<Event, Vec<FieldError>> {
    let mut fields = Fields::of(body, &["display_name", "bio"])?;
    let display_name = fields.optional("display_name", DISPLAY_NAME);
    let bio = fields.optional("bio", BIO);
    fields.require_any()?;
    Ok(Event::UserProfileUpdated(UserProfileUpdated {
        display_name,
        bio,
    }))
}

/// `POST /v1/users/{user_id}/posts`: `{"title": 1..=200 chars, "body": 1..=16384 bytes}`.
pub fn publish_post(body: Value) -> Result<Event, Vec<FieldError>> {
    let mut fields = Fields::of(body, &["title", "body"])?;
    let title = fields.required("title", TITLE);
    let body = fields.required("body", POST_BODY);
    fields.finish()?;
    Ok(Event::PostPublished(PostPublished {
        // `finish` has failed unless both required fields were there.
        title: title.unwrap_or_default(),
        body: body.unwrap_or_default(),
        // Contract v1 has no format field: its bodies are shown exactly as sent.
        format: PostFormat::Plain,
    }))
}

/// `PATCH /v1/users/{user_id}/posts/{post_id}`: `{"title"?, "body"?}`, at least one.
pub fn edit_post(body: Value) -> Result<Event, Vec<FieldError>> {
    let mut fields = Fields::of(body, &["title", "body"])?;
    let title = fields.optional("title", TITLE);
    let body = fields.optional("body", POST_BODY);
    fields.require_any()?;
    Ok(Event::PostEdited(PostEdited { title, body }))
}

/// How a string field's length is measured and bounded.
#[derive(Debug, Clone, Copy)]
enum Length {
    Chars { min: usize, max: usize },
    Bytes { min: usize, max: usize },
}

const DISPLAY_NAME: Length = Length::Chars { min: 1, max: 100 };
const BIO: Length = Length::Chars { min: 0, max: 1000 };
const TITLE: Length = Length::Chars { min: 1, max: 200 };
const POST_BODY: Length = Length::Bytes { min: 1, max: 16384 };

/// The request bodies of the four writes that take one, as JSON Schemas (the OpenAPI document's
/// request bodies). The lengths are the rules' own constants; that the field names and which
/// are required match the rule functions above is checked by the tests below, which run bodies
/// made from each schema through its rule function.
pub mod schema {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, Schema, Type};

    use super::{BIO, DISPLAY_NAME, Length, POST_BODY, TITLE};

    /// Which write's body.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Body {
        RegisterUser,
        UpdateProfile,
        PublishPost,
        EditPost,
    }

    impl Body {
        pub const ALL: [Body; 4] = [
            Body::RegisterUser,
            Body::UpdateProfile,
            Body::PublishPost,
            Body::EditPost,
        ];

        /// Its fields, their length rules, and whether each is required.
        fn fields(self) -> [(&'static str, Length, bool); 2] {
            match self {
                Body::RegisterUser => [("display_name", DISPLAY_NAME, true), ("bio", BIO, false)],
                Body::UpdateProfile => [("display_name", DISPLAY_NAME, false), ("bio", BIO, false)],
                Body::PublishPost => [("title", TITLE, true), ("body", POST_BODY, true)],
                Body::EditPost => [("title", TITLE, false), ("body", POST_BODY, false)],
            }
        }

        /// A `PATCH`: every field is optional, and at least one is required.
        fn is_patch(self) -> bool {
            matches!(self, Body::UpdateProfile | Body::EditPost)
        }

        pub fn schema(self) -> RefOr<Schema> {
            let mut object = ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(AdditionalProperties::FreeForm(false)))
                .description(Some(if self.is_patch() {
                    "At least one field; unknown fields are refused (422). Strings are stored \
                     exactly as sent."
                } else {
                    "Unknown fields are refused (422). Strings are stored exactly as sent."
                }));
            for (name, length, required) in self.fields() {
                object = object.property(name, length.schema());
                if required {
                    object = object.required(name);
                }
            }
            let mut object: Object = object.build();
            if self.is_patch() {
                object.min_properties = Some(1);
            }
            RefOr::T(Schema::Object(object))
        }
    }

    impl Length {
        /// `minLength` and `maxLength` count characters (code points), as JSON Schema does.
        /// For a length in bytes that is the bound's upper limit only (a character is 1 to 4
        /// bytes), so its description says the rest. Strings must not hold U+0000 (see
        /// `Length::check`).
        fn schema(self) -> Object {
            let (min, max, description) = match self {
                Length::Chars { min, max } => (min, max, format!("{min} to {max} characters.")),
                Length::Bytes { min, max } => (
                    min,
                    max,
                    format!("{min} to {max} bytes of UTF-8 (maxLength counts characters)."),
                ),
            };
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(min))
                .max_length(Some(max))
                .pattern(Some(NO_NUL))
                .description(Some(format!("{description} No U+0000.")))
                .build()
        }
    }

    /// Any string without U+0000, which PostgreSQL text cannot hold.
    pub const NO_NUL: &str = r"^[^\u0000]*$";
}

impl Length {
    /// Checks a string field's length, and that it holds no NUL: PostgreSQL text cannot store
    /// U+0000, so such a write would be accepted here and never be decided.
    fn check(self, value: &str) -> Result<(), String> {
        if value.contains('\0') {
            return Err("must not contain the NUL character (U+0000)".to_owned());
        }
        let (len, min, max, unit) = match self {
            Length::Chars { min, max } => (value.chars().count(), min, max, "characters"),
            Length::Bytes { min, max } => (value.len(), min, max, "bytes (UTF-8)"),
        };
        if len < min || len > max {
            let bounds = if min == 0 {
                format!("at most {max} {unit}")
            } else {
                format!("{min} to {max} {unit}")
            };
            return Err(format!("must be {bounds}, got {len}"));
        }
        Ok(())
    }
}

/// Reads the string fields of one JSON object, collecting every error instead of stopping at
/// the first, so a client learns all it has to fix from one answer.
struct Fields {
    map: Map<String, Value>,
    known: &'static [&'static str],
    /// Known fields the body had, valid or not.
    present: Vec<&'static str>,
    errors: Vec<FieldError>,
}

impl Fields {
    fn of(body: Value, known: &'static [&'static str]) -> Result<Fields, Vec<FieldError>> {
        match body {
            Value::Object(map) => Ok(Fields {
                map,
                known,
                present: Vec::new(),
                errors: Vec::new(),
            }),
            other => Err(vec![FieldError::new(
                WHOLE_BODY,
                format!("the body must be a JSON object, not {}", json_type(&other)),
            )]),
        }
    }

    fn required(&mut self, name: &'static str, length: Length) -> Option<String> {
        if !self.map.contains_key(name) {
            self.errors.push(FieldError::new(name, "is required"));
            return None;
        }
        self.optional(name, length)
    }

    fn optional(&mut self, name: &'static str, length: Length) -> Option<String> {
        let value = self.map.remove(name)?;
        self.present.push(name);
        let error = match value {
            Value::String(value) => match length.check(&value) {
                Ok(()) => return Some(value),
                Err(message) => message,
            },
            other => format!("must be a string, not {}", json_type(&other)),
        };
        self.errors.push(FieldError::new(name, error));
        None
    }

    /// For a `PATCH`: like [`Fields::finish`], and fails unless the body had a known field.
    fn require_any(mut self) -> Result<(), Vec<FieldError>> {
        if self.present.is_empty() {
            self.errors.push(FieldError::new(
                WHOLE_BODY,
                format!("at least one of {} is required", self.known.join(", ")),
            ));
        }
        self.finish()
    }

    /// Fails with every error found, including one per unknown field. Known fields were
    /// removed from the map as they were read, so whatever is left is unknown.
    fn finish(mut self) -> Result<(), Vec<FieldError>> {
        let mut unknown: Vec<String> = self.map.into_iter().map(|(name, _)| name).collect();
        unknown.sort();
        for name in unknown {
            self.errors
                .push(FieldError::new(name, "is not a known field"));
        }
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self.errors)
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields_of(result: Result<Event, Vec<FieldError>>) -> Vec<String> {
        result
            .expect_err("rejected")
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn a_valid_sign_up_keeps_its_strings_exactly() {
        let event =
            register_user(json!({"display_name": "  Ada\u{301} ", "bio": ""})).expect("valid");
        assert_eq!(
            event,
            Event::UserRegistered(UserRegistered {
                display_name: "  Ada\u{301} ".into(),
                bio: Some(String::new()),
            })
        );
        let event = register_user(json!({"display_name": "B"})).expect("valid");
        assert_eq!(
            event,
            Event::UserRegistered(UserRegistered {
                display_name: "B".into(),
                bio: None
            })
        );
    }

    #[test]
    fn lengths_count_characters_except_the_post_body_which_counts_bytes() {
        let name = |n| "é".repeat(n);
        assert!(register_user(json!({"display_name": name(100)})).is_ok());
        assert_eq!(
            fields_of(register_user(json!({"display_name": name(101)}))),
            ["display_name"]
        );
        assert_eq!(
            fields_of(register_user(json!({"display_name": ""}))),
            ["display_name"]
        );
        assert!(register_user(json!({"display_name": "x", "bio": name(1000)})).is_ok());
        assert_eq!(
            fields_of(register_user(
                json!({"display_name": "x", "bio": name(1001)})
            )),
            ["bio"]
        );

        assert!(publish_post(json!({"title": "🦀".repeat(200), "body": "x"})).is_ok());
        assert_eq!(
            fields_of(publish_post(
                json!({"title": "🦀".repeat(201), "body": "x"})
            )),
            ["title"]
        );
        // 8192 two-byte characters are 16384 bytes.
        assert!(publish_post(json!({"title": "t", "body": name(8192)})).is_ok());
        assert_eq!(
            fields_of(publish_post(
                json!({"title": "t", "body": name(8192) + "x"})
            )),
            ["body"]
        );
        assert_eq!(
            fields_of(publish_post(json!({"title": "", "body": ""}))),
            ["title", "body"]
        );
    }

    #[test]
    fn a_post_is_plain_and_its_format_is_not_a_request_field() {
        assert_eq!(
            publish_post(json!({"title": "t", "body": "*b*"})).expect("valid"),
            Event::PostPublished(PostPublished {
                title: "t".into(),
                body: "*b*".into(),
                format: PostFormat::Plain,
            })
        );
        assert_eq!(
            fields_of(publish_post(
                json!({"title": "t", "body": "b", "format": "markdown"})
            )),
            ["format"],
            "contract v1 has no format field"
        );
    }

    /// The schemas of the OpenAPI document against the rules: a body made from a schema is
    /// accepted exactly when it keeps to it.
    #[test]
    fn each_body_schema_says_what_its_rule_function_accepts() {
        use schema::Body;

        for body in Body::ALL {
            let rule = match body {
                Body::RegisterUser => register_user,
                Body::UpdateProfile => update_profile,
                Body::PublishPost => publish_post,
                Body::EditPost => edit_post,
            };
            let schema = serde_json::to_value(body.schema()).expect("serializes");
            let properties = schema["properties"].as_object().expect("properties");
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|names| names.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let max = |name: &str| properties[name]["maxLength"].as_u64().expect("maxLength");
            let min = |name: &str| properties[name]["minLength"].as_u64().expect("minLength");
            let longest: Map<String, Value> = properties
                .keys()
                .map(|name| (name.clone(), json!("x".repeat(max(name) as usize))))
                .collect();
            assert!(rule(Value::Object(longest.clone())).is_ok(), "{body:?}");
            for name in properties.keys() {
                let mut one = longest.clone();
                one[name] = json!("x".repeat(max(name) as usize + 1));
                assert_eq!(fields_of(rule(Value::Object(one.clone()))), [name.as_str()]);
                if min(name) > 0 {
                    one[name] = json!("x".repeat(min(name) as usize - 1));
                    assert_eq!(fields_of(rule(Value::Object(one.clone()))), [name.as_str()]);
                }
                one[name] = json!("a\u{0}b");
                assert_eq!(fields_of(rule(Value::Object(one))), [name.as_str()]);
                let mut without = longest.clone();
                without.remove(name);
                let outcome = rule(Value::Object(without.clone()));
                if required.contains(&name.as_str()) {
                    assert_eq!(fields_of(outcome), [name.as_str()]);
                } else {
                    assert!(outcome.is_ok(), "{body:?} without {name}");
                }
            }
            let mut unknown = longest.clone();
            unknown.insert("zz_unknown".into(), json!("x"));
            assert_eq!(fields_of(rule(Value::Object(unknown))), ["zz_unknown"]);
            assert_eq!(schema["additionalProperties"], false);
            if required.is_empty() {
                assert_eq!(schema["minProperties"], 1, "{body:?}");
                assert_eq!(fields_of(rule(json!({}))), [WHOLE_BODY]);
            } else {
                assert!(schema.get("minProperties").is_none(), "{body:?}");
            }
        }
    }

    #[test]
    fn strings_with_a_nul_character_are_refused() {
        let nul = "a\u{0}b";
        let cases = [
            register_user(json!({"display_name": nul})),
            register_user(json!({"display_name": "ok", "bio": nul})),
            publish_post(json!({"title": nul, "body": "b"})),
            publish_post(json!({"title": "t", "body": nul})),
            edit_post(json!({"body": nul})),
            update_profile(json!({"display_name": nul})),
        ];
        for result in cases {
            let fields = fields_of(result);
            assert_eq!(fields.len(), 1, "{fields:?}");
        }
    }

    #[test]
    fn every_broken_field_is_reported_at_once() {
        let errors =
            register_user(json!({"display_name": 5, "bio": null, "zeta": 1, "alpha": true}))
                .expect_err("rejected");
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["display_name", "bio", "alpha", "zeta"]);
        assert!(errors[0].message.contains("a number"), "{errors:?}");
        assert!(errors[1].message.contains("null"), "{errors:?}");
        assert!(
            errors[2].message.contains("not a known field"),
            "{errors:?}"
        );

        assert_eq!(fields_of(publish_post(json!({}))), ["title", "body"]);
        assert_eq!(
            fields_of(publish_post(json!({"title": ["t"], "body": {}}))),
            ["title", "body"]
        );
    }

    #[test]
    fn a_body_that_is_not_an_object_is_a_whole_body_error() {
        for body in [json!([]), json!("x"), json!(1), json!(null), json!(true)] {
            for validate in [register_user, update_profile, publish_post, edit_post] {
                assert_eq!(fields_of(validate(body.clone())), [WHOLE_BODY], "{body}");
            }
        }
    }

    #[test]
    fn a_patch_must_set_at_least_one_field() {
        assert_eq!(fields_of(update_profile(json!({}))), [WHOLE_BODY]);
        assert_eq!(fields_of(edit_post(json!({}))), [WHOLE_BODY]);
        assert_eq!(
            fields_of(edit_post(json!({"tags": "x"}))),
            [WHOLE_BODY, "tags"]
        );
        // A field that is there but broken is reported for itself only.
        assert_eq!(fields_of(update_profile(json!({"bio": 3}))), ["bio"]);
        assert_eq!(fields_of(edit_post(json!({"title": null}))), ["title"]);

        assert_eq!(
            update_profile(json!({"bio": ""})).expect("valid"),
            Event::UserProfileUpdated(UserProfileUpdated {
                display_name: None,
                bio: Some(String::new())
            })
        );
        assert_eq!(
            edit_post(json!({"body": "new"})).expect("valid"),
            Event::PostEdited(PostEdited {
                title: None,
                body: Some("new".into())
            })
        );
    }

    #[test]
    fn envelopes_are_keyed_by_the_owning_user() {
        let user_id = Uuid::now_v7();
        let post_id = Uuid::now_v7();
        let ids = CommandIds::fresh();
        let now = Utc::now();

        let sign_up = envelope(
            Write::RegisterUser,
            Event::UserDeleted,
            ids,
            Some("k".into()),
            Some(3),
            now,
        );
        assert_eq!(sign_up.aggregate_id, ids.new_aggregate_id);
        assert_eq!(sign_up.partition_key, ids.new_aggregate_id);
        assert_eq!(
            sign_up.idempotency,
            Some(Idempotency {
                scope: Uuid::nil(),
                key: "k".into()
            })
        );
        assert_eq!(
            sign_up.expected_version, None,
            "a create has no version to match"
        );

        let publish = envelope(
            Write::PublishPost { user_id },
            Event::PostDeleted,
            ids,
            None,
            None,
            now,
        );
        assert_eq!(
            (publish.aggregate_id, publish.partition_key),
            (ids.new_aggregate_id, user_id)
        );
        assert_eq!(publish.idempotency, None);

        let edit = envelope(
            Write::EditPost { user_id, post_id },
            Event::PostDeleted,
            ids,
            Some("k".into()),
            Some(7),
            now,
        );
        assert_eq!((edit.aggregate_id, edit.partition_key), (post_id, user_id));
        assert_eq!(edit.expected_version, Some(7));
        assert_eq!(
            edit.idempotency,
            Some(Idempotency {
                scope: user_id,
                key: "k".into()
            })
        );
        assert_eq!(edit.command_id, ids.command_id);
        assert_eq!(edit.event_id, ids.event_id);

        let delete = envelope(
            Write::DeleteUser { user_id },
            Event::UserDeleted,
            ids,
            None,
            None,
            now,
        );
        assert_eq!(
            (delete.aggregate_id, delete.partition_key),
            (user_id, user_id)
        );
    }

    #[test]
    fn ids_are_derived_only_when_a_key_is_sent() {
        let user_id = Uuid::now_v7();
        let write = Write::UpdateProfile { user_id };
        let event = update_profile(json!({"bio": "b"})).expect("valid");
        let keyed = command_ids(write, &event, Some("k"), Some(2));
        assert_eq!(keyed, command_ids(write, &event, Some("k"), Some(2)));
        assert_ne!(
            keyed.command_id,
            command_ids(write, &event, Some("k"), Some(3)).command_id
        );
        assert_ne!(
            keyed.command_id,
            command_ids(write, &event, Some("k2"), Some(2)).command_id
        );
        let other_user = Write::UpdateProfile {
            user_id: Uuid::now_v7(),
        };
        assert_ne!(
            keyed.command_id,
            command_ids(other_user, &event, Some("k"), Some(2)).command_id
        );
        assert_ne!(
            command_ids(write, &event, None, None),
            command_ids(write, &event, None, None)
        );

        // `If-Match` means nothing to a create, so it does not change a create's ids either.
        let post = publish_post(json!({"title": "t", "body": "b"})).expect("valid");
        let create = Write::PublishPost { user_id };
        assert_eq!(
            command_ids(create, &post, Some("k"), Some(1)),
            command_ids(create, &post, Some("k"), None)
        );
    }

    #[test]
    fn the_ids_of_each_write_stay_what_earlier_releases_derived() {
        // Computed independently (SHA-1 over the namespace and the length-prefixed parts, with
        // the payloads of schema version 1), so a change to an event's shape that leaks into
        // the fingerprint breaks the idempotency of retries across a deploy here, not there.
        const USER: Uuid = uuid::uuid!("0190b6a0-0000-7000-8000-000000000001");
        const POST: Uuid = uuid::uuid!("0190b6a0-0000-7000-8000-000000000002");
        let user_id = USER;
        let post_id = POST;
        let writes = [
            (
                Write::RegisterUser,
                register_user(json!({"display_name": "Ada"})).expect("valid"),
                uuid::uuid!("0a15523c-78fa-5d34-8347-75e7033f8419"),
            ),
            (
                Write::UpdateProfile { user_id },
                update_profile(json!({"bio": "b"})).expect("valid"),
                uuid::uuid!("49b96420-6802-5349-9c59-0ec38f4de1d6"),
            ),
            (
                Write::DeleteUser { user_id },
                Event::UserDeleted,
                uuid::uuid!("7f36d5a8-8fc9-57de-b11d-5e7586205fc9"),
            ),
            (
                Write::PublishPost { user_id },
                publish_post(json!({"title": "t", "body": "b"})).expect("valid"),
                uuid::uuid!("03322eba-b8cc-5158-8128-895d907d1645"),
            ),
            (
                Write::EditPost { user_id, post_id },
                edit_post(json!({"title": "t2"})).expect("valid"),
                uuid::uuid!("1be1954f-a48b-5fc8-beb9-9e4cf9b2312a"),
            ),
            (
                Write::DeletePost { user_id, post_id },
                Event::PostDeleted,
                uuid::uuid!("167f77e9-9c9b-572c-bb75-2839c7d73b06"),
            ),
        ];
        for (write, event, command_id) in writes {
            assert_eq!(
                command_ids(write, &event, Some("retry-1"), Some(2)).command_id,
                command_id,
                "{write:?}"
            );
        }
        let publish = publish_post(json!({"title": "t", "body": "b"})).expect("valid");
        let ids = command_ids(
            Write::PublishPost { user_id },
            &publish,
            Some("retry-1"),
            None,
        );
        assert_eq!(
            ids.event_id,
            uuid::uuid!("8ee189cc-7f5b-5586-9749-e366a2411b97")
        );
        assert_eq!(
            ids.new_aggregate_id,
            uuid::uuid!("91372129-e4e6-56cd-9b13-55119bfdfb42")
        );
    }

    #[test]
    fn writes_know_their_method_route_and_scope() {
        let user_id = Uuid::now_v7();
        let post_id = Uuid::now_v7();
        assert_eq!(Write::RegisterUser.idempotency_scope(), Uuid::nil());
        assert_eq!(
            Write::EditPost { user_id, post_id }.idempotency_scope(),
            user_id
        );
        assert_eq!(
            Write::EditPost { user_id, post_id }.path_ids(),
            [user_id, post_id]
        );
        assert_eq!(Write::DeletePost { user_id, post_id }.method(), "DELETE");
        assert_eq!(Write::PublishPost { user_id }.route(), routes::USER_POSTS);
        assert_eq!(
            resource_path(AggregateType::Post, post_id),
            format!("/v1/posts/{post_id}")
        );
    }
}
