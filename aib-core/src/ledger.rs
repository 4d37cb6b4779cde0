//! The ledger: every resource a run creates is written here *before* it is created and
//! released *after* it is deleted. Cleanup on every path, and `gc` after a crash, work
//! from it alone.
//!
//! A directory ledger keeps one append-only JSON-lines file per run, synced to disk on
//! every write and locked (`flock`) while the run lives, so a sweep never touches the
//! resources of a live run — in this process or another.

use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What happens to a resource when a step fails under `errorHandling: abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Scope {
    /// Part of the build VM (its process, disk, network): kept under `abort`.
    BuildVm,
    /// Anything else the run made: always cleaned up.
    Run,
}

/// One resource in the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ResourceRecord {
    /// Ledger id, unique within the run (assigned by [`RunLedger::record`]).
    pub id: String,
    /// The reclaimer that can delete it ([`crate::Reclaim::backend`]).
    pub backend: String,
    /// Kind (`vm`, `disk`, `process`, `port`, `file`).
    pub kind: String,
    /// Backend name of the resource (a path, an ARM id, a pid).
    pub name: String,
    /// Kept under `abort` or not.
    pub scope: Scope,
    /// What the backend needs to delete it.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// When it was recorded.
    #[serde(with = "crate::serde_time::rfc3339")]
    pub created_at: SystemTime,
}

impl ResourceRecord {
    /// A record of `kind` named `name`, deletable by `backend`.
    pub fn new(backend: impl Into<String>, kind: impl Into<String>, name: impl Into<String>, scope: Scope) -> Self {
        ResourceRecord {
            id: String::new(),
            backend: backend.into(),
            kind: kind.into(),
            name: name.into(),
            scope,
            attributes: Map::new(),
            created_at: SystemTime::now(),
        }
    }

    /// Adds an attribute.
    #[must_use]
    pub fn with_attribute(mut self, k: impl Into<String>, v: impl Into<Value>) -> Self {
        self.attributes.insert(k.into(), v.into());
        self
    }
}

impl fmt::Display for ResourceRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} `{}`", self.backend, self.kind, self.name)
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub(crate) enum Entry {
    Add { resource: ResourceRecord },
    Release { id: String },
    Keep { id: String },
}

#[derive(Debug)]
pub(crate) enum Store {
    Memory(Mutex<HashMap<String, Vec<ResourceRecord>>>),
    Dir(PathBuf),
}

/// The ledger of all runs: in memory (tests, benchmarks) or in a directory (durable).
#[derive(Debug, Clone)]
pub struct Ledger {
    pub(crate) store: Arc<Store>,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::in_memory()
    }
}

/// The ledger of one run. Cheap to clone; the run's file stays locked until the last clone
/// is dropped.
#[derive(Clone)]
pub struct RunLedger {
    inner: Arc<RunInner>,
}

struct RunInner {
    run_id: String,
    store: Arc<Store>,
    file: Option<Mutex<File>>,
    path: Option<PathBuf>,
    live: Mutex<Vec<ResourceRecord>>,
    seq: AtomicU64,
}

impl fmt::Debug for RunLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunLedger").field("run_id", &self.inner.run_id).field("path", &self.inner.path).finish_non_exhaustive()
    }
}

impl Drop for RunInner {
    fn drop(&mut self) {
        let outstanding = self.live.get_mut().map(std::mem::take).unwrap_or_default();
        match &*self.store {
            Store::Memory(m) => {
                if !outstanding.is_empty()
                    && let Ok(mut m) = m.lock()
                {
                    m.insert(self.run_id.clone(), outstanding);
                }
            }
            Store::Dir(_) => {
                if outstanding.is_empty()
                    && let Some(p) = &self.path
                {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
}

pub(crate) fn append(file: &Mutex<File>, path: &Path, entry: &Entry) -> Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(|e| Error::generic("ledger", e))?;
    line.push(b'\n');
    let mut f = file.lock().map_err(|_| Error::generic("ledger", "ledger lock poisoned"))?;
    f.write_all(&line).and_then(|_| f.sync_data()).map_err(|e| Error::io(path, e))
}

pub(crate) fn replay(path: &Path) -> Result<Vec<ResourceRecord>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut live: Vec<ResourceRecord> = Vec::new();
    let lines: Vec<String> = BufReader::new(f).lines().collect::<std::io::Result<_>>().map_err(|e| Error::io(path, e))?;
    let last = lines.len().saturating_sub(1);
    for (i, line) in lines.iter().enumerate() {
        // A torn last line (crash mid-write) is skipped: its resource was not created yet.
        // Any other bad line is damage, said so (its resource may be left for a person).
        let Ok(entry) = serde_json::from_str::<Entry>(line) else {
            if i != last {
                tracing::warn!(ledger = %path.display(), line = i + 1, "a ledger line that is not the last cannot be read; skipped");
            }
            continue;
        };
        match entry {
            Entry::Add { resource } => live.push(resource),
            Entry::Release { id } | Entry::Keep { id } => live.retain(|r| r.id != id),
        }
    }
    Ok(live)
}

impl Ledger {
    /// A ledger in memory: leftovers of finished runs stay until [`Ledger::gc`] in this process.
    pub fn in_memory() -> Self {
        Ledger { store: Arc::new(Store::Memory(Mutex::new(HashMap::new()))) }
    }

    /// A durable ledger under `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Ledger { store: Arc::new(Store::Dir(dir)) })
    }

    /// The directory, for a durable ledger.
    pub fn dir(&self) -> Option<&Path> {
        match &*self.store {
            Store::Dir(d) => Some(d),
            Store::Memory(_) => None,
        }
    }

    /// Opens the ledger of run `run_id`.
    pub fn begin(&self, run_id: &str) -> Result<RunLedger> {
        if run_id.is_empty() || !run_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(Error::InvalidConfig {
                backend: "ledger",
                key: "run_id".into(),
                message: format!("`{run_id}` must be letters, digits, `-` and `_`"),
            });
        }
        let (file, path) = match &*self.store {
            Store::Memory(_) => (None, None),
            Store::Dir(dir) => {
                let path = dir.join(format!("{run_id}.jsonl"));
                // Created and locked under a name gc never reads, then linked into place (which
                // fails if the run's file exists): the file gc sees is locked from its first
                // moment, so gc cannot take a starting run's empty ledger for an abandoned one.
                let tmp = dir.join(format!(".{run_id}.{}.tmp", uuid::Uuid::new_v4().simple()));
                let f = OpenOptions::new().create_new(true).append(true).open(&tmp).map_err(|e| Error::io(&tmp, e))?;
                let locked = f.try_lock().map_err(|e| Error::generic("ledger", format!("cannot lock {}: {e}", tmp.display())));
                let linked = locked.and_then(|()| std::fs::hard_link(&tmp, &path).map_err(|e| Error::io(&path, e)));
                let _ = std::fs::remove_file(&tmp);
                linked?;
                // The file's name survives a power loss from here on.
                File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))?;
                (Some(Mutex::new(f)), Some(path))
            }
        };
        Ok(RunLedger {
            inner: Arc::new(RunInner {
                run_id: run_id.to_string(),
                store: self.store.clone(),
                file,
                path,
                live: Mutex::new(Vec::new()),
                seq: AtomicU64::new(0),
            }),
        })
    }

    /// Runs whose process is alive (it holds its ledger file); empty for an in-memory ledger.
    pub fn live_runs(&self) -> Result<Vec<String>> {
        match &*self.store {
            Store::Memory(_) => Ok(Vec::new()),
            Store::Dir(dir) => Ok(ledger_files(dir)?
                .into_iter()
                .filter(|(_, path)| File::open(path).is_ok_and(|f| f.try_lock().is_err()))
                .map(|(run, _)| run)
                .collect()),
        }
    }

    /// Runs whose process is gone and that left resources behind: `(run id, resources)`.
    pub fn abandoned(&self) -> Result<Vec<(String, Vec<ResourceRecord>)>> {
        match &*self.store {
            Store::Memory(m) => Ok(m.lock().map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()),
            Store::Dir(dir) => {
                let mut out = Vec::new();
                for (run, path) in ledger_files(dir)? {
                    let Ok(f) = File::open(&path) else { continue };
                    if f.try_lock().is_err() {
                        continue; // a live run holds it
                    }
                    out.push((run, replay(&path)?));
                }
                Ok(out)
            }
        }
    }
}

