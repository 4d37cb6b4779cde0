//! Downloads scripts and files for customizers (`https`, `http`, `file`), with a size limit,
//! verifying the `sha256Checksum` before the bytes go anywhere.

use aib_core::boundary::{IpNet, may_fetch_from};
use aib_core::retry::{Backoff, retry_while};
use aib_core::{Error, Result};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const BACKEND: &str = "fetch";

/// AIB's size limit for the File customizer: 20 MB.
pub const DEFAULT_MAX_BYTES: u64 = 20 * 1000 * 1000;

/// Downloads artifacts for customizers. Cheap to clone (one connection pool).
///
/// Template sources reach public addresses only: a host that is or resolves to an internal
/// address (loopback, link-local with the clouds' metadata services, private ranges; see
/// [`aib_core::boundary::is_internal`]) is refused unless the operator allows its network
/// ([`Fetcher::with_allowed_network`]). Every address a name resolves to is checked when the
/// connection is made, so a name cannot resolve to a public address at the check and an
/// internal one at the connection; redirects are followed only to allowed hosts and never
/// from https to http.
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: std::result::Result<reqwest::Client, Arc<str>>,
    max_bytes: u64,
    retries: u32,
    /// Directories `file://` sources may be read from; none by default (`file://` is off).
    file_roots: Vec<std::path::PathBuf>,
    /// Internal networks sources may come from; none by default.
    allowed: Arc<Vec<IpNet>>,
}

/// How a source on an internal address is refused when the operator allowed no network for it.
pub const NETWORK_HINT: &str = "sources come from public addresses; the operator allows an internal network with `aib build --allow-source-net CIDR` (API: `Fetcher::with_allowed_network`, the backends' `allow_source_network`)";

/// How long a script or file download may take in all.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a download may go without a byte before it fails.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How a `file://` source is refused when the operator allowed no directory for it.
pub const FILE_ROOT_HINT: &str = "the operator allows directories for file:// sources with `aib build --allow-file-root DIR` (API: `aib_customizers::registry_with`, `Fetcher::with_file_root`); or serve the file over https";

/// Host paths no `file://` source reads, whatever the allowed directories: kernel and device
/// files (`/proc/self/environ` holds the builder's credentials).
const NEVER_READ: [&str; 4] = ["/proc", "/sys", "/dev", "/run"];

impl Default for Fetcher {
    fn default() -> Self {
        Self::new()
    }
}

/// Told the bytes received so far and the total, when known.
pub type Progress<'a> = &'a (dyn Fn(u64, Option<u64>) + Send + Sync);

/// Reports a transfer about every MiB, and once at its end.
struct Reporter<'a> {
    progress: Progress<'a>,
    total: Option<u64>,
    last: u64,
}

impl<'a> Reporter<'a> {
    fn new(progress: Progress<'a>, total: Option<u64>) -> Self {
        progress(0, total);
        Reporter { progress, total, last: 0 }
    }

    fn at(&mut self, n: u64) {
        if n >= self.last + (1 << 20) {
            self.last = n;
            (self.progress)(n, self.total);
        }
    }

    fn done(&self, n: u64) {
        (self.progress)(n, Some(n));
    }
}

/// What a step fetched for its fingerprint, kept for its run (by run id) so that the bytes the
/// step cache keyed by are the bytes the step puts on the VM, fetched once.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fetched(Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>>);

impl Fetched {
    pub(crate) fn keep(&self, run: &str, data: Vec<u8>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(run.to_string(), data);
    }

    pub(crate) fn take(&self, run: &str) -> Option<Vec<u8>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(run)
    }
}

