//! Linux customizers over real SSH against the sshd harness, and a corpus template run end
//! to end through the pipeline.

use aib_core::template::ImageTemplate;
use aib_core::{
    AccessInfo, Backend, BuildVm, CapturedImage, Communicator, Customizer, Error, Event, MemorySink, Pipeline, ProvisionRequest,
    Provisioner, Reclaim, ResolvedImage, ResourceRecord, RunState, Scope, StepContext,
};
use aib_customizers::fetch::{Fetcher, sha256_hex};
use aib_customizers::ssh::{HostKeyCheck, SshCommunicator, SshConfig, ephemeral_key, public_key_line};
use aib_customizers::{FileCustomizer, ScriptSource, ShellCustomizer};
use aib_testkit::http::StaticServer;
use aib_testkit::sshd::Sshd;
use async_trait::async_trait;
use futures::StreamExt;
use std::sync::Arc;

async fn connect(sshd: &Sshd) -> SshCommunicator {
    let key = ephemeral_key().unwrap();
    sshd.authorize(&public_key_line(&key, "aib").unwrap()).unwrap();
    let cfg = SshConfig::builder()
        .host("127.0.0.1")
        .port(sshd.port())
        .user(sshd.user())
        .key(key)
        .host_key(HostKeyCheck::Fingerprint(sshd.host_fingerprint().unwrap()))
        .build()
        .unwrap();
    SshCommunicator::connect(cfg).await.unwrap()
}

/// Downloads from this test's web server on the loopback.
fn web_fetcher() -> Fetcher {
    Fetcher::new().with_allowed_network(aib_testkit::http::loopback())
}

fn start() -> Sshd {
    Sshd::start().unwrap_or_else(|e| panic!("{e}"))
}

fn ctx(step: &str) -> (StepContext, MemorySink) {
    StepContext::capturing(step).unwrap()
}

fn stdout(sink: &MemorySink) -> Vec<String> {
    sink.stdout()
}

#[tokio::test]
async fn environment_values_stay_out_of_command_lines_and_uploads_are_private_from_the_start() {
    use aib_core::{Communicator, ExecRequest, UploadRequest};
    let sshd = start();
    let comm = connect(&sshd).await;
    let marker = "env-value-5be1 with 'quotes' and $dollars";
    let req =
        ExecRequest::new("tr '\\0' ' ' < /proc/$$/cmdline; echo; printf 'v=%s\\n' \"$AIB_TEST_VALUE\"").with_env("AIB_TEST_VALUE", marker);
    let sink = MemorySink::new();
    assert!(comm.execute(&req, &sink).await.unwrap().success(), "{:?}", sink.lines());
    let lines = sink.stdout();
    assert!(lines.contains(&format!("v={marker}")), "the command sees its environment: {lines:?}");
    assert!(!lines[0].contains("env-value-5be1"), "the value is not in the command line: {}", lines[0]);
    // A script created 0700 is 0700 from its creation (the SFTP open carries the mode).
    let dest = sshd.scratch().join("private.sh");
    comm.upload(&UploadRequest::bytes(b"echo hi".to_vec(), dest.display().to_string()).with_mode(0o700)).await.unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn inline_shell_runs_with_sh_e_semantics_and_names_the_failing_line() {
    let sshd = start();
    let comm = connect(&sshd).await;
    let dir = sshd.scratch();
    // Scripts go to a directory of this test's own (other tests share /tmp).
    let remote = dir.join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let ok =
        ShellCustomizer::new(ScriptSource::Inline(vec!["x=42".into(), "echo \"x is $x\"".into(), format!("touch {}/ok", dir.display())]))
            .with_remote_dir(remote.display().to_string());
    let (c, sink) = ctx("customize[0] ok");
    ok.run(&comm, &c).await.unwrap();
    assert_eq!(stdout(&sink), vec!["x is 42"], "state carries across lines");
    assert!(dir.join("ok").exists());

    let bad = ShellCustomizer::new(ScriptSource::Inline(vec![
        "echo one".into(),
        "ls /definitely-missing".into(),
        format!("touch {}/never", dir.display()),
    ]))
    .with_remote_dir(remote.display().to_string());
    let (c, sink) = ctx("customize[1] bad");
    let err = bad.run(&comm, &c).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::StepFailed { exit_code: Some(2), .. }), "{msg}");
    assert!(msg.contains("customize[1] bad") && msg.contains("inline line 2 (`ls /definitely-missing`)"), "{msg}");
    assert!(msg.contains("No such file or directory"), "the last lines of output are in the error: {msg}");
    assert!(!dir.join("never").exists(), "lines after the failing one never run");
    assert!(stdout(&sink).contains(&"one".to_string()));
    // The uploaded scripts were removed, after success and after failure.
    assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 0, "scripts left behind");
}

