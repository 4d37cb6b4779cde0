//! The WinRM communicator and the Windows customizers over the real WS-Management wire
//! protocol, against the test server; the machine is a small fake Windows that understands
//! what aib sends it.

use aib_core::template::ImageTemplate;
use aib_core::{
    AccessInfo, Backend, BuildVm, CapturedImage, Communicator, Customizer, Error, Event, ExecRequest, MemorySink, Pipeline,
    ProvisionRequest, Provisioner, ResolvedImage, ResourceRecord, RunContext, RunState, Scope, StepContext, UploadRequest,
};
use aib_customizers::fetch::sha256_hex;
use aib_customizers::windows::{BOOT_ID_COMMAND, TASK_EXIT_MARK};
use aib_customizers::winrm::{WinRmAuth, WinRmCommunicator, WinRmConfig, WinRmTransport};
use aib_customizers::{PowerShellCustomizer, ScriptSource, WindowsRestartCustomizer, WindowsUpdateCustomizer};
use aib_testkit::conformance::{self, Capabilities};
use aib_testkit::http::StaticServer;
use aib_testkit::winrm::{WinRmCommand, WinRmReply, WinRmServer};
use async_trait::async_trait;
use base64::Engine;
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The fake machine's state, shared with the test.
#[derive(Default)]
struct Machine {
    files: HashMap<String, Vec<u8>>,
    /// Exit codes the restart command answers before it works (1115 = shutdown in progress).
    restart_refusals: VecDeque<i32>,
    /// Scripted Windows Update rounds.
    wu_rounds: VecDeque<WinRmReply>,
    wu_scripts: Vec<String>,
    task_principals: Vec<String>,
    restarts: u32,
}

fn quoted(s: &str, after: &str) -> Option<String> {
    let i = s.find(after)? + after.len();
    let rest = &s[i..];
    let start = rest.find('\'')? + 1;
    let mut out = String::new();
    let mut chars = rest[start..].chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            return Some(out);
        }
        out.push(c);
    }
    None
}

/// Runs the statements the fake understands; unknown statements succeed silently.
fn interpret(m: &mut Machine, script: &str, out: &mut String, err: &mut String) -> i32 {
    let mut last = 0;
    for stmt in script.split(['\n', ';']).map(str::trim).filter(|s| !s.is_empty()) {
        if let Some(v) = stmt.strip_prefix("Write-Output ").or_else(|| stmt.strip_prefix("echo ")) {
            out.push_str(v.trim().trim_matches('\'').trim_matches('"'));
            out.push('\n');
        } else if stmt.starts_with("[Console]::Error.WriteLine(") {
            err.push_str(&quoted(stmt, "WriteLine(").unwrap_or_default());
            err.push('\n');
        } else if let Some(code) = stmt.strip_prefix("exit ") {
            return if code.trim() == "$LASTEXITCODE" { last } else { code.trim().parse().unwrap_or(1) };
        } else if stmt.starts_with("Get-Content") {
            let p = quoted(stmt, "-LiteralPath").unwrap_or_default();
            match m.files.get(&p) {
                Some(b) => out.push_str(&String::from_utf8_lossy(b)),
                None => return 1,
            }
        } else if let Some(rest) = stmt.strip_prefix("& ") {
            let p = quoted(rest, "").unwrap_or_default();
            let body = m.files.get(&p).cloned().unwrap_or_default();
            last = interpret(m, &String::from_utf8_lossy(&body), out, err);
        } else if stmt.starts_with("Remove-Item")
            && let Some(p) = quoted(stmt, "-LiteralPath")
        {
            m.files.remove(&p);
        }
    }
    last
}

