//! # aib-local
//!
//! The embedded default backend: real image builds on one machine.
//! - [`Catalog`]: marketplace URNs resolved locally; `Debian:debian-12:12-gen2` is built from
//!   Debian's mirror (mmdebstrap, no loop devices or mounts) and cached under a recipe hash;
//!   other images are imported with a SHA-256.
//! - [`QemuProvisioner`]: QEMU with KVM when it really works and TCG otherwise, a
//!   copy-on-write overlay, a cloud-init seed with an ephemeral key and a pre-generated host
//!   key, user networking on 127.0.0.1, the serial console in the run log, QMP power-down.
//! - Outputs: fixed VHD (Azure's rules), qcow2 (zstd/zlib), raw, and a versioned local
//!   [`Gallery`] that `SharedImage` and `ManagedImage` targets map onto.
//!
//! One backend value builds any template:
//!
//! ```no_run
//! # async fn f() -> aib_core::Result<()> {
//! use aib_core::{Pipeline, template::ImageTemplate};
//! use aib_local::LocalBackend;
//!
//! let local = LocalBackend::builder().state_dir("/var/lib/aib").build()?;
//! aib_local::tools::check()?; // QEMU and friends installed? The error says how to get them.
//! for file in ["web.json", "db.json"] {
//!     let t = ImageTemplate::from_json(&std::fs::read_to_string(file)?)?.template;
//!     let report = Pipeline::from_template(&t, &local.backend())?.ledger(local.ledger()?).build()?.run().await;
//!     println!("{file}: {} {}", report.run_state, report.message);
//! }
//! // What killed runs left (VMs, overlays, temp files), through the ledger:
//! let left = local.ledger()?.gc(&[&*local.provisioner()], std::time::Duration::from_secs(3600)).await?;
//! println!("gc: {} resources deleted", left.deleted.len());
//! # Ok(()) }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod backend;
pub mod cache;
pub mod catalog;
mod console;
pub mod debian;
pub mod error;
pub mod gallery;
pub mod outputs;
mod passt;
mod qemu;
mod qmp;
mod resume;
pub mod tools;
pub mod warm;

pub use backend::{LocalBackend, LocalBackendBuilder, LocalSource, default_state_dir};
pub use cache::{CacheEntry, StepCache};
pub use catalog::Catalog;
pub use gallery::Gallery;
pub use qemu::{BUILD_USER, GuestNetwork, QemuProvisioner, vm_shape};
pub use tools::Accelerator;
pub use warm::{WarmState, WarmStore};
