//! One ARM client for every concurrent build: bearer tokens, retries of 429/5xx and of
//! transient 409s honouring `Retry-After` with jittered exponential backoff, a request budget
//! per subscription, and long-running operations polled as ARM's async API reference says
//! (`Azure-AsyncOperation`, `Location`, `provisioningState`; the result of an operation whose
//! spec says `final-state-via: location` read from `Location`) under their own deadline. ARM
//! error bodies are surfaced as they are, with their details and support ids.

use crate::credential::Credential;
use crate::error::{ArmError, BACKEND, classify, retryable_status};
use aib_core::retry::Backoff;
use aib_core::{Error, Result};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Public Azure's Resource Manager.
pub const PUBLIC_ARM: &str = "https://management.azure.com";

/// The pause between status polls when ARM sends no `Retry-After`.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(60);

/// Where a long-running operation's result is, as its spec's
/// `x-ms-long-running-operation-options.final-state-via` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FinalState {
    /// The resource itself (PUT), or nothing (DELETE, actions without output).
    Resource,
    /// The `Location` URL, once the operation ended (Run Command, grant disk access).
    Location,
}

/// Retry settings for transport failures and 429/5xx answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Most retries of one request.
    pub max_retries: u32,
    /// First backoff; doubles each retry.
    pub initial_backoff: Duration,
    /// Largest backoff (a server's `Retry-After` is honoured even when larger).
    pub max_backoff: Duration,
    /// Give up retrying once this much time has passed.
    pub retry_timeout: Duration,
    /// Randomize backoffs (anywhere between zero and the computed delay: full jitter).
    pub jitter: bool,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 10,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            retry_timeout: Duration::from_secs(300),
            jitter: true,
        }
    }
}

impl RetryConfig {
    /// No retries at all.
    pub fn none() -> Self {
        RetryConfig { max_retries: 0, ..Default::default() }
    }

    /// `n` retries starting at `initial`, without jitter (for tests).
    pub fn fixed(n: u32, initial: Duration) -> Self {
        RetryConfig {
            max_retries: n,
            initial_backoff: initial,
            max_backoff: initial * 16,
            retry_timeout: Duration::from_secs(600),
            jitter: false,
        }
    }

    /// The backoff of one request: the shared [`Backoff`], with full jitter unless switched off.
    fn backoff(&self) -> Backoff {
        let b = Backoff::new(self.initial_backoff, self.max_backoff);
        if self.jitter { b } else { b.without_jitter() }
    }
}

/// Builds an [`ArmClient`].
#[derive(Debug, Default)]
#[must_use]
pub struct ArmClientBuilder {
    endpoint: Option<String>,
    credential: Option<Credential>,
    retry: Option<RetryConfig>,
    budget: Option<usize>,
    lro_timeout: Option<Duration>,
    poll_interval: Option<Duration>,
}

impl ArmClientBuilder {
    /// The ARM endpoint (sovereign clouds, test servers); default public Azure.
    pub fn endpoint(mut self, e: impl Into<String>) -> Self {
        self.endpoint = Some(e.into());
        self
    }

    /// The credential.
    pub fn credential(mut self, c: Credential) -> Self {
        self.credential = Some(c);
        self
    }

    /// Retry settings.
    pub fn retry(mut self, r: RetryConfig) -> Self {
        self.retry = Some(r);
        self
    }

    /// Requests in flight per subscription, across all builds using this client (default 16).
    pub fn budget(mut self, n: usize) -> Self {
        self.budget = Some(n);
        self
    }

    /// Deadline of one long-running operation (default 60 minutes).
    pub fn lro_timeout(mut self, t: Duration) -> Self {
        self.lro_timeout = Some(t);
        self
    }

    /// Poll interval when the service gives no `Retry-After` (default 60 s, the interval ARM's
    /// async API reference asks clients to use then).
    pub fn poll_interval(mut self, t: Duration) -> Self {
        self.poll_interval = Some(t);
        self
    }

    /// Reads `AIB_AZURE_ARM_ENDPOINT` and the usual `AZURE_*` credential variables.
    pub fn from_env() -> Result<Self> {
        let mut b = ArmClientBuilder::default().credential(Credential::from_env()?);
        if let Ok(e) = std::env::var("AIB_AZURE_ARM_ENDPOINT") {
            b = b.endpoint(e);
        }
        Ok(b)
    }

