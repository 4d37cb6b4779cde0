//! Documents: the shapes in which Microsoft publishes templates, and what is inside them.

use super::decode::{ApiVersion, Cx, is_arm_expression};
use super::diag::{Code, Diagnostic, Diagnostics};
use super::model::ImageTemplate;
use super::parse;
use super::validate::{TypeNames, check};
use serde_json::{Map, Value};

/// Largest document aib reads (bytes). Templates are a few KiB; this bounds memory.
pub const MAX_DOCUMENT_BYTES: usize = 16 << 20;

/// The shape a document has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shape {
    /// A resource object (`{type, apiVersion, location, identity, properties}`), as for
    /// `az resource create --is-full-object`, or a GET body.
    Resource,
    /// A REST API example: `{parameters: {api-version, parameters: BODY}, responses}`.
    RestExample,
    /// An ARM deployment template with `imageTemplates` resources.
    DeploymentTemplate,
    /// Just the `properties` object.
    BareProperties,
}

/// What one part of a document holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ItemKind {
    /// An image template (a request body or a resource).
    Template,
    /// A PATCH body (`tags`, `identity`, `properties.distribute`/`vmProfile`).
    TemplateUpdate,
    /// A trigger (`properties.kind`).
    Trigger,
    /// A run output.
    RunOutput,
    /// The provider's operation list.
    Operations,
    /// An operation that carries no body (run, cancel, delete).
    NoBody,
}

/// One item of a document.
#[derive(Debug, Clone)]
pub struct Item {
    /// What it is.
    pub kind: ItemKind,
    /// Where it is in the document (JSON path; empty for the root).
    pub path: String,
    /// True for REST example responses (illustrative; a request is what a user submits).
    pub response: bool,
    /// The API version that governs it, when the document says.
    pub api_version: Option<ApiVersion>,
    /// The template, for [`ItemKind::Template`].
    pub template: Option<ImageTemplate>,
}

/// Options for [`Document::parse_with`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ParseOptions {
    /// The `type` names to accept; AIB's by default.
    pub types: TypeNames,
    /// Parse as this API version whatever the document says.
    pub api_version: Option<ApiVersion>,
}

impl ParseOptions {
    /// Accepts these type names.
    #[must_use]
    pub fn with_types(mut self, types: TypeNames) -> Self {
        self.types = types;
        self
    }

    /// Overrides the document's API version.
    #[must_use]
    pub fn with_api_version(mut self, v: ApiVersion) -> Self {
        self.api_version = Some(v);
        self
    }
}

/// A parsed document: its shape, its items and every diagnostic.
#[derive(Debug, Clone)]
pub struct Document {
    /// The shape, when recognised.
    pub shape: Option<Shape>,
    /// What it holds.
    pub items: Vec<Item>,
    /// Every diagnostic, parse and semantic.
    pub diagnostics: Diagnostics,
    /// The decoded document and the options it was read with, for [`Document::evaluate`].
    source: Option<(Value, ParseOptions)>,
}

impl Document {
    /// Parses with AIB's type names.
    pub fn parse(text: &str) -> Document {
        Document::parse_with(text, &ParseOptions::default())
    }

