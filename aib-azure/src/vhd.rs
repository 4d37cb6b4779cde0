//! The `VHD` distributor for disks captured anywhere: the image becomes a fixed VHD on this
//! machine and is uploaded to the page blob the template's `uri` names. A local build can so
//! publish straight to Azure storage.

use crate::error::BACKEND;
use crate::upload::{BlobTarget, upload_page_blob};
use aib_core::template::DistributorSpec;
use aib_core::{Artifact, CapturedImage, Distributor, Error, OutputStream, ResourceRecord, Result, Scope, StepContext};
use async_trait::async_trait;
use azure_storage::{CloudLocation, StorageCredentials};
use std::fmt;
use std::path::PathBuf;

/// Uploads captured disks to `https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB.vhd` (or a
/// custom endpoint such as Azurite: `http://127.0.0.1:PORT/ACCOUNT/CONTAINER/BLOB.vhd`).
#[derive(Clone)]
pub struct BlobVhdDistributor {
    uri: String,
    target: BlobTarget,
    scratch: PathBuf,
    parallel: usize,
}

impl fmt::Debug for BlobVhdDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobVhdDistributor").field("uri", &self.uri).finish_non_exhaustive()
    }
}

impl fmt::Display for BlobVhdDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobVhd({})", self.uri)
    }
}

fn invalid(m: String) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: "uri".into(), message: m }
}

/// Splits a blob URI into its location, container and blob.
pub fn parse_blob_uri(uri_with_sas: &str) -> Result<(CloudLocation, String, String, String)> {
    // Errors quote the URI without its signature.
    let shown = crate::export::redact(uri_with_sas);
    let uri = shown.as_str();
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| invalid(format!("`{uri}` is not a URI")))?;
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (host, path) = rest.split_once('/').ok_or_else(|| invalid(format!("`{uri}` names no container")))?;
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segs.iter().any(|s| *s == "." || *s == "..") {
        return Err(invalid(format!("`{uri}` has `.` or `..` segments")));
    }
    if let Some(account) = host.strip_suffix(".blob.core.windows.net") {
        if scheme != "https" {
            return Err(invalid("Azure storage needs https".into()));
        }
        let [container, blob @ ..] = segs.as_slice() else { return Err(invalid(format!("`{uri}` names no container"))) };
        if blob.is_empty() {
            return Err(invalid(format!("`{uri}` names no blob (give CONTAINER/NAME.vhd)")));
        }
        return Ok((CloudLocation::Public { account: account.to_string() }, account.to_string(), container.to_string(), blob.join("/")));
    }
    // Path-style endpoints (emulators): /ACCOUNT/CONTAINER/BLOB.
    let [account, container, blob @ ..] = segs.as_slice() else {
        return Err(invalid(format!("`{uri}` is not …/ACCOUNT/CONTAINER/BLOB")));
    };
    if blob.is_empty() {
        return Err(invalid(format!("`{uri}` names no blob")));
    }
    let endpoint = format!("{scheme}://{host}/{account}");
    Ok((CloudLocation::Custom { account: account.to_string(), uri: endpoint }, account.to_string(), container.to_string(), blob.join("/")))
}

/// Storage credentials for `account` from `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`.
pub(crate) fn env_credentials(account: &str) -> Result<StorageCredentials> {
    match (std::env::var("AZURE_STORAGE_KEY"), std::env::var("AZURE_STORAGE_SAS_TOKEN")) {
        (Ok(key), _) => Ok(StorageCredentials::access_key(account.to_string(), azure_core::auth::Secret::new(key))),
        (_, Ok(sas)) => StorageCredentials::sas_token(sas).map_err(|e| invalid(format!("AZURE_STORAGE_SAS_TOKEN: {e}"))),
        _ => Err(Error::Unauthenticated {
            backend: BACKEND,
            source: "set AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN for the VHD blob".into(),
        }),
    }
}

