//! The step cache: resume points a build VM can start at instead of running its first steps.
//!
//! A resume point is the build VM as it was after one customizer: a frozen disk layer (the
//! qcow2 overlay the VM wrote up to then, backed by the point before it or by the warm state
//! the VM descends from) and its memory (QEMU's migration to a file, as for warm states).
//! The pipeline names each point by a key chained from the source, the VM profile and every
//! step's fingerprint ([`aib_core::ResumePoint`]); an entry's key adds the warm state the
//! chain starts from (key and generation), which covers the base disk, QEMU, firmware and
//! the VM's shape. A later build of the same steps restores the longest point it finds and
//! runs only the rest; the restore goes through the warm path's mend (this run's clock,
//! entropy, SSH keys and machine-id), so nothing of the run that kept the point is used past
//! its first connection, and generalization removes it all from the image as always.
//!
//! Keeping a point: `stop`, `blockdev-snapshot-sync` (the VM goes on in a new overlay), the
//! memory saved, the frozen overlay moved into the entry and the new overlay's backing file
//! renamed to it (`change-backing-file`), `cont`: about a second under TCG. An entry counts
//! once its `meta.json` is written (after a sync beside the build). Entries are evicted least
//! recently used first past the cache's size (20 GiB by default) and when the warm state
//! they descend from is gone or made again; entries used in the last four hours are not
//! evicted automatically (a running build's disk may be backed by them).
//!
//! Layout: `<state>/cache/<key>/{overlay.qcow2, vm.state, vars.fd, seed.iso, id_ed25519,
//! host_ed25519.pub, meta.json}`.

use crate::tools::BACKEND;
use crate::warm::Chain;
use aib_core::{Error, Result, ResumePoint};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Entries used more recently than this are never evicted automatically.
pub const IN_USE_WINDOW: Duration = Duration::from_secs(4 * 3600);

/// The default size limit: 20 GiB of allocated bytes.
pub const DEFAULT_MAX_BYTES: u64 = 20 << 30;

/// The step cache's entries under one directory (`<state>/cache` by default).
#[derive(Debug, Clone)]
pub struct StepCache {
    dir: PathBuf,
    max_bytes: u64,
}

/// One resume point kept on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CacheEntry {
    /// The entry's key: the pipeline's point key and the warm state's key and generation.
    pub key: String,
    /// The step the VM was kept after, such as `customize[1] payload`.
    pub step: String,
    /// The pipeline's point (its key, the key before it, the step's fingerprint).
    pub point: ResumePoint,
    /// The warm state the disk and memory descend from.
    pub(crate) chain: Chain,
    /// What the frozen overlay's backing file is (the point before, or the warm overlay).
    pub backing: PathBuf,
    /// When it was kept, seconds since the Unix epoch.
    pub created_unix: u64,
    /// When it was last kept or restored, seconds since the Unix epoch.
    pub used_unix: u64,
    /// Its directory.
    #[serde(skip)]
    pub dir: PathBuf,
    /// Bytes it takes on disk (the memory file is sparse).
    #[serde(skip)]
    pub bytes: u64,
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The entry key of `point` over `chain`.
pub(crate) fn entry_key(point: &ResumePoint, chain: &Chain) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [point.key.as_str(), &chain.warm_key, &chain.generation] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())[..32].to_string()
}

