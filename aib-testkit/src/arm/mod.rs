//! An Azure Resource Manager test server on 127.0.0.1: resource groups, resources of any
//! type with ARM's asynchronous operations (`Azure-AsyncOperation` and `Location` polling,
//! `provisioningState`), list collections, marketplace image versions, errors in ARM's
//! `{error:{code,message}}` form, and fault injection (429 storms with `Retry-After`, 500s,
//! failing creates such as `AllocationFailed`, failing deletes). Virtual machines are backed by
//! real machines from a [`GuestHost`] (see [`crate::guest`]); `GET /subscriptions/{id}/resources`
//! and `…/resourcegroups` list what is live; `POST /{tenant}/oauth2/v2.0/token` answers Entra
//! ID's client-credential flow, so the ordinary client-secret credential works against it.

#[cfg(feature = "azure")]
mod blob_front;
mod compute;
mod ops;
mod rules;
pub mod spec;
pub mod storage;
mod traffic;

use crate::guest::{Guest, GuestHost};
use crate::http::{HttpServer, Request, Response};
use ops::{Op, OpKind, Pending};
use serde_json::{Value, json};
use spec::{Specs, Violation};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use storage::DiskStore;

/// A fault answered instead of the next request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArmFault {
    /// `429 Too Many Requests` with `Retry-After: secs`.
    Throttle {
        /// Seconds in `Retry-After`.
        retry_after_secs: u64,
    },
    /// `500` with `InternalServerError`.
    ServerError,
    /// `503` with no `Retry-After`.
    Unavailable,
    /// `409 AnotherOperationInProgress`: an operation on the same resource has not ended.
    Conflict,
}

#[derive(Default)]
struct State {
    groups: BTreeMap<String, Value>,
    resources: BTreeMap<String, Value>,
    ops: HashMap<String, Op>,
    marketplace: Vec<MarketplaceImage>,
    faults: VecDeque<ArmFault>,
    create_failures: HashMap<String, (String, String)>,
    polls: u32,
    requests: Vec<String>,
    unauthenticated: usize,
    delete_failures: HashMap<String, u32>,
    guests: Option<Arc<dyn GuestHost>>,
    windows_guests: Option<Arc<dyn GuestHost>>,
    running: HashMap<String, Box<dyn Guest>>,
    power: HashMap<String, &'static str>,
    generalized: HashSet<String>,
    next_ip: u32,
    tokens: usize,
    disks: Option<Arc<dyn DiskStore>>,
    agreements: HashSet<String>,
    results_in_status: bool,
    spec: SpecCheck,
    /// Disks with an active access SAS (grant access not yet ended).
    exporting: HashSet<String>,
    /// Images and gallery versions being created, by the VM they are made from.
    capturing: HashMap<String, String>,
    /// How long a deleted NIC still holds its subnet, public IP and NSG.
    settle: std::time::Duration,
    /// Network resources still held by a NIC being deleted, until when.
    settling: HashMap<String, std::time::Instant>,
    /// Sizes the regions do not offer, and their cores quotas.
    capacity: rules::Capacity,
}

/// How the server judges its traffic by Microsoft's specs.
#[derive(Debug, Default)]
struct SpecCheck {
    /// The loaded specs, or why they could not be.
    specs: Option<Result<Arc<Specs>, String>>,
    off: bool,
    lenient: bool,
    violations: Vec<Violation>,
    traffic: Option<std::path::PathBuf>,
    recorded: usize,
}

/// A marketplace image version: (location, publisher, offer, sku, version) and the
/// properties its GET adds (`architecture`, `features`, `plan`, `hyperVGeneration`).
type MarketplaceImage = (String, String, String, String, String, Value);

/// A running ARM test server; stops when dropped.
pub struct ArmServer {
    http: HttpServer,
    state: Arc<Mutex<State>>,
}

/// When set, every ARM exchange is written there as one `oav validate-traffic` payload file.
pub const TRAFFIC_ENV: &str = "AIB_ARM_TRAFFIC_DIR";

impl Drop for ArmServer {
    fn drop(&mut self) {
        let v = self.with(|s| std::mem::take(&mut s.spec.violations));
        if !v.is_empty() && !std::thread::panicking() {
            let shown: Vec<String> = v.iter().map(|v| format!("  {v}")).collect();
            panic!("the ARM test server saw traffic Microsoft's API specs do not allow:\n{}", shown.join("\n"));
        }
    }
}