pub(crate) fn ledger_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let e = e.map_err(|e| Error::io(dir, e))?;
        let p = e.path();
        if let Some(run) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jsonl")) {
            out.push((run.to_string(), p.clone()));
        }
    }
    out.sort();
    Ok(out)
}

impl RunLedger {
    /// The run id.
    pub fn run_id(&self) -> &str {
        &self.inner.run_id
    }

    fn write(&self, entry: &Entry) -> Result<()> {
        match (&self.inner.file, &self.inner.path) {
            (Some(f), Some(p)) => append(f, p, entry),
            _ => Ok(()),
        }
    }

    /// Writes `record` durably and returns its ledger id. Call it *before* creating the
    /// resource: if the process dies in between, `gc` finds a record of something that may
    /// not exist, and deleting what does not exist must succeed. In a run, call
    /// [`crate::RunContext::record`], which also tells the run's events.
    pub fn record(&self, record: ResourceRecord) -> Result<String> {
        self.add(record).map(|r| r.id)
    }

    /// [`RunLedger::record`], returning the record with its id.
    pub(crate) fn add(&self, mut record: ResourceRecord) -> Result<ResourceRecord> {
        let n = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        record.id = format!("{}-{n}", self.inner.run_id);
        self.write(&Entry::Add { resource: record.clone() })?;
        if let Ok(mut l) = self.inner.live.lock() {
            l.push(record.clone());
        }
        Ok(record)
    }

