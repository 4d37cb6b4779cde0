//! `LocalBackend`: the state directory, the catalog, the gallery and the QEMU provisioner,
//! as an [`aib_core::Backend`].

use crate::catalog::Catalog;
use crate::gallery::Gallery;
use crate::outputs::{FileDistributor, GalleryDistributor};
use crate::qemu::QemuProvisioner;
use crate::tools::{Accelerator, BACKEND};
use aib_core::template::ImageSource;
use aib_core::{Backend, Distributor, Error, Ledger, Registry, ResolveRequest, ResolvedImage, Result, Source, StepContext};
use async_trait::async_trait;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The default state directory: `$AIB_STATE_DIR`, else `~/.cache/aib/local`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("AIB_STATE_DIR") {
        return PathBuf::from(d);
    }
    let home =
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    home.unwrap_or_else(std::env::temp_dir).join("aib").join("local")
}

/// The local backend. Layout of the state directory:
/// `catalog/` (base images), `gallery/` (published images), `runs/` (build VMs),
/// `outputs/` (disk files), `ledger/` (the durable ledger), `logs/` (customization logs).
#[derive(Debug, Clone)]
pub struct LocalBackend {
    state: PathBuf,
    catalog: PathBuf,
    provisioner: Arc<QemuProvisioner>,
}

/// Builds a [`LocalBackend`].
#[derive(Debug, Default)]
#[must_use]
pub struct LocalBackendBuilder {
    state: Option<PathBuf>,
    catalog: Option<PathBuf>,
    accel: Option<Accelerator>,
}

impl LocalBackendBuilder {
    /// The state directory (default: [`default_state_dir`]).
    pub fn state_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.state = Some(d.into());
        self
    }

    /// Keeps the image catalog elsewhere (to share base images between state directories).
    pub fn catalog_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.catalog = Some(d.into());
        self
    }

    /// Forces an accelerator (default: probed).
    pub fn accelerator(mut self, a: Accelerator) -> Self {
        self.accel = Some(a);
        self
    }

    /// Creates the state directory and builds. No VM starts here.
    pub fn build(self) -> Result<LocalBackend> {
        let state = self.state.unwrap_or_else(default_state_dir);
        for d in ["catalog", "gallery", "runs", "outputs", "ledger", "logs"] {
            let p = state.join(d);
            std::fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let mut p = QemuProvisioner::new(state.join("runs"));
        if let Some(a) = self.accel {
            p = p.with_accelerator(a);
        }
        let catalog = self.catalog.unwrap_or_else(|| state.join("catalog"));
        std::fs::create_dir_all(&catalog).map_err(|e| Error::io(&catalog, e))?;
        Ok(LocalBackend { state, catalog, provisioner: Arc::new(p) })
    }
}

impl LocalBackend {
    /// A builder.
    pub fn builder() -> LocalBackendBuilder {
        LocalBackendBuilder::default()
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The image catalog.
    pub fn catalog(&self) -> Catalog {
        Catalog::new(self.catalog.clone()).with_runs_dir(self.state.join("runs"))
    }

    /// The local gallery.
    pub fn gallery(&self) -> Gallery {
        Gallery::new(self.state.join("gallery"))
    }

    /// The durable ledger.
    pub fn ledger(&self) -> Result<Ledger> {
        Ledger::open(self.state.join("ledger"))
    }

    /// Where customization logs go.
    pub fn log_dir(&self) -> PathBuf {
        self.state.join("logs")
    }

    /// The provisioner (also what `gc` deletes through).
    pub fn provisioner(&self) -> Arc<QemuProvisioner> {
        self.provisioner.clone()
    }

    /// The backend: every AIB type, plus `LocalFile` outputs.
    pub fn backend(&self) -> Backend {
        use aib_core::template::type_names;
        let source = Arc::new(LocalSource { catalog: self.catalog(), gallery: self.gallery() });
        let mut reg = Registry::new().with_sources(&type_names::SOURCES, source);
        let outputs = self.state.join("outputs");
        for t in [type_names::VHD, crate::outputs::LOCAL_FILE] {
            let o = outputs.clone();
            reg = reg.with_distributor(t, move |spec| Ok(Arc::new(FileDistributor::from_spec(spec, &o)?) as Arc<dyn Distributor>));
        }
        for t in [type_names::SHARED_IMAGE, type_names::MANAGED_IMAGE] {
            let g = self.gallery();
            reg =
                reg.with_distributor(t, move |spec| Ok(Arc::new(GalleryDistributor::from_spec(spec, g.clone())?) as Arc<dyn Distributor>));
        }
        Backend::new(self.provisioner.clone(), aib_customizers::registry().merge(reg))
    }
}

/// Resolves sources against the catalog and the gallery.
#[derive(Debug, Clone)]
pub struct LocalSource {
    catalog: Catalog,
    gallery: Gallery,
}

impl fmt::Display for LocalSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LocalSource")
    }
}

#[async_trait]
impl Source for LocalSource {
    async fn resolve(&self, req: &ResolveRequest, ctx: &StepContext) -> Result<ResolvedImage> {
        match &req.spec {
            ImageSource::PlatformImage(p) => {
                let part = |s: &Option<String>| s.clone().unwrap_or_default();
                self.catalog
                    .resolve(&part(&p.publisher), &part(&p.offer), &part(&p.sku), p.version.as_deref().unwrap_or("latest"), &*ctx.output)
                    .await
            }
            ImageSource::ManagedImage(m) => self.gallery.resolve_managed(&m.image_id).await,
            ImageSource::SharedImageVersion(s) => self.gallery.resolve_version(&s.image_version_id).await,
            ImageSource::Custom(c) => Err(Error::Unsupported { operation: format!("source type `{}`", c.type_name), backend: BACKEND }),
        }
    }
}
