//! What a source's image says about the VM that boots it — security type, architecture,
//! purchase plan — reaching the build VM and the gallery targets, against the ARM test
//! server, which applies ARM's rules for them.

use aib_azure::{AzureProvisioner, AzureSource, SharedImageDistributor};
use aib_core::template::{DistributorSpec, ImageSource, PlatformImageSource, SharedImageTarget};
use aib_core::{
    Distributor, Error, PreflightRequest, Provisioner, Reclaim, ResolveRequest, ResolvedImage, RunContext, Source, StepContext,
};
use aib_testkit::arm::ArmServer;
use serde_json::json;
use std::time::Duration;

mod common;
use common::{RG, SUB, client, group, request};

fn platform(sku: &str) -> ImageSource {
    ImageSource::PlatformImage(PlatformImageSource {
        publisher: Some("Contoso".into()),
        offer: Some("hardened".into()),
        sku: Some(sku.into()),
        version: Some("latest".into()),
        plan_info: None,
    })
}

async fn server() -> ArmServer {
    let s = ArmServer::start().await.unwrap();
    let tl = json!({"hyperVGeneration": "V2", "features": [{"name": "SecurityType", "value": "TrustedLaunch"}]});
    s.add_marketplace_image_with("westus2", "Contoso", "hardened", "tl-only", "1.0.0", tl);
    s.add_marketplace_image_with(
        "westus2",
        "Contoso",
        "hardened",
        "arm",
        "1.0.0",
        json!({"hyperVGeneration": "V2", "architecture": "Arm64"}),
    );
    let plan = json!({"hyperVGeneration": "V2", "plan": {"publisher": "contoso", "name": "pro", "product": "hardened"}});
    s.add_marketplace_image_with("westus2", "Contoso", "hardened", "sold", "1.0.0", plan);
    group(&client(&s), RG, "westus2").await;
    s
}

async fn resolve(s: &ArmServer, sku: &str) -> aib_core::Result<ResolvedImage> {
    let ctx = StepContext::detached("resolve").unwrap();
    AzureSource::new(client(s), SUB).resolve(&ResolveRequest::new(platform(sku)).with_location("westus2"), &ctx).await
}

/// Creates the build VM for `image`; returns its resource as the server holds it.
async fn provision(s: &ArmServer, image: ResolvedImage) -> aib_core::Result<serde_json::Value> {
    let p = AzureProvisioner::builder()
        .arm(client(s))
        .subscription(SUB)
        .resource_group(RG)
        .allowed_source("127.0.0.1/32")
        .ssh_port(22)
        .connect_timeout(Duration::from_secs(5))
        .build()?;
    let ctx = RunContext::detached("security").unwrap();
    let vm = p.provision(&request(image, "westus2"), &ctx.step("provision")).await?;
    let body = s.resource(&vm.id).unwrap();
    for r in ctx.ledger().outstanding().iter().rev() {
        p.delete(r).await?;
    }
    Ok(body)
}

#[tokio::test]
async fn a_trusted_launch_image_boots_a_trusted_launch_vm() {
    let s = server().await;
    let image = resolve(&s, "tl-only").await.unwrap();
    assert_eq!(image.security_type.as_deref(), Some("TrustedLaunch"));
    let vm = provision(&s, image).await.unwrap();
    let sp = &vm["properties"]["securityProfile"];
    assert_eq!(sp["securityType"], "TrustedLaunch");
    assert_eq!((sp["uefiSettings"]["secureBootEnabled"].as_bool(), sp["uefiSettings"]["vTpmEnabled"].as_bool()), (Some(true), Some(true)));
}

