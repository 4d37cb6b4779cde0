//! One run: states, steps, the build timeout, cancellation, error policies and cleanup.

use super::{Inner, Step, StepOptions};
use crate::channel::EventSender;
use crate::channel::EventStream;
use crate::context::{Emitter, RunContext, StepContext};
use crate::events::Event;
use crate::ledger::Scope;
use crate::reclaim::FileReclaim;
use crate::report::{CacheReport, OutputState, RUN_STEP, RunOutput, RunReport, StateChange, StepError, StepReport, error_chain};
use crate::retry::Backoff;
use crate::state::{RunState, RunSubState};
use crate::template::ErrorAction;
use crate::traits::{Communicator, Reclaim};
use crate::types::{BuildVm, DistributeRequest, PreflightRequest, ProvisionRequest, ResolveRequest, ResolvedImage, ResumePoint};
use crate::{Error, Result};
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
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
        self.events.take().unwrap_or_else(EventStream::ended)
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
                r.error = Some(StepError::new(RUN_STEP, RunSubState::Queued, 1, Error::generic("pipeline", r.message.clone())));
                r
            }
        }
    }
}

/// A step running now (distributions run together).
#[derive(Clone)]
struct Running {
    name: String,
    phase: RunSubState,
    started: SystemTime,
    t0: Instant,
    attempts: u32,
}

/// What the run records as it goes; it outlives the work future (which a timeout or a
/// cancel drops).
#[derive(Default)]
struct Record {
    history: Vec<StateChange>,
    sub_state: Option<RunSubState>,
    steps: Vec<StepReport>,
    current: Vec<Running>,
    source: Option<ResolvedImage>,
    vm: Option<BuildVm>,
    outputs: Vec<RunOutput>,
    cache: Option<CacheReport>,
}

type Shared = Arc<Mutex<Record>>;

/// How the work ended (before cleanup).
struct Outcome {
    state: RunState,
    message: String,
    error: Option<StepError>,
    keep_vm: bool,
}

/// Why the work stopped early: the step's error, and whether the build VM stays.
struct Failure {
    error: StepError,
    keep_vm: bool,
    prefix: &'static str,
}

impl From<StepError> for Failure {
    fn from(error: StepError) -> Self {
        Failure { error, keep_vm: false, prefix: "" }
    }
}

impl From<Failure> for Outcome {
    fn from(f: Failure) -> Self {
        Outcome { state: RunState::Failed, message: format!("{}{}", f.prefix, f.error), error: Some(f.error), keep_vm: f.keep_vm }
    }
}

/// One run of a pipeline: its settings, context and record, and the step helper.
struct Run<'a> {
    inner: &'a Inner,
    ctx: &'a RunContext,
    rec: Shared,
}

