//! The conformance suite: one rule per function, every backend held to the same list — the
//! fakes here, the SSH and WinRM communicators, the QEMU provisioner and the ARM test
//! server's VMs in their own crates. Each rule panics with a message that starts with its
//! name (`[exec_streams_lines] …`). Rules that need something not every backend has are
//! gated by [`Capabilities`]; the runners ([`communicator`], [`source`], [`provisioner`],
//! [`distributor`], [`customizer`]) call every rule that applies.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use aib_core::ProvisionRequest;
//! use aib_testkit::{FakeBackend, FakeCommunicator, conformance::{self, Capabilities}};
//! let fakes = FakeBackend::new();
//! conformance::communicator(&FakeCommunicator::default(), &Capabilities::fake()).await;
//! conformance::provisioner(&fakes.provisioner(), &ProvisionRequest::new(conformance::fake_image()), &Capabilities::fake()).await;
//! // One rule on its own:
//! conformance::exit_code_is_a_status(&FakeCommunicator::default(), &Capabilities::fake()).await;
//! # });
//! ```

use aib_core::template::{ImageSource, PlatformImageSource};
use aib_core::{
    BuildVm, Communicator, Customizer, DistributeRequest, Distributor, Error, ExecRequest, MemorySink, OutputStream, Platform,
    ProvisionRequest, Provisioner, ReconnectOptions, ResolveRequest, ResolvedImage, ResumePoint, RunContext, Scope, Source, StepContext,
    UploadRequest,
};
use std::time::Duration;

/// What a backend can do; rules that need a capability are not run without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// Commands run in a POSIX shell (`echo`, `exit N`, `>&2`, `cat`, `id -u`, `sleep`).
    pub posix_shell: bool,
    /// Commands run in PowerShell (`Write-Output`, `exit N`, `[Console]::Error`, `Get-Content`).
    pub powershell: bool,
    /// [`ExecRequest::env`] reaches the command.
    pub env: bool,
    /// [`ExecRequest::elevated`] runs as root or an administrator.
    pub elevation: bool,
    /// [`ExecRequest::timeout`] ends a command that runs too long.
    pub exec_timeout: bool,
    /// A command may drop its own connection ([`ExecRequest::expect_disconnect`]) and the
    /// communicator reconnects afterwards.
    pub disconnect: bool,
    /// The VM can restart and be reconnected to.
    pub restart: bool,
    /// A VM started at a resume point holds the files the VM it was kept of held (the fakes'
    /// VMs hold none).
    pub resume_state: bool,
}

impl Capabilities {
    /// What the fakes can do: everything.
    pub fn fake() -> Self {
        Capabilities {
            posix_shell: true,
            powershell: false,
            env: true,
            elevation: true,
            exec_timeout: true,
            disconnect: true,
            restart: true,
            resume_state: false,
        }
    }

    /// A Linux machine over SSH that does not restart (an sshd, a QEMU VM started with
    /// `-no-reboot`): the connection can be dropped and reopened.
    pub fn linux_ssh() -> Self {
        Capabilities { restart: false, resume_state: true, ..Self::fake() }
    }

    /// A Windows build VM over WinRM: it restarts, but a command cannot drop the connection
    /// otherwise.
    pub fn windows_winrm() -> Self {
        Capabilities { posix_shell: false, powershell: true, disconnect: false, ..Self::fake() }
    }

    /// With or without a POSIX shell.
    #[must_use]
    pub fn with_posix_shell(mut self, yes: bool) -> Self {
        self.posix_shell = yes;
        self
    }

    /// With or without PowerShell.
    #[must_use]
    pub fn with_powershell(mut self, yes: bool) -> Self {
        self.powershell = yes;
        self
    }

    /// With or without environment variables.
    #[must_use]
    pub fn with_env(mut self, yes: bool) -> Self {
        self.env = yes;
        self
    }