    /// Parses `text`; never panics, whatever the input.
    pub fn parse_with(text: &str, opts: &ParseOptions) -> Document {
        let mut doc = Document { shape: None, items: Vec::new(), diagnostics: Diagnostics::default(), source: None };
        if text.len() > MAX_DOCUMENT_BYTES {
            doc.diagnostics.push(
                Diagnostic::error(
                    "",
                    Code::InvalidJson,
                    format!("document is {} bytes, above the {MAX_DOCUMENT_BYTES}-byte limit", text.len()),
                )
                .with_hint("templates are small; check that this is the right file"),
            );
            return doc;
        }
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                // ARM's template engine also reads comments and trailing commas; a request
                // body of the REST API is strict JSON.
                let (relaxed, ext) = super::armjson::relax(text);
                match serde_json::from_str::<Value>(&relaxed) {
                    Ok(v) if ext.any() && is_deployment(&v) => {
                        doc.diagnostics.push(
                            Diagnostic::warning(
                                "",
                                Code::JsonExtension,
                                format!("{}: ARM's template engine accepts them, strict JSON does not", ext.describe()),
                            )
                            .with_hint("deploy this file through ARM; remove them to send the template to the REST API"),
                        );
                        v
                    }
                    Ok(_) if ext.any() => {
                        doc.diagnostics.push(
                            Diagnostic::error(
                                "",
                                Code::InvalidJson,
                                format!("not valid JSON: {e}; it has {}, which only ARM deployment templates may have", ext.describe()),
                            )
                            .with_hint("remove them, or wrap the template in a deployment template's `resources`"),
                        );
                        return doc;
                    }
                    _ => {
                        doc.diagnostics.push(
                            Diagnostic::error("", Code::InvalidJson, format!("not valid JSON: {e}"))
                                .with_hint("fix the JSON syntax at the line and column given"),
                        );
                        return doc;
                    }
                }
            }
        };
        doc.parse_value(&value, opts);
        doc
    }

    /// Parses an already-decoded JSON value.
    pub fn from_value(value: &Value, opts: &ParseOptions) -> Document {
        let mut doc = Document { shape: None, items: Vec::new(), diagnostics: Diagnostics::default(), source: None };
        doc.parse_value(value, opts);
        doc
    }

    /// The templates in the document, requests first.
    pub fn templates(&self) -> impl Iterator<Item = &Item> {
        let req = self.items.iter().filter(|i| i.template.is_some() && !i.response);
        let resp = self.items.iter().filter(|i| i.template.is_some() && i.response);
        req.chain(resp)
    }

    /// True when a part of the document is an ARM expression (`"[...]"`), so that
    /// [`Document::evaluate`] would change it.
    pub fn has_expressions(&self) -> bool {
        fn any(v: &Value) -> bool {
            match v {
                Value::String(s) => is_arm_expression(s),
                Value::Array(a) => a.iter().any(any),
                Value::Object(m) => m.iter().any(|(k, v)| k == "copy" || any(v)),
                _ => false,
            }
        }
        self.source.as_ref().is_some_and(|(v, _)| any(v))
    }

    /// Evaluates a deployment template as ARM would deploy it (parameters from `params`,
    /// else their `defaultValue`s; variables; conditions; copy loops; the template functions
    /// image templates use) and parses the image templates it deploys, in full, at their
    /// paths. Any other document comes back as it is. An expression that cannot be
    /// evaluated is an [`crate::Error::InvalidTemplate`] at its path, naming the function.
    pub fn evaluate(&self, params: &super::evaluate::Params) -> Result<Document, crate::Error> {
        let Some((root, opts)) = &self.source else { return Ok(self.clone()) };
        if self.shape != Some(Shape::DeploymentTemplate) {
            return Ok(self.clone());
        }
        let mut doc = Document { shape: self.shape, items: Vec::new(), diagnostics: Diagnostics::default(), source: None };
        // What reading the text found (comments, trailing commas) still holds.
        doc.diagnostics.0.extend(self.diagnostics.iter().filter(|d| d.code == Code::JsonExtension).cloned());
        for (path, resource) in super::evaluate::deployment(root, params)? {
            let api = resource.get("apiVersion").and_then(Value::as_str).and_then(ApiVersion::parse);
            doc.item(&resource, &path, ItemKind::Template, false, api, opts);
        }
        if doc.items.is_empty() {
            doc.diagnostics.push(
                Diagnostic::error("resources", Code::UnknownDocument, "the evaluated deployment deploys no image template")
                    .with_hint("check the resources' `condition`s and copy counts"),
            );
        }
        Ok(doc)
    }

    fn parse_value(&mut self, value: &Value, opts: &ParseOptions) {
        self.source = Some((value.clone(), opts.clone()));
        let Some(root) = value.as_object() else {
            self.diagnostics.push(
                Diagnostic::error("", Code::InvalidJson, format!("expected a JSON object, found {}", super::decode::json_type(value)))
                    .with_hint("an image template is a JSON object"),
            );
            return;
        };
        if is_deployment(value) {
            self.shape = Some(Shape::DeploymentTemplate);
            let params = root.get("parameters").and_then(Value::as_object);
            if !self.deployment(root, "", params, opts, 0) {
                self.diagnostics.push(
                    Diagnostic::error(
                        "resources",
                        Code::UnknownDocument,
                        "the deployment template has no Microsoft.VirtualMachineImages/imageTemplates resource",
                    )
                    .with_hint("add an imageTemplates resource, or validate the template file itself"),
                );
            }
        } else if root.contains_key("parameters") && root.contains_key("responses") {
            self.shape = Some(Shape::RestExample);
            self.rest_example(root, opts);
        } else if root.contains_key("properties") {
            self.shape = Some(Shape::Resource);
            let api = root.get("apiVersion").and_then(Value::as_str).and_then(ApiVersion::parse);
            let kind = body_kind(root).unwrap_or(ItemKind::Template);
            self.item(value, "", kind, false, api, opts);
        } else if ["source", "distribute", "customize"].iter().any(|k| root.contains_key(*k)) {
            self.shape = Some(Shape::BareProperties);
            let wrapped = Value::Object(Map::from_iter([
                ("location".to_string(), Value::String(String::new())),
                ("properties".to_string(), value.clone()),
            ]));
            let api = opts.api_version;
            let mut cx = Cx::new(api, api.is_none_or(|a| a.is_strict()));
            if let Some(t) = parse::template(&mut cx, &wrapped, "") {
                let mut diags = cx.diags;
                check(&t, "", &opts.types, &mut diags);
                for mut d in diags {
                    d.path = d.path.strip_prefix("properties.").or(d.path.strip_prefix("properties")).unwrap_or(&d.path).to_string();
                    if d.code != Code::BadIdentity || d.is_error() {
                        self.diagnostics.push(d);
                    }
                }
                self.items.push(Item {
                    kind: ItemKind::Template,
                    path: String::new(),
                    response: false,
                    api_version: api,
                    template: Some(t),
                });
            }
        } else {
            self.diagnostics.push(
                Diagnostic::error(
                    "",
                    Code::UnknownDocument,
                    "no image template found: expected `properties`, `resources`, or a REST example",
                )
                .with_hint("give an imageTemplates resource ({location, identity, properties: {source, customize, distribute}})"),
            );
        }
    }

    /// The imageTemplates resources of a deployment template at `prefix` (empty, or a path
    /// ending in `.`), inside nested inline deployments too; whether there was one. `params` are the parameter
    /// definitions in scope (ARM's `expressionEvaluationOptions.scope`: the outer template's
    /// unless a nested one says `inner`).
    fn deployment(
        &mut self,
        root: &Map<String, Value>,
        prefix: &str,
        params: Option<&Map<String, Value>>,
        opts: &ParseOptions,
        depth: usize,
    ) -> bool {
        let mut found = false;
        for (path, r) in resources_at(root, prefix) {
            match resource_kind(r) {
                ResourceKind::ImageTemplate => {
                    found = true;
                    let api = deployment_api_version(r, params);
                    self.item(r, &path, ItemKind::Template, false, api, opts);
                    continue;
                }
                ResourceKind::Deployment => {}
                ResourceKind::Other => continue,
            }
            if let Some(inner) = r.pointer("/properties/template").and_then(Value::as_object) {
                if depth >= MAX_NESTING {
                    self.diagnostics.push(Diagnostic::warning(
                        &path,
                        Code::UnknownDocument,
                        format!("deployments nested deeper than {MAX_NESTING} levels are not read"),
                    ));
                    continue;
                }
                let scope = r.pointer("/properties/expressionEvaluationOptions/scope").and_then(Value::as_str).unwrap_or("outer");
                let inner_params =
                    if scope.eq_ignore_ascii_case("inner") { inner.get("parameters").and_then(Value::as_object) } else { params };
                found |= self.deployment(inner, &format!("{path}.properties.template."), inner_params, opts, depth + 1);
            }
        }
        found
    }

    fn rest_example(&mut self, root: &Map<String, Value>, opts: &ParseOptions) {
        let params = root.get("parameters").and_then(Value::as_object);
        let api = params.and_then(|p| p.get("api-version")).and_then(Value::as_str).and_then(ApiVersion::parse);
        let before = self.items.len();
        if let Some(body) = params.and_then(|p| p.get("parameters")) {
            let kind = body.as_object().and_then(body_kind).unwrap_or(ItemKind::TemplateUpdate);
            self.item(body, "parameters.parameters", kind, false, api, opts);
        }
        if let Some(responses) = root.get("responses").and_then(Value::as_object) {
            for (status, resp) in responses {
                let Some(body) = resp.get("body") else { continue };
                let path = format!("responses.{status}.body");
                match body.get("value").and_then(Value::as_array) {
                    Some(list) => {
                        for (i, item) in list.iter().enumerate() {
                            let kind = item.as_object().and_then(body_kind).unwrap_or(ItemKind::Operations);
                            self.item(item, &format!("{path}.value[{i}]"), kind, true, api, opts);
                        }
                    }
                    None => {
                        if let Some(kind) = body.as_object().and_then(body_kind) {
                            self.item(body, &path, kind, true, api, opts);
                        }
                    }
                }
            }
        }
        if self.items.len() == before {
            self.items.push(Item { kind: ItemKind::NoBody, path: String::new(), response: false, api_version: api, template: None });
        }
    }

    fn item(&mut self, v: &Value, path: &str, kind: ItemKind, response: bool, api: Option<ApiVersion>, opts: &ParseOptions) {
        let api = opts.api_version.or(api);
        // Unknown versions (absent, or an ARM expression) are read leniently: the service
        // decides, and we would rather warn than reject a template it accepts.
        let strict = api.is_some_and(|a| a.is_strict());
        let mut cx = Cx::new(api, strict);
        let mut template = None;
        match kind {
            ItemKind::Template => {
                template = parse::template(&mut cx, v, path);
                if let Some(t) = &template {
                    let mut semantic = Vec::new();
                    check(t, path, &opts.types, &mut semantic);
                    cx.diags.extend(suppress_cascades(&cx.diags, semantic));
                }
            }
            ItemKind::TemplateUpdate => {
                parse::template_update(&mut cx, v, path);
            }
            ItemKind::Trigger => {
                parse::trigger(&mut cx, v, path);
            }
            ItemKind::RunOutput => {
                parse::run_output(&mut cx, v, path);
            }
            ItemKind::Operations | ItemKind::NoBody => {}
        }
        if response {
            // Example responses are illustrative (the service wrote them, not a user): their
            // findings are reported, but they do not make the document invalid.
            for d in &mut cx.diags {
                if d.is_error() {
                    d.severity = super::diag::Severity::Warning;
                    d.message = format!("in an example response: {}", d.message);
                }
            }
        }
        self.diagnostics.0.extend(cx.diags);
        self.items.push(Item { kind, path: path.to_string(), response, api_version: api, template });
    }
}

