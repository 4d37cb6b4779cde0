//! Deployment templates evaluated as ARM evaluates them: parameters (a parameter file,
//! `name=value` pairs, `defaultValue`s), variables, conditions, copy loops and expressions,
//! into image templates that can be validated in full and built.

use super::arm_expr::{self, Scope};
use super::decode::is_arm_expression;
use super::diag::{Code, Diagnostic, Diagnostics};
use super::document::{MAX_NESTING, ResourceKind, resource_kind, resources_at};
use crate::Error;
use serde_json::{Map, Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;

/// What a deployment is evaluated with: parameter values and the deployment's context.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Params {
    values: BTreeMap<String, Value>,
    /// Names whose value came as text (`-p name=value`): converted to the declared type.
    text: Vec<String>,
    subscription_id: Option<String>,
    tenant_id: Option<String>,
    resource_group: Option<(String, String)>,
    utc_now: Option<String>,
}

impl Params {
    /// No values: every parameter takes its `defaultValue`.
    pub fn new() -> Self {
        Params::default()
    }

    /// A value, as JSON.
    #[must_use]
    pub fn set(mut self, name: impl Into<String>, value: Value) -> Self {
        let name = name.into();
        self.text.retain(|n| *n != name);
        self.values.insert(name, value);
        self
    }

    /// A value given as text (`-p name=value`): read as the parameter's declared type
    /// (`int`, `bool`, JSON for `array` and `object`).
    #[must_use]
    pub fn set_text(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.values.insert(name.clone(), Value::String(value.into()));
        self.text.push(name);
        self
    }

    /// Adds the values of an ARM parameter file (`{"$schema": …deploymentParameters.json#,
    /// "parameters": {"name": {"value": …}}}`, or just the `parameters` object). Key Vault
    /// references are refused: aib does not read Key Vault.
    pub fn with_file(mut self, text: &str) -> Result<Self, Error> {
        let bad = |path: String, msg: String, hint: &str| Error::InvalidTemplate {
            diagnostics: Diagnostics(vec![Diagnostic::error(path, Code::InvalidValue, msg).with_hint(hint)]),
        };
        let v: Value = serde_json::from_str(&super::armjson::relax(text).0)
            .map_err(|e| bad(String::new(), format!("the parameter file is not valid JSON: {e}"), "fix the JSON syntax"))?;
        // The full form has `$schema`/`contentVersion`, or a `parameters` object that is not
        // itself one parameter's entry (`{"value": …}`): az reads `{"parameters": {…}}` so too.
        let full = |p: &serde_json::Map<String, Value>| {
            v.get("$schema").is_some() || v.get("contentVersion").is_some() || !(p.contains_key("value") || p.contains_key("reference"))
        };
        let (params, prefix) = match v.get("parameters").and_then(Value::as_object) {
            Some(p) if full(p) => (p.clone(), "parameters."),
            _ => match v.as_object() {
                Some(p) => (p.clone(), ""),
                None => return Err(bad(String::new(), "the parameter file is not an object".into(), "give {\"parameters\": {...}}")),
            },
        };
        for (name, entry) in params {
            match entry.get("value") {
                Some(value) => self = self.set(name, value.clone()),
                None if entry.get("reference").is_some() => {
                    return Err(bad(
                        format!("{prefix}{name}.reference"),
                        format!("parameter `{name}` is a Key Vault reference, which aib does not resolve"),
                        "give the value itself, for example with -p name=value",
                    ));
                }
                None => {
                    return Err(bad(
                        format!("{prefix}{name}"),
                        format!("parameter `{name}` has no `value`"),
                        "write {\"name\": {\"value\": ...}}",
                    ));
                }
            }
        }
        Ok(self)
    }

    /// The subscription `subscription()` and `resourceId()` see.
    #[must_use]
    pub fn subscription(mut self, id: impl Into<String>) -> Self {
        self.subscription_id = Some(id.into());
        self
    }

