//! ARM's rules that OpenAPI cannot express, each with the evidence it comes from. The test
//! server applies them to every PUT, after the spec check of the request's shape.
//!
//! | rule | evidence |
//! |---|---|
//! | a managed image is created from a VM in its own region | a maintainer on Azure/azure-cli#3809: "The Images need to be created from sources in the same Azure region" |
//! | a gallery image version is created from a source in its own region | MicrosoftDocs/azure-docs#28793, #122646 |
//! | an image's `osDisk.managedDisk.id` names a managed disk (an image cannot be copied into another) | the recorded example Image_CreateFromAManagedDisk.json; image.json's `ImageOSDisk` has separate `snapshot` and `managedDisk` sources and no image source |
//! | a version's `targetRegions` contain its own region | ARM's refusal quoted in hashicorp/packer#8895 |
//! | a VM from an image whose `SecurityType` is `TrustedLaunch` is a Trusted Launch VM | ARM's refusal quoted in hashicorp/terraform-provider-azurerm#23148 |
//! | a VM from a plan image names the plan | ARM's `VMMarketplaceInvalidInput` (the plan is `PurchasePlan` in virtualMachineImage.json) |
//! | an Arm64 image boots only on an Arm64 size (the `p` families: D2ps_v5, E2pds_v5, B2pts_v2) | inference: the size families Azure documents for Ampere Altra |
//! | no image or gallery version is made from a VM whose OS disk has an active access SAS, and no SAS is granted on the disk of a VM an image or version is being made from | inference, unverified: no published source says whether Compute allows it; modelled strictly, so aib orders these operations (ADR 0012) |
//! | a VM size a region does not offer to the subscription is refused with `SkuNotAvailable` (409) | ARM's message quoted in Microsoft's "Resolve errors for SKU not available" (azure-resource-manager troubleshooting) |
//! | a VM whose vCPUs would take the region's cores past the subscription's quota is refused with `OperationNotAllowed` (409), naming the quota | ARM's message quoted in Microsoft's "Resolve errors for resource quotas" |
//! | a Trusted Launch VM publishes into a definition whose `SecurityType` supports it, a `TrustedLaunch` definition takes only Trusted Launch VMs | hashicorp/packer-plugin-azure#304; the gallery definition's `features` in gallery.json |
//!
//! Still modelled elsewhere: generalized sources (`compute.rs`), resources in use that cannot
//! be deleted (`compute.rs`), a group's deletion taking its resources along (`mod.rs`), and the
//! storage accounts' rules (`blob_front.rs`, with [`super::storage::AzuriteDisks::with_accounts`]):
//! a deleted account's blobs gone with it, `allowSharedKeyAccess: false` taking only Entra ID
//! tokens, server-side copies that stay `pending` for a while.

use super::{ArmServer, State, error};
use crate::http::Response;
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// What a region offers the subscription: the sizes it does not, and its cores quota.
#[derive(Debug, Default)]
pub(super) struct Capacity {
    /// (region, size), both normalized.
    unavailable: HashSet<(String, String)>,
    /// region → total regional vCPUs.
    cores: HashMap<String, u64>,
}

impl ArmServer {
    /// `size` is not offered in `region` (`SkuNotAvailable`, as ARM answers a size whose
    /// capacity or restrictions keep it from the subscription).
    #[must_use]
    pub fn with_unavailable_size(self, location: &str, size: &str) -> Self {
        self.with(|s| s.capacity.unavailable.insert((region(location), size.to_ascii_lowercase())));
        self
    }

    /// The subscription's total regional vCPUs quota in `region`: VMs beyond it are refused.
    #[must_use]
    pub fn with_cores_quota(self, location: &str, cores: u64) -> Self {
        self.with(|s| s.capacity.cores.insert(region(location), cores));
        self
    }
}

/// The vCPUs of a size: the number after its family letters (`Standard_D2s_v3` → 2,
/// `Standard_E16pds_v5` → 16); 2 when it has none.
fn vcpus(size: &str) -> u64 {
    let family = size.trim_start_matches("Standard_").trim_start_matches("Basic_").split('_').next().unwrap_or_default();
    let digits: String = family.trim_start_matches(|c: char| c.is_ascii_alphabetic()).chars().take_while(char::is_ascii_digit).collect();
    digits.parse().unwrap_or(2)
}

