//! # aib-testkit
//!
//! Test your image pipelines without a cloud or a VM:
//! - [`FakeBackend`]: a fake Source, Provisioner, Communicator, Customizer and Distributor
//!   for every AIB type, as `Clone` handles over one in-memory "cloud" that records every
//!   call ([`FakeBackend::journal`]) and obeys a fault table ([`Faults`]: fail, hang,
//!   disconnect, slow, exit codes — at a named step, the Nth time);
//! - [`conformance`]: the suite every backend passes;
//! - test servers: [`sshd`], [`winrm`] with a fake Windows machine ([`windows`]), [`arm`]
//!   (Azure Resource Manager, with [`guest`] machines behind its VMs), [`azurite`];
//! - `mock` (feature `mock`): `mockall` mocks of every trait.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! use aib_core::{Pipeline, RunState, template::ImageTemplate};
//! use aib_testkit::{FakeBackend, Fault};
//!
//! let t = ImageTemplate::from_json(r#"{"location": "westus", "properties": {
//!   "buildTimeoutInMinutes": 30,
//!   "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
//!   "distribute": [{"type": "VHD", "runOutputName": "disk"}]}}"#).unwrap().template;
//! let fakes = FakeBackend::new();
//! fakes.faults().inject("capture", Fault::Hang);
//! let report = Pipeline::from_template(&t, &fakes.backend()).unwrap().build().unwrap().run().await;
//! assert_eq!(report.run_state, RunState::Failed);
//! assert!(report.message.contains("timed out") && report.message.contains("capture"));
//! assert!(fakes.live_resources().is_empty());
//! # });
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod arm;
pub mod azurite;
mod communicator;
pub mod conformance;
pub mod corpus;
mod fakes;
mod faults;
pub mod guest;
pub mod http;
#[cfg(feature = "mock")]
pub mod mock;
pub mod sshd;
pub mod tls;
pub mod windows;
pub mod winrm;

pub use communicator::{FakeCommunicator, Reply};
pub use fakes::{BACKEND, FakeBackend, FakeCustomizer, FakeDistributor, FakeProvisioner, FakeSource};
pub use faults::{Fault, Faults, fire};

use std::sync::{Arc, Mutex};

/// An ordered record of what fakes were asked. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    entries: Arc<Mutex<Vec<String>>>,
}

impl Journal {
    /// Appends an entry.
    pub fn push(&self, e: String) {
        if let Ok(mut v) = self.entries.lock() {
            v.push(e);
        }
    }

    /// Every entry so far.
    pub fn entries(&self) -> Vec<String> {
        self.entries.lock().map(|v| v.clone()).unwrap_or_default()
    }
}
