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
//! let error = report.error.unwrap();
//! assert!(matches!(*error.source, aib_core::Error::Timeout { .. }) && error.step == "capture");
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

/// One call a fake received, as a value tests can match and compare.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Call {
    /// `Source::resolve` of a source `type`.
    Resolve {
        /// The source type (`PlatformImage`, …).
        type_name: String,
        /// The template's region, as the request carried it.
        location: String,
    },
    /// `Provisioner::provision` of an exact image.
    Provision {
        /// [`aib_core::ResolvedImage::exact`].
        image: String,
    },
    /// `Provisioner::connect`.
    Connect {
        /// The VM id.
        vm: String,
    },
    /// A customizer or validator step ran.
    Step {
        /// Step name (`customize[0] install`).
        name: String,
    },
    /// `Communicator::execute`.
    Exec {
        /// The command line.
        command: String,
    },
    /// `Communicator::upload`.
    Upload {
        /// Where to.
        destination: String,
        /// Bytes written.
        bytes: u64,
    },
    /// `Communicator::reconnect`.
    Reconnect,
    /// `Provisioner::generalize`.
    Generalize {
        /// The VM id.
        vm: String,
    },
    /// `Provisioner::capture`.
    Capture {
        /// The VM id.
        vm: String,
    },
    /// `Distributor::distribute`.
    Distribute {
        /// Distributor `type`.
        type_name: String,
        /// `runOutputName`.
        run_output_name: String,
    },
    /// `Reclaim::delete`.
    Delete {
        /// Record kind.
        kind: String,
        /// Record name.
        name: String,
    },
}

impl Call {
    /// The step name of a [`Call::Step`].
    pub fn step(&self) -> Option<&str> {
        match self {
            Call::Step { name } => Some(name),
            _ => None,
        }
    }

    /// The command of a [`Call::Exec`].
    pub fn command(&self) -> Option<&str> {
        match self {
            Call::Exec { command } => Some(command),
            _ => None,
        }
    }
}

/// An ordered record of what fakes were asked. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    entries: Arc<Mutex<Vec<Call>>>,
}

impl Journal {
    /// Appends a call.
    pub fn push(&self, c: Call) {
        if let Ok(mut v) = self.entries.lock() {
            v.push(c);
        }
    }

    /// Every call so far.
    pub fn entries(&self) -> Vec<Call> {
        self.entries.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The position of the first call that `f` matches.
    pub fn position(&self, f: impl Fn(&Call) -> bool) -> Option<usize> {
        self.entries().iter().position(f)
    }
}
