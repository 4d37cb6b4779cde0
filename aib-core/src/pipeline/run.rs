//! One run: states, steps, the build timeout, cancellation, error policies and cleanup.

use super::{Inner, Step};
use crate::context::{Emitter, RunContext, StepContext};
use crate::events::{Event, EventStream, RunState, RunSubState};
use crate::ledger::Scope;
use crate::report::{OutputState, RunOutput, RunReport, StateChange, StepReport};
use crate::template::ErrorAction;
use crate::traits::Communicator;
use crate::types::{BuildVm, ProvisionRequest, ResolvedImage};
use crate::{Error, Result};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started run: its events, a cancel switch, and its report.
#[derive(Debug)]
pub struct RunHandle {
    run_id: String,
    events: Option<EventStream>,
    cancel: CancellationToken,
    join: JoinHandle<RunReport>,
}

impl RunHandle {
    pub(crate) fn new(run_id: String, events: EventStream, cancel: CancellationToken, join: JoinHandle<RunReport>) -> Self {
        RunHandle { run_id, events: Some(events), cancel, join }
    }

    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The event stream (once; later calls get an empty stream). It ends when the run ends.
    pub fn events(&mut self) -> EventStream {
        self.events.take().unwrap_or_else(|| EventStream::new(tokio::sync::mpsc::unbounded_channel().1))
    }

    /// Cancels the run: it goes to `Canceling`, cleans up, and ends `Canceled`.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels the run.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the report.
    pub async fn wait(self) -> RunReport {
        let run_id = self.run_id.clone();
        match self.join.await {
            Ok(r) => r,
            Err(e) => {
                let mut r = RunReport::failed(run_id, String::new());
                r.message = format!("the run task ended abnormally: {e}; run `gc` to remove what it left");
                r
            }
        }
    }
}

/// What the run records as it goes; it outlives the work future (which a timeout or a
/// cancel drops).
#[derive(Default)]
struct Record {
    history: Vec<StateChange>,
    sub_state: Option<RunSubState>,
    steps: Vec<StepReport>,
    /// Steps running now (distributions run together).
    current: Vec<String>,
    source: Option<ResolvedImage>,
    vm: Option<BuildVm>,
    outputs: Vec<RunOutput>,
}

type Shared = Arc<Mutex<Record>>;

/// How the work ended (before cleanup).
struct Outcome {
    state: RunState,
    message: String,
    keep_vm: bool,
}

impl Outcome {
    fn failed(message: String) -> Self {
        Outcome { state: RunState::Failed, message, keep_vm: false }
    }
}

fn set_state(rec: &Shared, emitter: &Emitter, state: RunState, sub: Option<RunSubState>) {
    let at = SystemTime::now();
    if let Ok(mut r) = rec.lock() {
        if sub.is_some() {
            r.sub_state = sub;
        }
        let sub_state = r.sub_state;
        r.history.push(StateChange { run_state: state, run_sub_state: sub_state, at });
        emitter.log(format!("[aib] runState={state} runSubState={}", sub_state.map(|s| s.to_string()).unwrap_or_default()));
        emitter.send(Event::State { state, sub_state, at });
    }
}

