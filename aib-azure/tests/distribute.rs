//! The ARM distributors against the ARM test server.

use aib_azure::{ArmClient, Credential, ManagedImageDistributor, RetryConfig, SharedImageDistributor};
use aib_core::template::{DistributorSpec, Expr, ManagedImageTarget, SharedImageTarget, TargetRegion, Versioning};
use aib_core::{CapturedImage, DistributeRequest, Distributor, Error, ResolvedImage, StepContext};
use aib_testkit::arm::ArmServer;
use serde_json::json;
use std::time::Duration;

const SUB: &str = "00000000-0000-0000-0000-000000000002";

fn client(s: &ArmServer, lro: Duration) -> ArmClient {
    ArmClient::builder()
        .endpoint(s.url())
        .credential(Credential::static_token("t"))
        .retry(RetryConfig::fixed(2, Duration::from_millis(10)))
        .poll_interval(Duration::from_millis(10))
        .lro_timeout(lro)
        .build()
        .unwrap()
}

fn captured() -> CapturedImage {
    let vm = format!("/subscriptions/{SUB}/resourceGroups/IT_rg_web_1/providers/Microsoft.Compute/virtualMachines/build");
    CapturedImage::new(vm, "managedDisk", "westus", ResolvedImage::default().with_exact_version("2.3.4"))
}

async fn setup(s: &ArmServer, c: &ArmClient) -> String {
    c.put(&format!("/subscriptions/{SUB}/resourceGroups/images"), "2021-04-01", &json!({"location": "westus"})).await.unwrap();
    let vm = captured().id;
    c.put(&format!("/subscriptions/{SUB}/resourceGroups/IT_rg_web_1"), "2021-04-01", &json!({"location": "westus"})).await.unwrap();
    s.put_resource(&vm, json!({"type": "Microsoft.Compute/virtualMachines", "location": "westus", "properties": {}}));
    s.mark_generalized(&vm);
    let def = format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/galleries/g/images/web");
    s.put_resource(&def, json!({"location": "westus", "properties": {"osType": "Linux", "osState": "Generalized", "identifier": {"publisher": "contoso", "offer": "g", "sku": "web"}}}));
    s.put_resource(
        &format!("{def}/versions/1.0.0"),
        json!({"name": "1.0.0", "location": "westus", "properties": {"provisioningState": "Succeeded", "storageProfile": {}}}),
    );
    def
}

/// A `ManagedImage` target `mi` at `id` in `location`.
fn managed(id: &str, location: &str, artifact_tags: Option<Expr<aib_core::template::StringMap>>) -> DistributorSpec {
    DistributorSpec::ManagedImage(ManagedImageTarget {
        run_output_name: "mi".into(),
        image_id: id.into(),
        location: location.into(),
        artifact_tags,
    })
}

fn req() -> DistributeRequest {
    DistributeRequest::new(captured()).with_location("westus")
}

fn shared(def: &str, versioning: Option<Versioning>) -> DistributorSpec {
    DistributorSpec::SharedImage(SharedImageTarget {
        run_output_name: "sig".into(),
        gallery_image_id: def.into(),
        target_regions: Some(Expr::Value(vec![
            TargetRegion { name: "West US".into(), replica_count: Some(Expr::Value(2)), storage_account_type: Some("Standard_ZRS".into()) },
            TargetRegion { name: "eastus".into(), replica_count: None, storage_account_type: None },
        ])),
        exclude_from_latest: Some(Expr::Value(true)),
        versioning,
        ..Default::default()
    })
}

