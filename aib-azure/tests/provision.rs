//! The Azure provisioner and whole builds against the ARM test server, whose VMs are real
//! sshd guests (needs root and OpenSSH: `apt-get install -y openssh-server`).

use aib_azure::{AzureBackend, AzureProvisioner, AzureSource, staging_group_name};
use aib_core::template::ImageTemplate;
use aib_core::{
    DistributeRequest, Event, Pipeline, ProvisionRequest, Provisioner, Reclaim, ResolveRequest, RunContext, RunState, Source, StepContext,
};
use aib_testkit::arm::storage::AzuriteDisks;
use aib_testkit::arm::{ArmFault, ArmServer};
use aib_testkit::azurite::Azurite;
use aib_testkit::conformance;
use aib_testkit::guest::SshdGuests;
use aib_testkit::http::StaticServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{RG, SUB, client, group, leaked, request};

async fn server() -> ArmServer {
    let guests = SshdGuests::new().unwrap_or_else(|e| panic!("{e}"));
    marketplace(ArmServer::start_with(0, Some(Arc::new(guests))).await.unwrap())
}

/// A server whose exported disks live in `azurite`, and whose storage accounts are Azurite
/// accounts of their own behind the account rules (copies stay pending for three status
/// reads); and those accounts.
async fn server_with_storage(azurite: &Azurite) -> (ArmServer, AzuriteDisks) {
    let store = AzuriteDisks::with_accounts(azurite, 3).await.unwrap();
    (server().await.with_disk_store(Arc::new(store.clone())), store)
}

/// The server's one storage account.
fn storage_account(s: &ArmServer) -> String {
    let accounts: Vec<String> =
        s.resource_ids().into_iter().filter(|id| id.to_ascii_lowercase().contains("/microsoft.storage/storageaccounts/")).collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    accounts[0].clone()
}

/// Blob clients of the account `name` (with `key`) at the path-style endpoint `uri`.
fn blob_account(uri: String, (name, key): (String, String)) -> azure_storage_blobs::prelude::ClientBuilder {
    let creds = azure_storage::StorageCredentials::access_key(name.clone(), azure_core::auth::Secret::new(key));
    azure_storage_blobs::prelude::ClientBuilder::with_location(azure_storage::CloudLocation::Custom { account: name, uri }, creds)
        .retry(azure_core::RetryOptions::none())
}

/// Blob clients of the Azurite account behind the ARM storage account `id`, past the front.
fn in_azurite(azurite: &Azurite, store: &AzuriteDisks, id: &str) -> azure_storage_blobs::prelude::ClientBuilder {
    let (name, key) = store.azurite_account(id).expect("an account of the pool");
    blob_account(format!("{}/{name}", azurite.base_url()), (name, key))
}

/// The VHD blob at `url` in the server's storage account, read with the account's key.
fn vhd_blob(s: &ArmServer, store: &AzuriteDisks, url: &str) -> azure_storage_blobs::prelude::BlobClient {
    let account = store.azurite_account(&storage_account(s)).expect("an account of the pool");
    let (endpoint, blob) = url.split_once("/vhds/").expect("a blob in vhds/");
    blob_account(endpoint.to_string(), account).blob_client("vhds", blob)
}

/// The progress events of the VHD step: (done, total).
fn vhd_progress(events: &[Event]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Progress { step, done, total: Some(total), unit } if step.contains("vhd") && unit == "bytes" => Some((*done, *total)),
            _ => None,
        })
        .collect()
}

fn marketplace(s: ArmServer) -> ArmServer {
    for region in ["westus2", "eastus"] {
        s.add_marketplace_image(region, "Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2", "20.04.202501010");
        s.add_marketplace_image(region, "Canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2", "20.04.202411050");
    }
    s
}

fn provisioner(s: &ArmServer) -> aib_azure::AzureProvisionerBuilder {
    AzureProvisioner::builder()
        .arm(client(s))
        .subscription(SUB)
        .resource_group(RG)
        .ssh_port(s.guest_port().unwrap())
        .allowed_source("127.0.0.1/32")
        // A resource left in use by a failed delete settles for this long, not ARM's minutes.
        .settle_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(30))
}

/// A resolve request as a template in westus2 makes it.
fn west(spec: &aib_core::template::ImageSource) -> ResolveRequest {
    ResolveRequest::new(spec.clone()).with_location("westus2")
}

