//! The request bodies of the four writes that take one, as JSON Schemas (the OpenAPI document's
//! request bodies). The lengths are the field rules' own bounds ([`super::length`]); that the
//! field names and which are required match the field rules is checked by the tests below, which
//! run bodies made from each schema through its rule function.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, Object, ObjectBuilder, Schema, Type};

use super::length::{BIO, DISPLAY_NAME, Length, POST_BODY, TITLE};

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

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value, json};

    use super::*;
    use crate::command::field_rules::tests::fields_of;
    use crate::command::field_rules::{
        WHOLE_BODY, edit_post, publish_post, register_user, update_profile,
    };

    /// The schemas of the OpenAPI document against the rules: a body made from a schema is
    /// accepted exactly when it keeps to it.
    #[test]
    fn each_body_schema_says_what_its_rule_function_accepts() {
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
}