#[tokio::test]
async fn script_uri_is_downloaded_checked_then_run() {
    let sshd = start();
    let comm = connect(&sshd).await;
    let web = StaticServer::start().await.unwrap();
    let dir = sshd.scratch();
    let script = format!("#!/bin/sh\necho \"running as $(id -un) with GREETING=$GREETING\"\ntouch {}/ran\n", dir.display());
    let url = web.put("customize.sh", script.clone());
    let good = ShellCustomizer::new(ScriptSource::Uri { uri: url.clone(), sha256: Some(sha256_hex(script.as_bytes())) })
        .with_fetcher(web_fetcher())
        .with_env("GREETING", "hello world");
    let (c, sink) = ctx("customize[0] script");
    good.run(&comm, &c).await.unwrap();
    assert!(dir.join("ran").exists());
    assert_eq!(stdout(&sink), vec![format!("running as {} with GREETING=hello world", sshd.user())]);

    // A wrong checksum: nothing is uploaded, nothing runs.
    std::fs::remove_file(dir.join("ran")).unwrap();
    let remote = dir.join("remote");
    std::fs::create_dir_all(&remote).unwrap();
    let wrong = ShellCustomizer::new(ScriptSource::Uri { uri: url, sha256: Some("0".repeat(64)) })
        .with_fetcher(web_fetcher())
        .with_remote_dir(remote.display().to_string());
    let (c, sink) = ctx("customize[1] tampered");
    let err = wrong.run(&comm, &c).await.unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&sha256_hex(script.as_bytes())), "the actual checksum is reported: {err}");
    assert!(!dir.join("ran").exists(), "a script whose checksum does not match never runs");
    assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 0, "nor is it uploaded");
    assert!(sink.lines().is_empty());

    // A failing script reports its exit code.
    let url = web.put("fail.sh", "#!/bin/sh\necho about to fail >&2\nexit 7\n");
    let (c, _) = ctx("customize[2] fails");
    let err =
        ShellCustomizer::new(ScriptSource::Uri { uri: url, sha256: None }).with_fetcher(web_fetcher()).run(&comm, &c).await.unwrap_err();
    assert!(matches!(err, Error::StepFailed { exit_code: Some(7), .. }) && err.to_string().contains("about to fail"), "{err}");
    // A missing script is NotFound, before anything runs.
    let (c, _) = ctx("customize[3] missing");
    let err = ShellCustomizer::new(ScriptSource::Uri { uri: format!("{}/nope.sh", web.put("x", "")).replace("/x/", "/"), sha256: None })
        .with_fetcher(web_fetcher())
        .run(&comm, &c)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test]
