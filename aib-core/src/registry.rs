//! The registry maps template `type` names to implementations; a [`Backend`] is a
//! registry plus a provisioner. Plugins add their own types.

use crate::template::{CustomizerSpec, DistributorSpec, ImageSource, TypeNames};
use crate::traits::{Customizer, Distributor, Provisioner, Source};
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// Makes a [`Source`] for a template `source`.
pub type SourceFactory = Arc<dyn Fn(&ImageSource) -> Result<Arc<dyn Source>> + Send + Sync>;
/// Makes a [`Customizer`] for a `customize[]` (or `inVMValidations[]`) entry.
pub type CustomizerFactory = Arc<dyn Fn(&CustomizerSpec) -> Result<Arc<dyn Customizer>> + Send + Sync>;
/// Makes a [`Distributor`] for a `distribute[]` entry.
pub type DistributorFactory = Arc<dyn Fn(&DistributorSpec) -> Result<Arc<dyn Distributor>> + Send + Sync>;

/// Template `type` names and their factories.
#[derive(Clone, Default)]
pub struct Registry {
    sources: BTreeMap<String, SourceFactory>,
    customizers: BTreeMap<String, CustomizerFactory>,
    validators: BTreeSet<String>,
    distributors: BTreeMap<String, DistributorFactory>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("sources", &self.sources.keys().collect::<Vec<_>>())
            .field("customizers", &self.customizers.keys().collect::<Vec<_>>())
            .field("validators", &self.validators)
            .field("distributors", &self.distributors.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a source type.
    #[must_use]
    pub fn with_source(mut self, type_name: &str, f: impl Fn(&ImageSource) -> Result<Arc<dyn Source>> + Send + Sync + 'static) -> Self {
        self.sources.insert(type_name.to_string(), Arc::new(f));
        self
    }

    /// Registers a customizer type (not usable as a validator).
    #[must_use]
    pub fn with_customizer(
        mut self,
        type_name: &str,
        f: impl Fn(&CustomizerSpec) -> Result<Arc<dyn Customizer>> + Send + Sync + 'static,
    ) -> Self {
        self.customizers.insert(type_name.to_string(), Arc::new(f));
        self
    }

    /// Registers a type usable both as a customizer and as a validator.
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
        self.customizers.extend(other.customizers);
        self.validators.extend(other.validators);
        self.distributors.extend(other.distributors);
        self
    }

    /// The type names, for validating templates against this registry.
    pub fn type_names(&self) -> TypeNames {
        TypeNames {
            sources: self.sources.keys().cloned().collect(),
            customizers: self.customizers.keys().cloned().collect(),
            validators: self.validators.clone(),
            distributors: self.distributors.keys().cloned().collect(),
        }
    }

    fn missing(kind: &str, name: &str) -> Error {
        Error::Unsupported { operation: format!("{kind} type `{name}`"), backend: "registry" }
    }

    /// The source for `spec`.
    pub fn source(&self, spec: &ImageSource) -> Result<Arc<dyn Source>> {
        let f = self.sources.get(spec.type_name()).ok_or_else(|| Self::missing("source", spec.type_name()))?;
        f(spec)
    }

    /// The customizer for `spec`.
    pub fn customizer(&self, spec: &CustomizerSpec) -> Result<Arc<dyn Customizer>> {
        let f = self.customizers.get(spec.type_name()).ok_or_else(|| Self::missing("customizer", spec.type_name()))?;
        f(spec)
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
