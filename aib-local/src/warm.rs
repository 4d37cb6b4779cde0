//! Warm VM states: build VMs restored from a saved state instead of booted.
//!
//! The first build of a base and VM shape boots its VM with an identity made for the state
//! (keys and a seed of its own: nothing of the run), waits for cloud-init and systemd, masks
//! the calendar timers for the runtime (in `/run`, never in an image), then freezes the disk
//! (`blockdev-snapshot-sync`: the build goes on in a new overlay), saves the stopped VM with
//! QEMU's migration to a file in `mapped-ram` form (every page at a fixed offset, zero pages
//! left as holes) and continues it as the build's VM. Beside the state are the frozen overlay
//! the guest's page cache belongs to (read-only from then on), the UEFI variables, the seed
//! and the warm identity's keys (0600).
//!
//! A later build creates an overlay over the frozen one, starts QEMU paused with
//! `-incoming defer`, loads the state and continues. Either way, over the warm identity's
//! keys, one command then mends what every VM of the state shares: the clock (set from the
//! host), the kernel's RNG (host entropy mixed in, then a reseed: Debian 12's kernel has no
//! vmgenid driver), the SSH host key and the user key (this run's; the warm ones are never
//! used again and generalization removes them), the machine-id and the random seed; and
//! grows the disk to `osDiskSizeGB`. The build then connects with this run's keys only.
//!
//! The key of a state covers all a restore needs to match: the base disk's digest, the QEMU
//! binary's digest and version, the pinned machine type, the firmware's digest, the whole
//! argument shape (accelerator, CPU model, vCPUs, memory, devices), the guest network and the
//! build user. An expired state (older than the store's `max_age`, 24 h by default, so the
//! clock jump stays small) is made again; a VM shape it cannot serve (data disks, a direct
//! kernel boot, Windows) or a failed save or restore boots cold, and says so.

use crate::console::write_private;
use crate::qemu::{Machine, QemuProvisioner, VmFiles, prepare_disks, ssh_to, wait_for_cloud_init};
use crate::qmp::Qmp;
use crate::tools::{BACKEND, OVMF_CODE, image_info, run, sha256_file};
use aib_core::{Error, ExecRequest, OutputStream, Platform, ProvisionRequest, ResourceRecord, Result, Scope, StepContext};
use aib_customizers::ssh::{PrivateKey, SshCommunicator, ephemeral_key, private_key_openssh, public_key_line};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Calendar timers that could fire right after a restore's clock jump; masked for the
/// runtime of the warm VM (and so of every VM restored from it).
const TIMERS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "fstrim.timer",
    "logrotate.timer",
    "man-db.timer",
];

/// Saved VM states under one directory (`<state>/warm` by default).
#[derive(Debug, Clone)]
pub struct WarmStore {
    dir: PathBuf,
    max_age: Duration,
}

/// One saved VM state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct WarmState {
    /// The key: a digest of everything a restore must match.
    pub key: String,
    /// The source image (`publisher:offer:sku:version`).
    pub source: String,
    /// When it was saved (RFC 3339).
    pub created: String,
    /// The same, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// What the key was made of.
    pub inputs: Value,
    /// Which making of the state this is (a state made again after it expired has the same
    /// key and another generation): the step cache's resume points name it.
    #[serde(default)]
    pub generation: String,
    /// Its directory.
    #[serde(skip)]
    pub dir: PathBuf,
    /// Bytes it takes on disk (the state file is sparse).
    #[serde(skip)]
    pub bytes: u64,
}

impl WarmState {
    /// How old it is.
    pub fn age(&self) -> Duration {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
        Duration::from_secs(now.saturating_sub(self.created_unix))
    }
}