fn machine(m: &Arc<Mutex<Machine>>, cmd: &WinRmCommand, boots: u64) -> WinRmReply {
    let mut m = m.lock().unwrap();
    let Some(script) = cmd.script.clone() else { return WinRmReply::output("", 0) };
    let b64 = base64::engine::general_purpose::STANDARD;
    if script.contains("Register-ScheduledTask") {
        m.task_principals.push(if script.contains("NT AUTHORITY\\SYSTEM") {
            "SYSTEM".into()
        } else {
            quoted(&script, "-User").unwrap_or_default()
        });
        let inner = String::from_utf8(b64.decode(quoted(&script, "FromBase64String(").unwrap()).unwrap()).unwrap();
        if inner.contains("Microsoft.Update.Session") {
            m.wu_scripts.push(inner);
            return m.wu_rounds.pop_front().unwrap_or_else(|| WinRmReply::output("aib-wu:found 0\n", 0));
        }
        let (mut out, mut err) = (String::new(), String::new());
        let code = interpret(&mut m, &inner, &mut out, &mut err);
        out.push_str(&format!("{TASK_EXIT_MARK}{code}\n"));
        return WinRmReply::output(out, code).with_stderr(err);
    }
    if script.contains("[IO.File]::WriteAllBytes(") && script.contains("[byte[]]@()") {
        m.files.insert(quoted(&script, "WriteAllBytes(").unwrap(), Vec::new());
        return WinRmReply::output("", 0);
    }
    if script.contains("$f = [IO.File]::Open(") {
        let data = b64.decode(quoted(&script, "FromBase64String(").unwrap()).unwrap();
        let p = quoted(&script, "[IO.File]::Open(").unwrap();
        m.files.get_mut(&p).expect("appending to a created file").extend(data);
        return WinRmReply::output("", 0);
    }
    if script.contains("Get-FileHash") && script.contains("Move-Item") {
        let part = quoted(&script, "-LiteralPath").unwrap();
        let want = quoted(&script, "-ne").unwrap();
        let dest = quoted(&script, "-Destination").unwrap();
        let data = m.files.remove(&part).unwrap_or_default();
        let got = sha256_hex(&data);
        if got != want {
            return WinRmReply::output(format!("mismatch {got}\n"), 1);
        }
        m.files.insert(dest, data);
        return WinRmReply::output(format!("{got}\n"), 0);
    }
    if script.contains("Get-FileHash") {
        let p = quoted(&script, "-LiteralPath").unwrap();
        return match m.files.get(&p) {
            Some(d) => WinRmReply::output(format!("{}\n", sha256_hex(d)), 0),
            None => WinRmReply::output("", 1),
        };
    }
    if script.contains("Test-Path") {
        let p = quoted(&script, "-LiteralPath").unwrap();
        let exists = p.eq_ignore_ascii_case(r"C:\Windows\Temp") || m.files.keys().any(|f| f.starts_with(&format!("{p}\\")));
        return WinRmReply::output("", if exists { 0 } else { 1 });
    }
    if script.trim() == BOOT_ID_COMMAND {
        return WinRmReply::output(format!("2026-11-29T00:00:0{boots}Z\n"), 0);
    }
    if script.starts_with("cmd.exe /c --% ") {
        if let Some(code) = m.restart_refusals.pop_front() {
            return WinRmReply::output("", code);
        }
        m.restarts += 1;
        return WinRmReply::restart(Duration::from_millis(300));
    }
    let (mut out, mut err) = (String::new(), String::new());
    let code = interpret(&mut m, &script, &mut out, &mut err);
    WinRmReply::output(out, code).with_stderr(err).in_chunks(2)
}

async fn server() -> (WinRmServer, Arc<Mutex<Machine>>) {
    let m = Arc::new(Mutex::new(Machine::default()));
    let m2 = m.clone();
    let s = WinRmServer::start("packer", "P@ss'w0rd", move |c, b| machine(&m2, c, b)).await.unwrap();
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
    assert_eq!(m.lock().unwrap().files[r"C:\Windows\Temp\blob.bin"], data);
    assert!(!m.lock().unwrap().files.contains_key(r"C:\Windows\Temp\blob.bin.aib-part"), "the part file became the file");
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
    assert!(m.lock().unwrap().files.keys().all(|k| !k.contains("aib-script")), "the script is removed");

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
    assert_eq!(m.lock().unwrap().task_principals, vec!["SYSTEM".to_string(), "packer".to_string()]);

    let web = StaticServer::start().await.unwrap();
    let body = "Write-Output 'from uri'\r\nexit 1";
    let url = web.put("script.ps1", body);
    let (cx, sink) = ctx("customize[4] uri");
    PowerShellCustomizer::new(ScriptSource::Uri { uri: url.clone(), sha256: Some(sha256_hex(body.as_bytes())) })
        .with_valid_exit_codes(vec![0, 1])
        .run(&c, &cx)
        .await
        .unwrap();
    assert_eq!(stdout(&sink), vec!["from uri"]);
    let before = s.commands().len();
    let (cx, _) = ctx("customize[5] tampered");
    let err = PowerShellCustomizer::new(ScriptSource::Uri { uri: url, sha256: Some("f".repeat(64)) }).run(&c, &cx).await.unwrap_err();
    assert!(matches!(err, Error::ChecksumMismatch { .. }));
    assert_eq!(s.commands().len(), before, "nothing reached the machine");
}

