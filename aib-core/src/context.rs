//! What a backend call gets besides its arguments: the run's ledger, its events and its
//! cancellation.

use crate::channel::EventSender;
use crate::events::{Event, OutputSink, OutputStream};
use crate::ledger::{Ledger, ResourceRecord, RunLedger};
use crate::{Error, Result};
use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Lines of the customization log kept in memory for the report.
pub(crate) const LOG_TAIL: usize = 200;
/// The customization log file stops growing here: a guest that floods its output cannot fill
/// the host's disk (the events still carry every line, within their own bound).
pub(crate) const LOG_MAX_BYTES: u64 = 256 << 20;
/// Longer lines are cut, in the log file and the report's tail.
pub(crate) const LINE_MAX_BYTES: usize = 64 << 10;

#[derive(Default)]
pub(crate) struct CustomizationLog {
    pub(crate) tail: VecDeque<String>,
    pub(crate) file: Option<(PathBuf, File)>,
    written: u64,
}

/// `line` cut to [`LINE_MAX_BYTES`] on a character boundary.
pub(crate) fn bounded_line(line: String) -> String {
    if line.len() <= LINE_MAX_BYTES {
        return line;
    }
    let mut end = LINE_MAX_BYTES;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} … [{} bytes cut]", &line[..end], line.len() - end)
}

impl CustomizationLog {
    fn push(&mut self, line: String) {
        let line = bounded_line(line);
        if let Some((_, f)) = &mut self.file
            && self.written < LOG_MAX_BYTES
        {
            let _ = writeln!(f, "{line}");
            self.written += line.len() as u64 + 1;
            if self.written >= LOG_MAX_BYTES {
                let _ = writeln!(f, "… the log is over {} MiB: later lines are only in the run's events", LOG_MAX_BYTES >> 20);
            }
        }
        if self.tail.len() == LOG_TAIL {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// `s` with every one of `secrets` as `***` and every SAS signature redacted: the one masking
/// rule of a run, before and after its emitter exists.
pub(crate) fn mask(secrets: &[String], s: &str) -> String {
    let mut out = crate::redact::signatures(s);
    for secret in secrets.iter().filter(|x| !x.is_empty()) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// Sends events, masks secrets and keeps the customization log.
#[derive(Clone, Default)]
pub(crate) struct Emitter {
    tx: Option<Arc<EventSender>>,
    secrets: Arc<std::sync::RwLock<Vec<String>>>,
    pub(crate) log: Arc<Mutex<CustomizationLog>>,
}

impl Emitter {
    pub(crate) fn new(tx: Option<EventSender>, secrets: Arc<Vec<String>>, log_file: Option<PathBuf>) -> Result<Self> {
        let mut log = CustomizationLog::default();
        if let Some(p) = log_file {
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            // The log holds what the build printed: readable by its owner only.
            if let Some(dir) = p.parent() {
                std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| Error::io(dir, e))?;
            }
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                // A planted link is never written through.
                .custom_flags(libc::O_NOFOLLOW)
                .open(&p)
                .map_err(|e| Error::io(&p, e))?;
            log.file = Some((p, f));
        }
        let secrets = Arc::new(std::sync::RwLock::new(secrets.iter().filter(|s| !s.is_empty()).cloned().collect()));
        Ok(Emitter { tx: tx.map(Arc::new), secrets, log: Arc::new(Mutex::new(log)) })
    }

    /// `s` with every registered secret as `***` and every SAS signature redacted.
    pub(crate) fn mask(&self, s: &str) -> String {
        match self.secrets.read() {
            Ok(secrets) => mask(&secrets, s),
            Err(_) => crate::redact::signatures(s),
        }
    }

    pub(crate) fn send(&self, e: Event) {
        trace_event(&e);
        if let Some(tx) = &self.tx {
            tx.send(e);
        }
    }

    pub(crate) fn log(&self, line: String) {
        if let Ok(mut l) = self.log.lock() {
            l.push(line);
        }
    }
}

/// Every run event is also a `tracing` event (target `aib::events`), inside the run's and
/// the step's spans: states and step ends at INFO, step starts and resources at DEBUG,
/// output lines and progress at TRACE. Output is already masked.
fn trace_event(e: &Event) {
    const T: &str = "aib::events";
    match e {
        Event::State { state, sub_state, .. } => {
            tracing::info!(target: T, state = %state, sub_state = ?sub_state, "run state")
        }
        Event::StepStarted { step } => tracing::debug!(target: T, step = %step, "step started"),
        Event::StepFinished { step, duration, error: None } => {
            tracing::info!(target: T, step = %step, duration_ms = duration.as_millis() as u64, "step finished")
        }
        Event::StepFinished { step, duration, error: Some(err) } => {
            tracing::warn!(target: T, step = %step, duration_ms = duration.as_millis() as u64, error = %err, "step failed")
        }
        Event::Output { step, stream, line } => tracing::trace!(target: T, step = %step, stream = ?stream, "{line}"),
        Event::ResourceCreated { resource } => {
            tracing::debug!(target: T, kind = %resource.kind, name = %resource.name, "resource recorded")
        }
        Event::ResourceDeleted { resource } => {
            tracing::debug!(target: T, kind = %resource.kind, name = %resource.name, "resource deleted")
        }
        Event::Progress { step, done, total, unit } => {
            tracing::trace!(target: T, step = %step, done, total = ?total, unit = %unit, "progress")
        }
        Event::Notice { message } => tracing::info!(target: T, "{message}"),
        #[allow(unreachable_patterns)]
        _ => tracing::debug!(target: T, event = ?e, "event"),
    }
}

/// The context of one run, handed to every backend call.
#[derive(Clone)]
pub struct RunContext {
    run_id: String,
    ledger: RunLedger,
    emitter: Emitter,
    cancel: CancellationToken,
}

impl fmt::Debug for RunContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunContext").field("run_id", &self.run_id).field("cancelled", &self.cancel.is_cancelled()).finish_non_exhaustive()
    }
}

impl RunContext {
    pub(crate) fn new(run_id: String, ledger: RunLedger, emitter: Emitter, cancel: CancellationToken) -> Self {
        RunContext { run_id, ledger, emitter, cancel }
    }

