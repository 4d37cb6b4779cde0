//! Storage behind the ARM test server: storage accounts whose blob endpoint is an Azurite, and
//! managed disks exported (`beginGetAccess`) as fixed-VHD page blobs there with a read SAS, so
//! a server-side copy of the disk works as it does in Azure.

use futures::future::BoxFuture;
use std::fmt;

/// Where the server's storage accounts and exported disks live.
///
/// # Contract
/// `export` writes a fixed VHD of `size_bytes` (plus its 512-byte footer) whose first sector
/// names the disk, and returns a URL from which the same storage service can copy it.
pub trait DiskStore: Send + Sync + fmt::Debug + 'static {
    /// The blob endpoint every storage account reports (`primaryEndpoints.blob`).
    fn blob_endpoint(&self) -> String;
    /// The account key `listKeys` answers.
    fn key(&self) -> String;
    /// Exports the disk `disk_id`.
    fn export(&self, disk_id: &str, size_bytes: u64) -> BoxFuture<'static, Result<String, String>>;

    /// A storage account `id` is created (or updated): its blob endpoint and whether it takes
    /// Shared Key requests (`shared_key` asks for it; a store may refuse, as a policy does).
    /// By default every account shares [`DiskStore::blob_endpoint`].
    fn create_account(&self, id: &str, shared_key: bool) -> Result<(String, bool), String> {
        let _ = id;
        Ok((self.blob_endpoint(), shared_key))
    }

    /// The key `listKeys` answers for the account `id`; by default [`DiskStore::key`].
    fn account_key(&self, id: &str) -> String {
        let _ = id;
        self.key()
    }

    /// The account `id` was deleted (alone or with its group): a store that keeps accounts
    /// apart removes its blobs. By default nothing happens.
    fn delete_account(&self, id: &str) {
        let _ = id;
    }
}

/// The 512-byte footer of a fixed VHD of `size` bytes (Microsoft's VHD specification).
pub fn vhd_footer(size: u64) -> [u8; 512] {
    let mut f = [0u8; 512];
    f[0..8].copy_from_slice(b"conectix");
    f[8..12].copy_from_slice(&2u32.to_be_bytes()); // features: reserved bit
    f[12..16].copy_from_slice(&0x0001_0000u32.to_be_bytes()); // format version
    f[16..24].copy_from_slice(&u64::MAX.to_be_bytes()); // data offset: none (fixed)
    f[28..32].copy_from_slice(b"aib ");
    f[32..36].copy_from_slice(&0x0001_0000u32.to_be_bytes());
    f[36..40].copy_from_slice(b"Wi2k");
    f[40..48].copy_from_slice(&size.to_be_bytes());
    f[48..56].copy_from_slice(&size.to_be_bytes());
    // Geometry (cylinders, heads, sectors per track) as the specification computes it.
    let sectors = (size / 512).min(65535 * 16 * 255);
    let (mut spt, mut heads, cyl_heads);
    if sectors >= 65535 * 16 * 63 {
        spt = 255;
        heads = 16;
        cyl_heads = sectors / spt;
    } else {
        spt = 17;
        let mut ch = sectors / spt;
        heads = ch.div_ceil(1024).max(4);
        if ch >= heads * 1024 || heads > 16 {
            spt = 31;
            heads = 16;
            ch = sectors / spt;
        }
        if ch >= heads * 1024 {
            spt = 63;
            heads = 16;
            ch = sectors / spt;
        }
        cyl_heads = ch;
    }
    let cylinders = cyl_heads / heads;
    f[56..58].copy_from_slice(&(cylinders as u16).to_be_bytes());
    f[58] = heads as u8;
    f[59] = spt as u8;
    f[60..64].copy_from_slice(&2u32.to_be_bytes()); // fixed disk
    f[68..84].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    let sum: u32 = f.iter().map(|b| u32::from(*b)).sum();
    f[64..68].copy_from_slice(&(!sum).to_be_bytes());
    f
}

#[cfg(feature = "azure")]
pub use azurite::{AzuriteDisks, EXPORT_CAP, StorageStats};

#[cfg(feature = "azure")]
mod azurite {
    use super::{DiskStore, vhd_footer};
    use crate::arm::blob_front::BlobFront;
    use azure_storage::shared_access_signature::service_sas::BlobSasPermissions;
    use azure_storage::{CloudLocation, StorageCredentials};
    use azure_storage_blobs::prelude::{BA512Range, ClientBuilder};
    use futures::future::BoxFuture;
    use std::sync::Arc;

    /// The largest disk exported into Azurite.
    pub const EXPORT_CAP: u64 = 256 << 20;

    /// Disks and storage accounts in an Azurite ([`crate::azurite::Azurite`]).
    #[derive(Debug, Clone)]
    pub struct AzuriteDisks {
        endpoint: String,
        front: Option<Arc<BlobFront>>,
    }