    /// The tenant `subscription().tenantId` says.
    #[must_use]
    pub fn tenant(mut self, id: impl Into<String>) -> Self {
        self.tenant_id = Some(id.into());
        self
    }

    /// The resource group (name and location) `resourceGroup()` and `resourceId()` see. An empty
    /// location is an unknown one: `resourceGroup().location` is then an error, not `""`.
    #[must_use]
    pub fn resource_group(mut self, name: impl Into<String>, location: impl Into<String>) -> Self {
        self.resource_group = Some((name.into(), location.into()));
        self
    }

    /// What `utcNow()` returns in parameter defaults (default: now, `yyyyMMddTHHmmssZ`).
    #[must_use]
    pub fn utc_now(mut self, value: impl Into<String>) -> Self {
        self.utc_now = Some(value.into());
        self
    }
}

/// One template's scope: its parameters (resolved) and variables (resolved on first use).
struct TemplateScope<'a> {
    params: &'a Params,
    parameters: Map<String, Value>,
    variables: Map<String, Value>,
    resolved: RefCell<Map<String, Value>>,
    resolving: RefCell<Vec<String>>,
    copy: RefCell<Vec<(String, i64)>>,
    in_defaults: bool,
}

impl Scope for TemplateScope<'_> {
    fn parameter(&self, name: &str) -> Result<Value, String> {
        lookup(&self.parameters, name).ok_or_else(|| format!("no parameter `{name}` (or it comes later in `parameters`)"))
    }

    fn variable(&self, name: &str) -> Result<Value, String> {
        if let Some(v) = lookup(&self.resolved.borrow(), name) {
            return Ok(v);
        }
        let raw = lookup(&self.variables, name).ok_or_else(|| format!("no variable `{name}`"))?;
        if self.resolving.borrow().iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return Err(format!("variable `{name}` refers to itself"));
        }
        self.resolving.borrow_mut().push(name.to_string());
        let v = walk(&raw, self, &format!("variables.{name}")).map_err(|(_, e)| e);
        self.resolving.borrow_mut().pop();
        let v = v?;
        self.resolved.borrow_mut().insert(name.to_string(), v.clone());
        Ok(v)
    }

    fn subscription(&self) -> Result<Value, String> {
        let id = self
            .params
            .subscription_id
            .as_deref()
            .ok_or("`subscription()` needs the deployment's subscription: give --subscription ID (CLI) or Params::subscription")?;
        // What is not known is left out: `subscription().tenantId` without a tenant is an error
        // naming the property, never an empty string.
        let mut v = json!({"id": format!("/subscriptions/{id}"), "subscriptionId": id, "displayName": id});
        if let Some(t) = &self.params.tenant_id {
            v["tenantId"] = json!(t);
        }
        Ok(v)
    }

    fn resource_group(&self) -> Result<Value, String> {
        let (name, location) = self.params.resource_group.clone().ok_or(
            "`resourceGroup()` needs the deployment's resource group: give --resource-group NAME [--rg-location REGION] (CLI) or Params::resource_group",
        )?;
        // What is not known is left out (`.location` without one, `.id` without a
        // subscription): an error naming the property, never a made-up value.
        let mut v = json!({"name": name, "type": "Microsoft.Resources/resourceGroups",
            "properties": {"provisioningState": "Succeeded"}, "tags": {}});
        if let Some(sub) = &self.params.subscription_id {
            v["id"] = json!(format!("/subscriptions/{sub}/resourceGroups/{name}"));
        }
        if !location.is_empty() {
            v["location"] = json!(location);
        }
        Ok(v)
    }

    fn copy_index(&self, name: Option<&str>) -> Result<i64, String> {
        let copy = self.copy.borrow();
        let found = match name {
            Some(n) => copy.iter().rev().find(|(l, _)| l.eq_ignore_ascii_case(n)),
            None => copy.last(),
        };
        found.map(|(_, i)| *i).ok_or_else(|| format!("`copyIndex({})` outside its copy loop", name.unwrap_or_default()))
    }

    fn utc_now(&self) -> Result<String, String> {
        if !self.in_defaults {
            return Err("`utcNow()` may only be used in a parameter's defaultValue".into());
        }
        Ok(self.params.utc_now.clone().unwrap_or_else(|| {
            let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            t.replace(['-', ':'], "")
        }))
    }
}

