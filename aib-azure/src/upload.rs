//! Uploads a disk from this machine (a fixed VHD, as the local backend writes) to an Azure
//! page blob: only the allocated, non-zero ranges are sent, in parallel, each range retried on
//! its own.

use crate::error::{AzureError, BACKEND};
use aib_core::retry::{Backoff, retry_while};

/// Attempts per page write (the first and five retries).
const PAGE_ATTEMPTS: u32 = 6;
use aib_core::{Error, OutputSink, Result};
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::prelude::{BA512Range, BlobClient, ClientBuilder};
use futures::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The largest page write Azure accepts.
pub const MAX_PAGE_WRITE: u64 = 4 << 20;

/// Where a page blob goes.
#[derive(Debug, Clone)]
pub struct BlobTarget {
    /// The storage location (public cloud or a custom endpoint such as Azurite).
    pub location: CloudLocation,
    /// Credentials (account key, SAS, or a token credential).
    pub credentials: StorageCredentials,
    /// Container.
    pub container: String,
    /// Blob name.
    pub blob: String,
}

impl BlobTarget {
    /// The blob at `uri` (`https://ACCOUNT.blob.core.windows.net/CONTAINER/BLOB`, or a
    /// path-style emulator URL), with credentials from `AZURE_STORAGE_KEY` or
    /// `AZURE_STORAGE_SAS_TOKEN`.
    pub fn from_uri_env(uri: &str) -> Result<Self> {
        let (location, account, container, blob) = crate::blob::parse_blob_uri(uri)?;
        Ok(BlobTarget { location, credentials: crate::blob::env_credentials(&account)?, container, blob })
    }

    fn client(&self) -> BlobClient {
        ClientBuilder::with_location(self.location.clone(), self.credentials.clone()).blob_client(&self.container, &self.blob)
    }
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct UploadStats {
    /// Blob size.
    pub size: u64,
    /// Bytes sent (allocated, non-zero pages only).
    pub sent: u64,
    /// Page writes made (retries included).
    pub writes: u64,
}

/// Data ranges of a file, from `qemu-img map` (holes and zero extents are left out).
pub async fn data_ranges(path: &Path) -> Result<Vec<(u64, u64)>> {
    let out = tokio::process::Command::new("qemu-img")
        .env_clear()
        .envs(aib_core::boundary::tool_env())
        .kill_on_drop(true)
        .args(["map", "--output=json", "-f", "raw"])
        .arg(path)
        .output()
        .await
        .map_err(|e| Error::NotFound { backend: BACKEND, what: format!("qemu-img ({e}); install qemu-utils") })?;
    if !out.status.success() {
        return Err(Error::generic(BACKEND, format!("qemu-img map: {}", String::from_utf8_lossy(&out.stderr))));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| Error::generic(BACKEND, e))?;
    let mut ranges = Vec::new();
    for e in v.as_array().into_iter().flatten() {
        if e["data"].as_bool() == Some(true) && e["zero"].as_bool() != Some(true) {
            let (start, len) = (e["start"].as_u64().unwrap_or(0), e["length"].as_u64().unwrap_or(0));
            ranges.push((start, len));
        }
    }
    Ok(ranges)
}

/// Splits ranges into page writes: 512-aligned, at most [`MAX_PAGE_WRITE`] each.
pub fn page_writes(ranges: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, len) in ranges {
        let (mut s, end) = (start / 512 * 512, (start + len).div_ceil(512) * 512);
        let end = end.min(size);
        while s < end {
            let n = (end - s).min(MAX_PAGE_WRITE);
            out.push((s, n));
            s += n;
        }
    }
    out
}

