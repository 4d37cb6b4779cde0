//! The conformance suite: one set of async checks every backend passes — the fakes here,
//! the local and Azure backends in their own crates. Each function panics with a message
//! naming the broken rule.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use aib_testkit::{FakeBackend, conformance};
//! let fakes = FakeBackend::new();
//! conformance::communicator(&aib_testkit::FakeCommunicator::default(), &conformance::Capabilities::fake()).await;
//! conformance::provisioner(&fakes.provisioner(), conformance::fake_image(), &conformance::Capabilities::fake()).await;
//! # });
//! ```

use aib_core::template::{ImageSource, PlatformImageSource};
use aib_core::{
    Communicator, Distributor, ExecRequest, MemorySink, OutputStream, Platform, ProvisionRequest, Provisioner, ResolvedImage, RunContext,
    Scope, Source, UploadRequest,
};

/// What a backend can do; checks that need a capability are skipped without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Commands run in a POSIX shell (`echo`, `exit N`, `>&2`, `cat`).
    pub posix_shell: bool,
    /// Commands run in PowerShell (`Write-Output`, `exit N`, `[Console]::Error`, `Get-Content`).
    pub powershell: bool,
    /// The VM can restart and be reconnected to.
    pub restart: bool,
}

impl Capabilities {
    /// What the fakes can do.
    pub fn fake() -> Self {
        Capabilities { posix_shell: true, powershell: false, restart: true }
    }

    /// A Linux build VM over SSH.
    pub fn linux_ssh() -> Self {
        Capabilities { posix_shell: true, powershell: false, restart: true }
    }

    /// A Windows build VM over WinRM.
    pub fn windows_winrm() -> Self {
        Capabilities { posix_shell: false, powershell: true, restart: true }
    }
}

/// An image the fakes can boot.
pub fn fake_image() -> ResolvedImage {
    ResolvedImage::new("PlatformImage", "Debian:debian-12:12-gen2:latest", "Debian:debian-12:12-gen2:12.20250101.0")
        .with_platform(Platform::Linux)
}

fn stdout(sink: &MemorySink) -> Vec<String> {
    sink.stdout()
}

/// `Communicator`: output streams line by line, exit codes come back, non-zero exits are
/// not errors, uploads land whole, environment variables arrive.
pub async fn communicator(c: &dyn Communicator, caps: &Capabilities) {
    struct Words {
        two_lines: &'static str,
        to_stderr: &'static str,
        path: &'static str,
        read: &'static str,
    }
    let w = if caps.powershell {
        Words {
            two_lines: "Write-Output 'conformance-one'; Write-Output 'conformance-two'",
            to_stderr: "[Console]::Error.WriteLine('to-stderr')",
            path: r"C:\Windows\Temp\aib-conformance.txt",
            read: r"Get-Content -LiteralPath 'C:\Windows\Temp\aib-conformance.txt'",
        }
    } else {
        Words {
            two_lines: "echo conformance-one; echo conformance-two",
            to_stderr: "echo to-stderr >&2",
            path: "/tmp/aib-conformance.txt",
            read: "cat /tmp/aib-conformance.txt",
        }
    };
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new(w.two_lines), &sink).await.expect("execute must run a simple command");
    assert!(st.success(), "printing must exit 0, got {st}");
    let out = stdout(&sink);
    assert!(
        out.contains(&"conformance-one".to_string()) && out.contains(&"conformance-two".to_string()),
        "each line must be streamed separately, got {out:?}"
    );
    if !caps.posix_shell && !caps.powershell {
        return;
    }
    let st = c.execute(&ExecRequest::new("exit 3"), &MemorySink::new()).await.expect("a non-zero exit is a status, not an error");
    assert_eq!(st.code, Some(3), "exit code must come back");
    assert!(!st.success());
    let sink = MemorySink::new();
    c.execute(&ExecRequest::new(w.to_stderr), &sink).await.expect("execute");
    assert!(
        sink.lines().iter().any(|(s, l)| *s == OutputStream::Stderr && l == "to-stderr"),
        "stderr must be told apart: {:?}",
        sink.lines()
    );
    let payload: Vec<u8> = b"line one\nline two\n".to_vec();
    let n = c.upload(&UploadRequest::bytes(payload.clone(), w.path)).await.expect("upload");
    assert_eq!(n, payload.len() as u64, "upload must report the bytes written");
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new(w.read), &sink).await.expect("read back");
    assert!(st.success());
    assert_eq!(stdout(&sink), vec!["line one".to_string(), "line two".to_string()], "uploaded content must read back");
}

