//! The QEMU provisioner: a copy-on-write overlay over the read-only base, a cloud-init
//! NoCloud seed carrying an ephemeral user key and a pre-generated host key (so the host key
//! is verified from the first connection), user-mode networking on 127.0.0.1, the serial
//! console in the run log, and QMP for power-down. Everything goes through the ledger.

use crate::console::{follow_console, write_private};
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

pub(crate) struct Vm {
    /// This run's keys.
    pub(crate) user_key: PrivateKey,
    pub(crate) host_public: String,
    /// The host key a restored VM is given on its first connection.
    pub(crate) host_private: Option<String>,
    pub(crate) port: u16,
    pub(crate) workdir: PathBuf,
    pub(crate) exited: watch::Receiver<bool>,
    image: aib_core::ResolvedImage,
    /// Restored from a warm state: how to log in first, and what to mend.
    pub(crate) warm: Option<crate::warm::Login>,
    /// The overlay the VM writes now, and the frozen disk it is backed by (both change when
    /// a resume point is kept).
    disks: std::sync::Mutex<(PathBuf, PathBuf)>,
    /// How many resume points this VM has kept.
    pub(crate) layers: std::sync::atomic::AtomicUsize,
    /// The UEFI variables' file (unless `bios`).
    pub(crate) vars: PathBuf,
    pub(crate) bios: bool,
}

impl Vm {
    /// The overlay the VM writes now.
    pub(crate) fn active(&self) -> PathBuf {
        self.disks.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// The frozen disk the active overlay is backed by.
    pub(crate) fn backing(&self) -> PathBuf {
        self.disks.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    pub(crate) fn set_active(&self, active: PathBuf, backing: PathBuf) {
        *self.disks.lock().unwrap_or_else(|e| e.into_inner()) = (active, backing);
    }
}

/// Starts build VMs under QEMU.
pub struct QemuProvisioner {
    pub(crate) runs: PathBuf,
    accel: Accelerator,
    network: GuestNetwork,
    pub(crate) connect_timeout: Duration,
    vms: BuildVmTable<Vm>,
    pub(crate) warm: Option<crate::warm::WarmStore>,
    pub(crate) cache: Option<crate::cache::StepCache>,
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
            warm: None,
            cache: None,
        }
    }

    /// Keeps the step cache's resume points in `cache` (see [`crate::cache`]); they need warm
    /// states ([`QemuProvisioner::with_warm_states`]). `None` (the default) keeps none.
    #[must_use]
    pub fn with_step_cache(mut self, cache: Option<crate::cache::StepCache>) -> Self {
        self.cache = cache;
        self
    }

    /// Where resume points are kept, if they are.
    pub fn step_cache(&self) -> Option<&crate::cache::StepCache> {
        self.cache.as_ref()
    }

    /// Starts build VMs from saved VM states kept in `store` (see [`crate::warm`]): the first
    /// build of a base and VM shape boots one and saves it, later ones restore it. `None`
    /// (the default of a bare provisioner) boots every VM.
    #[must_use]
    pub fn with_warm_states(mut self, store: Option<crate::warm::WarmStore>) -> Self {
        self.warm = store;
        self
    }

