//! ARM template expressions: the language inside `"[...]"` strings, and the template
//! functions image templates use. A function aib does not evaluate (`reference`, `list*`,
//! `guid`, user-defined functions…) is an error naming it, never a guessed value.

use serde_json::{Map, Value, json};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ast {
    Str(String),
    Int(i64),
    Call(String, Vec<Ast>),
    Prop(Box<Ast>, String),
    Index(Box<Ast>, Box<Ast>),
}

/// Parses the inside of `[...]`.
pub(crate) fn parse(src: &str) -> Result<Ast, String> {
    let mut p = Parser { s: src.as_bytes(), i: 0 };
    let e = p.expr()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected `{}` at offset {}", &src[p.i..], p.i));
    }
    Ok(e)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        self.ws();
        let start = self.i;
        while self.i < self.s.len() && (self.s[self.i].is_ascii_alphanumeric() || self.s[self.i] == b'_') {
            self.i += 1;
        }
        (self.i > start && !self.s[start].is_ascii_digit()).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn expr(&mut self) -> Result<Ast, String> {
        self.ws();
        let mut e = match self.s.get(self.i) {
            Some(b'\'') => Ast::Str(self.string()?),
            Some(c) if c.is_ascii_digit() || *c == b'-' => self.number()?,
            Some(_) => {
                let name = self.ident().ok_or_else(|| format!("expected a function, a 'string' or a number at offset {}", self.i))?;
                if self.eat(b'.')
                    && let Some(member) = self.ident()
                    && self.s.get(self.i) == Some(&b'(')
                {
                    return Err(format!("user-defined function `{name}.{member}` is not evaluated by aib"));
                }
                if !self.eat(b'(') {
                    return Err(format!("`{name}` is not a function call (expected `{name}(`)"));
                }
                let mut args = Vec::new();
                if !self.eat(b')') {
                    loop {
                        args.push(self.expr()?);
                        if self.eat(b')') {
                            break;
                        }
                        if !self.eat(b',') {
                            return Err(format!("expected `,` or `)` in the arguments of `{name}` at offset {}", self.i));
                        }
                    }
                }
                Ast::Call(name, args)
            }
            None => return Err("the expression is empty".into()),
        };
        loop {
            if self.eat(b'.') {
                let p = self.ident().ok_or_else(|| format!("expected a property name after `.` at offset {}", self.i))?;
                e = Ast::Prop(Box::new(e), p);
            } else if self.eat(b'[') {
                let idx = self.expr()?;
                if !self.eat(b']') {
                    return Err(format!("expected `]` at offset {}", self.i));
                }
                e = Ast::Index(Box::new(e), Box::new(idx));
            } else {
                return Ok(e);
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return Err("a 'string' is not closed".into()),
                Some(b'\'') if self.s.get(self.i + 1) == Some(&b'\'') => {
                    out.push(b'\'');
                    self.i += 2;
                }
                Some(b'\'') => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(c) => {
                    out.push(*c);
                    self.i += 1;
                }
            }
        }
    }

    fn number(&mut self) -> Result<Ast, String> {
        let start = self.i;
        if self.s[self.i] == b'-' {
            self.i += 1;
        }
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
        text.parse().map(Ast::Int).map_err(|_| format!("`{text}` is not an integer"))
    }
}

/// What expressions can see.
pub(crate) trait Scope {
    fn parameter(&self, name: &str) -> Result<Value, String>;
    fn variable(&self, name: &str) -> Result<Value, String>;
    fn subscription(&self) -> Result<Value, String>;
    fn resource_group(&self) -> Result<Value, String>;
    fn copy_index(&self, loop_name: Option<&str>) -> Result<i64, String>;
    /// `utcNow()`: only parameter defaults may call it.
    fn utc_now(&self) -> Result<String, String>;
}

fn s(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| format!("expected a string, found {}", short(v)))
}

fn i(v: &Value) -> Result<i64, String> {
    v.as_i64().ok_or_else(|| format!("expected an integer, found {}", short(v)))
}

fn b(v: &Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("expected a boolean, found {}", short(v)))
}

