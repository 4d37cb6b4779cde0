//! Azure sources: marketplace images (`latest` resolved through the image list), managed
//! images and gallery image versions (`…/versions/latest`), checked for region and
//! generalization; every resolution reports the exact version.

use crate::client::ArmClient;
use crate::error::BACKEND;
use aib_core::template::ImageSource;
use aib_core::{Error, Platform, ResolveRequest, ResolvedImage, Result, Source, StepContext};
use async_trait::async_trait;
use std::fmt;

use crate::api::{COMPUTE_API, GALLERY_API, MARKETPLACE_API};
use crate::naming::region;

/// Resolves template sources against ARM, in the region each request names (the template's
/// `location`).
#[derive(Debug, Clone)]
pub struct AzureSource {
    arm: ArmClient,
    subscription: String,
}

impl fmt::Display for AzureSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AzureSource({})", self.subscription)
    }
}

fn version_key(v: &str) -> Vec<u64> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The `SecurityType` feature of an image or image definition's properties.
pub(crate) fn security_type(props: &serde_json::Value) -> Option<&str> {
    let features = props["features"].as_array()?;
    features.iter().find(|f| f["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case("SecurityType")))?["value"].as_str()
}

fn invalid(key: &str, message: String) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: key.into(), message }
}

impl AzureSource {
    /// A source using `subscription` for marketplace calls.
    pub fn new(arm: ArmClient, subscription: impl Into<String>) -> Self {
        AzureSource { arm, subscription: subscription.into() }
    }

    async fn platform(&self, location: &str, publisher: &str, offer: &str, sku: &str, version: &str) -> Result<ResolvedImage> {
        let base = format!(
            "/subscriptions/{}/providers/Microsoft.Compute/locations/{}/publishers/{publisher}/artifacttypes/vmimage/offers/{offer}/skus/{sku}/versions",
            self.subscription, location
        );
        let requested = format!("{publisher}:{offer}:{sku}:{version}");
        let exact = if version.eq_ignore_ascii_case("latest") {
            let list = self.arm.list(&base, COMPUTE_API).await?;
            list.iter().filter_map(|v| v["name"].as_str()).max_by_key(|v| version_key(v)).map(str::to_string).ok_or_else(|| {
                Error::NotFound { backend: BACKEND, what: format!("marketplace image {publisher}:{offer}:{sku} in {location}") }
            })?
        } else {
            version.to_string()
        };
        let image = self.arm.get(&format!("{base}/{exact}"), COMPUTE_API).await?;
        let windows = image["properties"]["osDiskImage"]["operatingSystem"].as_str().is_some_and(|o| o.eq_ignore_ascii_case("windows"));
        let mut r = ResolvedImage::new("PlatformImage", requested, format!("{publisher}:{offer}:{sku}:{exact}"))
            .with_exact_version(exact)
            .with_platform(if windows { Platform::Windows } else { Platform::Linux })
            .with_attribute("imageId", image["id"].clone());
        if let Some(g) = image["properties"]["hyperVGeneration"].as_str() {
            r = r.with_hyper_v_generation(g);
        }
        if let Some(a) = image["properties"]["architecture"].as_str() {
            r = r.with_architecture(a);
        }
        if let Some(t) = security_type(&image["properties"]) {
            r = r.with_security_type(t);
        }
        // An image sold under a plan names it (`PurchasePlan`); a VM from it must too.
        let plan = &image["properties"]["plan"];
        if let (Some(name), Some(product), Some(publisher)) = (plan["name"].as_str(), plan["product"].as_str(), plan["publisher"].as_str())
        {
            r = r.with_attribute("planName", name).with_attribute("planProduct", product).with_attribute("planPublisher", publisher);
        }
        Ok(r)
    }

    /// A plan's marketplace terms must be accepted in the subscription before a VM can use it.
    async fn check_terms(&self, plan: &aib_core::template::PlanInfo) -> Result<()> {
        let path = format!(
            "/subscriptions/{}/providers/Microsoft.MarketplaceOrdering/offerTypes/virtualmachine/publishers/{}/offers/{}/plans/{}/agreements/current",
            self.subscription, plan.plan_publisher, plan.plan_product, plan.plan_name
        );
        let agreement = self.arm.get(&path, MARKETPLACE_API).await?;
        if agreement["properties"]["accepted"].as_bool() == Some(true) {
            return Ok(());
        }
        Err(invalid(
            "source.planInfo",
            format!(
                "the marketplace terms of {}/{}/{} are not accepted in subscription {}; accept them once with \
                 `az vm image terms accept --publisher {} --offer {} --plan {}`",
                plan.plan_publisher,
                plan.plan_product,
                plan.plan_name,
                self.subscription,
                plan.plan_publisher,
                plan.plan_product,
                plan.plan_name
            ),
        ))
    }

