//! The QEMU provisioner's side of the step cache ([`crate::cache`]): starting a build VM at a
//! resume point, and keeping a running one as a new point.

use crate::cache::{entry_key, finish_entry, new_entry};
use crate::console::write_private;
use crate::qemu::{Machine, QemuProvisioner, VmFiles};
use crate::qmp::Qmp;
use crate::tools::BACKEND;
use crate::warm::{Login, Plan, WarmState};
use aib_core::{BuildVm, Error, ProvisionRequest, ResourceRecord, Result, ResumePoint, Scope, StepContext};
use aib_customizers::ssh::private_key_openssh;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::watch;

/// A VM started at a resume point: the warm path's start, and how many steps it covers.
pub(crate) type Resumed = ((watch::Receiver<bool>, u16, Login), usize);

impl QemuProvisioner {
    /// Starts the build VM at the longest of `req.resume` the cache holds over the warm state
    /// of `plan`; `Err(why)` when there is none or its restore failed (nothing of the attempt
    /// is left), and the build starts from the warm state instead.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn resume_start(
        &self,
        plan: &Plan,
        req: &ProvisionRequest,
        workdir: &Path,
        m: &Machine,
        files: &VmFiles,
        name: &str,
        want: Option<(u32, u64)>,
        ctx: &StepContext,
    ) -> std::result::Result<Resumed, String> {
        let (Some(cache), Some(store)) = (&self.cache, &self.warm) else { return Err("the step cache is off".into()) };
        if req.resume.is_empty() {
            return Err("no step can be cached".into());
        }
        let Some(warm) = store.fresh(&plan.key).await else {
            return Err("no warm state yet for this base and VM shape, so no resume point either".into());
        };
        let chain = warm.chain();
        // A point still being synced (a build that just ended kept it) is waited for, briefly.
        if let Some(p) = req.resume.iter().rev().find(|p| {
            let d = cache.entry_dir(&entry_key(p, &chain));
            d.is_dir() && !d.join("meta.json").exists()
        }) {
            let _ = crate::tools::lock_file(&cache.lock_path(&entry_key(p, &chain)), Duration::from_secs(60)).await;
        }
        let (n, entry) = cache.lookup(&req.resume, &chain)?;
        let point = WarmState {
            key: entry.key.clone(),
            source: warm.source.clone(),
            created: String::new(),
            created_unix: entry.created_unix,
            inputs: Value::Null,
            generation: chain.generation.clone(),
            dir: entry.dir.clone(),
            bytes: 0,
        };
        let t0 = std::time::Instant::now();
        match self.restore(&point, workdir, m, files, name, want, ctx).await {
            Ok((child, port, mut login)) => {
                login.chain = chain;
                cache.touch(&entry);
                ctx.notice(format!(
                    "restored the resume point after `{}` ({}) in {:.2} s",
                    entry.step,
                    entry.key,
                    t0.elapsed().as_secs_f64()
                ));
                Ok(((self.watch(child, &files.console, ctx.run.output("console")), port, login), n))
            }
            Err(e) => {
                for f in [&files.overlay, &files.vars, &files.qmp, &files.pidfile] {
                    let _ = tokio::fs::remove_file(f).await;
                }
                for f in ["passt.sock", "passt.pid", "console.log", "qemu.out"] {
                    let _ = tokio::fs::remove_file(workdir.join(f)).await;
                }
                Err(format!("restoring the resume point after `{}` failed ({e})", entry.step))
            }
        }
    }

    /// Keeps the running VM `vm` as the resume point `point`: its disk frozen into the entry
    /// (the VM goes on in a new overlay) and its memory saved, then continued. `Ok(false)` when
    /// the VM is not one a point can be kept of, or the point is kept (or being kept) already.
    pub(crate) async fn keep_point(&self, vm: &BuildVm, point: &ResumePoint, ctx: &StepContext) -> Result<bool> {
        let Some(cache) = &self.cache else { return Ok(false) };
        let state = self.vm(&vm.id)?;
        let Some(chain) = state.warm.as_ref().map(|l| l.chain.clone()) else { return Ok(false) };
        let key = entry_key(point, &chain);
        crate::backend::private_dir(cache.dir())?;
        let Ok(lock) = crate::tools::lock_file(&cache.lock_path(&key), Duration::ZERO).await else { return Ok(false) };
        if cache.usable(&key).is_some() {
            return Ok(false);
        }
        let dir = cache.entry_dir(&key);
        if dir.exists() {
            tokio::fs::remove_dir_all(&dir).await.map_err(|e| Error::io(&dir, e))?;
        }
        crate::backend::private_dir(&dir)?;
        let dir_id = ctx.record(ResourceRecord::new(BACKEND, "dir", dir.display().to_string(), Scope::BuildVm))?;
        // The keys the next VM of this point logs in with once; the mend replaces them.
        write_private(&dir.join("id_ed25519"), private_key_openssh(&state.user_key)?.as_bytes())?;
        tokio::fs::write(dir.join("host_ed25519.pub"), format!("{}\n", state.host_public)).await.map_err(|e| Error::io(&dir, e))?;
        if std::fs::hard_link(&chain.seed, dir.join("seed.iso")).is_err() {
            tokio::fs::copy(&chain.seed, dir.join("seed.iso")).await.map_err(|e| Error::io(&chain.seed, e))?;
        }
        let t0 = std::time::Instant::now();
        let kept = self.freeze_and_save(&state, &dir).await;
        let backing = match kept {
            Ok(b) => b,
            Err(e) => {
                // A frozen disk that could not be put back is still the VM's: the run's cleanup
                // removes the directory with the VM.
                if !dir.join("overlay.qcow2").exists() {
                    let _ = tokio::fs::remove_dir_all(&dir).await;
                    ctx.release(&dir_id)?;
                }
                return Err(e);
            }
        };
        let entry = new_entry(key.clone(), point, &chain, backing, dir.clone());
        ctx.notice(format!("kept the resume point after `{}` ({key}) in {:.2} s", point.step, t0.elapsed().as_secs_f64()));
        // Syncing the memory file is not the build's wait: it happens beside it, under the
        // point's lock, and the point counts once `meta.json` is there; then the cache is
        // trimmed to its size.
        let (ctx2, cache2) = (ctx.clone(), cache.clone());
        tokio::spawn(async move {
            let finished = tokio::task::spawn_blocking(move || {
                let _held = lock;
                finish_entry(&dir, &entry)
            })
            .await;
            match finished {
                Ok(Ok(())) => {
                    let _ = ctx2.release(&dir_id);
                    if let Err(e) = cache2.prune(false).await {
                        ctx2.notice(format!("trimming the step cache failed: {e}"));
                    }
                }
                Ok(Err(e)) => ctx2.notice(format!("the resume point {key} was not kept: {e}")),
                Err(e) => ctx2.notice(format!("the resume point {key} was not kept: {e}")),
            }
        });
        Ok(true)
    }

    /// Stops the VM, freezes its disk (the VM goes on in a new overlay), saves its memory into
    /// `dir` and continues it (on every path); then moves the frozen disk into `dir` and renames
    /// the new overlay's backing file to it (only once the VM runs again: its disks are
    /// inactive until `cont`, and QEMU asserts on a header write then). Returns the frozen
    /// disk's own backing file.
    async fn freeze_and_save(&self, state: &crate::qemu::Vm, dir: &Path) -> Result<PathBuf> {
        let mut q = Qmp::connect(&state.workdir.join("qmp.sock")).await?;
        q.call("stop", Value::Null).await?;
        let frozen = state.active();
        let backing = state.backing();
        let saved = async {
            let n = state.layers.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            let next = state.workdir.join(format!("overlay-{n}.qcow2"));
            let snapshot = json!({"device": "disk0", "snapshot-file": next, "format": "qcow2", "mode": "absolute-paths"});
            q.call("blockdev-snapshot-sync", snapshot).await?;
            // From here the VM writes `next`, whatever else happens.
            state.set_active(next.clone(), frozen.clone());
            if !state.bios {
                tokio::fs::copy(&state.vars, dir.join("vars.fd")).await.map_err(|e| Error::io(dir.join("vars.fd"), e))?;
            }
            crate::warm::save(&mut q, &dir.join("vm.state")).await?;
            Ok::<_, Error>(next)
        }
        .await;
        let cont = q.call("cont", Value::Null).await;
        let next = saved?;
        cont?;
        let kept = dir.join("overlay.qcow2");
        tokio::fs::rename(&frozen, &kept).await.map_err(|e| Error::io(&frozen, e))?;
        let blocks = q.call("query-block", Value::Null).await?;
        let node = blocks
            .as_array()
            .and_then(|a| a.iter().find(|b| b.get("device").and_then(Value::as_str) == Some("disk0")))
            .and_then(|b| b.pointer("/inserted/node-name"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let renamed = match node {
            Some(node) => {
                q.call("change-backing-file", json!({"device": "disk0", "image-node-name": node, "backing-file": kept})).await.map(|_| ())
            }
            None => Err(Error::generic(BACKEND, "QEMU did not name the disk's top node")),
        };
        if let Err(e) = renamed {
            // The new overlay still names the old place: put the frozen disk back there.
            let _ = tokio::fs::rename(&kept, &frozen).await;
            return Err(e);
        }
        state.set_active(next, kept);
        Ok(backing)
    }
}