fn short(v: &Value) -> String {
    let t = v.to_string();
    if t.len() > 60 { format!("{}…", &t[..t.char_indices().nth(57).map_or(t.len(), |(i, _)| i)]) } else { t }
}

/// `string()` as ARM renders values: strings as they are, the rest as compact JSON, with
/// booleans as .NET prints them.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn arity(name: &str, args: &[Ast], min: usize, max: usize) -> Result<(), String> {
    if args.len() < min || args.len() > max {
        let want = if min == max {
            format!("{min}")
        } else if max == usize::MAX {
            format!("at least {min}")
        } else {
            format!("{min} to {max}")
        };
        return Err(format!("`{name}` takes {want} argument(s), given {}", args.len()));
    }
    Ok(())
}

/// Functions that need the deployed world, or whose value aib cannot reproduce exactly.
const NOT_EVALUATED: &[&str] = &[
    "reference",
    "list",
    "listKeys",
    "listSecrets",
    "listAccountSas",
    "pickZones",
    "providers",
    "environment",
    "deployment",
    "tenant",
    "managementGroup",
    "managementGroupResourceId",
    "tenantResourceId",
    "extensionResourceId",
    // ARM's own hashes: aib has no reference to check a reimplementation against.
    "guid",
    "uniqueString",
    "newGuid",
    "dateTimeAdd",
];

/// Evaluates `e` in `scope`.
pub(crate) fn eval(e: &Ast, scope: &dyn Scope) -> Result<Value, String> {
    match e {
        Ast::Str(s) => Ok(Value::String(s.clone())),
        Ast::Int(n) => Ok(json!(n)),
        Ast::Prop(inner, p) => {
            let v = eval(inner, scope)?;
            let found = v.as_object().and_then(|m| m.get(p).or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(p)).map(|(_, v)| v)));
            found.cloned().ok_or_else(|| format!("no property `{p}` in {}", short(&v)))
        }
        Ast::Index(inner, idx) => {
            let (v, k) = (eval(inner, scope)?, eval(idx, scope)?);
            match (&v, &k) {
                (Value::Array(a), Value::Number(_)) => {
                    let n = i(&k)?;
                    usize::try_from(n)
                        .ok()
                        .and_then(|n| a.get(n))
                        .cloned()
                        .ok_or_else(|| format!("index {n} is outside an array of {}", a.len()))
                }
                (Value::Object(m), Value::String(key)) => {
                    m.get(key).cloned().ok_or_else(|| format!("no property `{key}` in {}", short(&v)))
                }
                _ => Err(format!("cannot index {} with {}", short(&v), short(&k))),
            }
        }
        Ast::Call(name, args) => call(name, args, scope),
    }
}

