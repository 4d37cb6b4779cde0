//! Fake Source, Provisioner, Customizer and Distributor: `Clone` handles over one shared
//! in-memory "cloud" that records what they were asked and obeys the fault table.

use crate::communicator::FakeCommunicator;
use crate::faults::Faults;
use crate::{Call, Journal};
use aib_core::template::{CustomizerSpec, DistributorSpec, Expr, ImageSource};
use aib_core::{
    AccessInfo, Artifact, Backend, BuildVm, CapturedImage, Communicator, CommunicatorExt, Customizer, DistributeRequest, Distributor,
    Error, ExecRequest, Platform, PreflightRequest, ProvisionRequest, Provisioner, Reclaim, ReconnectOptions, Registry, ResolveRequest,
    ResolvedImage, ResourceRecord, Result, ResumePoint, Scope, Source, StepContext, UploadRequest,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The backend name of the fakes' ledger records.
pub const BACKEND: &str = "fake";

#[derive(Debug, Default)]
struct Cloud {
    /// Resources that exist: ledger-style name -> kind.
    live: BTreeMap<String, String>,
    /// Published artifacts: runOutputName -> artifact.
    artifacts: Vec<(String, Artifact)>,
    communicators: Vec<FakeCommunicator>,
    counter: u64,
    /// The step cache: on, and the resume points kept (their keys).
    cache: bool,
    points: Vec<String>,
}

/// All fakes of one backend, sharing a fault table, a journal and a cloud.
#[derive(Debug, Clone, Default)]
pub struct FakeBackend {
    faults: Faults,
    journal: Journal,
    cloud: Arc<Mutex<Cloud>>,
}

impl FakeBackend {
    /// Fresh fakes.
    pub fn new() -> Self {
        Self::default()
    }

    /// The fault table (shared by every fake of this backend).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Everything the fakes were asked, in order.
    pub fn journal(&self) -> Vec<Call> {
        self.journal.entries()
    }

    /// Resources that exist right now (`kind name`).
    pub fn live_resources(&self) -> Vec<String> {
        self.cloud.lock().map(|c| c.live.iter().map(|(n, k)| format!("{k} {n}")).collect()).unwrap_or_default()
    }

    /// Published artifacts, by run output name.
    pub fn artifacts(&self) -> Vec<(String, Artifact)> {
        self.cloud.lock().map(|c| c.artifacts.clone()).unwrap_or_default()
    }

    /// The communicators handed out so far (one per `connect`).
    pub fn communicators(&self) -> Vec<FakeCommunicator> {
        self.cloud.lock().map(|c| c.communicators.clone()).unwrap_or_default()
    }

    /// Makes the fake provisioner keep resume points of the step cache (in memory, shared by
    /// every fake of this backend): a later run with the same steps starts after the longest.
    #[must_use]
    pub fn with_step_cache(self) -> Self {
        if let Ok(mut c) = self.cloud.lock() {
            c.cache = true;
        }
        self
    }

    /// The keys of the resume points kept so far, in the order they were kept.
    pub fn resume_points(&self) -> Vec<String> {
        self.cloud.lock().map(|c| c.points.clone()).unwrap_or_default()
    }

    /// The fake provisioner.
    pub fn provisioner(&self) -> FakeProvisioner {
        FakeProvisioner { fakes: self.clone() }
    }

    /// The fake source.
    pub fn source(&self) -> FakeSource {
        FakeSource { fakes: self.clone() }
    }

    /// A fake customizer running `commands` (as one script).
    pub fn customizer(&self, commands: &[&str]) -> FakeCustomizer {
        FakeCustomizer { fakes: self.clone(), plan: Plan::Exec(commands.join("\n")), label: "Shell".into() }
    }

    /// A fake distributor of `type_name` (`VHD`, `ManagedImage`, `SharedImage`).
    pub fn distributor(&self, type_name: &str, run_output_name: &str) -> FakeDistributor {
        FakeDistributor { fakes: self.clone(), type_name: type_name.into(), run_output_name: run_output_name.into(), target: String::new() }
    }

    /// A [`Backend`] with every AIB type, all fake.
    pub fn backend(&self) -> Backend {
        use aib_core::template::type_names as t;
        let me = self.clone();
        let customizer = move |spec: CustomizerSpec| Ok(Arc::new(FakeCustomizer::from_spec(&me, &spec)) as Arc<dyn Customizer>);
        let (c1, c2, c3, c4, c5) = (customizer.clone(), customizer.clone(), customizer.clone(), customizer.clone(), customizer);
        let mut reg = Registry::new()
            .with_sources(&t::SOURCES, Arc::new(self.source()))
            .with_shell(move |s| c1(CustomizerSpec::Shell(s.clone())))
            .with_powershell(move |s| c2(CustomizerSpec::PowerShell(s.clone())))
            .with_file(move |s| c3(CustomizerSpec::File(s.clone())))
            .with_windows_restart(move |s| c4(CustomizerSpec::WindowsRestart(s.clone())))
            .with_windows_update(move |s| c5(CustomizerSpec::WindowsUpdate(s.clone())));
        for d in t::DISTRIBUTORS {
            let m = self.clone();
            reg = reg.with_distributor(d, move |spec| Ok(Arc::new(FakeDistributor::from_spec(&m, spec)) as Arc<dyn Distributor>));
        }
        Backend::new(Arc::new(self.provisioner()), reg)
    }

    fn create(&self, ctx: &StepContext, kind: &str, scope: Scope) -> Result<(String, String)> {
        let n = self.cloud.lock().map(|mut c| {
            c.counter += 1;
            c.counter
        });
        let name = format!("{}-{kind}-{}", ctx.run.run_id(), n.unwrap_or(0));
        // Recorded before it exists.
        let id = ctx.record(ResourceRecord::new(BACKEND, kind, &name, scope))?;
        if let Ok(mut c) = self.cloud.lock() {
            c.live.insert(name.clone(), kind.to_string());
        }
        Ok((id, name))
    }
}

/// Resolves any source to a fixed exact version (`…:12.20250101.0` for `latest`).
#[derive(Debug, Clone)]
pub struct FakeSource {
    fakes: FakeBackend,
}

impl fmt::Display for FakeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FakeSource")
    }
}

