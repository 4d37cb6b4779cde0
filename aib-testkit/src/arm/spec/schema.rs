//! Swagger 2.0 schema objects checked against JSON values: `$ref` across files, `allOf`,
//! `type`, `enum` (`x-ms-enum`), `required`, `readOnly` and `x-ms-mutability`, `items`,
//! `additionalProperties`, `x-nullable`, `minimum`/`maximum`, `maxLength`/`minLength`.
//! Polymorphic schemas (a `discriminator`) accept properties their subtypes may add.

use super::{Doc, Specs};
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// Which side of an exchange a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Sent by the client: read-only properties are refused.
    Request,
    /// Answered by the server: read-only properties are expected.
    Response,
}

/// How a value is checked.
#[derive(Debug, Clone, Copy)]
pub(super) struct Mode {
    pub side: Side,
    /// Unknown properties (where `additionalProperties` is not given) and nulls are refused.
    pub strict: bool,
}

/// A schema as found: the object and the file its `$ref`s are relative to.
#[derive(Clone, Copy)]
pub(super) struct At<'a> {
    pub schema: &'a Value,
    pub doc: &'a Doc,
}

/// An object schema with its `allOf` parents folded in.
#[derive(Default)]
struct Folded<'a> {
    properties: Vec<(&'a str, At<'a>)>,
    required: BTreeSet<&'a str>,
    /// `None`: not said (unknown properties refused when strict); `Some(None)`: any value.
    additional: Option<Option<At<'a>>>,
    polymorphic: bool,
}

impl Specs {
    /// Follows `$ref`s until a schema that is not one.
    pub(super) fn deref<'a>(&'a self, mut at: At<'a>) -> Option<At<'a>> {
        for _ in 0..32 {
            let Some(r) = at.schema.get("$ref").and_then(Value::as_str) else { return Some(at) };
            at = self.resolve(at.doc, r)?;
        }
        None
    }