    /// Where saved VM states are kept, if they are used.
    pub fn warm_states(&self) -> Option<&crate::warm::WarmStore> {
        self.warm.as_ref()
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

    pub(crate) fn vm(&self, id: &str) -> Result<Arc<Vm>> {
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

    /// Starts QEMU for `m` on a free port (retried when another process takes it first), with
    /// the port and the process in the ledger. `incoming`: paused, waiting for a VM state.
    pub(crate) async fn start(
        &self,
        workdir: &Path,
        m: &Machine,
        f: &VmFiles,
        name: &str,
        incoming: bool,
        ctx: &StepContext,
    ) -> Result<(tokio::process::Child, u16)> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port()?;
            let port_id = ctx.record(ResourceRecord::new(BACKEND, "port", format!("127.0.0.1:{port}"), Scope::BuildVm))?;
            ctx.record(
                ResourceRecord::new(BACKEND, "process", format!("qemu {}", workdir.display()), Scope::BuildVm)
                    .with_attribute("pidfile", f.pidfile.display().to_string())
                    .with_attribute("workdir", workdir.display().to_string())
                    .with_attribute("qmp", f.qmp.display().to_string()),
            )?;
            // Outbound: passt owns the SSH forward and the network (no host loopback).
            let net = match m.network {
                GuestNetwork::Isolated => isolated_netdev(port),
                GuestNetwork::Outbound => match crate::passt::start(workdir, port, ctx).await {
                    Ok(p) => p.netdev(),
                    Err(e) if attempt < 5 && e.is_retryable() => {
                        ctx.release(&port_id)?;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match self.spawn(workdir, &m.args(f, name, &net, incoming), port).await {
                Ok(child) => return Ok((child, port)),
                // Another process took the port between the probe and QEMU's bind.
                Err(e) if attempt < 5 && e.is_retryable() => {
                    ctx.release(&port_id)?;
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Watches `child` until it exits, and follows its serial console into `out`.
    pub(crate) fn watch(
        &self,
        mut child: tokio::process::Child,
        console: &Path,
        out: Arc<dyn aib_core::OutputSink>,
    ) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let _ = child.wait().await;
            let _ = tx.send(true);
        });
        tokio::spawn(follow_console(console.to_path_buf(), rx.clone(), out));
        rx
    }

    /// An SSH session to a build VM with `key`, verifying `host_public`; gives up when the VM stops.
    async fn ssh(&self, state: &Vm, key: &PrivateKey, host_public: &str) -> Result<SshCommunicator> {
        ssh_to(state.port, key, host_public, self.connect_timeout, state.exited.clone(), &state.workdir).await
    }
}

/// An SSH session to the build VM on `127.0.0.1:port`, polled tightly (the guest's sshd comes
/// up at one moment, and every second of backoff past it is a second of the build); a VM that
/// stops first is an error with the end of its console.
pub(crate) async fn ssh_to(
    port: u16,
    key: &PrivateKey,
    host_public: &str,
    timeout: Duration,
    mut exited: watch::Receiver<bool>,
    workdir: &Path,
) -> Result<SshCommunicator> {
    let cfg = SshConfig::builder()
        .host("127.0.0.1")
        .port(port)
        .user(BUILD_USER)
        .key(key.clone())
        .host_key(HostKeyCheck::PublicKey(host_public.to_string()))
        .connect_timeout(timeout)
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(250))
        .build()?;
    tokio::select! {
        c = SshCommunicator::connect(cfg) => c,
        _ = exited.wait_for(|e| *e) => {
            let log = std::fs::read_to_string(workdir.join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            Err(LocalError::VmStopped { console: tail.into_iter().rev().collect::<Vec<_>>().join(" | ") }.into())
        }
    }
}

/// Waits for cloud-init to finish on a freshly booted VM.
pub(crate) async fn wait_for_cloud_init(comm: &SshCommunicator, out: &(dyn aib_core::OutputSink + 'static)) -> Result<()> {
    let st = comm
        .execute(
            &ExecRequest::new("cloud-init status --wait >/dev/null; s=$?; cloud-init status; exit $s")
                .with_timeout(Duration::from_secs(900)),
            out,
        )
        .await?;
    // 0: done; 2: done with recoverable warnings.
    if matches!(st.code, Some(0) | Some(2)) {
        Ok(())
    } else {
        Err(Error::StepFailed { step: "connect".into(), exit_code: st.code, message: "cloud-init did not finish on the build VM".into() })
    }
}

/// What QEMU is given for one build VM, apart from its files and its network's address.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) accel: Accelerator,
    pub(crate) bios: bool,
    /// Kernel, initrd and command line of a direct kernel boot.
    pub(crate) kernel: Option<(String, String, String)>,
    pub(crate) cpus: u32,
    pub(crate) mem: u64,
    pub(crate) network: GuestNetwork,
}

/// The files of one build VM.
#[derive(Debug, Clone)]
pub(crate) struct VmFiles {
    pub(crate) overlay: PathBuf,
    pub(crate) iso: PathBuf,
    pub(crate) vars: PathBuf,
    pub(crate) console: PathBuf,
    pub(crate) qmp: PathBuf,
    pub(crate) pidfile: PathBuf,
    pub(crate) data: Vec<PathBuf>,
}

impl VmFiles {
    /// The files of a VM whose work directory is `dir`.
    pub(crate) fn in_dir(dir: &Path) -> VmFiles {
        VmFiles {
            overlay: dir.join("overlay.qcow2"),
            iso: dir.join("seed.iso"),
            vars: dir.join("vars.fd"),
            console: dir.join("console.log"),
            qmp: dir.join("qmp.sock"),
            pidfile: dir.join("qemu.pid"),
            data: Vec::new(),
        }
    }
}

impl Machine {
    /// QEMU's arguments. The machine type is pinned (`q35` is an alias that moves with QEMU
    /// releases) and the device set is fixed, so that a saved VM state fits every VM of the
    /// same shape. `incoming`: started paused, waiting for a VM state.
    pub(crate) fn args(&self, f: &VmFiles, name: &str, net: &str, incoming: bool) -> Vec<String> {
        let mut args: Vec<String> = self.accel.qemu_args().iter().map(|s| s.to_string()).collect();
        if !self.bios {
            for d in
                [format!("if=pflash,format=raw,readonly=on,file={OVMF_CODE}"), format!("if=pflash,format=raw,file={}", f.vars.display())]
            {
                args.push("-drive".into());
                args.push(d);
            }
        }
        if let Some((k, i, append)) = &self.kernel {
            args.extend(["-kernel".to_string(), k.clone(), "-initrd".into(), i.clone(), "-append".into(), append.clone()]);
        }
        let plain = [
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &self.mem.to_string(),
            "-machine",
            crate::tools::machine_type(),
            "-display",
            "none",
            "-no-reboot",
            "-name",
            name,
            "-drive",
            &format!("file={},if=virtio,format=qcow2,discard=unmap,cache=unsafe,id=disk0", f.overlay.display()),
            "-drive",
            &format!("file={},if=virtio,format=raw,readonly=on,id=seed", f.iso.display()),
            "-netdev",
            net,
            "-device",
            "virtio-net-pci,netdev=n0",
            "-device",
            "virtio-rng-pci",
            // A new generation id on every restore, for guests that reseed on it.
            "-device",
            "vmgenid,guid=auto",
            // Appending, so the console file can be cut while QEMU writes it.
            "-chardev",
            &format!("file,id=console,path={},append=on", f.console.display()),
            "-serial",
            "chardev:console",
            "-monitor",
            "none",
            "-qmp",
            &format!("unix:{},server=on,wait=off", f.qmp.display()),
            "-pidfile",
            &f.pidfile.display().to_string(),
        ]
        .map(|s| s.to_string());
        args.extend(plain);
        for d in &f.data {
            args.push("-drive".into());
            args.push(format!("file={},if=virtio,format=qcow2,discard=unmap,cache=unsafe", d.display()));
        }
        if incoming {
            args.extend(["-S".to_string(), "-incoming".into(), "defer".into()]);
        }
        args
    }
}

/// The disks of a cold boot in `workdir`: the overlay over the base, the cloud-init seed
/// with the keys, and the UEFI variables.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn prepare_disks(
    workdir: &Path,
    base: &Path,
    base_format: &str,
    bios: bool,
    user_key: &PrivateKey,
    host_key: &PrivateKey,
    host_public: &str,
    instance_id: &str,
) -> Result<()> {
    let f = VmFiles::in_dir(workdir);
    run(
        "qemu-img",
        ["create", "-q", "-f", "qcow2", "-b", &base.display().to_string(), "-F", base_format, &f.overlay.display().to_string()],
    )
    .await?;
    let seed = workdir.join("seed");
    tokio::fs::create_dir_all(&seed).await.map_err(|e| Error::io(&seed, e))?;
    let ud = user_data(&public_key_line(user_key, "aib-build")?, &private_key_openssh(host_key)?, host_public);
    // The user-data holds the VM's host private key: created private, never readable first.
    write_private(&seed.join("user-data"), ud.as_bytes())?;
    tokio::fs::write(seed.join("meta-data"), format!("instance-id: {instance_id}\nlocal-hostname: aib-build\n"))
        .await
        .map_err(|e| Error::io(&seed, e))?;
    let (ud, md) = (seed.join("user-data").display().to_string(), seed.join("meta-data").display().to_string());
    run("genisoimage", ["-quiet", "-output", &f.iso.display().to_string(), "-volid", "cidata", "-joliet", "-rock", &ud, &md]).await?;
    if !bios {
        tokio::fs::copy(OVMF_VARS, &f.vars).await.map_err(|e| Error::io(OVMF_VARS, e))?;
    }
    Ok(())
}

/// Grows `overlay` to `want` bytes (`osDiskSizeGB` = `gb`); disks never shrink.
pub(crate) async fn grow_overlay(overlay: &Path, gb: u32, want: u64) -> Result<()> {
    let info = image_info(overlay, Some("qcow2")).await?;
    if want > info.virtual_size {
        run("qemu-img", ["resize", "-q", "-f", "qcow2", &overlay.display().to_string(), &want.to_string()]).await?;
    } else if want < info.virtual_size {
        return Err(Error::InvalidConfig {
            backend: BACKEND,
            key: "osDiskSizeGB".into(),
            message: format!("{gb} GB is smaller than the source disk ({} bytes); disks only grow", info.virtual_size),
        });
    }
    Ok(())
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

        let attr = |k: &str| req.image.attributes.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let (cpus, mem) = vm_shape(req.vm_profile.vm_size.as_deref());
        let machine = Machine {
            accel: self.accel,
            bios: attr("firmware").as_deref() == Some("bios"),
            // Direct kernel boot: the first boot of a BIOS base, before GRUB is installed.
            kernel: attr("kernel")
                .zip(attr("initrd"))
                .map(|(k, i)| (k, i, attr("append").unwrap_or_else(|| "root=LABEL=root rw console=ttyS0".into()))),
            cpus,
            mem,
            network: self.network,
        };
        let want_bytes = req.vm_profile.os_disk_size_gb.as_ref().and_then(|e| e.value()).copied().filter(|g| *g > 0).map(|gb| {
            let gb = gb as u32;
            (gb, u64::from(gb) << 30)
        });
        let mut files = VmFiles::in_dir(&workdir);
        for (i, gb) in req.data_disks_gb.iter().enumerate() {
            let d = workdir.join(format!("data{i}.qcow2"));
            run("qemu-img", ["create", "-q", "-f", "qcow2", &d.display().to_string(), &format!("{gb}G")]).await?;
            files.data.push(d);
        }
        let name = format!("aib-{}", ctx.run.run_id());

        // A saved VM state of this base and shape, when there is one (or one can be made).
        let mut warm = None;
        let (mut resumed, mut miss) = (0, None);
        match self.warm_plan(req, &machine, &base).await {
            Ok(plan) => {
                // The longest resume point of the step cache first, then the warm state.
                if self.cache.is_some() && !req.resume.is_empty() {
                    match self.resume_start(&plan, req, &workdir, &machine, &files, &name, want_bytes, ctx).await {
                        Ok((w, n)) => (warm, resumed) = (Some(w), n),
                        Err(why) => miss = Some(why),
                    }
                }
                if warm.is_none() {
                    match self.warm_start(&plan, &workdir, &machine, &files, &name, want_bytes, ctx).await {
                        Ok(w) => warm = Some(w),
                        Err(e) => ctx.notice(format!("warm state not used ({e}); booting the build VM cold")),
                    }
                }
            }
            Err(why) => ctx.output.line(OutputStream::Stdout, &format!("aib: cold boot: {why}")),
        }
        let (rx, port, login) = match warm {
            Some((rx, port, login)) => (rx, port, Some(login)),
            None => {
                prepare_disks(&workdir, &base, &base_format, machine.bios, &user_key, &host_key, &host_public, ctx.run.run_id()).await?;
                if let Some((gb, want)) = want_bytes {
                    grow_overlay(&files.overlay, gb, want).await?;
                }
                let (child, port) = self.start(&workdir, &machine, &files, &name, false, ctx).await?;
                (self.watch(child, &files.console, ctx.run.output("console")), port, None)
            }
        };
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
        vm.attributes.insert("overlay".into(), files.overlay.display().to_string().into());
        vm.attributes.insert("accelerator".into(), format!("{:?}", self.accel).into());
        vm.attributes.insert("shape".into(), format!("{cpus} vCPU, {mem} MiB").into());
        if let Some(l) = &login {
            vm.attributes.insert("warmState".into(), l.chain.warm_key.clone().into());
        }
        vm.resumed = resumed;
        if let Some(why) = miss {
            vm.attributes.insert("cacheMiss".into(), why.into());
        }
        let how = match &login {
            Some(_) if resumed > 0 => "restored from a resume point of the step cache",
            Some(l) if l.restored => "restored from its warm state",
            Some(_) => "started, and saved as a warm state",
            None => "started",
        };
        // The host key reaches a restored VM over its first connection; a cold one had it in its seed.
        let host_private = login.is_some().then(|| private_key_openssh(&host_key)).transpose()?;
        // A cold VM's overlay is backed by the base; only warm ones keep resume points.
        let backing = login.as_ref().map(|l| l.disk.clone()).unwrap_or_else(|| base.clone());
        let state = Vm {
            user_key,
            host_public,
            host_private,
            port,
            workdir: workdir.clone(),
            exited: rx,
            image: req.image.clone(),
            warm: login,
            disks: std::sync::Mutex::new((files.overlay.clone(), backing)),
            layers: Default::default(),
            vars: files.vars.clone(),
            bios: machine.bios,
        };
        self.vms.insert(vm.id.clone(), state);
        ctx.notice(format!("build VM {how}: {:?}, {cpus} vCPU, {mem} MiB, SSH on 127.0.0.1:{port}", self.accel));
        Ok(vm)
    }

    async fn connect(&self, vm: &BuildVm, ctx: &StepContext) -> Result<Arc<dyn Communicator>> {
        let state = self.vm(&vm.id)?;
        if vm.platform == Platform::Windows {
            return Err(Error::Unsupported { operation: "Windows build VMs".into(), backend: BACKEND });
        }
        if let Some(login) = &state.warm {
            // The warm boot's keys open one session, which gives the VM this run's keys, clock
            // and entropy; then this run's keys, and only they, are used.
            let first = self.ssh(&state, &login.user_key, &login.host_public).await?;
            ctx.notice(format!(
                "connected with the keys of {} after {:.1} s; mending clock, entropy and keys",
                login.key,
                first.last_connect_time().as_secs_f64()
            ));
            self.mend(&first, &state, login, ctx).await?;
            drop(first);
            let comm = self.ssh(&state, &state.user_key, &state.host_public).await?;
            return Ok(Arc::new(comm));
        }
        let comm = self.ssh(&state, &state.user_key, &state.host_public).await?;
        ctx.notice(format!("connected over SSH after {:.1} s; waiting for cloud-init", comm.last_connect_time().as_secs_f64()));
        wait_for_cloud_init(&comm, &*ctx.output).await?;
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

    fn checkpoints(&self, req: &ProvisionRequest) -> bool {
        self.cache.is_some()
            && self.warm.is_some()
            && req.image.platform == Platform::Linux
            && req.data_disks_gb.is_empty()
            && req.image.attributes.get("kernel").is_none()
    }

    async fn checkpoint(&self, vm: &BuildVm, point: &aib_core::ResumePoint, ctx: &StepContext) -> Result<bool> {
        self.keep_point(vm, point, ctx).await
    }

    async fn capture(&self, vm: &BuildVm, ctx: &StepContext) -> Result<CapturedImage> {
        let state = self.vm(&vm.id)?;
        // The overlay the VM wrote last: a kept resume point moves the VM to a new one.
        let overlay = state.active();
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
            // A warm state or a resume point being kept are the other places a run makes things.
            let in_warm = self.warm.as_ref().is_some_and(|w| aib_core::boundary::lies_under(p, w.dir()))
                || self.cache.as_ref().is_some_and(|c| aib_core::boundary::lies_under(p, c.dir()));
            (!aib_core::boundary::lies_under(p, &self.runs) && !in_warm).then(|| {
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

#[cfg(test)]
mod tests {
    use super::*;

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
