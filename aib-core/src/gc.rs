//! `gc`: deletes what crashed, killed or aborted runs left in a ledger, through the
//! [`Reclaim`]ers that recorded it.

use crate::Result;
use crate::ledger::{Entry, Ledger, ResourceRecord, Store, append, ledger_files, replay};
use crate::reclaim::{FileReclaim, FileReclaimUnder};
use crate::traits::Reclaim;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// What [`Ledger::gc`] did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct GcReport {
    /// Runs swept.
    pub runs: usize,
    /// Runs skipped because they are alive.
    pub live_runs: usize,
    /// Runs skipped because they are younger than `min_age`.
    pub too_young: usize,
    /// Resources deleted.
    pub deleted: Vec<ResourceRecord>,
    /// Resources that could not be deleted, and why (they stay in the ledger).
    pub failed: Vec<(ResourceRecord, String)>,
}

impl Ledger {
    /// Deletes what crashed, killed or aborted runs left, through the reclaimer each record
    /// names (local files through [`FileReclaim`], always, and for a ledger in a state
    /// directory only files inside that directory), newest first. Live runs are never touched; runs younger than
    /// `min_age` are left alone.
    pub async fn gc(&self, backends: &[&dyn Reclaim], min_age: Duration) -> Result<GcReport> {
        // Records read back from a state directory delete local files only inside it.
        let files: Box<dyn Reclaim> = match &*self.store {
            Store::Dir(dir) => match dir.parent() {
                Some(state) => Box::new(FileReclaimUnder { root: state.to_path_buf() }),
                None => Box::new(FileReclaim),
            },
            Store::Memory(_) => Box::new(FileReclaim),
        };
        let mut report = GcReport::default();
        let runs: Vec<(String, Option<PathBuf>)> = match &*self.store {
            Store::Memory(m) => m.lock().map(|m| m.keys().map(|k| (k.clone(), None)).collect()).unwrap_or_default(),
            Store::Dir(dir) => ledger_files(dir)?.into_iter().map(|(r, p)| (r, Some(p))).collect(),
        };
        for (run, path) in runs {
            let (records, lock) = match &path {
                None => {
                    let recs = match &*self.store {
                        Store::Memory(m) => m.lock().ok().and_then(|m| m.get(&run).cloned()).unwrap_or_default(),
                        Store::Dir(_) => Vec::new(),
                    };
                    (recs, None)
                }
                Some(p) => {
                    let Ok(f) = OpenOptions::new().append(true).read(true).open(p) else { continue };
                    if f.try_lock().is_err() {
                        report.live_runs += 1;
                        continue;
                    }
                    (replay(p)?, Some(Mutex::new(f)))
                }
            };
            if records.iter().any(|r| r.created_at.elapsed().unwrap_or_default() < min_age) {
                report.too_young += 1;
                continue;
            }
            let mut left = Vec::new();
            for r in records.iter().rev() {
                let found = backends.iter().copied().chain([&*files]).find(|b| b.backend() == r.backend);
                let Some(b) = found else {
                    report.failed.push((r.clone(), format!("no backend `{}` given to gc", r.backend)));
                    left.push(r.clone());
                    continue;
                };
                match b.delete(r).await {
                    Ok(()) => {
                        if let (Some(l), Some(p)) = (&lock, &path) {
                            append(l, p, &Entry::Release { id: r.id.clone() })?;
                        }
                        report.deleted.push(r.clone());
                    }
                    Err(e) => {
                        report.failed.push((r.clone(), crate::error::error_chain(&e)));
                        left.push(r.clone());
                    }
                }
            }
            match (&*self.store, &path) {
                (Store::Memory(m), _) => {
                    if let Ok(mut m) = m.lock() {
                        if left.is_empty() {
                            m.remove(&run);
                        } else {
                            m.insert(run.clone(), left.clone());
                        }
                    }
                }
                (Store::Dir(_), Some(p)) if left.is_empty() => {
                    let _ = std::fs::remove_file(p);
                }
                _ => {}
            }
            report.runs += 1;
        }
        Ok(report)
    }
}