async fn file_customizer_follows_aib_rules() {
    let sshd = start();
    let comm = connect(&sshd).await;
    let web = StaticServer::start().await.unwrap();
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let url = web.put("artifact.bin", content.clone());
    let sum = sha256_hex(&content);
    let dest_dir = format!("/tmp/aib-file-test-{}", std::process::id());
    std::fs::create_dir_all(&dest_dir).unwrap();
    let dest = format!("{dest_dir}/artifact.bin");

    let (c, sink) = ctx("customize[0] file");
    FileCustomizer::new(url.clone(), dest.clone(), Some(sum.clone())).with_fetcher(web_fetcher()).run(&comm, &c).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), content);
    assert!(stdout(&sink).iter().any(|l| l.contains(&sum)));

    let (c, _) = ctx("customize[1] wrong sum");
    let err = FileCustomizer::new(url.clone(), format!("{dest_dir}/other"), Some("1".repeat(64)))
        .with_fetcher(web_fetcher())
        .run(&comm, &c)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }));
    assert!(!std::path::Path::new(&format!("{dest_dir}/other")).exists());

    let (c, _) = ctx("customize[2] no parent");
    let err = FileCustomizer::new(url.clone(), format!("{dest_dir}/missing/x.bin"), None)
        .with_fetcher(web_fetcher())
        .run(&comm, &c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&format!("{dest_dir}/missing")) && err.to_string().contains("does not exist"), "{err}");

    let (c, _) = ctx("customize[3] outside tmp");
    let err = FileCustomizer::new(url.clone(), "/etc/aib.bin", None).with_fetcher(web_fetcher()).run(&comm, &c).await.unwrap_err();
    assert!(err.to_string().contains("only under /tmp"), "{err}");

    let (c, _) = ctx("customize[4] too big");
    let err = FileCustomizer::new(url, format!("{dest_dir}/big"), None)
        .with_fetcher(web_fetcher().with_max_bytes(1000))
        .run(&comm, &c)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    std::fs::remove_dir_all(&dest_dir).unwrap();
}

/// A provisioner whose "VM" is the sshd harness: it connects for real, and records instead of
/// running the generalization (which must never touch the test machine).
#[derive(Debug)]
struct SshdProvisioner {
    port: u16,
    user: String,
    fingerprint: String,
    sshd: Arc<Sshd>,
    generalized: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Display for SshdProvisioner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SshdProvisioner({})", self.port)
    }
}