    async fn managed(&self, location: &str, id: &str) -> Result<ResolvedImage> {
        let image = self.arm.get(id, COMPUTE_API).await?;
        let loc = region(image["location"].as_str().unwrap_or_default());
        if loc != location {
            return Err(invalid(
                "source.imageId",
                format!("managed image {id} is in {loc}; the template is in {location}: AIB needs the same region"),
            ));
        }
        let os = &image["properties"]["storageProfile"]["osDisk"];
        if os["osState"].as_str().is_some_and(|s| !s.eq_ignore_ascii_case("Generalized")) {
            return Err(invalid("source.imageId", format!("managed image {id} is not generalized (osState {})", os["osState"])));
        }
        let windows = os["osType"].as_str().is_some_and(|o| o.eq_ignore_ascii_case("windows"));
        let mut r = ResolvedImage::new("ManagedImage", id, image["id"].as_str().unwrap_or(id)).with_platform(if windows {
            Platform::Windows
        } else {
            Platform::Linux
        });
        if let Some(g) = image["properties"]["hyperVGeneration"].as_str() {
            r = r.with_hyper_v_generation(g);
        }
        Ok(r)
    }

    async fn gallery_version(&self, location: &str, id: &str) -> Result<ResolvedImage> {
        let (definition, version) =
            id.rsplit_once("/versions/").ok_or_else(|| invalid("source.imageVersionId", format!("`{id}` has no /versions/ segment")))?;
        let def = self.arm.get(definition, GALLERY_API).await?;
        if def["properties"]["osState"].as_str().is_some_and(|s| !s.eq_ignore_ascii_case("Generalized")) {
            return Err(invalid(
                "source.imageVersionId",
                format!("image definition {definition} is specialized; AIB builds from generalized images only"),
            ));
        }
        let chosen = if version.eq_ignore_ascii_case("latest") {
            let versions = self.arm.list(&format!("{definition}/versions"), GALLERY_API).await?;
            versions
                .into_iter()
                .filter(|v| !v["properties"]["publishingProfile"]["excludeFromLatest"].as_bool().unwrap_or(false))
                .filter(|v| v["properties"]["provisioningState"].as_str().is_none_or(|s| s == "Succeeded"))
                .max_by_key(|v| version_key(v["name"].as_str().unwrap_or_default()))
                .ok_or_else(|| Error::NotFound { backend: BACKEND, what: format!("a version of {definition} not excluded from latest") })?
        } else {
            self.arm.get(id, GALLERY_API).await?
        };
        let name = chosen["name"].as_str().unwrap_or(version).to_string();
        let regions: Vec<String> = chosen["properties"]["publishingProfile"]["targetRegions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str())
            .map(region)
            .collect();
        if !regions.is_empty() && !regions.iter().any(|r| r == location) {
            return Err(invalid(
                "source.imageVersionId",
                format!("version {name} is replicated to {} but not to the template's region {location}", regions.join(", ")),
            ));
        }
        let windows = def["properties"]["osType"].as_str().is_some_and(|o| o.eq_ignore_ascii_case("windows"));
        let mut r = ResolvedImage::new("SharedImageVersion", id, format!("{definition}/versions/{name}"))
            .with_exact_version(name)
            .with_platform(if windows { Platform::Windows } else { Platform::Linux });
        if let Some(g) = def["properties"]["hyperVGeneration"].as_str() {
            r = r.with_hyper_v_generation(g);
        }
        if let Some(a) = def["properties"]["architecture"].as_str() {
            r = r.with_architecture(a);
        }
        if let Some(t) = security_type(&def["properties"]) {
            r = r.with_security_type(t);
        }
        Ok(r)
    }
}

#[async_trait]
impl Source for AzureSource {
    async fn resolve(&self, req: &ResolveRequest, _ctx: &StepContext) -> Result<ResolvedImage> {
        let location = region(&req.location);
        if location.is_empty() {
            return Err(invalid("location", "the template has no `location`: the source is resolved in the build region".into()));
        }
        let location = location.as_str();
        match &req.spec {
            ImageSource::PlatformImage(p) => {
                let part = |s: &Option<String>, k: &str| {
                    s.clone().filter(|v| !v.is_empty()).ok_or_else(|| invalid(k, format!("`{k}` is required")))
                };
                let plan = p.plan_info.clone();
                let mut r = self
                    .platform(
                        location,
                        &part(&p.publisher, "publisher")?,
                        &part(&p.offer, "offer")?,
                        &part(&p.sku, "sku")?,
                        p.version.as_deref().unwrap_or("latest"),
                    )
                    .await?;
                // The template's planInfo, else the image's own plan: its terms must be accepted.
                let attr = |k: &str| r.attributes.get(k).and_then(serde_json::Value::as_str).map(str::to_string);
                let plan = plan.or_else(|| {
                    Some(aib_core::template::PlanInfo {
                        plan_name: attr("planName")?,
                        plan_product: attr("planProduct")?,
                        plan_publisher: attr("planPublisher")?,
                    })
                });
                if let Some(plan) = plan {
                    self.check_terms(&plan).await?;
                    r = r
                        .with_attribute("planName", plan.plan_name)
                        .with_attribute("planProduct", plan.plan_product)
                        .with_attribute("planPublisher", plan.plan_publisher);
                }
                Ok(r)
            }
            ImageSource::ManagedImage(m) => self.managed(location, &m.image_id).await,
            ImageSource::SharedImageVersion(s) => self.gallery_version(location, &s.image_version_id).await,
            ImageSource::Custom(c) => Err(Error::Unsupported { operation: format!("source type `{}`", c.type_name), backend: BACKEND }),
        }
    }
}