#[tokio::test]
async fn shared_image_versions_follow_versioning_and_regions() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s, Duration::from_secs(30));
    let def = setup(&s, &c).await;
    let (step, sink) = StepContext::capturing("distribute sig").unwrap();
    let d = SharedImageDistributor::from_spec(c.clone(), &shared(&def, Some(Versioning::Latest { major: Some(Expr::Value(1)) }))).unwrap();
    let a = d.distribute(&req(), &step).await.unwrap();
    assert_eq!(a.artifact_id.as_deref(), Some(format!("{def}/versions/1.0.1").as_str()));
    let v = s.resource(&format!("{def}/versions/1.0.1")).unwrap();
    let p = &v["properties"]["publishingProfile"];
    assert_eq!(p["targetRegions"][0]["regionalReplicaCount"], 2);
    assert_eq!(p["targetRegions"][0]["storageAccountType"], "Standard_ZRS");
    assert_eq!(p["targetRegions"][1]["regionalReplicaCount"], 1);
    assert_eq!(p["excludeFromLatest"], true);
    assert_eq!(v["properties"]["storageProfile"]["source"]["virtualMachineId"], captured().id);
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert!(sink.stdout()[0].contains("3 replica(s) in westus, eastus"), "{:?}", sink.stdout());

    // `Source` versioning takes the source's version; it cannot be published twice.
    let d = SharedImageDistributor::from_spec(c.clone(), &shared(&def, Some(Versioning::Source))).unwrap();
    assert_eq!(d.distribute(&req(), &step).await.unwrap().artifact_id.unwrap(), format!("{def}/versions/2.3.4"));
    let err = d.distribute(&req(), &step).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    aib_testkit::conformance::distributor(
        &SharedImageDistributor::from_spec(c.clone(), &shared(&format!("{def}/versions/3.0.0"), None)).unwrap(),
        &req(),
    )
    .await;
}

#[tokio::test]
async fn a_replication_timeout_does_not_fail_a_version_that_exists() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s, Duration::from_millis(150));
    let def = setup(&s, &c).await;
    s.set_polls(10_000);
    let (step, _) = StepContext::capturing("distribute sig").unwrap();
    // The build VM, as the provisioner records it: deleted at cleanup unless kept.
    step.record(aib_core::ResourceRecord::new("azure", "virtualMachine", &captured().id, aib_core::Scope::BuildVm)).unwrap();
    let d = SharedImageDistributor::from_spec(c.clone(), &shared(&def, None)).unwrap();
    let a = d.distribute(&req(), &step).await.unwrap();
    assert_eq!(a.artifact_id.as_deref(), Some(format!("{def}/versions/1.0.1").as_str()));
    assert_eq!(s.resource(&format!("{def}/versions/1.0.1")).unwrap()["properties"]["provisioningState"], "Creating");
    // The version is still being made from the VM: the VM is not deleted under it.
    assert!(step.run.ledger().outstanding().is_empty(), "the source VM is kept: {:?}", step.run.ledger().outstanding());
}

#[tokio::test]
async fn a_managed_image_is_made_from_a_vm_or_a_disk_and_never_from_an_image() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s, Duration::from_secs(30));
    setup(&s, &c).await;
    let id = format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/web");
    s.put_resource(&id, json!({"location": "westus", "properties": {"provisioningState": "Succeeded"}}));
    let d = ManagedImageDistributor::from_spec(c.clone(), &managed(&id, "westus", None)).unwrap();
    let (step, _) = StepContext::capturing("distribute mi").unwrap();
    let from = |id: String| DistributeRequest::new(CapturedImage::new(id, "managedImage", "westus", ResolvedImage::default()));
    // A capture that is a managed image: refused before anything is touched (the image it
    // would replace included), where it used to become an osDisk.managedDisk ARM refuses.
    let before = s.requests().len();
    let base = format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/base");
    let e = d.distribute(&from(base), &step).await.unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }) && e.to_string().contains("from a VM or a managed disk only"), "{e}");
    assert_eq!(&s.requests()[before..], &[] as &[String], "nothing was sent");
    assert!(s.resource(&id).is_some(), "the existing image stays");
    // A managed disk is the other source a capture can be.
    let disk = format!("/subscriptions/{SUB}/resourceGroups/IT_rg_web_1/providers/Microsoft.Compute/disks/os");
    s.put_resource(&disk, json!({"location": "westus", "properties": {"creationData": {"createOption": "Empty"}, "diskSizeGB": 30}}));
    d.distribute(&from(disk.clone()), &step).await.unwrap();
    assert_eq!(s.resource(&id).unwrap()["properties"]["storageProfile"]["osDisk"]["managedDisk"]["id"], disk.as_str());
    // The server's rule, for a request that skips the check.
    let body = json!({"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux", "osState": "Generalized", "managedDisk": {"id": id}}}}});
    let raw = format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/raw");
    let e = c.put(&raw, aib_azure::COMPUTE_API, &body).await.unwrap_err();
    assert!(e.to_string().contains("not a managed disk"), "{e}");
}