/// The capacity rules for a VM PUT of `size` in `location` (`key`: the VM's id, lowercased).
fn check_capacity(s: &State, key: &str, location: &str, size: &str) -> Result<(), Response> {
    let here = region(location);
    if s.capacity.unavailable.contains(&(here.clone(), size.to_ascii_lowercase())) {
        return Err(error(
            409,
            "SkuNotAvailable",
            &format!(
                "The requested VM size for resource 'Following SKUs have failed for Capacity Restrictions: {size}' is currently not \
                 available in location '{location}'. Please try another size or deploy to a different location or different zone."
            ),
        ));
    }
    if let Some(quota) = s.capacity.cores.get(&here) {
        let used: u64 = s
            .resources
            .iter()
            .filter(|(k, v)| {
                k.as_str() != key
                    && v["type"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(super::compute::VM))
                    && v["location"].as_str().is_some_and(|l| region(l) == here)
            })
            .map(|(_, v)| vcpus(v["properties"]["hardwareProfile"]["vmSize"].as_str().unwrap_or_default()))
            .sum();
        let asked = vcpus(size);
        if used + asked > *quota {
            return Err(error(
                409,
                "OperationNotAllowed",
                &format!(
                    "Operation could not be completed as it results in exceeding approved Total Regional Cores quota. Additional \
                     details - Deployment Model: Resource Manager, Location: {location}, Current Limit: {quota}, Current Usage: {used}, \
                     Additional Required: {asked}, (Minimum) New Limit Required: {}.",
                    used + asked
                ),
            ));
        }
    }
    Ok(())
}

fn region(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase()
}

/// The location of the resource `id`, if the server has it.
fn location_of<'a>(s: &'a State, id: &str) -> Option<&'a str> {
    s.resources.get(&id.to_ascii_lowercase())?["location"].as_str()
}

