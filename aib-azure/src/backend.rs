//! `AzureBackend`: the ARM client, the provisioner, the sources and the ARM distributors as an
//! [`aib_core::Backend`], plus `gc` of what killed runs left, found by their tags.

use crate::api::RESOURCES_API;
use crate::client::ArmClient;
use crate::distribute::{ManagedImageDistributor, SharedImageDistributor};
use crate::error::BACKEND;
use crate::export::DiskVhdDistributor;
use crate::naming::{CREATED_AT_TAG, CREATED_BY, RUN_TAG};
use crate::provision::AzureProvisioner;
use crate::sources::AzureSource;
use aib_core::{Backend, Distributor, Error, Registry, Result};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Builds [`AzureBackend`]s.
#[derive(Debug, Default)]
#[must_use]
pub struct AzureBackendBuilder {
    provisioner: Option<crate::provision::AzureProvisionerBuilder>,
    storage_endpoint: Option<String>,
    file_roots: Vec<std::path::PathBuf>,
    source_nets: Vec<aib_core::boundary::IpNet>,
    scopes: Vec<String>,
}

/// The Azure backend: one value serves templates in any region (each request carries the
/// template's `location`).
#[derive(Debug, Clone)]
pub struct AzureBackend {
    provisioner: Arc<AzureProvisioner>,
    storage_endpoint: Option<String>,
    /// Downloads for customizers, with the operator's `file://` roots.
    fetcher: aib_customizers::fetch::Fetcher,
    /// Where templates' ARM ids may point.
    scopes: Arc<Vec<crate::scope::Scope>>,
}

impl AzureBackendBuilder {
    /// The provisioner's settings (ARM client, subscription, resource group, …).
    pub fn provisioner(mut self, p: crate::provision::AzureProvisionerBuilder) -> Self {
        self.provisioner = Some(p);
        self
    }

    /// The blob endpoint of the staging storage account, instead of the one ARM reports
    /// (a sovereign cloud's, or Azurite behind a test server).
    pub fn storage_endpoint(mut self, e: impl Into<String>) -> Self {
        self.storage_endpoint = Some(e.into());
        self
    }

    /// Lets templates read `file://` scripts and files of this machine under `dir` (off by
    /// default).
    pub fn allow_file_root(mut self, dir: impl Into<std::path::PathBuf>) -> Self {
        self.file_roots.push(dir.into());
        self
    }

    /// Lets templates' `scriptUri`/`sourceUri` come from internal addresses inside `net`; by
    /// default sources come from public addresses only ([`aib_core::boundary::is_internal`]).
    pub fn allow_source_network(mut self, net: aib_core::boundary::IpNet) -> Self {
        self.source_nets.push(net);
        self
    }

    /// Lets templates' ARM ids (source image, targets, staging group, subnet, identities) name
    /// `scope`: `/subscriptions/ID` or `/subscriptions/ID/resourceGroups/NAME`. Without any,
    /// they may name the subscription the backend builds in, and nothing else; with some, only
    /// those. Checked in `build()`.
    pub fn allow_scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Checks the settings.
    pub fn build(self) -> Result<AzureBackend> {
        let p = self
            .provisioner
            .ok_or_else(|| Error::InvalidConfig { backend: BACKEND, key: "provisioner".into(), message: "call .provisioner(..)".into() })?
            .build()?;
        let mut fetcher = aib_customizers::fetch::Fetcher::new();
        for d in self.file_roots {
            fetcher = fetcher.with_file_root(std::fs::canonicalize(&d).map_err(|e| Error::io(&d, e))?);
        }
        for n in self.source_nets {
            fetcher = fetcher.with_allowed_network(n);
        }
        let mut scopes = self.scopes.iter().map(|s| crate::scope::Scope::parse(s)).collect::<Result<Vec<_>>>()?;
        if scopes.is_empty() {
            scopes.push(crate::scope::Scope::subscription(p.subscription()));
        }
        Ok(AzureBackend { provisioner: Arc::new(p), storage_endpoint: self.storage_endpoint, fetcher, scopes: Arc::new(scopes) })
    }
}

/// What [`AzureBackend::gc_tagged`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TagGcReport {
    /// Deleted resource ids.
    pub deleted: Vec<String>,
    /// Resources of live runs or too young, left alone.
    pub skipped: Vec<String>,
    /// Resources that could not be deleted, with the reason.
    pub failed: Vec<(String, String)>,
}

fn order(kind: &str) -> u8 {
    match kind.to_ascii_lowercase().as_str() {
        "microsoft.compute/virtualmachines" => 0,
        "microsoft.compute/disks" => 1,
        "microsoft.network/networkinterfaces" => 2,
        "microsoft.network/publicipaddresses" => 3,
        "microsoft.network/virtualnetworks" => 4,
        "microsoft.network/networksecuritygroups" => 5,
        _ => 6,
    }
}

impl AzureBackend {
    /// A builder.
    pub fn builder() -> AzureBackendBuilder {
        AzureBackendBuilder::default()
    }

    /// The provisioner.
    pub fn provisioner(&self) -> Arc<AzureProvisioner> {
        self.provisioner.clone()
    }

    /// The ARM client.
    pub fn arm(&self) -> &ArmClient {
        self.provisioner.arm()
    }