/// `Source`: a resolution names an exact image; resolving again gives the same answer.
pub async fn source(s: &dyn Source, spec: &ImageSource) {
    let ctx = RunContext::detached("conformance-source").expect("context");
    let a = s.resolve(spec, &ctx).await.expect("resolve");
    assert!(!a.exact.is_empty(), "the exact image must be reported");
    assert_eq!(a.source_type, spec.type_name(), "source_type must echo the template type");
    let b = s.resolve(spec, &ctx).await.expect("resolve twice");
    assert_eq!(a.exact, b.exact, "resolution must be stable");
    assert!(ctx.ledger().outstanding().is_empty(), "resolve must not create resources");
}

/// A platform-image spec that the fakes and the local catalog both know.
pub fn debian_spec() -> ImageSource {
    ImageSource::PlatformImage(PlatformImageSource {
        publisher: Some("Debian".into()),
        offer: Some("debian-12".into()),
        sku: Some("12-gen2".into()),
        version: Some("latest".into()),
        plan_info: None,
    })
}

/// `Provisioner`: resources are in the ledger with this backend's name, the VM answers,
/// generalize and capture work, delete removes everything and is idempotent.
pub async fn provisioner(p: &dyn Provisioner, image: ResolvedImage, caps: &Capabilities) {
    let ctx = RunContext::detached("conformance-prov").expect("context");
    let vm = p.provision(&ProvisionRequest::new(image), &ctx).await.expect("provision");
    let recs = ctx.ledger().outstanding();
    assert!(!recs.is_empty(), "provision must record what it creates in the ledger");
    assert!(recs.iter().all(|r| r.backend == p.backend()), "records must carry the provisioner's backend name");
    assert!(recs.iter().any(|r| r.id == vm.resource), "BuildVm::resource must name a ledger record");
    assert!(recs.iter().any(|r| r.scope == Scope::BuildVm), "the VM's resources must be BuildVm-scoped");
    let comm = p.connect(&vm, &ctx).await.expect("connect");
    communicator(&*comm, caps).await;
    let step = ctx.step("generalize");
    p.generalize(&vm, &*comm, &step).await.expect("generalize");
    drop(comm);
    let image = p.capture(&vm, &ctx.step("capture")).await.expect("capture");
    assert!(!image.location.is_empty(), "a captured image has a location");
    let all = ctx.ledger().outstanding();
    for r in all.iter().rev() {
        p.delete(r).await.unwrap_or_else(|e| panic!("delete {r}: {e}"));
        ctx.ledger().release(&r.id).expect("release");
        p.delete(r).await.unwrap_or_else(|e| panic!("deleting {r} twice must succeed: {e}"));
    }
    assert!(ctx.ledger().outstanding().is_empty());
}

/// `Distributor`: the artifact is named, and the ledger holds nothing afterwards.
pub async fn distributor(d: &dyn Distributor, image: &aib_core::CapturedImage) {
    let ctx = RunContext::detached("conformance-dist").expect("context");
    let a = d.distribute(image, &ctx.step("distribute conformance")).await.expect("distribute");
    assert!(a.artifact_id.is_some() || a.artifact_uri.is_some(), "an artifact needs an id or a URI");
    assert!(ctx.ledger().outstanding().is_empty(), "a published artifact must be released with keep(), temporary resources deleted");
}
