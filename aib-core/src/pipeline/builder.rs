//! `PipelineBuilder`: every setting, validated in `build()`.

use super::{Inner, Pipeline, PipelineConfig, Step, Target};
use crate::ledger::Ledger;
use crate::registry::Backend;
use crate::template::{
    Code, Diagnostic, Diagnostics, DistributorSpec, ErrorAction, ImageSource, ImageTemplate, MAX_BUILD_TIMEOUT, StringMap, VmProfile,
    is_valid_name, lit,
};
use crate::traits::{Customizer, Distributor, Provisioner, Reclaim, Source};
use crate::{Error, Result};
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Which failures a step's retries cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RetryOn {
    /// Only errors that say trying again may help ([`Error::is_retryable`]: a dropped
    /// connection, throttling). A script that failed is not run again.
    #[default]
    Retryable,
    /// Any failure but cancellation, a failing script included (Packer's `max_retries`).
    Any,
}

/// Per-step options beyond AIB's template (Packer has them): timeout, retries, pause.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StepOptions {
    /// Fail the step after this long.
    pub timeout: Option<Duration>,
    /// Run the step again up to this many times after a failure that `retry_on` covers.
    pub max_retries: u32,
    /// Wait before a retry; doubles each time.
    pub retry_backoff: Duration,
    /// Which failures are retried.
    pub retry_on: RetryOn,
    /// Wait before the step starts.
    pub pause_before: Option<Duration>,
    /// Never take this step from the step cache (nor any after it): for a step whose effect
    /// its fingerprint cannot show (a script that downloads at run time). See
    /// [`PipelineBuilder::cache`].
    pub no_cache: bool,
}

impl StepOptions {
    /// Fails the step after `t`.
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Retries up to `n` times after a retryable error ([`Error::is_retryable`]), waiting
    /// `backoff`, then twice that, and so on.
    #[must_use]
    pub fn with_retries(mut self, n: u32, backoff: Duration) -> Self {
        self.max_retries = n;
        self.retry_backoff = backoff;
        self
    }

    /// Retries after any failure but cancellation, not only retryable ones: for a step that
    /// is known to be flaky and safe to run twice.
    #[must_use]
    pub fn with_retry_on_any_error(mut self) -> Self {
        self.retry_on = RetryOn::Any;
        self
    }

    /// Waits `d` before the step.
    #[must_use]
    pub fn with_pause_before(mut self, d: Duration) -> Self {
        self.pause_before = Some(d);
        self
    }

    /// Runs this step, and every step after it, on every build: the step cache stops before it.
    #[must_use]
    pub fn without_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }
}

/// Builds a [`Pipeline`]. Setters never fail; `build()` checks everything.
#[must_use]
pub struct PipelineBuilder {
    source: Option<(Arc<dyn Source>, ImageSource)>,
    provisioner: Option<Arc<dyn Provisioner>>,
    cfg: PipelineConfig,
}

impl fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.cfg.name)
            .field("steps", &self.cfg.customizers.len())
            .field("targets", &self.cfg.targets.len())
            .finish_non_exhaustive()
    }
}

impl Default for PipelineBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn invalid(key: &str, message: impl Into<String>) -> Error {
    Error::InvalidConfig { backend: "pipeline", key: key.to_string(), message: message.into() }
}

/// The step name used in events and reports: `customize[2] install-nginx`.
fn step_name(list: &str, i: usize, name: Option<&str>, type_name: &str) -> String {
    match name {
        Some(n) if !n.is_empty() => format!("{list}[{i}] {n}"),
        _ => format!("{list}[{i}] {type_name}"),
    }
}

