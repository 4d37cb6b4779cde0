//! ARM distributors: `ManagedImage` (create or replace at `imageId`) and `SharedImage` (a
//! gallery image version: `versioning`, `targetRegions` with replica counts and storage types,
//! `excludeFromLatest`, `replicationMode`, replication progress, and a timeout that does not
//! fail a version that exists).
//!
//! The captured image is an ARM resource: its `id` is a generalized VM or a managed image.

use crate::api::{COMPUTE_API, GALLERY_API};
use crate::client::ArmClient;
use crate::error::BACKEND;
use crate::naming::region;
use aib_core::template::{Code, DistributorSpec, Expr, ManagedImageTarget, SharedImageTarget, Versioning};
use aib_core::{
    Artifact, CapturedImage, DistributeRequest, Distributor, Error, OutputStream, PreflightRequest, ResourceRecord, Result, Scope,
    StepContext,
};
use async_trait::async_trait;
use serde_json::{Value, json};
use std::fmt;

/// What a capture's id names, for the forms of Images_CreateOrUpdate (a snapshot source
/// exists too; no capture is one).
enum CaptureKind {
    Vm,
    Disk,
    Other,
}

fn capture_kind(image: &CapturedImage) -> CaptureKind {
    let id = image.id.to_ascii_lowercase();
    if id.contains("/providers/microsoft.compute/virtualmachines/") {
        CaptureKind::Vm
    } else if id.contains("/providers/microsoft.compute/disks/") {
        CaptureKind::Disk
    } else {
        CaptureKind::Other
    }
}

/// True when the captured image is a (generalized) VM rather than a disk, snapshot or image.
fn is_vm(image: &CapturedImage) -> bool {
    matches!(capture_kind(image), CaptureKind::Vm)
}

fn source_ref(image: &CapturedImage) -> Value {
    if is_vm(image) { json!({"virtualMachineId": image.id}) } else { json!({"id": image.id}) }
}

/// ARM creates images and gallery image versions only from a source in their own region
/// (a VM in another region is refused): refused before anything is built, naming the field.
fn same_region(built_in: &str, target: &str, what: &str, field: &str, code: Code) -> Result<()> {
    if built_in.is_empty() || target.is_empty() || region(built_in) == region(target) {
        return Ok(());
    }
    Err(Error::InvalidField {
        field: field.into(),
        code,
        message: format!(
            "{what} is in {target}, but the image is built in {built_in}: ARM creates it only from a source in its own region"
        ),
        hint: format!("build in {target} (the template's `location`), or use a target in {built_in}"),
    })
}

/// A definition takes versions of its own architecture and security type: a Trusted Launch
/// build (from a `TrustedLaunch` source) publishes only into a definition whose `SecurityType`
/// supports it, and a `TrustedLaunch` definition takes only Trusted Launch builds.
fn compatible(source: &aib_core::ResolvedImage, def: &Value, definition: &str) -> Result<()> {
    let refuse = |message: String, hint: &str| Error::InvalidField {
        field: "galleryImageId".into(),
        code: Code::BadSharedImageDistribute,
        message,
        hint: hint.into(),
    };
    let arch = |a: Option<&str>| a.unwrap_or("x64").to_ascii_lowercase();
    if arch(def["architecture"].as_str()) != arch(source.architecture.as_deref()) {
        return Err(refuse(
            format!(
                "the gallery image definition {definition} is {}, the source {} is {}",
                arch(def["architecture"].as_str()),
                source.exact,
                arch(source.architecture.as_deref())
            ),
            "publish into a definition of the source's architecture",
        ));
    }
    let wants = crate::sources::security_type(def).unwrap_or("Standard");
    let tl_build = source.security_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("TrustedLaunch"));
    let takes_tl = wants.to_ascii_lowercase().starts_with("trustedlaunch");
    if tl_build && !takes_tl {
        return Err(refuse(
            format!(
                "the source {} boots only as a Trusted Launch VM, and the definition {definition} is of security type {wants}",
                source.exact
            ),
            "publish into a definition created with the feature SecurityType=TrustedLaunchSupported (or TrustedLaunch)",
        ));
    }
    if !tl_build && wants.eq_ignore_ascii_case("TrustedLaunch") {
        return Err(refuse(
            format!("the definition {definition} takes only Trusted Launch images, and the source {} is a standard one", source.exact),
            "publish into a definition of security type TrustedLaunchSupported or Standard, or build from a Trusted Launch source",
        ));
    }
    Ok(())
}