    /// With or without elevation.
    #[must_use]
    pub fn with_elevation(mut self, yes: bool) -> Self {
        self.elevation = yes;
        self
    }

    /// With or without exec timeouts.
    #[must_use]
    pub fn with_exec_timeout(mut self, yes: bool) -> Self {
        self.exec_timeout = yes;
        self
    }

    /// With or without expected disconnects.
    #[must_use]
    pub fn with_disconnect(mut self, yes: bool) -> Self {
        self.disconnect = yes;
        self
    }

    /// With or without restarts.
    #[must_use]
    pub fn with_restart(mut self, yes: bool) -> Self {
        self.restart = yes;
        self
    }
}

/// An image the fakes can boot.
pub fn fake_image() -> ResolvedImage {
    ResolvedImage::new("PlatformImage", "Debian:debian-12:12-gen2:latest", "Debian:debian-12:12-gen2:12.20250101.0")
        .with_platform(Platform::Linux)
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

/// The commands of one shell dialect.
struct Words {
    two_lines: &'static str,
    to_stderr: &'static str,
    exit_3: &'static str,
    print_env: &'static str,
    whoami_admin: &'static str,
    admin_answer: &'static str,
    sleep: &'static str,
    drop_connection: &'static str,
    restart: &'static str,
    alive: &'static str,
}

fn words(caps: &Capabilities) -> Words {
    if caps.powershell {
        Words {
            two_lines: "Write-Output 'conformance-one'; Write-Output 'conformance-two'",
            to_stderr: "[Console]::Error.WriteLine('to-stderr')",
            exit_3: "exit 3",
            print_env: "Write-Output $env:AIB_CONFORMANCE",
            whoami_admin: "Write-Output ([Security.Principal.WindowsPrincipal][Security.Principal.WindowsIdentity]::GetCurrent()).IsInRole([Security.Principal.WindowsBuiltInRole]::Administrator)",
            admin_answer: "True",
            sleep: "Start-Sleep -Seconds 30",
            drop_connection: "",
            restart: "cmd.exe /c --% shutdown /r /f /t 0",
            alive: "Write-Output 'conformance-alive'",
        }
    } else {
        Words {
            two_lines: "echo conformance-one; echo conformance-two",
            to_stderr: "echo to-stderr >&2",
            exit_3: "exit 3",
            print_env: "echo \"$AIB_CONFORMANCE\"",
            whoami_admin: "id -u",
            admin_answer: "0",
            sleep: "sleep 30",
            drop_connection: "kill -KILL $PPID",
            restart: "reboot",
            alive: "echo conformance-alive",
        }
    }
}

fn shell(caps: &Capabilities) -> bool {
    caps.posix_shell || caps.powershell
}

/// Every line a command prints reaches the sink as its own line.
pub async fn exec_streams_lines(c: &dyn Communicator, caps: &Capabilities) {
    let w = words(caps);
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new(w.two_lines), &sink).await.expect("[exec_streams_lines] execute must run a simple command");
    assert!(st.success(), "[exec_streams_lines] printing must exit 0, got {st}");
    let out = sink.stdout();
    assert!(
        out.contains(&"conformance-one".to_string()) && out.contains(&"conformance-two".to_string()),
        "[exec_streams_lines] each line must be streamed separately, got {out:?}"
    );
}

/// A non-zero exit is an [`aib_core::ExitStatus`] with its code, not an error.
pub async fn exit_code_is_a_status(c: &dyn Communicator, caps: &Capabilities) {
    let st = c
        .execute(&ExecRequest::new(words(caps).exit_3), &MemorySink::new())
        .await
        .expect("[exit_code_is_a_status] a non-zero exit is a status, not an error");
    assert_eq!(st.code, Some(3), "[exit_code_is_a_status] exit code must come back");
    assert!(!st.success(), "[exit_code_is_a_status] exit 3 is not a success");
}