impl WarmStore {
    /// States under `dir`, expiring after 24 hours.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WarmStore { dir: dir.into(), max_age: Duration::from_secs(24 * 3600) }
    }

    /// States older than `age` are not restored (and are pruned).
    #[must_use]
    pub fn with_max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// After how long a state expires.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// Every saved state, oldest first.
    pub async fn list(&self) -> Result<Vec<WarmState>> {
        let mut out = Vec::new();
        let Ok(mut rd) = tokio::fs::read_dir(&self.dir).await else { return Ok(out) };
        while let Some(e) = rd.next_entry().await.map_err(|e| Error::io(&self.dir, e))? {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Some(s) = read_state(&e.path()).await {
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.created_unix);
        Ok(out)
    }

    /// Removes expired states (every state with `all`); what was removed.
    pub async fn prune(&self, all: bool) -> Result<Vec<WarmState>> {
        let mut removed = Vec::new();
        for s in self.list().await? {
            if all || s.age() > self.max_age {
                let _lock = crate::tools::lock_file(&self.lock_path(&s.key), Duration::from_secs(600)).await?;
                tokio::fs::remove_dir_all(&s.dir).await.map_err(|e| Error::io(&s.dir, e))?;
                removed.push(s);
            }
        }
        Ok(removed)
    }

    fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!(".{key}.lock"))
    }

    /// The state of `key`, if it exists and has not expired.
    pub(crate) async fn fresh(&self, key: &str) -> Option<WarmState> {
        read_state(&self.dir.join(key)).await.filter(|s| s.age() <= self.max_age && s.key == key)
    }
}

async fn read_state(dir: &Path) -> Option<WarmState> {
    let text = tokio::fs::read_to_string(dir.join("meta.json")).await.ok()?;
    let mut s: WarmState = serde_json::from_str(&text).ok()?;
    s.dir = dir.to_path_buf();
    s.bytes = allocated(dir);
    Some(s)
}

/// Bytes allocated to the files of `dir` (holes not counted).
pub(crate) fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).map(|rd| rd.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.blocks() * 512).sum()).unwrap_or(0)
}

/// Which state a build VM could restore.
#[derive(Clone)]
pub(crate) struct Plan {
    pub(crate) key: String,
    inputs: Value,
    base: PathBuf,
    base_format: String,
    source: String,
}

/// How to reach a restored VM the first time, and what to mend then.
pub(crate) struct Login {
    pub(crate) key: String,
    pub(crate) user_key: PrivateKey,
    pub(crate) host_public: String,
    /// The disk was grown to this many bytes after the restore: the partition and file
    /// system follow.
    pub(crate) grow_to: Option<u64>,
    /// Restored from a saved state (false: booted, and saved as one).
    pub(crate) restored: bool,
    /// The warm state the VM's disk and memory descend from: its resume points name it.
    pub(crate) chain: Chain,
    /// The frozen disk the VM's overlay is backed by (the warm state's, or a resume point's).
    pub(crate) disk: PathBuf,
}

/// The warm state a VM descends from, and the seed image its VM state was saved with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Chain {
    pub(crate) warm_key: String,
    pub(crate) generation: String,
    pub(crate) seed: PathBuf,
}

impl WarmState {
    /// The chain of a VM restored from this state.
    pub(crate) fn chain(&self) -> Chain {
        let generation = if self.generation.is_empty() { self.created_unix.to_string() } else { self.generation.clone() };
        Chain { warm_key: self.key.clone(), generation, seed: self.dir.join("seed.iso") }
    }
}

/// The installed QEMU: path, version and digest (hashed once per process).
async fn qemu_identity() -> Result<Value> {
    static ID: tokio::sync::OnceCell<Value> = tokio::sync::OnceCell::const_new();
    ID.get_or_try_init(|| async {
        let path = crate::tools::which("qemu-system-x86_64")
            .ok_or_else(|| crate::tools::missing("qemu-system-x86_64", std::io::Error::from(std::io::ErrorKind::NotFound)))?;
        let path = std::fs::canonicalize(&path).unwrap_or(path);
        let version = run("qemu-system-x86_64", ["--version"]).await?.lines().next().unwrap_or_default().to_string();
        let code = if Path::new(OVMF_CODE).exists() { Some(sha256_file(Path::new(OVMF_CODE)).await?) } else { None };
        Ok(json!({"path": path, "version": version, "sha256": sha256_file(&path).await?, "ovmfCode": code}))
    })
    .await
    .cloned()
}

const CAPABILITIES: &str = r#"[{"capability": "mapped-ram", "state": true}, {"capability": "multifd", "state": true}]"#;

fn capabilities() -> Value {
    json!({"capabilities": serde_json::from_str::<Value>(CAPABILITIES).unwrap_or_default()})
}