    fn remove(&self, id: &str) -> Option<ResourceRecord> {
        let mut l = self.inner.live.lock().ok()?;
        let i = l.iter().position(|r| r.id == id)?;
        Some(l.remove(i))
    }

    /// Releases `id` after the resource was deleted; returns the record it held. In a run,
    /// call [`crate::RunContext::release`], which also tells the run's events.
    pub fn release(&self, id: &str) -> Result<Option<ResourceRecord>> {
        self.write(&Entry::Release { id: id.to_string() })?;
        Ok(self.remove(id))
    }

    /// Releases `id` without deleting it: the resource became an output of the run (a
    /// published image) and is the user's now.
    pub fn keep(&self, id: &str) -> Result<Option<ResourceRecord>> {
        self.write(&Entry::Keep { id: id.to_string() })?;
        Ok(self.remove(id))
    }

    /// Resources recorded and not yet released, oldest first.
    pub fn outstanding(&self) -> Vec<ResourceRecord> {
        self.inner.live.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The ledger file, for a durable ledger.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_ledger_replays_and_locks() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let run = ledger.begin("run1").unwrap();
        let a = run.record(ResourceRecord::new("fake", "vm", "vm-1", Scope::BuildVm)).unwrap();
        let b = run.record(ResourceRecord::new("fake", "disk", "d-1", Scope::Run)).unwrap();
        run.release(&b).unwrap();
        // Alive: not abandoned.
        assert!(ledger.abandoned().unwrap().is_empty());
        let path = run.path().unwrap().to_path_buf();
        drop(run);
        let left = ledger.abandoned().unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1.len(), 1);
        assert_eq!(left[0].1[0].id, a);
        // A torn last line is ignored.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"{\"op\":\"add\",\"reso").unwrap();
        assert_eq!(ledger.abandoned().unwrap()[0].1.len(), 1);
    }

    #[test]
    fn empty_run_removes_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let run = ledger.begin("r2").unwrap();
        let id = run.record(ResourceRecord::new("fake", "vm", "x", Scope::Run)).unwrap();
        run.release(&id).unwrap();
        let p = run.path().unwrap().to_path_buf();
        drop(run);
        assert!(!p.exists());
        assert!(ledger.begin("bad/id").is_err());
    }

    #[test]
    fn a_run_file_is_locked_from_its_first_moment_and_never_taken_twice() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let run = ledger.begin("r3").unwrap();
        // The only file is the run's own, and it is held: gc sees a live run, not an empty abandoned one.
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(names, ["r3.jsonl"]);
        assert_eq!(ledger.live_runs().unwrap(), ["r3"]);
        assert!(ledger.abandoned().unwrap().is_empty());
        let Err(err) = ledger.begin("r3") else { panic!("a second run with the same id is refused") };
        assert!(err.to_string().contains("r3.jsonl"), "{err}");
        let names = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(names, 1, "the refused start left no temporary file");
        drop(run);
    }
}
