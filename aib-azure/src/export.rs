//! The `VHD` target of an Azure build: the build VM's OS disk, opened for reading with a
//! grant-access SAS, copied server-side into the template's `uri` or into the staging
//! group's storage account (created on first use and kept with the group, as AIB does), with
//! progress in bytes; the SAS is revoked on every path and the copy's VHD footer checked.

use crate::api::{DISK_API, STORAGE_API};
use crate::blob::{env_credentials_if_set, parse_blob_uri, redact};
use crate::client::ArmClient;
use crate::error::{AzureError, BACKEND};
use crate::naming::{CREATED_BY, staging_account_name};
use aib_core::template::DistributorSpec;
use aib_core::{Artifact, CapturedImage, DistributeRequest, Distributor, Error, OutputStream, Result, StepContext};
use async_trait::async_trait;
use azure_storage::{CloudLocation, StorageCredentials};
use azure_storage_blobs::blob::CopyStatus;
use azure_storage_blobs::prelude::{BlobClient, ClientBuilder};
use futures::StreamExt;
use serde_json::{Value, json};
use std::fmt;
use std::time::Duration;

/// Exports the captured VM's OS disk as a VHD blob.
#[derive(Debug, Clone)]
pub struct DiskVhdDistributor {
    arm: ArmClient,
    uri: Option<String>,
    storage_endpoint: Option<String>,
    copy_timeout: Duration,
}

impl fmt::Display for DiskVhdDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VHD({})", self.uri.as_deref().map(redact).unwrap_or_else(|| "staging storage account".into()))
    }
}

fn invalid(m: impl Into<String>) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: "distribute.uri".into(), message: m.into() }
}

impl DiskVhdDistributor {
    /// From a template `VHD` entry; `storage_endpoint` overrides the blob endpoint ARM reports
    /// for the staging account (a sovereign cloud's, or a test server's).
    pub fn from_spec(arm: ArmClient, spec: &DistributorSpec, storage_endpoint: Option<String>) -> Result<Self> {
        let DistributorSpec::Vhd(v) = spec else { return Err(invalid(format!("`{}` is not a VHD target", spec.type_name()))) };
        // Credentials come from the environment; a query (a SAS) is never kept or shown.
        let uri = v.uri.as_deref().filter(|u| !u.is_empty()).map(|u| u.split('?').next().unwrap_or(u).to_string());
        if let Some(u) = &uri {
            crate::blob::check_template_target("uri", u, storage_endpoint.as_deref())?;
            parse_blob_uri(u)?;
        }
        Ok(DiskVhdDistributor { arm, uri, storage_endpoint, copy_timeout: Duration::from_secs(4 * 3600) })
    }

    /// How long the server-side copy may take (default 4 hours).
    #[must_use]
    pub fn with_copy_timeout(mut self, t: Duration) -> Self {
        self.copy_timeout = t;
        self
    }