/// Saves the stopped VM of session `q` into `file`.
pub(crate) async fn save(q: &mut Qmp, file: &Path) -> Result<()> {
    q.call("migrate-set-capabilities", capabilities()).await?;
    // QEMU's default of 128 MiB/s throttles even a save to a file.
    q.call("migrate-set-parameters", json!({"max-bandwidth": 64u64 << 30, "multifd-channels": 2})).await?;
    q.call("migrate", json!({"uri": format!("file:{}", file.display())})).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let st = q.call("query-migrate", Value::Null).await?;
        match st.get("status").and_then(Value::as_str).unwrap_or_default() {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let why = st.get("error-desc").and_then(Value::as_str).unwrap_or("no reason given");
                return Err(Error::generic(BACKEND, format!("saving the VM state failed: {why}")));
            }
            _ if tokio::time::Instant::now() > deadline => {
                return Err(Error::Timeout { operation: "saving the VM state".into(), after: Duration::from_secs(300) });
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

impl QemuProvisioner {
    /// The warm state a build VM for `req` would restore, or why it boots cold.
    pub(crate) async fn warm_plan(&self, req: &ProvisionRequest, m: &Machine, base: &Path) -> std::result::Result<Plan, String> {
        if self.warm.is_none() {
            return Err("warm states are off".into());
        }
        if req.image.platform != Platform::Linux {
            return Err("warm states are kept for Linux build VMs only".into());
        }
        if m.kernel.is_some() {
            return Err("the source boots its kernel directly (a base's first boot)".into());
        }
        if !req.data_disks_gb.is_empty() {
            return Err("data disks are attached at boot".into());
        }
        let sha = req.image.attributes.get("sha256").and_then(Value::as_str).ok_or("the source image has no digest")?;
        let qemu = qemu_identity().await.map_err(|e| e.to_string())?;
        let shape = m.args(&VmFiles::in_dir(Path::new("@")), "@name", "@net", false);
        let inputs = json!({
            "format": 1,
            "base": {"disk": base, "sha256": sha},
            "qemu": qemu,
            "argv": shape,
            "network": format!("{:?}", m.network),
            "user": crate::qemu::BUILD_USER,
        });
        use sha2::Digest;
        let key = hex::encode(sha2::Sha256::digest(inputs.to_string().as_bytes()))[..24].to_string();
        let base_format = req.image.attributes.get("diskFormat").and_then(Value::as_str).unwrap_or("qcow2").to_string();
        Ok(Plan { key, inputs, base: base.to_path_buf(), base_format, source: req.image.exact.clone() })
    }

    /// Starts a build VM from the warm state of `plan`; when there is none yet, this build's
    /// VM boots with an identity made for the state, is saved once it has settled, and goes
    /// on as this build's VM. On failure nothing of the attempt is left running or in
    /// `workdir`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn warm_start(
        &self,
        plan: &Plan,
        workdir: &Path,
        m: &Machine,
        files: &VmFiles,
        name: &str,
        want: Option<(u32, u64)>,
        ctx: &StepContext,
    ) -> Result<(watch::Receiver<bool>, u16, Login)> {
        let store = self.warm.as_ref().ok_or_else(|| Error::generic(BACKEND, "warm states are off"))?;
        let started = match store.fresh(&plan.key).await {
            Some(state) => self.restore_timed(&state, workdir, m, files, name, want, ctx).await,
            None => {
                crate::backend::private_dir(&store.dir)?;
                // A second build of the same key waits here, then restores what the first saved.
                let lock = crate::tools::lock_file(&store.lock_path(&plan.key), Duration::from_secs(1800)).await?;
                match store.fresh(&plan.key).await {
                    Some(state) => self.restore_timed(&state, workdir, m, files, name, want, ctx).await,
                    None => {
                        ctx.notice(format!(
                            "no warm state {} yet: this build's VM boots, and is saved once it has settled (once per base, VM shape and QEMU)",
                            plan.key
                        ));
                        self.boot_and_save(store, plan, lock, workdir, m, files, name, want, ctx).await
                    }
                }
            }
        };
        if started.is_err() {
            for f in [&files.overlay, &files.vars, &files.qmp, &files.pidfile] {
                let _ = tokio::fs::remove_file(f).await;
            }
            for f in ["passt.sock", "passt.pid", "console.log", "qemu.out"] {
                let _ = tokio::fs::remove_file(workdir.join(f)).await;
            }
        }
        started
    }

    #[allow(clippy::too_many_arguments)]
    async fn restore_timed(
        &self,
        state: &WarmState,
        workdir: &Path,
        m: &Machine,
        files: &VmFiles,
        name: &str,
        want: Option<(u32, u64)>,
        ctx: &StepContext,
    ) -> Result<(watch::Receiver<bool>, u16, Login)> {
        let t0 = std::time::Instant::now();
        let (child, port, login) = self.restore(state, workdir, m, files, name, want, ctx).await?;
        ctx.notice(format!("restored warm state {} in {:.2} s", state.key, t0.elapsed().as_secs_f64()));
        Ok((self.watch(child, &files.console, ctx.run.output("console")), port, login))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn restore(
        &self,
        state: &WarmState,
        workdir: &Path,
        m: &Machine,
        files: &VmFiles,
        name: &str,
        want: Option<(u32, u64)>,
        ctx: &StepContext,
    ) -> Result<(tokio::process::Child, u16, Login)> {
        let w = &state.dir;
        let frozen = w.join("overlay.qcow2");
        let info = image_info(&frozen, Some("qcow2")).await?;
        let grow_to = match want {
            Some((_, want)) if want > info.virtual_size => Some(want),
            Some((gb, want)) if want < info.virtual_size => {
                return Err(Error::InvalidConfig {
                    backend: BACKEND,
                    key: "osDiskSizeGB".into(),
                    message: format!("{gb} GB is smaller than the source disk ({} bytes); disks only grow", info.virtual_size),
                });
            }
            _ => None,
        };
        let overlay = files.overlay.display().to_string();
        run("qemu-img", ["create", "-q", "-f", "qcow2", "-b", &frozen.display().to_string(), "-F", "qcow2", &overlay]).await?;
        if !m.bios {
            tokio::fs::copy(w.join("vars.fd"), &files.vars).await.map_err(|e| Error::io(w.join("vars.fd"), e))?;
        }
        let mut f = files.clone();
        f.iso = w.join("seed.iso");
        let user_key = PrivateKey::from_openssh(
            std::fs::read_to_string(w.join("id_ed25519")).map_err(|e| Error::io(w.join("id_ed25519"), e))?.as_bytes(),
        )
        .map_err(|e| Error::generic(BACKEND, format!("the warm state's key: {e}")))?;
        let host_public =
            std::fs::read_to_string(w.join("host_ed25519.pub")).map_err(|e| Error::io(w.join("host_ed25519.pub"), e))?.trim().to_string();
        let (mut child, port) = self.start(workdir, m, &f, name, true, ctx).await?;
        let loaded = async {
            let mut q = Qmp::connect(&f.qmp).await?;
            q.call("migrate-set-capabilities", capabilities()).await?;
            q.call("migrate-set-parameters", json!({"multifd-channels": 2})).await?;
            q.call("migrate-incoming", json!({"uri": format!("file:{}", w.join("vm.state").display())})).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(workdir.join("qemu.out")).unwrap_or_default();
                    return Err(Error::generic(BACKEND, format!("QEMU ended loading the state ({status}): {}", log.trim())));
                }
                let st = q.call("query-status", Value::Null).await?;
                if st.get("status").and_then(Value::as_str) == Some("paused") {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(Error::Timeout { operation: "loading the VM state".into(), after: Duration::from_secs(120) });
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            q.call("cont", Value::Null).await?;
            if let Some(size) = grow_to {
                // Block nodes are active only after `cont`; the guest hears of the new size.
                q.call("block_resize", json!({"device": "disk0", "size": size})).await?;
            }
            Ok(())
        }
        .await;
        match loaded {
            Ok(()) => Ok((
                child,
                port,
                Login { key: state.key.clone(), user_key, host_public, grow_to, restored: true, chain: state.chain(), disk: frozen },
            )),
            Err(e) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(e)
            }
        }
    }

    /// Boots this build's VM with an identity made for the warm state (its own keys and seed:
    /// nothing of this run), lets it settle, freezes its disk (the build goes on in a new
    /// overlay, `files.overlay`), saves it, and continues it. `lock` is the key's; it is held
    /// until the state is durable and visible, which happens beside the build.
    #[allow(clippy::too_many_arguments)]
    async fn boot_and_save(
        &self,
        store: &WarmStore,
        plan: &Plan,
        lock: std::fs::File,
        workdir: &Path,
        m: &Machine,
        files: &VmFiles,
        name: &str,
        want: Option<(u32, u64)>,
        ctx: &StepContext,
    ) -> Result<(watch::Receiver<bool>, u16, Login)> {
        // The state is made in place (the build's overlay names the frozen one by its path);
        // it counts only once `meta.json` is there. What an earlier try left goes first.
        let (dir, plan_key) = (store.dir.join(&plan.key), plan.key.clone());
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir).await.map_err(|e| Error::io(&dir, e))?;
        }
        crate::backend::private_dir(&dir)?;
        let dir_id = ctx.record(ResourceRecord::new(BACKEND, "dir", dir.display().to_string(), Scope::BuildVm))?;
        let (user_key, host_key) = (ephemeral_key()?, ephemeral_key()?);
        let generation = uuid::Uuid::new_v4().simple().to_string();
        let chain = Chain { warm_key: plan.key.clone(), generation: generation.clone(), seed: dir.join("seed.iso") };
        let host_public = public_key_line(&host_key, "aib-warm-host")?;
        write_private(&dir.join("id_ed25519"), private_key_openssh(&user_key)?.as_bytes())?;
        tokio::fs::write(dir.join("host_ed25519.pub"), format!("{host_public}\n")).await.map_err(|e| Error::io(&dir, e))?;
        let instance = format!("aib-warm-{}", plan.key);
        prepare_disks(&dir, &plan.base, &plan.base_format, m.bios, &user_key, &host_key, &host_public, &instance).await?;
        let _ = tokio::fs::remove_dir_all(dir.join("seed")).await;
        let mut f = files.clone();
        f.overlay = dir.join("overlay.qcow2");
        f.iso = dir.join("seed.iso");
        if !m.bios {
            tokio::fs::copy(dir.join("vars.fd"), &files.vars).await.map_err(|e| Error::io(&files.vars, e))?;
        }
        let t0 = std::time::Instant::now();
        let (child, port) = self.start(workdir, m, &f, name, false, ctx).await?;
        let exited = self.watch(child, &f.console, ctx.run.output("console"));
        let saved = async {
            let comm = ssh_to(port, &user_key, &host_public, self.connect_timeout, exited.clone(), workdir).await?;
            let booted = t0.elapsed();
            wait_for_cloud_init(&comm, &*ctx.output).await?;
            settle(&comm, ctx).await?;
            drop(comm);
            // No SSH session open in the saved state.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t1 = std::time::Instant::now();
            let mut q = Qmp::connect(&f.qmp).await?;
            q.call("stop", Value::Null).await?;
            // From here the warm overlay is frozen: the build writes to an overlay of its own.
            let snapshot = json!({"device": "disk0", "snapshot-file": files.overlay, "format": "qcow2", "mode": "absolute-paths"});
            q.call("blockdev-snapshot-sync", snapshot).await?;
            if !m.bios {
                tokio::fs::copy(&files.vars, dir.join("vars.fd")).await.map_err(|e| Error::io(dir.join("vars.fd"), e))?;
            }
            save(&mut q, &dir.join("vm.state")).await?;
            q.call("cont", Value::Null).await?;
            ctx.output.line(
                OutputStream::Stdout,
                &format!(
                    "aib: VM reached SSH after {:.1} s, settled after {:.1} s, saved as warm state {} in {:.2} s",
                    booted.as_secs_f64(),
                    t1.duration_since(t0).as_secs_f64() - 0.5,
                    plan.key,
                    t1.elapsed().as_secs_f64()
                ),
            );
            let mut grow_to = None;
            if let Some((_, size)) = want {
                q.call("block_resize", json!({"device": "disk0", "size": size})).await?;
                grow_to = Some(size);
            }
            Ok::<_, Error>(grow_to)
        }
        .await;
        match saved {
            Ok(grow_to) => {
                // Syncing half a gigabyte of state is not the build's wait: it happens beside
                // it, under the key's lock, and the state counts once `meta.json` is there.
                let frozen_disk = dir.join("overlay.qcow2");
                let (store_dir, plan, dir, ctx2) = (store.dir.clone(), plan.clone(), dir.clone(), ctx.clone());
                tokio::task::spawn_blocking(move || {
                    let _held = lock;
                    match finish_state(&store_dir, &plan, &dir, generation) {
                        Ok(()) => {
                            let _ = ctx2.release(&dir_id);
                        }
                        Err(e) => ctx2.notice(format!("the warm state {} was not kept: {e}", plan.key)),
                    }
                });
                Ok((exited, port, Login { key: plan_key, user_key, host_public, grow_to, restored: false, chain, disk: frozen_disk }))
            }
            Err(e) => {
                let _ = crate::qmp::execute(&f.qmp, "quit").await;
                let mut ex = exited.clone();
                let _ = tokio::time::timeout(Duration::from_secs(30), ex.wait_for(|e| *e)).await;
                let _ = tokio::fs::remove_dir_all(&dir).await;
                ctx.release(&dir_id)?;
                Err(e)
            }
        }
    }

    /// Over the warm boot's session: this run's clock, entropy, host key, user key,
    /// machine-id and random seed, and the grown disk.
    pub(crate) async fn mend(&self, comm: &SshCommunicator, state: &crate::qemu::Vm, login: &Login, ctx: &StepContext) -> Result<()> {
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let mut entropy = [0u8; 64];
        {
            use std::io::Read;
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut entropy)).map_err(|e| Error::io("/dev/urandom", e))?;
        }
        let host_private = state.host_private.clone().ok_or_else(|| Error::generic(BACKEND, "no host key for the restored VM"))?;
        let user_line = public_key_line(&state.user_key, "aib-build")?;
        let mut cmd = String::from(
            "set -eu\n\
             date -u -s \"@$AIB_NOW\" >/dev/null\n\
             perl -e 'open(my $f, \">\", \"/dev/urandom\") or die \"urandom: $!\"; syswrite($f, pack(\"H*\", $ENV{AIB_ENTROPY})) or die \"write: $!\"; ioctl($f, 0x5207, 0) or die \"RNDRESEEDCRNG: $!\"'\n\
             rm -f /etc/ssh/ssh_host_*\n\
             (umask 077; printf '%s\\n' \"$AIB_HOST_KEY\" > /etc/ssh/ssh_host_ed25519_key)\n\
             printf '%s\\n' \"$AIB_HOST_PUB\" > /etc/ssh/ssh_host_ed25519_key.pub\n\
             home=$(getent passwd \"$AIB_USER\" | cut -d: -f6)\n\
             printf '%s\\n' \"$AIB_USER_KEY\" > \"$home/.ssh/authorized_keys\"\n\
             tr -d '-' < /proc/sys/kernel/random/uuid > /etc/machine-id\n\
             rm -f /var/lib/systemd/random-seed\n\
             systemctl restart ssh\n",
        );
        if let Some(size) = login.grow_to {
            cmd.push_str(&format!(
                "src=$(findmnt -no SOURCE /); disk=/dev/$(lsblk -no PKNAME \"$src\"); part=$(cat /sys/class/block/${{src#/dev/}}/partition)\n\
                 i=0; while [ \"$(blockdev --getsize64 \"$disk\")\" -lt {size} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done\n\
                 growpart \"$disk\" \"$part\" >/dev/null || [ $? -eq 1 ]\n\
                 resize2fs \"$src\" >/dev/null 2>&1\n"
            ));
        }
        let req = ExecRequest::new(cmd)
            .elevated()
            .with_timeout(Duration::from_secs(300))
            .with_env("AIB_NOW", format!("{}.{:09}", now.as_secs(), now.subsec_nanos()))
            .with_env("AIB_ENTROPY", hex::encode(entropy))
            .with_env("AIB_HOST_KEY", host_private.trim_end())
            .with_env("AIB_HOST_PUB", state.host_public.clone())
            .with_env("AIB_USER_KEY", user_line)
            .with_env("AIB_USER", crate::qemu::BUILD_USER);
        use aib_core::Communicator;
        let st = comm.execute(&req, &*ctx.output).await?;
        if !st.success() {
            return Err(Error::StepFailed {
                step: ctx.name.clone(),
                exit_code: st.code,
                message: "mending the restored VM (clock, entropy, keys, machine-id) failed".into(),
            });
        }
        Ok(())
    }
}

