//! The report a run ends with: AIB's `lastRunStatus` and run outputs, with aib's detail.

use crate::events::{RunState, RunSubState};
use crate::ledger::ResourceRecord;
use crate::types::{AccessInfo, ResolvedImage};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// One state change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChange {
    /// `runState`.
    pub run_state: RunState,
    /// `runSubState`.
    pub run_sub_state: Option<RunSubState>,
    /// When.
    #[serde(with = "rfc3339")]
    pub at: SystemTime,
}

/// One step of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    /// Step name.
    pub name: String,
    /// The sub-state it ran in.
    pub phase: RunSubState,
    /// When it started.
    #[serde(with = "rfc3339")]
    pub started: SystemTime,
    /// How long it took (all attempts).
    #[serde(with = "millis", rename = "durationMs")]
    pub duration: Duration,
    /// Attempts made.
    pub attempts: u32,
    /// The error, if it failed.
    pub error: Option<String>,
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
    pub error: Option<String>,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    /// What happened, naming the step for failures.
    pub message: String,
    /// Start.
    #[serde(with = "rfc3339")]
    pub start_time: SystemTime,
    /// End.
    #[serde(with = "rfc3339")]
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

pub(crate) mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub(crate) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_millis(*t))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

pub(crate) mod millis {
    use serde::Serializer;
    use std::time::Duration;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}
