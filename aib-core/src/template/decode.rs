//! A small decoder over `serde_json::Value` that knows JSON paths, the service's strictness
//! rules and ARM expressions. The model parser (`parse.rs`) is written with it.

use super::diag::{Code, Diagnostic};
use super::model::{Expr, StringMap};
use serde_json::{Map, Value};
use std::fmt;

/// An `apiVersion` such as `2025-10-01` or `2019-05-01-preview`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiVersion {
    /// Year, month, day.
    pub date: (u16, u8, u8),
    /// True for `-preview` versions.
    pub preview: bool,
}

impl ApiVersion {
    /// The newest version aib models.
    pub const LATEST: ApiVersion = ApiVersion::new(2025, 10, 1);
    /// From this version on the service is strict: exact case, unknown fields rejected.
    pub const STRICT_SINCE: ApiVersion = ApiVersion::new(2024, 2, 1);

    /// A stable version.
    pub const fn new(y: u16, m: u8, d: u8) -> Self {
        ApiVersion { date: (y, m, d), preview: false }
    }

    /// Parses `YYYY-MM-DD` with an optional `-preview` suffix.
    pub fn parse(s: &str) -> Option<Self> {
        let (date, preview) = match s.strip_suffix("-preview") {
            Some(d) => (d, true),
            None => (s, false),
        };
        let mut parts = date.split('-');
        let y = parts.next()?.parse().ok()?;
        let m: u8 = parts.next()?.parse().ok()?;
        let d: u8 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return None;
        }
        Some(ApiVersion { date: (y, m, d), preview })
    }

    /// True when the service parses this version strictly.
    pub fn is_strict(&self) -> bool {
        *self >= Self::STRICT_SINCE
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.date;
        write!(f, "{y:04}-{m:02}-{d:02}")?;
        if self.preview {
            f.write_str("-preview")?;
        }
        Ok(())
    }
}

/// True for an ARM template expression: `[...]` but not the `[[` escape.
pub fn is_arm_expression(s: &str) -> bool {
    let t = s.trim();
    t.starts_with('[') && !t.starts_with("[[") && t.ends_with(']')
}

/// The first shell-style placeholder in `s` (`<region>`, `{subscription-id}`), if any.
pub fn placeholder(s: &str) -> Option<&str> {
    for (open, close) in [('<', '>'), ('{', '}')] {
        let mut rest = s;
        while let Some(i) = rest.find(open) {
            let after = &rest[i + 1..];
            let Some(j) = after.find(close) else { break };
            let inner = &after[..j];
            if !inner.is_empty() && inner.len() <= 64 && inner.chars().all(|c| c.is_ascii_alphanumeric() || "-_ .".contains(c)) {
                return Some(&rest[i..i + j + 2]);
            }
            rest = after;
        }
    }
    None
}

/// Decoding state: the diagnostics so far, the API version and strictness.
#[derive(Debug)]
pub(crate) struct Cx {
    pub(crate) diags: Vec<Diagnostic>,
    pub(crate) api: Option<ApiVersion>,
    pub(crate) strict: bool,
}

impl Cx {
    pub(crate) fn new(api: Option<ApiVersion>, strict: bool) -> Self {
        Cx { diags: Vec::new(), api, strict }
    }

    pub(crate) fn error(&mut self, path: &str, code: Code, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::error(path, code, msg).with_hint(hint));
    }

    pub(crate) fn warn(&mut self, path: &str, code: Code, msg: impl Into<String>, hint: impl Into<String>) {
        self.diags.push(Diagnostic::warning(path, code, msg).with_hint(hint));
    }

    /// An error in strict mode, a warning otherwise.
    pub(crate) fn strict_or_warn(&mut self, path: &str, code: Code, msg: String, hint: String) {
        if self.strict {
            self.error(path, code, msg, hint);
        } else {
            self.warn(path, code, msg, hint);
        }
    }

    fn wrong_type(&mut self, path: &str, want: &str, got: &Value) {
        self.error(path, Code::WrongType, format!("expected {want}, found {}", json_type(got)), format!("write {want} here"));
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_string() } else { format!("{path}.{key}") }
}

pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// A JSON object being decoded: fields are taken by name, and whatever is left at
/// [`Obj::finish`] is reported as unknown.
pub(crate) struct Obj<'v> {
    map: &'v Map<String, Value>,
    path: String,
    used: Vec<bool>,
    known: Vec<&'static str>,
}

