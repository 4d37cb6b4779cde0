//! The registry maps template `type` names to implementations; a [`Backend`] is a
//! registry plus a provisioner. Plugins add their own types.

use crate::template::{
    CustomizerSpec, DistributorSpec, FileStep, ImageSource, PowerShellStep, ShellStep, TypeNames, WindowsRestartStep, WindowsUpdateStep,
    type_names as t,
};
use crate::traits::{Customizer, Distributor, Provisioner, Source};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Makes a [`Customizer`] for a `customize[]` (or `inVMValidations[]`) entry.
pub type CustomizerFactory = Arc<dyn Fn(&CustomizerSpec) -> Result<Arc<dyn Customizer>> + Send + Sync>;
/// Makes a [`Distributor`] for a `distribute[]` entry.
pub type DistributorFactory = Arc<dyn Fn(&DistributorSpec) -> Result<Arc<dyn Distributor>> + Send + Sync>;

/// Checks a whole template for what a backend refuses beyond the types: each finding is a
/// diagnostic at its JSON path (`properties.source.imageId`), so the template is refused at
/// the field before anything starts.
pub type TemplateCheck = Arc<dyn Fn(&crate::template::ImageTemplate) -> Vec<crate::template::Diagnostic> + Send + Sync>;

/// Makes a [`Customizer`] from one built-in step type, typed: no factory sees a step of
/// another type.
pub type TypedFactory<S> = Arc<dyn Fn(&S) -> Result<Arc<dyn Customizer>> + Send + Sync>;

/// The factories of AIB's own customizer types, one slot each.
#[derive(Clone, Default)]
struct Builtins {
    shell: Option<TypedFactory<ShellStep>>,
    powershell: Option<TypedFactory<PowerShellStep>>,
    file: Option<TypedFactory<FileStep>>,
    windows_restart: Option<TypedFactory<WindowsRestartStep>>,
    windows_update: Option<TypedFactory<WindowsUpdateStep>>,
}

impl Builtins {
    fn names(&self) -> impl Iterator<Item = &'static str> {
        [
            (self.shell.is_some(), t::SHELL),
            (self.powershell.is_some(), t::POWERSHELL),
            (self.file.is_some(), t::FILE),
            (self.windows_restart.is_some(), t::WINDOWS_RESTART),
            (self.windows_update.is_some(), t::WINDOWS_UPDATE),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
    }
}