/// Makes the state in `dir` durable and visible: synced, its overlay read-only, then
/// `meta.json`.
fn finish_state(store_dir: &Path, plan: &Plan, dir: &Path, generation: String) -> Result<()> {
    let frozen = dir.join("overlay.qcow2");
    for f in ["vm.state", "overlay.qcow2", "vars.fd"] {
        if let Ok(file) = std::fs::File::open(dir.join(f)) {
            file.sync_all().map_err(|e| Error::io(dir.join(f), e))?;
        }
    }
    // The guest's memory belongs to exactly these bytes: nothing writes them again.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&frozen, std::fs::Permissions::from_mode(0o400)).map_err(|e| Error::io(&frozen, e))?;
    let now = SystemTime::now();
    let state = WarmState {
        key: plan.key.clone(),
        source: plan.source.clone(),
        created: humantime::format_rfc3339_seconds(now).to_string(),
        created_unix: now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs(),
        inputs: plan.inputs.clone(),
        generation,
        dir: store_dir.join(&plan.key),
        bytes: 0,
    };
    let meta = serde_json::to_vec_pretty(&state).map_err(|e| Error::generic(BACKEND, e))?;
    let tmp = dir.join(".meta.json");
    std::fs::write(&tmp, meta).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, dir.join("meta.json")).map_err(|e| Error::io(dir, e))
}

