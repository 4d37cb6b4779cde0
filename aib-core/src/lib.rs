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
//! // Why, as a value: the step, and the typed error it failed with.
//! let error = report.error.as_ref().unwrap();
//! assert_eq!(error.step, "customize[0] install");
//! assert!(matches!(*error.source, aib_core::Error::Generic { retryable: false, .. }));
//! assert!(report.leftover_resources.is_empty()); // the build VM was deleted
//! assert!(!events.is_empty());
//! # });
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod boundary;
mod channel;
pub mod context;
pub mod error;
pub mod events;
pub mod gc;
pub mod ledger;
mod next_steps;
pub mod pipeline;
pub mod reclaim;
pub mod redact;
pub mod registry;
pub mod report;
pub mod retry;
mod serde_time;
pub mod state;
pub mod template;
pub mod traits;
pub mod types;

pub use channel::EventStream;
pub use context::{RunContext, StepContext};
pub use error::{BoxError, Error, Result};
pub use events::{Event, MemorySink, NullSink, OutputSink, OutputStream};
pub use gc::GcReport;
pub use ledger::{Ledger, ResourceRecord, RunLedger, Scope};
pub use pipeline::{Pipeline, PipelineBuilder, RESUME_POINT_MIN_STEP, RetryOn, RunHandle, RunOptions, StepOptions};
pub use registry::{Backend, Registry};
pub use report::{CacheReport, OutputState, RunOutput, RunReport, StepError, StepReport};
pub use state::{RunState, RunSubState};
pub use template::ImageTemplate;
pub use traits::{Communicator, CommunicatorExt, Customizer, Distributor, Provisioner, Reclaim, Source};
pub use types::*;