fn call(name: &str, args: &[Ast], scope: &dyn Scope) -> Result<Value, String> {
    let lower = name.to_ascii_lowercase();
    // Lazy ones first: `if` evaluates only the branch it takes.
    if lower == "if" {
        arity(name, args, 3, 3)?;
        let c = b(&eval(&args[0], scope)?)?;
        return eval(&args[if c { 1 } else { 2 }], scope);
    }
    if ["guid", "uniquestring"].contains(&lower.as_str()) {
        return Err(format!("`{name}()` is ARM's own hash, which aib does not reproduce; pass its value as a parameter"));
    }
    if NOT_EVALUATED.iter().any(|f| f.eq_ignore_ascii_case(name)) || lower.starts_with("list") {
        return Err(format!(
            "`{name}()` is not evaluated by aib (its value comes from the deployment in Azure); pass the value as a parameter"
        ));
    }
    let a: Vec<Value> = args.iter().map(|x| eval(x, scope)).collect::<Result<_, _>>()?;
    let n = |min, max| arity(name, args, min, max);
    Ok(match lower.as_str() {
        "parameters" => {
            n(1, 1)?;
            scope.parameter(s(&a[0])?)?
        }
        "variables" => {
            n(1, 1)?;
            scope.variable(s(&a[0])?)?
        }
        "subscription" => {
            n(0, 0)?;
            scope.subscription()?
        }
        "resourcegroup" => {
            n(0, 0)?;
            scope.resource_group()?
        }
        "copyindex" => {
            n(0, 2)?;
            let (name, offset) = match a.as_slice() {
                [] => (None, 0),
                [Value::String(l)] => (Some(l.as_str()), 0),
                [o] => (None, i(o)?),
                [l, o] => (Some(s(l)?), i(o)?),
                _ => unreachable!("arity checked"),
            };
            json!(scope.copy_index(name)? + offset)
        }
        "utcnow" => {
            n(0, 1)?;
            if !a.is_empty() {
                return Err("`utcNow` with a format is not evaluated by aib; use utcNow() or pass the value".into());
            }
            Value::String(scope.utc_now()?)
        }
        "true" => json!(true),
        "false" => json!(false),
        "null" => Value::Null,
        "concat" => {
            n(1, usize::MAX)?;
            if a.iter().all(Value::is_array) {
                Value::Array(a.iter().flat_map(|x| x.as_array().cloned().unwrap_or_default()).collect())
            } else {
                Value::String(a.iter().map(text).collect())
            }
        }
        "format" => {
            n(1, usize::MAX)?;
            Value::String(format_net(s(&a[0])?, &a[1..])?)
        }
        "string" => {
            n(1, 1)?;
            Value::String(text(&a[0]))
        }
        "int" => {
            n(1, 1)?;
            match &a[0] {
                Value::String(t) => json!(t.trim().parse::<i64>().map_err(|_| format!("`{t}` is not an integer"))?),
                v => json!(i(v)?),
            }
        }
        "bool" => {
            n(1, 1)?;
            match &a[0] {
                Value::String(t) if t.eq_ignore_ascii_case("true") => json!(true),
                Value::String(t) if t.eq_ignore_ascii_case("false") => json!(false),
                Value::Number(x) => json!(x.as_i64() != Some(0)),
                v => json!(b(v)?),
            }
        }
        "json" => {
            n(1, 1)?;
            serde_json::from_str(s(&a[0])?).map_err(|e| format!("not JSON: {e}"))?
        }
        "array" => {
            n(1, 1)?;
            if a[0].is_array() { a[0].clone() } else { json!([a[0]]) }
        }
        "createarray" => Value::Array(a),
        "createobject" => {
            if !a.len().is_multiple_of(2) {
                return Err("`createObject` takes name, value pairs".into());
            }
            Value::Object(a.chunks(2).map(|p| Ok((s(&p[0])?.to_string(), p[1].clone()))).collect::<Result<Map<_, _>, String>>()?)
        }
        "equals" => {
            n(2, 2)?;
            json!(a[0] == a[1])
        }
        "not" => {
            n(1, 1)?;
            json!(!b(&a[0])?)
        }
        "and" | "or" => {
            n(2, usize::MAX)?;
            let bs: Vec<bool> = a.iter().map(b).collect::<Result<_, _>>()?;
            json!(if lower == "and" { bs.iter().all(|x| *x) } else { bs.iter().any(|x| *x) })
        }
        "greater" | "greaterorequals" | "less" | "lessorequals" => {
            n(2, 2)?;
            let ord = match (&a[0], &a[1]) {
                (Value::String(x), Value::String(y)) => x.cmp(y),
                (x, y) => i(x)?.cmp(&i(y)?),
            };
            json!(match lower.as_str() {
                "greater" => ord.is_gt(),
                "greaterorequals" => ord.is_ge(),
                "less" => ord.is_lt(),
                _ => ord.is_le(),
            })
        }
        "add" | "sub" | "mul" | "div" | "mod" => {
            n(2, 2)?;
            let (x, y) = (i(&a[0])?, i(&a[1])?);
            if (lower == "div" || lower == "mod") && y == 0 {
                return Err(format!("`{name}` by zero"));
            }
            json!(
                match lower.as_str() {
                    "add" => x.checked_add(y),
                    "sub" => x.checked_sub(y),
                    "mul" => x.checked_mul(y),
                    "div" => x.checked_div(y),
                    _ => x.checked_rem(y),
                }
                .ok_or_else(|| format!("`{name}` overflows"))?
            )
        }
        "tolower" => {
            n(1, 1)?;
            Value::String(s(&a[0])?.to_lowercase())
        }
        "toupper" => {
            n(1, 1)?;
            Value::String(s(&a[0])?.to_uppercase())
        }
        "trim" => {
            n(1, 1)?;
            Value::String(s(&a[0])?.trim().to_string())
        }
        "replace" => {
            n(3, 3)?;
            Value::String(s(&a[0])?.replace(s(&a[1])?, s(&a[2])?))
        }
        "split" => {
            n(2, 2)?;
            let text = s(&a[0])?;
            let seps: Vec<String> = match &a[1] {
                Value::Array(xs) => xs.iter().map(|x| s(x).map(str::to_string)).collect::<Result<_, _>>()?,
                v => vec![s(v)?.to_string()],
            };
            let mut parts = vec![text.to_string()];
            for sep in seps.iter().filter(|x| !x.is_empty()) {
                parts = parts.iter().flat_map(|p| p.split(sep.as_str()).map(str::to_string).collect::<Vec<_>>()).collect();
            }
            json!(parts)
        }
        "startswith" | "endswith" => {
            n(2, 2)?;
            let (x, y) = (s(&a[0])?.to_lowercase(), s(&a[1])?.to_lowercase());
            json!(if lower == "startswith" { x.starts_with(&y) } else { x.ends_with(&y) })
        }
        "substring" => {
            n(2, 3)?;
            let chars: Vec<char> = s(&a[0])?.chars().collect();
            let start = usize::try_from(i(&a[1])?).map_err(|_| "a negative start".to_string())?;
            let len = match a.get(2) {
                Some(l) => usize::try_from(i(l)?).map_err(|_| "a negative length".to_string())?,
                None => chars.len().saturating_sub(start),
            };
            if start + len > chars.len() {
                return Err(format!("`substring` past the end of a {}-character string", chars.len()));
            }
            Value::String(chars[start..start + len].iter().collect())
        }
        "length" => {
            n(1, 1)?;
            json!(match &a[0] {
                Value::String(t) => t.chars().count(),
                Value::Array(x) => x.len(),
                Value::Object(m) => m.len(),
                v => return Err(format!("`length` of {}", short(v))),
            })
        }
        "empty" => {
            n(1, 1)?;
            json!(match &a[0] {
                Value::Null => true,
                Value::String(t) => t.is_empty(),
                Value::Array(x) => x.is_empty(),
                Value::Object(m) => m.is_empty(),
                _ => false,
            })
        }
        "contains" => {
            n(2, 2)?;
            json!(match &a[0] {
                Value::String(t) => t.contains(s(&a[1])?),
                Value::Array(x) => x.contains(&a[1]),
                Value::Object(m) => m.contains_key(s(&a[1])?),
                v => return Err(format!("`contains` in {}", short(v))),
            })
        }
        "coalesce" => a.into_iter().find(|v| !v.is_null()).unwrap_or(Value::Null),
        "first" | "last" => {
            n(1, 1)?;
            match &a[0] {
                Value::String(t) => {
                    let c = if lower == "first" { t.chars().next() } else { t.chars().last() };
                    Value::String(c.map(String::from).unwrap_or_default())
                }
                Value::Array(x) => (if lower == "first" { x.first() } else { x.last() }).cloned().unwrap_or(Value::Null),
                v => return Err(format!("`{name}` of {}", short(v))),
            }
        }
        "take" | "skip" => {
            n(2, 2)?;
            let k = usize::try_from(i(&a[1])?.max(0)).unwrap_or(0);
            match &a[0] {
                Value::Array(x) => {
                    let k = k.min(x.len());
                    json!(if lower == "take" { x[..k].to_vec() } else { x[k..].to_vec() })
                }
                Value::String(t) => {
                    let chars: Vec<char> = t.chars().collect();
                    let k = k.min(chars.len());
                    Value::String(if lower == "take" { chars[..k].iter().collect() } else { chars[k..].iter().collect() })
                }
                v => return Err(format!("`{name}` of {}", short(v))),
            }
        }
        "union" => {
            n(1, usize::MAX)?;
            if a.iter().all(Value::is_object) {
                let mut out = Map::new();
                for m in a.iter().filter_map(Value::as_object) {
                    for (k, v) in m {
                        out.insert(k.clone(), v.clone());
                    }
                }
                Value::Object(out)
            } else if a.iter().all(Value::is_array) {
                let mut out: Vec<Value> = Vec::new();
                for v in a.iter().filter_map(Value::as_array).flatten() {
                    if !out.contains(v) {
                        out.push(v.clone());
                    }
                }
                Value::Array(out)
            } else {
                return Err("`union` of objects, or of arrays".into());
            }
        }
        "resourceid" | "subscriptionresourceid" => Value::String(resource_id(&lower, &a, scope)?),
        _ => return Err(format!("`{name}()` is not a template function aib evaluates")),
    })
}