fn feature<'a>(props: &'a Value, name: &str) -> Option<&'a str> {
    props["features"].as_array()?.iter().find(|f| f["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))?["value"].as_str()
}

/// The properties of the image a VM body boots: a marketplace image (as its GET answers
/// them) or a gallery version's definition.
fn image_properties(s: &State, location: &str, image: &Value) -> Option<Value> {
    if let Some(id) = image["id"].as_str() {
        let def = id.to_ascii_lowercase();
        let def = def.split("/versions/").next()?;
        return s.resources.get(def).map(|d| d["properties"].clone());
    }
    let field = |k: &str| image[k].as_str().unwrap_or_default();
    let mut found: Vec<&super::MarketplaceImage> = s
        .marketplace
        .iter()
        .filter(|m| {
            region(&m.0) == region(location)
                && m.1.eq_ignore_ascii_case(field("publisher"))
                && m.2.eq_ignore_ascii_case(field("offer"))
                && m.3.eq_ignore_ascii_case(field("sku"))
        })
        .collect();
    found.sort_by_key(|m| m.4.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>());
    let v = field("version");
    let m = if v.eq_ignore_ascii_case("latest") { found.last() } else { found.iter().find(|m| m.4 == v) }?;
    Some(m.5.clone())
}

/// Whether `size` is an Arm64 size: its family letters after the vCPU count hold a `p`.
fn arm64_size(size: &str) -> bool {
    let family = size.trim_start_matches("Standard_").split('_').next().unwrap_or_default();
    family.trim_start_matches(|c: char| c.is_ascii_alphabetic()).trim_start_matches(|c: char| c.is_ascii_digit()).contains(['p', 'P'])
}

fn trusted_launch(v: Option<&str>) -> bool {
    v.is_some_and(|t| t.eq_ignore_ascii_case("TrustedLaunch"))
}

/// Applies the rules to a PUT of `rtype` (lowercased) with `body`.
pub(super) fn check_put(s: &State, rtype: &str, body: &Value) -> Result<(), Response> {
    let location = body["location"].as_str().unwrap_or_default();
    match rtype {
        "microsoft.compute/virtualmachines" => {
            let p = &body["properties"];
            let size = p["hardwareProfile"]["vmSize"].as_str().unwrap_or_default();
            check_capacity(s, &rtype_key(body), location, size)?;
            let Some(image) = image_properties(s, location, &p["storageProfile"]["imageReference"]) else { return Ok(()) };
            let security = p["securityProfile"]["securityType"].as_str();
            if trusted_launch(feature(&image, "SecurityType")) && !trusted_launch(security) {
                return Err(error(
                    400,
                    "BadRequest",
                    "The provided gallery image only supports creation of VMs and VM scale sets with 'TrustedLaunch' security type.",
                ));
            }
            if image["architecture"].as_str().is_some_and(|a| a.eq_ignore_ascii_case("Arm64")) != arm64_size(size) {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "The VM size '{size}' does not support the architecture '{}' of the image.",
                        image["architecture"].as_str().unwrap_or("x64")
                    ),
                ));
            }
            if image["plan"].is_object() && !body["plan"].is_object() {
                return Err(error(
                    400,
                    "VMMarketplaceInvalidInput",
                    "Creating a virtual machine from Marketplace image or a custom image sourced from a Marketplace image requires Plan information in the request.",
                ));
            }
        }
        "microsoft.compute/images" | "microsoft.compute/galleries/images/versions" if exporting_source(s, body).is_some() => {
            let disk = exporting_source(s, body).unwrap_or_default();
            return Err(error(
                409,
                "OperationNotAllowed",
                &format!("The operation is not allowed while the source VM's disk '{disk}' has an active SAS; end the disk access first."),
            ));
        }
        "microsoft.compute/images" => {
            let disk = &body["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"];
            if let Some(d) = disk.as_str().filter(|d| !d.to_ascii_lowercase().contains("/providers/microsoft.compute/disks/")) {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!("The managed disk '{d}' of the image's OS disk is not a managed disk (Microsoft.Compute/disks)."),
                ));
            }
            if let Some((vm, at)) = foreign_source(s, body, location) {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "The Images need to be created from sources in the same Azure region: source {vm} is in '{at}', the image in '{location}'."
                    ),
                ));
            }
        }
        "microsoft.compute/galleries/images/versions" => {
            let source = &body["properties"]["storageProfile"]["source"];
            if let Some((src, at)) = foreign_source(s, body, location) {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "The source '{src}' of the gallery image version must be in the same region as the version ('{location}'), not in '{at}'."
                    ),
                ));
            }
            if let (Some(vm), Some(def)) = (source["virtualMachineId"].as_str(), s.resources.get(&definition_of(rtype_key(body)))) {
                let built_tl = s
                    .resources
                    .get(&vm.to_ascii_lowercase())
                    .is_some_and(|v| trusted_launch(v["properties"]["securityProfile"]["securityType"].as_str()));
                let wants = feature(&def["properties"], "SecurityType");
                let takes_tl = wants.is_some_and(|w| w.to_ascii_lowercase().starts_with("trustedlaunch"));
                // A TL build needs a TL-capable definition; a TL-only definition needs a TL build.
                if (built_tl && !takes_tl) || (!built_tl && trusted_launch(wants)) {
                    return Err(error(
                        400,
                        "InvalidParameter",
                        &format!(
                            "The security type of the source VM ({}) does not match the gallery image definition's ('{}').",
                            if built_tl { "TrustedLaunch" } else { "Standard" },
                            wants.unwrap_or("Standard")
                        ),
                    ));
                }
            }
            let regions: Vec<&str> = body["properties"]["publishingProfile"]["targetRegions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["name"].as_str())
                .collect();
            if !regions.is_empty() && !regions.iter().any(|r| region(r) == region(location)) {
                return Err(error(
                    400,
                    "InvalidParameter",
                    &format!(
                        "Gallery image version publishing profile regions '{}' must contain the location of image version '{location}'.",
                        regions.join(", ")
                    ),
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

/// The id (lowercased) a gallery version body was put at.
fn rtype_key(body: &Value) -> String {
    body["id"].as_str().unwrap_or_default().to_ascii_lowercase()
}

/// A version id's image definition.
fn definition_of(version: String) -> String {
    version.split("/versions/").next().unwrap_or_default().to_string()
}

/// The source VM of an image or version body, lowercased.
fn source_vm(body: &Value) -> Option<String> {
    let p = &body["properties"];
    p["sourceVirtualMachine"]["id"]
        .as_str()
        .or_else(|| p["storageProfile"]["source"]["virtualMachineId"].as_str())
        .map(str::to_ascii_lowercase)
}

/// The source (a VM, or a version's other source) of an image or version body and its
/// region, when that region is not `location`.
fn foreign_source(s: &State, body: &Value, location: &str) -> Option<(String, String)> {
    let src = source_vm(body).or_else(|| body["properties"]["storageProfile"]["source"]["id"].as_str().map(str::to_ascii_lowercase))?;
    let at = location_of(s, &src)?;
    (region(at) != region(location)).then(|| (src, at.to_string()))
}

/// The OS disk (lowercased) of the body's source VM, when that disk has an active SAS.
fn exporting_source(s: &State, body: &Value) -> Option<String> {
    let vm = s.resources.get(&source_vm(body)?)?;
    let disk = vm["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"].as_str()?.to_ascii_lowercase();
    s.exporting.contains(&disk).then_some(disk)
}

/// An image or version PUT at `key`: its source VM is being captured until the create ends.
pub(super) fn capture_started(s: &mut State, key: &str, body: &Value) {
    if let Some(vm) = source_vm(body) {
        s.capturing.insert(key.to_string(), vm);
    }
}

/// `beginGetAccess` / `endGetAccess` on a disk: refused while an image or version is being
/// made from the disk's VM; tracked as the disk's active SAS.
pub(super) fn disk_action(s: &mut State, target: &str, action: &str) -> Result<(), Response> {
    match action {
        "begingetaccess" => {
            let owner = s.resources.get(target).and_then(|d| d["managedBy"].as_str()).map(str::to_ascii_lowercase);
            if let Some(vm) = owner.filter(|vm| s.capturing.values().any(|c| c == vm)) {
                return Err(error(
                    409,
                    "OperationNotAllowed",
                    &format!("The disk '{target}' cannot be exported while an image is being created from its VM '{vm}'."),
                ));
            }
            s.exporting.insert(target.to_string());
        }
        "endgetaccess" => {
            s.exporting.remove(target);
        }
        _ => {}
    }
    Ok(())
}