#[tokio::test]
async fn provisioner_and_source_pass_the_conformance_suite() {
    let s = server().await;
    let c = client(&s);
    let source = AzureSource::new(c.clone(), SUB);
    let spec = ubuntu();
    conformance::source(&source, &west(&spec)).await;
    let ctx = StepContext::detached("resolve").unwrap();
    let image = source.resolve(&west(&spec), &ctx).await.unwrap();
    assert_eq!(image.exact_version.as_deref(), Some("20.04.202501010"));
    let p = provisioner(&s).build().unwrap();
    conformance::provisioner(&p, &request(image, "westus2"), &conformance::Capabilities::linux_ssh()).await;
    assert_eq!(leaked(&s), Vec::<String>::new(), "the build resources are gone");
    assert_eq!(s.running_guests(), 0);
    let staging = staging_group_name(SUB, RG, "image");
    assert!(s.group_ids().iter().any(|g| g.ends_with(&staging)), "the staging group stays, as AIB's does: {:?}", s.group_ids());
}

fn ubuntu() -> aib_core::template::ImageSource {
    aib_core::template::ImageSource::PlatformImage(aib_core::template::PlatformImageSource {
        publisher: Some("Canonical".into()),
        offer: Some("0001-com-ubuntu-server-focal".into()),
        sku: Some("20_04-lts-gen2".into()),
        version: Some("latest".into()),
        plan_info: None,
    })
}

/// The corpus's Linux Shared Image Gallery template, placeholders filled, downloads served
/// here, plus a ManagedImage output.
async fn corpus_template(s: &ArmServer, web: &StaticServer, vhd: bool) -> ImageTemplate {
    let c = client(s);
    group(&c, RG, "westus2").await;
    let def = format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/aibgallery/images/ubuntu");
    s.put_resource(
        &def,
        json!({"location": "westus2", "properties": {"osType": "Linux", "osState": "Generalized", "hyperVGeneration": "V2",
                                        "identifier": {"publisher": "contoso", "offer": "linux", "sku": "v2"}}}),
    );
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../aib-core/tests/corpus/quickstarts/azvmimagebuilder__quickquickstarts__1_Creating_a_Custom_Linux_Shared_Image_Gallery_Image__helloImageTemplateforSIG.json"
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let s1 = "#!/bin/sh\necho customizeScript ran on $(hostname)\nsudo touch /var/aib-script1\n";
    let s2 = "#!/bin/sh\necho checksummed script ran\n";
    let cz = &mut v["properties"]["customize"];
    cz[0]["scriptUri"] = web.put("customizeScript.sh", s1).into();
    cz[1]["scriptUri"] = web.put("customizeScript2.sh", s2).into();
    cz[1]["sha256Checksum"] = aib_customizers::fetch::sha256_hex(s2.as_bytes()).into();
    cz[2]["sourceUri"] = web.put("index.html", "<h1>hello from aib</h1>\n").into();
    // No network from the guest: the package install is shown, not run.
    cz[4]["inline"] = json!(["echo would run: sudo apt install unattended-upgrades", "test -f /buildArtifacts/index.html"]);
    v["properties"]["distribute"].as_array_mut().unwrap().push(json!({
        "type": "ManagedImage",
        "imageId": format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/ubuntu-managed"),
        "location": "westus2",
        "runOutputName": "managed"
    }));
    if vhd {
        v["properties"]["distribute"].as_array_mut().unwrap().push(json!({"type": "VHD", "runOutputName": "vhd"}));
    }
    let text = aib_testkit::corpus::fill_placeholders(
        &v.to_string(),
        SUB,
        RG,
        &[
            ("<region1>", "westus2"),
            ("<region2>", "eastus"),
            ("<sharedImageGalName>", "aibgallery"),
            ("<imageDefName>", "ubuntu"),
            ("<runOutputName>", "sig"),
        ],
    );
    let mut t = ImageTemplate::from_json(&text).unwrap().template;
    t.name = Some("helloImageTemplateforSIG".into());
    t
}

async fn build(
    s: &ArmServer,
    t: &ImageTemplate,
    tweak: impl FnOnce(aib_core::PipelineBuilder) -> aib_core::PipelineBuilder,
) -> (aib_core::RunReport, Vec<Event>) {
    build_with(provisioner(s), t, tweak).await
}

/// [`build`] with this provisioner.
async fn build_with(
    provisioner: aib_azure::AzureProvisionerBuilder,
    t: &ImageTemplate,
    tweak: impl FnOnce(aib_core::PipelineBuilder) -> aib_core::PipelineBuilder,
) -> (aib_core::RunReport, Vec<Event>) {
    build_on(AzureBackend::builder().provisioner(provisioner), t, tweak).await
}

