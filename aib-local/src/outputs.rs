//! Distributors: a fixed VHD that Azure accepts, plain disk files (qcow2 zstd/zlib, raw),
//! and the local gallery's SharedImage and ManagedImage targets.

use crate::gallery::Gallery;
use crate::tools::{BACKEND, image_info};
use aib_core::template::{DistributorSpec, ManagedImageTarget, SharedImageTarget};
use aib_core::{Artifact, CapturedImage, DistributeRequest, Distributor, Error, OutputStream, ResourceRecord, Result, Scope, StepContext};
use async_trait::async_trait;
use std::fmt;
use std::path::{Path, PathBuf};

const MIB: u64 = 1 << 20;

/// A disk file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Fixed VHD, Azure's upload format.
    VhdFixed,
    /// qcow2, zstd-compressed (QEMU ≥ 5.1 reads it).
    Qcow2Zstd,
    /// qcow2, zlib-compressed (any QEMU).
    Qcow2Zlib,
    /// qcow2, uncompressed.
    Qcow2,
    /// Raw, sparse.
    Raw,
}

impl DiskFormat {
    fn extension(self) -> &'static str {
        match self {
            DiskFormat::VhdFixed => "vhd",
            DiskFormat::Raw => "raw",
            _ => "qcow2",
        }
    }

    fn args(self) -> Vec<&'static str> {
        match self {
            DiskFormat::VhdFixed => vec!["-O", "vpc", "-o", "subformat=fixed,force_size=on"],
            DiskFormat::Qcow2Zstd => vec!["-c", "-O", "qcow2", "-o", "compression_type=zstd"],
            DiskFormat::Qcow2Zlib => vec!["-c", "-O", "qcow2"],
            DiskFormat::Qcow2 => vec!["-O", "qcow2"],
            DiskFormat::Raw => vec!["-O", "raw"],
        }
    }
}

/// Checks the footer of a fixed VHD the way Azure does: cookie, fixed type, a virtual size
/// that is a whole number of MiB, file size = virtual size + 512, valid checksum.
pub fn check_vhd(path: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |why: String| Error::generic(BACKEND, format!("{} is not a VHD Azure accepts: {why}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map_err(|e| Error::io(path, e))?.len();
    if len < 512 {
        return Err(bad("shorter than a footer".into()));
    }
    let mut ft = [0u8; 512];
    f.seek(SeekFrom::End(-512)).and_then(|_| f.read_exact(&mut ft)).map_err(|e| Error::io(path, e))?;
    let be64 = |i: usize| u64::from_be_bytes(ft[i..i + 8].try_into().unwrap_or_default());
    let be32 = |i: usize| u32::from_be_bytes(ft[i..i + 4].try_into().unwrap_or_default());
    if &ft[..8] != b"conectix" {
        return Err(bad("no `conectix` cookie".into()));
    }
    if be32(60) != 2 {
        return Err(bad(format!("disk type {} is not 2 (fixed)", be32(60))));
    }
    let size = be64(48);
    if size % MIB != 0 {
        return Err(bad(format!("virtual size {size} is not a whole number of MiB")));
    }
    if size.checked_add(512) != Some(len) {
        return Err(bad(format!("file size {len} is not the virtual size {size} + 512")));
    }
    let stored = be32(64);
    let sum: u32 = ft.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, b)| u32::from(*b)).sum();
    if !sum != stored {
        return Err(bad("footer checksum mismatch".into()));
    }
    Ok(size)
}