/// Standard error lines are told apart from standard output.
pub async fn stderr_is_separate(c: &dyn Communicator, caps: &Capabilities) {
    let sink = MemorySink::new();
    c.execute(&ExecRequest::new(words(caps).to_stderr), &sink).await.expect("[stderr_is_separate] execute");
    assert!(
        sink.lines().iter().any(|(s, l)| *s == OutputStream::Stderr && l == "to-stderr"),
        "[stderr_is_separate] stderr must be told apart: {:?}",
        sink.lines()
    );
    assert!(!sink.stdout().iter().any(|l| l == "to-stderr"), "[stderr_is_separate] a stderr line must not reach stdout too");
}

/// [`ExecRequest::with_env`] reaches the command, quotes and `$` intact.
pub async fn env_reaches_the_command(c: &dyn Communicator, caps: &Capabilities) {
    let value = "it's $(not run) \"quoted\"";
    let sink = MemorySink::new();
    let req = ExecRequest::new(words(caps).print_env).with_env("AIB_CONFORMANCE", value);
    let st = c.execute(&req, &sink).await.expect("[env_reaches_the_command] execute");
    assert!(st.success(), "[env_reaches_the_command] exit {st}");
    assert_eq!(sink.stdout(), vec![value.to_string()], "[env_reaches_the_command] the variable must arrive unchanged");
    let bad = c.execute(&ExecRequest::new(words(caps).alive).with_env("BAD-NAME", "x"), &MemorySink::new()).await;
    assert!(
        matches!(bad, Err(Error::InvalidConfig { .. })),
        "[env_reaches_the_command] an invalid variable name must be refused before anything runs, got {bad:?}"
    );
}

/// [`ExecRequest::elevated`] runs as root (Linux) or an administrator (Windows).
pub async fn elevated_runs_as_admin(c: &dyn Communicator, caps: &Capabilities) {
    let w = words(caps);
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new(w.whoami_admin).elevated(), &sink).await.expect("[elevated_runs_as_admin] execute");
    assert!(st.success(), "[elevated_runs_as_admin] exit {st}: {:?}", sink.lines());
    assert_eq!(sink.stdout(), vec![w.admin_answer.to_string()], "[elevated_runs_as_admin] an elevated command must run as admin");
}

/// A command that outlives [`ExecRequest::with_timeout`] is [`Error::Timeout`], soon after.
pub async fn exec_timeout_is_error_timeout(c: &dyn Communicator, caps: &Capabilities) {
    let req = ExecRequest::new(words(caps).sleep).with_timeout(Duration::from_secs(1));
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(25), c.execute(&req, &MemorySink::new()))
        .await
        .expect("[exec_timeout_is_error_timeout] the timeout must end the command well before it finishes");
    assert!(matches!(r, Err(Error::Timeout { .. })), "[exec_timeout_is_error_timeout] expected Error::Timeout, got {r:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "[exec_timeout_is_error_timeout] took {:?}", started.elapsed());
    let st = c.execute(&ExecRequest::new(words(caps).alive), &MemorySink::new()).await;
    assert!(
        st.as_ref().is_ok_and(|s| s.success()),
        "[exec_timeout_is_error_timeout] the communicator must work after a timed-out command, got {st:?}"
    );
}

/// A file of this check's own in the machine's temp directory (suites may run side by side on
/// one machine): its path, the command that prints it and the one that removes it.
fn own_file(caps: &Capabilities, what: &str) -> (String, String, String) {
    let id = uuid::Uuid::new_v4().simple();
    if caps.powershell {
        let p = format!(r"C:\Windows\Temp\aib-conformance-{what}-{id}.txt");
        (p.clone(), format!("Get-Content -LiteralPath '{p}'"), format!("Remove-Item -LiteralPath '{p}'"))
    } else {
        let p = format!("/tmp/aib-conformance-{what}-{id}.txt");
        (p.clone(), format!("cat {p}"), format!("rm -f {p}"))
    }
}