/// [`build`] on this backend (the test servers' network allowed for sources).
async fn build_on(
    backend: aib_azure::AzureBackendBuilder,
    t: &ImageTemplate,
    tweak: impl FnOnce(aib_core::PipelineBuilder) -> aib_core::PipelineBuilder,
) -> (aib_core::RunReport, Vec<Event>) {
    let backend = backend.allow_source_network(aib_testkit::http::loopback()).build().unwrap();
    let pipeline = tweak(Pipeline::from_template(t, &backend.backend()).unwrap()).build().unwrap();
    let mut run = pipeline.start();
    let events: Vec<Event> = run.events().collect().await;
    (run.wait().await, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corpus_template_builds_managed_image_gallery_version_in_two_regions_and_vhd() {
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let (s, store) = server_with_storage(&azurite).await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, true).await;
    let started = Instant::now();
    let before = s.requests().len();
    // Long-running operations take three polls, so replication progress shows.
    s.set_polls(3);
    let (report, events) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:?}", report.message, report.log_tail);
    let reqs = &s.requests()[before..];
    let count = |m: &str| reqs.iter().filter(|r| r.starts_with(m)).count();
    eprintln!(
        "build against the ARM test server: {:.2?}, {} ARM requests (GET {}, PUT {}, POST {}, DELETE {})",
        started.elapsed(),
        reqs.len(),
        count("GET"),
        count("PUT"),
        count("POST"),
        count("DELETE")
    );
    for st in &report.steps {
        eprintln!("  {:<45} {:>8.2?}", st.name, st.duration);
    }
    let version =
        format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/aibgallery/images/ubuntu/versions/1.0.0");
    let ids: Vec<Option<String>> = report.run_outputs.iter().map(|o| o.artifact_id.clone()).collect();
    assert!(ids.contains(&Some(version.clone())), "{ids:?}");
    let v = s.resource(&version).unwrap();
    let regions: Vec<&str> =
        v["properties"]["publishingProfile"]["targetRegions"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(regions, ["westus2", "eastus"]);
    assert_eq!(v["tags"]["baseosimg"], "ubuntu2004");
    // The VHD: the OS disk copied server-side into the staging group's storage account.
    let vhd = report.run_outputs.iter().find(|o| o.name == "vhd").and_then(|o| o.artifact_uri.clone()).expect("a VHD uri");
    assert!(vhd.starts_with("http://127.0.0.1:") && vhd.contains("/vhds/") && vhd.ends_with(".vhd"), "{vhd}");
    assert!(!vhd.contains("sig="), "no SAS in the artifact URI");
    let client = vhd_blob(&s, &store, &vhd);
    // The copy was pending for three status reads, its progress shown as it grew.
    let progress = vhd_progress(&events);
    assert!(progress.iter().filter(|(done, total)| done < total).count() >= 2, "pending copy progress: {progress:?}");
    let props = client.get_properties().await.unwrap().blob.properties;
    assert_eq!(props.content_length, aib_testkit::arm::storage::EXPORT_CAP + 512, "the whole (test-sized) OS disk and its footer");
    let head: Vec<u8> = client.get().range(0u64..512).into_stream().next().await.unwrap().unwrap().data.collect().await.unwrap().to_vec();
    assert!(String::from_utf8_lossy(&head).starts_with("aib-testkit disk /subscriptions/"), "the disk's own first sector");
    assert!(s.requests().iter().any(|r| r.ends_with("/endGetAccess")), "the SAS was revoked");
    let image = s.resource(&format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/images/ubuntu-managed")).unwrap();
    assert_eq!(image["properties"]["storageProfile"]["osDisk"]["osState"], "Generalized");
    // The customizers ran on the guest, over SSH.
    let lines: Vec<String> =
        events.iter().filter_map(|e| if let Event::Output { line, .. } = e { Some(line.clone()) } else { None }).collect();
    assert!(lines.iter().any(|l| l.starts_with("customizeScript ran on")), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "checksummed script ran"));
    // What the build wrote as root stayed in the guest: this machine has none of it.
    assert!(!std::path::Path::new("/var/aib-script1").exists(), "the guest's writes reached this machine");
    assert!(lines.iter().any(|l| l.starts_with("aib: deprovisioning without waagent")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("replication: westus2 ") && l.contains("eastus")), "replication progress: {lines:#?}");
    // Only the staging group (and the outputs) remain; the build VM's guest is gone.
    assert_eq!(leaked(&s), Vec::<String>::new());
    assert_eq!(s.running_guests(), 0);
    let staging = staging_group_name(SUB, RG, "helloImageTemplateforSIG");
    let g = s.group_ids();
    assert!(g.iter().any(|x| x.ends_with(&staging)), "{g:?}");
    // The build VM carried the run's tags.
    assert!(s.requests().iter().any(|r| r.contains("/deallocate")) && s.requests().iter().any(|r| r.contains("/generalize")));
}

#[tokio::test]
async fn allocation_failures_fail_fast_with_their_code_and_leave_nothing() {
    let s = server().await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, false).await;
    s.fail_creates("Microsoft.Compute/virtualMachines", "AllocationFailed", "Allocation failed. We do not have sufficient capacity.");
    let started = Instant::now();
    let (report, events) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Failed);
    assert!(report.message.contains("AllocationFailed"), "{}", report.message);
    assert!(started.elapsed() < Duration::from_secs(60), "failed fast, not at an SSH timeout");
    assert_eq!(leaked(&s), Vec::<String>::new());
    assert!(notice(&events, "no capacity for Standard_D2s_v3 in westus2"), "what to do next is said");
}

