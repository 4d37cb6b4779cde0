//! AIB's run states: `lastRunStatus.runState` and `runSubState`.

use serde::Serialize;
use std::fmt;

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