/// `resourceId([subscriptionId], [resourceGroupName], type, name…)` and
/// `subscriptionResourceId([subscriptionId], type, name…)`.
fn resource_id(f: &str, a: &[Value], scope: &dyn Scope) -> Result<String, String> {
    let strs: Vec<&str> = a.iter().map(s).collect::<Result<_, _>>()?;
    let t = strs.iter().position(|x| x.contains('/')).ok_or("no resource type (`Namespace/type`) among the arguments")?;
    let (lead, ty, names) = (&strs[..t], strs[t], &strs[t + 1..]);
    let segments: Vec<&str> = ty.split('/').collect();
    if names.len() != segments.len() - 1 {
        return Err(format!("`{ty}` needs {} name(s), given {}", segments.len() - 1, names.len()));
    }
    let sub_of = |scope: &dyn Scope| -> Result<String, String> {
        let v = scope.subscription()?;
        v.get("subscriptionId").and_then(Value::as_str).map(str::to_string).ok_or_else(|| "no subscriptionId".to_string())
    };
    let mut id = match (f, lead) {
        ("subscriptionresourceid", []) => format!("/subscriptions/{}", sub_of(scope)?),
        ("subscriptionresourceid", [sub]) => format!("/subscriptions/{sub}"),
        ("resourceid", []) => {
            let rg = scope.resource_group()?;
            let name = rg.get("name").and_then(Value::as_str).ok_or("no resource group name")?.to_string();
            format!("/subscriptions/{}/resourceGroups/{name}", sub_of(scope)?)
        }
        ("resourceid", [rg]) => format!("/subscriptions/{}/resourceGroups/{rg}", sub_of(scope)?),
        ("resourceid", [sub, rg]) => format!("/subscriptions/{sub}/resourceGroups/{rg}"),
        _ => return Err(format!("too many arguments before the resource type `{ty}`")),
    };
    id.push_str(&format!("/providers/{}/{}", segments[0], segments[1]));
    id.push('/');
    id.push_str(names[0]);
    for (seg, name) in segments[2..].iter().zip(&names[1..]) {
        id.push_str(&format!("/{seg}/{name}"));
    }
    Ok(id)
}