    /// Checks and builds; no request is made.
    pub fn build(self) -> Result<ArmClient> {
        let invalid = |k: &str, m: &str| Error::InvalidConfig { backend: BACKEND, key: k.into(), message: m.into() };
        let endpoint = self.endpoint.unwrap_or_else(|| PUBLIC_ARM.into()).trim_end_matches('/').to_string();
        if !(endpoint.starts_with("https://") || endpoint.starts_with("http://127.0.0.1") || endpoint.starts_with("http://localhost")) {
            return Err(invalid("endpoint", "use https (plain http only for a server on this machine)"));
        }
        let credential = self.credential.ok_or_else(|| invalid("credential", "set a credential (Credential::from_env())"))?;
        let budget = self.budget.unwrap_or(16);
        if budget == 0 {
            return Err(invalid("budget", "allow at least one request in flight"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("aib/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::generic(BACKEND, e))?;
        let scope = format!("{endpoint}/.default");
        Ok(ArmClient {
            inner: Arc::new(Inner {
                http,
                scope,
                endpoint,
                credential,
                retry: self.retry.unwrap_or_default(),
                budget,
                budgets: Mutex::new(HashMap::new()),
                lro_timeout: self.lro_timeout.unwrap_or(Duration::from_secs(3600)),
                poll_interval: self.poll_interval.unwrap_or(DEFAULT_POLL_INTERVAL),
                in_flight: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                sent: AtomicUsize::new(0),
            }),
        })
    }
}

struct Inner {
    http: reqwest::Client,
    endpoint: String,
    scope: String,
    credential: Credential,
    retry: RetryConfig,
    budget: usize,
    budgets: Mutex<HashMap<String, Arc<Semaphore>>>,
    lro_timeout: Duration,
    poll_interval: Duration,
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    sent: AtomicUsize,
}

/// The ARM client; cheap to clone and meant to be shared.
#[derive(Clone)]
pub struct ArmClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for ArmClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArmClient").field("endpoint", &self.inner.endpoint).field("budget", &self.inner.budget).finish_non_exhaustive()
    }
}

/// A response: status, headers, JSON body (`Null` when empty).
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

/// The longest `Retry-After` honoured: a server (or a man in the middle) asking for more is
/// waited on this long, never the value's overflow.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    retry_after_unclamped(h).map(|d| d.min(MAX_RETRY_AFTER))
}

fn retry_after_unclamped(h: &HeaderMap) -> Option<Duration> {
    let v =
        h.get("retry-after-ms").or_else(|| h.get("x-ms-retry-after-ms")).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = v {
        return Some(Duration::from_millis(ms));
    }
    // ARM's `Retry-After` is a whole number of seconds, never an HTTP date.
    let secs = h.get("retry-after")?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(secs))
}