/// One digest of `parts` (each length-prefixed: no two lists of parts share one).
pub(crate) fn digest_parts<S: AsRef<[u8]>>(parts: &[S]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.as_ref().len() as u64).to_le_bytes());
        h.update(p.as_ref());
    }
    hex::encode(h.finalize())
}

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Fetcher {
    /// A fetcher with AIB's 20 MB limit, 3 retries of transient failures, a 30 s connect
    /// timeout, 60 s without a byte and 10 minutes in all for a script or file (none in all for
    /// [`Fetcher::fetch_to_file`]), and public addresses only.
    pub fn new() -> Self {
        let allowed = Arc::new(Vec::new());
        Fetcher { http: client(&allowed), max_bytes: DEFAULT_MAX_BYTES, retries: 3, file_roots: Vec::new(), allowed }
    }

    /// Allows sources on internal addresses inside `net` (a lab mirror, `127.0.0.1` for a test
    /// server). The operator's setting: a template cannot widen it.
    #[must_use]
    pub fn with_allowed_network(mut self, net: IpNet) -> Self {
        let mut allowed = (*self.allowed).clone();
        allowed.push(net);
        self.allowed = Arc::new(allowed);
        self.http = client(&self.allowed);
        self
    }

    /// The internal networks sources may come from.
    pub fn allowed_networks(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Allows `file://` sources under `dir` (resolved: a symbolic link cannot lead out of it).
    /// Regular files only, within the size limit, never under `/proc`, `/sys`, `/dev` or `/run`.
    #[must_use]
    pub fn with_file_root(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        let dir = dir.into();
        self.file_roots.push(std::fs::canonicalize(&dir).unwrap_or(dir));
        self
    }

    /// The directories `file://` sources may be read from.
    pub fn file_roots(&self) -> &[std::path::PathBuf] {
        &self.file_roots
    }

    /// Checks before the run what [`Fetcher::fetch`] would refuse for its scheme and place:
    /// `file://` without an allowed directory, or outside every allowed one. `field` names the
    /// template field (`scriptUri`, `sourceUri`) in the error.
    pub fn check(&self, field: &str, uri: &str) -> Result<()> {
        let Some((scheme, rest)) = uri.split_once("://") else { return Ok(()) };
        if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
            return match literal_ip(uri) {
                Some(ip) if !may_fetch_from(ip, &self.allowed) => Err(Error::outside_boundary(
                    field,
                    format!("`{}` is on {ip}, an internal address of the build host's network", shown(uri)),
                    NETWORK_HINT,
                )),
                _ => Ok(()),
            };
        }
        if !scheme.eq_ignore_ascii_case("file") {
            return Ok(());
        }
        if self.file_roots.is_empty() {
            return Err(Error::outside_boundary(
                field,
                format!("`{}` reads a file of the build host; file:// sources are off", shown(uri)),
                FILE_ROOT_HINT,
            ));
        }
        let path = std::path::PathBuf::from(percent_decode(rest.strip_prefix("localhost").unwrap_or(rest)));
        let lexical_ok = path.is_absolute() && !path.components().any(|c| matches!(c, std::path::Component::ParentDir));
        if !lexical_ok || !self.file_roots.iter().any(|r| path.starts_with(r)) || NEVER_READ.iter().any(|p| path.starts_with(p)) {
            return Err(Error::outside_boundary(
                field,
                format!("`{}` is outside the directories allowed for file:// sources", shown(uri)),
                format!("allowed: {}", self.file_roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ")),
            ));
        }
        Ok(())
    }

    /// Sets the size limit.
    #[must_use]
    pub fn with_max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// The size limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Fetches `uri` and checks it against `sha256` (lowercase hex; empty or `None` = no check).
    /// Nothing is returned unless the checksum matches.
    pub async fn fetch(&self, uri: &str, sha256: Option<&str>) -> Result<Vec<u8>> {
        self.fetch_reporting(uri, sha256, &|_, _| {}).await
    }

    /// [`Fetcher::fetch`], telling `progress` the bytes received so far and the total when the
    /// server says it (about every MiB, and once at the end; from 0 again on a retry).
    pub async fn fetch_reporting(&self, uri: &str, sha256: Option<&str>, progress: Progress<'_>) -> Result<Vec<u8>> {
        let data = self.fetch_raw(uri, progress).await?;
        if let Some(want) = sha256.filter(|s| !s.is_empty()) {
            let got = sha256_hex(&data);
            if !got.eq_ignore_ascii_case(want) {
                return Err(Error::ChecksumMismatch { what: shown(uri), expected: want.to_ascii_lowercase(), actual: got });
            }
        }
        Ok(data)
    }

    async fn fetch_raw(&self, uri: &str, progress: Progress<'_>) -> Result<Vec<u8>> {
        let (scheme, rest) = uri.split_once("://").ok_or_else(|| invalid(uri, "not an absolute URI"))?;
        match scheme.to_ascii_lowercase().as_str() {
            "file" => {
                let path = rest.strip_prefix("localhost").unwrap_or(rest);
                if !path.starts_with('/') {
                    return Err(invalid(uri, "file URIs are absolute: file:///path/to/file"));
                }
                self.check("uri", uri)?;
                self.read_file(uri, &percent_decode(path)).await
            }
            "http" | "https" => {
                let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
                retry_while(backoff, self.retries + 1, Error::is_retryable, || self.get(uri, progress)).await
            }
            other => Err(invalid(uri, &format!("scheme `{other}` is not supported; use https, http or file"))),
        }
    }

    /// Reads an allowed host file: resolved (no link leads out of the roots), a regular file,
    /// opened without following a link, and never more than the size limit.
    async fn read_file(&self, uri: &str, path: &str) -> Result<Vec<u8>> {
        use tokio::io::AsyncReadExt;
        let real = tokio::fs::canonicalize(path).await.map_err(|e| Error::io(path, e))?;
        if !self.file_roots.iter().any(|r| real.starts_with(r)) || NEVER_READ.iter().any(|p| real.starts_with(p)) {
            return Err(Error::PermissionDenied {
                backend: BACKEND,
                source: format!("`{}` resolves to {}, outside the directories allowed for file:// sources", shown(uri), real.display())
                    .into(),
            });
        }
        let meta = tokio::fs::symlink_metadata(&real).await.map_err(|e| Error::io(&real, e))?;
        if !meta.is_file() {
            return Err(invalid(uri, "not a regular file (devices, FIFOs and directories are never read)"));
        }
        let f =
            tokio::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&real).await.map_err(|e| Error::io(&real, e))?;
        let mut data = Vec::new();
        f.take(self.max_bytes + 1).read_to_end(&mut data).await.map_err(|e| Error::io(&real, e))?;
        if data.len() as u64 > self.max_bytes {
            return Err(too_big(uri, data.len() as u64, self.max_bytes));
        }
        Ok(data)
    }

    /// Downloads an `http(s)` `uri` into a new file `dest` (created 0600, never replaced),
    /// hashing as it arrives: the whole file never sits in memory, and a download fails only when
    /// no byte comes for a minute, however long it takes in all. `dest` is removed unless the
    /// SHA-256 matches `sha256`. Returns the size.
    pub async fn fetch_to_file(&self, uri: &str, sha256: &str, dest: &std::path::Path) -> Result<u64> {
        self.fetch_to_file_reporting(uri, sha256, dest, &|_, _| {}).await
    }

    /// [`Fetcher::fetch_to_file`], telling `progress` how far the download is (as
    /// [`Fetcher::fetch_reporting`] does).
    pub async fn fetch_to_file_reporting(&self, uri: &str, sha256: &str, dest: &std::path::Path, progress: Progress<'_>) -> Result<u64> {
        let scheme = uri.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            return Err(invalid(uri, "downloads to a file take an http or https URL"));
        }
        let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
        let result = retry_while(backoff, self.retries + 1, Error::is_retryable, || self.download(uri, dest, progress)).await;
        let got = match result {
            Ok(got) => got,
            Err(e) => {
                let _ = tokio::fs::remove_file(dest).await;
                return Err(e);
            }
        };
        if !got.0.eq_ignore_ascii_case(sha256) {
            let _ = tokio::fs::remove_file(dest).await;
            return Err(Error::ChecksumMismatch { what: shown(uri), expected: sha256.to_ascii_lowercase(), actual: got.0 });
        }
        Ok(got.1)
    }

    async fn download(&self, uri: &str, dest: &std::path::Path, progress: Progress<'_>) -> Result<(String, u64)> {
        use tokio::io::AsyncWriteExt;
        let _ = tokio::fs::remove_file(dest).await;
        let mut resp = self.send(uri, None).await?;
        let mut report = Reporter::new(progress, resp.content_length());
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dest)
            .await
            .map_err(|e| Error::io(dest, e))?;
        let (mut hash, mut n) = (Sha256::new(), 0u64);
        while let Some(chunk) = resp.chunk().await.map_err(|e| transfer(uri, e))? {
            n += chunk.len() as u64;
            if n > self.max_bytes {
                return Err(too_big(uri, n, self.max_bytes));
            }
            hash.update(&chunk);
            f.write_all(&chunk).await.map_err(|e| Error::io(dest, e))?;
            report.at(n);
        }
        f.sync_all().await.map_err(|e| Error::io(dest, e))?;
        report.done(n);
        Ok((hex::encode(hash.finalize()), n))
    }

    async fn get(&self, uri: &str, progress: Progress<'_>) -> Result<Vec<u8>> {
        let mut resp = self.send(uri, Some(SCRIPT_TIMEOUT)).await?;
        let mut report = Reporter::new(progress, resp.content_length());
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| transfer(uri, e))? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > self.max_bytes {
                return Err(too_big(uri, out.len() as u64, self.max_bytes));
            }
            report.at(out.len() as u64);
        }
        report.done(out.len() as u64);
        Ok(out)
    }

    /// Sends the GET once the host is known to be allowed, and checks status and size.
    async fn send(&self, uri: &str, timeout: Option<Duration>) -> Result<reqwest::Response> {
        let http = self.http.as_ref().map_err(|e| Error::generic(BACKEND, format!("the HTTP client could not be set up: {e}")))?;
        self.host_allowed(uri).await?;
        let mut req = http.get(uri);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let resp = req.send().await.map_err(|e| transfer(uri, e))?;
        let status = resp.status();
        if !status.is_success() {
            let e = format!("GET {}: HTTP {status}", shown(uri));
            return Err(match status.as_u16() {
                404 | 410 => Error::NotFound { backend: BACKEND, what: e },
                401 | 403 => Error::PermissionDenied { backend: BACKEND, source: e.into() },
                429 | 500..=599 => Error::Generic { backend: BACKEND, retryable: true, source: e.into() },
                _ => Error::generic(BACKEND, e),
            });
        }
        if let Some(n) = resp.content_length().filter(|n| *n > self.max_bytes) {
            return Err(too_big(uri, n, self.max_bytes));
        }
        Ok(resp)
    }

    /// Refuses a host that is, or resolves here only to, internal addresses the operator did not
    /// allow. (The connection checks again what the name resolves to then; this check also
    /// covers requests that go through a proxy, which resolves names itself.)
    async fn host_allowed(&self, uri: &str) -> Result<()> {
        let url = reqwest::Url::parse(uri).map_err(|e| invalid(uri, &e.to_string()))?;
        let host = host_of(&url).ok_or_else(|| invalid(uri, "no host"))?;
        let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match tokio::net::lookup_host((host, url.port_or_known_default().unwrap_or(443))).await {
                Ok(a) => a.map(|a| a.ip()).collect(),
                // Not resolvable here: the connection (or a proxy) reports it.
                Err(_) => return Ok(()),
            },
        };
        match only_internal(&addrs, &self.allowed) {
            Some(ip) => Err(refused(&format!("`{}` is on {ip}, an internal address of the build host's network", shown(uri)))),
            None => Ok(()),
        }
    }
}