impl fmt::Debug for ArmServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmServer").field("url", &self.http.url()).finish_non_exhaustive()
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::new(status, json!({"error": {"code": code, "message": message}}).to_string())
        .header("Content-Type", "application/json; charset=utf-8")
        .header("x-ms-error-code", code)
}

fn ok(status: u16, v: &Value) -> Response {
    Response::new(status, v.to_string()).header("Content-Type", "application/json; charset=utf-8")
}

/// `(type segments, name segments)` of a resource path below `/providers/NS/`.
fn split_path(path: &str) -> (String, Vec<String>) {
    let (p, _) = path.split_once('?').unwrap_or((path, ""));
    (p.trim_end_matches('/').to_string(), p.trim_matches('/').split('/').map(str::to_string).collect())
}

/// `$filter=tagName eq 'k' and tagValue eq 'v'` (Resources_List), percent-decoded.
fn tag_filter(path: &str) -> Option<(String, String)> {
    let f = spec::decode(&query(path, "$filter").or_else(|| query(path, "%24filter"))?);
    let quoted = |s: &str, key: &str| -> Option<String> {
        let rest = s.split_once(&format!("{key} eq '"))?.1;
        Some(rest.split_once('\'')?.0.to_string())
    };
    Some((quoted(&f, "tagName")?, quoted(&f, "tagValue")?))
}

fn query(path: &str, key: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| kv.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
}

