//! The local image catalog: marketplace URNs (`publisher:offer:sku:version`) resolved to
//! image files under the state directory. `Debian:debian-12:12-gen2` is built from Debian's
//! mirror when missing; other images are imported with a required SHA-256.

use crate::debian::Firmware;
use crate::tools::{BACKEND, disk_facts, refuse_external_files, sha256_file, to_zstd_qcow2};
use aib_core::boundary::IpNet;
use aib_core::{Error, OutputSink, OutputStream, Platform, ResolvedImage, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the catalog knows about one image version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CatalogEntry {
    /// `publisher:offer:sku:version`.
    pub urn: String,
    /// The exact version.
    pub version: String,
    /// SHA-256 of the disk file.
    pub sha256: String,
    /// Bytes on disk.
    pub size: u64,
    /// Virtual disk size.
    pub virtual_size: u64,
    /// Where it came from (`debian-recipe:KEY`, `import:URI`).
    pub origin: String,
    /// When it was added (RFC 3339).
    pub created: String,
    /// Guest OS.
    pub windows: bool,
    /// The disk (qcow2), relative to the entry's directory.
    pub disk: String,
    /// `uefi` (Gen2) or `bios` (Gen1).
    #[serde(default = "uefi")]
    pub firmware: String,
}

fn uefi() -> String {
    "uefi".into()
}

/// The catalog under `<state>/catalog`.
#[derive(Debug, Clone)]
pub struct Catalog {
    root: PathBuf,
    runs: PathBuf,
    ledger: Option<PathBuf>,
}

/// Orders dotted versions numerically (`12.20261129.0` < `12.20261130.0`); non-numeric
/// parts compare as text.
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let parts = |s: &str| s.split('.').map(|p| p.parse::<u64>().map_err(|_| p.to_string())).collect::<Vec<_>>();
    let (pa, pb) = (parts(a), parts(b));
    for (x, y) in pa.iter().zip(&pb) {
        let o = match (x, y) {
            (Ok(x), Ok(y)) => x.cmp(y),
            (Err(x), Err(y)) => x.cmp(y),
            (Ok(_), Err(_)) => std::cmp::Ordering::Greater,
            (Err(_), Ok(_)) => std::cmp::Ordering::Less,
        };
        if o.is_ne() {
            return o;
        }
    }
    pa.len().cmp(&pb.len())
}

