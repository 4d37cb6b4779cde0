//! `PipelineBuilder`: every setting, validated in `build()`.

use super::{Inner, Pipeline, Step, Target};
use crate::ledger::Ledger;
use crate::registry::Backend;
use crate::template::{
    Code, Diagnostic, Diagnostics, DistributorSpec, ErrorAction, ImageSource, ImageTemplate, StringMap, VmProfile, is_valid_name, lit,
};
use crate::traits::{Customizer, Distributor, Provisioner, Source};
use crate::{Error, Result};
use std::collections::HashSet;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Per-step options beyond AIB's template (Packer has them): timeout, retries, pause.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StepOptions {
    /// Fail the step after this long.
    pub timeout: Option<Duration>,
    /// Run the step again this many times after a failure.
    pub max_retries: u32,
    /// Wait before a retry; doubles each time.
    pub retry_backoff: Duration,
    /// Wait before the step starts.
    pub pause_before: Option<Duration>,
}

impl StepOptions {
    /// Fails the step after `t`.
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Retries up to `n` times, waiting `backoff`, then twice that, and so on.
    #[must_use]
    pub fn with_retries(mut self, n: u32, backoff: Duration) -> Self {
        self.max_retries = n;
        self.retry_backoff = backoff;
        self
    }

    /// Waits `d` before the step.
    #[must_use]
    pub fn with_pause_before(mut self, d: Duration) -> Self {
        self.pause_before = Some(d);
        self
    }
}

/// Builds a [`Pipeline`]. Setters never fail; `build()` checks everything.
#[must_use]
pub struct PipelineBuilder {
    name: String,
    source: Option<(Arc<dyn Source>, ImageSource)>,
    provisioner: Option<Arc<dyn Provisioner>>,
    cleaners: Vec<Arc<dyn Provisioner>>,
    customizers: Vec<Step>,
    validators: Vec<Step>,
    targets: Vec<Target>,
    vm_profile: VmProfile,
    data_disks_gb: Vec<u32>,
    tags: StringMap,
    location: String,
    staging_resource_group: Option<String>,
    timeout: Duration,
    cleanup_timeout: Duration,
    on_customizer_error: ErrorAction,
    on_validation_error: ErrorAction,
    continue_distribute_on_failure: bool,
    source_validation_only: bool,
    ledger: Option<Ledger>,
    log_dir: Option<PathBuf>,
    secrets: Vec<String>,
}