/// How deep nested inline deployments are followed (read and evaluated).
pub(crate) const MAX_NESTING: usize = 8;

/// What a deployment-template resource is, for finding image templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResourceKind {
    ImageTemplate,
    /// `Microsoft.Resources/deployments`: it may hold an inline template.
    Deployment,
    Other,
}

pub(crate) fn resource_kind(r: &Value) -> ResourceKind {
    let ty = r.get("type").and_then(Value::as_str).unwrap_or_default();
    if ty.eq_ignore_ascii_case("Microsoft.VirtualMachineImages/imageTemplates") {
        ResourceKind::ImageTemplate
    } else if ty.eq_ignore_ascii_case("Microsoft.Resources/deployments") {
        ResourceKind::Deployment
    } else {
        ResourceKind::Other
    }
}

/// The resources of the template `t` with their paths under `prefix` (empty, or ending in
/// `.`): its `resources` array, or, from `languageVersion` 2.0, its object keyed by
/// symbolic name.
pub(crate) fn resources_at<'a>(t: &'a Map<String, Value>, prefix: &str) -> Vec<(String, &'a Value)> {
    match t.get("resources") {
        Some(Value::Array(list)) => list.iter().enumerate().map(|(i, r)| (format!("{prefix}resources[{i}]"), r)).collect(),
        Some(Value::Object(named)) => named.iter().map(|(n, r)| (format!("{prefix}resources.{n}"), r)).collect(),
        _ => Vec::new(),
    }
}

