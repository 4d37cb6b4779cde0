//! # aib-azure
//!
//! The Azure backend, built up in slices. This slice holds the parts every Azure call goes
//! through and the sources:
//! - [`ArmClient`]: one client for all concurrent builds: bearer tokens from azure_identity
//!   ([`Credential::from_env`]), retries of 429 and 5xx honouring `Retry-After` with jittered
//!   backoff, a request budget per subscription, long-running operations polled under their
//!   own deadline, and ARM's error bodies surfaced as they are (`AllocationFailed`,
//!   `RequestDisallowedByPolicy`, …);
//! - [`AzureSource`]: `PlatformImage` (`latest` through the marketplace list), `ManagedImage`
//!   and `SharedImageVersion` (`…/versions/latest`), checked for region and generalization.
//!
//! - [`upload`]: a disk from this machine (a fixed VHD) to a page blob, sending only the
//!   allocated, non-zero ranges, in parallel, with retries per range; [`BlobVhdDistributor`]
//!   makes that the `VHD` target of any backend (a local build published to Azure storage).
//!
//! - [`ManagedImageDistributor`] and [`SharedImageDistributor`]: the ARM targets, from a
//!   captured VM or managed image.
//!
//! - [`AzureProvisioner`]: the staging resource group (AIB's name and rules), the network, a
//!   build VM whose SSH host key is chosen here and verified from the first connection,
//!   deprovisioning, deallocation and generalization; [`AzureBackend`] puts it together with
//!   the sources and distributors, and finds what killed runs left by their tags.
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod backend;
mod client;
mod credential;
mod distribute;
mod error;
mod export;
mod network;
mod provision;
mod sources;
pub mod upload;
mod vhd;

pub use backend::{AzureBackend, AzureBackendBuilder, TagGcReport};
pub use client::{ArmClient, ArmClientBuilder, PUBLIC_ARM, RetryConfig};
pub use credential::Credential;
pub use distribute::{ManagedImageDistributor, SharedImageDistributor, next_version};
pub use error::ArmError;
pub use export::{DiskVhdDistributor, STORAGE_API, staging_account_name};
pub use network::{NETWORK_API, RESOURCES_API};
pub use provision::{AzureProvisioner, AzureProvisionerBuilder, CREATED_AT_TAG, CREATED_BY, RUN_TAG, default_vm_size, staging_group_name};
pub use sources::{AzureSource, COMPUTE_API};
pub use vhd::{BlobVhdDistributor, parse_blob_uri};