/// An upload writes every byte, reports the count, and reads back unchanged.
pub async fn upload_reads_back(c: &dyn Communicator, caps: &Capabilities) {
    let (path, read, remove) = own_file(caps, "upload");
    let payload: Vec<u8> = b"line one\nline two\n".to_vec();
    let n = c.upload(&UploadRequest::bytes(payload.clone(), &path)).await.expect("[upload_reads_back] upload");
    assert_eq!(n, payload.len() as u64, "[upload_reads_back] upload must report the bytes written");
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new(read), &sink).await.expect("[upload_reads_back] read back");
    assert!(st.success(), "[upload_reads_back] reading back exited {st}");
    assert_eq!(sink.stdout(), vec!["line one".to_string(), "line two".to_string()], "[upload_reads_back] uploaded content must read back");
    // Tidying only: whether the machine can remove a file is not what is checked here.
    let _ = c.execute(&ExecRequest::new(remove), &MemorySink::new()).await;
    upload_reports_progress(c, caps).await;
}

/// An upload with progress reports bytes, never fewer than before, the last one the total.
pub async fn upload_reports_progress(c: &dyn Communicator, caps: &Capabilities) {
    let (path, _, remove) = own_file(caps, "progress");
    let payload: Vec<u8> = b"line one\nline two\n".repeat(20_000);
    let progress = MemorySink::new();
    let n =
        c.upload_with_progress(&UploadRequest::bytes(payload.clone(), &path), &progress).await.expect("[upload_reports_progress] upload");
    assert_eq!(n, payload.len() as u64, "[upload_reports_progress] upload must report the bytes written");
    let reports = progress.progress_reports();
    assert!(reports.iter().all(|(_, _, u)| u == "bytes"), "[upload_reports_progress] unit must be bytes: {reports:?}");
    assert!(reports.windows(2).all(|p| p[0].0 <= p[1].0), "[upload_reports_progress] progress must not go back: {reports:?}");
    assert_eq!(reports.last().map(|r| r.0), Some(n), "[upload_reports_progress] the last report must be the total");
    let _ = c.execute(&ExecRequest::new(remove), &MemorySink::new()).await;
}

/// A command that drops its own connection, marked [`ExecRequest::expect_disconnect`], is a
/// status (not an error), and after [`Communicator::reconnect`] commands run again.
pub async fn expected_disconnect_then_reconnect(c: &dyn Communicator, caps: &Capabilities) {
    let w = words(caps);
    let st = c
        .execute(&ExecRequest::new(w.drop_connection).expecting_disconnect(), &MemorySink::new())
        .await
        .expect("[expected_disconnect_then_reconnect] an expected disconnect must not be an error");
    assert!(st.disconnected || st.success(), "[expected_disconnect_then_reconnect] got {st}");
    c.reconnect(&ReconnectOptions::with_timeout(Duration::from_secs(60)))
        .await
        .expect("[expected_disconnect_then_reconnect] reconnect after an expected disconnect");
    alive(c, &w, "expected_disconnect_then_reconnect").await;
}

/// The VM restarts on an expected-disconnect command and [`Communicator::reconnect`] waits
/// until it is back; the new boot answers commands.
pub async fn reconnect_after_restart(c: &dyn Communicator, caps: &Capabilities) {
    let w = words(caps);
    let st = c
        .execute(&ExecRequest::new(w.restart).elevated().expecting_disconnect(), &MemorySink::new())
        .await
        .expect("[reconnect_after_restart] a restart command must not be an error");
    assert!(st.disconnected || st.success(), "[reconnect_after_restart] got {st}");
    c.reconnect(&ReconnectOptions::with_timeout(Duration::from_secs(300)))
        .await
        .expect("[reconnect_after_restart] the VM must come back within the reconnect timeout");
    alive(c, &w, "reconnect_after_restart").await;
}