/// Converts `image` into `dest` atomically (a temp file renamed into place), recorded in the
/// ledger while it is being written.
async fn write_file(image: &CapturedImage, format: DiskFormat, dest: &Path, ctx: &StepContext) -> Result<u64> {
    if let Some(dir) = dest.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(|e| Error::io(dir, e))?;
    }
    let info = image_info(Path::new(&image.location), Some(&image.format)).await?;
    if format == DiskFormat::VhdFixed && info.virtual_size % MIB != 0 {
        return Err(Error::generic(
            BACKEND,
            format!("the disk's virtual size {} is not a whole number of MiB; Azure would refuse the VHD", info.virtual_size),
        ));
    }
    // A fresh name, created exclusively (never a link someone planted) and private until done.
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{file_name}.{}.aib-tmp", &uuid::Uuid::new_v4().simple().to_string()[..12]));
    let id = ctx.record(ResourceRecord::new(BACKEND, "file", tmp.display().to_string(), Scope::Run))?;
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
    }
    ctx.output.progress(0, Some(info.virtual_size), "bytes");
    // Out-of-order writes with 16 coroutines, for every format (a file made here is not read
    // before it is complete and renamed).
    let mut args: Vec<String> = ["convert", "-p", "-W", "-m", "16", "-f", &image.format].map(String::from).to_vec();
    args.extend(format.args().into_iter().map(String::from));
    args.push(image.location.clone());
    args.push(tmp.display().to_string());
    let total = info.virtual_size;
    let output = ctx.output.clone();
    crate::tools::run_reporting("qemu-img", &args, &move |p| output.progress((total as f64 * p / 100.0) as u64, Some(total), "bytes"))
        .await?;
    if format == DiskFormat::VhdFixed {
        check_vhd(&tmp)?;
    }
    tokio::fs::rename(&tmp, dest).await.map_err(|e| Error::io(dest, e))?;
    // Renamed away: the temp file is gone and the output is the user's.
    ctx.keep(&id)?;
    ctx.output.progress(info.virtual_size, Some(info.virtual_size), "bytes");
    let meta = tokio::fs::metadata(dest).await.map_err(|e| Error::io(dest, e))?;
    use std::os::unix::fs::MetadataExt;
    let allocated = meta.blocks() * 512;
    ctx.output.line(
        OutputStream::Stdout,
        &format!("wrote {} ({} MiB virtual, {} MiB allocated)", dest.display(), info.virtual_size / MIB, allocated / MIB),
    );
    Ok(meta.len())
}

/// aib's `LocalFile` target type: a disk file in a chosen format.
pub const LOCAL_FILE: &str = "LocalFile";

/// Writes the image as a file: the `VHD` type (fixed VHD), and aib's `LocalFile` extension.
#[derive(Debug, Clone)]
pub struct FileDistributor {
    format: DiskFormat,
    path: Option<PathBuf>,
    outputs: PathBuf,
    name: String,
    /// The template field `path` came from (`uri` of a VHD, `path` of a LocalFile).
    field: &'static str,
    /// Where files may be written (resolved); empty = anywhere (API use without a backend).
    roots: Vec<PathBuf>,
}

impl fmt::Display for FileDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "File({:?}, {})", self.format, self.name)
    }
}

impl FileDistributor {
    /// Writes `format` to `path`, or to `<outputs>/<run id>/<name>.<ext>` when `path` is `None`.
    pub fn new(format: DiskFormat, path: Option<PathBuf>, outputs: PathBuf, name: &str) -> Self {
        FileDistributor { format, path, outputs, name: name.to_string(), field: "path", roots: Vec::new() }
    }

    /// Writes only under `roots` (resolved directories): a template's path elsewhere is
    /// refused now, and a path that resolves elsewhere at write time (a link in a parent) is
    /// refused then, before anything is written.
    pub fn confined_to(mut self, roots: Vec<PathBuf>) -> Result<Self> {
        if let Some(p) = &self.path
            && !roots.iter().any(|r| p.starts_with(r))
        {
            return Err(Error::outside_boundary(
                self.field,
                format!("`{}` is outside the directories this builder writes outputs to", p.display()),
                format!(
                    "leave it out (the file goes under {}), or the operator allows a directory with `aib build --allow-output-root DIR`",
                    self.outputs.display()
                ),
            ));
        }
        self.roots = roots;
        Ok(self)
    }

    /// Checks, just before writing, that `dest` is a new file or a regular file in a resolved
    /// allowed directory.
    async fn check_dest(&self, dest: &Path) -> Result<()> {
        if self.roots.is_empty() {
            return Ok(());
        }
        let refuse = |why: String| Error::PermissionDenied { backend: BACKEND, source: why.into() };
        let parent = dest.parent().ok_or_else(|| refuse(format!("{} has no directory", dest.display())))?;
        let real = tokio::fs::canonicalize(parent).await.map_err(|e| Error::io(parent, e))?;
        if !self.roots.iter().any(|r| real.starts_with(r)) {
            return Err(refuse(format!("{} resolves to {}, outside the allowed output directories", parent.display(), real.display())));
        }
        match tokio::fs::symlink_metadata(dest).await {
            Ok(m) if !m.is_file() => Err(refuse(format!("{} exists and is not a regular file; nothing was written", dest.display()))),
            _ => Ok(()),
        }
    }