/// Keeps what the build VM is made of (and a staging group made for the run alone, which
/// would take them along): returns their ids.
fn keep_source(ctx: &StepContext) -> Result<Vec<String>> {
    let mut kept = Vec::new();
    for r in ctx.run.ledger().outstanding() {
        if r.backend == BACKEND && (r.scope == Scope::BuildVm || r.kind == "resourceGroup") {
            ctx.keep(&r.id)?;
            kept.push(r.name);
        }
    }
    Ok(kept)
}

/// An artifact in the making: deleted if the run ends before it is published, kept after.
fn record(ctx: &StepContext, kind: &str, id: &str) -> Result<String> {
    ctx.record(ResourceRecord::new(BACKEND, kind, id, Scope::Run))
}

/// Replicas done and wanted, from a version's `replicationStatus`.
fn replicas(v: &Value) -> Option<(u64, u64)> {
    let s = v["properties"]["replicationStatus"]["summary"].as_array()?;
    let total = s.len() as u64 * 100;
    let done: u64 = s.iter().map(|r| r["progress"].as_u64().unwrap_or(0).min(100)).sum();
    Some((done, total))
}

/// Creates or replaces a managed image from the captured VM or image.
#[derive(Debug, Clone)]
pub struct ManagedImageDistributor {
    arm: ArmClient,
    target: ManagedImageTarget,
}

impl fmt::Display for ManagedImageDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ManagedImage({})", self.target.image_id)
    }
}

impl ManagedImageDistributor {
    /// From a template `ManagedImage` entry.
    pub fn from_spec(arm: ArmClient, spec: &DistributorSpec) -> Result<Self> {
        match spec {
            DistributorSpec::ManagedImage(t) => Ok(ManagedImageDistributor { arm, target: t.clone() }),
            other => Err(Error::InvalidConfig {
                backend: BACKEND,
                key: other.run_output_name().into(),
                message: "not a ManagedImage target".into(),
            }),
        }
    }
}

#[async_trait]
impl Distributor for ManagedImageDistributor {
    async fn preflight(&self, req: &PreflightRequest, _ctx: &StepContext) -> Result<()> {
        same_region(&req.location, &self.target.location, "the managed image", "location", Code::BadDistributeType)
    }

    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
        let image = &req.image;
        let id = &self.target.image_id;
        let mut props = json!({"hyperVGeneration": image.source.hyper_v_generation.as_deref().unwrap_or("V2")});
        let os = if image.platform == aib_core::Platform::Windows { "Windows" } else { "Linux" };
        match capture_kind(image) {
            CaptureKind::Vm => props["sourceVirtualMachine"] = json!({"id": image.id}),
            CaptureKind::Disk => {
                props["storageProfile"] = json!({"osDisk": {"osType": os, "osState": "Generalized", "managedDisk": {"id": image.id}}});
            }
            // Images_CreateOrUpdate has no form that copies an image.
            CaptureKind::Other => {
                return Err(Error::Unsupported {
                    operation: format!(
                        "a managed image from `{}`: aib makes managed images from a VM or a managed disk only (ARM has no form that copies an image)",
                        image.id
                    ),
                    backend: BACKEND,
                });
            }
        }
        same_region(&image.location, &self.target.location, "the managed image", "location", Code::BadDistributeType)?;
        // An image's source cannot change in place: replace it, as AIB does, but only once the
        // capture it is made from is known to be there, so a build whose capture is gone does
        // not delete the image it was to replace.
        match self.arm.get(id, COMPUTE_API).await {
            Ok(_) => {
                let source_api = if is_vm(image) { COMPUTE_API } else { crate::DISK_API };
                self.arm.get(&image.id, source_api).await?;
                ctx.output.line(OutputStream::Stdout, &format!("replacing the existing image {id}"));
                self.arm.delete(id, COMPUTE_API).await?;
            }
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let tags = self.target.artifact_tags.as_ref().and_then(Expr::value).cloned().unwrap_or_default();
        let body = json!({"location": self.target.location, "tags": tags, "properties": props});
        let rec = record(ctx, "image", id)?;
        let source = crate::source_lock::lock(&image.id).await;
        let v = self.arm.put(id, COMPUTE_API, &body).await?;
        drop(source);
        ctx.keep(&rec)?;
        Ok(Artifact::with_id(v["id"].as_str().unwrap_or(id)))
    }
}