/// Readies the VM to be saved, once cloud-init is done: its boot timeline into the log, and
/// the calendar timers masked for the runtime. (Waiting for every start-up job as well cost
/// the first build up to 20 s under TCG; what is still starting goes on after a restore.)
async fn settle(comm: &SshCommunicator, ctx: &StepContext) -> Result<()> {
    use aib_core::Communicator;
    let cmd = format!(
        "systemd-analyze 2>/dev/null || true\nsystemd-analyze blame --no-pager 2>/dev/null | head -n 8 || true\n\
         systemctl mask --runtime --now {} >/dev/null 2>&1 || true\nsync",
        TIMERS.join(" ")
    );
    let st = comm.execute(&ExecRequest::new(cmd).elevated().with_timeout(Duration::from_secs(600)), &*ctx.output).await?;
    if st.success() {
        Ok(())
    } else {
        Err(Error::StepFailed { step: ctx.name.clone(), exit_code: st.code, message: "settling the warm VM failed".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn states_are_listed_and_pruned_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = WarmStore::new(dir.path()).with_max_age(Duration::from_secs(3600));
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        for (key, age) in [("fresh", 10), ("old", 7200)] {
            let d = dir.path().join(key);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("vm.state"), vec![1u8; 8192]).unwrap();
            let s = WarmState {
                key: key.into(),
                source: "Debian:debian-12:12-gen2:12.1".into(),
                created: "x".into(),
                created_unix: now - age,
                inputs: json!({}),
                generation: String::new(),
                dir: PathBuf::new(),
                bytes: 0,
            };
            std::fs::write(d.join("meta.json"), serde_json::to_vec(&s).unwrap()).unwrap();
        }
        std::fs::create_dir(dir.path().join("no-meta")).unwrap();
        let all = store.list().await.unwrap();
        assert_eq!(all.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["old", "fresh"]);
        assert!(all[0].bytes >= 8192);
        assert!(store.fresh("fresh").await.is_some() && store.fresh("old").await.is_none(), "an expired state is not restored");
        let removed = store.prune(false).await.unwrap();
        assert_eq!(removed.iter().map(|s| s.key.as_str()).collect::<Vec<_>>(), ["old"]);
        assert!(!dir.path().join("old").exists() && dir.path().join("fresh").exists());
        assert_eq!(store.prune(true).await.unwrap().len(), 1);
        assert!(store.list().await.unwrap().is_empty());
    }

    #[test]
    fn the_key_shape_names_no_run() {
        let m = Machine {
            accel: crate::Accelerator::Tcg,
            bios: false,
            kernel: None,
            cpus: 2,
            mem: 2048,
            network: crate::GuestNetwork::Isolated,
        };
        let a = m.args(&VmFiles::in_dir(Path::new("@")), "@name", "@net", false);
        assert!(a.iter().all(|x| !x.contains("/tmp") && !x.contains("aib-")), "{a:?}");
        assert!(a.contains(&"vmgenid,guid=auto".to_string()));
        assert!(!a.contains(&"q35".to_string()), "the machine type is pinned: {a:?}");
        let inc = m.args(&VmFiles::in_dir(Path::new("@")), "@name", "@net", true);
        assert_eq!(&inc[inc.len() - 3..], ["-S", "-incoming", "defer"]);
    }
}
