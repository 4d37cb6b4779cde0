//! The QEMU provisioner: a copy-on-write overlay over the read-only base, a cloud-init
//! NoCloud seed carrying an ephemeral user key and a pre-generated host key (so the host key
//! is verified from the first connection), user-mode networking on 127.0.0.1, the serial
//! console in the run log, and QMP for power-down. Everything goes through the ledger.

use crate::error::LocalError;
use crate::qmp;
use crate::tools::{Accelerator, BACKEND, OVMF_CODE, OVMF_VARS, image_info, run};
use aib_core::{
    AccessInfo, BuildVm, BuildVmTable, CapturedImage, Communicator, Error, ExecRequest, OutputStream, Platform, ProvisionRequest,
    Provisioner, Reclaim, ResourceRecord, Result, Scope, StepContext,
};
use aib_customizers::Generalizer;
use aib_customizers::quote::sh_quote;
use aib_customizers::ssh::{HostKeyCheck, PrivateKey, SshCommunicator, SshConfig, ephemeral_key, private_key_openssh, public_key_line};
use async_trait::async_trait;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The user the build logs in as.
pub const BUILD_USER: &str = "aib";

struct Vm {
    user_key: PrivateKey,
    host_public: String,
    port: u16,
    workdir: PathBuf,
    exited: watch::Receiver<bool>,
    image: aib_core::ResolvedImage,
}

/// Starts build VMs under QEMU.
pub struct QemuProvisioner {
    runs: PathBuf,
    accel: Accelerator,
    network: GuestNetwork,
    connect_timeout: Duration,
    vms: BuildVmTable<Vm>,
}

impl fmt::Debug for QemuProvisioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QemuProvisioner").field("runs", &self.runs).field("accel", &self.accel).finish_non_exhaustive()
    }
}

impl fmt::Display for QemuProvisioner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QemuProvisioner({:?})", self.accel)
    }
}

/// vCPUs and memory (MiB) for an Azure VM size, within what the host has.
pub fn vm_shape(vm_size: Option<&str>) -> (u32, u64) {
    let size = vm_size.filter(|s| !s.is_empty()).unwrap_or("Standard_D2ds_v4");
    let name = size.strip_prefix("Standard_").unwrap_or(size);
    let family: String = name.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let digits: String = name[family.len()..].chars().take_while(|c| c.is_ascii_digit()).collect();
    let want: u32 = digits.parse().unwrap_or(2).max(1);
    let per_cpu_mib: u64 = match family.as_str() {
        "B" | "A" | "F" => 2048,
        "E" | "M" => 8192,
        _ => 4096,
    };
    let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|k| k.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(4096);
    let cpus = want.min(host_cpus).max(1);
    let mem = (u64::from(want) * per_cpu_mib).min(host_mib / 2).max(1024);
    (cpus, mem)
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    Ok(l.local_addr().map_err(|e| Error::io("127.0.0.1:0", e))?.port())
}

fn pid_alive(pidfile: &Path, workdir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    // Only a QEMU of this build VM: the pid may have been reused since.
    String::from_utf8_lossy(&cmdline).contains(&workdir.display().to_string()).then_some(pid)
}

async fn kill(pid: u32, signal: &str) {
    let _ = tokio::process::Command::new("kill").args([signal, &pid.to_string()]).output().await;
}

fn user_data(user_key_line: &str, host_private: &str, host_public: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
    format!(
        "#cloud-config\nmanage_etc_hosts: true\nlocale: false\ngrowpart: {{mode: auto, devices: ['/']}}\nresize_rootfs: true\nssh_pwauth: false\ndisable_root: true\n\
         ssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n{}\n  ed25519_public: {host_public}\n\
         users:\n  - name: {BUILD_USER}\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n      - {user_key_line}\n",
        indent(host_private)
    )
}

