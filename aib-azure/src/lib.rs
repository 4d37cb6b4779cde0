//! # aib-azure
//!
//! The Azure backend:
//! - [`ArmClient`]: one client for all concurrent builds: bearer tokens from azure_identity
//!   ([`Credential::from_env`]), retries of 429 and 5xx honouring `Retry-After` with jittered
//!   backoff, a request budget per subscription, long-running operations polled under their
//!   own deadline, and ARM's error bodies surfaced as they are (`AllocationFailed`,
//!   `RequestDisallowedByPolicy`, …);
//! - [`AzureSource`]: `PlatformImage` (`latest` through the marketplace list, `planInfo`),
//!   `ManagedImage` and `SharedImageVersion` (`…/versions/latest`), checked for region and
//!   generalization;
//! - [`AzureProvisioner`]: the staging resource group (AIB's name and rules), the network, a
//!   build VM — Linux with an SSH host key chosen here and verified from the first connection,
//!   Windows with a generated password and WinRM over HTTPS to a certificate pinned through
//!   Run Command ([`windows`]) — deprovisioning or Sysprep, deallocation and generalization;
//! - [`ManagedImageDistributor`], [`SharedImageDistributor`] (replication progress) and
//!   [`DiskVhdDistributor`] (the OS disk copied server-side to a blob): the targets;
//! - [`upload`]: a disk from this machine (a fixed VHD) to a page blob, sending only the
//!   allocated, non-zero ranges, in parallel, with retries per range; [`BlobVhdDistributor`]
//!   makes that the `VHD` target of any backend (a local build published to Azure storage);
//! - [`AzureBackend`] puts it together as an [`aib_core::Backend`], and finds what killed runs
//!   left by their tags.
//!
//! Against the testkit's ARM server:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use aib_azure::{ArmClient, AzureSource, Credential};
//! use aib_core::template::{ImageSource, PlatformImageSource};
//! use aib_core::{ResolveRequest, Source, StepContext};
//! let arm_server = aib_testkit::arm::ArmServer::start().await.unwrap();
//! arm_server.add_marketplace_image("westus2", "Canonical", "ubuntu-24_04-lts", "server", "24.04.202501010");
//! let arm = ArmClient::builder().endpoint(arm_server.url()).credential(Credential::static_token("t")).build().unwrap();
//! let source = AzureSource::new(arm, "sub");
//! let spec = ImageSource::PlatformImage(PlatformImageSource {
//!     publisher: Some("Canonical".into()),
//!     offer: Some("ubuntu-24_04-lts".into()),
//!     sku: Some("server".into()),
//!     version: Some("latest".into()),
//!     plan_info: None,
//! });
//! let req = ResolveRequest::new(spec).with_location("West US 2"); // the template's `location`
//! let image = source.resolve(&req, &StepContext::detached("resolve").unwrap()).await.unwrap();
//! assert_eq!(image.exact_version.as_deref(), Some("24.04.202501010"));
//! # });
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod api;
mod backend;
mod blob;
mod client;
mod credential;
mod distribute;
mod error;
mod export;
mod naming;
mod network;
mod provision;
mod scope;
mod source_lock;
mod sources;
mod staging;
pub mod upload;
mod vhd;
pub mod windows;

pub use api::{COMPUTE_API, DISK_API, GALLERY_API, NETWORK_API, RESOURCES_API, STORAGE_API, api_version_for};
pub use backend::{AzureBackend, AzureBackendBuilder, TagGcReport};
pub use blob::parse_blob_uri;
pub use client::{ArmClient, ArmClientBuilder, DEFAULT_POLL_INTERVAL, PUBLIC_ARM, RetryConfig};
pub use credential::Credential;
pub use distribute::{ManagedImageDistributor, SharedImageDistributor, next_version};
pub use error::{ArmError, AzureError};
pub use export::DiskVhdDistributor;
pub use naming::{CREATED_AT_TAG, CREATED_BY, RUN_TAG, staging_account_name, staging_group_name};
pub use provision::{AzureProvisioner, AzureProvisionerBuilder, default_vm_size, default_vm_size_for};
pub use scope::SCOPE_HINT;
pub use sources::AzureSource;
pub use vhd::BlobVhdDistributor;
