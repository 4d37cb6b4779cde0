//! The WinRM communicator and the Windows customizers over the real WS-Management wire
//! protocol, against the test server; the machine is a small fake Windows that understands
//! what aib sends it.

use aib_core::template::ImageTemplate;
use aib_core::{
    AccessInfo, Backend, BuildVm, CapturedImage, Communicator, Customizer, Error, Event, ExecRequest, MemorySink, Pipeline,
    ProvisionRequest, Provisioner, Reclaim, ResolvedImage, ResourceRecord, RunState, Scope, StepContext, UploadRequest,
};
use aib_customizers::fetch::{Fetcher, sha256_hex};

/// Downloads from this test's web server on the loopback.
fn web_fetcher() -> Fetcher {
    Fetcher::new().with_allowed_network(aib_testkit::http::loopback())
}
use aib_customizers::winrm::{WinRmAuth, WinRmCommunicator, WinRmConfig, WinRmTransport};
use aib_customizers::{PowerShellCustomizer, ScriptSource, WindowsRestartCustomizer, WindowsUpdateCustomizer};
use aib_testkit::conformance::{self, Capabilities};
use aib_testkit::http::StaticServer;
use aib_testkit::tls::TlsFront;
use aib_testkit::windows::FakeWindows;
use aib_testkit::winrm::{WinRmReply, WinRmServer};
use async_trait::async_trait;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

async fn server() -> (WinRmServer, FakeWindows) {
    let m = FakeWindows::new();
    let s = WinRmServer::start("packer", "P@ss'w0rd", m.handler()).await.unwrap();
    (s, m)
}