async fn alive(c: &dyn Communicator, w: &Words, rule: &str) {
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new(w.alive), &sink).await.unwrap_or_else(|e| panic!("[{rule}] a command after reconnect: {e}"));
    assert!(st.success() && sink.stdout() == ["conformance-alive"], "[{rule}] after reconnect: {st} {:?}", sink.lines());
}

/// Runs every communicator rule `caps` allows.
pub async fn communicator(c: &dyn Communicator, caps: &Capabilities) {
    exec_streams_lines(c, caps).await;
    if !shell(caps) {
        return;
    }
    exit_code_is_a_status(c, caps).await;
    stderr_is_separate(c, caps).await;
    upload_reads_back(c, caps).await;
    if caps.env {
        env_reaches_the_command(c, caps).await;
    }
    if caps.elevation {
        elevated_runs_as_admin(c, caps).await;
    }
    if caps.exec_timeout {
        exec_timeout_is_error_timeout(c, caps).await;
    }
    if caps.disconnect {
        expected_disconnect_then_reconnect(c, caps).await;
    }
    if caps.restart {
        reconnect_after_restart(c, caps).await;
    }
}

/// A resolution names an exact image and echoes the source type.
pub async fn resolve_names_an_exact_image(s: &dyn Source, req: &ResolveRequest) {
    let ctx = StepContext::detached("resolve").expect("context");
    let a = s.resolve(req, &ctx).await.expect("[resolve_names_an_exact_image] resolve");
    assert!(!a.exact.is_empty(), "[resolve_names_an_exact_image] the exact image must be reported");
    assert_eq!(a.source_type, req.spec.type_name(), "[resolve_names_an_exact_image] source_type must echo the template type");
}

/// Resolving twice gives the same image, and resolving creates nothing.
pub async fn resolve_is_stable_and_creates_nothing(s: &dyn Source, req: &ResolveRequest) {
    let ctx = StepContext::detached("resolve").expect("context");
    let a = s.resolve(req, &ctx).await.expect("[resolve_is_stable_and_creates_nothing] resolve");
    let b = s.resolve(req, &ctx).await.expect("[resolve_is_stable_and_creates_nothing] resolve twice");
    assert_eq!(a.exact, b.exact, "[resolve_is_stable_and_creates_nothing] resolution must be stable");
    assert!(ctx.run.ledger().outstanding().is_empty(), "[resolve_is_stable_and_creates_nothing] resolve must not create resources");
}

/// Runs every source rule.
pub async fn source(s: &dyn Source, req: &ResolveRequest) {
    resolve_names_an_exact_image(s, req).await;
    resolve_is_stable_and_creates_nothing(s, req).await;
}

/// After `provision`, what it made is in the ledger under the provisioner's name, the VM's
/// parts scoped [`Scope::BuildVm`], and [`BuildVm::resource`] names one of the records.
pub fn provision_records_in_ledger(p: &dyn Provisioner, ctx: &RunContext, vm: &BuildVm) {
    let recs = ctx.ledger().outstanding();
    assert!(!recs.is_empty(), "[provision_records_in_ledger] provision must record what it creates in the ledger");
    assert!(
        recs.iter().all(|r| r.backend == p.backend()),
        "[provision_records_in_ledger] records must carry the provisioner's backend name: {recs:?}"
    );
    assert!(recs.iter().any(|r| r.id == vm.resource), "[provision_records_in_ledger] BuildVm::resource must name a ledger record");
    assert!(recs.iter().any(|r| r.scope == Scope::BuildVm), "[provision_records_in_ledger] the VM's resources must be BuildVm-scoped");
}

/// Generalize stops the VM and capture gives an image with a location.
pub async fn capture_after_generalize(p: &dyn Provisioner, ctx: &RunContext, vm: &BuildVm, comm: &dyn Communicator) {
    p.generalize(vm, comm, &ctx.step("generalize")).await.expect("[capture_after_generalize] generalize");
    let image = p.capture(vm, &ctx.step("capture")).await.expect("[capture_after_generalize] capture");
    assert!(!image.location.is_empty(), "[capture_after_generalize] a captured image has a location");
    assert_eq!(image.platform, vm.platform, "[capture_after_generalize] the image keeps the VM's platform");
}