    /// From a `VHD` or `LocalFile` distribute entry.
    pub fn from_spec(spec: &DistributorSpec, outputs: &Path) -> Result<Self> {
        let invalid = |m: String| Error::InvalidConfig { backend: BACKEND, key: spec.run_output_name().to_string(), message: m };
        let path_from = |uri: &str| -> Result<PathBuf> {
            match uri.strip_prefix("file://") {
                Some(p) if p.starts_with('/') && !p.split('/').any(|x| x == ".." || x == ".") => Ok(PathBuf::from(p)),
                _ => Err(invalid(format!("`{uri}`: the local backend writes files; use file:///path (blob URIs need the Azure backend)"))),
            }
        };
        match spec {
            DistributorSpec::Vhd(v) => {
                let path = v.uri.as_deref().filter(|u| !u.is_empty()).map(path_from).transpose()?;
                Ok(FileDistributor { field: "uri", ..Self::new(DiskFormat::VhdFixed, path, outputs.to_path_buf(), &v.run_output_name) })
            }
            DistributorSpec::Custom(c) if c.type_name == LOCAL_FILE => {
                let s = |k: &str| c.fields.get(k).and_then(|v| v.as_str());
                let format = match (s("format").unwrap_or("qcow2"), s("compression").unwrap_or("zstd")) {
                    ("vhd", _) => DiskFormat::VhdFixed,
                    ("raw", _) => DiskFormat::Raw,
                    ("qcow2", "zstd") => DiskFormat::Qcow2Zstd,
                    ("qcow2", "zlib") => DiskFormat::Qcow2Zlib,
                    ("qcow2", "none") => DiskFormat::Qcow2,
                    (f, c) => {
                        return Err(invalid(format!("format `{f}` with compression `{c}`: use vhd, raw, or qcow2 with zstd|zlib|none")));
                    }
                };
                let path = match s("path") {
                    Some(p) if p.starts_with('/') && !p.split('/').any(|x| x == "..") => Some(PathBuf::from(p)),
                    Some(p) => return Err(invalid(format!("`path` `{p}` must be absolute, without `..`"))),
                    None => None,
                };
                Ok(Self::new(format, path, outputs.to_path_buf(), spec.run_output_name()))
            }
            other => Err(invalid(format!("`{}` is not a file output", other.type_name()))),
        }
    }
}

#[async_trait]
impl Distributor for FileDistributor {
    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
        let image = &req.image;
        let dest = self
            .path
            .clone()
            .unwrap_or_else(|| self.outputs.join(ctx.run.run_id()).join(format!("{}.{}", self.name, self.format.extension())));
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|e| Error::io(dir, e))?;
        }
        self.check_dest(&dest).await?;
        write_file(image, self.format, &dest, ctx).await?;
        Ok(Artifact::with_uri(format!("file://{}", dest.display())))
    }
}

/// Publishes to the local gallery (`SharedImage`) or as a managed image (`ManagedImage`).
#[derive(Debug, Clone)]
pub struct GalleryDistributor {
    gallery: Gallery,
    target: GalleryTarget,
}

#[derive(Debug, Clone)]
enum GalleryTarget {
    Shared(SharedImageTarget),
    Managed(ManagedImageTarget),
}

impl fmt::Display for GalleryDistributor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            GalleryTarget::Shared(t) => write!(f, "LocalGallery({})", t.gallery_image_id),
            GalleryTarget::Managed(t) => write!(f, "LocalManagedImage({})", t.image_id),
        }
    }
}

impl GalleryDistributor {
    /// From a `SharedImage` or `ManagedImage` distribute entry.
    pub fn from_spec(spec: &DistributorSpec, gallery: Gallery) -> Result<Self> {
        let target = match spec {
            DistributorSpec::SharedImage(t) => GalleryTarget::Shared(t.clone()),
            DistributorSpec::ManagedImage(t) => GalleryTarget::Managed(t.clone()),
            other => {
                return Err(Error::InvalidConfig {
                    backend: BACKEND,
                    key: other.run_output_name().into(),
                    message: "not a gallery target".into(),
                });
            }
        };
        Ok(GalleryDistributor { gallery, target })
    }
}

#[async_trait]
impl Distributor for GalleryDistributor {
    async fn distribute(&self, req: &DistributeRequest, ctx: &StepContext) -> Result<Artifact> {
        let image = &req.image;
        let (manifest, dir) = match &self.target {
            GalleryTarget::Shared(t) => self.gallery.publish(image, t, ctx, req.template_digest.get()).await?,
            GalleryTarget::Managed(t) => {
                let tags = t.artifact_tags.as_ref().and_then(|x| x.value()).cloned().unwrap_or_default();
                self.gallery.put_managed_image(image, &t.image_id, ctx, tags).await?
            }
        };
        ctx.output.line(
            OutputStream::Stdout,
            &format!("published {} ({} MiB, sha256 {}) in {}", manifest.id, manifest.size / MIB, manifest.sha256, dir.display()),
        );
        let mut a = Artifact::with_id(manifest.id);
        a.artifact_uri = Some(format!("file://{}", dir.display()));
        Ok(a)
    }
}