/// Publishes a gallery image version.
#[derive(Debug, Clone)]
pub struct SharedImageDistributor {
    arm: ArmClient,
    target: SharedImageTarget,
    progress_every: std::time::Duration,
}

impl fmt::Display for SharedImageDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedImage({})", self.target.gallery_image_id)
    }
}

/// The next version under `Latest` (within `major` when set).
pub fn next_version(existing: &[String], major: Option<i32>) -> String {
    let parse = |v: &String| -> Option<(u32, u32, u32)> {
        let p: Vec<u32> = v.split('.').map(|x| x.parse().ok()).collect::<Option<_>>()?;
        (p.len() == 3).then(|| (p[0], p[1], p[2]))
    };
    let all: Vec<(u32, u32, u32)> = existing.iter().filter_map(parse).filter(|v| major.is_none_or(|m| m < 0 || v.0 == m as u32)).collect();
    match all.into_iter().max() {
        Some((a, b, c)) => format!("{a}.{b}.{}", c + 1),
        None => format!("{}.0.0", major.filter(|m| *m >= 0).unwrap_or(1)),
    }
}

impl SharedImageDistributor {
    /// From a template `SharedImage` entry.
    pub fn from_spec(arm: ArmClient, spec: &DistributorSpec) -> Result<Self> {
        match spec {
            DistributorSpec::SharedImage(t) => {
                let progress_every = arm.poll_interval();
                Ok(SharedImageDistributor { arm, target: t.clone(), progress_every })
            }
            other => Err(Error::InvalidConfig {
                backend: BACKEND,
                key: other.run_output_name().into(),
                message: "not a SharedImage target".into(),
            }),
        }
    }

    /// How often replication progress is read while the version is created (default: the
    /// client's poll interval).
    #[must_use]
    pub fn with_progress_every(mut self, t: std::time::Duration) -> Self {
        self.progress_every = t;
        self
    }

    fn target_regions(&self, gallery_region: &str) -> Vec<Value> {
        let t = &self.target;
        match (&t.target_regions, &t.replication_regions) {
            (Some(Expr::Value(rs)), _) => rs
                .iter()
                .map(|r| {
                    json!({"name": r.name, "regionalReplicaCount": r.replica_count.as_ref().and_then(Expr::value).copied().unwrap_or(1),
                           "storageAccountType": r.storage_account_type.clone().unwrap_or_else(|| "Standard_LRS".into())})
                })
                .collect(),
            (_, Some(Expr::Value(rs))) => rs
                .iter()
                .map(|r| json!({"name": r, "regionalReplicaCount": 1, "storageAccountType": t.storage_account_type.clone().unwrap_or_else(|| "Standard_LRS".into())}))
                .collect(),
            _ => vec![json!({"name": gallery_region, "regionalReplicaCount": 1, "storageAccountType": "Standard_LRS"})],
        }
    }
}