/// Deleting every record, newest first, succeeds; deleting each again succeeds too.
pub async fn delete_is_idempotent(p: &dyn Provisioner, ctx: &RunContext) {
    for r in ctx.ledger().outstanding().iter().rev() {
        p.delete(r).await.unwrap_or_else(|e| panic!("[delete_is_idempotent] delete {r}: {e}"));
        ctx.release(&r.id).expect("release");
        p.delete(r).await.unwrap_or_else(|e| panic!("[delete_is_idempotent] deleting {r} twice must succeed: {e}"));
    }
    assert!(ctx.ledger().outstanding().is_empty());
}

/// Runs every provisioner rule: provision `req`, check the ledger, connect and run the
/// communicator rules `caps` allow, generalize, capture, delete everything twice.
pub async fn provisioner(p: &dyn Provisioner, req: &ProvisionRequest, caps: &Capabilities) {
    let ctx = RunContext::detached("conformance-prov").expect("context");
    let vm = p.provision(req, &ctx.step("provision")).await.expect("[provisioner] provision");
    provision_records_in_ledger(p, &ctx, &vm);
    let comm = p.connect(&vm, &ctx.step("connect")).await.expect("[provisioner] connect");
    assert_eq!(comm.platform(), vm.platform, "[provisioner] the communicator speaks to the VM's platform");
    communicator(&*comm, caps).await;
    resume_points(p, req, &vm, &*comm, caps).await;
    capture_after_generalize(p, &ctx, &vm, &*comm).await;
    drop(comm);
    delete_is_idempotent(p, &ctx).await;
}

/// What `cat FILE` prints on the VM of `comm`.
async fn read_back(comm: &dyn Communicator, file: &str) -> String {
    let sink = MemorySink::new();
    let st = comm.execute(&ExecRequest::new(format!("cat {file}")), &sink).await.expect("[resume_points] read");
    assert!(st.success(), "[resume_points] reading the marker");
    sink.lines().into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n")
}

/// A provisioner that keeps resume points for `req` ([`Provisioner::checkpoints`]): keeping
/// one of the running `vm` leaves it running as it was, and a VM provisioned at that point says
/// it resumed there (and, with `resume_state`, holds what `vm` held then). Nothing to check for
/// one that keeps none.
pub async fn resume_points(p: &dyn Provisioner, req: &ProvisionRequest, vm: &BuildVm, comm: &dyn Communicator, caps: &Capabilities) {
    if !p.checkpoints(req) || vm.platform != Platform::Linux {
        return;
    }
    let ctx = RunContext::detached("conformance-keep").expect("context");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let marker = format!("resume-{nanos:x}");
    let file = "/tmp/aib-conformance-resume";
    if caps.resume_state {
        let write = ExecRequest::new(format!("echo {marker} > {file}"));
        assert!(comm.execute(&write, &MemorySink::new()).await.expect("[resume_points] write").success());
    }
    let point = ResumePoint::new("customize[0] conformance", 0, format!("conformance {marker}"), "marker");
    let kept = p.checkpoint(vm, &point, &ctx.step("keep")).await.expect("[resume_points] checkpoint");
    if caps.resume_state {
        assert_eq!(read_back(comm, file).await.trim(), marker, "[resume_points] the VM goes on as it was after a point is kept");
    }
    if !kept {
        return;
    }
    let mut again = req.clone();
    again.resume = vec![point];
    let ctx2 = RunContext::detached("conformance-resume").expect("context");
    let vm2 = p.provision(&again, &ctx2.step("provision")).await.expect("[resume_points] provision at the point");
    assert_eq!(vm2.resumed, 1, "[resume_points] a VM provisioned at a kept point says it resumed after its step");
    let comm2 = p.connect(&vm2, &ctx2.step("connect")).await.expect("[resume_points] connect");
    if caps.resume_state {
        assert_eq!(read_back(&*comm2, file).await.trim(), marker, "[resume_points] the resumed VM holds what the kept one held");
    }
    drop(comm2);
    delete_is_idempotent(p, &ctx2).await;
    delete_is_idempotent(p, &ctx).await;
}