impl fmt::Debug for PipelineBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("name", &self.name)
            .field("steps", &self.customizers.len())
            .field("targets", &self.targets.len())
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
            name: "image".into(),
            source: None,
            provisioner: None,
            cleaners: Vec::new(),
            customizers: Vec::new(),
            validators: Vec::new(),
            targets: Vec::new(),
            vm_profile: VmProfile::default(),
            data_disks_gb: Vec::new(),
            tags: StringMap::new(),
            location: String::new(),
            staging_resource_group: None,
            timeout: crate::template::DEFAULT_BUILD_TIMEOUT,
            cleanup_timeout: Duration::from_secs(15 * 60),
            on_customizer_error: ErrorAction::Cleanup,
            on_validation_error: ErrorAction::Cleanup,
            continue_distribute_on_failure: false,
            source_validation_only: false,
            ledger: None,
            log_dir: None,
            secrets: Vec::new(),
        }
    }

    /// Everything a template says, through `backend`'s registry. The template must be free
    /// of errors for the backend's types and of unresolved ARM expressions.
    pub fn from_template(t: &ImageTemplate, backend: &Backend) -> Result<Self> {
        let mut diags = t.validate(&backend.registry.type_names());
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
            b = b.customizer_named(step_name("customize", i, c.name(), c.type_name()), reg.customizer(c)?, StepOptions::default());
        }
        if let Some(v) = &p.validate {
            for (i, c) in v.in_vm_validations.iter().enumerate() {
                let spec = c.as_customizer();
                b = b.validator_named(
                    step_name("validate", i, spec.name(), spec.type_name()),
                    reg.customizer(&spec)?,
                    StepOptions::default(),
                );
            }
            b.continue_distribute_on_failure = lit(&v.continue_distribute_on_failure).unwrap_or(false);
            b.source_validation_only = lit(&v.source_validation_only).unwrap_or(false);
        }
        for d in &p.distribute {
            b = b.target(d.run_output_name(), d.type_name(), reg.distributor(d)?);
        }
        if let Some(eh) = &p.error_handling {
            b.on_customizer_error = eh.on_customizer_error.unwrap_or_default();
            b.on_validation_error = eh.on_validation_error.unwrap_or_default();
        }
        if let Some(vm) = &p.vm_profile {
            b.vm_profile = vm.clone();
        }
        b.data_disks_gb = p.additional_data_disks.iter().flatten().filter_map(|d| lit(&d.size_gb)).map(|n| n.max(0) as u32).collect();
        b.tags = lit(&p.managed_resource_tags).unwrap_or_default();
        b.location = t.location.clone();
        b.staging_resource_group = p.staging_resource_group.clone().filter(|s| !s.is_empty());
        if let Some(name) = &t.name {
            b.tags.insert("imageTemplateName".into(), name.clone());
        }
        Ok(b)
    }

    /// The template name (used for resource names and tags).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
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

    /// Another backend able to delete what distributors of another backend record (a local
    /// build distributed to Azure).
    pub fn cleaner(mut self, p: Arc<dyn Provisioner>) -> Self {
        self.cleaners.push(p);
        self
    }

    /// Appends a customizer, named after its `Display`.
    pub fn customizer(self, c: Arc<dyn Customizer>) -> Self {
        let name = format!("customize[{}] {c}", self.customizers.len());
        self.customizer_named(name, c, StepOptions::default())
    }

    /// Appends a customizer with a name and options.
    pub fn customizer_named(mut self, name: impl Into<String>, c: Arc<dyn Customizer>, options: StepOptions) -> Self {
        self.customizers.push(Step { name: name.into(), customizer: c, options });
        self
    }

    /// Appends a validator, named after its `Display`.
    pub fn validator(self, c: Arc<dyn Customizer>) -> Self {
        let name = format!("validate[{}] {c}", self.validators.len());
        self.validator_named(name, c, StepOptions::default())
    }

    /// Appends a validator with a name and options.
    pub fn validator_named(mut self, name: impl Into<String>, c: Arc<dyn Customizer>, options: StepOptions) -> Self {
        self.validators.push(Step { name: name.into(), customizer: c, options });
        self
    }

    /// Adds a distribution target.
    pub fn target(mut self, run_output_name: impl Into<String>, type_name: impl Into<String>, d: Arc<dyn Distributor>) -> Self {
        self.targets.push(Target { run_output_name: run_output_name.into(), type_name: type_name.into(), distributor: d });
        self
    }

    /// Adds a target from a template `distribute` entry through `backend`.
    pub fn target_spec(self, spec: &DistributorSpec, backend: &Backend) -> Result<Self> {
        let d = backend.registry.distributor(spec)?;
        Ok(self.target(spec.run_output_name(), spec.type_name(), d))
    }

    /// The build VM profile.
    pub fn vm_profile(mut self, vm: VmProfile) -> Self {
        self.vm_profile = vm;
        self
    }

    /// The region to build in (the template's `location`).
    pub fn location(mut self, location: impl Into<String>) -> Self {
        self.location = location.into();
        self
    }

    /// The resource group to stage the build in (the template's `stagingResourceGroup`).
    pub fn staging_resource_group(mut self, id: impl Into<String>) -> Self {
        self.staging_resource_group = Some(id.into());
        self
    }

    /// Tags for everything the run creates.
    pub fn tag(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.tags.insert(k.into(), v.into());
        self
    }

    /// Whole-run timeout (AIB's `buildTimeoutInMinutes`).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// Budget for cleanup after the run ended (any path).
    pub fn cleanup_timeout(mut self, t: Duration) -> Self {
        self.cleanup_timeout = t;
        self
    }

    /// What to do when a customizer fails.
    pub fn on_customizer_error(mut self, a: ErrorAction) -> Self {
        self.on_customizer_error = a;
        self
    }

    /// What to do when a validator fails.
    pub fn on_validation_error(mut self, a: ErrorAction) -> Self {
        self.on_validation_error = a;
        self
    }

    /// Distribute even when validation failed (the run still fails).
    pub fn continue_distribute_on_failure(mut self, yes: bool) -> Self {
        self.continue_distribute_on_failure = yes;
        self
    }

    /// Skip customizers; validate the source image as it is.
    pub fn source_validation_only(mut self, yes: bool) -> Self {
        self.source_validation_only = yes;
        self
    }

    /// The ledger (a durable one for crash-safe cleanup).
    pub fn ledger(mut self, l: Ledger) -> Self {
        self.ledger = Some(l);
        self
    }

    /// Writes `<dir>/<run-id>/customization.log`.
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// A value masked as `***` in every output line, notice and log.
    pub fn secret(mut self, s: impl Into<String>) -> Self {
        self.secrets.push(s.into());
        self
    }

    /// Checks everything and builds.
    pub fn build(self) -> Result<Pipeline> {
        let (source, source_spec) = self.source.ok_or_else(|| invalid("source", "no source: call .source(..) or build from a template"))?;
        let provisioner = self.provisioner.ok_or_else(|| invalid("provisioner", "no provisioner: call .provisioner(..)"))?;
        if self.targets.is_empty() {
            return Err(invalid("distribute", "no distribution target: add at least one with .target(..)"));
        }
        let mut seen = HashSet::new();
        for t in &self.targets {
            if !is_valid_name(&t.run_output_name) {
                return Err(invalid("runOutputName", format!("`{}` does not match ^[A-Za-z0-9-_.]{{1,64}}$", t.run_output_name)));
            }
            if !seen.insert(t.run_output_name.as_str()) {
                return Err(invalid("runOutputName", format!("`{}` is used twice", t.run_output_name)));
            }
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(960 * 60) {
            return Err(invalid("timeout", "the build timeout must be above zero and at most 960 minutes"));
        }
        if self.source_validation_only && !self.customizers.is_empty() {
            return Err(invalid("sourceValidationOnly", "source validation runs no customizers; remove them"));
        }
        if self.secrets.iter().any(String::is_empty) {
            return Err(invalid("secret", "an empty secret would mask nothing"));
        }
        let mut seen_steps = HashSet::new();
        for s in self.customizers.iter().chain(&self.validators) {
            if !seen_steps.insert(s.name.as_str()) {
                return Err(invalid("step", format!("two steps are named `{}`", s.name)));
            }
        }
        Ok(Pipeline {
            inner: Arc::new(Inner {
                name: self.name,
                source,
                source_spec,
                provisioner,
                cleaners: self.cleaners,
                customizers: self.customizers,
                validators: self.validators,
                targets: self.targets,
                vm_profile: self.vm_profile,
                data_disks_gb: self.data_disks_gb,
                tags: self.tags,
                location: self.location,
                staging_resource_group: self.staging_resource_group,
                timeout: self.timeout,
                cleanup_timeout: self.cleanup_timeout,
                on_customizer_error: self.on_customizer_error,
                on_validation_error: self.on_validation_error,
                continue_distribute_on_failure: self.continue_distribute_on_failure,
                source_validation_only: self.source_validation_only,
                ledger: self.ledger.unwrap_or_default(),
                log_dir: self.log_dir,
                secrets: Arc::new(self.secrets),
            }),
        })
    }
}

impl Pipeline {
    /// A builder holding everything `template` says, run by `backend`.
    pub fn from_template(template: &ImageTemplate, backend: &Backend) -> Result<PipelineBuilder> {
        PipelineBuilder::from_template(template, backend)
    }
}