impl<'v> Obj<'v> {
    /// `v` as an object, or a `WrongType` error.
    pub(crate) fn new(cx: &mut Cx, v: &'v Value, path: &str) -> Option<Self> {
        match v {
            Value::Object(map) => Some(Obj { map, path: path.to_string(), used: vec![false; map.len()], known: Vec::new() }),
            other => {
                cx.wrong_type(path, "an object", other);
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &str {
        &self.path
    }

    /// Takes field `key`: exact match, or (lenient mode) a case-insensitive one with a
    /// warning. `null` counts as absent.
    pub(crate) fn take(&mut self, cx: &mut Cx, key: &'static str) -> Option<(&'v Value, String)> {
        self.known.push(key);
        let path = join(&self.path, key);
        let mut found = None;
        for (i, (k, v)) in self.map.iter().enumerate() {
            if k == key {
                found = Some((i, v, false));
                break;
            }
            if found.is_none() && k.eq_ignore_ascii_case(key) {
                found = Some((i, v, true));
            }
        }
        let (i, v, case) = found?;
        self.used[i] = true;
        if case {
            let actual = self.map.keys().nth(i).cloned().unwrap_or_default();
            let at = join(&self.path, &actual);
            if cx.strict {
                // Reported once, here; the value is still read so nothing else cascades.
                cx.error(
                    &at,
                    Code::FieldCase,
                    format!("field `{actual}` is spelled `{key}`; field names are case-sensitive"),
                    format!("rename `{actual}` to `{key}`"),
                );
            } else {
                cx.warn(
                    &at,
                    Code::FieldCase,
                    format!("field `{actual}` should be spelled `{key}`"),
                    "API versions from 2024-02-01 on reject it; fix the case",
                );
            }
        }
        if v.is_null() { None } else { Some((v, path)) }
    }

    /// Like [`Obj::take`], for a field added in API version `since`.
    pub(crate) fn take_since(&mut self, cx: &mut Cx, key: &'static str, since: ApiVersion) -> Option<(&'v Value, String)> {
        let (v, path) = self.take(cx, key)?;
        if let Some(api) = cx.api
            && api < since
        {
            cx.strict_or_warn(
                &path,
                Code::FieldTooNew,
                format!("`{key}` needs apiVersion {since} or newer; the document declares {api}"),
                format!("set apiVersion to {since} or newer, or remove `{key}`"),
            );
        }
        Some((v, path))
    }

    /// Marks a read-only field as accepted (it is ignored on input).
    pub(crate) fn read_only(&mut self, cx: &mut Cx, key: &'static str) {
        let _ = self.take(cx, key);
    }

    pub(crate) fn str(&mut self, cx: &mut Cx, key: &'static str) -> Option<String> {
        let (v, path) = self.take(cx, key)?;
        string(cx, v, &path)
    }

    pub(crate) fn str_since(&mut self, cx: &mut Cx, key: &'static str, since: ApiVersion) -> Option<String> {
        let (v, path) = self.take_since(cx, key, since)?;
        string(cx, v, &path)
    }

    /// A required string: `MissingField` (or `code`) when absent.
    pub(crate) fn req_str(&mut self, cx: &mut Cx, key: &'static str, code: Code, hint: &str) -> String {
        match self.take(cx, key) {
            Some((v, path)) => string(cx, v, &path).unwrap_or_default(),
            None => {
                cx.error(&join(&self.path, key), code, format!("`{key}` is required"), hint.to_string());
                String::new()
            }
        }
    }

    pub(crate) fn bool(&mut self, cx: &mut Cx, key: &'static str) -> Option<Expr<bool>> {
        let (v, path) = self.take(cx, key)?;
        expr(cx, v, &path, "a boolean", |cx, v| {
            v.as_bool().or_else(|| {
                let s = v.as_str()?.trim();
                let b = if s.eq_ignore_ascii_case("true") {
                    true
                } else if s.eq_ignore_ascii_case("false") {
                    false
                } else {
                    return None;
                };
                coerced(cx, &path, s, &b.to_string()).then_some(b)
            })
        })
    }

    pub(crate) fn int(&mut self, cx: &mut Cx, key: &'static str) -> Option<Expr<i32>> {
        let (v, path) = self.take(cx, key)?;
        int(cx, v, &path)
    }

    pub(crate) fn str_array(&mut self, cx: &mut Cx, key: &'static str) -> Option<Expr<Vec<String>>> {
        let (v, path) = self.take(cx, key)?;
        str_array(cx, v, &path)
    }

    pub(crate) fn str_map(&mut self, cx: &mut Cx, key: &'static str) -> Option<Expr<StringMap>> {
        let (v, path) = self.take(cx, key)?;
        str_map(cx, v, &path)
    }

    /// An array of objects, each decoded by `f`; elements that fail are dropped (their
    /// diagnostics stay).
    pub(crate) fn array<T>(
        &mut self,
        cx: &mut Cx,
        key: &'static str,
        f: impl FnMut(&mut Cx, &'v Value, &str) -> Option<T>,
    ) -> Option<Vec<T>> {
        let (v, path) = self.take(cx, key)?;
        array(cx, v, &path, f)
    }

    /// Reports every field not taken: an error in strict mode, a warning otherwise.
    pub(crate) fn finish(self, cx: &mut Cx) {
        for (i, key) in self.map.keys().enumerate() {
            if self.used[i] {
                continue;
            }
            let path = join(&self.path, key);
            if let Some(k) = self.known.iter().find(|k| k.eq_ignore_ascii_case(key)) {
                cx.error(
                    &path,
                    Code::FieldCase,
                    format!("field `{key}` is spelled `{k}`; field names are case-sensitive"),
                    format!("rename `{key}` to `{k}`"),
                );
                continue;
            }
            let mut hint = "remove the field, or check its spelling against the API reference".to_string();
            if let Some(k) = self.known.iter().find(|k| similar(k, key)) {
                hint = format!("did you mean `{k}`?");
            }
            let msg = format!("unknown field `{key}`");
            if cx.strict {
                cx.error(&path, Code::UnknownField, msg, hint);
            } else {
                cx.warn(&path, Code::UnknownField, format!("{msg} (ignored by apiVersion before 2024-02-01)"), hint);
            }
        }
    }
}

/// Two field names that differ by one edit or a swap of neighbours.
fn similar(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.to_lowercase().chars().collect(), b.to_lowercase().chars().collect());
    if a.len().abs_diff(b.len()) > 1 {
        return false;
    }
    if a.len() == b.len() {
        let diffs: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        return match diffs.as_slice() {
            [_] => true,
            [i, j] => *j == i + 1 && a[*i] == b[*j] && a[*j] == b[*i],
            _ => false,
        };
    }
    let (short, long) = if a.len() < b.len() { (&a, &b) } else { (&b, &a) };
    let mut skipped = false;
    let (mut i, mut j) = (0, 0);
    while i < short.len() && j < long.len() {
        if short[i] == long[j] {
            i += 1;
            j += 1;
        } else if skipped {
            return false;
        } else {
            skipped = true;
            j += 1;
        }
    }
    true
}

/// A string value; ARM expressions and placeholders are noted as warnings.
pub(crate) fn string(cx: &mut Cx, v: &Value, path: &str) -> Option<String> {
    match v {
        Value::String(s) => {
            if is_arm_expression(s) {
                cx.warn(
                    path,
                    Code::ArmExpression,
                    format!("ARM expression `{s}` kept unevaluated"),
                    "deploy through ARM, or put the value itself here before a build",
                );
            } else if let Some(p) = placeholder(s) {
                cx.warn(
                    path,
                    Code::Placeholder,
                    format!("placeholder `{p}` must be replaced before a build"),
                    "substitute the real value (for example with sed) before building",
                );
            }
            Some(s.clone())
        }
        other => {
            cx.wrong_type(path, "a string", other);
            None
        }
    }
}

/// A value of type T, or an ARM expression in its place.
pub(crate) fn expr<T>(cx: &mut Cx, v: &Value, path: &str, want: &str, f: impl FnOnce(&mut Cx, &Value) -> Option<T>) -> Option<Expr<T>> {
    if let Value::String(s) = v
        && is_arm_expression(s)
    {
        cx.warn(
            path,
            Code::ArmExpression,
            format!("ARM expression `{s}` stands for {want}; kept unevaluated"),
            "deploy through ARM, or put the value itself here before a build",
        );
        return Some(Expr::Expression(s.clone()));
    }
    match f(cx, v) {
        Some(t) => Some(Expr::Value(t)),
        None => {
            if !cx.diags.last().is_some_and(|d| d.path.starts_with(path)) {
                cx.wrong_type(path, want, v);
            }
            None
        }
    }
}

pub(crate) fn int(cx: &mut Cx, v: &Value, path: &str) -> Option<Expr<i32>> {
    expr(cx, v, path, "an int32 number", |cx, v| {
        let n = match v.as_i64().or_else(|| v.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 1e15).map(|f| f as i64)) {
            Some(n) => n,
            None => {
                let s = v.as_str()?.trim();
                let n: i64 = s.parse().ok()?;
                if !coerced(cx, path, s, &n.to_string()) {
                    return None;
                }
                n
            }
        };
        match i32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                cx.error(
                    path,
                    Code::OutOfRange,
                    format!("{n} does not fit in an int32"),
                    "use a number between -2147483648 and 2147483647",
                );
                None
            }
        }
    })
}