#[async_trait]
impl Source for FakeSource {
    async fn resolve(&self, req: &ResolveRequest, _ctx: &StepContext) -> Result<ResolvedImage> {
        let spec = &req.spec;
        self.fakes.journal.push(Call::Resolve { type_name: spec.type_name().into(), location: req.location.clone() });
        self.fakes.faults.apply("resolve").await?;
        let (requested, exact, version, platform) = match spec {
            ImageSource::PlatformImage(p) => {
                let part = |s: &Option<String>| s.clone().unwrap_or_default();
                let requested = format!("{}:{}:{}:{}", part(&p.publisher), part(&p.offer), part(&p.sku), part(&p.version));
                let v = match p.version.as_deref() {
                    Some("latest") | None => "12.20250101.0".to_string(),
                    Some(v) => v.to_string(),
                };
                let windows = part(&p.publisher).to_ascii_lowercase().contains("windows");
                let exact = format!("{}:{}:{}:{v}", part(&p.publisher), part(&p.offer), part(&p.sku));
                (requested, exact, Some(v), if windows { Platform::Windows } else { Platform::Linux })
            }
            ImageSource::ManagedImage(m) => (m.image_id.clone(), m.image_id.clone(), None, Platform::Linux),
            ImageSource::SharedImageVersion(s) => {
                let exact = s.image_version_id.replace("/versions/latest", "/versions/1.0.0");
                (s.image_version_id.clone(), exact, Some("1.0.0".into()), Platform::Linux)
            }
            ImageSource::Custom(c) => {
                return Err(Error::Unsupported { operation: format!("source type `{}`", c.type_name), backend: BACKEND });
            }
        };
        let mut r = ResolvedImage::new(spec.type_name(), requested, exact).with_platform(platform);
        r.exact_version = version;
        Ok(r)
    }
}

/// A provisioner whose VMs are [`FakeCommunicator`]s.
#[derive(Debug, Clone)]
pub struct FakeProvisioner {
    fakes: FakeBackend,
}

impl fmt::Display for FakeProvisioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FakeProvisioner")
    }
}

#[async_trait]
impl Reclaim for FakeProvisioner {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<()> {
        self.fakes.faults.apply("delete").await?;
        self.fakes.journal.push(Call::Delete { kind: record.kind.clone(), name: record.name.clone() });
        if let Ok(mut c) = self.fakes.cloud.lock() {
            c.live.remove(&record.name);
        }
        Ok(())
    }
}

#[async_trait]
impl Provisioner for FakeProvisioner {
    async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> Result<BuildVm> {
        self.fakes.journal.push(Call::Provision { image: req.image.exact.clone() });
        let (vm, _) = self.fakes.create(ctx, "vm", Scope::BuildVm)?;
        self.fakes.create(ctx, "disk", Scope::BuildVm)?;
        self.fakes.faults.apply("provision").await?;
        let access = AccessInfo::new("ssh", "127.0.0.1", 2222, "aib", "ssh -p 2222 aib@127.0.0.1");
        let mut b = BuildVm::new(format!("fake-vm-{vm}"), vm, req.image.platform, access);
        let kept = self.fakes.resume_points();
        b.resumed = req.resume.iter().rposition(|p| kept.contains(&p.key)).map_or(0, |i| i + 1);
        Ok(b)
    }