impl StepCache {
    /// Entries under `dir`, 20 GiB at most.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StepCache { dir: dir.into(), max_bytes: DEFAULT_MAX_BYTES }
    }

    /// Evicts least recently used entries past `n` allocated bytes.
    #[must_use]
    pub fn with_max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The size limit.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub(crate) fn entry_dir(&self, key: &str) -> PathBuf {
        self.dir.join(key)
    }

    pub(crate) fn lock_path(&self, key: &str) -> PathBuf {
        self.dir.join(format!(".{key}.lock"))
    }

    /// Every complete entry, least recently used first.
    pub async fn list(&self) -> Result<Vec<CacheEntry>> {
        let mut out = Vec::new();
        let Ok(mut rd) = tokio::fs::read_dir(&self.dir).await else { return Ok(out) };
        while let Some(e) = rd.next_entry().await.map_err(|e| Error::io(&self.dir, e))? {
            if e.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            if let Some(entry) = read_entry(&e.path()) {
                out.push(entry);
            }
        }
        out.sort_by_key(|e| e.used_unix);
        Ok(out)
    }

    /// The complete entry `key` whose whole chain of disks is still there.
    pub(crate) fn usable(&self, key: &str) -> Option<CacheEntry> {
        let e = read_entry(&self.entry_dir(key)).filter(|e| e.key == key)?;
        self.intact(&e).then_some(e)
    }

    /// Whether every disk `e` is backed by is still there, as it was when `e` was kept: the
    /// points before it complete, and the warm state of the same generation.
    fn intact(&self, e: &CacheEntry) -> bool {
        let mut backing = e.backing.clone();
        for _ in 0..256 {
            match backing.parent() {
                Some(d) if d.parent() == Some(self.dir.as_path()) => match read_entry(d) {
                    Some(prev) if prev.chain == e.chain => backing = prev.backing,
                    _ => return false,
                },
                Some(d) => {
                    let warm = d.join("meta.json");
                    return std::fs::read_to_string(&warm)
                        .ok()
                        .and_then(|t| serde_json::from_str::<crate::warm::WarmState>(&t).ok())
                        .is_some_and(|w| {
                            let mut w = w;
                            w.dir = d.to_path_buf();
                            w.chain().generation == e.chain.generation && backing.exists()
                        });
                }
                None => return false,
            }
        }
        false
    }

    /// Marks `e` used now.
    pub(crate) fn touch(&self, e: &CacheEntry) {
        let mut e = e.clone();
        e.used_unix = now_unix();
        let _ = write_meta(&e.dir.clone(), &e);
    }

    /// Removes entries whose chain is broken, then the least recently used past the size
    /// limit (not those used in the last [`IN_USE_WINDOW`]); every entry with `all`. What was
    /// removed.
    pub async fn prune(&self, all: bool) -> Result<Vec<CacheEntry>> {
        let mut removed = Vec::new();
        let entries = self.list().await?;
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let recent = now_unix().saturating_sub(IN_USE_WINDOW.as_secs());
        // Broken chains first (newest last: an entry's points before it are older).
        let broken: Vec<&CacheEntry> = entries.iter().filter(|e| !self.intact(e)).collect();
        let mut gone = std::collections::HashSet::new();
        for e in entries.iter() {
            let evict = all || broken.iter().any(|b| b.key == e.key) || (total > self.max_bytes && e.used_unix < recent);
            if !evict {
                continue;
            }
            let _lock = crate::tools::lock_file(&self.lock_path(&e.key), Duration::from_secs(600)).await?;
            tokio::fs::remove_dir_all(&e.dir).await.map_err(|err| Error::io(&e.dir, err))?;
            let _ = std::fs::remove_file(self.lock_path(&e.key));
            total = total.saturating_sub(e.bytes);
            gone.insert(e.key.clone());
            removed.push(e.clone());
        }
        // Entries whose points before them were just removed are broken now.
        if !all && !gone.is_empty() {
            for e in self.list().await? {
                if !self.intact(&e) {
                    tokio::fs::remove_dir_all(&e.dir).await.map_err(|err| Error::io(&e.dir, err))?;
                    removed.push(e);
                }
            }
        }
        // What an interrupted keep left (no meta.json) and is not being made now.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for d in rd.flatten() {
                let p = d.path();
                let name = d.file_name().to_string_lossy().to_string();
                if name.starts_with('.') || !p.is_dir() || p.join("meta.json").exists() {
                    continue;
                }
                if let Ok(lock) = crate::tools::lock_file(&self.lock_path(&name), Duration::ZERO).await {
                    let _ = std::fs::remove_dir_all(&p);
                    drop(lock);
                }
            }
        }
        Ok(removed)
    }

    /// The longest of `points` kept over `chain`: how many steps it covers and its entry,
    /// or why there is none (a sentence for the report).
    pub(crate) fn lookup(&self, points: &[ResumePoint], chain: &Chain) -> std::result::Result<(usize, CacheEntry), String> {
        for (i, p) in points.iter().enumerate().rev() {
            if let Some(e) = self.usable(&entry_key(p, chain)) {
                return Ok((i + 1, e));
            }
        }
        Err(self.why_missed(points.first(), chain))
    }

    /// Why the point after `points[n]` is not kept, by what the cache holds after the same
    /// earlier steps: the step's fingerprint changed, or it was never kept.
    pub(crate) fn why_missed(&self, first_missing: Option<&ResumePoint>, chain: &Chain) -> String {
        let Some(p) = first_missing else { return "no resume point is asked for".into() };
        let entries: Vec<CacheEntry> =
            std::fs::read_dir(&self.dir).map(|rd| rd.flatten().filter_map(|d| read_entry(&d.path())).collect()).unwrap_or_default();
        if entries.iter().any(|e| e.point.parent == p.parent && e.point.index == p.index && e.chain == *chain) {
            "its fingerprint changed since it was kept (its settings, or the bytes it fetches)".into()
        } else if entries.iter().any(|e| e.point.parent == p.parent && e.point.index == p.index) {
            "the warm state it was kept over was made again (a new base, QEMU or VM shape, or it expired)".into()
        } else {
            "no resume point is kept for it yet (the step is quicker than a restore, or it never ran here)".into()
        }
    }
}