    /// A context outside any pipeline (calling a backend directly, conformance tests): an
    /// in-memory ledger, no events.
    pub fn detached(run_id: &str) -> Result<Self> {
        let ledger = Ledger::in_memory().begin(run_id)?;
        Ok(RunContext { run_id: run_id.to_string(), ledger, emitter: Emitter::default(), cancel: CancellationToken::new() })
    }

    /// A detached context over a given ledger.
    pub fn with_ledger(ledger: RunLedger) -> Self {
        RunContext { run_id: ledger.run_id().to_string(), ledger, emitter: Emitter::default(), cancel: CancellationToken::new() }
    }

    /// The run id (also the prefix of resource names and tags).
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The run's ledger. Write it through [`RunContext::record`], [`RunContext::release`]
    /// and [`RunContext::keep`], which also emit the run's resource events.
    pub fn ledger(&self) -> &RunLedger {
        &self.ledger
    }

    /// Writes `record` to the ledger **before** the resource is created, emits
    /// [`Event::ResourceCreated`], and returns the record's ledger id.
    pub fn record(&self, record: ResourceRecord) -> Result<String> {
        let record = self.ledger.add(record)?;
        let id = record.id.clone();
        self.emitter.send(Event::ResourceCreated { resource: record });
        Ok(id)
    }

    /// Releases `id` from the ledger after the resource was deleted, and emits
    /// [`Event::ResourceDeleted`].
    pub fn release(&self, id: &str) -> Result<()> {
        if let Some(resource) = self.ledger.release(id)? {
            self.emitter.send(Event::ResourceDeleted { resource });
        }
        Ok(())
    }

    /// Releases `id` without deleting it: the resource is a published output, the user's now.
    pub fn keep(&self, id: &str) -> Result<()> {
        self.ledger.keep(id).map(drop)
    }

    /// Cancelled by the user (or the pipeline). Long operations should check it or select
    /// on [`RunContext::cancellation`].
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Masks `secret` as `***` from now on in every output line, notice, error and log of the
    /// run: for passwords and keys a backend generates. Empty and very short values (under 4
    /// characters) are ignored: masking them would garble the output.
    pub fn add_secret(&self, secret: impl Into<String>) {
        let secret = secret.into();
        if secret.len() >= 4
            && let Ok(mut s) = self.emitter.secrets.write()
            && !s.contains(&secret)
        {
            s.push(secret);
        }
    }

    /// A notice for the user.
    pub fn notice(&self, message: impl Into<String>) {
        let message = self.emitter.mask(&message.into());
        self.emitter.log(format!("[aib] {message}"));
        self.emitter.send(Event::Notice { message });
    }