/// Runs one step with its options, recording it; the error message names the step.
async fn step<T, F, Fut>(
    rec: &Shared,
    ctx: &RunContext,
    name: &str,
    phase: RunSubState,
    options: &crate::pipeline::StepOptions,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut(StepContext) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    if let Some(p) = options.pause_before {
        tokio::time::sleep(p).await;
    }
    let started = SystemTime::now();
    let t0 = Instant::now();
    if let Ok(mut r) = rec.lock() {
        r.current.push(name.to_string());
    }
    ctx.emitter().log(format!("[aib] starting step {name}"));
    ctx.emitter().send(Event::StepStarted { step: name.to_string() });
    let mut attempts = 0;
    let mut backoff = options.retry_backoff;
    let result = loop {
        attempts += 1;
        let sc = ctx.step(name);
        let r = match options.timeout {
            Some(t) => match tokio::time::timeout(t, f(sc)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout { operation: name.to_string(), after: t }),
            },
            None => f(sc).await,
        };
        match r {
            Err(e) if attempts <= options.max_retries && !matches!(e, Error::Cancelled) => {
                ctx.notice(format!("step {name} failed (attempt {attempts} of {}): {e}; retrying", options.max_retries + 1));
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            r => break r,
        }
    };
    let duration = t0.elapsed();
    let error = result.as_ref().err().map(|e| ctx.emitter().mask(&error_chain(e)));
    ctx.emitter().log(format!(
        "[aib] ending step {name} after {}{}",
        humantime::format_duration(round(duration)),
        error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    ));
    ctx.emitter().send(Event::StepFinished { step: name.to_string(), duration, error: error.clone() });
    if let Ok(mut r) = rec.lock() {
        r.current.retain(|c| c != name);
        r.steps.push(StepReport { name: name.to_string(), phase, started, duration, attempts, error: error.clone() });
    }
    result.map_err(|_| format!("step `{name}` failed: {}", error.unwrap_or_default()))
}