/// What a build VM's network reaches, besides the SSH forward from the host's 127.0.0.1 that
/// aib itself uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum GuestNetwork {
    /// Nothing: QEMU user networking with `restrict=on`, so template code on the VM reaches
    /// neither the host (its loopback services, other runs' forwards and tunnels) nor any
    /// network beyond it. The default.
    #[default]
    Isolated,
    /// The internet and package mirrors, for templates that install packages, through passt
    /// with `--no-map-gw` (Debian's `passt`; `scripts/setup-local.sh` installs it): the VM
    /// shares the host's view of the network, but its gateway is the real gateway, so the
    /// host's loopback services stay out of reach (QEMU's user networking would map them at
    /// 10.0.2.2). Services the host offers on its other addresses are reachable, as from any
    /// machine of its network.
    Outbound,
}

/// The `-netdev` of a build VM forwarding host `127.0.0.1:port` to its SSH.
fn isolated_netdev(port: u16) -> String {
    format!("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22")
}

impl QemuProvisioner {
    /// A provisioner keeping build VMs under `runs`, with the accelerator probed for this host.
    pub fn new(runs: impl Into<PathBuf>) -> Self {
        QemuProvisioner {
            runs: runs.into(),
            accel: Accelerator::probe(),
            network: GuestNetwork::default(),
            connect_timeout: Duration::from_secs(20 * 60),
            vms: BuildVmTable::default(),
        }
    }

    /// Uses this accelerator.
    #[must_use]
    pub fn with_accelerator(mut self, a: Accelerator) -> Self {
        self.accel = a;
        self
    }

    /// The accelerator in use.
    pub fn accelerator(&self) -> Accelerator {
        self.accel
    }

    /// What the build VMs' network reaches (default [`GuestNetwork::Isolated`]).
    #[must_use]
    pub fn with_guest_network(mut self, n: GuestNetwork) -> Self {
        self.network = n;
        self
    }

    /// What the build VMs' network reaches.
    pub fn guest_network(&self) -> GuestNetwork {
        self.network
    }

    fn vm(&self, id: &str) -> Result<Arc<Vm>> {
        self.vms.get(id, BACKEND)
    }

    async fn spawn(&self, workdir: &Path, args: &[String], port: u16) -> Result<tokio::process::Child> {
        let out = std::fs::File::create(workdir.join("qemu.out")).map_err(|e| Error::io(workdir, e))?;
        let mut child = tokio::process::Command::new("qemu-system-x86_64")
            .args(args)
            .env_clear()
            .envs(aib_core::boundary::tool_env())
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().map_err(|e| Error::io(workdir, e))?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .map_err(|e| crate::tools::missing("qemu-system-x86_64", e))?;
        // Started once QMP answers: QEMU serves it from its main loop, which runs only after the
        // machine and its network (the SSH forward's port among them) are set up. A bad
        // argument or a taken port ends the process first. No fixed wait either way.
        let qmp = workdir.join("qmp.sock");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(workdir.join("qemu.out")).unwrap_or_default();
                return Err(LocalError::qemu_exited(status, log.trim().to_string(), port).into());
            }
            if qmp.exists() && qmp::execute(&qmp, "query-status").await.is_ok() {
                return Ok(child);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Timeout { operation: "QEMU answering on QMP after its start".into(), after: Duration::from_secs(30) });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn wait_exit(vm: &Vm, t: Duration) -> bool {
        let mut rx = vm.exited.clone();
        tokio::time::timeout(t, rx.wait_for(|e| *e)).await.is_ok()
    }
}

