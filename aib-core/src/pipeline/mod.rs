//! The pipeline: a builder that validates in `build()`, and runs that follow AIB's states.
//!
//! ```
//! # tokio_test_block_on(async {
//! use aib_core::pipeline::Pipeline;
//! use aib_core::template::ImageTemplate;
//! use aib_testkit::FakeBackend;
//!
//! let json = r#"{"location": "westus", "properties": {
//!   "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
//!   "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hello"]}],
//!   "distribute": [{"type": "VHD", "runOutputName": "disk"}]}}"#;
//! let template = ImageTemplate::from_json(json).unwrap().template;
//! let fakes = FakeBackend::new();
//! let pipeline = Pipeline::from_template(&template, &fakes.backend()).unwrap().build().unwrap();
//! let report = pipeline.run().await;
//! assert!(report.succeeded(), "{}", report.message);
//! assert!(report.output("disk").unwrap().artifact_uri.is_some());
//! # });
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f)
//! # }
//! ```

mod builder;
mod run;

pub use builder::{PipelineBuilder, RetryOn, StepOptions};
pub use run::RunHandle;

/// The step cache keeps a resume point after a customizer that took at least this long: keeping
/// one (the VM's memory and a disk layer) costs about a second, so a quicker step is cheaper
/// to run again than to restore.
pub const RESUME_POINT_MIN_STEP: Duration = Duration::from_secs(2);

use crate::ledger::Ledger;
use crate::report::RunReport;
use crate::template::{ErrorAction, ImageSource, StringMap, VmProfile};
use crate::traits::{Customizer, Distributor, Provisioner, Reclaim, Source};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) customizer: Arc<dyn Customizer>,
    pub(crate) options: StepOptions,
}

#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) run_output_name: String,
    pub(crate) type_name: String,
    pub(crate) distributor: Arc<dyn Distributor>,
}

/// Every setting of a pipeline but its source and provisioner: the builder fills it, and
/// `build()` checks it and freezes it in [`Inner`].
#[derive(Debug, Clone)]
pub(crate) struct PipelineConfig {
    pub(crate) name: String,
    pub(crate) cleaners: Vec<Arc<dyn Reclaim>>,
    pub(crate) customizers: Vec<Step>,
    pub(crate) validators: Vec<Step>,
    pub(crate) targets: Vec<Target>,
    pub(crate) vm_profile: VmProfile,
    pub(crate) data_disks_gb: Vec<u32>,
    pub(crate) tags: StringMap,
    pub(crate) location: String,
    pub(crate) staging_resource_group: Option<String>,
    pub(crate) template_digest: crate::types::TemplateDigest,
    pub(crate) timeout: Duration,
    pub(crate) cleanup_timeout: Duration,
    pub(crate) on_customizer_error: ErrorAction,
    pub(crate) on_validation_error: ErrorAction,
    pub(crate) continue_distribute_on_failure: bool,
    pub(crate) source_validation_only: bool,
    pub(crate) ledger: Ledger,
    pub(crate) log_dir: Option<PathBuf>,
    pub(crate) secrets: Arc<Vec<String>>,
    pub(crate) event_capacity: usize,
    pub(crate) cache: bool,
}

/// A built pipeline: its checked settings, source and provisioner.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: PipelineConfig,
    pub(crate) source: Arc<dyn Source>,
    pub(crate) source_spec: ImageSource,
    pub(crate) provisioner: Arc<dyn Provisioner>,
}

/// A validated pipeline, ready to run any number of times (each run gets its own id,
/// ledger and events). Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
}

impl fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.inner.cfg.name)
            .field("source", &self.inner.source_spec.type_name())
            .field("customizers", &self.inner.cfg.customizers.len())
            .field("validators", &self.inner.cfg.validators.len())
            .field("targets", &self.inner.cfg.targets.iter().map(|t| &t.run_output_name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct RunOptions {
    /// The run id (letters, digits, `-`, `_`); a random one by default.
    pub run_id: Option<String>,
    /// Cancels the run when cancelled.
    pub cancel: Option<CancellationToken>,
}

impl RunOptions {
    /// Uses `id` as the run id.
    #[must_use]
    pub fn with_run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// Cancels the run with `token`.
    #[must_use]
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }
}

impl Pipeline {
    /// A builder.
    pub fn builder() -> PipelineBuilder {
        PipelineBuilder::new()
    }

    /// Runs to the end in the current task and returns the report (events are dropped).
    pub async fn run(&self) -> RunReport {
        self.run_with(RunOptions::default()).await
    }

    /// [`Pipeline::run`] with options.
    pub async fn run_with(&self, opts: RunOptions) -> RunReport {
        let run_id = opts.run_id.unwrap_or_else(new_run_id);
        let cancel = opts.cancel.unwrap_or_default();
        let span = tracing::info_span!("run", run_id = %run_id, template = %self.inner.cfg.name);
        tracing::Instrument::instrument(run::execute(self.inner.clone(), run_id, cancel, None), span).await
    }

    /// Starts a run on the current tokio runtime; the handle streams events, cancels, and
    /// yields the report.
    pub fn start(&self) -> RunHandle {
        self.start_with(RunOptions::default())
    }

    /// [`Pipeline::start`] with options.
    pub fn start_with(&self, opts: RunOptions) -> RunHandle {
        let run_id = opts.run_id.unwrap_or_else(new_run_id);
        let cancel = opts.cancel.unwrap_or_default();
        let (tx, rx) = crate::channel::channel(self.inner.cfg.event_capacity);
        let span = tracing::info_span!("run", run_id = %run_id, template = %self.inner.cfg.name);
        let join =
            tokio::spawn(tracing::Instrument::instrument(run::execute(self.inner.clone(), run_id.clone(), cancel.clone(), Some(tx)), span));
        RunHandle::new(run_id, rx, cancel, join)
    }

    /// The pipeline's ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.inner.cfg.ledger
    }
}

/// A fresh run id: `aib-` and 12 hex digits of a random UUID.
pub fn new_run_id() -> String {
    let u = uuid::Uuid::new_v4().simple().to_string();
    format!("aib-{}", &u[..12])
}