/// Template `type` names and what serves them: sources, customizer factories (typed for
/// AIB's own types, by name for plugins), distributor factories.
#[derive(Clone, Default)]
pub struct Registry {
    sources: BTreeMap<String, Arc<dyn Source>>,
    builtins: Builtins,
    customizers: BTreeMap<String, CustomizerFactory>,
    validators: BTreeSet<String>,
    distributors: BTreeMap<String, DistributorFactory>,
    checks: Vec<TemplateCheck>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("customizers", &self.builtins.names().map(str::to_string).chain(self.customizers.keys().cloned()).collect::<Vec<_>>())
            .field("validators", &self.validators)
            .field("distributors", &self.distributors.keys().collect::<Vec<_>>())
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves source `type_name` with `source` (one source value resolves every spec of its
    /// types; the spec comes with each [`crate::ResolveRequest`]).
    #[must_use]
    pub fn with_source(mut self, type_name: &str, source: Arc<dyn Source>) -> Self {
        self.sources.insert(type_name.to_string(), source);
        self
    }

    /// Serves every one of `type_names` with `source`.
    #[must_use]
    pub fn with_sources(self, type_names: &[&str], source: Arc<dyn Source>) -> Self {
        type_names.iter().fold(self, |r, t| r.with_source(t, source.clone()))
    }

    /// The `Shell` customizer and validator.
    #[must_use]
    pub fn with_shell(mut self, f: impl Fn(&ShellStep) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static) -> Self {
        self.builtins.shell = Some(Arc::new(f));
        self
    }

    /// The `PowerShell` customizer and validator.
    #[must_use]
    pub fn with_powershell(mut self, f: impl Fn(&PowerShellStep) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static) -> Self {
        self.builtins.powershell = Some(Arc::new(f));
        self
    }

    /// The `File` customizer and validator.
    #[must_use]
    pub fn with_file(mut self, f: impl Fn(&FileStep) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static) -> Self {
        self.builtins.file = Some(Arc::new(f));
        self
    }

    /// The `WindowsRestart` customizer.
    #[must_use]
    pub fn with_windows_restart(mut self, f: impl Fn(&WindowsRestartStep) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static) -> Self {
        self.builtins.windows_restart = Some(Arc::new(f));
        self
    }

    /// The `WindowsUpdate` customizer.
    #[must_use]
    pub fn with_windows_update(mut self, f: impl Fn(&WindowsUpdateStep) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static) -> Self {
        self.builtins.windows_update = Some(Arc::new(f));
        self
    }

    /// Registers a plugin's customizer type (not usable as a validator). Its factory gets the
    /// step as [`CustomizerSpec::Custom`]; AIB's own types are registered with the typed
    /// methods ([`Registry::with_shell`] and the like).
    #[must_use]
    pub fn with_customizer(
        mut self,
        type_name: &str,
        f: impl Fn(&CustomizerSpec) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static,
    ) -> Self {
        self.customizers.insert(type_name.to_string(), Arc::new(f));
        self
    }

    /// Registers a plugin's type usable both as a customizer and as a validator.
    #[must_use]
    pub fn with_customizer_and_validator(
        mut self,
        type_name: &str,
        f: impl Fn(&CustomizerSpec) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static,
    ) -> Self {
        self.validators.insert(type_name.to_string());
        self.with_customizer(type_name, f)
    }

    /// Registers a distributor type.
    #[must_use]
    pub fn with_distributor(
        mut self,
        type_name: &str,
        f: impl Fn(&DistributorSpec) -> Result<Arc<dyn Distributor>> + Send + Sync + 'static,
    ) -> Self {
        self.distributors.insert(type_name.to_string(), Arc::new(f));
        self
    }

    /// Adds every entry of `other` (its entries win).
    #[must_use]
    pub fn merge(mut self, other: Registry) -> Self {
        self.sources.extend(other.sources);
        let (mine, theirs) = (&mut self.builtins, other.builtins);
        mine.shell = theirs.shell.or(mine.shell.take());
        mine.powershell = theirs.powershell.or(mine.powershell.take());
        mine.file = theirs.file.or(mine.file.take());
        mine.windows_restart = theirs.windows_restart.or(mine.windows_restart.take());
        mine.windows_update = theirs.windows_update.or(mine.windows_update.take());
        self.customizers.extend(other.customizers);
        self.validators.extend(other.validators);
        self.distributors.extend(other.distributors);
        self.checks.extend(other.checks);
        self
    }

    /// Adds a check of whole templates ([`TemplateCheck`]): `Pipeline::from_template` refuses a
    /// template with any finding, at its path. For what no single type's factory sees: the
    /// subscriptions an Azure backend's ARM ids may name, say.
    #[must_use]
    pub fn with_template_check(
        mut self,
        check: impl Fn(&crate::template::ImageTemplate) -> Vec<crate::template::Diagnostic> + Send + Sync + 'static,
    ) -> Self {
        self.checks.push(Arc::new(check));
        self
    }

    /// What the template checks find in `t`.
    pub fn check_template(&self, t: &crate::template::ImageTemplate) -> Vec<crate::template::Diagnostic> {
        self.checks.iter().flat_map(|c| c(t)).collect()
    }

    /// The type names, for validating templates against this registry.
    pub fn type_names(&self) -> TypeNames {
        let validators = [
            (self.builtins.shell.is_some(), t::SHELL),
            (self.builtins.powershell.is_some(), t::POWERSHELL),
            (self.builtins.file.is_some(), t::FILE),
        ];
        TypeNames {
            sources: self.sources.keys().cloned().collect(),
            customizers: self.builtins.names().map(str::to_string).chain(self.customizers.keys().cloned()).collect(),
            validators: validators
                .into_iter()
                .filter(|(set, _)| *set)
                .map(|(_, n)| n.to_string())
                .chain(self.validators.iter().cloned())
                .collect(),
            distributors: self.distributors.keys().cloned().collect(),
        }
    }

    fn missing(kind: &str, name: &str) -> Error {
        Error::Unsupported { operation: format!("{kind} type `{name}`"), backend: "registry" }
    }

    /// The source for `spec`.
    pub fn source(&self, spec: &ImageSource) -> Result<Arc<dyn Source>> {
        self.sources.get(spec.type_name()).cloned().ok_or_else(|| Self::missing("source", spec.type_name()))
    }

    /// The customizer for `spec`: AIB's types through their typed factories, plugin types by
    /// name.
    pub fn customizer(&self, spec: &CustomizerSpec) -> Result<Arc<dyn Customizer>> {
        fn typed<S>(f: &Option<TypedFactory<S>>, step: &S, name: &str) -> Result<Arc<dyn Customizer>> {
            f.as_ref().ok_or_else(|| Registry::missing("customizer", name)).and_then(|f| f(step))
        }
        let b = &self.builtins;
        match spec {
            CustomizerSpec::Shell(s) => typed(&b.shell, s, t::SHELL),
            CustomizerSpec::PowerShell(s) => typed(&b.powershell, s, t::POWERSHELL),
            CustomizerSpec::File(s) => typed(&b.file, s, t::FILE),
            CustomizerSpec::WindowsRestart(s) => typed(&b.windows_restart, s, t::WINDOWS_RESTART),
            CustomizerSpec::WindowsUpdate(s) => typed(&b.windows_update, s, t::WINDOWS_UPDATE),
            CustomizerSpec::Custom(c) => {
                let f = self.customizers.get(&c.type_name).ok_or_else(|| Self::missing("customizer", &c.type_name))?;
                f(spec)
            }
        }
    }

    /// The distributor for `spec`.
    pub fn distributor(&self, spec: &DistributorSpec) -> Result<Arc<dyn Distributor>> {
        let f = self.distributors.get(spec.type_name()).ok_or_else(|| Self::missing("distributor", spec.type_name()))?;
        f(spec)
    }
}

/// A backend: a provisioner and the types it can build with.
#[derive(Debug, Clone)]
pub struct Backend {
    /// The provisioner.
    pub provisioner: Arc<dyn Provisioner>,
    /// Its types.
    pub registry: Registry,
}

impl Backend {
    /// A backend.
    pub fn new(provisioner: Arc<dyn Provisioner>, registry: Registry) -> Self {
        Backend { provisioner, registry }
    }

    /// The backend's name.
    pub fn name(&self) -> &'static str {
        self.provisioner.backend()
    }
}