#[tokio::test]
async fn an_arm64_image_gets_an_arm64_size() {
    let s = server().await;
    let image = resolve(&s, "arm").await.unwrap();
    assert_eq!(image.architecture.as_deref(), Some("Arm64"));
    let vm = provision(&s, image.clone()).await.unwrap();
    assert_eq!(vm["properties"]["hardwareProfile"]["vmSize"], "Standard_D2ps_v5");
    // An x64 size named by the template is refused by ARM, as the server does.
    let mut req = request(image, "westus2");
    req.vm_profile.vm_size = Some("Standard_D2ds_v4".into());
    let p = AzureProvisioner::builder()
        .arm(client(&s))
        .subscription(SUB)
        .resource_group(RG)
        .allowed_source("127.0.0.1/32")
        .ssh_port(22)
        .build()
        .unwrap();
    let ctx = RunContext::detached("security-x64").unwrap();
    let err = p.provision(&req, &ctx.step("provision")).await.unwrap_err();
    assert!(err.to_string().contains("architecture"), "{err}");
    for r in ctx.ledger().outstanding().iter().rev() {
        p.delete(r).await.unwrap();
    }
}

#[tokio::test]
async fn an_image_sold_under_a_plan_needs_its_terms_and_names_its_plan() {
    let s = server().await;
    let err = resolve(&s, "sold").await.unwrap_err();
    assert!(err.to_string().contains("terms") && err.to_string().contains("contoso/hardened/pro"), "{err}");
    s.accept_terms("contoso", "hardened", "pro");
    let image = resolve(&s, "sold").await.unwrap();
    let vm = provision(&s, image).await.unwrap();
    assert_eq!(vm["plan"], json!({"name": "pro", "product": "hardened", "publisher": "contoso"}));
}

#[tokio::test]
async fn gallery_targets_take_only_builds_of_their_security_type_and_architecture() {
    let s = server().await;
    let c = client(&s);
    let gallery = format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/g/images");
    let def = |name: &str, features: serde_json::Value, arch: &str| {
        s.put_resource(
            &format!("{gallery}/{name}"),
            json!({"location": "westus2", "properties": {"osType": "Linux", "osState": "Generalized", "hyperVGeneration": "V2", "architecture": arch,
                   "features": features, "identifier": {"publisher": "contoso", "offer": "g", "sku": name}}}),
        );
        SharedImageDistributor::from_spec(
            c.clone(),
            &DistributorSpec::SharedImage(SharedImageTarget {
                run_output_name: name.into(),
                gallery_image_id: format!("{gallery}/{name}"),
                ..Default::default()
            }),
        )
        .unwrap()
    };
    let standard = def("standard", json!([]), "x64");
    let supported = def("supported", json!([{"name": "SecurityType", "value": "TrustedLaunchSupported"}]), "x64");
    let tl_only = def("tl-only", json!([{"name": "SecurityType", "value": "TrustedLaunch"}]), "x64");
    let arm = def("arm", json!([]), "Arm64");
    let tl = resolve(&s, "tl-only").await.unwrap();
    let plain = ResolvedImage::new("PlatformImage", "a:b:c:latest", "a:b:c:1").with_hyper_v_generation("V2");
    let ctx = StepContext::detached("preflight").unwrap();
    let check = |d: &SharedImageDistributor, image: &ResolvedImage| {
        let (d, req, ctx) = (d.clone(), PreflightRequest::new(image.clone()).with_location("West US 2"), ctx.clone());
        async move { d.preflight(&req, &ctx).await }
    };
    let refused = |r: aib_core::Result<()>, want: &str| match r {
        Err(Error::InvalidField { field, message, .. }) => assert!(field == "galleryImageId" && message.contains(want), "{message}"),
        other => panic!("expected a refusal naming {want}: {other:?}"),
    };
    refused(check(&standard, &tl).await, "Trusted Launch");
    refused(check(&tl_only, &plain).await, "only Trusted Launch");
    refused(check(&arm, &plain).await, "arm64");
    check(&supported, &tl).await.unwrap();
    check(&supported, &plain).await.unwrap();
    check(&tl_only, &tl).await.unwrap();
    check(&standard, &plain).await.unwrap();
    refused(
        check(
            &SharedImageDistributor::from_spec(
                c.clone(),
                &DistributorSpec::SharedImage(SharedImageTarget {
                    run_output_name: "x".into(),
                    gallery_image_id: format!("{gallery}/missing"),
                    ..Default::default()
                }),
            )
            .unwrap(),
            &plain,
        )
        .await,
        "does not exist",
    );
}