fn segment_ok(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn today() -> String {
    humantime::format_rfc3339(std::time::SystemTime::now()).to_string()[..10].replace('-', "")
}

impl Catalog {
    /// The catalog at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        Catalog { runs: root.join(".work").join("runs"), root, ledger: None }
    }

    /// Records the VM that installs GRUB into a BIOS base in a durable ledger in `dir` (the
    /// state directory's), so `gc` finds it when the build that made it is killed.
    #[must_use]
    pub fn with_ledger_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.ledger = Some(dir.into());
        self
    }

    /// Where the VM that installs GRUB into a BIOS base runs (default under the catalog).
    #[must_use]
    pub fn with_runs_dir(mut self, runs: impl Into<PathBuf>) -> Self {
        self.runs = runs.into();
        self
    }

    fn sku_dir(&self, publisher: &str, offer: &str, sku: &str) -> Result<PathBuf> {
        for (k, v) in [("publisher", publisher), ("offer", offer), ("sku", sku)] {
            if !segment_ok(v) {
                return Err(Error::InvalidConfig {
                    backend: BACKEND,
                    key: k.into(),
                    message: format!("`{v}` must be letters, digits, `-`, `_`, `.`"),
                });
            }
        }
        Ok(self.root.join(publisher.to_ascii_lowercase()).join(offer.to_ascii_lowercase()).join(sku.to_ascii_lowercase()))
    }

    /// Every version of a SKU, oldest first.
    pub async fn versions(&self, publisher: &str, offer: &str, sku: &str) -> Result<Vec<(CatalogEntry, PathBuf)>> {
        let dir = self.sku_dir(publisher, offer, sku)?;
        let mut out = Vec::new();
        let Ok(mut rd) = tokio::fs::read_dir(&dir).await else { return Ok(out) };
        while let Some(e) = rd.next_entry().await.map_err(|e| Error::io(&dir, e))? {
            let m = e.path().join("manifest.json");
            if let Ok(text) = tokio::fs::read_to_string(&m).await
                && let Ok(entry) = serde_json::from_str::<CatalogEntry>(&text)
            {
                out.push((entry, e.path()));
            }
        }
        out.sort_by(|a, b| version_cmp(&a.0.version, &b.0.version));
        Ok(out)
    }

    /// Every entry.
    pub async fn list(&self) -> Result<Vec<CatalogEntry>> {
        let mut out = Vec::new();
        for p in dirs(&self.root).await {
            for o in dirs(&p).await {
                for s in dirs(&o).await {
                    for v in dirs(&s).await {
                        if let Ok(t) = tokio::fs::read_to_string(v.join("manifest.json")).await
                            && let Ok(e) = serde_json::from_str(&t)
                        {
                            out.push(e);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Resolves `publisher:offer:sku:version` (`latest` allowed), building the Debian base
    /// when it is asked for and missing.
    pub async fn resolve(&self, publisher: &str, offer: &str, sku: &str, version: &str, out: &dyn OutputSink) -> Result<ResolvedImage> {
        let requested = format!("{publisher}:{offer}:{sku}:{version}");
        let debian = publisher.eq_ignore_ascii_case("Debian") && offer.eq_ignore_ascii_case("debian-12");
        let mut versions = self.versions(publisher, offer, sku).await?;
        if debian && version.eq_ignore_ascii_case("latest") {
            let key = crate::debian::recipe_key(Firmware::for_sku(sku));
            if !versions.iter().any(|(e, _)| e.origin == format!("debian-recipe:{key}")) {
                if !matches!(sku.to_ascii_lowercase().as_str(), "12" | "12-gen2") {
                    return Err(Error::Unsupported {
                        operation: format!(
                            "building `{requested}` (the SKUs built locally are `12` (BIOS, Gen1) and `12-gen2` (UEFI, Gen2); import other images)"
                        ),
                        backend: BACKEND,
                    });
                }
                self.build_debian(sku, out).await?;
                versions = self.versions(publisher, offer, sku).await?;
            }
        }
        let found =
            if version.eq_ignore_ascii_case("latest") { versions.last() } else { versions.iter().find(|(e, _)| e.version == version) };
        let Some((entry, dir)) = found else {
            return Err(Error::NotFound {
                backend: BACKEND,
                what: format!(
                    "image `{requested}` in the local catalog {}; import it with `aib images import {publisher}:{offer}:{sku}:VERSION FILE --sha256 SUM`",
                    self.root.display()
                ),
            });
        };
        Ok(resolved(&requested, entry, &dir.join(&entry.disk)))
    }

    async fn build_debian(&self, sku: &str, out: &dyn OutputSink) -> Result<()> {
        let dir = self.sku_dir("Debian", "debian-12", sku)?;
        tokio::fs::create_dir_all(&dir).await.map_err(|e| Error::io(&dir, e))?;
        // One builder at a time; a second waits and then finds the image.
        let lock_path = dir.join(".build.lock");
        // Held while a base image is built (a minute or two; more under TCG for a BIOS base).
        let lock = crate::tools::lock_file(&lock_path, std::time::Duration::from_secs(3600)).await?;
        let fw = Firmware::for_sku(sku);
        let key = crate::debian::recipe_key(fw);
        let existing = self.versions("Debian", "debian-12", sku).await?;
        if existing.iter().any(|(e, _)| e.origin == format!("debian-recipe:{key}")) {
            return Ok(());
        }
        out.line(OutputStream::Stdout, &format!("building the Debian 12 base image (recipe {key}); it is cached for later builds"));
        let mut n = 0;
        let version = loop {
            let v = format!("12.{}.{n}", today());
            if !existing.iter().any(|(e, _)| e.version == v) {
                break v;
            }
            n += 1;
        };
        let scratch = self.scratch(dir.join(format!(".tmp-{version}")), "aib-base")?;
        let tmp = scratch.path.clone();
        let _ = tokio::fs::remove_dir_all(&tmp).await;
        tokio::fs::create_dir_all(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
        let disk = tmp.join("disk.qcow2");
        let work = self.root.join(".work").join(&key);
        let built = async {
            match fw {
                Firmware::Uefi => crate::debian::build(&work, &disk, out, fw).await,
                Firmware::Bios => {
                    let plain = tmp.join("no-bootloader.qcow2");
                    crate::debian::build(&work, &plain, out, fw).await?;
                    self.install_grub(&plain, &tmp, &disk, out).await?;
                    for f in ["no-bootloader.qcow2", "vmlinuz", "initrd.img"] {
                        let _ = tokio::fs::remove_file(tmp.join(f)).await;
                    }
                    Ok(())
                }
            }
        }
        .await;
        built?;
        let mut entry =
            self.entry_for(&format!("Debian:debian-12:{sku}:{version}"), &version, &disk, format!("debian-recipe:{key}"), false).await?;
        entry.firmware = fw.as_str().into();
        self.commit(&tmp, &dir.join(&version), &entry).await?;
        scratch.done();
        drop(lock);
        Ok(())
    }

    /// Boots a BIOS base once by direct kernel boot, installs GRUB from inside, generalizes it
    /// and flattens the result into `dest`.
    async fn install_grub(&self, plain: &Path, dir: &Path, dest: &Path, out: &dyn OutputSink) -> Result<()> {
        use aib_core::{CommunicatorExt, ExecRequest, ProvisionRequest, Provisioner, Reclaim, RunContext};
        out.line(OutputStream::Stdout, "booting the BIOS base once to install GRUB (direct kernel boot)");
        let image = ResolvedImage::new("PlatformImage", "Debian:debian-12:12:bootstrap", "bootstrap")
            .with_attribute("disk", plain.display().to_string())
            .with_attribute("diskFormat", "qcow2")
            .with_attribute("firmware", "bios")
            .with_attribute("kernel", dir.join("vmlinuz").display().to_string())
            .with_attribute("initrd", dir.join("initrd.img").display().to_string());
        let prov = crate::qemu::QemuProvisioner::new(&self.runs);
        let run_id = format!("aib-grub-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let ctx = match &self.ledger {
            Some(dir) => RunContext::with_ledger(aib_core::Ledger::open(dir)?.begin(&run_id)?),
            None => RunContext::detached(&run_id)?,
        };
        let result = async {
            let vm = prov.provision(&ProvisionRequest::new(image), &ctx.step("provision")).await?;
            let comm = prov.connect(&vm, &ctx.step("connect")).await?;
            let step = ctx.step("install-grub");
            comm.run_checked(
                "install-grub",
                &ExecRequest::new("sudo -n grub-install --target=i386-pc /dev/vda && sudo -n update-grub"),
                &*step.output,
            )
            .await?;
            prov.generalize(&vm, &*comm, &step).await?;
            let captured = prov.capture(&vm, &step).await?;
            to_zstd_qcow2(&captured.location, "qcow2", dest).await?;
            Ok::<(), Error>(())
        }
        .await;
        // Everything is deleted, then the first failure is reported (what failed stays in the
        // ledger for `gc`).
        let mut failed = None;
        for r in ctx.ledger().outstanding().iter().rev() {
            match prov.delete(r).await {
                Ok(()) => ctx.release(&r.id)?,
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        result?;
        failed.map_or(Ok(()), Err)
    }

    async fn entry_for(&self, urn: &str, version: &str, disk: &Path, origin: String, windows: bool) -> Result<CatalogEntry> {
        let facts = disk_facts(disk).await?;
        Ok(CatalogEntry {
            urn: urn.to_string(),
            version: version.to_string(),
            sha256: facts.sha256,
            size: facts.size,
            virtual_size: facts.virtual_size,
            origin,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            windows,
            disk: "disk.qcow2".into(),
            firmware: "uefi".into(),
        })
    }

    /// A temporary directory of the catalog at `path`: recorded in a durable ledger of its own
    /// (named `run` and a suffix) when the catalog has one, so `gc` finds it after a crash, and
    /// removed when dropped unless [`Scratch::done`].
    fn scratch(&self, path: PathBuf, run: &str) -> Result<Scratch> {
        let ledger = match &self.ledger {
            Some(dir) => {
                let l = aib_core::Ledger::open(dir)?.begin(&format!("{run}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]))?;
                let id = l.record(aib_core::reclaim::FileReclaim::dir(&path))?;
                Some((l, id))
            }
            None => None,
        };
        Ok(Scratch { path, ledger, done: false })
    }

    /// Writes the manifest and moves the entry into place: visible whole or not at all, also
    /// after a power loss (disk and manifest synced before the rename, the directory after).
    async fn commit(&self, tmp: &Path, dest: &Path, entry: &CatalogEntry) -> Result<()> {
        use crate::gallery::{sync, write_synced};
        sync(&tmp.join(&entry.disk)).await?;
        write_synced(&tmp.join("manifest.json"), &serde_json::to_vec_pretty(entry).unwrap_or_default()).await?;
        if dest.exists() {
            return Err(Error::AlreadyExists { backend: BACKEND, what: format!("catalog entry {}", entry.urn) });
        }
        tokio::fs::rename(tmp, dest).await.map_err(|e| Error::io(dest, e))?;
        match dest.parent() {
            Some(parent) => sync(parent).await,
            None => Ok(()),
        }
    }

    /// Imports a disk (`qcow2`, `raw` or `vhd`; a path or an `http(s)` URL) as
    /// `publisher:offer:sku:version`, verifying `sha256` first.
    pub async fn import(&self, urn: &str, source: &str, sha256: &str, windows: bool) -> Result<CatalogEntry> {
        self.import_reporting(urn, source, sha256, windows, &|_, _| {}).await
    }

    /// [`Catalog::import`], telling `progress` how far a download is (bytes so far, and the
    /// total when the server says it).
    pub async fn import_reporting(
        &self,
        urn: &str,
        source: &str,
        sha256: &str,
        windows: bool,
        progress: aib_customizers::fetch::Progress<'_>,
    ) -> Result<CatalogEntry> {
        let parts: Vec<&str> = urn.split(':').collect();
        let [publisher, offer, sku, version] = parts.as_slice() else {
            return Err(Error::InvalidConfig {
                backend: BACKEND,
                key: "urn".into(),
                message: format!("`{urn}` is not publisher:offer:sku:version"),
            });
        };
        if version.eq_ignore_ascii_case("latest") || !segment_ok(version) {
            return Err(Error::InvalidConfig {
                backend: BACKEND,
                key: "urn".into(),
                message: "give an exact version, not `latest`".into(),
            });
        }
        if !aib_core::template::is_sha256_hex(sha256) {
            return Err(Error::InvalidConfig {
                backend: BACKEND,
                key: "sha256".into(),
                message: "a 64-hex-digit SHA-256 of the file is required".into(),
            });
        }
        let dir = self.sku_dir(publisher, offer, sku)?;
        let scratch = self.scratch(dir.join(format!(".tmp-import-{}", uuid::Uuid::new_v4().simple())), "aib-import")?;
        let tmp = scratch.path.clone();
        tokio::fs::create_dir_all(&tmp).await.map_err(|e| Error::io(&tmp, e))?;
        let result = async {
            let local = if source.starts_with("http://") || source.starts_with("https://") {
                // The operator names this URL, not a template: any network is theirs to use.
                let p = tmp.join("download");
                let fetcher = aib_customizers::fetch::Fetcher::new()
                    .with_allowed_network(IpNet::ANY_V4)
                    .with_allowed_network(IpNet::ANY_V6)
                    .with_max_bytes(MAX_IMPORT_BYTES);
                fetcher.fetch_to_file_reporting(source, sha256, &p, progress).await?;
                p
            } else {
                // Resolved: an absolute path, which qemu-img never reads as `json:` or a protocol.
                let given = PathBuf::from(source.strip_prefix("file://").unwrap_or(source));
                let p = tokio::fs::canonicalize(&given).await.map_err(|e| Error::io(&given, e))?;
                let got = sha256_file(&p).await?;
                if !got.eq_ignore_ascii_case(sha256) {
                    return Err(Error::ChecksumMismatch { what: source.to_string(), expected: sha256.to_ascii_lowercase(), actual: got });
                }
                p
            };
            let lower = source.to_ascii_lowercase();
            let format = if lower.ends_with(".vhd") {
                "vpc"
            } else if lower.ends_with(".qcow2") {
                "qcow2"
            } else {
                "raw"
            };
            refuse_external_files(&local, format, "source").await?;
            let disk = tmp.join("disk.qcow2");
            to_zstd_qcow2(&local.display().to_string(), format, &disk).await?;
            let _ = tokio::fs::remove_file(tmp.join("download")).await;
            let entry = self.entry_for(urn, version, &disk, format!("import:{source}"), windows).await?;
            self.commit(&tmp, &dir.join(version), &entry).await?;
            Ok(entry)
        }
        .await;
        if result.is_ok() {
            scratch.done();
        }
        result
    }
}

/// A temporary directory of the catalog; see [`Catalog::scratch`].
struct Scratch {
    path: PathBuf,
    ledger: Option<(aib_core::RunLedger, String)>,
    done: bool,
}

impl Scratch {
    /// Moved into place: nothing is left to remove.
    fn done(mut self) {
        self.done = true;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.path);
        }
        if let Some((l, id)) = &self.ledger {
            let _ = l.release(id);
        }
    }
}

/// The largest image `import` downloads.
const MAX_IMPORT_BYTES: u64 = 1 << 40;

pub(crate) fn resolved(requested: &str, entry: &CatalogEntry, disk: &Path) -> ResolvedImage {
    let mut r = ResolvedImage::new("PlatformImage", requested, entry.urn.clone())
        .with_exact_version(entry.version.clone())
        .with_platform(if entry.windows { Platform::Windows } else { Platform::Linux })
        .with_attribute("disk", disk.display().to_string())
        .with_attribute("diskFormat", "qcow2")
        .with_attribute("sha256", entry.sha256.clone())
        .with_attribute("virtualSize", entry.virtual_size)
        .with_attribute("firmware", entry.firmware.clone());
    r.attributes.insert("origin".into(), entry.origin.clone().into());
    r
}

async fn dirs(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(mut rd) = tokio::fs::read_dir(p).await {
        while let Ok(Some(e)) = rd.next_entry().await {
            let name = e.file_name();
            if e.path().is_dir() && !name.to_string_lossy().starts_with('.') {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("12.20261129.0", "12.20261130.0"), Less);
        assert_eq!(version_cmp("1.10.0", "1.9.0"), Greater);
        assert_eq!(version_cmp("1.0", "1.0.0"), Less);
        assert!(!segment_ok("..") && !segment_ok("a/b") && segment_ok("12-gen2"));
    }
}
