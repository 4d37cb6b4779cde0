//! Windows build VMs on Azure against the ARM test server: the generated password, WinRM over
//! HTTPS to the certificate learnt through Run Command, the Windows customizers, and Sysprep
//! through Run Command after the listener is removed. The VMs' guests are the testkit's fake
//! Windows machines behind a real WS-Management server and TLS (needs `openssl`).

use aib_azure::{AzureBackend, AzureProvisioner, AzureSource, staging_group_name};
use aib_core::template::{ImageSource, ImageTemplate, PlatformImageSource};
use aib_core::{Event, Pipeline, Platform, ResolveRequest, RunState, Source, StepContext};
use aib_testkit::arm::ArmServer;
use aib_testkit::conformance::{self, Capabilities};
use aib_testkit::http::StaticServer;
use aib_testkit::windows::{GENERALIZED, WindowsGuests};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{RG, SUB, client, group, leaked, request};

async fn server() -> (ArmServer, WindowsGuests) {
    let guests = WindowsGuests::new().unwrap_or_else(|e| panic!("{e}"));
    let s = ArmServer::start_with_guests(0, None, Some(Arc::new(guests.clone()))).await.unwrap();
    for region in ["westus2", "eastus"] {
        s.add_marketplace_image(region, "MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter", "17763.6893.250210");
        s.add_marketplace_image(region, "MicrosoftWindowsServer", "WindowsServer", "2019-Datacenter", "17763.6532.241101");
    }
    (s, guests)
}

fn provisioner(s: &ArmServer) -> aib_azure::AzureProvisionerBuilder {
    AzureProvisioner::builder()
        .arm(client(s))
        .subscription(SUB)
        .resource_group(RG)
        .winrm_port(s.windows_guest_port().unwrap())
        .allowed_source("127.0.0.1/32")
        .connect_timeout(Duration::from_secs(30))
}