fn round(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

impl Run<'_> {
    fn emitter(&self) -> &Emitter {
        self.ctx.emitter()
    }

    fn set_state(&self, state: RunState, sub: Option<RunSubState>) {
        let at = SystemTime::now();
        if let Ok(mut r) = self.rec.lock() {
            if sub.is_some() {
                r.sub_state = sub;
            }
            let sub_state = r.sub_state;
            r.history.push(StateChange { run_state: state, run_sub_state: sub_state, at });
            self.emitter().log(format!("[aib] runState={state} runSubState={}", sub_state.map(|s| s.to_string()).unwrap_or_default()));
            self.emitter().send(Event::State { state, sub_state, at });
        }
    }

    fn sub_state(&self) -> RunSubState {
        self.rec.lock().ok().and_then(|r| r.sub_state).unwrap_or(RunSubState::Queued)
    }

    /// Records the end of a step: log line, event, report.
    fn finish(&self, running: &Running, error: Option<StepError>) {
        let duration = running.t0.elapsed();
        let name = &running.name;
        self.emitter().log(format!(
            "[aib] ending step {name} after {}{}",
            humantime::format_duration(round(duration)),
            error.as_ref().map(|e| format!(": {}", e.message())).unwrap_or_default()
        ));
        self.emitter().send(Event::StepFinished { step: name.clone(), duration, error: error.clone() });
        if let Ok(mut r) = self.rec.lock() {
            r.current.retain(|c| c.name != *name);
            r.steps.push(StepReport {
                name: name.clone(),
                phase: running.phase,
                started: running.started,
                duration,
                attempts: running.attempts,
                error,
                cached: false,
            });
        }
    }

    /// Runs one step with its options, recording it; the error names the step.
    async fn step<T, F, Fut>(&self, name: &str, phase: RunSubState, options: &StepOptions, mut f: F) -> Result<T, StepError>
    where
        F: FnMut(StepContext) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        if let Some(p) = options.pause_before {
            tokio::time::sleep(p).await;
        }
        let mut running = Running { name: name.to_string(), phase, started: SystemTime::now(), t0: Instant::now(), attempts: 0 };
        if let Ok(mut r) = self.rec.lock() {
            r.current.push(running.clone());
        }
        self.emitter().log(format!("[aib] starting step {name}"));
        self.emitter().send(Event::StepStarted { step: name.to_string() });
        // Made on the first retry: most steps never need one.
        let mut backoff: Option<Backoff> = None;
        let result = loop {
            running.attempts += 1;
            if let Ok(mut r) = self.rec.lock()
                && let Some(c) = r.current.iter_mut().find(|c| c.name == name)
            {
                c.attempts = running.attempts;
            }
            let sc = self.ctx.step(name);
            let span = tracing::info_span!("step", name = %name, phase = %phase, attempt = running.attempts);
            let work = tracing::Instrument::instrument(f(sc), span);
            let r = match options.timeout {
                Some(t) => match tokio::time::timeout(t, work).await {
                    Ok(r) => r,
                    Err(_) => Err(Error::Timeout { operation: name.to_string(), after: t }),
                },
                None => work.await,
            };
            match r {
                Err(e) if running.attempts <= options.max_retries && retries(options, &e) => {
                    self.ctx.notice(format!(
                        "step {name} failed (attempt {} of {}): {}; retrying",
                        running.attempts,
                        options.max_retries + 1,
                        error_chain(&e)
                    ));
                    let b = backoff.get_or_insert_with(|| {
                        Backoff::new(options.retry_backoff, options.retry_backoff.saturating_mul(64)).without_jitter()
                    });
                    tokio::time::sleep(b.next_delay()).await;
                }
                r => break r,
            }
        };
        match result {
            Ok(v) => {
                self.finish(&running, None);
                Ok(v)
            }
            Err(e) => {
                let mask = |s: &str| self.emitter().mask(s);
                let e = StepError::new(name, phase, running.attempts, e.masked(&mask));
                self.finish(&running, Some(e.clone()));
                Err(e)
            }
        }
    }

    async fn steps(&self, steps: &[Step], phase: RunSubState, comm: &Arc<dyn Communicator>) -> Result<(), StepError> {
        for s in steps {
            let c = s.customizer.clone();
            self.step(&s.name, phase, &s.options, |sc| {
                let c = c.clone();
                let comm = comm.clone();
                async move { c.run(&*comm, &sc).await }
            })
            .await?;
        }
        Ok(())
    }

    /// The step cache's resume points for `req`: the leading customizers' fingerprints,
    /// chained; `None` when the cache is off or the provisioner keeps no points. A
    /// fingerprint that fails (a download) ends the chain: the step itself then reports it.
    async fn cache_points(&self, req: &ProvisionRequest) -> Option<CacheReport> {
        let cfg = &self.inner.cfg;
        if !cfg.cache || cfg.source_validation_only || cfg.customizers.is_empty() || !self.inner.provisioner.checkpoints(req) {
            return None;
        }
        let none = &StepOptions::default();
        let (points, uncached_from) = self
            .step("fingerprint", RunSubState::Building, none, |sc| async move {
                let mut uncached_from = None;
                use sha2::Digest;
                let base = serde_json::json!({"source": req.image, "vmProfile": req.vm_profile, "dataDisksGb": req.data_disks_gb});
                let mut parent = hex::encode(sha2::Sha256::digest(base.to_string().as_bytes()));
                let mut points = Vec::new();
                for (i, s) in cfg.customizers.iter().enumerate() {
                    if s.options.no_cache {
                        uncached_from = Some(format!("{}: its options opt out of the cache", s.name));
                        break;
                    }
                    let f = match s.customizer.fingerprint(&sc).await {
                        Ok(Some(f)) => f,
                        Ok(None) => {
                            uncached_from = Some(format!("{}: its customizer ({}) has no fingerprint", s.name, s.customizer));
                            break;
                        }
                        Err(e) => {
                            uncached_from = Some(format!("{}: its fingerprint failed: {}", s.name, error_chain(&e)));
                            break;
                        }
                    };
                    let p = ResumePoint::new(&s.name, i, &parent, f);
                    parent = p.key.clone();
                    points.push(p);
                }
                if let Some(why) = &uncached_from {
                    sc.notice(format!("step cache: {why}; it and every step after it run on every build"));
                }
                Ok((points, uncached_from))
            })
            .await
            .ok()?;
        if points.is_empty() && uncached_from.is_none() {
            return None;
        }
        let report = CacheReport { points, uncached_from, ..Default::default() };
        Some(report)
    }

    /// How many customizers `vm` went through at its resume point; those steps are reported
    /// as cached.
    fn resumed(&self, cache: &mut CacheReport, vm: &BuildVm) -> usize {
        let n = vm.resumed.min(cache.points.len());
        let steps = &self.inner.cfg.customizers;
        cache.hits = steps[..n].iter().map(|s| s.name.clone()).collect();
        if n > 0 {
            self.ctx.notice(format!(
                "step cache: {} taken from the cache; the build VM starts after `{}`",
                cache.hits.join(", "),
                steps[n - 1].name
            ));
        }
        if n < cache.points.len() {
            let why = vm.attributes.get("cacheMiss").and_then(|v| v.as_str()).unwrap_or("no resume point is kept for it");
            let miss = format!("{}: {why}", cache.points[n].step);
            self.ctx.notice(format!("step cache: miss at {miss}"));
            cache.miss = Some(miss);
        }
        if let Ok(mut r) = self.rec.lock() {
            let now = SystemTime::now();
            for s in &steps[..n] {
                r.steps.push(StepReport {
                    name: s.name.clone(),
                    phase: RunSubState::Customizing,
                    started: now,
                    duration: Duration::ZERO,
                    attempts: 0,
                    error: None,
                    cached: true,
                });
            }
        }
        n
    }

    /// Runs the customizers from `from`; after each that is cacheable and took at least
    /// [`super::RESUME_POINT_MIN_STEP`], asks the provisioner to keep the VM as its resume
    /// point. Keeping one never fails the run.
    async fn customize(
        &self,
        from: usize,
        vm: &BuildVm,
        comm: &Arc<dyn Communicator>,
        mut cache: Option<&mut CacheReport>,
    ) -> Result<(), StepError> {
        let inner = self.inner;
        for (i, s) in inner.cfg.customizers.iter().enumerate().skip(from) {
            // Tokio's clock: a test with paused time sees the step's time too.
            let t0 = tokio::time::Instant::now();
            self.steps(std::slice::from_ref(s), RunSubState::Customizing, comm).await?;
            let Some(point) = cache.as_deref().and_then(|c| c.points.get(i)).cloned() else { continue };
            if t0.elapsed() < super::RESUME_POINT_MIN_STEP {
                continue;
            }
            let none = &StepOptions::default();
            let name = format!("keep resume point after {}", s.name);
            let point = &point;
            match self
                .step(&name, RunSubState::Customizing, none, |sc| async move { inner.provisioner.checkpoint(vm, point, &sc).await })
                .await
            {
                Ok(true) => {
                    if let Some(c) = cache.as_deref_mut() {
                        c.kept.push(s.name.clone());
                    }
                }
                Ok(false) => {}
                Err(e) => self.ctx.notice(format!("step cache: the resume point after {} was not kept: {e}", s.name)),
            }
        }
        Ok(())
    }

    /// "step `a`" or "steps `a`, `b`": what was running, for timeout and cancel messages.
    fn running(&self) -> Option<String> {
        let r = self.rec.lock().ok()?;
        match r.current.as_slice() {
            [] => None,
            [one] => Some(format!("step `{}`", one.name)),
            many => Some(format!("steps {}", many.iter().map(|s| format!("`{}`", s.name)).collect::<Vec<_>>().join(", "))),
        }
    }

    /// Ends the steps a timeout or cancel interrupted with `error`; returns the run's error,
    /// which names the first of them.
    fn interrupt(&self, error: Error) -> StepError {
        let current = self.rec.lock().map(|r| r.current.clone()).unwrap_or_default();
        let error = Arc::new(error);
        let mut first = None;
        for c in &current {
            let e = StepError::new(c.name.clone(), c.phase, c.attempts.max(1), error.clone());
            self.finish(c, Some(e.clone()));
            first.get_or_insert(e);
        }
        first.unwrap_or_else(|| StepError::new(RUN_STEP, self.sub_state(), 1, error))
    }

    async fn work(&self) -> Result<Outcome, Failure> {
        let (inner, cfg) = (self.inner, &self.inner.cfg);
        let none = &StepOptions::default();
        self.set_state(RunState::Running, Some(RunSubState::Building));
        let rreq = &ResolveRequest::new(inner.source_spec.clone()).with_location(&cfg.location).with_template_name(&cfg.name);
        let image = self.step("resolve", RunSubState::Building, none, |sc| async move { inner.source.resolve(rreq, &sc).await }).await?;
        self.ctx.notice(format!("source resolved to {}", image.exact));
        if let Ok(mut r) = self.rec.lock() {
            r.source = Some(image.clone());
        }
        // The targets check what they can before anything is built (regions, versions taken).
        let preq = &PreflightRequest::new(image.clone()).with_location(&cfg.location).with_template_name(&cfg.name);
        self.step("preflight", RunSubState::Building, none, |sc| async move {
            for (i, t) in cfg.targets.iter().enumerate() {
                let p = preq.clone().with_run_output_name(&t.run_output_name);
                t.distributor.preflight(&p, &sc).await.map_err(|e| e.at(&format!("properties.distribute[{i}]")))?;
            }
            Ok(())
        })
        .await?;
        let mut req = ProvisionRequest::new(image).with_location(&cfg.location).with_template_name(&cfg.name);
        req.vm_profile = cfg.vm_profile.clone();
        req.data_disks_gb = cfg.data_disks_gb.clone();
        req.tags = self.tags();
        req.staging_resource_group = cfg.staging_resource_group.clone();
        let mut cache = self.cache_points(&req).await;
        if let Some(c) = &cache {
            req.resume = c.points.clone();
        }
        let req = &req;
        let vm =
            self.step("provision", RunSubState::Building, none, |sc| async move { inner.provisioner.provision(req, &sc).await }).await?;
        if let Ok(mut r) = self.rec.lock() {
            r.vm = Some(vm.clone());
        }
        let vm = &vm;
        let resumed = match &mut cache {
            Some(c) => self.resumed(c, vm),
            None => 0,
        };
        let comm = self.step("connect", RunSubState::Building, none, |sc| async move { inner.provisioner.connect(vm, &sc).await }).await?;

        if !cfg.source_validation_only && !cfg.customizers.is_empty() {
            self.set_state(RunState::Running, Some(RunSubState::Customizing));
            let customized = self.customize(resumed, vm, &comm, cache.as_mut()).await;
            if let (Some(c), Ok(mut r)) = (cache.take(), self.rec.lock()) {
                r.cache = Some(c);
            }
            customized.map_err(|error| Failure { error, keep_vm: cfg.on_customizer_error == ErrorAction::Abort, prefix: "" })?;
        }

        let mut validation_failure = None;
        if !cfg.validators.is_empty() {
            self.set_state(RunState::Running, Some(RunSubState::Validating));
            if let Err(error) = self.steps(&cfg.validators, RunSubState::Validating, &comm).await {
                let keep_vm = cfg.on_validation_error == ErrorAction::Abort;
                if !cfg.continue_distribute_on_failure || keep_vm {
                    return Err(Failure { error, keep_vm, prefix: "validation failed: " });
                }
                self.ctx.notice(format!("validation failed ({error}); distributing anyway (continueDistributeOnFailure)"));
                validation_failure = Some(error);
            }
        }

        let phase = self.sub_state();
        let comm_ref = &comm;
        self.step("generalize", phase, none, |sc| async move { inner.provisioner.generalize(vm, &**comm_ref, &sc).await }).await?;
        let captured = self.step("capture", phase, none, |sc| async move { inner.provisioner.capture(vm, &sc).await }).await?;
        drop(comm);

        self.set_state(RunState::Running, Some(RunSubState::Distributing));
        let tags = self.tags();
        let jobs = cfg.targets.iter().map(|t| {
            let mut dreq = DistributeRequest::new(captured.clone())
                .with_run_output_name(&t.run_output_name)
                .with_template_name(&cfg.name)
                .with_location(&cfg.location);
            dreq.tags = tags.clone();
            dreq.template_digest = cfg.template_digest.clone();
            async move {
                let name = format!("distribute {}", t.run_output_name);
                let dreq = &dreq;
                let r =
                    self.step(&name, RunSubState::Distributing, none, |sc| async move { t.distributor.distribute(dreq, &sc).await }).await;
                let (artifact, error) = match r {
                    Ok(a) => (a, None),
                    Err(e) => (Default::default(), Some(e)),
                };
                RunOutput {
                    name: t.run_output_name.clone(),
                    kind: t.type_name.clone(),
                    artifact_id: artifact.artifact_id,
                    artifact_uri: artifact.artifact_uri,
                    provisioning_state: if error.is_none() { OutputState::Succeeded } else { OutputState::Failed },
                    error,
                }
            }
        });
        let outputs = futures::future::join_all(jobs).await;
        let failed: Vec<&StepError> = outputs.iter().filter_map(|o| o.error.as_ref()).collect();
        let joined = || failed.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ");
        let outcome = if let Some(e) = validation_failure {
            let message = format!("validation failed: {e}; the image was distributed anyway (continueDistributeOnFailure)");
            Outcome { state: RunState::Failed, message, error: Some(e), keep_vm: false }
        } else if failed.is_empty() {
            Outcome { state: RunState::Succeeded, message: format!("published {} target(s)", outputs.len()), error: None, keep_vm: false }
        } else if failed.len() == outputs.len() {
            Outcome { state: RunState::Failed, message: joined(), error: failed.first().map(|e| (*e).clone()), keep_vm: false }
        } else {
            let names: Vec<&str> = outputs.iter().filter(|o| o.error.is_some()).map(|o| o.name.as_str()).collect();
            Outcome {
                state: RunState::PartiallySucceeded,
                message: format!("{} of {} targets failed ({}): {}", failed.len(), outputs.len(), names.join(", "), joined()),
                error: failed.first().map(|e| (*e).clone()),
                keep_vm: false,
            }
        };
        if let Ok(mut r) = self.rec.lock() {
            r.outputs = outputs;
        }
        Ok(outcome)
    }

    /// The tags of everything the run creates: the template's, and `aibRunId`.
    fn tags(&self) -> crate::template::StringMap {
        let mut tags = self.inner.cfg.tags.clone();
        tags.insert("aibRunId".into(), self.ctx.run_id().to_string());
        tags
    }

    /// Deletes everything the run still holds, newest first; under `abort`, the build VM stays.
    async fn cleanup(&self, keep_vm: bool) -> Vec<String> {
        let inner = self.inner;
        let files: Arc<dyn Reclaim> = Arc::new(FileReclaim);
        let provisioner: Arc<dyn Reclaim> = inner.provisioner.clone();
        let reclaimers: Vec<&Arc<dyn Reclaim>> = std::iter::once(&provisioner).chain(&inner.cfg.cleaners).chain([&files]).collect();
        let mut errors = Vec::new();
        for r in self.ctx.ledger().outstanding().iter().rev() {
            if keep_vm && r.scope == Scope::BuildVm {
                continue;
            }
            let Some(p) = reclaimers.iter().find(|p| p.backend() == r.backend) else {
                errors.push(format!("{r}: no backend `{}` to delete it; add one with PipelineBuilder::cleaner", r.backend));
                continue;
            };
            match p.delete(r).await {
                Ok(()) => {
                    if let Err(e) = self.ctx.release(&r.id) {
                        errors.push(format!("{r}: deleted, but the ledger could not be updated: {e}"));
                    }
                }
                Err(e) => errors.push(format!("{r}: {}", self.emitter().mask(&error_chain(&e)))),
            }
        }
        errors
    }
}