    fn checkpoints(&self, _req: &ProvisionRequest) -> bool {
        self.fakes.cloud.lock().map(|c| c.cache).unwrap_or(false)
    }

    async fn checkpoint(&self, _vm: &BuildVm, point: &ResumePoint, _ctx: &StepContext) -> Result<bool> {
        self.fakes.faults.apply("checkpoint").await?;
        let mut c = self.fakes.cloud.lock().map_err(|_| Error::generic(BACKEND, "the fake cloud's lock is poisoned"))?;
        if !c.cache || c.points.contains(&point.key) {
            return Ok(false);
        }
        c.points.push(point.key.clone());
        Ok(true)
    }

    async fn connect(&self, vm: &BuildVm, _ctx: &StepContext) -> Result<Arc<dyn Communicator>> {
        self.fakes.journal.push(Call::Connect { vm: vm.id.clone() });
        self.fakes.faults.apply("connect").await?;
        let c = FakeCommunicator::new(vm.platform, self.fakes.faults.clone(), self.fakes.journal.clone());
        if let Ok(mut cloud) = self.fakes.cloud.lock() {
            cloud.communicators.push(c.clone());
        }
        Ok(Arc::new(c))
    }

    async fn generalize(&self, vm: &BuildVm, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        self.fakes.journal.push(Call::Generalize { vm: vm.id.clone() });
        self.fakes.faults.apply(&ctx.name).await?;
        let cmd = match vm.platform {
            Platform::Linux => "sudo waagent -force -deprovision+user && export HISTSIZE=0 && sync",
            Platform::Windows => "& $env:SystemRoot\\System32\\Sysprep\\Sysprep.exe /oobe /generalize /quiet /quit",
        };
        comm.run_checked(&ctx.name, &ExecRequest::new(cmd), &*ctx.output).await
    }

    async fn capture(&self, vm: &BuildVm, ctx: &StepContext) -> Result<CapturedImage> {
        self.fakes.journal.push(Call::Capture { vm: vm.id.clone() });
        let (id, _) = self.fakes.create(ctx, "image", Scope::Run)?;
        self.fakes.faults.apply(&ctx.name).await?;
        let mut img = CapturedImage::new(id.clone(), "vhd", format!("fake://images/{id}"), ResolvedImage::default());
        img.platform = vm.platform;
        img.size_bytes = Some(30 << 30);
        Ok(img)
    }
}

#[derive(Debug, Clone)]
enum Plan {
    Exec(String),
    Upload { content: String, destination: String, then: Option<String> },
    Restart { command: String, check: Option<String>, timeout: Duration },
}

/// A customizer that does over the communicator what its AIB type would, in the fakes' words.
#[derive(Debug, Clone)]
pub struct FakeCustomizer {
    fakes: FakeBackend,
    plan: Plan,
    label: String,
}

impl fmt::Display for FakeCustomizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fake{}", self.label)
    }
}

impl FakeCustomizer {
    fn from_spec(fakes: &FakeBackend, spec: &CustomizerSpec) -> Self {
        let script = |inline: &Option<Expr<Vec<String>>>, uri: &Option<String>, shell: &str| match (inline, uri) {
            (Some(Expr::Value(lines)), _) => Plan::Exec(lines.join("\n")),
            (_, Some(u)) => Plan::Upload {
                content: format!("# script from {u}\n"),
                destination: "/tmp/aib-script".into(),
                then: Some(format!("{shell} /tmp/aib-script")),
            },
            _ => Plan::Exec(String::new()),
        };
        let plan = match spec {
            CustomizerSpec::Shell(s) => script(&s.inline, &s.script_uri, "sh"),
            CustomizerSpec::PowerShell(s) => script(&s.inline, &s.script_uri, "powershell -File"),
            CustomizerSpec::File(f) => Plan::Upload {
                content: format!("content of {}", f.source_uri.clone().unwrap_or_default()),
                destination: f.destination.clone().unwrap_or_default(),
                then: None,
            },
            CustomizerSpec::WindowsRestart(r) => Plan::Restart {
                command: r.restart_command.clone().unwrap_or_else(|| aib_core::template::DEFAULT_RESTART_COMMAND.into()),
                check: r.restart_check_command.clone().filter(|c| !c.is_empty()),
                timeout: r.restart_timeout.as_deref().and_then(aib_core::template::parse_go_duration).unwrap_or(Duration::from_secs(300)),
            },
            CustomizerSpec::WindowsUpdate(_) => Plan::Exec("Install-WindowsUpdate -AcceptAll".into()),
            CustomizerSpec::Custom(c) => Plan::Exec(format!("custom {}", c.type_name)),
        };
        FakeCustomizer { fakes: fakes.clone(), plan, label: spec.type_name().to_string() }
    }
}