fn lookup(m: &Map<String, Value>, name: &str) -> Option<Value> {
    m.get(name).or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)).cloned()
}

type Located = (String, String);

/// Evaluates every expression in `v` (at `path`), property copy loops included.
fn walk(v: &Value, scope: &TemplateScope<'_>, path: &str) -> Result<Value, Located> {
    match v {
        Value::String(s) if s.starts_with("[[") => Ok(Value::String(s[1..].to_string())),
        Value::String(s) if is_arm_expression(s) => {
            let inner = &s.trim()[1..s.trim().len() - 1];
            arm_expr::parse(inner).and_then(|e| arm_expr::eval(&e, scope)).map_err(|e| (path.to_string(), format!("`{s}`: {e}")))
        }
        Value::Array(items) => {
            items.iter().enumerate().map(|(i, x)| walk(x, scope, &format!("{path}[{i}]"))).collect::<Result<_, _>>().map(Value::Array)
        }
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, x) in m {
                let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                if k == "copy" && x.is_array() {
                    for (i, lp) in x.as_array().into_iter().flatten().enumerate() {
                        let at = format!("{here}[{i}]");
                        let (name, items) = copy_loop(lp, scope, &at)?;
                        out.insert(name, Value::Array(items));
                    }
                    continue;
                }
                // Property names may be expressions too (`userAssignedIdentities` keyed by id).
                let key = match walk(&Value::String(k.clone()), scope, &here)? {
                    Value::String(key) => key,
                    other => return Err((here, format!("a property name evaluates to {other}, not a string"))),
                };
                out.insert(key, walk(x, scope, &here)?);
            }
            Ok(Value::Object(out))
        }
        other => Ok(other.clone()),
    }
}

/// A property or variable copy loop `{name, count, input}`: its name and its items.
fn copy_loop(lp: &Value, scope: &TemplateScope<'_>, path: &str) -> Result<(String, Vec<Value>), Located> {
    let name = walk(lp.get("name").unwrap_or(&Value::Null), scope, &format!("{path}.name"))?;
    let name = name.as_str().ok_or_else(|| (format!("{path}.name"), "a copy loop needs a `name`".to_string()))?.to_string();
    let count = walk(lp.get("count").unwrap_or(&Value::Null), scope, &format!("{path}.count"))?;
    let count =
        count.as_i64().filter(|n| (0..=800).contains(n)).ok_or_else(|| (format!("{path}.count"), "`count` must be 0 to 800".into()))?;
    let input = lp.get("input").ok_or_else(|| (format!("{path}.input"), "a property copy loop needs an `input`".to_string()))?;
    let mut items = Vec::new();
    for i in 0..count {
        scope.copy.borrow_mut().push((name.clone(), i));
        let item = walk(input, scope, &format!("{path}.input"));
        scope.copy.borrow_mut().pop();
        items.push(item?);
    }
    Ok((name, items))
}