/// Uploads `path` (its size a multiple of 512: a fixed VHD is) to `target`, `parallel` writes
/// at a time; progress in bytes goes to `out`.
pub async fn upload_page_blob(path: &Path, target: &BlobTarget, parallel: usize, out: &dyn OutputSink) -> Result<UploadStats> {
    let size = tokio::fs::metadata(path).await.map_err(|e| Error::io(path, e))?.len();
    if size % 512 != 0 {
        return Err(Error::InvalidConfig {
            backend: BACKEND,
            key: "disk".into(),
            message: format!("{} is {size} bytes, not a multiple of 512 (write a fixed VHD)", path.display()),
        });
    }
    // Azure makes disks and images only from a VHD whose virtual size is whole MiB: an
    // upload that would succeed and be unusable is refused here.
    if size < 512 || (size - 512) % (1 << 20) != 0 {
        return Err(Error::InvalidConfig {
            backend: BACKEND,
            key: "disk".into(),
            message: format!(
                "{} holds {} bytes of disk, not a whole number of MiB: Azure makes no disk from it \
                 (resize the image first: qemu-img resize IMAGE {}M)",
                path.display(),
                size.saturating_sub(512),
                size.saturating_sub(512).div_ceil(1 << 20)
            ),
        });
    }
    let blob = target.client();
    let storage = |e: azure_core::Error| Error::Generic { backend: BACKEND, retryable: true, source: Box::new(e) };
    let container = ClientBuilder::with_location(target.location.clone(), target.credentials.clone()).container_client(&target.container);
    // Created when missing. No "exists" call first: a SAS scoped to the blob or the container
    // may not allow reading container properties, and a 403 on the create says the same as an
    // existing container would: the blob writes that follow tell whether the SAS suffices.
    match container.create().await {
        Ok(_) => {}
        Err(e) if crate::error::is_conflict(&e, "ContainerAlreadyExists") => {}
        Err(e) if crate::error::blob_status(&e) == Some(403) => {
            tracing::debug!(container = %target.container, "creating the container was not allowed; writing into it as it is");
        }
        Err(e) => return Err(storage(e)),
    }
    blob.put_page_blob(u128::from(size)).content_type("application/octet-stream").await.map_err(storage)?;
    let writes = page_writes(&data_ranges(path).await?, size);
    let sent = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let total: u64 = writes.iter().map(|w| w.1).sum();
    out.progress(0, Some(total), "bytes");
    let jobs = futures::stream::iter(writes.into_iter().map(|(offset, len)| {
        let (blob, sent, count, path) = (blob.clone(), sent.clone(), count.clone(), path.to_path_buf());
        async move {
            let mut f = tokio::fs::File::open(&path).await.map_err(|e| Error::io(&path, e))?;
            f.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| Error::io(&path, e))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf).await.map_err(|e| Error::io(&path, e))?;
            // A zero page need not be written: a new page blob reads as zeros.
            if buf.iter().all(|b| *b == 0) {
                return Ok::<(), Error>(());
            }
            let range = BA512Range::new(offset, offset + len - 1).map_err(|e| Error::generic(BACKEND, e))?;
            // Only what may work again is retried: a 403 or 404 fails at once.
            let backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(10));
            retry_while(backoff, PAGE_ATTEMPTS, Error::is_retryable, || {
                count.fetch_add(1, Ordering::Relaxed);
                let (blob, buf) = (&blob, buf.clone());
                async move {
                    blob.put_page(range, buf).await.map(drop).map_err(|e| {
                        tracing::debug!(offset, error = %e, "page write failed");
                        Error::from(AzureError::blob(format!("writing the page at {offset}"), e))
                    })
                }
            })
            .await?;
            sent.fetch_add(len, Ordering::Relaxed);
            Ok(())
        }
    }))
    .buffer_unordered(parallel.max(1));
    futures::pin_mut!(jobs);
    while let Some(r) = jobs.next().await {
        r?;
        out.progress(sent.load(Ordering::Relaxed), Some(total), "bytes");
    }
    Ok(UploadStats { size, sent: sent.load(Ordering::Relaxed), writes: count.load(Ordering::Relaxed) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_aligned_and_bounded() {
        let w = page_writes(&[(0, 4096), (10 << 20, 9 << 20), (100, 10)], 64 << 20);
        assert_eq!(w[0], (0, 4096));
        assert_eq!(w[1], (10 << 20, MAX_PAGE_WRITE));
        assert_eq!(w[3], ((10 << 20) + 2 * MAX_PAGE_WRITE, 1 << 20));
        assert_eq!(w[4], (0, 512), "unaligned ranges widen to pages");
        assert!(w.iter().all(|(s, n)| s % 512 == 0 && n % 512 == 0 && *n <= MAX_PAGE_WRITE));
    }
}