#[tokio::test]
async fn managed_images_are_created_or_replaced() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s, Duration::from_secs(30));
    setup(&s, &c).await;
    let id = format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/web");
    let tags = Some(Expr::Value([("team".to_string(), "web".to_string())].into()));
    let d = ManagedImageDistributor::from_spec(c.clone(), &managed(&id, "westus", tags)).unwrap();
    let (step, _) = StepContext::capturing("distribute mi").unwrap();
    assert_eq!(d.distribute(&req(), &step).await.unwrap().artifact_id.as_deref(), Some(id.as_str()));
    let img = s.resource(&id).unwrap();
    assert_eq!(img["properties"]["sourceVirtualMachine"]["id"], captured().id);
    assert_eq!(img["tags"]["team"], "web");
    // Replacing needs the capture: while it is gone, the image it would replace stays.
    let vm = s.take_resource(&captured().id).unwrap();
    let e = d.distribute(&req(), &step).await.unwrap_err();
    assert!(matches!(e, aib_core::Error::NotFound { .. }), "{e}");
    assert!(s.requests().iter().all(|r| !r.starts_with("DELETE")), "nothing was deleted");
    s.put_resource(&captured().id, vm);
    d.distribute(&req(), &step).await.unwrap();
    assert!(s.requests().iter().any(|r| r.starts_with("DELETE") && r.ends_with("/images/web")), "the second publish replaced the image");
    assert!(s.resource(&id).is_some());
}

#[tokio::test]
async fn a_version_always_replicates_to_its_own_region() {
    // ARM refuses publishing regions without the version's (the gallery's) region; the test
    // server applies that rule, and the distributor adds the region the template left out.
    let s = ArmServer::start().await.unwrap();
    let c = client(&s, Duration::from_secs(30));
    let def = setup(&s, &c).await;
    let spec = DistributorSpec::SharedImage(SharedImageTarget {
        run_output_name: "sig".into(),
        gallery_image_id: def.clone(),
        replication_regions: Some(Expr::Value(vec!["eastus".into()])),
        ..Default::default()
    });
    let (step, _) = StepContext::capturing("distribute sig").unwrap();
    let a = SharedImageDistributor::from_spec(c.clone(), &spec).unwrap().distribute(&req(), &step).await.unwrap();
    let v = s.resource(a.artifact_id.as_deref().unwrap()).unwrap();
    let names: Vec<&str> =
        v["properties"]["publishingProfile"]["targetRegions"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["westus", "eastus"]);
    let body = json!({"location": "westus", "properties": {"publishingProfile": {"targetRegions": [{"name": "eastus"}]}, "storageProfile": {"source": {"virtualMachineId": captured().id}}}});
    let err = c.put(&format!("{def}/versions/9.9.9"), aib_azure::GALLERY_API, &body).await.unwrap_err();
    assert!(err.to_string().contains("must contain the location of image version"), "{err}");
}

#[tokio::test]
async fn a_target_in_another_region_than_the_build_is_refused_before_anything_is_created() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s, Duration::from_secs(30));
    let def = setup(&s, &c).await;
    // A gallery definition in another region than the build VM.
    let east = def.replace("/images/web", "/images/east");
    s.put_resource(&east, json!({"location": "eastus", "properties": {"osType": "Linux", "osState": "Generalized", "identifier": {"publisher": "contoso", "offer": "g", "sku": "east"}}}));
    let (step, _) = StepContext::capturing("distribute").unwrap();
    let before = s.requests().len();
    let err = SharedImageDistributor::from_spec(c.clone(), &shared(&east, None)).unwrap().distribute(&req(), &step).await.unwrap_err();
    assert!(err.to_string().contains("only from a source in its own region") && err.to_string().contains("eastus"), "{err}");
    let mi = managed(&format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/east"), "East US", None);
    let err = ManagedImageDistributor::from_spec(c.clone(), &mi).unwrap().distribute(&req(), &step).await.unwrap_err();
    assert!(err.to_string().contains("only from a source in its own region"), "{err}");
    assert!(s.requests()[before..].iter().all(|r| !r.starts_with("PUT")), "nothing was created: {:?}", &s.requests()[before..]);
    // ARM's own rule, as the test server applies it to a request that skips the check.
    let body = json!({"location": "eastus", "properties": {"sourceVirtualMachine": {"id": captured().id}}});
    let err = c
        .put(&format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/raw"), aib_azure::COMPUTE_API, &body)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("same Azure region"), "{err}");
}
