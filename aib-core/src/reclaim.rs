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
