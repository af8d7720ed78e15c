//! The field rules of the four writes that take a body: each checks its JSON body field by
//! field into a domain event.
//!
//! Field rules (contract v1): lengths of `display_name`, `bio` and `title` count Unicode scalar
//! values (`chars`), the post `body` counts UTF-8 bytes ([`super::length`]); strings are kept
//! exactly as sent. A body breaks the rules with every error it has, each naming its field. Two
//! rules concern the body as a whole rather than one field; their errors name the field `""`
//! (the JSON Pointer of the whole document): the body is not a JSON object, or a `PATCH` sets no
//! field at all.

use events::{Event, PostEdited, PostFormat, PostPublished, UserProfileUpdated, UserRegistered};
use serde_json::{Map, Value};
use service_kit::FieldError;

use super::length::{BIO, DISPLAY_NAME, Length, POST_BODY, TITLE};

/// The field name of errors about the body as a whole.
pub const WHOLE_BODY: &str = "";

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
pub(super) mod tests {
    use serde_json::json;

    use super::*;

    /// The fields a refused body's errors name, in order.
    pub(in crate::command) fn fields_of(result: Result<Event, Vec<FieldError>>) -> Vec<String> {
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
}