/// True for an ARM deployment template: `resources` as an array, or (`languageVersion` 2.0)
/// as an object keyed by symbolic name.
fn is_deployment(v: &Value) -> bool {
    match v.get("resources") {
        Some(Value::Array(_)) => true,
        Some(Value::Object(_)) => {
            v.get("languageVersion").is_some() || v.get("$schema").and_then(Value::as_str).is_some_and(|s| s.contains("deploymentTemplate"))
        }
        _ => false,
    }
}

/// True when `path` is `base` or lies under it.
fn under(path: &str, base: &str) -> bool {
    path.strip_prefix(base).is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
}

/// Drops semantic findings that only follow from a parse error: those on the broken value,
/// inside it, or on an object that contains it. A broken `type` discriminator invalidates
/// its whole object.
fn suppress_cascades(parse: &[Diagnostic], semantic: Vec<Diagnostic>) -> Vec<Diagnostic> {
    let broken: Vec<&str> = parse
        .iter()
        .filter(|d| d.is_error())
        .map(|d| match d.path.strip_suffix(".type") {
            Some(object) => object,
            None => d.path.as_str(),
        })
        .collect();
    semantic.into_iter().filter(|s| !broken.iter().any(|b| under(&s.path, b) || under(b, &s.path))).collect()
}