/// The first of `addrs` when every one of them is internal and outside `allowed`: a host
/// that may not be fetched from. `None` when any address may be used (or there is none).
fn only_internal(addrs: &[IpAddr], allowed: &[IpNet]) -> Option<IpAddr> {
    let first = *addrs.first()?;
    addrs.iter().all(|ip| !may_fetch_from(*ip, allowed)).then_some(first)
}

/// The host of `url`, an IPv6 address without its brackets.
fn host_of(url: &reqwest::Url) -> Option<&str> {
    Some(url.host_str()?.trim_start_matches('[').trim_end_matches(']'))
}

/// The HTTP client of a fetcher: timeouts, and the address rule at every connection and redirect.
fn client(allowed: &Arc<Vec<IpNet>>) -> std::result::Result<reqwest::Client, Arc<str>> {
    let for_redirects = allowed.clone();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(IDLE_TIMEOUT)
        .user_agent(concat!("aib/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(Guarded { allowed: allowed.clone() }))
        .redirect(reqwest::redirect::Policy::custom(move |attempt| {
            let from_https = attempt.previous().last().is_some_and(|u| u.scheme() == "https");
            let next = attempt.url().clone();
            if attempt.previous().len() >= 10 {
                attempt.error(Refused("more than 10 redirects".into()))
            } else if from_https && next.scheme() != "https" {
                attempt.error(Refused(format!("a redirect from https to {} is not followed", shown(next.as_str()))))
            } else if let Some(ip) = literal_ip(next.as_str()).filter(|ip| !may_fetch_from(*ip, &for_redirects)) {
                attempt.error(Refused(format!("a redirect to {ip}, an internal address, is not followed")))
            } else {
                attempt.follow()
            }
        }))
        .build()
        .map_err(|e| Arc::from(e.to_string()))
}

/// The host of an `http(s)` URI when it is an IP address.
fn literal_ip(uri: &str) -> Option<IpAddr> {
    host_of(&reqwest::Url::parse(uri).ok()?)?.parse().ok()
}

/// A resolver that keeps only the addresses sources may come from.
struct Guarded {
    allowed: Arc<Vec<IpNet>>,
}

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let (allowed, host) = (self.allowed.clone(), name.as_str().to_string());
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let ips: Vec<IpAddr> = all.iter().map(SocketAddr::ip).collect();
            if let Some(ip) = only_internal(&ips, &allowed) {
                return Err(Box::new(Refused(format!("{host} resolves to {ip}, an internal address"))) as _);
            }
            Ok(Box::new(all.into_iter().filter(move |a| may_fetch_from(a.ip(), &allowed))) as reqwest::dns::Addrs)
        })
    }
}

