//! The local gallery: galleries, image definitions and versions on disk, with AIB's
//! versioning, `excludeFromLatest`, per-region replicas and atomic, concurrent-safe publish;
//! and managed images. ARM ids name the place: `…/galleries/G/images/D[/versions/V]` and
//! `…/images/NAME`.

use crate::catalog::version_cmp;
use crate::tools::{BACKEND, DiskFacts, disk_facts, to_zstd_qcow2};
use aib_core::reclaim::FileReclaim;
use aib_core::template::{Expr, SharedImageTarget, Versioning};
use aib_core::{CapturedImage, Error, Platform, ResolvedImage, Result, StepContext};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The manifest of one published image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// The ARM-style id of the artifact.
    pub id: String,
    /// The version (gallery images) or the image name (managed images).
    pub version: String,
    /// SHA-256 of `disk.qcow2`.
    pub sha256: String,
    /// Bytes on disk.
    pub size: u64,
    /// Virtual size of the disk.
    pub virtual_size: u64,
    /// The image the build started from.
    pub source_image: String,
    /// Its exact version.
    pub source_version: Option<String>,
    /// SHA-256 of the template that built it.
    pub template_digest: Option<String>,
    /// The run that built it.
    pub run_id: String,
    /// RFC 3339.
    pub created: String,
    /// Left out of `latest`.
    pub exclude_from_latest: bool,
    /// Region name to replica count.
    pub regions: BTreeMap<String, u32>,
    /// `artifactTags`.
    pub tags: BTreeMap<String, String>,
    /// Windows or Linux.
    pub windows: bool,
    /// `uefi` (Gen2) or `bios` (Gen1): how the disk boots.
    #[serde(default = "uefi")]
    pub firmware: String,
}

fn uefi() -> String {
    "uefi".into()
}

fn firmware_of(image: &CapturedImage) -> String {
    image.source.attributes.get("firmware").and_then(|f| f.as_str()).unwrap_or("uefi").to_string()
}

/// The gallery under `<state>/gallery`.
#[derive(Debug, Clone)]
pub struct Gallery {
    root: PathBuf,
}

fn seg(s: &str, what: &str) -> Result<String> {
    let ok = !s.is_empty() && s != "." && s != ".." && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.()".contains(c));
    if ok {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Error::InvalidConfig { backend: BACKEND, key: what.into(), message: format!("`{s}` is not usable as a name here") })
    }
}

/// The regions of a gallery target with their replica counts, named as Azure normalises them
/// (`West US 2` is `westus2`); `local` when it names none.
fn regions_of(target: &SharedImageTarget) -> Result<BTreeMap<String, u32>> {
    let mut regions = BTreeMap::new();
    let norm = |r: &str| seg(&r.chars().filter(|c| !c.is_whitespace()).collect::<String>(), "region");
    match &target.target_regions {
        Some(Expr::Value(rs)) => {
            for r in rs {
                regions.insert(norm(&r.name)?, r.replica_count.as_ref().and_then(|c| c.value()).copied().unwrap_or(1).max(1) as u32);
            }
        }
        _ => {
            if let Some(Expr::Value(rs)) = &target.replication_regions {
                for r in rs {
                    regions.insert(norm(r)?, 1);
                }
            }
        }
    }
    if regions.is_empty() {
        regions.insert("local".into(), 1);
    }
    Ok(regions)
}

/// A temporary directory of a publish: in the run's ledger before it exists (so `gc` finds it
/// after a crash), and removed on every path that does not move it into place, a cancelled
/// future's included.
struct Staging<'a> {
    path: PathBuf,
    ctx: &'a StepContext,
    record: Option<String>,
}

impl<'a> Staging<'a> {
    fn new(parent: &Path, ctx: &'a StepContext) -> Result<Self> {
        let path = parent.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
        let record = ctx.record(FileReclaim::dir(&path))?;
        Ok(Staging { path, ctx, record: Some(record) })
    }

    /// Moved into place: nothing is left to remove.
    fn done(mut self) {
        if let Some(id) = self.record.take() {
            let _ = self.ctx.release(&id);
        }
    }
}

impl Drop for Staging<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.record.take() {
            let _ = std::fs::remove_dir_all(&self.path);
            let _ = self.ctx.release(&id);
        }
    }
}