fn notice(events: &[Event], text: &str) -> bool {
    events.iter().any(|e| matches!(e, Event::Notice { message, .. } if message.contains(text)))
}

#[tokio::test]
async fn a_size_the_region_lacks_or_past_the_cores_quota_fails_saying_what_to_change() {
    // The server's capacity rules, not injected faults: the template's size is not offered,
    // or its two vCPUs are past a one-core quota.
    let web = StaticServer::start().await.unwrap();
    let cases = [
        (server().await.with_unavailable_size("West US 2", "Standard_D2s_v3"), "SkuNotAvailable", "set properties.vmProfile.vmSize"),
        (server().await.with_cores_quota("westus2", 1), "exceeding approved Total Regional Cores quota", "cores quota in westus2"),
    ];
    for (s, refusal, what_to_change) in cases {
        let t = corpus_template(&s, &web, false).await;
        let (report, events) = build(&s, &t, |b| b).await;
        assert_eq!(report.run_state, RunState::Failed);
        assert!(report.message.contains(refusal), "{}", report.message);
        assert!(notice(&events, what_to_change), "what to change is named: {what_to_change}");
        assert_eq!(leaked(&s), Vec::<String>::new());
    }
}

#[tokio::test]
async fn throttling_storms_and_server_errors_are_survived() {
    let s = server().await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, false).await;
    s.inject(ArmFault::Throttle { retry_after_secs: 0 }, 4);
    let (report, _) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);
    assert_eq!(s.pending_faults(), 0, "the build met every 429");
    s.inject(ArmFault::ServerError, 3);
    let (report, _) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);
    assert_eq!(s.pending_faults(), 0, "the build met every 500");
    assert_eq!(leaked(&s), Vec::<String>::new());
}

#[tokio::test]
async fn failed_deletes_are_retried_and_reported() {
    let s = server().await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, false).await;
    s.fail_deletes("Microsoft.Network/publicIPAddresses", 1);
    let (report, _) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);
    assert_eq!(s.pending_faults(), 0, "the public IP's delete failed once");
    assert_eq!(leaked(&s), Vec::<String>::new(), "a delete that failed once was tried again");
    s.fail_deletes("Microsoft.Network/virtualNetworks", 10);
    let (report, _) = build(&s, &t, |b| b).await;
    let left = leaked(&s);
    assert_eq!(left.len(), 3, "the VNet, its subnet and the NSG the subnet still uses stay: {left:?}");
    assert!(left.iter().any(|l| l.contains("/networkSecurityGroups/")), "{left:?}");
    let all = format!("{} {:?}", report.message, report.cleanup_errors);
    assert!(all.contains("InternalOperationError") && all.contains("virtualNetworks"), "the failure is reported: {all}");
}

/// Runs `run` to its end, cancelling it once, at the first event `at` matches, while the
/// server holds every operation in flight: the cancel waits until the server has seen a
/// request `in_flight` matches (at most a minute, however loaded the machine; it may have come
/// before the event reached this loop). Whether it cancelled, and the report.
async fn cancel_once(
    s: &ArmServer,
    mut run: aib_core::RunHandle,
    at: impl Fn(&Event) -> bool,
    in_flight: impl Fn(&str) -> bool,
) -> (bool, aib_core::RunReport) {
    let (cancel, mut events, mut cancelled) = (run.cancellation(), run.events(), false);
    while let Some(e) = events.next().await {
        if !cancelled && at(&e) {
            cancelled = true;
            s.set_polls(1000);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !s.requests().iter().any(|r| in_flight(r)) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
            s.set_polls(1);
        }
    }
    (cancelled, run.wait().await)
}

