//! A `validate` hook: values must be JSON objects with a numeric `"id"` and
//! a string `"name"`; deletes are always allowed. The Rust port of
//! `scripts/validate_json.lua`, with the same decisions and the same reject
//! reasons (serde_json parses in both, so even its error messages match).
//!
//! ```text
//! ringkv hook deploy --kind wasm --stage validate --name json-records --prefix users/ \
//!     --file target/wasm32-unknown-unknown/release/validate_json.wasm
//! ```

use ringkv_guest::{validate, Ctx};
use serde_json::Value;

/// The fields every value must have, and the kind each must be.
const REQUIRED: [(&str, &str); 2] = [("id", "number"), ("name", "string")];

#[validate]
fn validate_json(_key: &[u8], value: &[u8], ctx: &Ctx) -> Result<(), String> {
    if ctx.is_delete() {
        return Ok(());
    }
    let doc: Value = serde_json::from_slice(value).map_err(|e| {
        let message = e.to_string();
        format!("value is not JSON ({})", message.lines().next().unwrap_or_default())
    })?;
    let kind = kind_of(&doc, value);
    if kind != "object" {
        let article = match kind {
            "null" => "",
            "array" => "an ",
            _ => "a ",
        };
        return Err(format!("value is not a JSON object (it is {article}{kind})"));
    }
    for (field, want) in REQUIRED {
        let Some(v) = doc.get(field) else {
            return Err(format!("missing field \"{field}\""));
        };
        let got = kind_of(v, b"");
        if got != want {
            return Err(format!("field \"{field}\" must be a {want}, not {got}"));
        }
    }
    Ok(())
}

/// How a decoded value is called in messages, exactly as the Lua script's
/// `kind_of`: Lua decodes objects and arrays alike into tables and tells
/// them apart by whether `source` starts with `[` after whitespace, so a
/// nested array (checked with an empty source) is called an "object" there,
/// and here too.
fn kind_of(v: &Value, source: &[u8]) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) | Value::Object(_) => {
            // Lua's %s: space, \t, \n, \v, \f, \r.
            let first = source.iter().find(|b| !matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'));
            if first == Some(&b'[') {
                "array"
            } else {
                "object"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_guest::Op;

    fn put(value: &str) -> Result<(), String> {
        validate_json(b"users/1", value.as_bytes(), &Ctx::new(Op::Put, 0, None))
    }

    #[test]
    fn accepts_objects_with_a_numeric_id_and_a_string_name() {
        assert_eq!(put(r#"{"id": 7, "name": "ada"}"#), Ok(()));
        assert_eq!(put(r#" {"id": 1.5, "name": "", "extra": [1]} "#), Ok(()));
    }

    #[test]
    fn deletes_are_always_accepted() {
        assert_eq!(validate_json(b"users/1", b"", &Ctx::new(Op::Delete, 0, None)), Ok(()));
    }

    #[test]
    fn rejects_what_is_not_json_with_the_parsers_message() {
        assert_eq!(put("hello"), Err("value is not JSON (expected value at line 1 column 1)".into()));
        assert_eq!(put("not json"), Err("value is not JSON (expected ident at line 1 column 2)".into()));
        assert_eq!(
            put(r#"{"id": 1"#),
            Err("value is not JSON (EOF while parsing an object at line 1 column 8)".into())
        );
        assert_eq!(put(""), Err("value is not JSON (EOF while parsing a value at line 1 column 0)".into()));
        assert_eq!(put("{} x"), Err("value is not JSON (trailing characters at line 1 column 4)".into()));
    }

    #[test]
    fn rejects_json_that_is_not_an_object_naming_its_kind() {
        let not_object = |kind: &str| Err(format!("value is not a JSON object (it is {kind})"));
        assert_eq!(put("[1, 2]"), not_object("an array"));
        assert_eq!(put(" \n[]"), not_object("an array"));
        assert_eq!(put("\"text\""), not_object("a string"));
        assert_eq!(put("null"), not_object("null"));
        assert_eq!(put("12"), not_object("a number"));
        assert_eq!(put("true"), not_object("a boolean"));
    }

    #[test]
    fn rejects_missing_fields_id_first() {
        assert_eq!(put("{}"), Err(r#"missing field "id""#.into()));
        assert_eq!(put(r#"{"name": "x"}"#), Err(r#"missing field "id""#.into()));
        assert_eq!(put(r#"{"id": 1}"#), Err(r#"missing field "name""#.into()));
    }

    #[test]
    fn rejects_fields_of_the_wrong_kind_naming_it_as_lua_does() {
        let wrong = |field: &str, want: &str, got: &str| Err(format!("field \"{field}\" must be a {want}, not {got}"));
        assert_eq!(put(r#"{"id": "7", "name": "x"}"#), wrong("id", "number", "string"));
        assert_eq!(put(r#"{"id": null, "name": "x"}"#), wrong("id", "number", "null"));
        assert_eq!(put(r#"{"id": true, "name": "x"}"#), wrong("id", "number", "boolean"));
        assert_eq!(put(r#"{"id": {}, "name": "x"}"#), wrong("id", "number", "object"));
        // The Lua script calls a nested array an object (see kind_of).
        assert_eq!(put(r#"{"id": [1], "name": "x"}"#), wrong("id", "number", "object"));
        assert_eq!(put(r#"{"id": 1, "name": 2}"#), wrong("name", "string", "number"));
    }
}