/// Flushes a file or a directory (its entries: a rename into it) to disk.
pub(crate) async fn sync(p: &Path) -> Result<()> {
    let owned = p.to_path_buf();
    tokio::task::spawn_blocking(move || std::fs::File::open(&owned).and_then(|f| f.sync_all()))
        .await
        .map_err(|e| Error::generic(BACKEND, e))?
        .map_err(|e| Error::io(p, e))
}

pub(crate) async fn write_synced(p: &Path, bytes: &[u8]) -> Result<()> {
    tokio::fs::write(p, bytes).await.map_err(|e| Error::io(p, e))?;
    sync(p).await
}

/// Swaps two directories in one step (`renameat2(RENAME_EXCHANGE)`).
fn exchange(a: &Path, b: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|e| Error::generic(BACKEND, e));
    let (ca, cb) = (c(a)?, c(b)?);
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let rc = unsafe { libc::renameat2(libc::AT_FDCWD, ca.as_ptr(), libc::AT_FDCWD, cb.as_ptr(), libc::RENAME_EXCHANGE) };
    if rc == 0 { Ok(()) } else { Err(Error::io(b, std::io::Error::last_os_error())) }
}

/// `(subscription, resource group, [(type, name)…])` of a resource id.
type IdParts = (String, String, Vec<(String, String)>);

/// The parts of `…/resourceGroups/RG/providers/Microsoft.Compute/TYPE/NAME[/TYPE/NAME…]`.
fn parts(id: &str) -> Result<IdParts> {
    let p: Vec<&str> = id.trim_matches('/').split('/').collect();
    if p.len() < 8
        || !p[0].eq_ignore_ascii_case("subscriptions")
        || !p[2].eq_ignore_ascii_case("resourceGroups")
        || !p[4].eq_ignore_ascii_case("providers")
        || !p.len().is_multiple_of(2)
    {
        return Err(Error::InvalidConfig { backend: BACKEND, key: "id".into(), message: format!("`{id}` is not a resource id") });
    }
    let rest = p[6..].chunks(2).map(|c| (c[0].to_ascii_lowercase(), c[1].to_string())).collect();
    Ok((seg(p[1], "subscription")?, seg(p[3], "resourceGroup")?, rest))
}

/// `x.y.z` with int32 parts.
fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let p: Vec<u32> = v.split('.').map(|x| x.parse().ok().filter(|n| *n <= i32::MAX as u32)).collect::<Option<_>>()?;
    (p.len() == 3).then(|| (p[0], p[1], p[2]))
}

/// The next version under AIB's `Latest` scheme: above every existing version (within
/// `major` when set).
pub fn next_latest(existing: &[String], major: Option<i32>) -> String {
    let parsed: Vec<(u32, u32, u32)> = existing.iter().filter_map(|v| parse_version(v)).collect();
    let pool: Vec<&(u32, u32, u32)> = match major {
        Some(m) if m >= 0 => parsed.iter().filter(|v| v.0 == m as u32).collect(),
        _ => parsed.iter().collect(),
    };
    match pool.into_iter().max() {
        Some((a, b, c)) => format!("{a}.{b}.{}", c + 1),
        None => match major {
            Some(m) if m >= 0 => format!("{m}.0.0"),
            _ => "1.0.0".into(),
        },
    }
}

