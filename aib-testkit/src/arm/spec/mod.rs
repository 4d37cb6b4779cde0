//! Microsoft's published ARM API specs (Swagger 2.0, `Azure/azure-rest-api-specs`) as the
//! judge of the ARM test server's traffic: the operation (method and path template) must
//! exist at the request's api-version, parameters and bodies must match their schemas, and the
//! server's own answers must use the status codes, headers and shapes the spec gives them.
//!
//! The specs are read from a folder laid out as Microsoft's repository (`specification/…`,
//! so relative `$ref`s resolve): `AIB_AZURE_SPECS`, else the `azure-rest-specs` folder of the
//! project's shared design files beside the workspace.

mod schema;

use schema::{At, Mode, Side};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// One spec file.
#[derive(Debug)]
pub(crate) struct Doc {
    path: PathBuf,
    json: Value,
}

/// An operation of a spec file.
#[derive(Debug)]
struct Operation {
    doc: usize,
    method: String,
    template: String,
    segments: Vec<Option<String>>,
}

/// The loaded specs; cheap to share.
#[derive(Debug)]
pub struct Specs {
    root: PathBuf,
    docs: Vec<Doc>,
    by_path: HashMap<PathBuf, usize>,
    ops: Vec<Operation>,
}

/// The operation a request matched, for checking the answer.
#[derive(Debug, Clone)]
pub struct Matched {
    op: usize,
    /// `operationId` (`VirtualMachines_Deallocate`).
    pub operation_id: String,
}

/// One breach of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `operationId`, or `METHOD path` when no operation matched.
    pub operation: String,
    /// Where: `request.body.properties.x`, `response(201).body.id`, `request.query.$expand`.
    pub at: String,
    /// The rule broken.
    pub rule: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {}", self.operation, self.at, self.rule)
    }
}