impl PipelineBuilder {
    /// An empty builder: 240-minute timeout, `cleanup` on errors, an in-memory ledger.
    pub fn new() -> Self {
        PipelineBuilder {
            source: None,
            provisioner: None,
            cfg: PipelineConfig {
                name: "image".into(),
                cleaners: Vec::new(),
                customizers: Vec::new(),
                validators: Vec::new(),
                targets: Vec::new(),
                vm_profile: VmProfile::default(),
                data_disks_gb: Vec::new(),
                tags: StringMap::new(),
                location: String::new(),
                staging_resource_group: None,
                template_digest: crate::types::TemplateDigest::default(),
                timeout: crate::template::DEFAULT_BUILD_TIMEOUT,
                cleanup_timeout: Duration::from_secs(15 * 60),
                on_customizer_error: ErrorAction::Cleanup,
                on_validation_error: ErrorAction::Cleanup,
                continue_distribute_on_failure: false,
                source_validation_only: false,
                ledger: Ledger::default(),
                log_dir: None,
                secrets: Arc::new(Vec::new()),
                event_capacity: crate::channel::DEFAULT_CAPACITY,
                cache: true,
            },
        }
    }

    /// Everything a template says, through `backend`'s registry. The template must be free
    /// of errors for the backend's types and of unresolved ARM expressions.
    pub fn from_template(t: &ImageTemplate, backend: &Backend) -> Result<Self> {
        let mut diags = t.validate(&backend.registry.type_names());
        for d in backend.registry.check_template(t) {
            diags.push(d);
        }
        for path in t.expressions() {
            diags.push(
                Diagnostic::error(path, Code::ArmExpression, "unresolved ARM expression")
                    .with_hint("deploy through ARM, or put the value itself in the template"),
            );
        }
        if diags.has_errors() {
            return Err(Error::InvalidTemplate { diagnostics: Diagnostics(diags.0.into_iter().filter(Diagnostic::is_error).collect()) });
        }
        let reg = &backend.registry;
        let p = &t.properties;
        let mut b = PipelineBuilder::new()
            .name(t.name.clone().unwrap_or_else(|| "image".into()))
            .provisioner(backend.provisioner.clone())
            .source(reg.source(&p.source)?, p.source.clone())
            .timeout(t.build_timeout());
        for (i, c) in p.customize.iter().enumerate() {
            let customizer = reg.customizer(c).map_err(|e| e.at(&format!("properties.customize[{i}]")))?;
            b = b.customizer_named(step_name("customize", i, c.name(), c.type_name()), customizer, StepOptions::default());
        }
        if let Some(v) = &p.validate {
            for (i, c) in v.in_vm_validations.iter().enumerate() {
                let spec = c.as_customizer();
                let validator = reg.customizer(&spec).map_err(|e| e.at(&format!("properties.validate.inVMValidations[{i}]")))?;
                b = b.validator_named(step_name("validate", i, spec.name(), spec.type_name()), validator, StepOptions::default());
            }
            b.cfg.continue_distribute_on_failure = lit(&v.continue_distribute_on_failure).unwrap_or(false);
            b.cfg.source_validation_only = lit(&v.source_validation_only).unwrap_or(false);
        }
        for (i, d) in p.distribute.iter().enumerate() {
            let distributor = reg.distributor(d).map_err(|e| e.at(&format!("properties.distribute[{i}]")))?;
            b = b.target(d.run_output_name(), d.type_name(), distributor);
        }
        if let Some(eh) = &p.error_handling {
            b.cfg.on_customizer_error = eh.on_customizer_error.unwrap_or_default();
            b.cfg.on_validation_error = eh.on_validation_error.unwrap_or_default();
        }
        if let Some(vm) = &p.vm_profile {
            b.cfg.vm_profile = vm.clone();
        }
        b.cfg.data_disks_gb = p.additional_data_disks.iter().flatten().filter_map(|d| lit(&d.size_gb)).map(|n| n.max(0) as u32).collect();
        b.cfg.tags = lit(&p.managed_resource_tags).unwrap_or_default();
        b.cfg.location = t.location.clone();
        b.cfg.staging_resource_group = p.staging_resource_group.clone().filter(|s| !s.is_empty());
        if let Some(name) = &t.name {
            b.cfg.tags.insert("imageTemplateName".into(), name.clone());
        }
        b.cfg.template_digest = crate::types::TemplateDigest::of(Arc::new(t.clone()));
        Ok(b)
    }

