//! [`FileReclaim`]: deletes the local files and directories a run recorded, whichever
//! backend made them (a VHD staged on this machine for an upload to Azure, a temporary
//! directory). The pipeline and `gc` always have it.

use crate::ledger::ResourceRecord;
use crate::traits::Reclaim;
use crate::{Error, Result};
use async_trait::async_trait;

/// Deletes records of kind `file` (a regular file) and `dir` (a directory tree) whose
/// backend is [`FileReclaim::BACKEND`]; their name is the absolute path.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use aib_core::{Reclaim, ResourceRecord, Scope, reclaim::FileReclaim};
/// let dir = tempfile::tempdir().unwrap();
/// let f = dir.path().join("staged.vhd");
/// std::fs::write(&f, b"x").unwrap();
/// let rec = FileReclaim::file(&f);
/// FileReclaim.delete(&rec).await.unwrap();
/// FileReclaim.delete(&rec).await.unwrap(); // already gone: still fine
/// assert!(!f.exists());
/// # });
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct FileReclaim;

impl FileReclaim {
    /// The backend name of its records.
    pub const BACKEND: &'static str = "file";

    /// A record of the file at `path` (scope [`crate::Scope::Run`]).
    pub fn file(path: impl AsRef<std::path::Path>) -> ResourceRecord {
        ResourceRecord::new(Self::BACKEND, "file", path.as_ref().display().to_string(), crate::Scope::Run)
    }

    /// A record of the directory tree at `path` (scope [`crate::Scope::Run`]).
    pub fn dir(path: impl AsRef<std::path::Path>) -> ResourceRecord {
        ResourceRecord::new(Self::BACKEND, "dir", path.as_ref().display().to_string(), crate::Scope::Run)
    }
}

#[async_trait]
impl Reclaim for FileReclaim {
    fn backend(&self) -> &'static str {
        Self::BACKEND
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<()> {
        let path = std::path::Path::new(&record.name);
        if !path.is_absolute() {
            return Err(Error::InvalidConfig {
                backend: Self::BACKEND,
                key: "name".into(),
                message: format!("`{}` is not an absolute path; nothing was deleted", record.name),
            });
        }
        let r = match record.kind.as_str() {
            "file" => tokio::fs::remove_file(path).await,
            "dir" => tokio::fs::remove_dir_all(path).await,
            other => return Err(Error::Unsupported { operation: format!("deleting a `{other}`"), backend: Self::BACKEND }),
        };
        match r {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
            _ => Ok(()),
        }
    }
}

/// [`FileReclaim`] confined to a directory: what [`crate::Ledger::gc`] deletes local files
/// with when it reads a state directory's ledger back, so that a record naming a path outside
/// that state directory (planted, or of a scratch directory elsewhere) deletes nothing.
#[derive(Debug, Clone)]
pub(crate) struct FileReclaimUnder {
    pub(crate) root: std::path::PathBuf,
}

#[async_trait]
impl Reclaim for FileReclaimUnder {
    fn backend(&self) -> &'static str {
        FileReclaim::BACKEND
    }

    async fn delete(&self, record: &ResourceRecord) -> Result<()> {
        if !crate::boundary::lies_under(std::path::Path::new(&record.name), &self.root) {
            return Err(Error::PermissionDenied {
                backend: FileReclaim::BACKEND,
                source: format!(
                    "`{}` is not inside the state directory {}; nothing was deleted (remove it by hand if it is a leftover)",
                    record.name,
                    self.root.display()
                )
                .into(),
            });
        }
        FileReclaim.delete(record).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_confined_reclaimer_deletes_nothing_outside_its_root() {
        let (root, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let victim = outside.path().join("keep");
        std::fs::write(&victim, "x").unwrap();
        let r = FileReclaimUnder { root: root.path().to_path_buf() };
        let e = r.delete(&FileReclaim::dir(outside.path())).await.unwrap_err();
        assert!(e.to_string().contains("not inside the state directory") || crate::error::error_chain(&e).contains("not inside"), "{e}");
        assert!(victim.exists());
        let mine = root.path().join("runs");
        std::fs::create_dir(&mine).unwrap();
        r.delete(&FileReclaim::dir(&mine)).await.unwrap();
        assert!(!mine.exists());
    }
}