impl ArmServer {
    /// Starts an empty server on a free port; operations complete after one poll.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on(0).await
    }

    /// Starts an empty server on 127.0.0.1:`port`.
    pub async fn start_on(port: u16) -> std::io::Result<Self> {
        Self::start_with(port, None).await
    }

    /// Starts a server whose virtual machines are backed by guests of `host` (port 0: a free one).
    pub async fn start_with(port: u16, host: Option<Arc<dyn GuestHost>>) -> std::io::Result<Self> {
        Self::start_with_guests(port, host, None).await
    }

    /// Starts a server whose Linux VMs are backed by guests of `linux` and whose Windows VMs
    /// (an `osProfile.windowsConfiguration`) by guests of `windows`.
    pub async fn start_with_guests(
        port: u16,
        linux: Option<Arc<dyn GuestHost>>,
        windows: Option<Arc<dyn GuestHost>>,
    ) -> std::io::Result<Self> {
        let specs = Specs::locate().and_then(|root| Specs::load(&root).map_err(|e| e.to_string()));
        let traffic = std::env::var_os(TRAFFIC_ENV).map(std::path::PathBuf::from);
        let spec = SpecCheck { specs: Some(specs), traffic, ..Default::default() };
        let settle = std::time::Duration::from_millis(300);
        let state = Arc::new(Mutex::new(State { polls: 1, guests: linux, windows_guests: windows, spec, settle, ..Default::default() }));
        let st = state.clone();
        let http = HttpServer::start_on(port, move |req| {
            let base = req.headers.get("host").map(|h| format!("http://{h}")).unwrap_or_default();
            let r = Self::exchange(&st, &base, req);
            async move { r }
        })
        .await?;
        Ok(ArmServer { http, state })
    }

    /// The endpoint (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        self.http.url()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s)
    }

    /// Answers the next `n` requests with `fault`.
    pub fn inject(&self, fault: ArmFault, n: usize) {
        self.with(|s| s.faults.extend(std::iter::repeat_n(fault, n)));
    }

    /// Creates of `resource_type` (`Microsoft.Compute/virtualMachines`) fail with `code`.
    pub fn fail_creates(&self, resource_type: &str, code: &str, message: &str) {
        self.with(|s| s.create_failures.insert(resource_type.to_ascii_lowercase(), (code.into(), message.into())));
    }

    /// Keeps storage accounts and exported disks in `store` (an Azurite).
    pub fn with_disk_store(self, store: Arc<dyn DiskStore>) -> Self {
        self.with(|s| s.disks = Some(store));
        self
    }

    /// The port the VMs' guests listen on, when the server has a guest host.
    pub fn guest_port(&self) -> Option<u16> {
        self.with(|s| s.guests.as_ref().map(|g| g.port()))
    }

    /// The port the Windows VMs' WinRM HTTPS listeners use, when the server has Windows guests.
    pub fn windows_guest_port(&self) -> Option<u16> {
        self.with(|s| s.windows_guests.as_ref().map(|g| g.port()))
    }

    /// VMs with a running guest.
    pub fn running_guests(&self) -> usize {
        self.with(|s| s.running.len())
    }

    /// The next `n` deletes of `resource_type` fail (the operation ends `Failed`).
    pub fn fail_deletes(&self, resource_type: &str, n: u32) {
        self.with(|s| s.delete_failures.insert(resource_type.to_ascii_lowercase(), n));
    }

    /// Accepts the marketplace terms of `publisher`/`offer`/`plan` in every subscription.
    pub fn accept_terms(&self, publisher: &str, offer: &str, plan: &str) {
        self.with(|s| s.agreements.insert(format!("{publisher}/{offer}/{plan}").to_ascii_lowercase()));
    }

    /// Injected faults and failing deletes not yet answered.
    pub fn pending_faults(&self) -> usize {
        self.with(|s| s.faults.len() + s.delete_failures.values().map(|n| *n as usize).sum::<usize>())
    }

    /// Tokens handed out by the token endpoint.
    pub fn tokens_issued(&self) -> usize {
        self.with(|s| s.tokens)
    }

    /// Ids of every resource group.
    pub fn group_ids(&self) -> Vec<String> {
        self.with(|s| s.groups.values().filter_map(|v| v["id"].as_str().map(str::to_string)).collect())
    }

    /// Puts an action's result in its operation-status body too (`properties.output`), as the
    /// Compute provider does today without a spec saying so; by default the result is only at
    /// the operation's `Location`, where the spec puts it.
    pub fn with_results_in_status_bodies(self) -> Self {
        self.with(|s| s.results_in_status = true);
        self
    }

    /// Stops judging the traffic by the specs (for servers playing resource types the
    /// vendored specs do not cover).
    pub fn without_spec_check(self) -> Self {
        self.with(|s| s.spec.off = true);
        self
    }

    /// Judges by the specs, but lets unknown properties, query parameters and values of
    /// extensible enums pass (what Swagger itself allows).
    pub fn lenient_spec_check(self) -> Self {
        self.with(|s| s.spec.lenient = true);
        self
    }

    /// What the specs did not allow so far; the server panics when dropped with any left.
    pub fn spec_violations(&self) -> Vec<Violation> {
        self.with(|s| s.spec.violations.clone())
    }

    /// Takes the violations seen so far (a test that provokes them on purpose).
    pub fn take_spec_violations(&self) -> Vec<Violation> {
        self.with(|s| std::mem::take(&mut s.spec.violations))
    }

    /// How long a deleted network interface still holds its subnet, public IP and NSG, which
    /// ARM then refuses to delete (`InUseSubnetCannotBeDeleted`, …); default 300 ms, zero for
    /// none.
    pub fn set_network_settle_time(&self, t: std::time::Duration) {
        self.with(|s| s.settle = t);
    }

    /// Long-running operations take `n` polls to finish: new ones, and those in flight from
    /// now on (a test can hold every operation, then let them go).
    pub fn set_polls(&self, n: u32) {
        self.with(|s| {
            s.polls = n.max(1);
            for op in s.ops.values_mut().filter(|o| o.polls_left > 0) {
                op.polls_left = s.polls;
            }
        });
    }

    /// Adds a marketplace image version.
    pub fn add_marketplace_image(&self, location: &str, publisher: &str, offer: &str, sku: &str, version: &str) {
        self.add_marketplace_image_with(location, publisher, offer, sku, version, json!({}));
    }

    /// Adds a marketplace image version whose GET also answers `properties` (such as
    /// `{"architecture": "Arm64"}`, `{"features": [{"name": "SecurityType", "value": "TrustedLaunch"}]}`
    /// or a `plan`); VM creates from it follow ARM's rules for them.
    pub fn add_marketplace_image_with(&self, location: &str, publisher: &str, offer: &str, sku: &str, version: &str, properties: Value) {
        self.with(|s| s.marketplace.push((location.into(), publisher.into(), offer.into(), sku.into(), version.into(), properties)));
    }

    /// Puts a resource as if it existed (its id is its key).
    pub fn put_resource(&self, id: &str, body: Value) {
        let mut body = body;
        body["id"] = id.into();
        self.with(|s| s.resources.insert(id.to_ascii_lowercase(), body));
    }

    /// Disks with an active read SAS (`beginGetAccess` without its `endGetAccess`).
    pub fn active_disk_access(&self) -> Vec<String> {
        self.with(|s| s.exporting.iter().cloned().collect())
    }

    /// Removes a resource as if someone deleted it behind the client's back; returns it.
    pub fn take_resource(&self, id: &str) -> Option<Value> {
        self.with(|s| s.resources.remove(&id.to_ascii_lowercase()))
    }

    /// Marks a VM (put with [`ArmServer::put_resource`]) deallocated and generalized.
    pub fn mark_generalized(&self, vm_id: &str) {
        let k = vm_id.to_ascii_lowercase();
        self.with(|s| {
            s.power.insert(k.clone(), "deallocated");
            s.generalized.insert(k);
        });
    }

    /// A resource, if it exists.
    pub fn resource(&self, id: &str) -> Option<Value> {
        self.with(|s| s.resources.get(&id.to_ascii_lowercase()).cloned())
    }

    /// Ids of every resource.
    pub fn resource_ids(&self) -> Vec<String> {
        self.with(|s| s.resources.values().filter_map(|v| v["id"].as_str().map(str::to_string)).collect())
    }

    /// Every request so far, `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.with(|s| s.requests.clone())
    }

    /// Requests refused for a missing bearer token.
    pub fn unauthenticated(&self) -> usize {
        self.with(|s| s.unauthenticated)
    }

    /// One exchange: HTTP.sys's length rule, the spec check of the request, the answer, the
    /// spec check of the answer, and its record for `oav validate-traffic`.
    fn exchange(state: &Mutex<State>, base: &str, req: Request) -> Response {
        // ARM's front end is HTTP.sys, which refuses a body-carrying method with no length.
        if matches!(req.method.as_str(), "POST" | "PUT" | "PATCH")
            && !req.headers.contains_key("content-length")
            && !req.headers.get("transfer-encoding").is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
        {
            return Response::new(
                411,
                "<h2>Length Required</h2>\r\n<hr><p>HTTP Error 411. The request must be chunked or have a content length.</p>\r\n",
            )
            .header("Content-Type", "text/html; charset=us-ascii")
            .header("Server", "Microsoft-HTTPAPI/2.0");
        }
        let arm = req.path.starts_with("/subscriptions/") && !req.path.to_ascii_lowercase().contains("/providers/microsoft.testkit/");
        let checked = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            match (&s.spec.specs, arm && !s.spec.off) {
                (Some(Ok(specs)), true) => {
                    let specs = specs.clone();
                    let body: Option<Value> = (!req.body.is_empty()).then(|| serde_json::from_slice(&req.body).unwrap_or(Value::Null));
                    let (m, v) = specs.check_request(&req.method, &req.path, body.as_ref(), !s.spec.lenient);
                    if !v.is_empty() {
                        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
                        s.spec.violations.extend(v);
                        return error(
                            400,
                            "InvalidRequestContent",
                            &format!("The request does not match the API spec: {}", shown.join("; ")),
                        );
                    }
                    m.map(|m| (specs, m))
                }
                (Some(Err(why)), true) => {
                    let why = why.clone();
                    s.spec.violations.push(Violation { operation: "spec check".into(), at: "setup".into(), rule: why.clone() });
                    return error(500, "TestServerSetup", &why);
                }
                _ => None,
            }
        };
        let (method, path, req_body) = (req.method.clone(), req.path.clone(), req.body.clone());
        let response = Self::handle(state, base, req);
        if let Some((specs, m)) = checked {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            let body: Option<Value> = (!response.body.is_empty()).then(|| serde_json::from_slice(&response.body).unwrap_or(Value::Null));
            let v = specs.check_response(&m, response.status, &response.headers, body.as_ref(), !s.spec.lenient);
            s.spec.violations.extend(v);
            let listed = response.status < 400 || specs.lists_errors(&m);
            if let Some(dir) = s.spec.traffic.clone().filter(|_| listed) {
                s.spec.recorded += 1;
                let n = s.spec.recorded;
                traffic::record(&dir, base, n, &m, &specs, (&method, &path, &req_body), &response);
            }
        }
        response
    }

    fn handle(state: &Mutex<State>, base: &str, req: Request) -> Response {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.requests.push(format!("{} {}", req.method, req.path.split('?').next().unwrap_or_default()));
        // Entra ID's token endpoint (client credentials): `/{tenant}/oauth2/v2.0/token`.
        if req.method == "POST" && req.path.split('?').next().unwrap_or_default().ends_with("/oauth2/v2.0/token") {
            let form = String::from_utf8_lossy(&req.body).to_string();
            let has = |k: &str| form.split('&').any(|kv| kv.split_once('=').is_some_and(|(a, b)| a == k && !b.is_empty()));
            if !(has("client_id") && (has("client_secret") || has("client_assertion"))) {
                return error(400, "invalid_client", "AADSTS7000216: client_id and client_secret are required.");
            }
            s.tokens += 1;
            let token = format!("testkit-{}", uuid::Uuid::new_v4().simple());
            return ok(200, &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}));
        }
        if !req.headers.get("authorization").is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7) {
            s.unauthenticated += 1;
            return error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is missing.");
        }
        if let Some(f) = s.faults.pop_front() {
            return match f {
                ArmFault::Throttle { retry_after_secs } => {
                    error(429, "TooManyRequests", "The request is being throttled.").header("Retry-After", &retry_after_secs.to_string())
                }
                ArmFault::ServerError => error(500, "InternalServerError", "An internal server error occurred."),
                ArmFault::Unavailable => error(503, "ServiceUnavailable", "The service is unavailable."),
                ArmFault::Conflict => error(
                    409,
                    "AnotherOperationInProgress",
                    "Operation on the resource failed because another operation is in progress; retry later.",
                ),
            };
        }
        if query(&req.path, "api-version").is_none() {
            return error(
                400,
                "MissingApiVersionParameter",
                "The api-version query parameter (?api-version=) is required for all requests.",
            );
        }
        let (path, seg) = split_path(&req.path);
        let key = path.to_ascii_lowercase();
        if let Some(r) = compute::check_api_version(&key, &query(&req.path, "api-version").unwrap_or_default()) {
            return r;
        }
        let lower: Vec<String> = seg.iter().map(|x| x.to_ascii_lowercase()).collect();
        let sub = seg.get(1).cloned().unwrap_or_default();
        if lower.first().map(String::as_str) != Some("subscriptions") || seg.len() < 2 {
            return error(404, "InvalidResourceNamespace", "unknown path");
        }
        // Operation status: Azure-AsyncOperation (body status) and Location (202 until done).
        if lower.len() == 6 && lower[2] == "providers" && lower[3] == "microsoft.testkit" {
            return ops::status(&mut s, &lower[4], &seg[5]);
        }
        // Marketplace image versions.
        if lower.len() >= 14
            && lower[2] == "providers"
            && lower[4] == "locations"
            && lower[6] == "publishers"
            && lower[8] == "artifacttypes"
            && lower[10] == "offers"
            && lower[12] == "skus"
        {
            let (loc, publisher, offer, sku) = (&lower[5], &lower[7], &lower[11], &lower[13]);
            let versions: Vec<&MarketplaceImage> = s
                .marketplace
                .iter()
                .filter(|m| {
                    m.0.eq_ignore_ascii_case(loc)
                        && m.1.eq_ignore_ascii_case(publisher)
                        && m.2.eq_ignore_ascii_case(offer)
                        && m.3.eq_ignore_ascii_case(sku)
                })
                .collect();
            let item = |m: &MarketplaceImage| json!({"name": m.4, "location": m.0, "id": format!("/Subscriptions/{sub}/Providers/Microsoft.Compute/Locations/{}/Publishers/{}/ArtifactTypes/VMImage/Offers/{}/Skus/{}/Versions/{}", m.0, m.1, m.2, m.3, m.4)});
            return match lower.get(15) {
                None if lower.len() == 15 => ok(200, &Value::Array(versions.iter().map(|m| item(m)).collect())),
                Some(v) => match versions.iter().find(|m| m.4.eq_ignore_ascii_case(v)) {
                    Some(m) => {
                        let mut body = item(m);
                        let os = if publisher.contains("windows") { "Windows" } else { "Linux" };
                        body["properties"] = json!({"hyperVGeneration": if sku.contains("gen2") { "V2" } else { "V1" }, "osDiskImage": {"operatingSystem": os}});
                        if let (Some(extra), Some(into)) = (m.5.as_object(), body["properties"].as_object_mut()) {
                            into.extend(extra.clone());
                        }
                        ok(200, &body)
                    }
                    None => error(404, "ImageVersionNotFound", &format!("Artifact: VMImage was not found: {v}")),
                },
                None => error(404, "NotFound", "unknown marketplace path"),
            };
        }
        // Marketplace terms: `…/providers/Microsoft.MarketplaceOrdering/offerTypes/virtualmachine/
        // publishers/{p}/offers/{o}/plans/{n}/agreements/current`.
        if lower.len() == 14 && lower[3] == "microsoft.marketplaceordering" && lower[12] == "agreements" {
            let k = format!("{}/{}/{}", lower[7], lower[9], lower[11]);
            if req.method == "PUT" {
                let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                if body["properties"]["accepted"].as_bool() == Some(true) {
                    s.agreements.insert(k.clone());
                } else {
                    s.agreements.remove(&k);
                }
            }
            let accepted = s.agreements.contains(&k);
            return ok(
                200,
                &json!({"id": path, "name": "current", "type": "Microsoft.MarketplaceOrdering/offertypes",
                        "properties": {"publisher": seg[7], "product": seg[9], "plan": seg[11], "accepted": accepted}}),
            );
        }
        // What is live: every group, every resource (of a subscription or of a group).
        if req.method == "GET" && lower.len() == 3 && (lower[2] == "resourcegroups" || lower[2] == "resources") {
            let value: Vec<Value> = if lower[2] == "resourcegroups" {
                s.groups.values().cloned().collect()
            } else {
                let tag = tag_filter(&req.path);
                // Resources_List gives a resource's properties only when asked (`$expand`).
                let expand = query(&req.path, "$expand").is_some_and(|e| e.contains("properties"));
                s.resources
                    .values()
                    .filter(|v| !v["type"].as_str().unwrap_or_default().contains("/subnets"))
                    .filter(|v| tag.as_ref().is_none_or(|(k, val)| v["tags"][k.as_str()].as_str() == Some(val.as_str())))
                    .map(|v| {
                        let mut v = v.clone();
                        if let (false, Some(o)) = (expand, v.as_object_mut()) {
                            o.remove("properties");
                        }
                        v
                    })
                    .collect()
            };
            return ok(200, &json!({"value": value}));
        }
        if req.method == "GET" && lower.len() == 5 && lower[2] == "resourcegroups" && lower[4] == "resources" {
            let prefix = format!("/subscriptions/{}/resourcegroups/{}/", lower[1], lower[3]);
            if !s.groups.contains_key(prefix.trim_end_matches('/')) {
                return error(404, "ResourceGroupNotFound", &format!("Resource group '{}' could not be found.", seg[3]));
            }
            let value: Vec<Value> = s
                .resources
                .iter()
                .filter(|(k, v)| k.starts_with(&prefix) && !v["type"].as_str().unwrap_or_default().contains("/subnets"))
                .map(|(_, v)| v.clone())
                .collect();
            return ok(200, &json!({"value": value}));
        }
        // Resource groups.
        if lower.len() == 4 && lower[2] == "resourcegroups" {
            return match req.method.as_str() {
                "PUT" => {
                    let body: Value = serde_json::from_slice(&req.body).unwrap_or(json!({}));
                    let Some(loc) = body["location"].as_str() else {
                        return error(400, "LocationRequired", "The location property is required for this definition.");
                    };
                    let v = json!({"id": path, "name": seg[3], "type": "Microsoft.Resources/resourceGroups", "location": loc, "tags": body.get("tags").cloned().unwrap_or(json!({})), "properties": {"provisioningState": "Succeeded"}});
                    let existed = s.groups.insert(key, v.clone()).is_some();
                    ok(if existed { 200 } else { 201 }, &v)
                }
                // ResourceGroups_CheckExistence: 204 or 404, no body.
                "HEAD" => Response::new(if s.groups.contains_key(&key) { 204 } else { 404 }, ""),
                "GET" => match s.groups.get(&key) {
                    Some(v) => ok(200, v),
                    None => error(404, "ResourceGroupNotFound", &format!("Resource group '{}' could not be found.", seg[3])),
                },
                "DELETE" => {
                    if !s.groups.contains_key(&key) {
                        return error(404, "ResourceGroupNotFound", &format!("Resource group '{}' could not be found.", seg[3]));
                    }
                    let (_, location) = ops::new_op(&mut s, base, &sub, OpKind::Delete(key), None);
                    Response::new(202, "").header("Location", &location).header("Retry-After", "0")
                }
                _ => error(405, "MethodNotAllowed", "method not allowed"),
            };
        }
        if lower.len() < 7 || lower[2] != "resourcegroups" || lower[4] != "providers" {
            return error(404, "NotFound", &format!("no route for {path}"));
        }
        let rg_key = format!("/subscriptions/{}/resourcegroups/{}", lower[1], lower[3]);
        if !s.groups.contains_key(&rg_key) {
            return error(404, "ResourceGroupNotFound", &format!("Resource group '{}' could not be found.", seg[3]));
        }
        let typed = &seg[6..];
        // Collections have an odd number of segments after the namespace.
        if typed.len() % 2 == 1 {
            if req.method != "GET" {
                // An action on a resource: POST …/{name}/{action}.
                if req.method == "POST" && typed.len() >= 3 {
                    let target = key[..key.rfind('/').unwrap_or(0)].to_string();
                    if !s.resources.contains_key(&target) {
                        return error(404, "ResourceNotFound", &format!("The Resource '{target}' was not found."));
                    }
                    let action = lower.last().cloned().unwrap_or_default();
                    let mut running = None;
                    if s.resources[&target]["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(compute::VM)) {
                        let r = if action == "runcommand" {
                            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                            compute::run_command(&s, &target, &body).map(|p| running = Some(p))
                        } else {
                            compute::vm_action(&mut s, &target, &action)
                        };
                        if let Err(r) = r {
                            return r;
                        }
                    }
                    // VirtualMachines_Generalize is synchronous: `200 {}`.
                    if action == "generalize" {
                        return ok(200, &json!({}));
                    }
                    if let Err(r) = rules::disk_action(&mut s, &target, &action) {
                        return r;
                    }
                    let ttype = s.resources[&target]["type"].as_str().unwrap_or_default().to_ascii_lowercase();
                    if ttype == "microsoft.storage/storageaccounts" && action == "listkeys" {
                        let Some(d) = &s.disks else { return error(409, "StorageUnavailable", "the test server has no storage") };
                        return ok(200, &json!({"keys": [{"keyName": "key1", "value": d.account_key(&target), "permissions": "Full"}]}));
                    }
                    let kind = match (&s.disks, action.as_str()) {
                        (Some(d), "begingetaccess") => {
                            let size = s.resources[&target]["properties"]["diskSizeGB"].as_u64().unwrap_or(30) << 30;
                            let slot: Pending = Arc::default();
                            let (fut, out) = (d.export(s.resources[&target]["id"].as_str().unwrap_or_default(), size), slot.clone());
                            tokio::spawn(async move {
                                let r = fut
                                    .await
                                    .map(|sas| json!({"accessSAS": sas}))
                                    .map_err(|e| ("InternalDiskManagementError".to_string(), format!("exporting the disk failed: {e}")));
                                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                            });
                            OpKind::Pending(slot)
                        }
                        (None, "begingetaccess") => OpKind::Action {
                            result: Some(
                                json!({"accessSAS": format!("{base}/sas/{}?sig=testkit", target.rsplit('/').next().unwrap_or_default())}),
                            ),
                        },
                        _ => match running {
                            Some(p) => OpKind::Pending(p),
                            None => OpKind::Action { result: None },
                        },
                    };
                    let (async_url, location) = ops::new_op(&mut s, base, &sub, kind, None);
                    return Response::new(202, "")
                        .header("Azure-AsyncOperation", &async_url)
                        .header("Location", &location)
                        .header("Retry-After", "0");
                }
                return error(405, "MethodNotAllowed", "method not allowed on a collection");
            }
            if lower.last().map(String::as_str) == Some("instanceview") {
                let target = key[..key.rfind('/').unwrap_or(0)].to_string();
                return match compute::instance_view(&s, &target) {
                    Some(v) => ok(200, &v),
                    None => error(404, "ResourceNotFound", &format!("The Resource '{target}' was not found.")),
                };
            }
            let prefix = format!("{key}/");
            let value: Vec<Value> = s
                .resources
                .iter()
                .filter(|(k, _)| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
                .map(|(_, v)| v.clone())
                .collect();
            return ok(200, &json!({"value": value}));
        }
        let rtype = format!("{}/{}", seg[5], typed.iter().step_by(2).cloned().collect::<Vec<_>>().join("/"));
        match req.method.as_str() {
            "GET" => match compute::on_get(&mut s, &key) {
                Some(v) => ok(200, v),
                None => error(
                    404,
                    "ResourceNotFound",
                    &format!(
                        "The Resource '{rtype}/{}' under resource group '{}' was not found.",
                        seg.last().cloned().unwrap_or_default(),
                        seg[3]
                    ),
                ),
            },
            "PUT" => {
                let Ok(mut body) = serde_json::from_slice::<Value>(&req.body) else {
                    return error(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.");
                };
                if !body.is_object() {
                    return error(400, "InvalidRequestContent", "expected a JSON object");
                }
                body["id"] = path.clone().into();
                body["name"] = seg.last().cloned().unwrap_or_default().into();
                body["type"] = rtype.clone().into();
                if !body["properties"].is_object() {
                    body["properties"] = json!({});
                }
                // The network provider's enum has no `Creating`: its resources are `Updating`.
                let busy = if seg[5].eq_ignore_ascii_case("Microsoft.Network") { "Updating" } else { "Creating" };
                body["properties"]["provisioningState"] = busy.into();
                if let Err(r) = rules::check_put(&s, &rtype.to_ascii_lowercase(), &body) {
                    return r;
                }
                rules::capture_started(&mut s, &key, &body);
                if let Err(r) = compute::on_put(&mut s, &rtype.to_ascii_lowercase(), &key, &path, &mut body) {
                    return r;
                }
                let failure = s.create_failures.get(&rtype.to_ascii_lowercase()).cloned();
                let existed = s.resources.insert(key.clone(), body.clone()).is_some();
                let (async_url, location) = ops::new_op(&mut s, base, &sub, OpKind::Create(key), failure);
                // StorageAccounts_Create answers `202` with only a `Location` (its spec lists 200
                // and 202, no 201 and no Azure-AsyncOperation).
                if rtype.eq_ignore_ascii_case("Microsoft.Storage/storageAccounts") {
                    return Response::new(202, "").header("Location", &location).header("Retry-After", "0");
                }
                // Disks_CreateOrUpdate lists 200 and 202.
                if rtype.eq_ignore_ascii_case("Microsoft.Compute/disks") {
                    return Response::new(202, "")
                        .header("Azure-AsyncOperation", &async_url)
                        .header("Location", &location)
                        .header("Retry-After", "0");
                }
                ok(if existed { 200 } else { 201 }, &body).header("Azure-AsyncOperation", &async_url).header("Retry-After", "0")
            }
            "PATCH" => {
                let Ok(patch) = serde_json::from_slice::<Value>(&req.body) else {
                    return error(400, "InvalidRequestContent", "The request content was invalid and could not be deserialized.");
                };
                let Some(r) = s.resources.get_mut(&key) else {
                    return error(
                        404,
                        "ResourceNotFound",
                        &format!("The Resource '{rtype}' under resource group '{}' was not found.", seg[3]),
                    );
                };
                if let Some(tags) = patch.get("tags") {
                    r["tags"] = tags.clone();
                }
                if let (Some(p), Some(into)) = (patch["properties"].as_object(), r["properties"].as_object_mut()) {
                    into.extend(p.clone());
                }
                ok(200, &r.clone())
            }
            "DELETE" => {
                if !s.resources.contains_key(&key) {
                    return Response::new(204, "");
                }
                let lt = rtype.to_ascii_lowercase();
                if let Err(r) = compute::on_delete(&s, &lt, &key) {
                    return r;
                }
                let failure = match s.delete_failures.get_mut(&lt) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        Some(("InternalOperationError".to_string(), format!("Deleting {path} failed; retry the operation.")))
                    }
                    _ => None,
                };
                let (async_url, location) = ops::new_op(&mut s, base, &sub, OpKind::Delete(key), failure);
                Response::new(202, "").header("Azure-AsyncOperation", &async_url).header("Location", &location).header("Retry-After", "0")
            }
            _ => error(405, "MethodNotAllowed", "method not allowed"),
        }
    }
}