fn read_entry(dir: &Path) -> Option<CacheEntry> {
    let text = std::fs::read_to_string(dir.join("meta.json")).ok()?;
    let mut e: CacheEntry = serde_json::from_str(&text).ok()?;
    e.dir = dir.to_path_buf();
    e.bytes = crate::warm::allocated(dir);
    Some(e)
}

/// Writes `meta.json` of `e` in `dir` (atomically: a temporary file, then a rename).
pub(crate) fn write_meta(dir: &Path, e: &CacheEntry) -> Result<()> {
    let meta = serde_json::to_vec_pretty(e).map_err(|err| Error::generic(BACKEND, err))?;
    let tmp = dir.join(".meta.json");
    std::fs::write(&tmp, meta).map_err(|err| Error::io(&tmp, err))?;
    std::fs::rename(&tmp, dir.join("meta.json")).map_err(|err| Error::io(dir, err))
}

/// Makes the entry in `dir` durable, then visible.
pub(crate) fn finish_entry(dir: &Path, e: &CacheEntry) -> Result<()> {
    for f in ["vm.state", "overlay.qcow2", "vars.fd"] {
        if let Ok(file) = std::fs::File::open(dir.join(f)) {
            file.sync_all().map_err(|err| Error::io(dir.join(f), err))?;
        }
    }
    use std::os::unix::fs::PermissionsExt;
    let frozen = dir.join("overlay.qcow2");
    std::fs::set_permissions(&frozen, std::fs::Permissions::from_mode(0o400)).map_err(|err| Error::io(&frozen, err))?;
    write_meta(dir, e)
}

