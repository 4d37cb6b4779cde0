//! The ARM client and the Azure sources against the ARM test server.

use aib_azure::{ArmClient, AzureSource, COMPUTE_API, Credential, NETWORK_API, RetryConfig};
use aib_core::template::{ImageSource, ManagedImageSource, PlatformImageSource, SharedImageVersionSource};
use aib_core::{Error, ResolveRequest, Source, StepContext};
use aib_testkit::arm::{ArmFault, ArmServer};
use serde_json::json;
use std::time::{Duration, Instant};

const SUB: &str = "00000000-0000-0000-0000-000000000001";

fn client(s: &ArmServer) -> ArmClient {
    ArmClient::builder()
        .endpoint(s.url())
        .credential(Credential::static_token("test-token"))
        .retry(RetryConfig::fixed(4, Duration::from_millis(10)))
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap()
}

async fn group(c: &ArmClient, rg: &str) {
    c.put(&format!("/subscriptions/{SUB}/resourceGroups/{rg}"), "2021-04-01", &json!({"location": "westus"})).await.unwrap();
}

#[tokio::test]
async fn throttling_is_retried_after_the_servers_retry_after() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s);
    s.inject(ArmFault::Throttle { retry_after_secs: 1 }, 2);
    let t = Instant::now();
    group(&c, "rg1").await;
    assert!(t.elapsed() >= Duration::from_secs(2), "Retry-After was honoured: {:?}", t.elapsed());
    assert_eq!(c.requests_sent(), 3);
    // A storm longer than the retries gives up with Throttled, which callers may retry.
    s.inject(ArmFault::Throttle { retry_after_secs: 0 }, 10);
    let err = c.get(&format!("/subscriptions/{SUB}/resourceGroups/rg1"), "2021-04-01").await.unwrap_err();
    assert!(matches!(err, Error::Throttled { .. }) && err.is_retryable(), "{err}");
}

#[tokio::test]
async fn server_errors_are_retried_then_surfaced() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s);
    s.inject(ArmFault::ServerError, 3);
    group(&c, "rg1").await;
    s.inject(ArmFault::ServerError, 9);
    let err = c.get(&format!("/subscriptions/{SUB}/resourceGroups/rg1"), "2021-04-01").await.unwrap_err();
    assert!(err.is_retryable(), "a 500 may be retried by the caller: {err:?}");
    assert!(format!("{err} {err:?}").contains("InternalServerError"), "ARM's code is kept: {err:?}");
    let none = ArmClient::builder().endpoint(s.url()).credential(Credential::static_token("t")).retry(RetryConfig::none()).build().unwrap();
    s.inject(ArmFault::Unavailable, 1);
    assert!(none.get(&format!("/subscriptions/{SUB}/resourceGroups/rg1"), "2021-04-01").await.is_err());
    assert_eq!(none.requests_sent(), 1);
}

#[tokio::test]
async fn an_action_that_must_not_run_twice_is_not_retried_after_a_server_error() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s);
    group(&c, "rg1").await;
    let vm = format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachines/vm/runCommand");
    let before = c.requests_sent();
    s.inject(ArmFault::ServerError, 1);
    let err = c.post_once(&vm, COMPUTE_API, Some(&json!({"commandId": "RunPowerShellScript"}))).await.unwrap_err();
    assert!(format!("{err:?}").contains("InternalServerError"), "{err:?}");
    assert_eq!(c.requests_sent() - before, 1, "a 500 may come after the action started: not sent again");
    // Throttling says the request was not taken: that is waited out.
    s.inject(ArmFault::Throttle { retry_after_secs: 0 }, 1);
    let err = c.post_once(&vm, COMPUTE_API, Some(&json!({"commandId": "RunPowerShellScript"}))).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "retried past the 429 to the missing VM: {err:?}");
    assert_eq!(s.pending_faults(), 0);
}

