//! Hostile templates against the Azure backend's boundary: the operator's credential touches
//! only the subscriptions and resource groups the operator allows, whatever ARM ids a template
//! names, and a build VM's port is never opened to an address range nobody chose. Each case is
//! refused at the field, with the `OutsideBoundary` code and a hint, before any request.

use aib_azure::{AzureBackend, AzureProvisioner};
use aib_core::template::{Code, ImageTemplate};
use aib_core::{Error, Pipeline};
use aib_testkit::arm::ArmServer;
use serde_json::json;

mod common;
use common::{RG, SUB, client};

const OTHER: &str = "00000000-0000-0000-0000-0000000000ff";

fn template(source: serde_json::Value, distribute: serde_json::Value, vm_profile: serde_json::Value) -> ImageTemplate {
    let v = json!({"location": "westus2", "properties": {"source": source, "distribute": distribute, "vmProfile": vm_profile,
        "customize": [{"type": "Shell", "name": "s", "inline": ["true"]}]}});
    ImageTemplate::from_json(&v.to_string()).unwrap().template
}

fn platform() -> serde_json::Value {
    json!({"type": "PlatformImage", "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"})
}

fn image_target(sub: &str, rg: &str) -> serde_json::Value {
    json!([{"type": "ManagedImage", "runOutputName": "m", "location": "westus2",
        "imageId": format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/images/x")}])
}

fn backend(s: &ArmServer, allowed_source: Option<&str>, scopes: &[&str]) -> aib_core::Result<aib_core::Backend> {
    let mut p = AzureProvisioner::builder().arm(client(s)).subscription(SUB).resource_group(RG);
    if let Some(a) = allowed_source {
        p = p.allowed_source(a);
    }
    let mut b = AzureBackend::builder().provisioner(p);
    for scope in scopes {
        b = b.allow_scope(*scope);
    }
    Ok(b.build()?.backend())
}

/// The refusals of a template: (path, code, hint).
fn refusals(e: Error) -> Vec<(String, Code, String)> {
    let Error::InvalidTemplate { diagnostics } = e else { panic!("expected a located refusal, got {e}") };
    diagnostics.0.iter().map(|d| (d.path.clone(), d.code, d.hint.clone().unwrap_or_default())).collect()
}

#[tokio::test]
async fn template_ids_touch_only_the_scopes_the_operator_allows() {
    let s = ArmServer::start().await.unwrap();
    let b = backend(&s, Some("127.0.0.1/32"), &[]).unwrap();
    let foreign_rg = format!("/subscriptions/{OTHER}/resourceGroups/theirs");
    let hostile = template(
        json!({"type": "ManagedImage", "imageId": format!("{foreign_rg}/providers/Microsoft.Compute/images/base")}),
        json!([{"type": "ManagedImage", "runOutputName": "m", "location": "westus2",
                "imageId": format!("{foreign_rg}/providers/Microsoft.Compute/images/victim")},
               {"type": "SharedImage", "runOutputName": "g", "replicationRegions": ["westus2"],
                "galleryImageId": format!("{foreign_rg}/providers/Microsoft.Compute/galleries/g/images/d")}]),
        json!({"userAssignedIdentities": [format!("{foreign_rg}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/admin")],
               "vnetConfig": {"subnetId": format!("{foreign_rg}/providers/Microsoft.Network/virtualNetworks/v/subnets/s")}}),
    );
    let found = refusals(Pipeline::from_template(&hostile, &b).unwrap_err());
    let paths: Vec<&str> = found.iter().map(|(p, _, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "properties.source.imageId",
            "properties.vmProfile.userAssignedIdentities[0]",
            "properties.vmProfile.vnetConfig.subnetId",
            "properties.distribute[0].imageId",
            "properties.distribute[1].galleryImageId",
        ]
    );
    assert!(found.iter().all(|(_, c, h)| *c == Code::OutsideBoundary && h.contains("--allow-scope")), "{found:?}");
    // The build's own subscription is allowed by default; a named scope replaces the default.
    Pipeline::from_template(&template(platform(), image_target(SUB, "mine"), json!({})), &b).unwrap().build().unwrap();
    let wider = backend(&s, Some("127.0.0.1/32"), &[&format!("/subscriptions/{SUB}"), &foreign_rg]).unwrap();
    Pipeline::from_template(&hostile, &wider).unwrap().build().unwrap();
    let one_group = backend(&s, Some("127.0.0.1/32"), &[&format!("/subscriptions/{SUB}/resourceGroups/{RG}")]).unwrap();
    Pipeline::from_template(&template(platform(), image_target(SUB, RG), json!({})), &one_group).unwrap().build().unwrap();
    let other_group =
        refusals(Pipeline::from_template(&template(platform(), image_target(SUB, "other"), json!({})), &one_group).unwrap_err());
    assert_eq!(other_group[0].0, "properties.distribute[0].imageId");
    assert!(backend(&s, None, &["/tenants/t"]).is_err(), "a scope that is no scope is refused when the backend is built");
    assert!(s.resource_ids().is_empty(), "nothing was created: {:?}", s.resource_ids());
}

#[tokio::test]
async fn a_build_vm_port_is_open_only_to_the_range_the_operator_gives() {
    let s = ArmServer::start().await.unwrap();
    let silent = backend(&s, None, &[]).unwrap();
    let public = template(platform(), image_target(SUB, RG), json!({}));
    let found = refusals(Pipeline::from_template(&public, &silent).unwrap_err());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].0.as_str(), found[0].1), ("properties.vmProfile.vnetConfig.subnetId", Code::OutsideBoundary));
    assert!(found[0].2.contains("--allowed-source"), "{found:?}");
    // In the operator's own subnet there is no public port to open.
    let subnet = format!("/subscriptions/{SUB}/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/v/subnets/s");
    Pipeline::from_template(&template(platform(), image_target(SUB, RG), json!({"vnetConfig": {"subnetId": subnet}})), &silent)
        .unwrap()
        .build()
        .unwrap();
    // `*` is a choice the operator can make.
    Pipeline::from_template(&public, &backend(&s, Some("*"), &[]).unwrap()).unwrap().build().unwrap();
    assert!(s.resource_ids().is_empty());
}