#[tokio::test]
async fn cancel_during_distribution_leaves_only_the_staging_group() {
    let s = server().await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, false).await;
    let backend = AzureBackend::builder().provisioner(provisioner(&s)).allow_source_network(aib_testkit::http::loopback()).build().unwrap();
    let run = Pipeline::from_template(&t, &backend.backend()).unwrap().build().unwrap().start();
    // Once, at the first distribution step (the others start at the same moment).
    let (cancelled, report) = cancel_once(
        &s,
        run,
        |e| matches!(e, Event::StepStarted { step, .. } if step.starts_with("distribute")),
        |r| r.starts_with("PUT") && r.contains("/images/"),
    )
    .await;
    assert!(cancelled, "the build reached distribution");
    assert_eq!(report.run_state, RunState::Canceled, "{}", report.message);
    assert_eq!(leaked(&s), Vec::<String>::new(), "half-made outputs and build resources are deleted");
    assert_eq!(s.running_guests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_vhd_export_revokes_the_disks_read_access() {
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let (s, _) = server_with_storage(&azurite).await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, true).await;
    let backend = AzureBackend::builder().provisioner(provisioner(&s)).allow_source_network(aib_testkit::http::loopback()).build().unwrap();
    let run = Pipeline::from_template(&t, &backend.backend()).unwrap().build().unwrap().start();
    // When the export asks for the OS disk's read SAS: the grant hangs until the cancel.
    let (cancelled, report) = cancel_once(
        &s,
        run,
        |e| matches!(e, Event::Output { line, .. } if line.starts_with("granting read access to")),
        |r| r.contains("/beginGetAccess"),
    )
    .await;
    assert!(cancelled, "the build reached the VHD export");
    assert_eq!(report.run_state, RunState::Canceled, "{}", report.message);
    assert!(s.requests().iter().any(|r| r.contains("/beginGetAccess")), "the cancel came during the export");
    assert_eq!(s.active_disk_access(), Vec::<String>::new(), "the disk's read SAS was revoked by cleanup");
    assert!(s.requests().iter().any(|r| r.contains("/endGetAccess")));
}

#[tokio::test]
async fn a_brought_staging_group_must_be_empty_and_in_the_region() {
    let s = server().await;
    let web = StaticServer::start().await.unwrap();
    let mut t = corpus_template(&s, &web, false).await;
    let c = client(&s);
    group(&c, "staging-west", "westus2").await;
    group(&c, "staging-east", "eastus").await;
    s.put_resource(
        &format!("/subscriptions/{SUB}/resourceGroups/staging-west/providers/Microsoft.Storage/storageAccounts/other"),
        json!({"location": "westus2"}),
    );
    for (rg, want) in [("staging-west", "must be empty"), ("staging-east", "must be in the template's region")] {
        t.properties.staging_resource_group = Some(format!("/subscriptions/{SUB}/resourceGroups/{rg}"));
        let (report, _) = build(&s, &t, |b| b).await;
        assert_eq!(report.run_state, RunState::Failed);
        assert!(report.message.contains("stagingResourceGroup") && report.message.contains(want), "{}", report.message);
    }
    // A named group that does not exist is created, tagged `usedBy`, and used.
    t.properties.staging_resource_group = Some(format!("/subscriptions/{SUB}/resourceGroups/staging-new"));
    let (report, _) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);
    let g = c.get(&format!("/subscriptions/{SUB}/resourceGroups/staging-new"), "2021-04-01").await.unwrap();
    assert_eq!(g["tags"]["usedBy"], "helloImageTemplateforSIG");
}