    /// The template name (used for resource names and tags).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = name.into();
        self
    }

    /// The source and its spec.
    pub fn source(mut self, source: Arc<dyn Source>, spec: ImageSource) -> Self {
        self.source = Some((source, spec));
        self
    }

    /// The provisioner.
    pub fn provisioner(mut self, p: Arc<dyn Provisioner>) -> Self {
        self.provisioner = Some(p);
        self
    }

    /// Another reclaimer, able to delete what distributors of another backend record (a
    /// local build distributed to Azure). The provisioner and [`crate::reclaim::FileReclaim`]
    /// are always there.
    pub fn cleaner(mut self, r: Arc<dyn Reclaim>) -> Self {
        self.cfg.cleaners.push(r);
        self
    }

    /// Appends a customizer, named after its `Display`.
    pub fn customizer(self, c: Arc<dyn Customizer>) -> Self {
        let name = format!("customize[{}] {c}", self.cfg.customizers.len());
        self.customizer_named(name, c, StepOptions::default())
    }

    /// Appends a customizer with a name and options.
    pub fn customizer_named(mut self, name: impl Into<String>, c: Arc<dyn Customizer>, options: StepOptions) -> Self {
        self.cfg.customizers.push(Step { name: name.into(), customizer: c, options });
        self
    }

    /// Appends a validator, named after its `Display`.
    pub fn validator(self, c: Arc<dyn Customizer>) -> Self {
        let name = format!("validate[{}] {c}", self.cfg.validators.len());
        self.validator_named(name, c, StepOptions::default())
    }

    /// Appends a validator with a name and options.
    pub fn validator_named(mut self, name: impl Into<String>, c: Arc<dyn Customizer>, options: StepOptions) -> Self {
        self.cfg.validators.push(Step { name: name.into(), customizer: c, options });
        self
    }

    /// Adds a distribution target.
    pub fn target(mut self, run_output_name: impl Into<String>, type_name: impl Into<String>, d: Arc<dyn Distributor>) -> Self {
        self.cfg.targets.push(Target { run_output_name: run_output_name.into(), type_name: type_name.into(), distributor: d });
        self
    }

    /// Adds a target from a template `distribute` entry through `backend`.
    pub fn target_spec(self, spec: &DistributorSpec, backend: &Backend) -> Result<Self> {
        let d = backend.registry.distributor(spec)?;
        Ok(self.target(spec.run_output_name(), spec.type_name(), d))
    }

    /// The build VM profile.
    pub fn vm_profile(mut self, vm: VmProfile) -> Self {
        self.cfg.vm_profile = vm;
        self
    }

    /// The region to build in (the template's `location`).
    pub fn location(mut self, location: impl Into<String>) -> Self {
        self.cfg.location = location.into();
        self
    }

    /// The resource group to stage the build in (the template's `stagingResourceGroup`).
    pub fn staging_resource_group(mut self, id: impl Into<String>) -> Self {
        self.cfg.staging_resource_group = Some(id.into());
        self
    }

    /// Tags for everything the run creates.
    pub fn tag(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.cfg.tags.insert(k.into(), v.into());
        self
    }

    /// Whole-run timeout (AIB's `buildTimeoutInMinutes`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.cfg.timeout = t;
        self
    }

    /// Budget for cleanup after the run ended (any path).
    pub fn cleanup_timeout(mut self, t: Duration) -> Self {
        self.cfg.cleanup_timeout = t;
        self
    }

    /// What to do when a customizer fails.
    pub fn on_customizer_error(mut self, a: ErrorAction) -> Self {
        self.cfg.on_customizer_error = a;
        self
    }

    /// What to do when a validator fails.
    pub fn on_validation_error(mut self, a: ErrorAction) -> Self {
        self.cfg.on_validation_error = a;
        self
    }

    /// Distribute even when validation failed (the run still fails).
    pub fn continue_distribute_on_failure(mut self, yes: bool) -> Self {
        self.cfg.continue_distribute_on_failure = yes;
        self
    }

    /// Skip customizers; validate the source image as it is.
    pub fn source_validation_only(mut self, yes: bool) -> Self {
        self.cfg.source_validation_only = yes;
        self
    }

    /// The ledger (a durable one for crash-safe cleanup).
    pub fn ledger(mut self, l: Ledger) -> Self {
        self.cfg.ledger = l;
        self
    }

    /// Writes `<dir>/<run-id>/customization.log`.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cfg.log_dir = Some(dir.into());
        self
    }

    /// A value masked as `***` in every output line, notice, error and log.
    pub fn secret(mut self, s: impl Into<String>) -> Self {
        Arc::make_mut(&mut self.cfg.secrets).push(s.into());
        self
    }

    /// The SHA-256 (hex) of the template, for manifests of what an image was built from;
    /// [`PipelineBuilder::from_template`] sets the digest of the parsed template.
    pub fn template_digest(mut self, digest: impl Into<String>) -> Self {
        self.cfg.template_digest = crate::types::TemplateDigest::given(digest);
        self
    }

    /// How many output lines and progress events the events stream holds for a reader that
    /// falls behind before it drops them (counted in [`crate::Event::Lagged`]); other events
    /// are never dropped. Default 4096.
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.cfg.event_capacity = n;
        self
    }

    /// The step cache (on by default; it acts only with a provisioner that keeps resume
    /// points, see [`Provisioner::checkpoints`]). Before the build VM starts, every leading
    /// customizer's [`Customizer::fingerprint`] is taken (downloading what it fetches) and
    /// chained into [`crate::ResumePoint`] keys; the provisioner may start the VM at the longest
    /// point it holds, and those steps are reported as `cached`. After a customizer that took
    /// at least [`crate::RESUME_POINT_MIN_STEP`] (a resume point costs about a second to keep;
    /// quicker steps are cheaper to run again) the provisioner is asked to keep the VM as a
    /// new point. A step without a fingerprint, or with [`StepOptions::without_cache`], ends
    /// the chain: it and every step after it always run. Hits, misses and points kept are
    /// notices in the log and in [`crate::RunReport::cache`].
    pub fn cache(mut self, on: bool) -> Self {
        self.cfg.cache = on;
        self
    }

    /// Checks everything and builds.
    pub fn build(self) -> Result<Pipeline> {
        let (source, source_spec) = self.source.ok_or_else(|| invalid("source", "no source: call .source(..) or build from a template"))?;
        let provisioner = self.provisioner.ok_or_else(|| invalid("provisioner", "no provisioner: call .provisioner(..)"))?;
        let cfg = self.cfg;
        if cfg.targets.is_empty() {
            return Err(invalid("distribute", "no distribution target: add at least one with .target(..)"));
        }
        let mut seen = HashSet::new();
        for t in &cfg.targets {
            if !is_valid_name(&t.run_output_name) {
                return Err(invalid("runOutputName", format!("`{}` does not match ^[A-Za-z0-9-_.]{{1,64}}$", t.run_output_name)));
            }
            if !seen.insert(t.run_output_name.as_str()) {
                return Err(invalid("runOutputName", format!("`{}` is used twice", t.run_output_name)));
            }
        }
        if cfg.timeout.is_zero() || cfg.timeout > MAX_BUILD_TIMEOUT {
            let max = crate::template::MAX_BUILD_TIMEOUT_MINUTES;
            return Err(invalid("timeout", format!("the build timeout must be above zero and at most {max} minutes")));
        }
        if cfg.source_validation_only && !cfg.customizers.is_empty() {
            return Err(invalid("sourceValidationOnly", "source validation runs no customizers; remove them"));
        }
        if cfg.secrets.iter().any(String::is_empty) {
            return Err(invalid("secret", "an empty secret would mask nothing"));
        }
        if cfg.event_capacity == 0 {
            return Err(invalid("event_capacity", "the events stream needs room for at least one line"));
        }
        let mut seen_steps = HashSet::new();
        for s in cfg.customizers.iter().chain(&cfg.validators) {
            if !seen_steps.insert(s.name.as_str()) {
                return Err(invalid("step", format!("two steps are named `{}`", s.name)));
            }
        }
        Ok(Pipeline { inner: Arc::new(Inner { cfg, source, source_spec, provisioner }) })
    }
}

impl Pipeline {
    /// A builder holding everything `template` says, run by `backend`.
    pub fn from_template(template: &ImageTemplate, backend: &Backend) -> Result<PipelineBuilder> {
        PipelineBuilder::from_template(template, backend)
    }
}
