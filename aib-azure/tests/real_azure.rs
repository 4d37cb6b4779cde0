//! The end-to-end build against a real Azure subscription. It runs only when asked, because it
//! costs money and needs credentials:
//!
//! ```text
//! AIB_TEST_AZURE=1 \
//! AZURE_SUBSCRIPTION_ID=… AZURE_TENANT_ID=… AZURE_CLIENT_ID=… AZURE_CLIENT_SECRET=… \
//! AIB_TEST_AZURE_RESOURCE_GROUP=aib-test AIB_TEST_AZURE_LOCATION=westus2 \
//! [AIB_TEST_AZURE_ALLOWED_SOURCE=203.0.113.7/32] [AIB_TEST_AZURE_GALLERY_IMAGE=/subscriptions/…/galleries/g/images/ubuntu] \
//! cargo test -p aib-azure --test real_azure -- --ignored --nocapture --test-threads 1
//! ```
//!
//! Without `--ignored` the tests are reported as ignored, with the reason; with it but without
//! `AIB_TEST_AZURE=1` they fail, naming what is missing.
//!
//! The resource group must exist. The Linux build creates a managed image `aib-test-<run>` in
//! it (deleted at the end), a gallery image version when a definition is given, and a VHD in the
//! staging group's storage account; the Windows build (WinRM over HTTPS, a restart, Sysprep)
//! creates a managed image. Afterwards only the staging group, its storage account and those
//! outputs may remain.

use aib_azure::{ArmClientBuilder, AzureBackend, AzureProvisioner, RESOURCES_API};
use aib_core::template::ImageTemplate;
use aib_core::{Pipeline, RunState};
use serde_json::json;

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("AIB_TEST_AZURE=1 needs {k}"))
}

/// Asked for with `--ignored`: the subscription must be named too.
fn require_subscription() {
    assert!(
        std::env::var("AIB_TEST_AZURE").as_deref() == Ok("1"),
        "the real-Azure builds need AIB_TEST_AZURE=1 and a subscription's credentials (see aib-azure/tests/real_azure.rs)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds in a real Azure subscription (costs money): AIB_TEST_AZURE=1, credentials, then -- --ignored"]
async fn a_linux_build_in_a_real_subscription() {
    require_subscription();
    let source =
        json!({"type": "PlatformImage", "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"});
    let customize = json!([{"type": "Shell", "name": "marker", "inline": ["echo built by aib | sudo tee /etc/aib-test"]}]);
    real_build(source, customize, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "builds in a real Azure subscription (costs money): AIB_TEST_AZURE=1, credentials, then -- --ignored"]
async fn a_windows_build_in_a_real_subscription() {
    require_subscription();
    let source = json!({"type": "PlatformImage", "publisher": "MicrosoftWindowsServer", "offer": "WindowsServer",
                        "sku": "2022-datacenter-azure-edition", "version": "latest"});
    let customize = json!([
        {"type": "PowerShell", "name": "marker", "inline": ["Set-Content -Path C:\\aib-test.txt -Value 'built by aib'"]},
        {"type": "PowerShell", "name": "elevated", "runElevated": true, "inline": ["Get-Content C:\\aib-test.txt"]},
        {"type": "WindowsRestart", "restartTimeout": "10m"}
    ]);
    real_build(source, customize, false).await;
}

async fn real_build(source: serde_json::Value, customize: serde_json::Value, linux: bool) {
    let (sub, rg, location) = (var("AZURE_SUBSCRIPTION_ID"), var("AIB_TEST_AZURE_RESOURCE_GROUP"), var("AIB_TEST_AZURE_LOCATION"));
    let arm = ArmClientBuilder::from_env().unwrap().build().unwrap();
    let suffix = uuid_suffix();
    let image_id = format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Compute/images/aib-test-{suffix}");
    let mut distribute = vec![json!({"type": "ManagedImage", "imageId": image_id, "location": location, "runOutputName": "managed"})];
    if linux {
        distribute.push(json!({"type": "VHD", "runOutputName": "vhd"}));
    }
    if let Some(def) = std::env::var("AIB_TEST_AZURE_GALLERY_IMAGE").ok().filter(|_| linux) {
        distribute
            .push(json!({"type": "SharedImage", "galleryImageId": def, "runOutputName": "sig", "targetRegions": [{"name": location}]}));
    }
    let template = json!({
        "location": location,
        "properties": {
            "source": source,
            "customize": customize,
            "vmProfile": {"vmSize": "Standard_D2ds_v4"},
            "distribute": distribute
        }
    });
    let mut t = ImageTemplate::from_json(&template.to_string()).unwrap().template;
    t.name = Some(format!("aib-test-{suffix}"));
    let mut p = AzureProvisioner::builder().arm(arm.clone()).subscription(&sub).resource_group(&rg);
    // The NSG admits this machine's egress address when given, else any (the test's choice).
    p = p.allowed_source(std::env::var("AIB_TEST_AZURE_ALLOWED_SOURCE").unwrap_or_else(|_| "*".into()));
    let backend = AzureBackend::builder().provisioner(p).build().unwrap();
    let run = Pipeline::from_template(&t, &backend.backend()).unwrap().build().unwrap().start();
    let report = run.wait().await;
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);

    // Only the staging group's storage account is left in it.
    let staging = format!("/subscriptions/{sub}/resourceGroups/{}", aib_azure::staging_group_name(&sub, &rg, t.name.as_deref().unwrap()));
    let left = arm.list(&format!("{staging}/resources"), RESOURCES_API).await.unwrap();
    let kinds: Vec<&str> = left.iter().filter_map(|r| r["type"].as_str()).collect();
    assert!(kinds.iter().all(|k| k.eq_ignore_ascii_case("Microsoft.Storage/storageAccounts")), "left in the staging group: {kinds:?}");
    arm.delete(&image_id, aib_azure::COMPUTE_API).await.unwrap();
}

fn uuid_suffix() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{:08x}", nanos ^ std::process::id())
}