fn windows_server() -> ImageSource {
    ImageSource::PlatformImage(PlatformImageSource {
        publisher: Some("MicrosoftWindowsServer".into()),
        offer: Some("WindowsServer".into()),
        sku: Some("2019-Datacenter".into()),
        version: Some("latest".into()),
        plan_info: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_windows_provisioner_passes_the_conformance_suite() {
    let (s, guests) = server().await;
    let source = AzureSource::new(client(&s), SUB);
    let req = ResolveRequest::new(windows_server()).with_location("westus2");
    let image = source.resolve(&req, &StepContext::detached("resolve").unwrap()).await.unwrap();
    assert_eq!((image.platform, image.exact_version.as_deref()), (Platform::Windows, Some("17763.6893.250210")));
    let p = provisioner(&s).build().unwrap();
    conformance::provisioner(&p, &request(image, "westus2"), &Capabilities::windows_winrm()).await;
    assert_eq!(leaked(&s), Vec::<String>::new(), "the build resources are gone");
    assert_eq!(s.running_guests(), 0);
    let machines = guests.machines();
    assert_eq!(machines.len(), 1);
    let m = machines[0].1.state();
    assert_eq!(m.image_state, GENERALIZED, "Sysprep ran");
    assert!(!m.https_listener, "the listener was removed before the image was taken");
    assert_eq!(m.run_commands.len(), 2, "one Run Command sets WinRM up, one removes it and runs Sysprep");
    let cleanup = &m.run_commands[1];
    assert!(cleanup.contains("Set-Item -Path WSMan:\\localhost\\Service\\Auth\\Basic -Value $basic"), "Basic is put back");
    assert!(cleanup.contains("Remove-Item -DeleteKey"), "the certificate goes with its private key");
    let pw = &m.admin_password;
    assert!(pw.len() >= 12 && pw.chars().any(|c| !c.is_ascii_alphanumeric()), "a generated password meets ARM's rule");
    assert_eq!(m.admin_user, "aib");
}

/// The corpus's Windows Shared Image Gallery template (a deployment template), parameters and
/// placeholders filled, downloads served here.
async fn corpus_template(s: &ArmServer, web: &StaticServer, tweak: impl FnOnce(&mut Value)) -> ImageTemplate {
    group(&client(s), RG, "westus2").await;
    let def = format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/aibgallery/images/win2019");
    s.put_resource(
        &def,
        json!({"location": "westus2", "properties": {"osType": "Windows", "osState": "Generalized", "hyperVGeneration": "V1",
                                        "identifier": {"publisher": "contoso", "offer": "windows", "sku": "v1"}}}),
    );
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../aib-core/tests/corpus/quickstarts/azvmimagebuilder__quickquickstarts__1_Creating_a_Custom_Win_Shared_Image_Gallery_Image__armTemplateWinSIG.json"
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let props = &mut v["resources"][0]["properties"];
    props["customize"][0]["scriptUri"] =
        web.put("testPsScript.ps1", "mkdir c:\\buildArtifacts\r\nWrite-Output 'build path created'\r\n").into();
    props["customize"][2]["sourceUri"] = web.put("index.html", "<h1>hello from aib</h1>\n").into();
    tweak(props);
    let text = aib_testkit::corpus::fill_placeholders(
        &v.to_string(),
        SUB,
        RG,
        &[
            ("[parameters('imageTemplateName')]", "helloImageTemplateWinSIG"),
            ("[parameters('svclocation')]", "westus2"),
            ("[parameters('api-version')]", "2022-02-14"),
            ("<region1>", "westus2"),
            ("<region2>", "eastus"),
            ("<sharedImageGalName>", "aibgallery"),
            ("<imageDefName>", "win2019"),
            ("<runOutputName>", "sig"),
        ],
    );
    ImageTemplate::from_json(&text).unwrap_or_else(|e| panic!("{e}")).template
}

async fn build(s: &ArmServer, t: &ImageTemplate) -> (aib_core::RunReport, Vec<Event>) {
    let backend = AzureBackend::builder().provisioner(provisioner(s)).allow_source_network(aib_testkit::http::loopback()).build().unwrap();
    let pipeline = Pipeline::from_template(t, &backend.backend()).unwrap().build().unwrap();
    let mut run = pipeline.start();
    let events: Vec<Event> = run.events().collect().await;
    (run.wait().await, events)
}

fn output_lines(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Output { step, line, .. } => Some(format!("[{step}] {line}")),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_windows_template_builds_a_gallery_version_in_two_regions() {
    let (s, guests) = server().await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, |_| ()).await;
    let before = s.requests().len();
    let (report, events) = build(&s, &t).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:?}", report.message, report.log_tail);
    let reqs = &s.requests()[before..];
    eprintln!("Windows build against the ARM test server: {} ARM requests", reqs.len());
    for st in &report.steps {
        eprintln!("  {:<45} {:>8.2?}", st.name, st.duration);
    }
    assert_eq!(reqs.iter().filter(|r| r.starts_with("POST") && r.contains("/runCommand")).count(), 2, "{reqs:#?}");

    let version =
        format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/galleries/aibgallery/images/win2019/versions/1.0.0");
    assert_eq!(report.run_outputs[0].artifact_id.as_deref(), Some(version.as_str()));
    let v = s.resource(&version).unwrap();
    let regions: Vec<&str> =
        v["properties"]["publishingProfile"]["targetRegions"].as_array().unwrap().iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(regions.len(), 2, "{regions:?}");

    let lines = output_lines(&events);
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    assert!(has("] build path created"), "the scriptUri ran: {lines:#?}");
    assert!(has("aib: the machine restarted"), "{lines:#?}");
    assert!(has(&format!("aib: ImageState {GENERALIZED}")), "Sysprep's output is in the log: {lines:#?}");

    let machines = guests.machines();
    let m = machines[0].1.state();
    assert_eq!(m.files.get("c:\\buildArtifacts\\index.html").map(Vec::as_slice), Some(&b"<h1>hello from aib</h1>\n"[..]));
    assert_eq!(m.restarts, 1);
    assert_eq!(m.image_state, GENERALIZED);
    assert!(!m.https_listener);
    // The password reached the VM, and nothing else: not the events, not the report.
    let everything = format!("{events:?}\n{report:?}\n{}", serde_json::to_string(&report).unwrap());
    assert!(!everything.contains(&m.admin_password), "the password was shown");

    assert_eq!(leaked(&s), Vec::<String>::new());
    assert_eq!(s.running_guests(), 0);
    let staging = staging_group_name(SUB, RG, "helloImageTemplateWinSIG");
    assert!(s.group_ids().iter().any(|g| g.ends_with(&staging)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_keeps_the_windows_vm_and_says_how_to_reach_it_without_the_password() {
    let (s, guests) = server().await;
    let web = StaticServer::start().await.unwrap();
    let t = corpus_template(&s, &web, |p| {
        p["customize"] = json!([{"type": "PowerShell", "name": "fails", "inline": ["exit 7"]}]);
        p["errorHandling"] = json!({"onCustomizerError": "abort"});
    })
    .await;
    let (report, _) = build(&s, &t).await;
    assert_eq!(report.run_state, RunState::Failed, "{}", report.message);
    let kept = report.kept_vm.as_ref().expect("abort keeps the VM");
    assert_eq!((kept.protocol.as_str(), kept.user.as_str()), ("winrm", "aib"));
    assert!(kept.command.contains("az vm user update") && kept.command.contains("-UseSSL"), "{}", kept.command);
    let m = guests.machines()[0].1.clone();
    assert!(!format!("{report:?}").contains(&m.state().admin_password));
    assert!(m.state().https_listener, "the kept VM can still be reached over HTTPS");
    assert_eq!(s.running_guests(), 1);
}