#[tokio::test]
async fn long_running_operations_are_followed_to_the_end() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s);
    group(&c, "rg1").await;
    s.set_polls(3);
    let id = format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Network/publicIPAddresses/ip1");
    let v = c.put(&id, NETWORK_API, &json!({"location": "westus", "properties": {"publicIPAllocationMethod": "Static"}})).await.unwrap();
    assert_eq!(v["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        c.list(&format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Network/publicIPAddresses"), NETWORK_API)
            .await
            .unwrap()
            .len(),
        1
    );
    c.delete(&id, NETWORK_API).await.unwrap();
    assert!(s.resource(&id).is_none(), "deleted once the operation finished");
    c.delete(&id, NETWORK_API).await.unwrap();
    // Deleting a group takes its resources along.
    c.put(&id, NETWORK_API, &json!({"location": "westus"})).await.unwrap();
    c.delete(&format!("/subscriptions/{SUB}/resourceGroups/rg1"), "2021-04-01").await.unwrap();
    assert!(s.resource_ids().is_empty());
}

#[tokio::test]
async fn arm_errors_arrive_as_arm_wrote_them() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s);
    group(&c, "rg1").await;
    s.fail_creates(
        "Microsoft.Compute/virtualMachineScaleSets",
        "AllocationFailed",
        "Allocation failed. We do not have sufficient capacity for the requested VM size in this region.",
    );
    let vm = format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/virtualMachineScaleSets/vmss1");
    let err = c.put(&vm, COMPUTE_API, &json!({"location": "westus"})).await.unwrap_err();
    let shown = format!("{err}: {:?}", err);
    assert!(shown.contains("AllocationFailed") && shown.contains("sufficient capacity"), "{shown}");
    assert!(!err.is_retryable());
    let err = c
        .put(
            &format!("/subscriptions/{SUB}/resourceGroups/nope/providers/Microsoft.Network/virtualNetworks/v"),
            NETWORK_API,
            &json!({"location": "westus"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }) && err.to_string().contains("ResourceGroupNotFound"), "{err}");
    assert_eq!(s.unauthenticated(), 0, "every request carried the token");
}

#[tokio::test]
async fn operations_have_their_own_deadline() {
    let s = ArmServer::start().await.unwrap();
    let c = ArmClient::builder()
        .endpoint(s.url())
        .credential(Credential::static_token("t"))
        .poll_interval(Duration::from_millis(20))
        .lro_timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    group(&c, "rg1").await;
    s.set_polls(1000);
    let err = c
        .put(
            &format!("/subscriptions/{SUB}/resourceGroups/rg1/providers/Microsoft.Compute/disks/d1"),
            aib_azure::DISK_API,
            &json!({"location": "westus"}),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn the_budget_bounds_requests_per_subscription() {
    let s = ArmServer::start().await.unwrap();
    let c = ArmClient::builder().endpoint(s.url()).credential(Credential::static_token("t")).budget(2).build().unwrap();
    group(&c, "rg1").await;
    let jobs: Vec<_> = (0..20)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.get(&format!("/subscriptions/{SUB}/resourceGroups/rg1"), "2021-04-01").await })
        })
        .collect();
    for j in jobs {
        j.await.unwrap().unwrap();
    }
    assert!(c.peak_in_flight() <= 2, "{}", c.peak_in_flight());
    assert!(
        ArmClient::builder().endpoint("http://example.com").credential(Credential::static_token("t")).build().is_err(),
        "plain http only to this machine"
    );
}