    /// Sources, customizers and the `ManagedImage`, `SharedImage` and `VHD` distributors.
    pub fn backend(&self) -> Backend {
        let source = Arc::new(AzureSource::new(self.arm().clone(), self.provisioner.subscription()));
        use aib_core::template::type_names;
        let mut reg = Registry::new().with_sources(&type_names::SOURCES, source);
        let arm = self.arm().clone();
        reg = reg.with_distributor(type_names::MANAGED_IMAGE, move |spec| {
            Ok(Arc::new(ManagedImageDistributor::from_spec(arm.clone(), spec)?) as Arc<dyn Distributor>)
        });
        let arm = self.arm().clone();
        reg = reg.with_distributor(type_names::SHARED_IMAGE, move |spec| {
            Ok(Arc::new(SharedImageDistributor::from_spec(arm.clone(), spec)?) as Arc<dyn Distributor>)
        });
        let (arm, endpoint) = (self.arm().clone(), self.storage_endpoint.clone());
        reg = reg.with_distributor(type_names::VHD, move |spec| {
            Ok(Arc::new(DiskVhdDistributor::from_spec(arm.clone(), spec, endpoint.clone())?) as Arc<dyn Distributor>)
        });
        let scopes = self.scopes.clone();
        reg = reg.with_template_check(move |t| crate::scope::check(t, &scopes));
        if self.provisioner.allowed_source().is_none() {
            reg = reg.with_template_check(|t| {
                let own_subnet = t
                    .properties
                    .vm_profile
                    .as_ref()
                    .and_then(|v| v.vnet_config.as_ref())
                    .is_some_and(|v| v.subnet_id.as_deref().is_some_and(|s| !s.is_empty()));
                if own_subnet {
                    return Vec::new();
                }
                vec![
                    aib_core::template::Diagnostic::error(
                        "properties.vmProfile.vnetConfig.subnetId",
                        aib_core::template::Code::OutsideBoundary,
                        "the build VM would get a public address with its SSH/WinRM port open to an address range nobody chose",
                    )
                    .with_hint(crate::provision::NO_ALLOWED_SOURCE),
                ]
            });
        }
        Backend::new(self.provisioner.clone(), aib_customizers::registry_with(self.fetcher.clone()).merge(reg))
    }

    /// What a deployment template's `subscription()` and `resourceGroup()` see when this
    /// backend builds it ([`Document::evaluate`](aib_core::template::Document::evaluate)): the
    /// build's subscription, and its resource group with the location ARM reports. A group that
    /// does not exist (yet) gives no location: `resourceGroup().location` is then an error,
    /// never a guess. Parameter values go on top (`Params::set`).
    ///
    /// # Errors
    /// ARM's, other than the group not being found.
    pub async fn deployment_params(&self) -> Result<aib_core::template::Params> {
        let p = &self.provisioner;
        let path = format!("/subscriptions/{}/resourcegroups/{}", p.subscription(), p.resource_group());
        let location = match self.arm().get(&path, RESOURCES_API).await {
            Ok(v) => v.get("location").and_then(Value::as_str).unwrap_or_default().to_string(),
            Err(Error::NotFound { .. }) => String::new(),
            Err(e) => return Err(e),
        };
        Ok(aib_core::template::Params::new().subscription(p.subscription()).resource_group(p.resource_group(), location))
    }

    /// Deletes what runs left behind, found by their tags (`createdBy`, `aibRunId`): for when
    /// the ledger is gone or on another machine. Resources of `live_runs`, younger than
    /// `min_age`, or without a creation tag are left alone. Staging groups are kept.
    pub async fn gc_tagged(&self, live_runs: &HashSet<String>, min_age: Duration) -> Result<TagGcReport> {
        let sub = self.provisioner.subscription();
        // ARM filters by tag (Resources_List `$filter`), so a large subscription is not listed whole.
        let filter = format!("$filter=tagName%20eq%20%27createdBy%27%20and%20tagValue%20eq%20%27{CREATED_BY}%27");
        let all = self.arm().list(&format!("/subscriptions/{sub}/resources?{filter}"), RESOURCES_API).await?;
        let now = SystemTime::now();
        let mut found: Vec<&Value> =
            all.iter().filter(|r| r["tags"]["createdBy"] == CREATED_BY && r["tags"][RUN_TAG].is_string()).collect();
        found.sort_by_key(|r| order(r["type"].as_str().unwrap_or_default()));
        let mut report = TagGcReport::default();
        for r in found {
            let id = r["id"].as_str().unwrap_or_default().to_string();
            let run = r["tags"][RUN_TAG].as_str().unwrap_or_default();
            let created = r["tags"][CREATED_AT_TAG]
                .as_str()
                .and_then(|t| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok())
                .map(SystemTime::from);
            let old = created.is_some_and(|c| now.duration_since(c).unwrap_or_default() >= min_age);
            if live_runs.contains(run) || !old {
                report.skipped.push(id);
                continue;
            }
            match crate::provision::delete_settling(self.arm(), &id, self.provisioner.settle_timeout()).await {
                Ok(()) | Err(Error::NotFound { .. }) => report.deleted.push(id),
                Err(e) => report.failed.push((id, e.to_string())),
            }
        }
        Ok(report)
    }
}