/// A deployment template sees the build's own subscription and resource group, with the
/// location ARM reports; without the group there is no location to guess.
#[tokio::test]
async fn a_deployment_template_sees_the_builds_subscription_and_group() {
    let s = ArmServer::start().await.unwrap();
    let b = AzureBackend::builder()
        .provisioner(AzureProvisioner::builder().arm(client(&s)).subscription(SUB).resource_group(RG).allowed_source("127.0.0.1/32"))
        .build()
        .unwrap();
    let deployment = json!({
        "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
        "contentVersion": "1.0.0.0",
        "resources": [{"type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2024-02-01", "name": "t",
            "location": "[resourceGroup().location]",
            "properties": {"source": platform(), "customize": [{"type": "Shell", "name": "s", "inline": ["true"]}],
                "distribute": [{"type": "ManagedImage", "runOutputName": "m", "location": "[resourceGroup().location]",
                    "imageId": "[resourceId('Microsoft.Compute/images', 'x')]"}]}}]
    })
    .to_string();
    let doc = aib_core::template::Document::parse(&deployment);
    // No group yet: `.location` is refused by name, never an empty region.
    let err = doc.evaluate(&b.deployment_params().await.unwrap()).unwrap_err().to_string();
    assert!(err.contains("location"), "{err}");
    common::group(&client(&s), RG, "westus3").await;
    let evaluated = doc.evaluate(&b.deployment_params().await.unwrap()).unwrap();
    let t = ImageTemplate::from_document(evaluated).unwrap().template;
    assert_eq!(t.location, "westus3");
    let target = serde_json::to_value(&t.properties.distribute[0]).unwrap();
    assert_eq!(target["imageId"], format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/x"));
    assert_eq!(target["location"], "westus3");
}