#[tokio::test]
async fn gc_by_tags_deletes_what_a_killed_run_left_but_not_live_runs() {
    let s = server().await;
    let c = client(&s);
    group(&c, RG, "westus2").await;
    let backend = AzureBackend::builder().provisioner(provisioner(&s)).allow_source_network(aib_testkit::http::loopback()).build().unwrap();
    let source = AzureSource::new(c.clone(), SUB);
    let ctx = RunContext::detached("killed-run").unwrap();
    let image = source.resolve(&west(&ubuntu()), &ctx.step("resolve")).await.unwrap();
    let req = ProvisionRequest::new(image).with_location("westus2").with_template_name("t").with_tag("aibRunId", "killed-run");
    let vm = backend.provisioner().provision(&req, &ctx.step("provision")).await.unwrap();
    assert!(leaked(&s).len() >= 6, "{:?}", leaked(&s));
    // The OS disk carries the run's tags, so it is found even when its VM is gone without it
    // (someone deleted the VM with the disk detached).
    let disk = vm.attributes["osDiskId"].as_str().unwrap().to_string();
    assert_eq!(s.resource(&disk).unwrap()["tags"]["aibRunId"], "killed-run");
    let mut v = s.resource(&vm.id).unwrap();
    v["properties"]["storageProfile"]["osDisk"]["deleteOption"] = "Detach".into();
    s.put_resource(&vm.id, v);
    c.delete(&vm.id, aib_azure::COMPUTE_API).await.unwrap();
    assert!(s.resource(&disk).is_some(), "the disk outlived its VM");
    let live: HashSet<String> = ["killed-run".to_string()].into();
    let r = backend.gc_tagged(&live, Duration::ZERO).await.unwrap();
    assert!(r.deleted.is_empty() && !r.skipped.is_empty(), "a live run's resources are never touched");
    let r = backend.gc_tagged(&HashSet::new(), Duration::from_secs(3600)).await.unwrap();
    assert!(r.deleted.is_empty(), "younger than the threshold");
    let r = backend.gc_tagged(&HashSet::new(), Duration::ZERO).await.unwrap();
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(r.deleted.contains(&disk), "the orphan disk was found by its tags: {:?}", r.deleted);
    assert_eq!(leaked(&s), Vec::<String>::new());
    assert_eq!(s.running_guests(), 0);
}

#[tokio::test]
async fn marketplace_plans_need_accepted_terms_and_reach_the_vm() {
    let s = server().await;
    let c = client(&s);
    group(&c, RG, "westus2").await;
    let source = AzureSource::new(c.clone(), SUB);
    let mut spec = ubuntu();
    if let aib_core::template::ImageSource::PlatformImage(p) = &mut spec {
        p.plan_info = Some(aib_core::template::PlanInfo {
            plan_name: "20_04-lts-gen2".into(),
            plan_product: "0001-com-ubuntu-server-focal".into(),
            plan_publisher: "canonical".into(),
        });
    }
    let ctx = StepContext::detached("plan").unwrap();
    let e = source.resolve(&west(&spec), &ctx).await.unwrap_err().to_string();
    assert!(e.contains("source.planInfo") && e.contains("az vm image terms accept --publisher canonical"), "{e}");
    s.accept_terms("canonical", "0001-com-ubuntu-server-focal", "20_04-lts-gen2");
    let image = source.resolve(&west(&spec), &ctx).await.unwrap();
    let p = provisioner(&s).build().unwrap();
    let mut req = request(image, "westus2");
    let identity = format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/build");
    req.vm_profile.user_assigned_identities = Some(aib_core::template::Expr::Value(vec![identity.clone()]));
    req.vm_profile.os_disk_size_gb = Some(aib_core::template::Expr::Value(64));
    let vm = p.provision(&req, &ctx).await.unwrap();
    let body = s.resource(&vm.id).unwrap();
    assert_eq!(body["identity"]["type"], "UserAssigned");
    assert!(body["identity"]["userAssignedIdentities"][&identity].is_object(), "{}", body["identity"]);
    assert_eq!(body["properties"]["storageProfile"]["osDisk"]["diskSizeGB"], 64);
    assert_eq!(body["properties"]["hardwareProfile"]["vmSize"], "Standard_D2ds_v4", "AIB's default for a Gen2 source");
    assert!(body["tags"]["aibCreatedAt"].is_string() && body["tags"]["createdBy"] == "AzureVMImageBuilder");
    assert_eq!(body["plan"], json!({"name": "20_04-lts-gen2", "product": "0001-com-ubuntu-server-focal", "publisher": "canonical"}));
    for r in ctx.run.ledger().outstanding().iter().rev() {
        p.delete(r).await.unwrap();
    }
    assert_eq!(leaked(&s), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributors_pass_the_conformance_suite() {
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let (s, _) = server_with_storage(&azurite).await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, true).await;
    let c = client(&s);
    let image = AzureSource::new(c.clone(), SUB).resolve(&west(&ubuntu()), &StepContext::detached("r").unwrap()).await.unwrap();
    let p = provisioner(&s).build().unwrap();
    let ctx = RunContext::detached("distributor-conformance").unwrap();
    let req = ProvisionRequest::new(image).with_location("westus2").with_template_name("conformance");
    let vm = p.provision(&req, &ctx.step("provision")).await.unwrap();
    let comm = p.connect(&vm, &ctx.step("connect")).await.unwrap();
    p.generalize(&vm, &*comm, &ctx.step("generalize")).await.unwrap();
    drop(comm);
    let captured = p.capture(&vm, &ctx.step("capture")).await.unwrap();
    let backend =
        AzureBackend::builder().provisioner(provisioner(&s)).allow_source_network(aib_testkit::http::loopback()).build().unwrap().backend();
    assert_eq!(t.properties.distribute.len(), 3);
    for spec in &t.properties.distribute {
        let d = backend.registry.distributor(spec).unwrap();
        conformance::distributor(&*d, &DistributeRequest::new(captured.clone()).with_location("westus2")).await;
    }
    for r in ctx.ledger().outstanding().iter().rev() {
        p.delete(r).await.unwrap();
    }
    assert_eq!(leaked(&s), Vec::<String>::new());
}

#[tokio::test]
async fn an_existing_subnet_gets_a_nic_and_no_public_ip() {
    let s = server().await;
    let web = StaticServer::start().await.unwrap();
    let mut t = corpus_template(&s, &web, false).await;
    let c = client(&s);
    group(&c, "net", "westus2").await;
    group(&c, "net-east", "eastus").await;
    for (rg, loc) in [("net", "westus2"), ("net-east", "eastus")] {
        let vnet = format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/corp");
        c.put(
            &vnet,
            aib_azure::NETWORK_API,
            &json!({"location": loc, "properties": {"addressSpace": {"addressPrefixes": ["10.1.0.0/16"]},
                    "subnets": [{"name": "builds", "properties": {"addressPrefix": "10.1.2.0/24"}}]}}),
        )
        .await
        .unwrap();
    }
    let subnet =
        |rg: &str| format!("/subscriptions/{SUB}/resourceGroups/{rg}/providers/Microsoft.Network/virtualNetworks/corp/subnets/builds");
    t.properties.vm_profile.get_or_insert_default().vnet_config =
        Some(aib_core::template::VnetConfig { subnet_id: Some(subnet("net-east")), ..Default::default() });
    let (report, _) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Failed);
    assert!(report.message.contains("vmProfile.vnetConfig.subnetId") && report.message.contains("eastus"), "{}", report.message);

    t.properties.vm_profile.get_or_insert_default().vnet_config =
        Some(aib_core::template::VnetConfig { subnet_id: Some(subnet("net")), ..Default::default() });
    let before = s.requests().len();
    let (report, _) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);
    let puts: Vec<String> = s.requests()[before..].iter().filter(|r| r.starts_with("PUT")).cloned().collect();
    assert!(puts.iter().any(|r| r.contains("/networkInterfaces/")), "{puts:?}");
    assert!(
        !puts.iter().any(|r| r.contains("/publicIPAddresses/") || r.contains("/virtualNetworks/") || r.contains("/networkSecurityGroups/")),
        "only a NIC in the given subnet: {puts:?}"
    );
    let left: Vec<String> = leaked(&s).into_iter().filter(|id| !id.contains("/resourceGroups/net")).collect();
    assert_eq!(left, Vec::<String>::new());
}

