//! Run states (AIB's `runState`/`runSubState`) and the events a run emits.

use crate::ledger::ResourceRecord;
use crate::report::StepError;
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

pub use crate::state::{RunState, RunSubState};

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
        #[serde(with = "crate::serde_time::rfc3339")]
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
        #[serde(with = "crate::serde_time::millis")]
        duration: Duration,
        /// `None` on success, else the error.
        error: Option<StepError>,
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
    /// The reader fell behind: this many output lines and progress events were dropped
    /// just before this point. State, step, resource and notice events are never dropped.
    Lagged {
        /// Events dropped.
        dropped: u64,
    },
}

impl Event {
    /// True for events the channel may drop when its reader falls behind (output lines and
    /// progress); every other event is always delivered.
    pub fn is_lossy(&self) -> bool {
        matches!(self, Event::Output { .. } | Event::Progress { .. })
    }
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

/// A sink that keeps lines in memory (for tests and small tools), up to a byte limit (16 MiB
/// unless [`MemorySink::with_limit`] says otherwise): lines past it are counted, not kept, so
/// a command that floods its output cannot exhaust the host's memory.
#[derive(Debug, Clone)]
pub struct MemorySink {
    state: Arc<Mutex<Kept>>,
}

#[derive(Debug, Default)]
struct Kept {
    lines: Vec<(OutputStream, String)>,
    bytes: usize,
    limit: usize,
    dropped: u64,
    progress: Vec<(u64, Option<u64>, String)>,
}

/// How many progress reports a [`MemorySink`] keeps (the first ones and the last).
const MEMORY_SINK_PROGRESS: usize = 4096;

/// What a [`MemorySink`] keeps by default.
pub const MEMORY_SINK_LIMIT: usize = 16 << 20;

impl Default for MemorySink {
    fn default() -> Self {
        Self::with_limit(MEMORY_SINK_LIMIT)
    }
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty sink keeping at most `bytes` of line text.
    pub fn with_limit(bytes: usize) -> Self {
        MemorySink { state: Arc::new(Mutex::new(Kept { limit: bytes, ..Kept::default() })) }
    }

    /// The lines so far.
    pub fn lines(&self) -> Vec<(OutputStream, String)> {
        self.state.lock().map(|l| l.lines.clone()).unwrap_or_default()
    }

    /// The standard-output lines so far.
    pub fn stdout(&self) -> Vec<String> {
        self.lines().into_iter().filter(|(s, _)| *s == OutputStream::Stdout).map(|(_, l)| l).collect()
    }

    /// Lines not kept because the limit was reached.
    pub fn dropped(&self) -> u64 {
        self.state.lock().map(|l| l.dropped).unwrap_or(0)
    }

    /// The progress reports so far, `(done, total, unit)`: the first 4095 and the latest.
    pub fn progress_reports(&self) -> Vec<(u64, Option<u64>, String)> {
        self.state.lock().map(|l| l.progress.clone()).unwrap_or_default()
    }
}

impl OutputSink for MemorySink {
    fn line(&self, stream: OutputStream, line: &str) {
        if let Ok(mut k) = self.state.lock() {
            if k.bytes + line.len() > k.limit {
                k.dropped += 1;
            } else {
                k.bytes += line.len();
                k.lines.push((stream, line.to_string()));
            }
        }
    }

    fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        if let Ok(mut k) = self.state.lock() {
            if k.progress.len() >= MEMORY_SINK_PROGRESS {
                k.progress.pop();
            }
            k.progress.push((done, total, unit.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memory_sink_keeps_what_its_limit_allows_and_counts_the_rest() {
        let sink = MemorySink::with_limit(10);
        for l in ["12345", "6789", "abc", "d"] {
            sink.line(OutputStream::Stdout, l);
        }
        assert_eq!(sink.stdout(), ["12345", "6789", "d"]);
        assert_eq!(sink.dropped(), 1);
        assert_eq!(MemorySink::new().dropped(), 0);
    }
}