impl SharedImageDistributor {
    /// The image definition's id and the version the template names, if it does.
    fn definition(&self) -> (String, Option<String>) {
        match self.target.gallery_image_id.split_once("/versions/") {
            Some((d, v)) => (d.to_string(), Some(v.to_string())),
            None => (self.target.gallery_image_id.clone(), None),
        }
    }
}

#[async_trait]
impl Distributor for SharedImageDistributor {
    async fn preflight(&self, req: &PreflightRequest, _ctx: &StepContext) -> Result<()> {
        let (definition, explicit) = self.definition();
        let def = match self.arm.get(&definition, GALLERY_API).await {
            Err(Error::NotFound { .. }) => {
                return Err(Error::InvalidField {
                    field: "galleryImageId".into(),
                    code: Code::BadSharedImageDistribute,
                    message: format!("the gallery image definition {definition} does not exist"),
                    hint: "create the gallery and the image definition first (AIB does not create them either)".into(),
                });
            }
            r => r?,
        };
        let location = def["location"].as_str().unwrap_or_default();
        same_region(
            &req.location,
            location,
            &format!("the gallery image definition {definition}"),
            "galleryImageId",
            Code::BadSharedImageDistribute,
        )?;
        compatible(&req.source, &def["properties"], &definition)?;
        if let Some(v) = explicit {
            match self.arm.get(&format!("{definition}/versions/{v}"), GALLERY_API).await {
                Ok(_) => {
                    return Err(Error::InvalidField {
                        field: "galleryImageId".into(),
                        code: Code::BadSharedImageDistribute,
                        message: format!("the gallery image version {v} of {definition} already exists"),
                        hint: "name a new version, or leave the version out and let `versioning` pick the next one".into(),
                    });
                }
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
        let image = &req.image;
        let t = &self.target;
        let (definition, explicit) = self.definition();
        let def = self.arm.get(&definition, GALLERY_API).await?;
        let location = def["location"].as_str().unwrap_or_default().to_string();
        same_region(
            &image.location,
            &location,
            &format!("the gallery image definition {definition}"),
            "galleryImageId",
            Code::BadSharedImageDistribute,
        )?;
        let version = match (explicit, &t.versioning) {
            (Some(v), _) => v,
            (None, Some(Versioning::Source)) => {
                let v = image.source.exact_version.clone().unwrap_or_default();
                if v.split('.').count() != 3 || v.split('.').any(|p| p.parse::<u32>().is_err()) {
                    return Err(Error::InvalidConfig {
                        backend: BACKEND,
                        key: "versioning".into(),
                        message: format!("`Source` versioning needs a source version x.y.z, the source has `{v}`"),
                    });
                }
                v
            }
            (None, v) => {
                let existing: Vec<String> = self
                    .arm
                    .list(&format!("{definition}/versions"), GALLERY_API)
                    .await?
                    .iter()
                    .filter_map(|v| v["name"].as_str().map(str::to_string))
                    .collect();
                let major = match v {
                    Some(Versioning::Latest { major: Some(Expr::Value(m)) }) => Some(*m),
                    _ => None,
                };
                next_version(&existing, major)
            }
        };
        let id = format!("{definition}/versions/{version}");
        match self.arm.get(&id, GALLERY_API).await {
            Ok(_) => return Err(Error::AlreadyExists { backend: BACKEND, what: format!("gallery image version {id}") }),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut regions = self.target_regions(&location);
        // ARM refuses a version whose publishing regions leave out its own region (the gallery's).
        if !regions.iter().any(|r| r["name"].as_str().is_some_and(|n| region(n) == region(&location))) {
            let storage = t.storage_account_type.clone().unwrap_or_else(|| "Standard_LRS".into());
            ctx.run.notice(format!(
                "{}: targetRegions leave out the gallery's region {location}, where the version itself lives; adding it with one replica",
                t.run_output_name
            ));
            regions.insert(0, json!({"name": location, "regionalReplicaCount": 1, "storageAccountType": storage}));
        }
        let total: u64 = regions.iter().filter_map(|r| r["regionalReplicaCount"].as_u64()).sum();
        let mut publishing = json!({"targetRegions": regions, "excludeFromLatest": t.exclude_from_latest.as_ref().and_then(Expr::value).copied().unwrap_or(false)});
        if let Some(mode) = t.replication_mode {
            publishing["replicationMode"] = json!(match mode {
                aib_core::template::ReplicationMode::Full => "Full",
                aib_core::template::ReplicationMode::Shallow => "Shallow",
            });
        }
        let tags = t.artifact_tags.as_ref().and_then(Expr::value).cloned().unwrap_or_default();
        let body = json!({"location": location, "tags": tags, "properties": {"publishingProfile": publishing, "storageProfile": {"source": source_ref(image)}}});
        ctx.output.line(
            OutputStream::Stdout,
            &format!(
                "publishing {id} to {} replica(s) in {}",
                total,
                regions.iter().filter_map(|r| r["name"].as_str()).map(region).collect::<Vec<_>>().join(", ")
            ),
        );
        ctx.output.progress(0, Some(100), "replication %");
        let rec = record(ctx, "imageVersion", &id)?;
        let source = crate::source_lock::lock(&image.id).await;
        let result = {
            let mut put = std::pin::pin!(self.arm.put(&id, GALLERY_API, &body));
            // Replication progress while the version is being created, from `replicationStatus`.
            let mut last = None;
            loop {
                let put = put.as_mut();
                tokio::select! {
                    r = put => break r,
                    _ = tokio::time::sleep(self.progress_every) => {
                        if let Ok(v) = self.arm.get(&format!("{id}?$expand=ReplicationStatus"), GALLERY_API).await
                            && let Some((done, all)) = replicas(&v)
                            && last != Some(done)
                        {
                            last = Some(done);
                            ctx.output.progress(done * 100 / all.max(1), Some(100), "replication %");
                            let regions: Vec<String> = v["properties"]["replicationStatus"]["summary"].as_array().into_iter().flatten()
                                .map(|r| format!("{} {}% {}", r["region"].as_str().unwrap_or("?"), r["progress"], r["state"].as_str().unwrap_or(""))).collect();
                            ctx.output.line(OutputStream::Stdout, &format!("replication: {}", regions.join(", ")));
                        }
                    }
                }
            }
        };
        drop(source);
        match result {
            Ok(_) => {}
            // Replication to many regions can outlast any deadline while the version is already
            // usable; a version that exists means the build succeeded.
            Err(Error::Timeout { .. }) => {
                let v = self.arm.get(&id, GALLERY_API).await?;
                let state = v["properties"]["provisioningState"].as_str().unwrap_or_default().to_string();
                ctx.run.notice(format!(
                    "{id}: still replicating after the deadline (provisioningState {state}); the version exists, so the build succeeded"
                ));
                // The version is still being made from the build VM: deleting the source now
                // may fail it. The build VM's resources stay; they are named for deleting later.
                if !matches!(state.as_str(), "Succeeded" | "Failed" | "Canceled") {
                    let kept = keep_source(ctx)?;
                    ctx.run.notice(format!(
                        "{id} is still being created from the build VM, so its resources are kept: delete them once the version is \
                         Succeeded: {}",
                        kept.join(", ")
                    ));
                }
            }
            Err(e) => return Err(e),
        }
        ctx.keep(&rec)?;
        ctx.output.progress(100, Some(100), "replication %");
        Ok(Artifact::with_id(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_versions() {
        let g: Vec<String> = ["0.1.1", "1.2.0", "2.1.0"].iter().map(|s| s.to_string()).collect();
        assert_eq!(next_version(&g, None), "2.1.1");
        assert_eq!(next_version(&g, Some(1)), "1.2.1");
        assert_eq!(next_version(&g, Some(5)), "5.0.0");
        assert_eq!(next_version(&[], None), "1.0.0");
    }
}