/// A connection or redirect the address rule refused.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(why: &str) -> Error {
    Error::outside_boundary("uri", why, NETWORK_HINT)
}

/// A failed transfer: refused by the address rule (final), or a transient error. reqwest's own
/// message names the URL with its query (a SAS): ours names it without.
fn transfer(uri: &str, e: reqwest::Error) -> Error {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<Refused>() {
            return refused(&format!("{}: {r}", shown(uri)));
        }
        cause = c.source();
    }
    let timeout = if e.is_timeout() { " (timed out)" } else { "" };
    Error::Generic { backend: BACKEND, retryable: true, source: format!("{}: {}{timeout}", shown(uri), e.without_url()).into() }
}

/// How a URI is named in errors: without its query (a SAS token is a query).
fn shown(uri: &str) -> String {
    aib_core::redact::url(uri)
}

fn invalid(uri: &str, why: &str) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: shown(uri), message: why.to_string() }
}

fn too_big(uri: &str, n: u64, max: u64) -> Error {
    Error::InvalidConfig {
        backend: BACKEND,
        key: shown(uri),
        message: format!("{n} bytes is above the {max}-byte limit; download large files from a Shell/PowerShell step instead"),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_uris_checksums_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a b.sh");
        std::fs::write(&p, b"echo hi\n").unwrap();
        let uri = format!("file://{}", p.display().to_string().replace(' ', "%20"));
        let f = Fetcher::new().with_file_root(dir.path());
        let sum = sha256_hex(b"echo hi\n");
        assert_eq!(f.fetch(&uri, Some(&sum)).await.unwrap(), b"echo hi\n");
        let err = f.fetch(&uri, Some(&"0".repeat(64))).await.unwrap_err();
        assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
        let err = f.clone().with_max_bytes(3).fetch(&uri, None).await.unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        assert!(f.fetch("ftp://x/y", None).await.is_err());
        assert!(f.fetch("file://relative", None).await.is_err());
        assert_eq!(percent_decode("%41%2"), "A%2");
    }

    #[tokio::test]
    async fn file_sources_are_off_unless_the_operator_allows_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, b"AZURE_CLIENT_SECRET=x").unwrap();
        let uri = format!("file://{}", p.display());
        for e in [Fetcher::new().check("sourceUri", &uri).unwrap_err(), Fetcher::new().fetch(&uri, None).await.unwrap_err()] {
            assert!(matches!(&e, Error::InvalidField { code: aib_core::template::Code::OutsideBoundary, .. }), "{e}");
            assert!(e.to_string().contains("--allow-file-root"), "{e}");
        }
        let other = tempfile::tempdir().unwrap();
        let f = Fetcher::new().with_file_root(other.path());
        assert!(f.check("sourceUri", &uri).is_err(), "outside the allowed directory");
        assert!(f.check("sourceUri", &format!("file://{}/../{}", other.path().display(), p.display())).is_err(), "no `..`");
        assert!(f.check("scriptUri", "https://example.com/x.sh").is_ok(), "other schemes are not this check's business");
    }

    #[tokio::test]
    async fn an_allowed_directory_gives_regular_files_only_and_no_way_out() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("id_ed25519"), b"PRIVATE").unwrap();
        std::os::unix::fs::symlink(outside.path().join("id_ed25519"), dir.path().join("link")).unwrap();
        let f = Fetcher::new().with_file_root(dir.path());
        let e = f.fetch(&format!("file://{}/link", dir.path().display()), None).await.unwrap_err();
        assert!(matches!(e, Error::PermissionDenied { .. }), "a link out of the root is refused: {e}");
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let e = f.fetch(&format!("file://{}", fifo.display()), None).await.unwrap_err();
        assert!(e.to_string().contains("regular file"), "a FIFO is never opened: {e}");
        // Even `/` allowed, kernel files stay out.
        let root = Fetcher::new().with_file_root("/");
        assert!(root.check("sourceUri", "file:///proc/self/environ").is_err());
        assert!(root.fetch("file:///proc/self/environ", None).await.is_err());
        assert!(root.fetch("file:///dev/zero", None).await.is_err());
    }

    fn is_refusal(e: &Error) -> bool {
        matches!(e, Error::InvalidField { code: aib_core::template::Code::OutsideBoundary, .. })
    }

    fn loopback() -> IpNet {
        "127.0.0.1".parse().unwrap()
    }

    #[tokio::test]
    async fn internal_sources_are_refused_unless_the_operator_allows_their_network() {
        let web = aib_testkit::http::StaticServer::start().await.unwrap();
        let url = web.put("s.sh", "echo hi\n");
        let by_name = url.replace("127.0.0.1", "localhost");
        let e = Fetcher::new().check("scriptUri", &url).unwrap_err();
        assert!(matches!(&e, Error::InvalidField { code: aib_core::template::Code::OutsideBoundary, .. }), "{e}");
        assert!(e.to_string().contains("--allow-source-net"), "{e}");
        for u in [&url, &by_name, &"http://169.254.169.254/latest/meta-data/".to_string(), &"http://[::1]:9/x".to_string()] {
            let e = Fetcher::new().fetch(u, None).await.unwrap_err();
            assert!(is_refusal(&e) && e.to_string().contains("internal address"), "{u}: {e}");
        }
        assert_eq!(web.requests(), 0, "nothing was sent");
        let f = Fetcher::new().with_allowed_network(loopback());
        f.check("scriptUri", &url).unwrap();
        assert_eq!(f.fetch(&url, None).await.unwrap(), b"echo hi\n");
        assert_eq!(f.fetch(&by_name, None).await.unwrap(), b"echo hi\n");
        assert_eq!(f.allowed_networks(), &[loopback()]);
    }

    #[tokio::test]
    async fn redirects_go_only_where_a_source_may_come_from() {
        use aib_testkit::http::{HttpServer, Response};
        let web = HttpServer::start(|req| async move {
            match req.path.as_str() {
                "/metadata" => Response::new(302, "").header("Location", "http://169.254.169.254/latest/meta-data/"),
                "/other-loopback" => Response::new(302, "").header("Location", "http://127.0.0.2:9/x"),
                _ => Response::new(200, "fine"),
            }
        })
        .await
        .unwrap();
        let f = Fetcher::new().with_allowed_network(loopback());
        assert_eq!(f.fetch(&format!("{}/ok", web.url()), None).await.unwrap(), b"fine");
        for path in ["metadata", "other-loopback"] {
            let e = f.fetch(&format!("{}/{path}", web.url()), None).await.unwrap_err();
            assert!(is_refusal(&e) && e.to_string().contains("internal address"), "{path}: {e}");
        }
    }

    #[tokio::test]
    async fn downloads_to_a_file_stream_and_keep_only_a_matching_file() {
        let web = aib_testkit::http::StaticServer::start().await.unwrap();
        let body = vec![7u8; 3 << 20];
        let url = web.put("disk.qcow2", body.clone()) + "?sv=1&sig=SECRET";
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("download");
        let f = Fetcher::new().with_allowed_network(loopback()).with_max_bytes(64 << 20);
        assert_eq!(f.fetch_to_file(&url, &sha256_hex(&body), &dest).await.unwrap(), body.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), body);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
        let e = f.fetch_to_file(&url, &"0".repeat(64), &dest).await.unwrap_err();
        assert!(matches!(e, Error::ChecksumMismatch { .. }) && !e.to_string().contains("SECRET"), "{e}");
        assert!(!dest.exists(), "a file that does not match is removed");
        let e = f.clone().with_max_bytes(1 << 20).fetch_to_file(&url, &sha256_hex(&body), &dest).await.unwrap_err();
        assert!(e.to_string().contains("limit") && !dest.exists(), "{e}");
        assert!(f.fetch_to_file("file:///etc/hostname", &sha256_hex(&body), &dest).await.is_err());
    }
}