/// A new entry's record.
pub(crate) fn new_entry(key: String, point: &ResumePoint, chain: &Chain, backing: PathBuf, dir: PathBuf) -> CacheEntry {
    let now = now_unix();
    CacheEntry {
        key,
        step: point.step.clone(),
        point: point.clone(),
        chain: chain.clone(),
        backing,
        created_unix: now,
        used_unix: now,
        dir,
        bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(warm: &Path, generation: &str) -> Chain {
        Chain { warm_key: "w".into(), generation: generation.into(), seed: warm.join("seed.iso") }
    }

    /// A warm state of `generation` in `dir/warm/w`, and the path of its overlay.
    fn warm(dir: &Path, generation: &str) -> PathBuf {
        let w = dir.join("warm").join("w");
        std::fs::create_dir_all(&w).unwrap();
        std::fs::write(w.join("overlay.qcow2"), b"x").unwrap();
        let meta = serde_json::json!({"key": "w", "source": "s", "created": "x", "createdUnix": 1, "inputs": {}, "generation": generation});
        std::fs::write(w.join("meta.json"), meta.to_string()).unwrap();
        w.join("overlay.qcow2")
    }

    fn keep(cache: &StepCache, p: &ResumePoint, c: &Chain, backing: PathBuf, used: u64) -> CacheEntry {
        let key = entry_key(p, c);
        let d = cache.entry_dir(&key);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("overlay.qcow2"), vec![1u8; 4096]).unwrap();
        let mut e = new_entry(key, p, c, backing, d.clone());
        e.used_unix = used;
        write_meta(&d, &e).unwrap();
        e
    }

    #[tokio::test]
    async fn the_longest_intact_point_is_found_and_misses_say_why() {
        let dir = tempfile::tempdir().unwrap();
        let w = warm(dir.path(), "g1");
        let cache = StepCache::new(dir.path().join("cache"));
        let c = chain(&w, "g1");
        let p0 = ResumePoint::new("customize[0] a", 0, "base", "fa");
        let p1 = ResumePoint::new("customize[1] b", 1, &p0.key, "fb");
        let p2 = ResumePoint::new("customize[2] c", 2, &p1.key, "fc");
        let e0 = keep(&cache, &p0, &c, w.clone(), now_unix());
        let e1 = keep(&cache, &p1, &c, e0.dir.join("overlay.qcow2"), now_unix());
        let (n, e) = cache.lookup(&[p0.clone(), p1.clone(), p2.clone()], &c).unwrap();
        assert_eq!((n, e.key.as_str()), (2, e1.key.as_str()));
        // A changed second step: the first point still serves, and the miss names the reason.
        let p1b = ResumePoint::new("customize[1] b", 1, &p0.key, "fb-changed");
        let (n, _) = cache.lookup(&[p0.clone(), p1b.clone()], &c).unwrap();
        assert_eq!(n, 1);
        assert!(cache.why_missed(Some(&p1b), &c).contains("fingerprint changed"));
        assert!(cache.why_missed(Some(&p2), &c).contains("no resume point is kept"));
        // The warm state made again: nothing of the old generation serves.
        let w2 = warm(dir.path(), "g2");
        let c2 = chain(&w2, "g2");
        assert!(cache.lookup(&[p0.clone(), p1.clone()], &c2).is_err());
        assert!(cache.why_missed(Some(&p0), &c2).contains("made again"));
        // And the old entries are broken: pruned.
        let removed = cache.prune(false).await.unwrap();
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(cache.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn past_the_limit_the_least_recently_used_go_first_but_not_recent_ones() {
        let dir = tempfile::tempdir().unwrap();
        let w = warm(dir.path(), "g");
        let c = chain(&w, "g");
        let cache = StepCache::new(dir.path().join("cache")).with_max_bytes(1);
        let old = now_unix() - IN_USE_WINDOW.as_secs() - 60;
        let pa = ResumePoint::new("customize[0] a", 0, "base-a", "f");
        let pb = ResumePoint::new("customize[0] b", 0, "base-b", "f");
        let pc = ResumePoint::new("customize[0] c", 0, "base-c", "f");
        keep(&cache, &pa, &c, w.clone(), old - 10);
        keep(&cache, &pb, &c, w.clone(), old);
        keep(&cache, &pc, &c, w.clone(), now_unix());
        let removed: Vec<String> = cache.prune(false).await.unwrap().into_iter().map(|e| e.step).collect();
        assert_eq!(removed, ["customize[0] a", "customize[0] b"], "least recently used first; the recent one stays");
        assert_eq!(cache.list().await.unwrap().len(), 1);
        // Under the limit nothing goes; `all` takes everything.
        let cache = cache.with_max_bytes(u64::MAX);
        assert!(cache.prune(false).await.unwrap().is_empty());
        assert_eq!(cache.prune(true).await.unwrap().len(), 1);
    }
}