/// What a body object is, judged by its content.
fn body_kind(m: &Map<String, Value>) -> Option<ItemKind> {
    let ty = m.get("type").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
    let props = m.get("properties").and_then(Value::as_object);
    if ty.ends_with("/triggers") || props.is_some_and(|p| p.contains_key("kind")) {
        return Some(ItemKind::Trigger);
    }
    if ty.ends_with("/runoutputs") || props.is_some_and(|p| p.contains_key("artifactId") || p.contains_key("artifactUri")) {
        return Some(ItemKind::RunOutput);
    }
    if parse::looks_like_template(m) {
        return Some(ItemKind::Template);
    }
    if m.contains_key("display") || m.contains_key("isDataAction") || m.contains_key("origin") {
        return Some(ItemKind::Operations);
    }
    if m.contains_key("properties") || m.contains_key("tags") || m.contains_key("identity") {
        return Some(ItemKind::TemplateUpdate);
    }
    None
}

/// The API version of a deployment-template resource; `[parameters('x')]` resolves through
/// the parameter's `defaultValue` when it has one.
fn deployment_api_version(r: &Value, params: Option<&Map<String, Value>>) -> Option<ApiVersion> {
    let s = r.get("apiVersion")?.as_str()?;
    if !is_arm_expression(s) {
        return ApiVersion::parse(s);
    }
    let name = s.trim().strip_prefix("[parameters('")?.strip_suffix("')]")?;
    let default = params?.get(name)?.get("defaultValue")?.as_str()?;
    ApiVersion::parse(default)
}