    /// The destination blob and its URL (no secret in it).
    async fn destination(&self, image: &CapturedImage, ctx: &StepContext) -> Result<(BlobClient, String)> {
        if let Some(uri) = &self.uri {
            let (location, account, container, blob) = parse_blob_uri(uri)?;
            let creds = match env_credentials_if_set(&account)? {
                Some(c) => c,
                None => {
                    ctx.output.line(
                        OutputStream::Stdout,
                        "no AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN: the VHD blob is written with the build's Entra ID \
                         credential (it needs Storage Blob Data Contributor on the account)",
                    );
                    StorageCredentials::token_credential(self.arm.token_credential())
                }
            };
            let client = ClientBuilder::with_location(location, creds).blob_client(container, blob);
            return Ok((client, uri.split('?').next().unwrap_or(uri).to_string()));
        }
        let group = image
            .attributes
            .get("stagingResourceGroup")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("no `uri` and no staging resource group to hold the VHD"))?;
        let name = staging_account_name(group);
        let id = format!("{group}/providers/Microsoft.Storage/storageAccounts/{name}");
        let account = match self.arm.get(&id, STORAGE_API).await {
            Ok(a) => a,
            Err(Error::NotFound { .. }) => {
                ctx.output.line(OutputStream::Stdout, &format!("creating the staging storage account {name}"));
                let body = json!({"location": image.location, "sku": {"name": "Standard_LRS"}, "kind": "StorageV2",
                                  "tags": {"createdBy": CREATED_BY, "imageTemplateResourceGroupName": group.rsplit('/').next().unwrap_or_default()},
                                  "properties": {"minimumTlsVersion": "TLS1_2", "allowBlobPublicAccess": false, "supportsHttpsTrafficOnly": true}});
                self.arm.put(&id, STORAGE_API, &body).await?;
                self.arm.get(&id, STORAGE_API).await?
            }
            Err(e) => return Err(e),
        };
        // An account that allows no Shared Key access (a policy may force it) takes only Entra
        // ID tokens; the build's own credential made the account, so it is used for its blobs.
        let shared_key = account["properties"]["allowSharedKeyAccess"].as_bool() != Some(false);
        let key = if shared_key {
            let keys = self.arm.post(&format!("{id}/listKeys"), STORAGE_API, None).await?;
            let key = keys["keys"][0]["value"].as_str();
            Some(key.ok_or_else(|| Error::generic(BACKEND, format!("{id}: listKeys returned no key")))?.to_string())
        } else {
            ctx.output.line(
                OutputStream::Stdout,
                &format!("{name} allows no Shared Key access: its blobs are reached with the build's Entra ID credential"),
            );
            None
        };
        let endpoint = self
            .storage_endpoint
            .clone()
            .or_else(|| account["properties"]["primaryEndpoints"]["blob"].as_str().map(str::to_string))
            .ok_or_else(|| Error::generic(BACKEND, format!("{id} reports no blob endpoint")))?;
        let endpoint = endpoint.trim_end_matches('/').to_string();
        // Path-style endpoints (`http://host:port/ACCOUNT`, as emulators serve) name the account
        // that signs the requests; Azure's own name it in the host.
        let path_account =
            endpoint.split("://").nth(1).and_then(|r| r.split_once('/')).map(|(_, p)| p.to_string()).filter(|p| !p.is_empty());
        let (location, signer) = match path_account {
            None if endpoint.eq_ignore_ascii_case(&format!("https://{name}.blob.core.windows.net")) => {
                (CloudLocation::Public { account: name.clone() }, name.clone())
            }
            None => (CloudLocation::Custom { account: name.clone(), uri: endpoint.clone() }, name.clone()),
            Some(acct) => (CloudLocation::Custom { account: acct.clone(), uri: endpoint.clone() }, acct),
        };
        let creds = match key {
            Some(key) => StorageCredentials::access_key(signer, azure_core::auth::Secret::new(key)),
            None => StorageCredentials::token_credential(self.arm.token_credential()),
        };
        let container = ClientBuilder::with_location(location, creds).container_client("vhds");
        if let Err(e) = container.create().await
            && !crate::error::is_conflict(&e, "ContainerAlreadyExists")
        {
            return Err(AzureError::blob(format!("creating container vhds in {name}"), e).into());
        }
        let blob = format!("{}-{}.vhd", ctx.run.run_id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let url = format!("{endpoint}/vhds/{blob}");
        Ok((container.blob_client(blob), url))
    }

    async fn copy(&self, sas: &str, dest: &BlobClient, ctx: &StepContext) -> Result<u64> {
        let storage = |e: azure_core::Error| Error::generic(BACKEND, format!("VHD copy: {}", redact(&e.to_string())));
        let source = url::Url::parse(sas).map_err(|e| Error::generic(BACKEND, format!("the disk's SAS is not a URL: {e}")))?;
        let started = dest.copy(source).await.map_err(storage)?;
        let mut status = started.copy_status;
        let deadline = std::time::Instant::now() + self.copy_timeout;
        let mut copied = 0;
        let mut failures = 0;
        loop {
            // A busy storage service may not answer a status read; the copy goes on regardless.
            let props = match dest.get_properties().await {
                Ok(p) => {
                    failures = 0;
                    p.blob.properties
                }
                Err(e) if failures < 10 && std::time::Instant::now() < deadline => {
                    failures += 1;
                    tracing::warn!(error = %redact(&e.to_string()), failures, "reading the copy status failed; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(e) => return Err(storage(e)),
            };
            if let Some(p) = &props.copy_progress {
                copied = p.bytes_copied;
                ctx.output.progress(p.bytes_copied, Some(p.bytes_total), "bytes");
            }
            if let Some(s) = props.copy_status {
                status = s;
            }
            match status {
                CopyStatus::Success => return Ok(copied.max(props.content_length)),
                CopyStatus::Pending => {}
                other => {
                    return Err(Error::generic(
                        BACKEND,
                        format!("VHD copy ended {other:?}: {}", props.copy_status_description.unwrap_or_default()),
                    ));
                }
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Timeout { operation: "copying the OS disk to the VHD blob".into(), after: self.copy_timeout });
            }
            tokio::time::sleep(self.arm.poll_interval().min(Duration::from_secs(10))).await;
        }
    }
}

/// Checks the blob ends with a fixed-VHD footer.
async fn check_footer(blob: &BlobClient, size: u64) -> Result<()> {
    if size < 512 {
        return Err(Error::generic(BACKEND, format!("the VHD blob has {size} bytes")));
    }
    let mut stream = blob.get().range(size - 512..size).into_stream();
    let mut footer = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::generic(BACKEND, format!("reading the VHD footer: {e}")))?;
        footer.extend(chunk.data.collect().await.map_err(|e| Error::generic(BACKEND, format!("reading the VHD footer: {e}")))?);
    }
    if !footer.starts_with(b"conectix") {
        return Err(Error::generic(BACKEND, "the copied blob does not end with a VHD footer"));
    }
    Ok(())
}