/// The environment variable naming the specs folder.
pub const SPECS_ENV: &str = "AIB_AZURE_SPECS";

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// Percent-decodes a URL path segment or query value (`+` is a space).
pub(crate) fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                Ok(x) => {
                    out.push(x);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Specs {
    /// The specs folder: `AIB_AZURE_SPECS`, else the shared design folder's copy.
    pub fn locate() -> Result<PathBuf, String> {
        let candidate = match std::env::var_os(SPECS_ENV) {
            Some(p) => PathBuf::from(p),
            None => normalize(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/azure-rest-specs")),
        };
        if candidate.join("specification").is_dir() {
            Ok(candidate)
        } else {
            Err(format!(
                "the ARM test server checks its traffic against Microsoft's API specs, but {} has no specification/ folder: \
                 set {SPECS_ENV} to a folder laid out as Azure/azure-rest-api-specs holding the spec files aib uses \
                 (shared/azure-rest-specs beside the workspace), or start the server with without_spec_check()",
                candidate.display()
            ))
        }
    }

    /// Loads (once per process and folder) every Swagger file under `root/specification`.
    pub fn load(root: &Path) -> std::io::Result<Arc<Specs>> {
        static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<Specs>>>> = OnceLock::new();
        let mut cache = CACHE.get_or_init(Mutex::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = cache.get(root) {
            return Ok(s.clone());
        }
        let specs = Arc::new(Self::read(root)?);
        cache.insert(root.to_path_buf(), specs.clone());
        Ok(specs)
    }

    fn read(root: &Path) -> std::io::Result<Specs> {
        let mut files = Vec::new();
        let mut dirs = vec![root.join("specification")];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d)? {
                let p = e?.path();
                if p.is_dir() {
                    if p.file_name().is_some_and(|n| n != "examples") {
                        dirs.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "json") {
                    files.push(p);
                }
            }
        }
        files.sort();
        let mut specs = Specs { root: root.to_path_buf(), docs: Vec::new(), by_path: HashMap::new(), ops: Vec::new() };
        for f in files {
            let json: Value = serde_json::from_slice(&std::fs::read(&f)?)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", f.display())))?;
            let path = normalize(&f);
            let i = specs.docs.len();
            for (template, item) in json["paths"].as_object().into_iter().flatten() {
                for (method, _) in item.as_object().into_iter().flatten().filter(|(m, _)| m.as_str() != "parameters") {
                    let segments =
                        template.trim_matches('/').split('/').map(|s| (!s.starts_with('{')).then(|| s.to_ascii_lowercase())).collect();
                    specs.ops.push(Operation { doc: i, method: method.to_ascii_uppercase(), template: template.clone(), segments });
                }
            }
            specs.by_path.insert(path.clone(), i);
            specs.docs.push(Doc { path, json });
        }
        Ok(specs)
    }

    /// Resolves `$ref` `r` (`file.json#/pointer`, `#/pointer`) met in `doc`.
    fn resolve<'a>(&'a self, doc: &'a Doc, r: &str) -> Option<At<'a>> {
        let (file, pointer) = r.split_once('#').unwrap_or((r, ""));
        let doc = if file.is_empty() {
            doc
        } else {
            let p = normalize(&doc.path.parent()?.join(file));
            &self.docs[*self.by_path.get(&p)?]
        };
        Some(At { schema: doc.json.pointer(pointer)?, doc })
    }

    fn version(&self, op: &Operation) -> &str {
        self.docs[op.doc].json["info"]["version"].as_str().unwrap_or_default()
    }

    fn object(&self, op: &Operation) -> &Value {
        &self.docs[op.doc].json["paths"][&op.template][op.method.to_ascii_lowercase()]
    }

    /// The operation's parameters (path-item ones first), `$ref`s resolved.
    fn parameters<'a>(&'a self, op: &'a Operation) -> Vec<At<'a>> {
        let doc = &self.docs[op.doc];
        let item = &doc.json["paths"][&op.template];
        let listed =
            item["parameters"].as_array().into_iter().flatten().chain(self.object(op)["parameters"].as_array().into_iter().flatten());
        listed.filter_map(|p| self.deref(At { schema: p, doc })).collect()
    }

    /// Checks a request; returns the operation it matched and the breaches found.
    pub fn check_request(
        &self,
        method: &str,
        path_and_query: &str,
        body: Option<&Value>,
        strict: bool,
    ) -> (Option<Matched>, Vec<Violation>) {
        let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
        let segs: Vec<String> = path.trim_matches('/').split('/').map(decode).collect();
        let query: Vec<(String, String)> = query
            .split('&')
            .filter(|q| !q.is_empty())
            .map(|q| q.split_once('=').unwrap_or((q, "")))
            .map(|(k, v)| (decode(k), decode(v)))
            .collect();
        let api = query.iter().find(|(k, _)| k == "api-version").map(|(_, v)| v.as_str()).unwrap_or_default();
        let here = |op: &Operation| {
            op.method == method
                && op.segments.len() == segs.len()
                && op.segments.iter().zip(&segs).all(|(t, s)| t.as_ref().is_none_or(|t| *t == s.to_ascii_lowercase()))
        };
        let literal = |op: &Operation| op.segments.iter().filter(|s| s.is_some()).count();
        let fail = |operation: String, at: &str, rule: String| vec![Violation { operation, at: at.into(), rule }];
        let candidates: Vec<usize> = (0..self.ops.len()).filter(|i| here(&self.ops[*i])).collect();
        let Some(best) = candidates.iter().copied().filter(|i| self.version(&self.ops[*i]) == api).max_by_key(|i| literal(&self.ops[*i]))
        else {
            let what = format!("{method} {path}");
            if candidates.is_empty() {
                return (None, fail(what, "request", "matches no operation of the specs".into()));
            }
            let mut versions: Vec<&str> = candidates.iter().map(|i| self.version(&self.ops[*i])).collect();
            versions.dedup();
            return (
                None,
                fail(
                    what,
                    "request.query.api-version",
                    format!("{api:?} is not a version of this operation in the specs ({})", versions.join(", ")),
                ),
            );
        };
        let op = &self.ops[best];
        let id = self.object(op)["operationId"].as_str().unwrap_or(&op.template).to_string();
        let mut found = Vec::new();
        let mode = Mode { side: Side::Request, strict };
        let params = self.parameters(op);
        for p in &params {
            let name = p.schema["name"].as_str().unwrap_or_default();
            let required = p.schema["required"].as_bool().unwrap_or(false);
            match p.schema["in"].as_str().unwrap_or_default() {
                "query" => match query.iter().find(|(k, _)| k == name) {
                    Some((_, v)) => self.check(*p, &Value::String(v.clone()), &format!("request.query.{name}"), mode, &mut found),
                    None if required => found.push((format!("request.query.{name}"), "is required".into())),
                    None => {}
                },
                "body" => match body {
                    Some(b) => self.check(At { schema: &p.schema["schema"], doc: p.doc }, b, "request.body", mode, &mut found),
                    None if required => found.push(("request.body".into(), "is required".into())),
                    None => {}
                },
                _ => {}
            }
        }
        if strict {
            for (k, _) in &query {
                if !params.iter().any(|p| p.schema["in"] == "query" && p.schema["name"] == k.as_str()) {
                    found.push((format!("request.query.{k}"), "is not a parameter of the operation".into()));
                }
            }
            if body.is_some() && !params.iter().any(|p| p.schema["in"] == "body") {
                found.push(("request.body".into(), "is sent, but the operation takes no body".into()));
            }
        }
        let v = found.into_iter().map(|(at, rule)| Violation { operation: id.clone(), at, rule }).collect();
        (Some(Matched { op: best, operation_id: id }), v)
    }

    /// Checks the server's answer to a matched request.
    pub fn check_response(
        &self,
        m: &Matched,
        status: u16,
        headers: &[(String, String)],
        body: Option<&Value>,
        strict: bool,
    ) -> Vec<Violation> {
        let op = &self.ops[m.op];
        let o = self.object(op);
        let doc = &self.docs[op.doc];
        let mut found = Vec::new();
        let code = status.to_string();
        let response = match o["responses"].get(&code) {
            Some(r) => Some(r),
            None if status >= 400 => o["responses"].get("default"),
            None => None,
        };
        // ARM's own front door answers 401, 404, 409, 429 and 5xx for any operation, whether the
        // provider's spec lists them or not: only a listed answer's shape can be judged.
        if response.is_none() && status >= 400 {
            return Vec::new();
        }
        let Some(response) = response else {
            let listed: Vec<&String> = o["responses"].as_object().map(|r| r.keys().collect()).unwrap_or_default();
            found.push((format!("response({status})"), format!("is not a status the spec lists ({listed:?})")));
            return self.named(m, found);
        };
        let has = |h: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(h));
        if status == 202 && o["x-ms-long-running-operation"] == true {
            if !(has("location") || has("azure-asyncoperation")) {
                found.push((
                    format!("response({status}).headers"),
                    "a long-running operation's 202 names a Location or Azure-AsyncOperation".into(),
                ));
            }
            if o["x-ms-long-running-operation-options"]["final-state-via"] == "location" && !has("location") {
                found.push((
                    format!("response({status}).headers.Location"),
                    "is required: the result is read there (final-state-via: location)".into(),
                ));
            }
        }
        let mode = Mode { side: Side::Response, strict };
        match (response.get("schema"), body) {
            (Some(schema), Some(b)) => {
                let at =
                    self.deref(At { schema: response, doc }).map(|r| At { schema: r.schema.get("schema").unwrap_or(schema), doc: r.doc });
                if let Some(at) = at {
                    self.check(at, b, &format!("response({status}).body"), mode, &mut found);
                }
            }
            (None, Some(b)) if strict && !b.as_object().is_some_and(|o| o.is_empty()) => {
                found.push((format!("response({status}).body"), "the spec gives this answer no body".into()));
            }
            _ => {}
        }
        self.named(m, found)
    }

    fn named(&self, m: &Matched, found: Vec<(String, String)>) -> Vec<Violation> {
        found.into_iter().map(|(at, rule)| Violation { operation: m.operation_id.clone(), at, rule }).collect()
    }

    /// Whether the operation's spec describes its error answers (a `default` response).
    pub fn lists_errors(&self, m: &Matched) -> bool {
        self.object(&self.ops[m.op])["responses"].get("default").is_some()
    }

    /// The specs folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The spec file that defines `m`.
    pub fn file_of(&self, m: &Matched) -> &Path {
        &self.docs[self.ops[m.op].doc].path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn specs() -> Arc<Specs> {
        Specs::load(&Specs::locate().unwrap()).unwrap()
    }

    #[test]
    fn operations_match_by_template_and_version() {
        let s = specs();
        let vm = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm";
        let (m, v) = s.check_request("POST", &format!("{vm}/deallocate?api-version=2024-07-01"), None, true);
        assert_eq!(m.unwrap().operation_id, "VirtualMachines_Deallocate");
        assert!(v.is_empty(), "{v:?}");
        let (m, v) = s.check_request("POST", &format!("{vm}/deallocate?api-version=2024-03-01"), None, true);
        assert!(m.is_none() && v[0].at == "request.query.api-version", "{v:?}");
        let (_, v) = s.check_request("POST", &format!("{vm}/fly?api-version=2024-07-01"), None, true);
        assert!(v[0].rule.contains("no operation"), "{v:?}");
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let s = specs();
        let rg = "/subscriptions/s/resourcegroups/rg?api-version=2021-04-01";
        let (_, v) = s.check_request("PUT", rg, Some(&json!({"location": "westus", "tags": {"a": "b"}})), true);
        assert!(v.is_empty(), "{v:?}");
        let (_, v) = s.check_request("PUT", rg, Some(&json!({"tags": {"a": 1}, "colour": "red", "id": "x"})), true);
        let at: Vec<&str> = v.iter().map(|v| v.at.as_str()).collect();
        for want in ["request.body.location", "request.body.tags.a", "request.body.colour", "request.body.id"] {
            assert!(at.contains(&want), "{want} in {v:?}");
        }
        let disk = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d/beginGetAccess?api-version=2024-03-02";
        let (m, v) = s.check_request("POST", disk, Some(&json!({"access": "Read", "durationInSeconds": "sixty"})), true);
        assert!(v.iter().any(|v| v.at == "request.body.durationInSeconds"), "{v:?}");
        let m = m.unwrap();
        let v = s.check_response(&m, 202, &[("Azure-AsyncOperation".into(), "x".into())], None, true);
        assert!(v.iter().any(|v| v.at.ends_with("Location")), "final-state-via: location needs a Location: {v:?}");
        assert!(s.check_response(&m, 201, &[], None, true)[0].rule.contains("not a status"));
    }
}