fn config(s: &WinRmServer, password: &str) -> WinRmConfig {
    WinRmConfig::builder()
        .host("127.0.0.1")
        .port(s.port())
        .credentials("packer", password)
        .transport(WinRmTransport::Http)
        .auth(WinRmAuth::Basic)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn ctx(step: &str) -> (StepContext, MemorySink) {
    StepContext::capturing(step).unwrap()
}

fn stdout(sink: &MemorySink) -> Vec<String> {
    sink.stdout()
}

#[test]
fn the_fake_machine_speaks_aibs_protocol() {
    assert_eq!(aib_testkit::windows::TASK_EXIT_MARK, aib_customizers::windows::TASK_EXIT_MARK);
    assert_eq!(aib_testkit::windows::BOOT_ID_COMMAND, aib_customizers::windows::BOOT_ID_COMMAND);
}

#[tokio::test]
async fn a_dropped_command_closes_its_shell() {
    let (s, _) = server().await;
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    // A cancelled run drops the command's future mid-wait: the shell must still go.
    let sink = MemorySink::new();
    let cut = tokio::time::timeout(Duration::from_millis(300), c.execute(&ExecRequest::new("Start-Sleep -Seconds 60"), &sink)).await;
    assert!(cut.is_err(), "the command was still running when dropped");
    let mut waited = 0;
    while s.open_shells() > 0 && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert_eq!(s.open_shells(), 0, "the dropped command's shell was deleted");
}

#[tokio::test]
async fn passes_the_communicator_conformance_suite_over_the_wire() {
    let (s, _) = server().await;
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    conformance::communicator(&c, &Capabilities::windows_winrm()).await;
    assert_eq!(s.open_shells(), 0, "every shell is deleted");
    assert!(format!("{c:?}").contains("***") && !format!("{c:?}").contains("P@ss"));
}

#[tokio::test]
async fn bad_credentials_fail_fast() {
    let (s, _) = server().await;
    let err = WinRmCommunicator::connect(config(&s, "wrong")).await.unwrap_err();
    assert!(matches!(err, Error::Unauthenticated { .. }), "{err}");
    assert!(s.rejected_auth() >= 1);
    assert!(WinRmConfig::builder().host("h").credentials("u", "p").upload_chunk(100).build().is_err());
}

#[tokio::test]
async fn chunked_uploads_are_checked_whole() {
    let (s, m) = server().await;
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let n = c.upload(&UploadRequest::bytes(data.clone(), r"C:\Windows\Temp\blob.bin")).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(m.state().files[r"C:\Windows\Temp\blob.bin"], data);
    assert!(!m.state().files.contains_key(r"C:\Windows\Temp\blob.bin.aib-part"), "the part file became the file");
    let chunks = s.commands().iter().filter(|c| c.script.as_deref().is_some_and(|s| s.contains("'Append'"))).count();
    assert_eq!(chunks, 7, "32 KiB chunks");
}

#[tokio::test]
async fn powershell_customizer_exit_codes_elevation_and_scripts() {
    let (s, m) = server().await;
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    let (cx, sink) = ctx("customize[0] inline");
    PowerShellCustomizer::new(ScriptSource::Inline(vec!["Write-Output 'hello'".into(), "exit 3010".into()]))
        .with_valid_exit_codes(vec![0, 3010])
        .run(&c, &cx)
        .await
        .unwrap();
    assert_eq!(stdout(&sink), vec!["hello"]);
    assert!(m.state().files.keys().all(|k| !k.contains("aib-script")), "the script is removed");

    let (cx, _) = ctx("customize[1] fails");
    let err = PowerShellCustomizer::new(ScriptSource::Inline(vec!["[Console]::Error.WriteLine('disk full')".into(), "exit 5".into()]))
        .run(&c, &cx)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::StepFailed { exit_code: Some(5), .. })
            && err.to_string().contains("disk full")
            && err.to_string().contains("[0]"),
        "{err}"
    );

    let (cx, sink) = ctx("customize[2] system");
    PowerShellCustomizer::new(ScriptSource::Inline(vec!["Write-Output 'as system'".into()])).as_system().run(&c, &cx).await.unwrap();
    assert!(stdout(&sink).contains(&"as system".to_string()));
    let (cx, _) = ctx("customize[3] elevated");
    PowerShellCustomizer::new(ScriptSource::Inline(vec!["Write-Output 'elevated'".into()])).elevated().run(&c, &cx).await.unwrap();
    assert_eq!(m.state().task_principals, vec!["SYSTEM".to_string(), "packer".to_string()]);

    let web = StaticServer::start().await.unwrap();
    let body = "Write-Output 'from uri'\r\nexit 1";
    let url = web.put("script.ps1", body);
    let (cx, sink) = ctx("customize[4] uri");
    PowerShellCustomizer::new(ScriptSource::Uri { uri: url.clone(), sha256: Some(sha256_hex(body.as_bytes())) })
        .with_fetcher(web_fetcher())
        .with_valid_exit_codes(vec![0, 1])
        .run(&c, &cx)
        .await
        .unwrap();
    assert_eq!(stdout(&sink), vec!["from uri"]);
    let before = s.commands().len();
    let (cx, _) = ctx("customize[5] tampered");
    let err = PowerShellCustomizer::new(ScriptSource::Uri { uri: url, sha256: Some("f".repeat(64)) })
        .with_fetcher(web_fetcher())
        .run(&c, &cx)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }));
    assert_eq!(s.commands().len(), before, "nothing reached the machine");
}