#[async_trait]
impl Distributor for DiskVhdDistributor {
    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
        let image = &req.image;
        let disk = image.attributes.get("osDiskId").and_then(Value::as_str).ok_or_else(|| Error::Unsupported {
            operation: format!("a VHD of `{}` (not an Azure build VM; upload local disks with BlobVhdDistributor)", image.id),
            backend: BACKEND,
        })?;
        let (dest, url) = self.destination(image, ctx).await?;
        // The SAS outlives the longest copy.
        let sas_seconds = self.copy_timeout.as_secs() + 600;
        // No image is made from the VM while its disk has an active SAS (source_lock.rs).
        let source = crate::source_lock::lock(&image.id).await;
        // Said once the lock is held: the grant is what happens next, not a wait for the
        // managed image's capture.
        ctx.output.line(OutputStream::Stdout, &format!("granting read access to {disk}"));
        // In the ledger before it exists: a cancelled or killed export still revokes the SAS
        // (the provisioner deletes a `diskAccess` with `endGetAccess`).
        let grant = ctx.record(aib_core::ResourceRecord::new(BACKEND, "diskAccess", disk, aib_core::Scope::Run))?;
        let access = self
            .arm
            .post_for_location(
                &format!("{disk}/beginGetAccess"),
                DISK_API,
                Some(&json!({"access": "Read", "durationInSeconds": sas_seconds})),
            )
            .await?;
        let result = match access["accessSAS"].as_str() {
            Some(sas) => {
                ctx.output.line(OutputStream::Stdout, &format!("copying the disk to {url} (server-side)"));
                let r = self.copy(sas, &dest, ctx).await;
                if r.is_err() {
                    // No half-copied blob is left behind (best effort: the run already failed).
                    if let Err(e) = dest.delete().await {
                        ctx.run.notice(format!("the partial VHD {url} could not be deleted: {}", redact(&e.to_string())));
                    }
                }
                r
            }
            None => Err(Error::generic(BACKEND, format!("{disk}: beginGetAccess returned no accessSAS"))),
        };
        // The SAS is revoked on every path.
        let revoked = self.arm.post(&format!("{disk}/endGetAccess"), DISK_API, None).await;
        drop(source);
        if revoked.is_ok() {
            ctx.release(&grant)?;
        }
        let size = result?;
        revoked?;
        check_footer(&dest, size).await?;
        if self.uri.is_none() {
            keep_run_group(image, ctx)?;
        }
        ctx.output.line(OutputStream::Stdout, &format!("copied {} MiB; access revoked", size >> 20));
        Ok(Artifact::with_uri(url))
    }
}

/// A staging group made for this run alone is deleted with it, and with it the account and
/// the VHD: once the VHD is there, the group is kept instead (its other resources still go).
fn keep_run_group(image: &CapturedImage, ctx: &StepContext) -> Result<()> {
    let Some(group) = image.attributes.get("stagingResourceGroup").and_then(Value::as_str) else { return Ok(()) };
    let run_group = ctx.run.ledger().outstanding().into_iter().find(|r| r.kind == "resourceGroup" && r.name.eq_ignore_ascii_case(group));
    if let Some(r) = run_group {
        ctx.keep(&r.id)?;
        ctx.run.notice(format!(
            "the VHD has no `uri`, so it stays in {group}, the run's own staging group: the group is kept after the run \
             (delete it once the VHD is no longer needed)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn signatures_are_redacted() {
        assert_eq!(
            crate::blob::redact("copy from http://h/c/b.vhd?sv=1&sig=abc%2B=&se=2 failed: x-ms-copy-source:https://a/b?sig=zz\nnext"),
            "copy from http://h/c/b.vhd?sv=1&sig=REDACTED&se=2 failed: x-ms-copy-source:https://a/b?sig=REDACTED\nnext"
        );
        assert_eq!(crate::blob::redact("nothing secret"), "nothing secret");
    }
}
