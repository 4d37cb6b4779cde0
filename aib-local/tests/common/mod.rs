//! Helpers of the end-to-end VM tests.

use std::path::{Path, PathBuf};

/// Base images are shared between tests (and runs): they are keyed by their recipe.
pub(crate) fn shared_catalog() -> PathBuf {
    std::env::var_os("AIB_E2E_CATALOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/aib/catalog"))
}

/// Saved VM states are shared too: their key covers the base and the VM shape.
#[allow(dead_code)]
pub(crate) fn shared_warm() -> PathBuf {
    shared_catalog().with_file_name("warm")
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

/// The bytes of `path` inside the root file system of `disk` (any format QEMU reads), read
/// without booting it: converted to raw, then `debugfs` at the root partition's offset.
/// `None` when the file is not there.
#[allow(dead_code)]
pub(crate) fn file_in_image(disk: &Path, path: &str) -> Option<Vec<u8>> {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let st = std::process::Command::new("qemu-img").arg("convert").arg("-O").arg("raw").arg(disk).arg(&raw).status().unwrap();
    assert!(st.success(), "qemu-img convert {}", disk.display());
    let table = std::process::Command::new("sfdisk").arg("-J").arg(&raw).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap_or_else(|e| panic!("sfdisk -J {}: {e}", disk.display()));
    let parts = table["partitiontable"]["partitions"].as_array().cloned().unwrap_or_default();
    let root = parts
        .iter()
        .find(|p| p["name"] == "root")
        .or_else(|| parts.iter().max_by_key(|p| p["size"].as_u64()))
        .unwrap_or_else(|| panic!("no partitions in {}", disk.display()));
    let offset = root["start"].as_u64().unwrap() * 512;
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={offset}", raw.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    (!err.contains("File not found")).then_some(out.stdout)
}