fn header(h: &HeaderMap, k: &str) -> Option<String> {
    h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn subscription(path: &str) -> String {
    let mut p = path.split('/').skip_while(|s| !s.eq_ignore_ascii_case("subscriptions"));
    p.next();
    p.next().unwrap_or_default().to_ascii_lowercase()
}

impl ArmClient {
    /// A builder.
    pub fn builder() -> ArmClientBuilder {
        ArmClientBuilder::default()
    }

    /// The credential behind the client's tokens, for Entra ID calls to other services
    /// (Blob storage).
    pub(crate) fn token_credential(&self) -> Arc<dyn azure_core::auth::TokenCredential> {
        self.inner.credential.0.clone()
    }

    /// The pause between polls of a long-running operation.
    pub fn poll_interval(&self) -> Duration {
        self.inner.poll_interval
    }

    /// Requests sent so far (retries included).
    pub fn requests_sent(&self) -> usize {
        self.inner.sent.load(Ordering::SeqCst)
    }

    /// The most requests that were in flight at once.
    pub fn peak_in_flight(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    fn budget_for(&self, path: &str) -> Arc<Semaphore> {
        let mut m = self.inner.budgets.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(subscription(path)).or_insert_with(|| Arc::new(Semaphore::new(self.inner.budget))).clone()
    }

    fn url(&self, path: &str, api: &str) -> Result<String> {
        if path.starts_with("http://") || path.starts_with("https://") {
            return self.on_endpoint(path).map(str::to_string);
        }
        let sep = if path.contains('?') { '&' } else { '?' };
        Ok(format!("{}{path}{sep}api-version={api}", self.inner.endpoint))
    }

    /// An absolute URL (an operation's status, a `nextLink`, a recorded id) is followed only
    /// on the client's own endpoint: the bearer token goes nowhere else, whatever an answer,
    /// a ledger record or a template names.
    fn on_endpoint<'a>(&self, url: &'a str) -> Result<&'a str> {
        let base = &self.inner.endpoint;
        let ok = url.len() > base.len() && url[..base.len()].eq_ignore_ascii_case(base) && url[base.len()..].starts_with(['/', '?']);
        if ok {
            Ok(url)
        } else {
            Err(Error::InvalidConfig {
                backend: BACKEND,
                key: "url".into(),
                message: format!(
                    "{} is not on the ARM endpoint {base}: the credential's token is sent only there",
                    crate::blob::redact(url.split('?').next().unwrap_or(url))
                ),
            })
        }
    }

    /// One request, with retries; non-2xx answers are errors (202 is success).
    async fn send(&self, method: Method, url: &str, body: Option<&Value>) -> Result<Reply> {
        self.send_mode(method, url, body, true).await
    }

    /// [`Self::send`]; when `repeatable` is false, only answers that say the request was not
    /// taken (429) are retried: a 5xx may come after the action started.
    async fn send_mode(&self, method: Method, url: &str, body: Option<&Value>, repeatable: bool) -> Result<Reply> {
        let inner = &self.inner;
        let what = format!("{method} {}", url.split('?').next().unwrap_or(url).trim_start_matches(&inner.endpoint));
        let budget = self.budget_for(url);
        let _permit = budget.acquire().await.map_err(|e| Error::generic(BACKEND, e))?;
        let now = inner.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        inner.peak.fetch_max(now, Ordering::SeqCst);
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _done = Done(&inner.in_flight);
        let start = Instant::now();
        let idempotent = method != Method::POST;
        let mut attempt = 0u32;
        let mut backoff = inner.retry.backoff();
        loop {
            let token = inner.credential.bearer(&inner.scope).await?;
            let mut rb = inner
                .http
                .request(method.clone(), url)
                .header("Authorization", token)
                .header("x-ms-client-request-id", uuid::Uuid::new_v4().to_string());
            match body {
                Some(b) => rb = rb.json(b),
                // HTTP.sys, ARM's front end, answers 411 to a POST or PUT without a length;
                // over HTTP/1.1 an empty body gets no `Content-Length` unless it is set.
                None if method == Method::POST || method == Method::PUT => rb = rb.header(reqwest::header::CONTENT_LENGTH, "0"),
                None => {}
            }
            inner.sent.fetch_add(1, Ordering::SeqCst);
            let delay = match rb.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let headers = resp.headers().clone();
                    let bytes = resp.bytes().await.map_err(|e| Error::Disconnected { backend: BACKEND, source: Box::new(e) })?;
                    if (200..300).contains(&status) {
                        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
                        return Ok(Reply { status, headers, body });
                    }
                    let after = retry_after(&headers);
                    let err = ArmError::from_body(status, &bytes, what.clone())
                        .with_ids(header(&headers, "x-ms-request-id"), header(&headers, "x-ms-correlation-request-id"));
                    // A transient 409 says the request was not taken, like a 429.
                    let not_taken = status == 429 || err.is_transient_conflict();
                    let again = not_taken || (repeatable && retryable_status(status));
                    if !again || attempt >= inner.retry.max_retries {
                        return Err(classify(err, after));
                    }
                    let d = after.unwrap_or_else(|| backoff.next_delay());
                    if start.elapsed().saturating_add(d) > inner.retry.retry_timeout {
                        return Err(classify(err, after));
                    }
                    tracing::debug!(%what, status, ?d, "ARM answered {status}; retrying");
                    d
                }
                Err(e) => {
                    let transient = e.is_connect() || e.is_timeout() || e.is_request();
                    if !(transient && idempotent) || attempt >= inner.retry.max_retries {
                        return Err(Error::Disconnected { backend: BACKEND, source: format!("{what}: {e}").into() });
                    }
                    backoff.next_delay()
                }
            };
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    }

    /// `GET` a resource.
    pub async fn get(&self, path: &str, api: &str) -> Result<Value> {
        Ok(self.send(Method::GET, &self.url(path, api)?, None).await?.body)
    }

    /// `GET` a collection, following `nextLink`; bare-array answers are accepted.
    pub async fn list(&self, path: &str, api: &str) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        let mut url = Some(self.url(path, api)?);
        while let Some(u) = url.take() {
            let body = self.send(Method::GET, self.on_endpoint(&u)?, None).await?.body;
            match body {
                Value::Array(items) => out.extend(items),
                Value::Object(mut m) => {
                    if let Some(Value::Array(items)) = m.remove("value") {
                        out.extend(items);
                    }
                    url = m.get("nextLink").and_then(Value::as_str).map(str::to_string);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// `PUT` a resource and wait until it is provisioned; returns the final resource. A
    /// synchronous answer whose `provisioningState` is `Failed` or `Canceled` is an error.
    pub async fn put(&self, path: &str, api: &str, body: &Value) -> Result<Value> {
        let url = self.url(path, api)?;
        let r = self.send(Method::PUT, &url, Some(body)).await?;
        let what = format!("PUT {path}");
        if let Some(done) = self.after_async_write(&what, &url, &r).await {
            return done;
        }
        match state(&r.body) {
            Some("Succeeded") | None => Ok(r.body),
            Some(s @ ("Failed" | "Canceled")) => Err(provisioning_failed(&what, s, &r.body)),
            Some(_) => self.poll_resource(&what, &url).await,
        }
    }

    /// `PATCH` a resource (tags) and wait until the update ended; returns the resource.
    pub async fn patch(&self, path: &str, api: &str, body: &Value) -> Result<Value> {
        let url = self.url(path, api)?;
        let r = self.send(Method::PATCH, &url, Some(body)).await?;
        let what = format!("PATCH {path}");
        match self.after_async_write(&what, &url, &r).await {
            Some(done) => done,
            None => Ok(r.body),
        }
    }

    /// A PUT or PATCH answered asynchronously: waits for its operation, then reads the
    /// resource. `None` for a synchronous answer.
    async fn after_async_write(&self, what: &str, url: &str, r: &Reply) -> Option<Result<Value>> {
        if header(&r.headers, "azure-asyncoperation").is_none() && r.status != 202 {
            return None;
        }
        if let Err(e) = self.wait(what, r, FinalState::Resource).await {
            return Some(Err(e));
        }
        Some(self.poll_resource(what, url).await)
    }

    /// `DELETE` a resource and wait until it is gone; deleting what does not exist succeeds.
    pub async fn delete(&self, path: &str, api: &str) -> Result<()> {
        match self.send(Method::DELETE, &self.url(path, api)?, None).await {
            Ok(r) => self.wait(&format!("DELETE {path}"), &r, FinalState::Resource).await.map(|_| ()),
            Err(Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `POST` an action and wait for it; returns the operation's output (or `Null`).
    pub async fn post(&self, path: &str, api: &str, body: Option<&Value>) -> Result<Value> {
        self.post_mode(path, api, body, true, FinalState::Resource).await
    }

    /// `POST` an action whose result the spec puts at the `Location` URL
    /// (`final-state-via: location`: grant disk access); returns that result.
    pub async fn post_for_location(&self, path: &str, api: &str, body: Option<&Value>) -> Result<Value> {
        self.post_mode(path, api, body, true, FinalState::Location).await
    }

    /// `POST` an action that must not run twice (Run Command, whose result is at `Location`):
    /// a 5xx or a lost connection is an error, not a retry; only throttling (429) and
    /// transient conflicts are waited out.
    pub async fn post_once(&self, path: &str, api: &str, body: Option<&Value>) -> Result<Value> {
        self.post_mode(path, api, body, false, FinalState::Location).await
    }

    async fn post_mode(&self, path: &str, api: &str, body: Option<&Value>, repeatable: bool, fin: FinalState) -> Result<Value> {
        let r = self.send_mode(Method::POST, &self.url(path, api)?, body, repeatable).await?;
        let out = self.wait(&format!("POST {path}"), &r, fin).await?;
        Ok(if out.is_null() { r.body } else { out })
    }

    /// Follows the long-running operation a response started, if any; returns its result:
    /// the `Location` answer for [`FinalState::Location`] (and for operations reported by
    /// `Location` alone), `Null` otherwise.
    async fn wait(&self, what: &str, r: &Reply, fin: FinalState) -> Result<Value> {
        let deadline = Instant::now() + self.inner.lro_timeout;
        let mut pause = retry_after(&r.headers).unwrap_or(self.inner.poll_interval);
        let location = header(&r.headers, "location");
        if let Some(op) = header(&r.headers, "azure-asyncoperation") {
            let ended = loop {
                self.sleep_until(what, deadline, pause).await?;
                let p = self.status(what, &op).await?;
                match p.body["status"].as_str().unwrap_or("InProgress") {
                    "Succeeded" => break p,
                    "Failed" | "Canceled" | "Cancelled" => return Err(op_error(what, &p.body)),
                    _ => pause = retry_after(&p.headers).unwrap_or(self.inner.poll_interval),
                }
            };
            return match (fin, location) {
                // The operation ended: `Location` answers what a synchronous call would have.
                (FinalState::Location, Some(loc)) => Ok(self.status(what, &loc).await?.body),
                // No `Location` (which the reference requires of a POST): the status body's
                // RP-defined `properties.output` is all there is.
                (FinalState::Location, None) => Ok(ended.body["properties"]["output"].clone()),
                (FinalState::Resource, _) => Ok(Value::Null),
            };
        }
        if r.status == 202
            && let Some(loc) = location
        {
            loop {
                self.sleep_until(what, deadline, pause).await?;
                let p = self.status(what, &loc).await?;
                if p.status != 202 {
                    return Ok(p.body);
                }
                pause = retry_after(&p.headers).unwrap_or(self.inner.poll_interval);
            }
        }
        Ok(Value::Null)
    }

    /// One status poll. A 4xx there is a failure to read the status, not of the operation
    /// (ARM's async API reference), so it is never taken for "not found" or "deleted".
    async fn status(&self, what: &str, url: &str) -> Result<Reply> {
        match self.send(Method::GET, self.on_endpoint(url)?, None).await {
            Err(Error::NotFound { what: detail, .. }) => {
                Err(Error::generic(BACKEND, format!("{what}: reading the operation's status failed: {detail}")))
            }
            r => r,
        }
    }

    async fn poll_resource(&self, what: &str, url: &str) -> Result<Value> {
        let deadline = Instant::now() + self.inner.lro_timeout;
        loop {
            let r = self.send(Method::GET, url, None).await?;
            match state(&r.body) {
                Some("Succeeded") | None => return Ok(r.body),
                Some(s @ ("Failed" | "Canceled")) => return Err(provisioning_failed(what, s, &r.body)),
                _ => self.sleep_until(what, deadline, retry_after(&r.headers).unwrap_or(self.inner.poll_interval)).await?,
            }
        }
    }

    async fn sleep_until(&self, what: &str, deadline: Instant, pause: Duration) -> Result<()> {
        if Instant::now().checked_add(pause).is_none_or(|t| t > deadline) {
            return Err(Error::Timeout { operation: what.to_string(), after: self.inner.lro_timeout });
        }
        tokio::time::sleep(pause).await;
        Ok(())
    }
}

fn state(v: &Value) -> Option<&str> {
    v["properties"]["provisioningState"].as_str()
}

fn provisioning_failed(what: &str, state: &str, body: &Value) -> Error {
    let mut e = ArmError::from_value(0, body, what);
    if e.code.is_empty() {
        e.code = format!("ProvisioningState{state}");
    }
    if e.message.is_empty() {
        e.message = format!("the resource's provisioningState is {state}");
    }
    classify(e, None)
}

fn op_error(what: &str, body: &Value) -> Error {
    let mut e = ArmError::from_value(0, body, what);
    if e.code.is_empty() {
        e.code = "OperationFailed".into();
    }
    if e.message.is_empty() {
        e.message = "the long-running operation failed".into();
    }
    classify(e, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_retry_after_is_clamped_not_overflowed() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "18446744073709551615".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert("retry-after-ms", "18446744073709551615".parse().unwrap());
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
    }
}