#[async_trait]
impl Customizer for FakeCustomizer {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        self.fakes.journal.push(Call::Step { name: ctx.name.clone() });
        self.fakes.faults.apply(&ctx.name).await?;
        match &self.plan {
            Plan::Exec(cmd) => comm.run_checked(&ctx.name, &ExecRequest::new(cmd.clone()), &*ctx.output).await,
            Plan::Upload { content, destination, then } => {
                comm.upload(&UploadRequest::bytes(content.as_bytes().to_vec(), destination.clone())).await?;
                match then {
                    Some(cmd) => comm.run_checked(&ctx.name, &ExecRequest::new(cmd.clone()), &*ctx.output).await,
                    None => Ok(()),
                }
            }
            Plan::Restart { command, check, timeout } => {
                comm.run_checked(&ctx.name, &ExecRequest::new(command.clone()).expecting_disconnect(), &*ctx.output).await?;
                comm.reconnect(&ReconnectOptions::with_timeout(*timeout)).await?;
                match check {
                    Some(c) => comm.run_checked(&ctx.name, &ExecRequest::new(c.clone()), &*ctx.output).await,
                    None => Ok(()),
                }
            }
        }
    }

    /// What it does, in the fakes' words (faults at `fingerprint`: the step that takes every
    /// customizer's fingerprint, in order).
    async fn fingerprint(&self, ctx: &StepContext) -> Result<Option<String>> {
        self.fakes.faults.apply(&ctx.name).await?;
        Ok(Some(format!("{}:{:?}", self.label, self.plan)))
    }
}

/// A distributor that "publishes" into the fakes' cloud.
#[derive(Debug, Clone)]
pub struct FakeDistributor {
    fakes: FakeBackend,
    type_name: String,
    run_output_name: String,
    target: String,
}

impl fmt::Display for FakeDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FakeDistributor({} {})", self.type_name, self.run_output_name)
    }
}

impl FakeDistributor {
    fn from_spec(fakes: &FakeBackend, spec: &DistributorSpec) -> Self {
        let target = match spec {
            DistributorSpec::ManagedImage(m) => m.image_id.clone(),
            DistributorSpec::SharedImage(s) => s.gallery_image_id.clone(),
            DistributorSpec::Vhd(v) => v.uri.clone().unwrap_or_default(),
            DistributorSpec::Custom(_) => String::new(),
        };
        FakeDistributor { fakes: fakes.clone(), type_name: spec.type_name().into(), run_output_name: spec.run_output_name().into(), target }
    }
}

#[async_trait]
impl Distributor for FakeDistributor {
    async fn preflight(&self, _req: &PreflightRequest, ctx: &StepContext) -> Result<()> {
        // Faults injected for the step `preflight` fire at the first target's check.
        self.fakes.faults.apply(&ctx.name).await
    }

    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
        let image = &req.image;
        self.fakes.journal.push(Call::Distribute { type_name: self.type_name.clone(), run_output_name: self.run_output_name.clone() });
        let (id, name) = self.fakes.create(ctx, "artifact", Scope::Run)?;
        ctx.output.progress(0, image.size_bytes, "bytes");
        self.fakes.faults.apply(&ctx.name).await?;
        ctx.output.progress(image.size_bytes.unwrap_or(0), image.size_bytes, "bytes");
        let artifact = match self.type_name.as_str() {
            "VHD" => Artifact::with_uri(if self.target.is_empty() {
                format!("fake://vhds/{}/{}.vhd", ctx.run.run_id(), self.run_output_name)
            } else {
                self.target.clone()
            }),
            "SharedImage" => Artifact::with_id(format!("{}/versions/0.0.1", self.target)),
            _ => Artifact::with_id(self.target.clone()),
        };
        // Published: the artifact is the user's now, not a leftover.
        ctx.keep(&id)?;
        if let Ok(mut c) = self.fakes.cloud.lock() {
            c.live.remove(&name);
            c.artifacts.push((self.run_output_name.clone(), artifact.clone()));
        }
        Ok(artifact)
    }
}
