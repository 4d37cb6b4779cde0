//! # aib-core
//!
//! The core of aib, Azure VM Image Builder as an embeddable library: the AIB template
//! model ([`template`]), the five backend traits ([`Source`], [`Provisioner`],
//! [`Communicator`], [`Customizer`], [`Distributor`]), the [`Pipeline`] that runs them with
//! AIB's states, and the [`Ledger`] that makes cleanup crash-safe. No cloud or VM code lives
//! here: backends do that (`aib-local`, `aib-azure`, and `aib-testkit`'s fakes).
//!
//! A run:
//! 1. parses a template ([`ImageTemplate::from_json`]) — errors carry JSON paths and AIB's codes;
//! 2. maps it onto a [`Backend`] ([`Pipeline::from_template`]);
//! 3. resolves the source, starts a build VM, connects, customizes, validates, generalizes,
//!    captures and distributes to every target at once, emitting [`Event`]s;
//! 4. cleans up from the ledger on every path and returns a [`RunReport`].
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use aib_core::{Pipeline, RunState, template::ImageTemplate};
//! use aib_testkit::{FakeBackend, Fault};
//! use futures::StreamExt;
//!
//! let template = ImageTemplate::from_json(r#"{"location": "westus", "properties": {
//!     "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
//!     "customize": [{"type": "Shell", "name": "install", "inline": ["apt-get install -y nginx"]}],
//!     "distribute": [{"type": "VHD", "runOutputName": "disk"}]}}"#).unwrap().template;
//!
//! // Fakes with a fault: the customizer fails.
//! let fakes = FakeBackend::new();
//! fakes.faults().inject("customize[0] install", Fault::Fail);
//! let pipeline = Pipeline::from_template(&template, &fakes.backend()).unwrap().build().unwrap();
//!
//! let mut run = pipeline.start();
//! let events: Vec<_> = run.events().collect().await;
//! let report = run.wait().await;
//! assert_eq!(report.run_state, RunState::Failed);
//! assert!(report.message.contains("customize[0] install"));
//! assert!(report.leftover_resources.is_empty()); // the build VM was deleted
//! assert!(!events.is_empty());
//! # });
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod context;
pub mod error;
pub mod events;
pub mod ledger;
pub mod pipeline;
pub mod registry;
pub mod report;
pub mod template;
pub mod traits;
pub mod types;

pub use context::{RunContext, StepContext};
pub use error::{BoxError, Error, Result};
pub use events::{Event, EventStream, MemorySink, NullSink, OutputSink, OutputStream, RunState, RunSubState};
pub use ledger::{GcReport, Ledger, ResourceRecord, RunLedger, Scope};
pub use pipeline::{Pipeline, PipelineBuilder, RunHandle, RunOptions, StepOptions};
pub use registry::{Backend, Registry};
pub use report::{OutputState, RunOutput, RunReport, StepReport};
pub use template::ImageTemplate;
pub use traits::{Communicator, CommunicatorExt, Customizer, Distributor, Provisioner, Source};
pub use types::*;