/// The artifact is named, and afterwards the ledger holds nothing: the artifact was kept,
/// temporary resources deleted.
pub async fn distribute_keeps_only_the_artifact(d: &dyn Distributor, req: &DistributeRequest) {
    let ctx = StepContext::detached("distribute conformance").expect("context");
    let a = d.distribute(req, &ctx).await.expect("[distribute_keeps_only_the_artifact] distribute");
    assert!(a.artifact_id.is_some() || a.artifact_uri.is_some(), "[distribute_keeps_only_the_artifact] an artifact needs an id or a URI");
    assert!(
        ctx.run.ledger().outstanding().is_empty(),
        "[distribute_keeps_only_the_artifact] a published artifact must be released with keep(), temporary resources deleted: {:?}",
        ctx.run.ledger().outstanding()
    );
}

/// Runs every distributor rule.
pub async fn distributor(d: &dyn Distributor, req: &DistributeRequest) {
    preflight_passes_and_creates_nothing(d, req).await;
    distribute_keeps_only_the_artifact(d, req).await;
}

/// The check before the build passes for a target `distribute` can publish to, and creates
/// nothing (the ledger stays empty).
pub async fn preflight_passes_and_creates_nothing(d: &dyn Distributor, req: &DistributeRequest) {
    let ctx = StepContext::detached("preflight").expect("context");
    let p = aib_core::PreflightRequest::new(req.image.source.clone())
        .with_location(&req.location)
        .with_template_name(&req.template_name)
        .with_run_output_name(&req.run_output_name);
    d.preflight(&p, &ctx).await.expect("[preflight_passes_and_creates_nothing] preflight");
    assert!(
        ctx.run.ledger().outstanding().is_empty(),
        "[preflight_passes_and_creates_nothing] a preflight creates nothing: {:?}",
        ctx.run.ledger().outstanding()
    );
}

/// A customizer whose work fails on the VM fails with [`Error::StepFailed`] naming its step.
pub async fn customizer_that_fails_is_step_failed(failing: &dyn Customizer, comm: &dyn Communicator) {
    let ctx = StepContext::detached("customize[0] conformance").expect("context");
    let r = failing.run(comm, &ctx).await;
    match r {
        Err(Error::StepFailed { step, .. }) => {
            assert_eq!(step, ctx.name, "[customizer_that_fails_is_step_failed] the error must name the step")
        }
        other => panic!("[customizer_that_fails_is_step_failed] expected Error::StepFailed, got {other:?}"),
    }
}

/// What a customizer's commands print reaches its step's output sink.
pub async fn customizer_output_reaches_the_step(printing: &dyn Customizer, comm: &dyn Communicator, marker: &str) {
    let (ctx, sink) = StepContext::capturing("customize[0] conformance").expect("context");
    printing.run(comm, &ctx).await.expect("[customizer_output_reaches_the_step] run");
    assert!(
        sink.stdout().iter().any(|l| l.contains(marker)),
        "[customizer_output_reaches_the_step] `{marker}` must reach the step's sink, got {:?}",
        sink.lines()
    );
}

/// Runs every customizer rule: `failing` must fail on the VM, `printing` must print `marker`.
pub async fn customizer(failing: &dyn Customizer, printing: &dyn Customizer, marker: &str, comm: &dyn Communicator) {
    customizer_that_fails_is_step_failed(failing, comm).await;
    customizer_output_reaches_the_step(printing, comm, marker).await;
}