    /// An output sink named `stream`, for output that is not the running step's own (a build
    /// VM's serial console, which prints through every later step): lines go to events and
    /// the customization log under that name. A step's own output is [`StepContext::output`].
    pub fn output(&self, stream: &str) -> Arc<dyn OutputSink> {
        let step = stream;
        Arc::new(StepOutput { step: step.to_string(), emitter: self.emitter.clone() })
    }

    pub(crate) fn emitter(&self) -> &Emitter {
        &self.emitter
    }

    /// A step context for `step`.
    pub fn step(&self, step: &str) -> StepContext {
        StepContext { run: self.clone(), name: step.to_string(), output: self.output(step) }
    }
}

struct StepOutput {
    step: String,
    emitter: Emitter,
}

impl OutputSink for StepOutput {
    fn line(&self, stream: OutputStream, line: &str) {
        let line = self.emitter.mask(line);
        self.emitter.log(format!("[{}] {line}", self.step));
        self.emitter.send(Event::Output { step: self.step.clone(), stream, line });
    }

    fn progress(&self, done: u64, total: Option<u64>, unit: &str) {
        self.emitter.send(Event::Progress { step: self.step.clone(), done, total, unit: unit.to_string() });
    }
}

/// The context of one step: the run's context, the step's name and its output sink.
#[derive(Clone)]
pub struct StepContext {
    /// The run.
    pub run: RunContext,
    /// Step name (`customize[2] install`).
    pub name: String,
    /// Where the step's output lines go.
    pub output: Arc<dyn OutputSink>,
}

impl fmt::Debug for StepContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StepContext").field("run", &self.run).field("name", &self.name).finish_non_exhaustive()
    }
}

impl StepContext {
    /// The run id ([`RunContext::run_id`]).
    pub fn run_id(&self) -> &str {
        self.run.run_id()
    }

    /// The run's ledger ([`RunContext::ledger`]).
    pub fn ledger(&self) -> &RunLedger {
        self.run.ledger()
    }

    /// [`RunContext::record`].
    pub fn record(&self, record: ResourceRecord) -> Result<String> {
        self.run.record(record)
    }

    /// [`RunContext::release`].
    pub fn release(&self, id: &str) -> Result<()> {
        self.run.release(id)
    }

    /// [`RunContext::keep`].
    pub fn keep(&self, id: &str) -> Result<()> {
        self.run.keep(id)
    }

    /// [`RunContext::notice`].
    pub fn notice(&self, message: impl Into<String>) {
        self.run.notice(message)
    }

    /// [`RunContext::add_secret`].
    pub fn add_secret(&self, secret: impl Into<String>) {
        self.run.add_secret(secret)
    }

    /// Cancelled by the user or the pipeline ([`RunContext::cancellation`]).
    pub fn cancellation(&self) -> &CancellationToken {
        self.run.cancellation()
    }

    /// A detached step context (see [`RunContext::detached`]).
    pub fn detached(step: &str) -> Result<Self> {
        Ok(RunContext::detached("detached")?.step(step))
    }

    /// A detached step context whose output is kept in the returned sink (tests, tools).
    pub fn capturing(step: &str) -> Result<(Self, crate::events::MemorySink)> {
        let sink = crate::events::MemorySink::new();
        let mut c = Self::detached(step)?;
        c.output = Arc::new(sink.clone());
        Ok((c, sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_file_and_its_lines_are_bounded() {
        let short = "é".repeat(10);
        assert_eq!(bounded_line(short.clone()), short);
        let long = format!("a{}", "é".repeat(LINE_MAX_BYTES));
        let cut = bounded_line(long.clone());
        assert!(cut.len() < LINE_MAX_BYTES + 40 && cut.ends_with("bytes cut]"), "{}", cut.len());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut log = CustomizationLog { file: Some((p.clone(), File::create(&p).unwrap())), ..Default::default() };
        let line = "x".repeat(LINE_MAX_BYTES);
        for _ in 0..(LOG_MAX_BYTES as usize / LINE_MAX_BYTES + 10) {
            log.push(line.clone());
        }
        let size = std::fs::metadata(&p).unwrap().len();
        assert!((LOG_MAX_BYTES..LOG_MAX_BYTES + 2 * LINE_MAX_BYTES as u64).contains(&size), "{size}");
        assert_eq!(log.tail.len(), LOG_TAIL, "the report's tail keeps the latest lines");
    }
}