/// A scalar written as the string `s`: lenient API versions coerce it as the service's JSON
/// reader does (a warning naming the path); strict ones refuse it (false: the caller reports
/// the wrong type).
fn coerced(cx: &mut Cx, path: &str, s: &str, value: &str) -> bool {
    if cx.strict {
        return false;
    }
    let version = cx.api.map_or_else(|| "no apiVersion".to_string(), |a| format!("apiVersion {a}"));
    cx.warn(
        path,
        Code::StringScalar,
        format!("\"{s}\" is a string; the service reads it as {value} at {version}, and refuses it from {}", ApiVersion::STRICT_SINCE),
        format!("write {value} without quotes"),
    );
    true
}

pub(crate) fn str_array(cx: &mut Cx, v: &Value, path: &str) -> Option<Expr<Vec<String>>> {
    expr(cx, v, path, "an array of strings", |cx, v| {
        let items = v.as_array()?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item {
                Value::String(s) => out.push(s.clone()),
                other => cx.wrong_type(&index(path, i), "a string", other),
            }
        }
        Some(out)
    })
}

pub(crate) fn str_map(cx: &mut Cx, v: &Value, path: &str) -> Option<Expr<StringMap>> {
    expr(cx, v, path, "an object of strings", |cx, v| {
        let map = v.as_object()?;
        let mut out = StringMap::new();
        for (k, item) in map {
            match item {
                Value::String(s) => {
                    out.insert(k.clone(), s.clone());
                }
                other => cx.wrong_type(&join(path, k), "a string", other),
            }
        }
        Some(out)
    })
}

