//! Downloads scripts and files for customizers (`https`, `http`, `file`), with a size limit,
//! verifying the `sha256Checksum` before the bytes go anywhere.

use aib_core::retry::{Backoff, retry_while};
use aib_core::{Error, Result};
use sha2::{Digest, Sha256};
use std::time::Duration;

const BACKEND: &str = "fetch";

/// AIB's size limit for the File customizer: 20 MB.
pub const DEFAULT_MAX_BYTES: u64 = 20 * 1000 * 1000;

/// Downloads artifacts for customizers. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Fetcher {
    http: reqwest::Client,
    max_bytes: u64,
    retries: u32,
    /// Directories `file://` sources may be read from; none by default (`file://` is off).
    file_roots: Vec<std::path::PathBuf>,
}

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

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl Fetcher {
    /// A fetcher with AIB's 20 MB limit, 3 retries of transient failures, 60 s timeouts.
    pub fn new() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("aib/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Fetcher { http, max_bytes: DEFAULT_MAX_BYTES, retries: 3, file_roots: Vec::new() }
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
        let data = self.fetch_raw(uri).await?;
        if let Some(want) = sha256.filter(|s| !s.is_empty()) {
            let got = sha256_hex(&data);
            if !got.eq_ignore_ascii_case(want) {
                return Err(Error::ChecksumMismatch { what: shown(uri), expected: want.to_ascii_lowercase(), actual: got });
            }
        }
        Ok(data)
    }

    async fn fetch_raw(&self, uri: &str) -> Result<Vec<u8>> {
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
                retry_while(backoff, self.retries + 1, Error::is_retryable, || self.get(uri)).await
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

    async fn get(&self, uri: &str) -> Result<Vec<u8>> {
        // reqwest's errors name the URL with its query (a SAS): keep ours, without it.
        let transient = |e: reqwest::Error| Error::Generic {
            backend: BACKEND,
            retryable: true,
            source: format!("{}: {}", shown(uri), e.without_url()).into(),
        };
        let mut resp = self.http.get(uri).send().await.map_err(transient)?;
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
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transient)? {
            out.extend_from_slice(&chunk);
            if out.len() as u64 > self.max_bytes {
                return Err(too_big(uri, out.len() as u64, self.max_bytes));
            }
        }
        Ok(out)
    }
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
}