#[async_trait]
impl Reclaim for SshdProvisioner {
    fn backend(&self) -> &'static str {
        "sshd-harness"
    }
    async fn delete(&self, _record: &ResourceRecord) -> aib_core::Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Provisioner for SshdProvisioner {
    async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> aib_core::Result<BuildVm> {
        let id = ctx.record(ResourceRecord::new("sshd-harness", "vm", format!("127.0.0.1:{}", self.port), Scope::BuildVm))?;
        let access = AccessInfo::new("ssh", "127.0.0.1", self.port, &self.user, format!("ssh -p {} {}@127.0.0.1", self.port, self.user));
        Ok(BuildVm::new("harness", id, req.image.platform, access))
    }
    async fn connect(&self, _vm: &BuildVm, _ctx: &StepContext) -> aib_core::Result<Arc<dyn Communicator>> {
        let key = ephemeral_key()?;
        self.sshd.authorize(&public_key_line(&key, "aib")?).map_err(|e| Error::generic("sshd-harness", e))?;
        let cfg = SshConfig::builder()
            .host("127.0.0.1")
            .port(self.port)
            .user(&self.user)
            .key(key)
            .host_key(HostKeyCheck::Fingerprint(self.fingerprint.clone()))
            .build()?;
        Ok(Arc::new(SshCommunicator::connect(cfg).await?))
    }
    async fn generalize(&self, vm: &BuildVm, _comm: &(dyn Communicator + 'static), _ctx: &StepContext) -> aib_core::Result<()> {
        self.generalized.lock().unwrap().push(aib_customizers::Generalizer::new(vm.platform).command());
        Ok(())
    }
    async fn capture(&self, _vm: &BuildVm, ctx: &StepContext) -> aib_core::Result<CapturedImage> {
        Ok(CapturedImage::new(format!("{}-disk", ctx.run.run_id()), "raw", "harness://disk", ResolvedImage::default()))
    }
}

#[tokio::test]
async fn a_corpus_linux_template_runs_every_linux_customizer_over_ssh() {
    let sshd = Arc::new(start());
    let web = StaticServer::start().await.unwrap();
    let dir = sshd.scratch();
    let d = dir.display();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../aib-core/tests/corpus/quickstarts/azvmimagebuilder__quickquickstarts__0_Creating_a_Custom_Linux_Managed_Image__helloImageTemplateLinux.json"
    );
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    // Point the downloads at this test's server, and keep the inline lines harmless: they run
    // on the test machine itself.
    let s1 = format!("#!/bin/sh\necho customizeScript ran on $(hostname)\ntouch {d}/script1\n");
    let s2 = format!("#!/bin/sh\necho checksummed script ran\ntouch {d}/script2\n");
    let c = &mut v["properties"]["customize"];
    c[0]["scriptUri"] = web.put("customizeScript.sh", s1).into();
    c[1]["scriptUri"] = web.put("customizeScript2.sh", s2.clone()).into();
    c[1]["sha256Checksum"] = sha256_hex(s2.as_bytes()).into();
    c[2]["sourceUri"] = web.put("index.html", "<h1>hello from aib</h1>\n").into();
    let html = format!("/tmp/aib-corpus-{}-index.html", std::process::id());
    c[2]["destination"] = html.clone().into();
    c[3]["inline"] = serde_json::json!([format!("mkdir -p {d}/buildArtifacts"), format!("cp {html} {d}/buildArtifacts/index.html")]);
    c[4]["inline"] = serde_json::json!(["echo would run: sudo apt install unattended-upgrades"]);
    let text = aib_testkit::corpus::fill_placeholders(
        &v.to_string(),
        "sub",
        "rg",
        &[("<region>", "westus"), ("<imageName>", "img"), ("<runOutputName>", "linux")],
    );
    let template = ImageTemplate::from_json(&text).unwrap().template;

    let fakes = aib_testkit::FakeBackend::new();
    let prov = Arc::new(SshdProvisioner {
        port: sshd.port(),
        user: sshd.user().to_string(),
        fingerprint: sshd.host_fingerprint().unwrap(),
        sshd: sshd.clone(),
        generalized: Default::default(),
    });
    let backend = Backend::new(prov.clone(), fakes.backend().registry.merge(aib_customizers::registry_with(web_fetcher())));
    let log_dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::from_template(&template, &backend).unwrap().log_dir(log_dir.path()).build().unwrap();
    let mut run = pipeline.start();
    let events: Vec<Event> = run.events().collect().await;
    let report = run.wait().await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:?}", report.message, report.log_tail);
    let lines: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Output { step, line, .. } => Some(format!("[{step}] {line}")),
            _ => None,
        })
        .collect();
    assert!(lines.iter().any(|l| l.starts_with("[customize[0] RunScriptFromSource] customizeScript ran on")), "{lines:#?}");
    assert!(lines.iter().any(|l| l == "[customize[1] CheckSumCompareShellScript] checksummed script ran"), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("[customize[2] downloadBuildArtifacts] copied")));
    assert!(lines.iter().any(|l| l == "[customize[4] InstallUpgrades] would run: sudo apt install unattended-upgrades"));
    for f in ["script1", "script2", "buildArtifacts/index.html"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let log = std::fs::read_to_string(report.customization_log.unwrap()).unwrap();
    assert!(log.contains("checksummed script ran") && log.contains("starting step customize[3] setupBuildPath"));
    assert_eq!(prov.generalized.lock().unwrap().len(), 1, "generalization asked for, not run here");
    assert_eq!(
        report.run_outputs[0].artifact_id.as_deref(),
        Some("/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Compute/images/img")
    );
    let _ = std::fs::remove_file(html);
}