#[tokio::test]
async fn windows_restart_waits_for_a_new_boot_and_retries_1115() {
    let (s, m) = server().await;
    m.state().restart_refusals = VecDeque::from([1115, 1115]);
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    let r = WindowsRestartCustomizer::default()
        .with_check("Write-Output 'restarted.'")
        .with_timeout(Duration::from_secs(30))
        .with_poll_interval(Duration::from_millis(100));
    let (cx, sink) = ctx("customize[0] restart");
    r.run(&c, &cx).await.unwrap();
    assert_eq!(s.boots(), 1, "it went down and came back once");
    assert_eq!(m.state().restarts, 1);
    assert!(stdout(&sink).contains(&"restarted.".to_string()));
    assert!(c.execute(&ExecRequest::new("Write-Output 'after'"), &MemorySink::new()).await.unwrap().success());

    // A restart that never happens times out with the step named.
    m.state().restart_refusals = VecDeque::from(vec![1115; 1000]);
    let (cx, _) = ctx("customize[1] stuck");
    let err = r.clone().with_timeout(Duration::from_secs(1)).run(&c, &cx).await.unwrap_err();
    assert!(err.to_string().contains("1115") || matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn windows_update_loops_until_nothing_is_pending() {
    let (s, m) = server().await;
    m.state().update_rounds = VecDeque::from([
        WinRmReply::output(
            "aib-wu:found 2\naib-wu:installed 2 KB5001 Cumulative Update\naib-wu:installed 2 KB5002 .NET Update\naib-wu:reboot-required\n",
            101,
        ),
        WinRmReply::output("aib-wu:found 1\naib-wu:installed 2 KB5003 Defender Update\n", 102),
        WinRmReply::output("aib-wu:found 0\n", 0),
    ]);
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    let restart = WindowsRestartCustomizer::default().with_poll_interval(Duration::from_millis(100)).with_timeout(Duration::from_secs(30));
    let u = WindowsUpdateCustomizer::default()
        .with_filters(&["exclude:$_.Title -like '*Preview*'".into(), "include:$true".into()])
        .unwrap()
        .with_limit(10)
        .with_restart(restart);
    let (cx, sink) = ctx("customize[0] updates");
    u.run(&c, &cx).await.unwrap();
    let out = stdout(&sink);
    assert!(
        out.iter().any(|l| l == "aib: installed 3 update(s): KB5001 Cumulative Update; KB5002 .NET Update; KB5003 Defender Update"),
        "{out:#?}"
    );
    assert_eq!(s.boots(), 1, "one restart between rounds");
    let m = m.state();
    assert_eq!(m.update_scripts.len(), 3);
    assert!(
        m.update_scripts[0].contains("$limit = 10") && m.update_scripts[1].contains("$limit = 8"),
        "the limit counts what was installed"
    );
    assert!(m.update_scripts[0].contains("Test = { $_.Title -like '*Preview*' }") && m.update_scripts[0].contains("Include = $false"));
    assert!(m.update_scripts[0].contains("'BrowseOnly=0 and IsInstalled=0'"));
}

#[derive(Debug)]
struct WinRmProvisioner {
    port: u16,
}

impl std::fmt::Display for WinRmProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WinRmProvisioner({})", self.port)
    }
}