fn retries(options: &StepOptions, e: &Error) -> bool {
    !matches!(e, Error::Cancelled)
        && match options.retry_on {
            super::RetryOn::Any => true,
            _ => e.is_retryable(),
        }
}

pub(crate) async fn execute(inner: Arc<Inner>, run_id: String, cancel: CancellationToken, tx: Option<EventSender>) -> RunReport {
    let cfg = &inner.cfg;
    let rec: Shared = Arc::new(Mutex::new(Record::default()));
    let log_path = cfg.log_dir.as_ref().map(|d| d.join(&run_id).join("customization.log"));
    let mut report = RunReport::failed(run_id.clone(), cfg.name.clone());
    report.run_sub_state = Some(RunSubState::Queued);
    report.customization_log = log_path.clone();
    let early = |report: &mut RunReport, what: &str, e: Error| {
        let e = e.masked(&|s: &str| crate::context::mask(&cfg.secrets, s));
        report.message = format!("{what}: {}", error_chain(&e));
        report.error = Some(StepError::new(RUN_STEP, RunSubState::Queued, 1, e));
    };
    // The ledger first: it checks the run id before any path is made from it.
    let ledger = match cfg.ledger.begin(&run_id) {
        Ok(l) => l,
        Err(e) => {
            early(&mut report, "cannot open the run's ledger", e);
            report.customization_log = None;
            return report;
        }
    };
    let emitter = match Emitter::new(tx, cfg.secrets.clone(), log_path) {
        Ok(e) => e,
        Err(e) => {
            early(&mut report, "cannot open the customization log", e);
            report.customization_log = None;
            return report;
        }
    };
    let ctx = RunContext::new(run_id, ledger, emitter.clone(), cancel.clone());
    let run = Run { inner: &inner, ctx: &ctx, rec: rec.clone() };
    run.set_state(RunState::Running, Some(RunSubState::Queued));

    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let outcome = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        r = tokio::time::timeout_at(deadline, AssertUnwindSafe(run.work()).catch_unwind()) => Some(match r {
            Ok(Ok(Ok(o))) => o,
            Ok(Ok(Err(f))) => f.into(),
            // A panic in a backend or plugin still ends in cleanup, like any failure.
            Ok(Err(panic)) => {
                let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                let error = run.interrupt(Error::generic("pipeline", format!("panicked: {what}")));
                Outcome { state: RunState::Failed, message: format!("{error}; cleaned up after the panic"), error: Some(error), keep_vm: false }
            }
            Err(_) => {
                let at = run.running().unwrap_or_else(|| "between steps".into());
                let error = run.interrupt(Error::Timeout { operation: "the build (buildTimeoutInMinutes)".into(), after: cfg.timeout });
                let message = format!(
                    "the build timed out after {} (buildTimeoutInMinutes) during {at}",
                    humantime::format_duration(cfg.timeout)
                );
                Outcome { state: RunState::Failed, message, error: Some(error), keep_vm: false }
            }
        }),
    };
    let outcome = match outcome {
        Some(o) => o,
        None => {
            let at = run.running().map(|s| format!(" during {s}")).unwrap_or_default();
            let error = run.interrupt(Error::Cancelled);
            run.set_state(RunState::Canceling, None);
            Outcome { state: RunState::Canceled, message: format!("the run was cancelled{at}"), error: Some(error), keep_vm: false }
        }
    };

    let cleanup_errors = match tokio::time::timeout(cfg.cleanup_timeout, run.cleanup(outcome.keep_vm)).await {
        Ok(e) => e,
        Err(_) => vec![format!("cleanup did not finish within {}", humantime::format_duration(cfg.cleanup_timeout))],
    };
    run.set_state(outcome.state, None);

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
    report.message = emitter.mask(&message);
    report.error = outcome.error;
    report.history = r.history;
    report.steps = r.steps;
    report.source = r.source;
    report.run_outputs = r.outputs;
    report.cache = r.cache;
    report.cleanup_errors = cleanup_errors;
    report.leftover_resources = ctx.ledger().outstanding();
    report.end_time = SystemTime::now();
    if let Ok(log) = emitter.log.lock() {
        report.log_tail = log.tail.iter().cloned().collect();
    }
    report
}