/// The parameters of `template`, from `given` (by name), converted to their declared types,
/// else their defaults.
fn resolve_parameters(
    template: &Map<String, Value>,
    given: &BTreeMap<String, Value>,
    text: &[String],
    params: &Params,
    prefix: &str,
) -> Result<Map<String, Value>, Located> {
    let declared = template.get("parameters").and_then(Value::as_object).cloned().unwrap_or_default();
    for name in given.keys() {
        if lookup(&declared, name).is_none() {
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            let names = if names.is_empty() { "none".to_string() } else { names.join(", ") };
            return Err((
                format!("{prefix}parameters"),
                format!(
                    "the template declares no parameter `{name}` (it declares: {names}); leave `{name}` out of the parameter file and -p"
                ),
            ));
        }
    }
    let mut scope = TemplateScope {
        params,
        parameters: Map::new(),
        variables: Map::new(),
        resolved: RefCell::default(),
        resolving: RefCell::default(),
        copy: RefCell::default(),
        in_defaults: true,
    };
    for (name, def) in &declared {
        let path = format!("{prefix}parameters.{name}");
        let ty = def.get("type").and_then(Value::as_str).unwrap_or("string").to_ascii_lowercase();
        let given_value = given.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(k, v)| (k.clone(), v.clone()));
        let value = match given_value {
            Some((k, Value::String(t))) if text.contains(&k) => from_text(&t, &ty).map_err(|e| (path.clone(), format!("`{name}`: {e}")))?,
            Some((_, v)) => v,
            None => match def.get("defaultValue") {
                Some(d) => walk(d, &scope, &format!("{path}.defaultValue"))?,
                None => {
                    return Err((
                        path,
                        format!(
                            "parameter `{name}` has no value and no defaultValue: give it in a parameter file (--parameters FILE) or as -p {name}=VALUE"
                        ),
                    ));
                }
            },
        };
        let ok = match ty.as_str() {
            "string" | "securestring" => value.is_string(),
            "int" => value.is_i64(),
            "bool" => value.is_boolean(),
            "array" => value.is_array(),
            "object" | "secureobject" => value.is_object(),
            _ => true,
        };
        if !ok {
            return Err((path, format!("parameter `{name}` is declared `{ty}`, given {value}")));
        }
        if let Some(allowed) = def.get("allowedValues").and_then(Value::as_array)
            && !allowed.contains(&value)
        {
            return Err((path, format!("parameter `{name}` is {value}, not one of its allowedValues {}", Value::Array(allowed.clone()))));
        }
        scope.parameters.insert(name.clone(), value);
    }
    Ok(scope.parameters)
}

fn from_text(t: &str, ty: &str) -> Result<Value, String> {
    match ty {
        "int" => t.trim().parse::<i64>().map(Value::from).map_err(|_| format!("`{t}` is not an int")),
        "bool" => match t.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(json!(true)),
            "false" => Ok(json!(false)),
            _ => Err(format!("`{t}` is not a bool")),
        },
        "array" | "object" | "secureobject" => serde_json::from_str(t).map_err(|e| format!("not JSON: {e}")),
        _ => Ok(Value::String(t.to_string())),
    }
}

/// Evaluates the deployment template `root`: the image template resources it deploys, each
/// with its path, fully evaluated.
pub(crate) fn deployment(root: &Value, params: &Params) -> Result<Vec<(String, Value)>, Error> {
    let mut out = Vec::new();
    template(root, &params.values, &params.text, params, "", &mut out, 0).map_err(|(path, msg)| Error::InvalidTemplate {
        diagnostics: Diagnostics(vec![
            Diagnostic::error(path, Code::ArmExpression, msg)
                .with_hint("give the parameters it needs (--parameters FILE, -p name=value), or write the value itself"),
        ]),
    })?;
    Ok(out)
}