#[async_trait]
impl Provisioner for QemuProvisioner {
    async fn provision(&self, req: &ProvisionRequest, ctx: &StepContext) -> Result<BuildVm> {
        let base = req.image.attributes.get("disk").and_then(|d| d.as_str()).map(PathBuf::from).ok_or_else(|| Error::InvalidConfig {
            backend: BACKEND,
            key: "source".into(),
            message: format!("`{}` was not resolved by the local backend (no disk file)", req.image.exact),
        })?;
        let base_format = req.image.attributes.get("diskFormat").and_then(|d| d.as_str()).unwrap_or("qcow2").to_string();
        let workdir = self.runs.join(ctx.run.run_id()).join(format!("vm-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let dir_id = ctx.record(ResourceRecord::new(BACKEND, "dir", workdir.display().to_string(), Scope::BuildVm))?;
        tokio::fs::create_dir_all(&workdir).await.map_err(|e| Error::io(&workdir, e))?;

        // Keys: the user's, and the host's, generated here so the first connection is verified.
        let user_key = ephemeral_key()?;
        let host_key = ephemeral_key()?;
        let host_public = public_key_line(&host_key, "aib-build-host")?;
        let key_file = workdir.join("id_ed25519");
        write_private(&key_file, private_key_openssh(&user_key)?.as_bytes())?;

        let overlay = workdir.join("overlay.qcow2");
        run(
            "qemu-img",
            ["create", "-q", "-f", "qcow2", "-b", &base.display().to_string(), "-F", &base_format, &overlay.display().to_string()],
        )
        .await?;
        if let Some(gb) = req.vm_profile.os_disk_size_gb.as_ref().and_then(|e| e.value()).copied().filter(|g| *g > 0) {
            let want = u64::from(gb as u32) << 30;
            let info = image_info(&overlay, Some("qcow2")).await?;
            if want > info.virtual_size {
                run("qemu-img", ["resize", "-q", "-f", "qcow2", &overlay.display().to_string(), &want.to_string()]).await?;
            } else if want < info.virtual_size {
                return Err(Error::InvalidConfig {
                    backend: BACKEND,
                    key: "osDiskSizeGB".into(),
                    message: format!("{gb} GB is smaller than the source disk ({} bytes); disks only grow", info.virtual_size),
                });
            }
        }
        let seed = workdir.join("seed");
        tokio::fs::create_dir_all(&seed).await.map_err(|e| Error::io(&seed, e))?;
        let ud = user_data(&public_key_line(&user_key, "aib-build")?, &private_key_openssh(&host_key)?, &host_public);
        // The user-data holds the VM's host private key: created private, never readable first.
        write_private(&seed.join("user-data"), ud.as_bytes())?;
        tokio::fs::write(seed.join("meta-data"), format!("instance-id: {}\nlocal-hostname: aib-build\n", ctx.run.run_id()))
            .await
            .map_err(|e| Error::io(&seed, e))?;
        let iso = workdir.join("seed.iso");
        run(
            "genisoimage",
            [
                "-quiet",
                "-output",
                &iso.display().to_string(),
                "-volid",
                "cidata",
                "-joliet",
                "-rock",
                &seed.join("user-data").display().to_string(),
                &seed.join("meta-data").display().to_string(),
            ],
        )
        .await?;
        let attr = |k: &str| req.image.attributes.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let bios = attr("firmware").as_deref() == Some("bios");
        let vars = workdir.join("vars.fd");
        if !bios {
            tokio::fs::copy(OVMF_VARS, &vars).await.map_err(|e| Error::io(OVMF_VARS, e))?;
        }
        let (cpus, mem) = vm_shape(req.vm_profile.vm_size.as_deref());
        let pidfile = workdir.join("qemu.pid");
        let qmp_sock = workdir.join("qmp.sock");
        let console = workdir.join("console.log");
        let mut attempt = 0;
        let (child, port) = loop {
            attempt += 1;
            let port = free_port()?;
            let port_id = ctx.record(ResourceRecord::new(BACKEND, "port", format!("127.0.0.1:{port}"), Scope::BuildVm))?;
            ctx.record(
                ResourceRecord::new(BACKEND, "process", format!("qemu {}", workdir.display()), Scope::BuildVm)
                    .with_attribute("pidfile", pidfile.display().to_string())
                    .with_attribute("workdir", workdir.display().to_string())
                    .with_attribute("qmp", qmp_sock.display().to_string()),
            )?;
            // Outbound: passt owns the SSH forward and the network (no host loopback).
            let net = match self.network {
                GuestNetwork::Isolated => isolated_netdev(port),
                GuestNetwork::Outbound => match crate::passt::start(&workdir, port, ctx).await {
                    Ok(p) => p.netdev(),
                    Err(e) if attempt < 5 && e.is_retryable() => {
                        ctx.release(&port_id)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let mut args: Vec<String> = self.accel.qemu_args().iter().map(|s| s.to_string()).collect();
            if !bios {
                for d in
                    [format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"), format!("if=pflash,format=raw,file={}", vars.display())]
                {
                    args.push("-drive".into());
                    args.push(d);
                }
            }
            // Direct kernel boot: the first boot of a BIOS base, before GRUB is installed.
            if let (Some(k), Some(i)) = (attr("kernel"), attr("initrd")) {
                args.extend([
                    "-kernel".to_string(),
                    k,
                    "-initrd".into(),
                    i,
                    "-append".into(),
                    attr("append").unwrap_or_else(|| "root=LABEL=root rw console=ttyS0".into()),
                ]);
            }
            args.extend(
                [
                    "-smp",
                    &cpus.to_string(),
                    "-m",
                    &mem.to_string(),
                    "-machine",
                    "q35",
                    "-display",
                    "none",
                    "-no-reboot",
                    "-name",
                    &format!("aib-{}", ctx.run.run_id()),
                    "-drive",
                    &format!("file={},if=virtio,format=qcow2,discard=unmap,cache=unsafe", overlay.display()),
                    "-drive",
                    &format!("file={},if=virtio,format=raw,readonly=on", iso.display()),
                    "-netdev",
                    &net,
                    "-device",
                    "virtio-net-pci,netdev=n0",
                    "-device",
                    "virtio-rng-pci",
                    // Appending, so the console file can be cut while QEMU writes it.
                    "-chardev",
                    &format!("file,id=console,path={},append=on", console.display()),
                    "-serial",
                    "chardev:console",
                    "-monitor",
                    "none",
                    "-qmp",
                    &format!("unix:{},server=on,wait=off", qmp_sock.display()),
                    "-pidfile",
                    &pidfile.display().to_string(),
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            for (i, gb) in req.data_disks_gb.iter().enumerate() {
                let d = workdir.join(format!("data{i}.qcow2"));
                run("qemu-img", ["create", "-q", "-f", "qcow2", &d.display().to_string(), &format!("{gb}G")]).await?;
                args.push("-drive".into());
                args.push(format!("file={},if=virtio,format=qcow2,discard=unmap,cache=unsafe", d.display()));
            }
            match self.spawn(&workdir, &args, port).await {
                Ok(child) => break (child, port),
                // Another process took the port between the probe and QEMU's bind.
                Err(e) if attempt < 5 && e.is_retryable() => {
                    ctx.release(&port_id)?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        let (tx, rx) = watch::channel(false);
        let mut child = child;
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = tx.send(true);
        });
        // The serial console, line by line, into the run's events and log.
        let out = ctx.run.output("console");
        tokio::spawn(follow_console(console.clone(), rx.clone(), out));
        let known_hosts = workdir.join("known_hosts");
        tokio::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {host_public}\n")).await.map_err(|e| Error::io(&known_hosts, e))?;
        let command = format!(
            "ssh -i {} -p {port} -o UserKnownHostsFile={} -o IdentitiesOnly=yes {BUILD_USER}@127.0.0.1",
            sh_quote(&key_file.display().to_string()),
            sh_quote(&known_hosts.display().to_string())
        );
        let mut access = AccessInfo::new("ssh", "127.0.0.1", port, BUILD_USER, command);
        access.key_file = Some(key_file);
        let mut vm = BuildVm::new(workdir.display().to_string(), dir_id, req.image.platform, access);
        vm.attributes.insert("overlay".into(), overlay.display().to_string().into());
        vm.attributes.insert("accelerator".into(), format!("{:?}", self.accel).into());
        vm.attributes.insert("shape".into(), format!("{cpus} vCPU, {mem} MiB").into());
        let state = Vm { user_key, host_public, port, workdir: workdir.clone(), exited: rx, image: req.image.clone() };
        self.vms.insert(vm.id.clone(), state);
        ctx.notice(format!("build VM started: {:?}, {cpus} vCPU, {mem} MiB, SSH on 127.0.0.1:{port}", self.accel));
        Ok(vm)
    }

    async fn connect(&self, vm: &BuildVm, ctx: &StepContext) -> Result<Arc<dyn Communicator>> {
        let state = self.vm(&vm.id)?;
        if vm.platform == Platform::Windows {
            return Err(Error::Unsupported { operation: "Windows build VMs".into(), backend: BACKEND });
        }
        let cfg = SshConfig::builder()
            .host("127.0.0.1")
            .port(state.port)
            .user(BUILD_USER)
            .key(state.user_key.clone())
            .host_key(HostKeyCheck::PublicKey(state.host_public.clone()))
            .connect_timeout(self.connect_timeout)
            // Polled tightly: the guest's sshd comes up at one moment, and every second of
            // backoff past it is a second of the build.
            .retry_backoff(Duration::from_millis(100), Duration::from_millis(250))
            .build()?;
        let mut exited = state.exited.clone();
        let comm = tokio::select! {
            c = SshCommunicator::connect(cfg) => c?,
            _ = exited.wait_for(|e| *e) => {
                let log = std::fs::read_to_string(state.workdir.join("console.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                return Err(LocalError::VmStopped { console: tail.into_iter().rev().collect::<Vec<_>>().join(" | ") }.into());
            }
        };
        ctx.notice(format!("connected over SSH after {:.1} s; waiting for cloud-init", comm.last_connect_time().as_secs_f64()));
        let sink = ctx.output.clone();
        let st = comm
            .execute(
                &ExecRequest::new("cloud-init status --wait >/dev/null; s=$?; cloud-init status; exit $s")
                    .with_timeout(Duration::from_secs(900)),
                &*sink,
            )
            .await?;
        // 0: done; 2: done with recoverable warnings.
        if !matches!(st.code, Some(0) | Some(2)) {
            return Err(Error::StepFailed {
                step: "connect".into(),
                exit_code: st.code,
                message: "cloud-init did not finish on the build VM".into(),
            });
        }
        Ok(Arc::new(comm))
    }

    async fn generalize(&self, vm: &BuildVm, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        let state = self.vm(&vm.id)?;
        // One session: once the host keys are gone, sshd accepts no new connection.
        let g = Generalizer::new(vm.platform).with_build_user(BUILD_USER).command();
        let cmd = format!("set -e\n{g}\nsudo -n fstrim -a || true\nsync\nsudo -n systemctl --no-block poweroff");
        ctx.output.line(OutputStream::Stdout, "aib: generalizing, trimming and powering off in one session");
        let st = comm.execute(&ExecRequest::new(cmd).expecting_disconnect().with_timeout(Duration::from_secs(1200)), &*ctx.output).await?;
        if !st.success() {
            return Err(Error::StepFailed { step: ctx.name.clone(), exit_code: st.code, message: "generalization failed".into() });
        }
        if Self::wait_exit(&state, Duration::from_secs(180)).await {
            return Ok(());
        }
        ctx.run.notice("the VM did not power off by itself; sending an ACPI power-down over QMP");
        let qmp = state.workdir.join("qmp.sock");
        let _ = qmp::execute(&qmp, "system_powerdown").await;
        if Self::wait_exit(&state, Duration::from_secs(90)).await {
            return Ok(());
        }
        let _ = qmp::execute(&qmp, "quit").await;
        if Self::wait_exit(&state, Duration::from_secs(10)).await {
            Ok(())
        } else {
            Err(Error::Timeout { operation: "powering off the build VM".into(), after: Duration::from_secs(280) })
        }
    }

    async fn capture(&self, vm: &BuildVm, ctx: &StepContext) -> Result<CapturedImage> {
        let overlay = vm
            .attributes
            .get("overlay")
            .and_then(|v| v.as_str())
            .map(PathBuf::from)
            .ok_or_else(|| LocalError::VmState(format!("the build VM `{}` has no overlay disk", vm.id)))?;
        let state = self.vm(&vm.id)?;
        if !*state.exited.borrow() {
            return Err(LocalError::VmState("the build VM is still running; capture needs it powered off".into()).into());
        }
        let info = image_info(&overlay, Some("qcow2")).await?;
        let source = state.image.clone();
        let mut img = CapturedImage::new(overlay.display().to_string(), "qcow2", overlay.display().to_string(), source);
        img.platform = vm.platform;
        img.size_bytes = Some(info.virtual_size);
        img.attributes.insert("allocated".into(), info.actual_size.into());
        ctx.output.line(
            OutputStream::Stdout,
            &format!(
                "captured {} ({} MiB virtual, {} MiB in the overlay)",
                overlay.display(),
                info.virtual_size >> 20,
                info.actual_size >> 20
            ),
        );
        Ok(img)
    }
}

#[async_trait]
impl Reclaim for QemuProvisioner {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<()> {
        // A record read back from a ledger acts only inside this provisioner's runs directory:
        // a planted `{"kind": "dir", "name": "/home/u"}` deletes nothing, and a process whose
        // work directory is elsewhere (or empty, which every command line contains) is not killed.
        let outside = |p: &Path| {
            (!aib_core::boundary::lies_under(p, &self.runs)).then(|| {
                Error::from(LocalError::VmState(format!(
                    "`{}` is not inside {}; nothing was done (remove it by hand if it is a leftover)",
                    p.display(),
                    self.runs.display()
                )))
            })
        };
        if matches!(record.kind.as_str(), "dir" | "file")
            && let Some(e) = outside(Path::new(&record.name))
        {
            return Err(e);
        }
        match record.kind.as_str() {
            "process" => {
                let attr = |k: &str| record.attributes.get(k).and_then(|v| v.as_str()).map(PathBuf::from);
                let (Some(pidfile), Some(workdir)) = (attr("pidfile"), attr("workdir")) else { return Ok(()) };
                if let Some(e) = outside(&workdir).or_else(|| outside(&pidfile)) {
                    return Err(e);
                }
                if let Some(pid) = pid_alive(&pidfile, &workdir) {
                    kill(pid, "-TERM").await;
                    for _ in 0..50 {
                        if pid_alive(&pidfile, &workdir).is_none() {
                            return Ok(());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    kill(pid, "-KILL").await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if pid_alive(&pidfile, &workdir).is_some() {
                        return Err(LocalError::VmState(format!("qemu pid {pid} survived SIGKILL")).into());
                    }
                }
                Ok(())
            }
            "dir" => match tokio::fs::remove_dir_all(&record.name).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&record.name, e)),
                _ => {
                    self.vms.remove(&record.name);
                    // The run's directory goes once its last VM is gone.
                    if let Some(parent) = Path::new(&record.name).parent() {
                        let _ = tokio::fs::remove_dir(parent).await;
                    }
                    Ok(())
                }
            },
            "file" => match tokio::fs::remove_file(&record.name).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&record.name, e)),
                _ => Ok(()),
            },
            // A port is free once its process is gone; nothing to do.
            "port" => Ok(()),
            other => Err(Error::Unsupported { operation: format!("deleting a `{other}`"), backend: BACKEND }),
        }
    }
}

/// Creates `p` 0600 (exclusively, never through a link) and writes `data`: secrets are never
/// readable by others, not even for a moment.
fn write_private(p: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(p)
        .map_err(|e| Error::io(p, e))?;
    f.write_all(data).map_err(|e| Error::io(p, e))
}

/// The console file is cut back to nothing past this size: a guest that floods its serial
/// console cannot fill the host's disk.
const CONSOLE_MAX_BYTES: u64 = 16 << 20;
/// A console line longer than this is cut into pieces.
const CONSOLE_LINE_MAX: usize = 8 << 10;

/// Follows the serial console file until QEMU exits: reads only what is new (never the whole
/// file again), emits complete lines (long ones in pieces), and cuts the file back when it grows
/// past [`CONSOLE_MAX_BYTES`].
async fn follow_console(path: PathBuf, mut done: tokio::sync::watch::Receiver<bool>, out: Arc<dyn aib_core::OutputSink>) {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let (mut pos, mut partial, mut buf) = (0u64, Vec::<u8>::new(), vec![0u8; 64 << 10]);
    let mut file: Option<tokio::fs::File> = None;
    let emit = |bytes: &[u8]| {
        for piece in bytes.chunks(CONSOLE_LINE_MAX) {
            let line = String::from_utf8_lossy(piece).trim_end().replace(|c: char| c.is_control(), "");
            if !line.is_empty() {
                out.line(OutputStream::Stdout, &line);
            }
        }
    };
    loop {
        let finished = *done.borrow();
        if file.is_none() {
            file = tokio::fs::File::open(&path).await.ok();
        }
        let mut more = false;
        if let Some(f) = file.as_mut() {
            let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
            if len < pos {
                pos = 0;
            }
            if len > pos && f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                let n = f.read(&mut buf).await.unwrap_or(0);
                pos += n as u64;
                more = n > 0 && pos < len;
                partial.extend_from_slice(&buf[..n]);
                while let Some(i) = partial.iter().position(|b| *b == b'\n') {
                    emit(&partial[..i]);
                    partial.drain(..=i);
                }
                while partial.len() > CONSOLE_LINE_MAX {
                    emit(&partial[..CONSOLE_LINE_MAX]);
                    partial.drain(..CONSOLE_LINE_MAX);
                }
            }
            if pos > CONSOLE_MAX_BYTES && !more {
                if let Ok(w) = std::fs::OpenOptions::new().write(true).open(&path) {
                    let _ = w.set_len(0);
                }
                pos = 0;
                out.line(OutputStream::Stderr, &format!("[console over {} MiB: its file was cut back]", CONSOLE_MAX_BYTES >> 20));
            }
        }
        if more {
            continue;
        }
        if finished {
            emit(&partial);
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), done.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_console_is_followed_incrementally_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        use std::io::Write;
        writeln!(f, "boot: hello\r").unwrap();
        f.write_all(&vec![b'z'; CONSOLE_LINE_MAX * 2 + 5]).unwrap();
        writeln!(f).unwrap();
        let flood = format!("{}\n", "y".repeat(999));
        for _ in 0..(CONSOLE_MAX_BYTES as usize / 1000 + 100) {
            f.write_all(flood.as_bytes()).unwrap();
        }
        write!(f, "last words").unwrap();
        let sink = aib_core::MemorySink::with_limit(64 << 20);
        let (tx, rx) = watch::channel(false);
        let follower = tokio::spawn(follow_console(path.clone(), rx, Arc::new(sink.clone())));
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).unwrap();
        follower.await.unwrap();
        let lines = sink.lines();
        assert_eq!(lines[0].1, "boot: hello");
        assert_eq!((lines[1].1.len(), lines[2].1.len(), lines[3].1.as_str()), (CONSOLE_LINE_MAX, CONSOLE_LINE_MAX, "zzzzz"));
        assert!(lines.iter().any(|(s, l)| *s == OutputStream::Stderr && l.contains("cut back")), "the cut is said");
        assert_eq!(lines.last().unwrap().1, "last words", "a final line without a newline is not lost");
        assert!(std::fs::metadata(&path).unwrap().len() < CONSOLE_MAX_BYTES, "the file was cut back");
    }

    #[test]
    fn vm_sizes_map_within_the_host() {
        let host = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        let (c, m) = vm_shape(Some("Standard_D2s_v3"));
        assert_eq!(c, 2.min(host));
        assert!(m >= 1024);
        let (c, _) = vm_shape(Some("Standard_D64s_v5"));
        assert!(c <= host);
        assert_eq!(vm_shape(None).0, 2.min(host));
        assert_eq!(vm_shape(Some("nonsense")).0, 2.min(host));
    }

    #[test]
    fn user_data_carries_the_keys() {
        let ud = user_data(
            "ssh-ed25519 AAAA user",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----",
            "ssh-ed25519 BBBB host",
        );
        assert!(ud.starts_with("#cloud-config\n"));
        assert!(ud.contains("  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    abc\n"));
        assert!(ud.contains("ed25519_public: ssh-ed25519 BBBB host"));
        assert!(ud.contains("      - ssh-ed25519 AAAA user"));
        assert!(ud.contains("ssh_genkeytypes: []"));
    }
}