/// .NET composite formatting as `format()` uses it: `{0}`, `{1}`, `{{`, `}}`, and the
/// `D<n>` and `N0` number formats. Other format strings are refused.
fn format_net(f: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = f.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let spec: String = chars.by_ref().take_while(|c| *c != '}').collect();
                let (idx, fmt) = spec.split_once(':').map_or((spec.as_str(), None), |(i, f)| (i, Some(f)));
                let k: usize = idx.trim().parse().map_err(|_| format!("`{{{spec}}}` is not a format item"))?;
                let v = args.get(k).ok_or_else(|| format!("format item {{{k}}} has no argument"))?;
                match fmt {
                    None => out.push_str(&text(v)),
                    Some(d) if d.starts_with(['D', 'd']) => {
                        let width: usize = d[1..].parse().unwrap_or(0);
                        out.push_str(&format!("{:0width$}", i(v)?));
                    }
                    Some("N0") => {
                        let digits = i(v)?.unsigned_abs().to_string();
                        let grouped: Vec<String> =
                            digits.as_bytes().rchunks(3).rev().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
                        out.push_str(&format!("{}{}", if i(v)? < 0 { "-" } else { "" }, grouped.join(",")));
                    }
                    Some(other) => return Err(format!("the format `{other}` is not evaluated by aib")),
                }
            }
            '}' => return Err("a lone `}` in the format string".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Empty;
    impl Scope for Empty {
        fn parameter(&self, n: &str) -> Result<Value, String> {
            match n {
                "names" => Ok(json!(["a", "b"])),
                "size" => Ok(json!(30)),
                _ => Err(format!("no parameter `{n}`")),
            }
        }
        fn variable(&self, n: &str) -> Result<Value, String> {
            Err(format!("no variable `{n}`"))
        }
        fn subscription(&self) -> Result<Value, String> {
            Ok(
                json!({"subscriptionId": "00000000-0000-0000-0000-000000000001", "id": "/subscriptions/00000000-0000-0000-0000-000000000001"}),
            )
        }
        fn resource_group(&self) -> Result<Value, String> {
            Ok(json!({"name": "img", "location": "westeurope"}))
        }
        fn copy_index(&self, _: Option<&str>) -> Result<i64, String> {
            Ok(2)
        }
        fn utc_now(&self) -> Result<String, String> {
            Err("only in parameter defaults".into())
        }
    }

    fn ev(src: &str) -> Result<Value, String> {
        eval(&parse(src)?, &Empty)
    }

    #[test]
    fn functions_image_templates_use() {
        assert_eq!(ev("concat('img-', toLower('WEB'), '-', string(parameters('size')))").unwrap(), json!("img-web-30"));
        assert_eq!(ev("format('{0}-{1:D3}-{{x}}', 'v', 7)").unwrap(), json!("v-007-{x}"));
        assert_eq!(ev("if(equals(parameters('size'), 30), 'yes', reference('x'))").unwrap(), json!("yes"), "only the taken branch");
        assert_eq!(ev("length(concat(parameters('names'), createArray('c')))").unwrap(), json!(3));
        assert_eq!(ev("first(split('a,b;c', createArray(',', ';')))").unwrap(), json!("a"));
        assert_eq!(ev("union(createObject('a', 1), createObject('b', json('[1, 2]')))['b'][1]").unwrap(), json!(2));
        assert_eq!(ev("and(true(), or(false(), not(false())))").unwrap(), json!(true));
        assert_eq!(ev("int('42')").unwrap(), json!(42));
        assert_eq!(ev("replace('a.b', '.', '''')").unwrap(), json!("a'b"));
        assert_eq!(ev("resourceGroup().location").unwrap(), json!("westeurope"));
        assert_eq!(
            ev("resourceId('Microsoft.Compute/galleries/images', 'gal', 'web')").unwrap(),
            json!(
                "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/img/providers/Microsoft.Compute/galleries/gal/images/web"
            )
        );
        assert_eq!(
            ev("subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'r1')").unwrap(),
            json!("/subscriptions/00000000-0000-0000-0000-000000000001/providers/Microsoft.Authorization/roleDefinitions/r1")
        );
        assert_eq!(ev("copyIndex(1)").unwrap(), json!(3));
    }

    #[test]
    fn what_cannot_be_evaluated_is_named() {
        for (src, needle) in [
            ("reference('x').outputs", "`reference()`"),
            ("listKeys('x', '2021-01-01')", "`listKeys()`"),
            ("guid('a')", "`guid()`"),
            ("uniqueString(resourceGroup().id)", "`uniqueString()`"),
            ("contoso.uniqueName('x')", "`contoso.uniqueName`"),
            ("nosuch(1)", "`nosuch()`"),
            ("parameters('missing')", "no parameter `missing`"),
            ("concat('a'", "expected `,` or `)`"),
            ("format('{0:X}', 1)", "the format `X`"),
            ("div(1, 0)", "by zero"),
        ] {
            let e = ev(src).unwrap_err();
            assert!(e.contains(needle), "{src}: {e}");
        }
    }
}