    fn fold<'a>(&'a self, at: At<'a>, into: &mut Folded<'a>, depth: usize) {
        let Some(at) = self.deref(at) else { return };
        if depth > 16 {
            return;
        }
        let s = at.schema;
        if let Some(props) = s.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                if !into.properties.iter().any(|(n, _)| n == k) {
                    into.properties.push((k, At { schema: v, doc: at.doc }));
                }
            }
        }
        for r in s.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            into.required.insert(r);
        }
        match s.get("additionalProperties") {
            Some(Value::Bool(true)) => into.additional = Some(None),
            Some(Value::Bool(false)) | None => {}
            Some(v) if v.as_object().is_some_and(Map::is_empty) => into.additional = Some(None),
            Some(v) => into.additional = Some(Some(At { schema: v, doc: at.doc })),
        }
        if s.get("discriminator").is_some() {
            into.polymorphic = true;
        }
        for parent in s.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.fold(At { schema: parent, doc: at.doc }, into, depth + 1);
        }
    }

    /// Checks `v` at JSON path `path` against `at`, pushing `(path, rule)` for each breach.
    pub(super) fn check(&self, at: At<'_>, v: &Value, path: &str, mode: Mode, out: &mut Vec<(String, String)>) {
        let Some(at) = self.deref(at) else {
            out.push((path.into(), "the spec's $ref does not resolve".into()));
            return;
        };
        let s = at.schema;
        if v.is_null() {
            if mode.side == Side::Request && mode.strict && s.get("x-nullable") != Some(&Value::Bool(true)) {
                out.push((path.into(), "null is not allowed here (the schema is not x-nullable)".into()));
            }
            return;
        }
        let mut folded = Folded::default();
        self.fold(at, &mut folded, 0);
        let ty = s.get("type").and_then(Value::as_str).or_else(|| {
            (!folded.properties.is_empty() || s.get("allOf").is_some() || s.get("additionalProperties").is_some()).then_some("object")
        });
        let ok = match ty {
            Some("object") => v.is_object(),
            Some("array") => v.is_array(),
            Some("string") => v.is_string(),
            Some("integer") => v.is_i64() || v.is_u64(),
            Some("number") => v.is_number(),
            Some("boolean") => v.is_boolean(),
            _ => true,
        };
        if !ok {
            out.push((path.into(), format!("must be of type {}, not {}", ty.unwrap_or("?"), kind(v))));
            return;
        }
        if let Some(allowed) = s.get("enum").and_then(Value::as_array) {
            let extensible = s["x-ms-enum"]["modelAsString"].as_bool().unwrap_or(false);
            let hit = allowed.iter().any(|a| match (a.as_str(), v.as_str()) {
                // ARM reads enums in any case; its answers spell them as the spec does.
                (Some(a), Some(b)) if mode.side == Side::Request => a.eq_ignore_ascii_case(b),
                _ => a == v,
            });
            // An extensible enum (`modelAsString`, VM sizes, regions) lists known values only.
            if !hit && !extensible {
                let names: Vec<String> = allowed.iter().take(12).map(|a| a.to_string()).collect();
                let more = if allowed.len() > 12 { format!(", … {} more", allowed.len() - 12) } else { String::new() };
                out.push((path.into(), format!("{v} is not one of the enum's values [{}{more}]", names.join(", "))));
            }
        }
        if let Some(n) = v.as_f64() {
            if s.get("minimum").and_then(Value::as_f64).is_some_and(|m| n < m) {
                out.push((path.into(), format!("{n} is below the minimum {}", s["minimum"])));
            }
            if s.get("maximum").and_then(Value::as_f64).is_some_and(|m| n > m) {
                out.push((path.into(), format!("{n} is above the maximum {}", s["maximum"])));
            }
        }
        if let Some(t) = v.as_str() {
            let len = t.chars().count() as u64;
            if s.get("maxLength").and_then(Value::as_u64).is_some_and(|m| len > m) {
                out.push((path.into(), format!("is longer than maxLength {}", s["maxLength"])));
            }
            if s.get("minLength").and_then(Value::as_u64).is_some_and(|m| len < m) {
                out.push((path.into(), format!("is shorter than minLength {}", s["minLength"])));
            }
        }
        if let (Some(items), Some(list)) = (s.get("items"), v.as_array()) {
            for (i, item) in list.iter().enumerate() {
                self.check(At { schema: items, doc: at.doc }, item, &format!("{path}[{i}]"), mode, out);
            }
        }
        let Some(obj) = v.as_object() else { return };
        for r in &folded.required {
            let read_only = folded.properties.iter().find(|(n, _)| n == r).is_some_and(|(_, p)| self.read_only(*p));
            let exempt = mode.side == Side::Request && read_only;
            if !(obj.contains_key(*r) || exempt) {
                out.push((format!("{path}.{r}"), "is required".into()));
            }
        }
        for (k, item) in obj {
            let p = format!("{path}.{k}");
            match folded.properties.iter().find(|(n, _)| n == k) {
                Some((_, prop)) => {
                    if mode.side == Side::Request && self.read_only(*prop) {
                        out.push((p.clone(), "is read-only and must not be sent".into()));
                    }
                    self.check(*prop, item, &p, mode, out);
                }
                None => match folded.additional {
                    Some(Some(extra)) => self.check(extra, item, &p, mode, out),
                    Some(None) => {}
                    // An object schema that declares no properties is free-form.
                    None if folded.polymorphic || !mode.strict || folded.properties.is_empty() => {}
                    None => out.push((p, "is not a property of the schema (additionalProperties is not allowed)".into())),
                },
            }
        }
    }

    fn read_only(&self, at: At<'_>) -> bool {
        let direct = |s: &Value| {
            s.get("readOnly") == Some(&Value::Bool(true))
                || s.get("x-ms-mutability").and_then(Value::as_array).is_some_and(|m| m.len() == 1 && m[0] == "read")
        };
        direct(at.schema) || self.deref(at).is_some_and(|d| direct(d.schema))
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
