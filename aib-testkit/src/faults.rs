//! Fault injection: scripted failures, hangs, disconnects and delays, keyed by step name.

use aib_core::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to do when a faulted step is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Fail with a non-retryable error naming the step.
    Fail,
    /// Fail with a retryable error.
    FailRetryable,
    /// Never finish (until the run times out or is cancelled).
    Hang,
    /// Drop the connection ([`Error::Disconnected`]).
    Disconnect,
    /// Succeed after a delay.
    Slow(Duration),
    /// A command exits with this code (communicator faults only).
    ExitCode(i32),
}

#[derive(Debug, Clone)]
struct Entry {
    fault: Fault,
    /// Skip this many hits first.
    after: usize,
    /// Fire this many times (None = always).
    times: Option<usize>,
    hits: usize,
}

/// A shared table of faults. Clone it freely: clones share the table.
///
/// Keys are step names as the pipeline uses them: `resolve`, `provision`, `connect`,
/// `customize[0] NAME`, `validate[0] NAME`, `generalize`, `capture`, `distribute NAME`,
/// and `delete` (cleanup); the fake communicator uses `exec` and `upload`.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    table: Arc<Mutex<HashMap<String, Vec<Entry>>>>,
}

impl Faults {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// `fault` every time `step` is reached.
    pub fn inject(&self, step: &str, fault: Fault) {
        self.push(step, Entry { fault, after: 0, times: None, hits: 0 });
    }

    /// `fault` the first `times` times `step` is reached.
    pub fn inject_times(&self, step: &str, fault: Fault, times: usize) {
        self.push(step, Entry { fault, after: 0, times: Some(times), hits: 0 });
    }

    /// `fault` once, at the `n`th time (0-based) `step` is reached.
    pub fn inject_at(&self, step: &str, n: usize, fault: Fault) {
        self.push(step, Entry { fault, after: n, times: Some(1), hits: 0 });
    }

    /// Removes every fault.
    pub fn clear(&self) {
        if let Ok(mut t) = self.table.lock() {
            t.clear();
        }
    }

    fn push(&self, step: &str, e: Entry) {
        if let Ok(mut t) = self.table.lock() {
            t.entry(step.to_string()).or_default().push(e);
        }
    }

    /// The fault for this arrival at `step`, if one fires.
    pub fn take(&self, step: &str) -> Option<Fault> {
        let mut t = self.table.lock().ok()?;
        let entries = t.get_mut(step)?;
        for e in entries.iter_mut() {
            let seen = e.hits;
            e.hits += 1;
            let in_window = seen >= e.after && e.times.is_none_or(|n| seen < e.after + n);
            if in_window {
                return Some(e.fault.clone());
            }
        }
        None
    }

    /// Applies the fault for `step`, if any: returns the error, sleeps, or hangs.
    pub async fn apply(&self, step: &str) -> Result<()> {
        match self.take(step) {
            None | Some(Fault::ExitCode(_)) => Ok(()),
            Some(f) => fire(step, f).await,
        }
    }
}

/// Carries out `fault` at `step`.
pub async fn fire(step: &str, fault: Fault) -> Result<()> {
    match fault {
        Fault::Fail => Err(Error::generic("fake", format!("injected failure at `{step}`"))),
        Fault::FailRetryable => {
            Err(Error::Generic { backend: "fake", retryable: true, source: format!("injected transient failure at `{step}`").into() })
        }
        Fault::Hang => std::future::pending().await,
        Fault::Disconnect => Err(Error::Disconnected { backend: "fake", source: format!("injected disconnect at `{step}`").into() }),
        Fault::Slow(d) => {
            tokio::time::sleep(d).await;
            Ok(())
        }
        Fault::ExitCode(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_of_faults() {
        let f = Faults::new();
        f.inject_at("exec", 2, Fault::Fail);
        assert_eq!(f.take("exec"), None);
        assert_eq!(f.take("exec"), None);
        assert_eq!(f.take("exec"), Some(Fault::Fail));
        assert_eq!(f.take("exec"), None);
        f.inject_times("x", Fault::Hang, 2);
        assert_eq!(f.take("x"), Some(Fault::Hang));
        assert_eq!(f.take("x"), Some(Fault::Hang));
        assert_eq!(f.take("x"), None);
    }
}
