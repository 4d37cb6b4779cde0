//! Run states (AIB's `runState`/`runSubState`) and the events a run emits.

use crate::ledger::ResourceRecord;
use futures::Stream;
use serde::Serialize;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// AIB's `lastRunStatus.runState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RunState {
    /// The run is in progress.
    Running,
    /// Cancel was asked; cleanup is under way.
    Canceling,
    /// Every target was published.
    Succeeded,
    /// Some targets were published, some failed.
    PartiallySucceeded,
    /// The run failed.
    Failed,
    /// The run was cancelled.
    Canceled,
}

impl RunState {
    /// True for the four end states.
    pub fn is_terminal(&self) -> bool {
        !matches!(self, RunState::Running | RunState::Canceling)
    }
}

/// AIB's `lastRunStatus.runSubState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum RunSubState {
    /// Waiting to start.
    Queued,
    /// Resolving the source and starting the build VM.
    Building,
    /// Running customizers.
    Customizing,
    /// Optimizing the image.
    Optimizing,
    /// Running validators.
    Validating,
    /// Publishing to the targets.
    Distributing,
}

macro_rules! display_debug {
    ($($t:ty),*) => { $(impl fmt::Display for $t {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { fmt::Debug::fmt(self, f) }
    })* };
}
display_debug!(RunState, RunSubState);

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Something that happened in a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "camelCase")]
#[non_exhaustive]
pub enum Event {
    /// `runState`/`runSubState` changed.
    State {
        /// The run state.
        state: RunState,
        /// The sub-state, while running.
        sub_state: Option<RunSubState>,
        /// When.
        #[serde(with = "crate::report::rfc3339")]
        at: SystemTime,
    },
    /// A step began.
    StepStarted {
        /// Step name, such as `customize[1] install-nginx`.
        step: String,
    },
    /// A step ended.
    StepFinished {
        /// Step name.
        step: String,
        /// How long it took.
        #[serde(with = "crate::report::millis")]
        duration: Duration,
        /// `None` on success, else the error.
        error: Option<String>,
    },
    /// One line of output of a step.
    Output {
        /// Step name.
        step: String,
        /// Which stream.
        stream: OutputStream,
        /// The line, without its newline; secrets are masked.
        line: String,
    },
    /// A resource was recorded in the ledger (just before it is created).
    ResourceCreated {
        /// The record.
        resource: ResourceRecord,
    },
    /// A resource was deleted and released from the ledger.
    ResourceDeleted {
        /// The record.
        resource: ResourceRecord,
    },
    /// Progress of a long step (bytes copied, replicas done).
    Progress {
        /// Step name.
        step: String,
        /// Done so far.
        done: u64,
        /// Total, when known.
        total: Option<u64>,
        /// Unit (`bytes`, `replicas`).
        unit: String,
    },
    /// A note for the user (a warning about a setting, a retry).
    Notice {
        /// Text.
        message: String,
    },
}

/// Where steps write their output lines.
///
/// # Contract
/// Implementations are cheap and never block: they are called for every line a build VM
/// prints.
pub trait OutputSink: Send + Sync {
    /// One line (no trailing newline).
    fn line(&self, stream: OutputStream, line: &str);
    /// Progress of the current step.
    fn progress(&self, _done: u64, _total: Option<u64>, _unit: &str) {}
}

/// A sink that drops everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NullSink;

impl OutputSink for NullSink {
    fn line(&self, _: OutputStream, _: &str) {}
}

/// A sink that keeps lines in memory (for tests and small tools).
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    lines: Arc<Mutex<Vec<(OutputStream, String)>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<(OutputStream, String)> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The standard-output lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.lines().into_iter().filter(|(s, _)| *s == OutputStream::Stdout).map(|(_, l)| l).collect()
    }
}

impl OutputSink for MemorySink {
    fn line(&self, stream: OutputStream, line: &str) {
        if let Ok(mut l) = self.lines.lock() {
            l.push((stream, line.to_string()));
        }
    }
}

/// The receiving end of a run's events: a [`Stream`] that ends when the run has finished.
#[derive(Debug)]
pub struct EventStream {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<Event>) -> Self {
        EventStream { rx }
    }
}

impl Stream for EventStream {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}