/// "step `a`" or "steps `a`, `b`": what was running, for timeout and cancel messages.
fn running(rec: &Shared) -> Option<String> {
    let r = rec.lock().ok()?;
    match r.current.as_slice() {
        [] => None,
        [one] => Some(format!("step `{one}`")),
        many => Some(format!("steps {}", many.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "))),
    }
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// An error with its `source` chain, on one line.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

async fn run_steps(rec: &Shared, ctx: &RunContext, steps: &[Step], phase: RunSubState, comm: &Arc<dyn Communicator>) -> Result<(), String> {
    for s in steps {
        let c = s.customizer.clone();
        step(rec, ctx, &s.name, phase, &s.options, |sc| {
            let c = c.clone();
            let comm = comm.clone();
            async move { c.run(&*comm, &sc).await }
        })
        .await?;
    }
    Ok(())
}

async fn work(inner: &Inner, ctx: &RunContext, rec: &Shared) -> Outcome {
    let none = &crate::pipeline::StepOptions::default();
    let em = ctx.emitter();
    set_state(rec, em, RunState::Running, Some(RunSubState::Building));
    let image =
        match step(
            rec,
            ctx,
            "resolve",
            RunSubState::Building,
            none,
            |sc| async move { inner.source.resolve(&inner.source_spec, &sc.run).await },
        )
        .await
        {
            Ok(i) => i,
            Err(m) => return Outcome::failed(m),
        };
    ctx.notice(format!("source resolved to {}", image.exact));
    if let Ok(mut r) = rec.lock() {
        r.source = Some(image.clone());
    }
    let mut req = ProvisionRequest::new(image);
    req.vm_profile = inner.vm_profile.clone();
    req.data_disks_gb = inner.data_disks_gb.clone();
    req.tags = inner.tags.clone();
    req.tags.insert("aibRunId".into(), ctx.run_id().to_string());
    req.template_name = inner.name.clone();
    req.location = inner.location.clone();
    req.staging_resource_group = inner.staging_resource_group.clone();
    let req = &req;
    let vm =
        match step(rec, ctx, "provision", RunSubState::Building, none, |sc| async move { inner.provisioner.provision(req, &sc.run).await })
            .await
        {
            Ok(vm) => vm,
            Err(m) => return Outcome::failed(m),
        };
    if let Ok(mut r) = rec.lock() {
        r.vm = Some(vm.clone());
    }
    let vm = &vm;
    let comm = match step(
        rec,
        ctx,
        "connect",
        RunSubState::Building,
        none,
        |sc| async move { inner.provisioner.connect(vm, &sc.run).await },
    )
    .await
    {
        Ok(c) => c,
        Err(m) => return Outcome::failed(m),
    };

    if !inner.source_validation_only && !inner.customizers.is_empty() {
        set_state(rec, em, RunState::Running, Some(RunSubState::Customizing));
        if let Err(m) = run_steps(rec, ctx, &inner.customizers, RunSubState::Customizing, &comm).await {
            return Outcome { state: RunState::Failed, message: m, keep_vm: inner.on_customizer_error == ErrorAction::Abort };
        }
    }

    let mut validation_failure = None;
    if !inner.validators.is_empty() {
        set_state(rec, em, RunState::Running, Some(RunSubState::Validating));
        if let Err(m) = run_steps(rec, ctx, &inner.validators, RunSubState::Validating, &comm).await {
            let keep_vm = inner.on_validation_error == ErrorAction::Abort;
            if !inner.continue_distribute_on_failure || keep_vm {
                return Outcome { state: RunState::Failed, message: format!("validation failed: {m}"), keep_vm };
            }
            ctx.notice(format!("validation failed ({m}); distributing anyway (continueDistributeOnFailure)"));
            validation_failure = Some(m);
        }
    }

    let phase = rec.lock().ok().and_then(|r| r.sub_state).unwrap_or(RunSubState::Customizing);
    let comm_ref = &comm;
    if let Err(m) =
        step(rec, ctx, "generalize", phase, none, |sc| async move { inner.provisioner.generalize(vm, &**comm_ref, &sc).await }).await
    {
        return Outcome::failed(m);
    }
    let captured = match step(rec, ctx, "capture", phase, none, |sc| async move { inner.provisioner.capture(vm, &sc).await }).await {
        Ok(c) => c,
        Err(m) => return Outcome::failed(m),
    };
    drop(comm);

    set_state(rec, em, RunState::Running, Some(RunSubState::Distributing));
    let captured = &captured;
    let jobs = inner.targets.iter().map(|t| async move {
        let name = format!("distribute {}", t.run_output_name);
        let r =
            step(rec, ctx, &name, RunSubState::Distributing, none, |sc| async move { t.distributor.distribute(captured, &sc).await }).await;
        let (artifact, error) = match r {
            Ok(a) => (a, None),
            Err(m) => (Default::default(), Some(m)),
        };
        RunOutput {
            name: t.run_output_name.clone(),
            kind: t.type_name.clone(),
            artifact_id: artifact.artifact_id,
            artifact_uri: artifact.artifact_uri,
            provisioning_state: if error.is_none() { OutputState::Succeeded } else { OutputState::Failed },
            error,
        }
    });
    let outputs = futures::future::join_all(jobs).await;
    let failed: Vec<&RunOutput> = outputs.iter().filter(|o| o.error.is_some()).collect();
    let outcome = if let Some(m) = validation_failure {
        Outcome::failed(format!("validation failed: {m}; the image was distributed anyway (continueDistributeOnFailure)"))
    } else if failed.is_empty() {
        Outcome { state: RunState::Succeeded, message: format!("published {} target(s)", outputs.len()), keep_vm: false }
    } else if failed.len() == outputs.len() {
        Outcome::failed(failed.iter().filter_map(|o| o.error.clone()).collect::<Vec<_>>().join("; "))
    } else {
        let names: Vec<&str> = failed.iter().map(|o| o.name.as_str()).collect();
        Outcome {
            state: RunState::PartiallySucceeded,
            message: format!(
                "{} of {} targets failed ({}): {}",
                failed.len(),
                outputs.len(),
                names.join(", "),
                failed.iter().filter_map(|o| o.error.clone()).collect::<Vec<_>>().join("; ")
            ),
            keep_vm: false,
        }
    };
    if let Ok(mut r) = rec.lock() {
        r.outputs = outputs;
    }
    outcome
}

/// Deletes everything the run still holds, newest first; under `abort`, the build VM stays.
async fn cleanup(inner: &Inner, ctx: &RunContext, keep_vm: bool) -> Vec<String> {
    let mut errors = Vec::new();
    for r in ctx.ledger().outstanding().iter().rev() {
        if keep_vm && r.scope == Scope::BuildVm {
            continue;
        }
        let deleter = std::iter::once(&inner.provisioner).chain(&inner.cleaners).find(|p| p.backend() == r.backend);
        let Some(p) = deleter else {
            errors.push(format!("{r}: no backend `{}` to delete it; add one with PipelineBuilder::cleaner", r.backend));
            continue;
        };
        match p.delete(r).await {
            Ok(()) => {
                if let Err(e) = ctx.ledger().release(&r.id) {
                    errors.push(format!("{r}: deleted, but the ledger could not be updated: {e}"));
                }
            }
            Err(e) => errors.push(format!("{r}: {}", error_chain(&e))),
        }
    }
    errors
}

pub(crate) async fn execute(
    inner: Arc<Inner>,
    run_id: String,
    cancel: CancellationToken,
    tx: Option<tokio::sync::mpsc::UnboundedSender<Event>>,
) -> RunReport {
    let rec: Shared = Arc::new(Mutex::new(Record::default()));
    let log_path = inner.log_dir.as_ref().map(|d| d.join(&run_id).join("customization.log"));
    let mut report = RunReport::failed(run_id.clone(), inner.name.clone());
    report.run_sub_state = Some(RunSubState::Queued);
    report.customization_log = log_path.clone();
    let emitter = match Emitter::new(tx, inner.secrets.clone(), log_path) {
        Ok(e) => e,
        Err(e) => {
            report.message = format!("cannot open the customization log: {e}");
            report.customization_log = None;
            return report;
        }
    };
    let ledger = match inner.ledger.begin(&run_id) {
        Ok(l) => l,
        Err(e) => {
            report.message = format!("cannot open the run's ledger: {e}");
            return report;
        }
    };
    let ctx = RunContext::new(run_id, ledger, emitter.clone(), cancel.clone());
    set_state(&rec, &emitter, RunState::Running, Some(RunSubState::Queued));

    let deadline = tokio::time::Instant::now() + inner.timeout;
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = tokio::time::timeout_at(deadline, work(&inner, &ctx, &rec)) => Some(r.unwrap_or_else(|_| {
            let at = running(&rec).unwrap_or_else(|| "between steps".into());
            Outcome::failed(format!("the build timed out after {} (buildTimeoutInMinutes) during {at}", humantime::format_duration(inner.timeout)))
        })),
    };
    let outcome = match outcome {
        Some(o) => o,
        None => {
            set_state(&rec, &emitter, RunState::Canceling, None);
            let at = running(&rec).map(|s| format!(" during {s}")).unwrap_or_default();
            Outcome { state: RunState::Canceled, message: format!("the run was cancelled{at}"), keep_vm: false }
        }
    };

    let cleanup_errors = match tokio::time::timeout(inner.cleanup_timeout, cleanup(&inner, &ctx, outcome.keep_vm)).await {
        Ok(e) => e,
        Err(_) => vec![format!("cleanup did not finish within {}", humantime::format_duration(inner.cleanup_timeout))],
    };
    set_state(&rec, &emitter, outcome.state, None);

    let mut message = outcome.message;
    let r = rec.lock().map(|mut r| std::mem::take(&mut *r)).unwrap_or_default();
    if outcome.keep_vm
        && let Some(vm) = &r.vm
    {
        message.push_str(&format!(
            "; the build VM was kept for debugging (errorHandling: abort): {}; remove it with `aib gc`",
            vm.access.command
        ));
        report.kept_vm = Some(vm.access.clone());
    }
    if !cleanup_errors.is_empty() {
        message.push_str(&format!("; cleanup left {} resource(s), `aib gc` will retry", cleanup_errors.len()));
    }
    report.run_state = outcome.state;
    report.run_sub_state = r.sub_state;
    report.message = message;
    report.history = r.history;
    report.steps = r.steps;
    report.source = r.source;
    report.run_outputs = r.outputs;
    report.cleanup_errors = cleanup_errors;
    report.leftover_resources = ctx.ledger().outstanding();
    report.end_time = SystemTime::now();
    if let Ok(log) = emitter.log.lock() {
        report.log_tail = log.tail.iter().cloned().collect();
    }
    report
}