#[tokio::test]
async fn sources_resolve_exact_versions_and_check_regions() {
    let s = ArmServer::start().await.unwrap();
    let c = client(&s);
    let ctx = StepContext::detached("resolve").unwrap();
    let at = |spec: &ImageSource| ResolveRequest::new(spec.clone()).with_location("West US");
    for v in ["0.20240101.1", "0.20241115.3", "0.20240906.2"] {
        s.add_marketplace_image("westus", "Canonical", "ubuntu-24_04-lts", "server", v);
    }
    let src = AzureSource::new(c.clone(), SUB);
    let spec = ImageSource::PlatformImage(PlatformImageSource {
        publisher: Some("Canonical".into()),
        offer: Some("ubuntu-24_04-lts".into()),
        sku: Some("server".into()),
        version: Some("latest".into()),
        plan_info: None,
    });
    let r = src.resolve(&at(&spec), &ctx).await.unwrap();
    assert_eq!(r.exact_version.as_deref(), Some("0.20241115.3"));
    assert_eq!(r.exact, "Canonical:ubuntu-24_04-lts:server:0.20241115.3");
    aib_testkit::conformance::source(&src, &at(&spec)).await;
    let missing = ImageSource::PlatformImage(PlatformImageSource {
        publisher: Some("Canonical".into()),
        offer: Some("nope".into()),
        sku: Some("server".into()),
        version: Some("latest".into()),
        plan_info: None,
    });
    assert!(matches!(src.resolve(&at(&missing), &ctx).await.unwrap_err(), Error::NotFound { .. }));

    let rg = format!("/subscriptions/{SUB}/resourceGroups/images");
    s.put_resource(
        &format!("{rg}/providers/Microsoft.Compute/images/eu"),
        json!({"location": "westeurope", "properties": {"storageProfile": {"osDisk": {"osType": "Linux", "osState": "Generalized"}}}}),
    );
    s.put_resource(
        &format!("{rg}/providers/Microsoft.Compute/images/us"),
        json!({"location": "westus", "properties": {"storageProfile": {"osDisk": {"osType": "Linux", "osState": "Generalized"}}}}),
    );
    group(&c, "images").await;
    let managed =
        |n: &str| ImageSource::ManagedImage(ManagedImageSource { image_id: format!("{rg}/providers/Microsoft.Compute/images/{n}") });
    let err = src.resolve(&at(&managed("eu")), &ctx).await.unwrap_err();
    assert!(err.to_string().contains("same region"), "{err}");
    src.resolve(&at(&managed("us")), &ctx).await.unwrap();

    let def = format!("{rg}/providers/Microsoft.Compute/galleries/g/images/web");
    s.put_resource(
        &def,
        json!({"location": "westus", "properties": {"osType": "Linux", "osState": "Generalized", "hyperVGeneration": "V2",
                                       "identifier": {"publisher": "contoso", "offer": "web", "sku": "v2"}}}),
    );
    let version = |v: &str, exclude: bool, regions: &[&str]| json!({"name": v, "location": "westus", "properties": {"provisioningState": "Succeeded", "storageProfile": {}, "publishingProfile": {"excludeFromLatest": exclude, "targetRegions": regions.iter().map(|r| json!({"name": r, "regionalReplicaCount": 1})).collect::<Vec<_>>()}}});
    s.put_resource(&format!("{def}/versions/1.0.0"), version("1.0.0", false, &["West US"]));
    s.put_resource(&format!("{def}/versions/1.2.0"), version("1.2.0", false, &["West US", "East US"]));
    s.put_resource(&format!("{def}/versions/2.0.0"), version("2.0.0", true, &["West US"]));
    s.put_resource(&format!("{def}/versions/1.10.0"), version("1.10.0", false, &["East US"]));
    let sig = |v: &str| ImageSource::SharedImageVersion(SharedImageVersionSource { image_version_id: format!("{def}/versions/{v}") });
    let err = src.resolve(&at(&sig("latest")), &ctx).await.unwrap_err();
    assert!(
        err.to_string().contains("1.10.0") && err.to_string().contains("westus"),
        "latest is 1.10.0, not in the template's region: {err}"
    );
    let r = src.resolve(&at(&sig("1.2.0")), &ctx).await.unwrap();
    assert_eq!(r.exact_version.as_deref(), Some("1.2.0"));
    assert_eq!(r.hyper_v_generation.as_deref(), Some("V2"));
}