fn template(
    root: &Value,
    given: &BTreeMap<String, Value>,
    text: &[String],
    params: &Params,
    prefix: &str,
    out: &mut Vec<(String, Value)>,
    depth: usize,
) -> Result<(), Located> {
    let Some(t) = root.as_object() else { return Ok(()) };
    let parameters = resolve_parameters(t, given, text, params, prefix)?;
    let scope = TemplateScope {
        params,
        parameters,
        variables: t.get("variables").and_then(Value::as_object).cloned().unwrap_or_default(),
        resolved: RefCell::default(),
        resolving: RefCell::default(),
        copy: RefCell::default(),
        in_defaults: false,
    };
    // Variable copy loops become variables of their own.
    if let Some(loops) = scope.variables.get("copy").and_then(Value::as_array).cloned() {
        for (i, lp) in loops.iter().enumerate() {
            let (name, items) = copy_loop(lp, &scope, &format!("{prefix}variables.copy[{i}]"))?;
            scope.resolved.borrow_mut().insert(name, Value::Array(items));
        }
    }
    for (path, r) in resources_at(t, prefix) {
        let nested = match resource_kind(r) {
            ResourceKind::ImageTemplate => false,
            ResourceKind::Deployment => true,
            ResourceKind::Other => continue,
        };
        let count = match r.get("copy") {
            Some(c) => {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("copy").to_string();
                let n = walk(c.get("count").unwrap_or(&Value::Null), &scope, &format!("{path}.copy.count"))?;
                let n = n
                    .as_i64()
                    .filter(|n| (0..=800).contains(n))
                    .ok_or_else(|| (format!("{path}.copy.count"), "`count` must be 0 to 800".into()))?;
                Some((name, n))
            }
            None => None,
        };
        for i in 0..count.as_ref().map_or(1, |(_, n)| *n) {
            if let Some((name, _)) = &count {
                scope.copy.borrow_mut().push((name.clone(), i));
            }
            let done = one_resource(r, &scope, &path, i, count.is_some(), nested, params, out, depth);
            if count.is_some() {
                scope.copy.borrow_mut().pop();
            }
            done?;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn one_resource(
    r: &Value,
    scope: &TemplateScope<'_>,
    path: &str,
    i: i64,
    copied: bool,
    nested: bool,
    params: &Params,
    out: &mut Vec<(String, Value)>,
    depth: usize,
) -> Result<(), Located> {
    if let Some(c) = r.get("condition") {
        let c = walk(c, scope, &format!("{path}.condition"))?;
        if c == json!(false) {
            return Ok(());
        }
    }
    let here = if copied { format!("{path}<{i}>") } else { path.to_string() };
    if !nested {
        let mut m = r.as_object().cloned().unwrap_or_default();
        for k in ["copy", "condition", "dependsOn"] {
            m.remove(k);
        }
        out.push((here, walk(&Value::Object(m), scope, path)?));
        return Ok(());
    }
    let Some(inner) = r.pointer("/properties/template") else { return Ok(()) };
    if depth >= MAX_NESTING {
        return Err((path.to_string(), format!("deployments nested deeper than {MAX_NESTING} levels are not evaluated")));
    }
    let inner_prefix = format!("{here}.properties.template.");
    let inner_scope = r.pointer("/properties/expressionEvaluationOptions/scope").and_then(Value::as_str).unwrap_or("outer");
    if inner_scope.eq_ignore_ascii_case("inner") {
        // Values flow in through `properties.parameters`, evaluated outside.
        let passed = r.pointer("/properties/parameters").cloned().unwrap_or(json!({}));
        let passed = walk(&passed, scope, &format!("{path}.properties.parameters"))?;
        let given: BTreeMap<String, Value> =
            passed.as_object().into_iter().flatten().filter_map(|(k, v)| v.get("value").map(|v| (k.clone(), v.clone()))).collect();
        template(inner, &given, &[], params, &inner_prefix, out, depth + 1)
    } else {
        // Outer scope: the nested template's expressions are the parent's.
        let Some(t) = inner.as_object() else { return Ok(()) };
        for (p, r) in resources_at(t, &inner_prefix) {
            let is_nested = match resource_kind(r) {
                ResourceKind::ImageTemplate => false,
                ResourceKind::Deployment => true,
                ResourceKind::Other => continue,
            };
            one_resource(r, scope, &p, 0, false, is_nested, params, out, depth + 1)?;
        }
        Ok(())
    }
}
