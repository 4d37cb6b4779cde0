//! Helpers of the end-to-end VM tests.

use std::path::{Path, PathBuf};

/// Base images are shared between tests (and runs): they are keyed by their recipe.
pub(crate) fn shared_catalog() -> PathBuf {
    std::env::var_os("AIB_E2E_CATALOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/aib/catalog"))
}

/// QEMU processes whose command line names `dir` (a state or work directory of the test).
pub(crate) fn qemu_processes(dir: &Path) -> usize {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| {
            let c = String::from_utf8_lossy(c);
            c.starts_with("qemu-system") && c.contains(&needle)
        })
        .count()
}