pub(crate) fn array<'v, T>(
    cx: &mut Cx,
    v: &'v Value,
    path: &str,
    mut f: impl FnMut(&mut Cx, &'v Value, &str) -> Option<T>,
) -> Option<Vec<T>> {
    match v {
        Value::Array(items) => Some(items.iter().enumerate().filter_map(|(i, item)| f(cx, item, &index(path, i))).collect()),
        Value::String(s) if is_arm_expression(s) => {
            cx.error(
                path,
                Code::ArmExpression,
                format!("ARM expression `{s}` cannot stand for this array of objects"),
                "write the array itself",
            );
            None
        }
        other => {
            cx.wrong_type(path, "an array", other);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_versions_order_and_strictness() {
        let old = ApiVersion::parse("2019-05-01-preview").unwrap();
        let v = ApiVersion::parse("2024-02-01").unwrap();
        assert!(old < v && !old.is_strict() && v.is_strict());
        assert_eq!(ApiVersion::LATEST.to_string(), "2025-10-01");
        assert!(ApiVersion::parse("2024-13-01").is_none());
        assert!(ApiVersion::parse("[parameters('v')]").is_none());
    }

    #[test]
    fn expressions_and_placeholders() {
        assert!(is_arm_expression("[parameters('x')]"));
        assert!(!is_arm_expression("[[literal]"));
        assert_eq!(placeholder("/subscriptions/<subID>/x"), Some("<subID>"));
        assert_eq!(placeholder("{subscription-id}"), Some("{subscription-id}"));
        assert_eq!(placeholder("echo a > b"), None);
    }

    #[test]
    fn similar_names() {
        assert!(similar("artifactTags", "aritfactTags"));
        assert!(similar("inline", "inlin"));
        assert!(!similar("inline", "scriptUri"));
    }
}