    /// What the storage accounts' endpoints saw.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct StorageStats {
        /// Shared Key requests refused by accounts that take only Entra ID tokens.
        pub shared_key_refused: usize,
        /// Requests authorized with a bearer token.
        pub bearer_requests: usize,
        /// Deleted accounts whose blobs could not be removed.
        pub cleanup_failures: Vec<String>,
    }

    impl AzuriteDisks {
        /// Disks kept in the Azurite at `endpoint` (`http://127.0.0.1:PORT/devstoreaccount1`),
        /// every storage account sharing its well-known account (an Azurite started elsewhere).
        pub fn new(endpoint: impl Into<String>) -> Self {
            AzuriteDisks { endpoint: endpoint.into().trim_end_matches('/').to_string(), front: None }
        }

        /// Disks kept in `azurite`, and every storage account an Azurite account of its own
        /// behind a front that applies the account rules (`blob_front.rs`): a deleted account's
        /// blobs are gone, an account without Shared Key access takes only tokens, a copy stays
        /// pending for `copy_reads` status reads (0: Azurite's at-once copies).
        pub async fn with_accounts(azurite: &crate::azurite::Azurite, copy_reads: u32) -> std::io::Result<Self> {
            let pool = (0..crate::azurite::POOL).map(crate::azurite::pool_account).collect();
            let front = BlobFront::start(azurite.base_url(), pool, copy_reads).await?;
            Ok(AzuriteDisks { endpoint: azurite.endpoint(), front: Some(Arc::new(front)) })
        }

        /// Every account takes only Entra ID tokens (`allowSharedKeyAccess: false`), as an Azure
        /// Policy that forces it makes them. Needs [`AzuriteDisks::with_accounts`].
        #[must_use]
        pub fn refusing_shared_key(self) -> Self {
            if let Some(f) = &self.front {
                f.refuse_shared_key();
            }
            self
        }

        /// What the accounts' endpoints saw.
        pub fn stats(&self) -> StorageStats {
            self.front.as_ref().map(|f| f.stats()).unwrap_or_default()
        }

        /// The Azurite account (name, key) behind the ARM storage account `id`, to look at its
        /// blobs without the front.
        pub fn azurite_account(&self, id: &str) -> Option<(String, String)> {
            self.front.as_ref()?.azurite_account(id)
        }
    }

    impl DiskStore for AzuriteDisks {
        fn blob_endpoint(&self) -> String {
            format!("{}/", self.endpoint)
        }

        fn key(&self) -> String {
            crate::azurite::KEY.into()
        }

        fn create_account(&self, id: &str, shared_key: bool) -> Result<(String, bool), String> {
            match &self.front {
                Some(f) => f.create(id, shared_key),
                None => Ok((self.blob_endpoint(), shared_key)),
            }
        }

        fn account_key(&self, id: &str) -> String {
            self.azurite_account(id).map_or_else(|| self.key(), |(_, key)| key)
        }

        fn delete_account(&self, id: &str) {
            if let Some(f) = &self.front {
                f.delete(id);
            }
        }

        fn export(&self, disk_id: &str, size_bytes: u64) -> BoxFuture<'static, Result<String, String>> {
            // Azurite reads a copy's whole source into one string (at most 512 MiB): exported
            // disks are capped at EXPORT_CAP; the footer states the capped size.
            let size_bytes = size_bytes.min(EXPORT_CAP);
            let endpoint = self.endpoint.clone();
            let name =
                format!("{}-{}.vhd", disk_id.rsplit('/').next().unwrap_or("disk").to_ascii_lowercase(), uuid::Uuid::new_v4().simple());
            let marker = format!("aib-testkit disk {disk_id}\n");
            Box::pin(async move {
                let account = crate::azurite::ACCOUNT;
                let creds = StorageCredentials::access_key(account, azure_core::auth::Secret::new(crate::azurite::KEY));
                let client = ClientBuilder::with_location(CloudLocation::Custom { account: account.into(), uri: endpoint }, creds);
                let container = client.container_client("md-disks");
                if let Err(e) = container.create().await
                    && e.as_http_error().is_none_or(|h| h.error_code() != Some("ContainerAlreadyExists"))
                {
                    return Err(format!("creating the disks container: {e}"));
                }
                let blob = container.blob_client(&name);
                let e = |e: azure_core::Error| e.to_string();
                blob.put_page_blob(u128::from(size_bytes + 512)).await.map_err(e)?;
                let mut first = marker.into_bytes();
                first.resize(512, 0);
                blob.put_page(BA512Range::new(0, 511).map_err(e)?, first).await.map_err(e)?;
                blob.put_page(BA512Range::new(size_bytes, size_bytes + 511).map_err(e)?, vhd_footer(size_bytes).to_vec())
                    .await
                    .map_err(e)?;
                let sas = blob
                    .shared_access_signature(
                        BlobSasPermissions { read: true, ..Default::default() },
                        time::OffsetDateTime::now_utc() + time::Duration::hours(1),
                    )
                    .await
                    .map_err(e)?;
                blob.generate_signed_blob_url(&sas).map(|u| u.to_string()).map_err(e)
            })
        }
    }
}