#[tokio::test]
async fn windows_restart_waits_for_a_new_boot_and_retries_1115() {
    let (s, m) = server().await;
    m.lock().unwrap().restart_refusals = VecDeque::from([1115, 1115]);
    let c = WinRmCommunicator::connect(config(&s, "P@ss'w0rd")).await.unwrap();
    let r = WindowsRestartCustomizer::default()
        .with_check("Write-Output 'restarted.'")
        .with_timeout(Duration::from_secs(30))
        .with_poll_interval(Duration::from_millis(100));
    let (cx, sink) = ctx("customize[0] restart");
    r.run(&c, &cx).await.unwrap();
    assert_eq!(s.boots(), 1, "it went down and came back once");
    assert_eq!(m.lock().unwrap().restarts, 1);
    assert!(stdout(&sink).contains(&"restarted.".to_string()));
    assert!(c.execute(&ExecRequest::new("Write-Output 'after'"), &MemorySink::new()).await.unwrap().success());

    // A restart that never happens times out with the step named.
    m.lock().unwrap().restart_refusals = VecDeque::from(vec![1115; 1000]);
    let (cx, _) = ctx("customize[1] stuck");
    let err = r.clone().with_timeout(Duration::from_secs(1)).run(&c, &cx).await.unwrap_err();
    assert!(err.to_string().contains("1115") || matches!(err, Error::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn windows_update_loops_until_nothing_is_pending() {
    let (s, m) = server().await;
    m.lock().unwrap().wu_rounds = VecDeque::from([
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
    let m = m.lock().unwrap();
    assert_eq!(m.wu_scripts.len(), 3);
    assert!(m.wu_scripts[0].contains("$limit = 10") && m.wu_scripts[1].contains("$limit = 8"), "the limit counts what was installed");
    assert!(m.wu_scripts[0].contains("Test = { $_.Title -like '*Preview*' }") && m.wu_scripts[0].contains("Include = $false"));
    assert!(m.wu_scripts[0].contains("'BrowseOnly=0 and IsInstalled=0'"));
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
impl Provisioner for WinRmProvisioner {
    fn backend(&self) -> &'static str {
        "winrm-server"
    }
    async fn provision(&self, req: &ProvisionRequest, ctx: &RunContext) -> aib_core::Result<BuildVm> {
        let id = ctx.ledger().record(ResourceRecord::new("winrm-server", "vm", format!("127.0.0.1:{}", self.port), Scope::BuildVm))?;
        assert_eq!(req.image.source_type, "ManagedImage");
        Ok(BuildVm::new("win", id, aib_core::Platform::Windows, AccessInfo::new("winrm", "127.0.0.1", self.port, "packer", "")))
    }
    async fn connect(&self, _vm: &BuildVm, _ctx: &RunContext) -> aib_core::Result<Arc<dyn Communicator>> {
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
    async fn delete(&self, _record: &ResourceRecord) -> aib_core::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_windows_corpus_template_runs_over_winrm() {
    let (s, m) = server().await;
    m.lock().unwrap().wu_rounds =
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
    let backend = Backend::new(Arc::new(WinRmProvisioner { port: s.port() }), fakes.backend().registry.merge(aib_customizers::registry()));
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
    let principals = m.lock().unwrap().task_principals.clone();
    assert_eq!(principals.iter().filter(|p| *p == "SYSTEM").count(), 2, "{principals:?}");
    assert!(principals.iter().filter(|p| *p == "packer").count() >= 2, "{principals:?}");
}

/// A TLS front for the test server, with a fresh self-signed certificate (openssl); returns
/// its port and the certificate's SHA-256.
async fn tls_front(backend_port: u16) -> (u16, [u8; 32], tempfile::TempDir) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1", "-subj", "/CN=aib-build"])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .output()
        .expect("openssl (apt-get install -y openssl)");
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let cert = CertificateDer::from_pem_file(dir.path().join("cert.pem")).unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.path().join("key.pem")).unwrap();
    let pin = aib_customizers::tls_pin::parse_fingerprint(&aib_customizers::tls_pin::fingerprint_hex(cert.as_ref())).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await
                    && let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend_port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (port, pin, dir)
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
    let (port, pin, _dir) = tls_front(s.port()).await;
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