#[tokio::test]
async fn a_target_outside_the_build_region_fails_the_preflight_before_any_vm() {
    let s = server().await;
    let web = StaticServer::start().await.unwrap();
    let mut t = corpus_template(&s, &web, false).await;
    // The managed image target in another region than the template's `location`.
    let managed = t.properties.distribute.iter().position(|d| d.run_output_name() == "managed").unwrap();
    if let aib_core::template::DistributorSpec::ManagedImage(m) = &mut t.properties.distribute[managed] {
        m.location = "eastus".into();
    }
    let (report, _) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Failed);
    let field = format!("properties.distribute[{managed}].location");
    assert!(report.message.contains(&field) && report.message.contains("own region"), "{}", report.message);
    assert_eq!(report.error.as_ref().map(|e| e.step.as_str()), Some("preflight"));
    assert!(!s.requests().iter().any(|r| r.starts_with("PUT") && r.contains("/virtualMachines/")), "no build VM was created");
    assert_eq!(leaked(&s), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhd_without_uri_outlives_a_per_run_staging_group() {
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let (s, store) = server_with_storage(&azurite).await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, true).await;
    let (report, events) = build_with(provisioner(&s).keep_staging_group(false), &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}", report.message);
    let vhd = report.run_outputs.iter().find(|o| o.name == "vhd").and_then(|o| o.artifact_uri.clone()).expect("a VHD uri");
    // The group holding the VHD's account is kept (and said so); the build VM's resources are gone.
    // The staging account still exists, and so does the VHD in it.
    let account = storage_account(&s);
    let group = account.split("/providers/").next().unwrap().to_string();
    assert!(s.group_ids().iter().any(|g| g.eq_ignore_ascii_case(&group)), "{group} was deleted with the VHD's account");
    let said =
        events.iter().any(|e| matches!(e, Event::Notice { message, .. } if message.contains("staging group") && message.contains("kept")));
    assert!(said, "the kept group is said");
    assert_eq!(leaked(&s), Vec::<String>::new());
    assert!(report.leftover_resources.is_empty(), "{:?}", report.leftover_resources);
    // The VHD itself is there after the run: a deleted group would have taken its blobs along.
    let blob = vhd_blob(&s, &store, &vhd);
    let props = blob.get_properties().await.expect("the VHD outlives the run").blob.properties;
    assert_eq!(props.content_length, aib_testkit::arm::storage::EXPORT_CAP + 512);
    // Deleting the group now deletes the account and the VHD in it (the server's rule, which
    // the kept group above is measured against).
    let direct = in_azurite(&azurite, &store, &account).blob_service_client();
    client(&s).delete(&group, "2021-04-01").await.unwrap();
    assert!(blob.get_properties().await.is_err(), "a deleted account's endpoint still answers");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = direct.list_containers().into_stream().next().await.unwrap().unwrap();
        if page.containers.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the deleted account's containers are still in Azurite: {:?}", store.stats());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staging_account_without_shared_key_access_is_reached_with_entra_tokens() {
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let store = AzuriteDisks::with_accounts(&azurite, 1).await.unwrap().refusing_shared_key();
    let s = server().await.with_disk_store(Arc::new(store.clone()));
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, true).await;
    let (report, events) = build(&s, &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:?}", report.message, report.log_tail);
    let stats = store.stats();
    assert_eq!(stats.shared_key_refused, 0, "a Shared Key request reached an account that refuses them");
    assert!(stats.bearer_requests >= 3, "container, copy and status reads with a token: {stats:?}");
    let account = s.resource(&storage_account(&s)).unwrap();
    assert_eq!(account["properties"]["allowSharedKeyAccess"], false, "the policy's setting is what ARM answers");
    assert!(!s.requests().iter().any(|r| r.contains("/listKeys")), "no key is read for an account that takes none");
    let said = events.iter().any(|e| matches!(e, Event::Output { line, .. } if line.contains("allows no Shared Key access")));
    assert!(said, "the token path is said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vhd_uri_without_storage_keys_is_written_with_entra_tokens() {
    assert!(
        std::env::var_os("AZURE_STORAGE_KEY").is_none() && std::env::var_os("AZURE_STORAGE_SAS_TOKEN").is_none(),
        "unset AZURE_STORAGE_KEY and AZURE_STORAGE_SAS_TOKEN for this test: it checks the path taken without them"
    );
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let store = AzuriteDisks::with_accounts(&azurite, 0).await.unwrap();
    let s = server().await.with_disk_store(Arc::new(store.clone()));
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, false).await;
    // The operator's own account, which allows no Shared Key access.
    let c = client(&s);
    group(&c, "vhds", "westus2").await;
    let id = format!("/subscriptions/{SUB}/resourceGroups/vhds/providers/Microsoft.Storage/storageAccounts/contosovhds");
    let body =
        json!({"location": "westus2", "sku": {"name": "Standard_LRS"}, "kind": "StorageV2", "properties": {"allowSharedKeyAccess": false}});
    c.put(&id, "2023-01-01", &body).await.unwrap();
    let endpoint = c.get(&id, "2023-01-01").await.unwrap()["properties"]["primaryEndpoints"]["blob"].as_str().unwrap().to_string();
    let container = in_azurite(&azurite, &store, &id).container_client("vhds");
    container.create().await.unwrap();
    let uri = format!("{endpoint}vhds/image.vhd");
    let mut v = t.to_json_value();
    v["properties"]["distribute"].as_array_mut().unwrap().push(json!({"type": "VHD", "runOutputName": "vhd", "uri": uri}));
    let t = ImageTemplate::from_json(&v.to_string()).unwrap().template;
    let front = endpoint.trim_end_matches('/').rsplit_once('/').unwrap().0.to_string();
    let (report, _) = build_on(AzureBackend::builder().provisioner(provisioner(&s)).storage_endpoint(front), &t, |b| b).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:?}", report.message, report.log_tail);
    assert!(store.stats().bearer_requests > 0 && store.stats().shared_key_refused == 0, "{:?}", store.stats());
    let out = report.run_outputs.iter().find(|o| o.name == "vhd").and_then(|o| o.artifact_uri.clone());
    assert_eq!(out.as_deref(), Some(uri.as_str()));
    let props = container.blob_client("image.vhd").get_properties().await.unwrap().blob.properties;
    assert_eq!(props.content_length, aib_testkit::arm::storage::EXPORT_CAP + 512);
}
