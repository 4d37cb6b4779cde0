//! The report a run ends with: AIB's `lastRunStatus` and run outputs, with aib's detail.

use crate::Error;
use crate::ledger::ResourceRecord;
use crate::state::{RunState, RunSubState};
use crate::types::{AccessInfo, ResolvedImage};
use serde::{Serialize, Serializer};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Why a step (or the run around it) failed: the step, the sub-state it ran in, the
/// attempts made, and the typed [`Error`] itself, which a program can `match` on.
///
/// It is `Clone` (the error is shared) and serializes the error's `source` chain as text;
/// [`StepError::message`] is that text. In a run's reports and events the error has the
/// run's secrets masked already, in every field and cause.
///
/// ```
/// # use aib_core::{Error, RunSubState, report::StepError};
/// let e = StepError::new("customize[0] install", RunSubState::Customizing, 1, Error::Cancelled);
/// assert!(matches!(*e.source, Error::Cancelled));
/// assert_eq!(e.to_string(), "step `customize[0] install` failed: cancelled");
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StepError {
    /// The step (`customize[2] install`), or `run` for what failed outside any step.
    pub step: String,
    /// The sub-state it ran in.
    pub phase: RunSubState,
    /// Attempts made (1 unless the step's options retry it).
    pub attempts: u32,
    /// The error.
    pub source: Arc<Error>,
    message: String,
}

impl StepError {
    /// A step error; its message is the error's `source` chain on one line.
    pub fn new(step: impl Into<String>, phase: RunSubState, attempts: u32, source: impl Into<Arc<Error>>) -> Self {
        let source = source.into();
        let message = error_chain(&*source);
        StepError { step: step.into(), phase, attempts, source, message }
    }

    /// The error and its causes as one line.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.step == RUN_STEP { f.write_str(&self.message) } else { write!(f, "step `{}` failed: {}", self.step, self.message) }
    }
}

impl std::error::Error for StepError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Equal when step, phase, attempts and message are: errors themselves have no equality.
impl PartialEq for StepError {
    fn eq(&self, other: &Self) -> bool {
        (&self.step, self.phase, self.attempts, &self.message) == (&other.step, other.phase, other.attempts, &other.message)
    }
}

impl Eq for StepError {}

impl Serialize for StepError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("StepError", 4)?;
        st.serialize_field("step", &self.step)?;
        st.serialize_field("phase", &self.phase)?;
        st.serialize_field("attempts", &self.attempts)?;
        st.serialize_field("message", &self.message)?;
        st.end()
    }
}

/// The [`StepError::step`] of failures outside any step (the build timeout between steps,
/// a ledger that cannot be opened).
pub const RUN_STEP: &str = "run";

pub use crate::error::error_chain;

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// `runState`.
    pub run_state: RunState,
    /// `runSubState`.
    pub run_sub_state: Option<RunSubState>,
    /// When.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub at: SystemTime,
}

/// One step of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// Step name.
    pub name: String,
    /// The sub-state it ran in.
    pub phase: RunSubState,
    /// When it started.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub started: SystemTime,
    /// How long it took (all attempts).
    #[serde(with = "crate::serde_time::millis", rename = "durationMs")]
    pub duration: Duration,
    /// Attempts made.
    pub attempts: u32,
    /// The error, if it failed.
    pub error: Option<StepError>,
    /// The step did not run: the build VM started at a resume point after it (the step cache).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
}

/// What the step cache did in a run ([`crate::PipelineBuilder::cache`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[non_exhaustive]
#[serde(rename_all = "camelCase")]
pub struct CacheReport {
    /// The customizers that can be cached, in order: the resume points asked for.
    pub points: Vec<crate::types::ResumePoint>,
    /// The steps the build VM did not run: it started after the last of them.
    pub hits: Vec<String>,
    /// Why the cache did not serve more: the first cacheable step that ran and why (no
    /// point kept for it, its fingerprint changed), or why nothing was cached.
    pub miss: Option<String>,
    /// The steps after which the VM was kept as a new resume point.
    pub kept: Vec<String>,
    /// The first step that is never cached, and why (no fingerprint, or opted out); it and
    /// every step after it run on every build.
    pub uncached_from: Option<String>,
}

/// `Succeeded` or `Failed`, as AIB's RunOutput `provisioningState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum OutputState {
    /// Published.
    Succeeded,
    /// Not published.
    Failed,
}

/// AIB's RunOutput: one per `distribute` target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
#[serde(rename_all = "camelCase")]
pub struct RunOutput {
    /// `runOutputName`.
    pub name: String,
    /// Distributor `type`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Managed image or gallery version id.
    pub artifact_id: Option<String>,
    /// VHD or file URI.
    pub artifact_uri: Option<String>,
    /// Published or not.
    pub provisioning_state: OutputState,
    /// Why not.
    pub error: Option<StepError>,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
#[serde(rename_all = "camelCase")]
pub struct RunReport {
    /// Run id.
    pub run_id: String,
    /// Template name.
    pub template_name: String,
    /// Final `runState`.
    pub run_state: RunState,
    /// Last `runSubState`.
    pub run_sub_state: Option<RunSubState>,
    /// What happened, naming the step for failures (the rendering of `error` and more).
    pub message: String,
    /// Why the run did not succeed: the first failed step with its typed error (for a
    /// `PartiallySucceeded` run, the first failed target's). `None` on success.
    pub error: Option<StepError>,
    /// Start.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub start_time: SystemTime,
    /// End.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub end_time: SystemTime,
    /// Every state change.
    pub history: Vec<StateChange>,
    /// Every step, in order.
    pub steps: Vec<StepReport>,
    /// The exact source image.
    pub source: Option<ResolvedImage>,
    /// One per target.
    pub run_outputs: Vec<RunOutput>,
    /// Under `abort`: how to reach the kept build VM.
    pub kept_vm: Option<AccessInfo>,
    /// Cleanup failures (the resources stay in the ledger for `gc`).
    pub cleanup_errors: Vec<String>,
    /// Resources still in the ledger after the run.
    pub leftover_resources: Vec<ResourceRecord>,
    /// The customization log, when a log directory was set.
    pub customization_log: Option<PathBuf>,
    /// The last lines of the customization log.
    pub log_tail: Vec<String>,
    /// What the step cache did; `None` when it was off or had nothing to do.
    pub cache: Option<CacheReport>,
}

impl RunReport {
    /// A `Failed` report with nothing in it yet, starting now.
    pub(crate) fn failed(run_id: String, template_name: String) -> Self {
        let now = SystemTime::now();
        RunReport {
            run_id,
            template_name,
            run_state: RunState::Failed,
            run_sub_state: None,
            message: String::new(),
            error: None,
            start_time: now,
            end_time: now,
            history: Vec::new(),
            steps: Vec::new(),
            source: None,
            run_outputs: Vec::new(),
            kept_vm: None,
            cleanup_errors: Vec::new(),
            leftover_resources: Vec::new(),
            customization_log: None,
            log_tail: Vec::new(),
            cache: None,
        }
    }

    /// True for `Succeeded`.
    pub fn succeeded(&self) -> bool {
        self.run_state == RunState::Succeeded
    }

    /// The run output named `name`.
    pub fn output(&self, name: &str) -> Option<&RunOutput> {
        self.run_outputs.iter().find(|o| o.name == name)
    }

    /// The step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepReport> {
        self.steps.iter().find(|s| s.name == name)
    }
}