impl Gallery {
    /// The gallery at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Gallery { root: root.into() }
    }

    fn definition_dir(&self, id: &str) -> Result<(PathBuf, String, Option<String>)> {
        let (sub, rg, rest) = parts(id)?;
        let r: Vec<(&str, &str)> = rest.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let (gallery, def, version) = match r.as_slice() {
            [("galleries", g), ("images", d)] => (g, d, None),
            [("galleries", g), ("images", d), ("versions", v)] => (g, d, Some(v.to_string())),
            _ => {
                return Err(Error::InvalidConfig {
                    backend: BACKEND,
                    key: "galleryImageId".into(),
                    message: format!("`{id}` is not …/galleries/G/images/D[/versions/V]"),
                });
            }
        };
        let dir = self
            .root
            .join(&sub)
            .join(&rg)
            .join("galleries")
            .join(seg(gallery, "gallery")?)
            .join("images")
            .join(seg(def, "image definition")?);
        let base = id.split("/versions/").next().unwrap_or(id).to_string();
        Ok((dir, base, version))
    }

    fn managed_dir(&self, id: &str) -> Result<PathBuf> {
        let (sub, rg, rest) = parts(id)?;
        match rest.as_slice() {
            [(t, name)] if t == "images" => Ok(self.root.join(sub).join(rg).join("images").join(seg(name, "image")?)),
            _ => Err(Error::InvalidConfig {
                backend: BACKEND,
                key: "imageId".into(),
                message: format!("`{id}` is not …/providers/Microsoft.Compute/images/NAME"),
            }),
        }
    }

    /// Holds the definition's lock file (`flock`) until dropped.
    async fn lock(dir: &Path) -> Result<std::fs::File> {
        tokio::fs::create_dir_all(dir).await.map_err(|e| Error::io(dir, e))?;
        // Held only for the renames of a publish: minutes of waiting mean a hung holder.
        crate::tools::lock_file(&dir.join(".lock"), std::time::Duration::from_secs(600)).await
    }

    /// Versions of a definition with their manifests, oldest first.
    pub async fn versions(&self, gallery_image_id: &str) -> Result<Vec<Manifest>> {
        let (dir, _, _) = self.definition_dir(gallery_image_id)?;
        let mut out = Vec::new();
        let vdir = dir.join("versions");
        if let Ok(mut rd) = tokio::fs::read_dir(&vdir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                if let Ok(t) = tokio::fs::read_to_string(e.path().join("manifest.json")).await
                    && let Ok(m) = serde_json::from_str::<Manifest>(&t)
                {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| version_cmp(&a.version, &b.version));
        Ok(out)
    }

    /// The names of every version directory, readable or not: a version whose manifest a crash
    /// left empty is still taken, so it blocks neither `Latest` numbering nor later publishes.
    async fn taken(vdir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(mut rd) = tokio::fs::read_dir(vdir).await {
            while let Ok(Some(e)) = rd.next_entry().await {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') {
                    out.push(name);
                }
            }
        }
        out
    }

    /// Writes `image` into `dir` (a fresh temp directory) as `disk.qcow2` (zstd).
    async fn write_disk(image: &CapturedImage, dir: &Path) -> Result<(PathBuf, DiskFacts)> {
        tokio::fs::create_dir_all(dir).await.map_err(|e| Error::io(dir, e))?;
        let disk = dir.join("disk.qcow2");
        to_zstd_qcow2(&image.location, &image.format, &disk).await?;
        sync(&disk).await?;
        let facts = disk_facts(&disk).await?;
        Ok((disk, facts))
    }

    /// Publishes `image` as a version of the definition `target.galleryImageId` names, for the
    /// run of `ctx`. The version is written in a temporary directory the run's ledger records
    /// (removed on every failure, found by `gc` after a crash), synced to disk, and renamed into
    /// place: visible whole or not at all, also after a power loss.
    pub async fn publish(
        &self,
        image: &CapturedImage,
        target: &SharedImageTarget,
        ctx: &StepContext,
        template_digest: Option<&str>,
    ) -> Result<(Manifest, PathBuf)> {
        let (def_dir, def_id, explicit) = self.definition_dir(&target.gallery_image_id)?;
        let vdir = def_dir.join("versions");
        tokio::fs::create_dir_all(&vdir).await.map_err(|e| Error::io(&vdir, e))?;
        let regions = regions_of(target)?;
        // The slow part (compression) happens before the lock.
        let staging = Staging::new(&vdir, ctx)?;
        let tmp = staging.path.clone();
        let (disk, DiskFacts { size, virtual_size, sha256 }) = Self::write_disk(image, &tmp).await?;
        // Replicas: hard links of the one disk, one per replica and region.
        for (region, count) in &regions {
            let rdir = tmp.join("regions").join(region);
            tokio::fs::create_dir_all(&rdir).await.map_err(|e| Error::io(&rdir, e))?;
            for i in 0..*count {
                let link = rdir.join(format!("replica-{i}.qcow2"));
                tokio::fs::hard_link(&disk, &link).await.map_err(|e| Error::io(&link, e))?;
            }
        }
        let lock = Self::lock(&def_dir).await?;
        let existing = Self::taken(&vdir).await;
        let version = match (&explicit, &target.versioning) {
            (Some(v), _) => v.clone(),
            (None, Some(Versioning::Source)) => {
                let v = image.source.exact_version.clone().unwrap_or_default();
                if parse_version(&v).is_none() {
                    return Err(Error::InvalidConfig {
                        backend: BACKEND,
                        key: "versioning".into(),
                        message: format!("`Source` versioning needs a source version of the form x.y.z, the source has `{v}`"),
                    });
                }
                v
            }
            (None, Some(Versioning::Latest { major })) => next_latest(&existing, major.as_ref().and_then(|m| m.value()).copied()),
            (None, None) => next_latest(&existing, None),
        };
        let dest = vdir.join(&version);
        if existing.contains(&version) || dest.exists() {
            return Err(Error::AlreadyExists { backend: BACKEND, what: format!("gallery image version {def_id}/versions/{version}") });
        }
        let manifest = Manifest {
            id: format!("{def_id}/versions/{version}"),
            version: version.clone(),
            sha256,
            size,
            virtual_size,
            source_image: image.source.exact.clone(),
            source_version: image.source.exact_version.clone(),
            template_digest: template_digest.map(str::to_string),
            run_id: ctx.run.run_id().to_string(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            exclude_from_latest: target.exclude_from_latest.as_ref().and_then(|e| e.value()).copied().unwrap_or(false),
            regions,
            tags: target.artifact_tags.as_ref().and_then(|t| t.value()).cloned().unwrap_or_default(),
            windows: image.platform == Platform::Windows,
            firmware: firmware_of(image),
        };
        write_synced(&tmp.join("manifest.json"), &serde_json::to_vec_pretty(&manifest).unwrap_or_default()).await?;
        let def_json = def_dir.join("definition.json");
        if !def_json.exists() {
            let generation = if manifest.firmware == "bios" { "V1" } else { "V2" };
            let d = serde_json::json!({"id": def_id, "osType": if manifest.windows { "Windows" } else { "Linux" }, "hyperVGeneration": generation, "created": manifest.created});
            write_synced(&def_json, &serde_json::to_vec_pretty(&d).unwrap_or_default()).await?;
        }
        // Visible whole or not at all.
        tokio::fs::rename(&tmp, &dest).await.map_err(|e| Error::io(&dest, e))?;
        sync(&vdir).await?;
        staging.done();
        drop(lock);
        Ok((manifest, dest))
    }

    /// Creates or replaces the managed image `image_id`, for the run of `ctx`: written aside
    /// (recorded in the ledger, synced), then exchanged with the old image in one step, so a
    /// crash leaves the old image or the new one, never none.
    pub async fn put_managed_image(
        &self,
        image: &CapturedImage,
        image_id: &str,
        ctx: &StepContext,
        tags: BTreeMap<String, String>,
    ) -> Result<(Manifest, PathBuf)> {
        let dir = self.managed_dir(image_id)?;
        let parent = dir.parent().map(Path::to_path_buf).unwrap_or_default();
        tokio::fs::create_dir_all(&parent).await.map_err(|e| Error::io(&parent, e))?;
        let staging = Staging::new(&parent, ctx)?;
        let tmp = staging.path.clone();
        let (_, DiskFacts { size, virtual_size, sha256 }) = Self::write_disk(image, &tmp).await?;
        let manifest = Manifest {
            id: image_id.to_string(),
            version: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            sha256,
            size,
            virtual_size,
            source_image: image.source.exact.clone(),
            source_version: image.source.exact_version.clone(),
            template_digest: None,
            run_id: ctx.run.run_id().to_string(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            exclude_from_latest: false,
            regions: BTreeMap::new(),
            tags,
            windows: image.platform == Platform::Windows,
            firmware: firmware_of(image),
        };
        write_synced(&tmp.join("manifest.json"), &serde_json::to_vec_pretty(&manifest).unwrap_or_default()).await?;
        let lock = Self::lock(&parent).await?;
        if dir.exists() {
            // The old image now sits in the staging directory, which is removed with it.
            exchange(&tmp, &dir)?;
            sync(&parent).await?;
            drop(staging);
        } else {
            tokio::fs::rename(&tmp, &dir).await.map_err(|e| Error::io(&dir, e))?;
            sync(&parent).await?;
            staging.done();
        }
        drop(lock);
        Ok((manifest, dir))
    }

    /// Resolves a `SharedImageVersion` id (`…/versions/latest` allowed) to its disk.
    pub async fn resolve_version(&self, id: &str) -> Result<ResolvedImage> {
        let (def_dir, _, version) = self.definition_dir(id)?;
        let versions = self.versions(id).await?;
        let wanted = version.clone().unwrap_or_else(|| "latest".into());
        let m = if wanted.eq_ignore_ascii_case("latest") {
            versions.iter().rev().find(|m| !m.exclude_from_latest)
        } else {
            versions.iter().find(|m| m.version == wanted)
        };
        let m = m.ok_or_else(|| Error::NotFound {
            backend: BACKEND,
            what: format!("gallery image version `{id}` in {}", self.root.display()),
        })?;
        let disk = def_dir.join("versions").join(&m.version).join("disk.qcow2");
        Ok(ResolvedImage::new("SharedImageVersion", id, m.id.clone())
            .with_exact_version(m.version.clone())
            .with_platform(if m.windows { Platform::Windows } else { Platform::Linux })
            .with_attribute("disk", disk.display().to_string())
            .with_attribute("diskFormat", "qcow2")
            .with_attribute("sha256", m.sha256.clone())
            .with_attribute("firmware", m.firmware.clone()))
    }

    /// Resolves a managed image id to its disk.
    pub async fn resolve_managed(&self, id: &str) -> Result<ResolvedImage> {
        let dir = self.managed_dir(id)?;
        let t = tokio::fs::read_to_string(dir.join("manifest.json"))
            .await
            .map_err(|_| Error::NotFound { backend: BACKEND, what: format!("managed image `{id}` in {}", self.root.display()) })?;
        let m: Manifest = serde_json::from_str(&t).map_err(|e| Error::generic(BACKEND, e))?;
        Ok(ResolvedImage::new("ManagedImage", id, m.id.clone())
            .with_platform(if m.windows { Platform::Windows } else { Platform::Linux })
            .with_attribute("disk", dir.join("disk.qcow2").display().to_string())
            .with_attribute("diskFormat", "qcow2")
            .with_attribute("firmware", m.firmware.clone())
            .with_attribute("sha256", m.sha256))
    }

    /// Every published manifest (gallery versions and managed images).
    pub async fn list(&self) -> Vec<Manifest> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(d) = stack.pop() {
            let Ok(mut rd) = tokio::fs::read_dir(&d).await else { continue };
            while let Ok(Some(e)) = rd.next_entry().await {
                let p = e.path();
                // Links are never followed: a link loop cannot make the listing spin.
                let is_dir = e.file_type().await.is_ok_and(|t| t.is_dir());
                if e.file_name().to_string_lossy().starts_with('.') || !is_dir {
                    continue;
                }
                if let Ok(t) = tokio::fs::read_to_string(p.join("manifest.json")).await
                    && let Ok(m) = serde_json::from_str(&t)
                {
                    out.push(m);
                    continue;
                }
                stack.push(p);
            }
        }
        out.sort_by(|a: &Manifest, b| a.id.cmp(&b.id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn listing_never_follows_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("gallery");
        std::fs::create_dir_all(root.join("s/rg")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("s/rg/loop")).unwrap();
        let listing = tokio::time::timeout(std::time::Duration::from_secs(10), Gallery::new(&root).list()).await;
        assert_eq!(listing.expect("a link loop does not make the listing spin"), Vec::<Manifest>::new());
    }

    #[test]
    fn latest_versioning_follows_aib() {
        let g: Vec<String> = ["0.1.1", "0.1.2", "1.0.0", "1.2.0", "2.0.0", "2.1.0"].iter().map(|s| s.to_string()).collect();
        assert_eq!(next_latest(&g, None), "2.1.1");
        assert_eq!(next_latest(&g, Some(-1)), "2.1.1");
        assert_eq!(next_latest(&g, Some(2)), "2.1.1");
        assert_eq!(next_latest(&g, Some(1)), "1.2.1");
        assert_eq!(next_latest(&g, Some(0)), "0.1.3");
        assert_eq!(next_latest(&g, Some(7)), "7.0.0");
        assert_eq!(next_latest(&[], None), "1.0.0");
    }

    #[test]
    fn ids_map_to_paths_without_traversal() {
        let g = Gallery::new("/state/gallery");
        let (d, base, v) =
            g.definition_dir("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/galleries/G/images/D/versions/1.2.3").unwrap();
        assert_eq!(d, PathBuf::from("/state/gallery/s/rg/galleries/g/images/d"));
        assert_eq!(v.as_deref(), Some("1.2.3"));
        assert!(base.ends_with("/images/D"));
        assert!(g.definition_dir("/subscriptions/S/resourceGroups/../providers/Microsoft.Compute/galleries/G/images/D").is_err());
        assert!(g.managed_dir("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/images/..").is_err());
    }
}