#[async_trait]
impl Reclaim for WinRmProvisioner {
    fn backend(&self) -> &'static str {
        "winrm-server"
    }
    async fn delete(&self, _record: &ResourceRecord) -> aib_core::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Provisioner for WinRmProvisioner {
    async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> aib_core::Result<BuildVm> {
        let id = ctx.record(ResourceRecord::new("winrm-server", "vm", format!("127.0.0.1:{}", self.port), Scope::BuildVm))?;
        assert_eq!(req.image.source_type, "ManagedImage");
        Ok(BuildVm::new("win", id, aib_core::Platform::Windows, AccessInfo::new("winrm", "127.0.0.1", self.port, "packer", "")))
    }
    async fn connect(&self, _vm: &BuildVm, _ctx: &StepContext) -> aib_core::Result<Arc<dyn Communicator>> {
        let cfg = WinRmConfig::builder()
            .host("127.0.0.1")
            .port(self.port)
            .credentials("packer", "P@ss'w0rd")
            .transport(WinRmTransport::Http)
            .auth(WinRmAuth::Basic)
            .build()?;
        Ok(Arc::new(WinRmCommunicator::connect(cfg).await?))
    }
    async fn generalize(&self, _vm: &BuildVm, _comm: &(dyn Communicator + 'static), _ctx: &StepContext) -> aib_core::Result<()> {
        Ok(())
    }
    async fn capture(&self, _vm: &BuildVm, ctx: &StepContext) -> aib_core::Result<CapturedImage> {
        Ok(CapturedImage::new(format!("{}-disk", ctx.run.run_id()), "vhd", "winrm://disk", ResolvedImage::default()))
    }
}

#[tokio::test]
async fn the_windows_corpus_template_runs_over_winrm() {
    let (s, m) = server().await;
    m.state().update_rounds =
        VecDeque::from([WinRmReply::output("aib-wu:found 1\naib-wu:installed 2 KB5010 Monthly Rollup\naib-wu:reboot-required\n", 101)]);
    let web = StaticServer::start().await.unwrap();
    let script = "Write-Output 'script from uri'\r\nexit 1";
    let url = web.put("script.ps1", script);
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../aib-core/tests/corpus/rest-api-examples/azure-rest-api-specs__stable_2025-10-01__CreateImageTemplateWindows.json"
    );
    let text = std::fs::read_to_string(path).unwrap().replace("https://example.com/path/to/script.ps1", &url);
    let template = ImageTemplate::from_json(&text).unwrap().template;

    let fakes = aib_testkit::FakeBackend::new();
    let backend = Backend::new(
        Arc::new(WinRmProvisioner { port: s.port() }),
        fakes.backend().registry.merge(aib_customizers::registry_with(web_fetcher())),
    );
    let pipeline = Pipeline::from_template(&template, &backend).unwrap().build().unwrap();
    let mut run = pipeline.start();
    let events: Vec<Event> = run.events().collect().await;
    let report = run.wait().await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:#?}", report.message, report.log_tail);
    let lines: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { step, line, .. } => Some(format!("[{step}] {line}")),
            _ => None,
        })
        .collect();
    assert!(lines.iter().any(|l| l == "[customize[3] PowerShell (script) Customizer Example] script from uri"), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("[customize[6] Restart Customizer Example] aib: the machine restarted")));
    assert!(
        lines.iter().any(|l| l == "[customize[7] Windows Update Customizer Example] aib: installed 1 update(s): KB5010 Monthly Rollup")
    );
    assert_eq!(s.boots(), 2, "the restart step, and one restart for the updates");
    let principals = m.state().task_principals.clone();
    // runAsSystem steps and every Windows Update round run as SYSTEM; runElevated ones as the user.
    let rounds = m.state().update_scripts.len();
    assert!(rounds >= 1);
    assert_eq!(principals.iter().filter(|p| *p == "SYSTEM").count(), 2 + rounds, "{principals:?}");
    assert!(principals.iter().any(|p| p == "packer"), "{principals:?}");
    // The password is in no script the machine ran: elevation goes through S4U, not a stored one.
    for c in s.commands() {
        let text = format!("{} {:?} {}", c.command, c.args, c.script.unwrap_or_default());
        assert!(!text.contains("P@ss'w0rd") && !text.contains("P@ss''w0rd"), "the password is in a command: {text}");
    }
}

fn pinned(port: u16, pin: [u8; 32]) -> WinRmConfig {
    WinRmConfig::builder()
        .host("127.0.0.1")
        .port(port)
        .credentials("packer", "P@ss'w0rd")
        .transport(WinRmTransport::HttpsPinnedCertificate(pin))
        .auth(WinRmAuth::Basic)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_pinned_https_listener_is_reached_and_any_other_certificate_refused() {
    let (s, _) = server().await;
    let front = TlsFront::start("127.0.0.1", 0, s.port()).await.unwrap();
    let (port, pin) = (front.port(), front.fingerprint());
    let c = WinRmCommunicator::connect(pinned(port, pin)).await.unwrap();
    conformance::communicator(&c, &Capabilities::windows_winrm()).await;
    drop(c);
    let mut other = pin;
    other[0] ^= 0xff;
    let started = std::time::Instant::now();
    let err = WinRmCommunicator::connect(pinned(port, other)).await.unwrap_err();
    let source = std::error::Error::source(&err).map(|s| s.to_string()).unwrap_or_default();
    assert!(matches!(err, Error::PermissionDenied { .. }) && source.contains("not the pinned one"), "{err}: {source}");
    assert!(started.elapsed() < Duration::from_secs(5), "a wrong certificate fails at once, not at the deadline");
}

#[tokio::test]
async fn powershell_steps_pass_the_customizer_conformance_suite() {
    let (s, _) = server().await;
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    let failing = PowerShellCustomizer::new(ScriptSource::Inline(vec!["Write-Output 'before'".into(), "exit 5".into()]));
    let printing = PowerShellCustomizer::new(ScriptSource::Inline(vec!["Write-Output 'conformance-marker'".into()]));
    conformance::customizer(&failing, &printing, "conformance-marker", &c).await;
}
