//! Checks of real answers against a service's OpenAPI document, for the services' tests.
//!
//! [`check`] validates a JSON value against a schema of the document with the subset of JSON
//! Schema that our documents use (`$ref`, `allOf`, `type`, `required`, `properties`,
//! `additionalProperties: false`, `items`, `enum`, `const`, bounds, lengths, and the `uuid` and
//! `date-time` formats). Anything else in a schema fails the check rather than passing
//! silently, so a document that starts using more cannot make these tests vacuous. The full
//! validation of every answer is the fuzzer's (`./dev fuzz`); this one is for the tests to tell,
//! without a network, that one answer of each kind is what the document says.

use serde_json::Value;

/// The methods a route may have, in the order the drift tests probe them.
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// The documented methods of `path`, upper case.
pub fn methods_of(document: &Value, path: &str) -> Vec<String> {
    document["paths"][path]
        .as_object()
        .map(|item| {
            item.keys()
                .map(|method| method.to_ascii_uppercase())
                .filter(|method| METHODS.contains(&method.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

/// The documented response of `method path` with `status`.
pub fn response<'a>(document: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let response =
        &document["paths"][path][method.to_ascii_lowercase()]["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} documents no {status}"
    );
    response
}

/// Checks an answer against the documented response of `method path` with its status: the
/// content type, the required headers, and the body against the schema.
pub fn check_answer(
    document: &Value,
    method: &str,
    path: &str,
    status: u16,
    headers: &[(String, String)],
    content_type: Option<&str>,
    body: &Value,
) -> Result<(), String> {
    let response = response(document, method, path, status);
    if let Some(documented) = response["headers"].as_object() {
        for (name, header) in documented {
            let present = headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name));
            if header["required"] == true && !present {
                return Err(format!("{method} {path} {status}: no {name} header"));
            }
        }
    }
    let Some(content) = response["content"].as_object() else {
        return Ok(());
    };
    let content_type = content_type.unwrap_or_default();
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let media = content
        .get(essence)
        .ok_or_else(|| format!("{method} {path} {status}: {content_type} is not documented"))?;
    check(document, &media["schema"], body).map_err(|e| format!("{method} {path} {status}: {e}"))
}

/// Checks `value` against `schema`, resolving `$ref`s in `document`.
pub fn check(document: &Value, schema: &Value, value: &Value) -> Result<(), String> {
    check_at(document, schema, value, "$")
}

fn check_at(document: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let Some(schema) = schema.as_object() else {
        return Err(format!("{at}: the schema is not an object"));
    };
    for (keyword, rule) in schema {
        let fail = |what: String| Err(format!("{at}: {what} (value {value})"));
        match keyword.as_str() {
            "$ref" => {
                let name = rule
                    .as_str()
                    .and_then(|r| r.strip_prefix("#/components/schemas/"))
                    .ok_or_else(|| format!("{at}: unsupported $ref {rule}"))?;
                check_at(
                    document,
                    &document["components"]["schemas"][name],
                    value,
                    at,
                )?;
            }
            "allOf" => {
                for part in rule.as_array().into_iter().flatten() {
                    check_at(document, part, value, at)?;
                }
            }
            "type" => {
                let allowed: Vec<&str> = match rule {
                    Value::String(one) => vec![one.as_str()],
                    Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
                    _ => return fail(format!("bad type {rule}")),
                };
                let actual = match value {
                    Value::Null => "null",
                    Value::Bool(_) => "boolean",
                    Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                    Value::Number(_) => "number",
                    Value::String(_) => "string",
                    Value::Array(_) => "array",
                    Value::Object(_) => "object",
                };
                let integer_as_number = actual == "integer" && allowed.contains(&"number");
                if !(allowed.contains(&actual) || integer_as_number) {
                    return fail(format!("is {actual}, not {allowed:?}"));
                }
            }
            "required" => {
                for name in rule
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                {
                    if value.is_object() && value.get(name).is_none() {
                        return fail(format!("misses required {name}"));
                    }
                }
            }
            "properties" => {
                let Some(object) = value.as_object() else {
                    continue;
                };
                for (name, property) in rule.as_object().into_iter().flatten() {
                    if let Some(member) = object.get(name) {
                        check_at(document, property, member, &format!("{at}.{name}"))?;
                    }
                }
            }
            "additionalProperties" => {
                if rule != false {
                    return fail(format!("unsupported additionalProperties {rule}"));
                }
                let declared = schema.get("properties").and_then(Value::as_object);
                for name in value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, _)| name)
                {
                    if !declared.is_some_and(|declared| declared.contains_key(name)) {
                        return fail(format!("has undocumented member {name}"));
                    }
                }
            }
            "items" => {
                for (index, item) in value.as_array().into_iter().flatten().enumerate() {
                    check_at(document, rule, item, &format!("{at}[{index}]"))?;
                }
            }
            "enum" => {
                if !rule.as_array().is_some_and(|values| values.contains(value)) {
                    return fail(format!("is not one of {rule}"));
                }
            }
            "const" => {
                if rule != value {
                    return fail(format!("is not {rule}"));
                }
            }
            "minimum" | "maximum" => {
                let (Some(bound), Some(number)) = (rule.as_f64(), value.as_f64()) else {
                    continue;
                };
                let within = if keyword == "minimum" {
                    number >= bound
                } else {
                    number <= bound
                };
                if !within {
                    return fail(format!("breaks {keyword} {bound}"));
                }
            }
            "minLength" | "maxLength" | "minItems" => {
                let length = match value {
                    Value::String(text) => text.chars().count(),
                    Value::Array(items) => items.len(),
                    _ => continue,
                };
                let bound = rule.as_u64().unwrap_or_default() as usize;
                let within = if keyword == "maxLength" {
                    length <= bound
                } else {
                    length >= bound
                };
                if !within {
                    return fail(format!("breaks {keyword} {bound}"));
                }
            }
            "format" => {
                let Some(text) = value.as_str() else {
                    continue;
                };
                let valid = match rule.as_str() {
                    Some("uuid") => text.len() == 36 && uuid::Uuid::try_parse(text).is_ok(),
                    Some("date-time") => is_rfc3339(text),
                    Some("int32" | "int64" | "uri-reference") => true,
                    _ => return fail(format!("unsupported format {rule}")),
                };
                if !valid {
                    return fail(format!("is not a {rule}"));
                }
            }
            "pattern" => {
                // No regex engine in the tests' dependencies: the fuzzer checks patterns.
            }
            "description" | "default" | "title" | "example" | "examples" => {}
            _ => return fail(format!("unsupported keyword {keyword}")),
        }
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, by shape.
fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        bytes
            .get(range)
            .is_some_and(|b| b.iter().all(u8::is_ascii_digit))
    };
    let shaped = bytes.len() >= 20
        && digits(0..4)
        && bytes[4] == b'-'
        && digits(5..7)
        && bytes[7] == b'-'
        && digits(8..10)
        && matches!(bytes[10], b'T' | b't')
        && digits(11..13)
        && bytes[13] == b':'
        && digits(14..16)
        && bytes[16] == b':'
        && digits(17..19);
    let mut rest = &text[19.min(text.len())..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &fraction[digits..];
    }
    shaped
        && (rest == "Z"
            || rest == "z"
            || (rest.len() == 6
                && matches!(rest.as_bytes()[0], b'+' | b'-')
                && rest.as_bytes()[3] == b':'))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_checker_refuses_what_it_should() {
        let document = json!({"components": {"schemas": {"Thing": {
            "type": "object",
            "required": ["id", "n"],
            "additionalProperties": false,
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "n": {"type": "integer", "minimum": 1},
                "at": {"type": ["string", "null"], "format": "date-time"},
                "kind": {"type": "string", "enum": ["a", "b"]},
            },
        }}}});
        let schema = json!({"$ref": "#/components/schemas/Thing"});
        let id = "0190b6a0-abcd-7000-8000-00000000000f";
        let ok = json!({"id": id, "n": 1, "at": "2025-01-02T03:04:05.123456Z", "kind": "a"});
        assert_eq!(check(&document, &schema, &ok), Ok(()));
        assert_eq!(
            check(&document, &schema, &json!({"id": id, "n": 2, "at": null})),
            Ok(())
        );
        for bad in [
            json!({"id": id}),
            json!({"id": id, "n": 0}),
            json!({"id": id, "n": 1.5}),
            json!({"id": "x", "n": 1}),
            json!({"id": id, "n": 1, "extra": true}),
            json!({"id": id, "n": 1, "at": "yesterday"}),
            json!({"id": id, "n": 1, "kind": "c"}),
            json!([]),
        ] {
            assert!(check(&document, &schema, &bad).is_err(), "{bad}");
        }
        let unknown = json!({"type": "string", "oneOf": []});
        assert!(check(&document, &unknown, &json!("x")).is_err());
    }
}
