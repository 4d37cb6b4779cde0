//! The `VHD` distributor for disks captured anywhere: the image becomes a fixed VHD on this
//! machine and is uploaded to the page blob the template's `uri` names. A local build can so
//! publish straight to Azure storage.

use crate::blob::{env_credentials, invalid, parse_blob_uri};
use crate::error::BACKEND;
use crate::upload::{BlobTarget, upload_page_blob};
use aib_core::reclaim::FileReclaim;
use aib_core::template::DistributorSpec;
use aib_core::{Artifact, DistributeRequest, Distributor, Error, OutputStream, Result, StepContext};
use async_trait::async_trait;
use azure_storage::StorageCredentials;
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

    /// From a template `VHD` entry with a `uri` on Azure Storage (https); credentials from
    /// `AZURE_STORAGE_KEY` or `AZURE_STORAGE_SAS_TOKEN`. Any other host is refused: the
    /// environment's credentials go nowhere a template chooses (use [`BlobVhdDistributor::new`]
    /// with explicit credentials for an emulator).
    pub fn from_spec(spec: &DistributorSpec, scratch: impl Into<PathBuf>) -> Result<Self> {
        let DistributorSpec::Vhd(v) = spec else { return Err(invalid(format!("`{}` is not a VHD target", spec.type_name()))) };
        let uri = v.uri.as_deref().ok_or_else(|| invalid("this distributor needs the VHD `uri`".into()))?;
        crate::blob::check_template_target("uri", uri, None)?;
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
    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
        let image = &req.image;
        tokio::fs::create_dir_all(&self.scratch).await.map_err(|e| Error::io(&self.scratch, e))?;
        let vhd = self.scratch.join(format!("{}-{}.vhd", ctx.run.run_id(), uuid::Uuid::new_v4().simple()));
        // Recorded under the file reclaimer: any pipeline and `gc` delete a staged VHD.
        let id = ctx.record(FileReclaim::file(&vhd))?;
        let out = tokio::process::Command::new("qemu-img")
            .env_clear()
            .envs(aib_core::boundary::tool_env())
            .kill_on_drop(true)
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
            ctx.release(&id)?;
        }
        let stats = result?;
        ctx.output.line(OutputStream::Stdout, &format!("uploaded {} MiB of {} MiB to {}", stats.sent >> 20, stats.size >> 20, self.uri));
        Ok(Artifact::with_uri(self.uri.clone()))
    }
}