impl BlobVhdDistributor {
    /// A distributor writing to `uri` with `credentials`; the fixed VHD is staged in `scratch`.
    pub fn new(uri: &str, credentials: StorageCredentials, scratch: impl Into<PathBuf>) -> Result<Self> {
        let (location, _account, container, blob) = parse_blob_uri(uri)?;
        Ok(BlobVhdDistributor {
            uri: uri.split('?').next().unwrap_or(uri).to_string(),
            target: BlobTarget { location, credentials, container, blob },
            scratch: scratch.into(),
            parallel: 8,
        })
    }

    /// From a template `VHD` entry with a `uri`; credentials from `AZURE_STORAGE_KEY` or
    /// `AZURE_STORAGE_SAS_TOKEN`.
    pub fn from_spec(spec: &DistributorSpec, scratch: impl Into<PathBuf>) -> Result<Self> {
        let DistributorSpec::Vhd(v) = spec else { return Err(invalid(format!("`{}` is not a VHD target", spec.type_name()))) };
        let uri = v.uri.as_deref().ok_or_else(|| invalid("this distributor needs the VHD `uri`".into()))?;
        let (_, account, _, _) = parse_blob_uri(uri)?;
        let credentials = env_credentials(&account)?;
        Self::new(uri, credentials, scratch)
    }

    /// Page writes in flight (default 8).
    #[must_use]
    pub fn with_parallelism(mut self, n: usize) -> Self {
        self.parallel = n.max(1);
        self
    }
}

#[async_trait]
impl Distributor for BlobVhdDistributor {
    async fn distribute(&self, image: &CapturedImage, ctx: &StepContext) -> Result<Artifact> {
        tokio::fs::create_dir_all(&self.scratch).await.map_err(|e| Error::io(&self.scratch, e))?;
        let vhd = self.scratch.join(format!("{}-{}.vhd", ctx.run.run_id(), uuid::Uuid::new_v4().simple()));
        let id = ctx.run.ledger().record(ResourceRecord::new("local", "file", vhd.display().to_string(), Scope::Run))?;
        let out = tokio::process::Command::new("qemu-img")
            .args(["convert", "-f", &image.format, "-O", "vpc", "-o", "subformat=fixed,force_size=on", &image.location])
            .arg(&vhd)
            .output()
            .await
            .map_err(|e| Error::NotFound { backend: BACKEND, what: format!("qemu-img ({e}); install qemu-utils") })?;
        let result = if out.status.success() {
            upload_page_blob(&vhd, &self.target, self.parallel, &*ctx.output).await
        } else {
            Err(Error::generic(BACKEND, format!("qemu-img convert to VHD: {}", String::from_utf8_lossy(&out.stderr).trim())))
        };
        // The staged VHD goes on every path; the ledger releases it once it is gone.
        if tokio::fs::remove_file(&vhd).await.is_ok() || !vhd.exists() {
            ctx.run.ledger().release(&id)?;
        }
        let stats = result?;
        ctx.output.line(OutputStream::Stdout, &format!("uploaded {} MiB of {} MiB to {}", stats.sent >> 20, stats.size >> 20, self.uri));
        Ok(Artifact::with_uri(self.uri.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_uris() {
        let (loc, acct, c, b) = parse_blob_uri("https://myacct.blob.core.windows.net/vhds/images/x.vhd?sv=1").unwrap();
        assert!(matches!(loc, CloudLocation::Public { .. }));
        assert_eq!((acct.as_str(), c.as_str(), b.as_str()), ("myacct", "vhds", "images/x.vhd"));
        let (loc, acct, c, b) = parse_blob_uri("http://127.0.0.1:10000/devstoreaccount1/vhds/x.vhd").unwrap();
        assert!(matches!(loc, CloudLocation::Custom { ref uri, .. } if uri == "http://127.0.0.1:10000/devstoreaccount1"));
        assert_eq!((acct.as_str(), c.as_str(), b.as_str()), ("devstoreaccount1", "vhds", "x.vhd"));
        assert!(parse_blob_uri("http://myacct.blob.core.windows.net/vhds/x.vhd").is_err(), "https only for Azure");
        assert!(parse_blob_uri("https://myacct.blob.core.windows.net/vhds").is_err());
        assert!(parse_blob_uri("http://127.0.0.1:1/a/../b/c").is_err());
    }
}
