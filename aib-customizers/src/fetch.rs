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
}

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
        Fetcher { http, max_bytes: DEFAULT_MAX_BYTES, retries: 3 }
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
                return Err(Error::ChecksumMismatch { what: uri.to_string(), expected: want.to_ascii_lowercase(), actual: got });
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
                let path = percent_decode(path);
                let meta = tokio::fs::metadata(&path).await.map_err(|e| Error::io(&path, e))?;
                if meta.len() > self.max_bytes {
                    return Err(too_big(uri, meta.len(), self.max_bytes));
                }
                tokio::fs::read(&path).await.map_err(|e| Error::io(&path, e))
            }
            "http" | "https" => {
                let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(8));
                retry_while(backoff, self.retries + 1, Error::is_retryable, || self.get(uri)).await
            }
            other => Err(invalid(uri, &format!("scheme `{other}` is not supported; use https, http or file"))),
        }
    }

    async fn get(&self, uri: &str) -> Result<Vec<u8>> {
        let transient = |e: reqwest::Error| Error::Generic { backend: BACKEND, retryable: true, source: format!("{uri}: {e}").into() };
        let mut resp = self.http.get(uri).send().await.map_err(transient)?;
        let status = resp.status();
        if !status.is_success() {
            let e = format!("GET {uri}: HTTP {status}");
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

fn invalid(uri: &str, why: &str) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: uri.to_string(), message: why.to_string() }
}

fn too_big(uri: &str, n: u64, max: u64) -> Error {
    Error::InvalidConfig {
        backend: BACKEND,
        key: uri.to_string(),
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
        let f = Fetcher::new();
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
}
