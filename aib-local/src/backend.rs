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

/// The default state directory: `$AIB_STATE_DIR`, else `$XDG_CACHE_HOME/aib/local`, else
/// `~/.cache/aib/local`. Never a shared temp directory: with none of the three set it is an
/// error that says so (another user could plant ledger records in `/tmp`).
pub fn default_state_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("AIB_STATE_DIR") {
        return Ok(PathBuf::from(d));
    }
    let home =
        std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    home.map(|h| h.join("aib").join("local")).ok_or_else(|| Error::InvalidConfig {
        backend: BACKEND,
        key: "state_dir".into(),
        message: "no AIB_STATE_DIR, XDG_CACHE_HOME or HOME to put the state directory in; set one, or give --state-dir".into(),
    })
}

/// Creates `dir` (0700) if missing and refuses it when another user owns it or can write it:
/// its ledger tells `gc` what to delete.
pub(crate) fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| Error::io(dir, e))?;
    let meta = std::fs::metadata(dir).map_err(|e| Error::io(dir, e))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    let mode = meta.permissions().mode();
    if meta.uid() != me || mode & 0o022 != 0 {
        return Err(Error::InvalidConfig {
            backend: BACKEND,
            key: "state_dir".into(),
            message: format!(
                "{} is owned by uid {} with mode {:o}: another user could change what gc deletes; use a directory of your own (chmod go-w)",
                dir.display(),
                meta.uid(),
                mode & 0o7777
            ),
        });
    }
    Ok(())
}

/// The local backend. Layout of the state directory:
/// `catalog/` (base images), `gallery/` (published images), `runs/` (build VMs),
/// `outputs/` (disk files), `ledger/` (the durable ledger), `logs/` (customization logs).
#[derive(Debug, Clone)]
pub struct LocalBackend {
    state: PathBuf,
    catalog: PathBuf,
    provisioner: Arc<QemuProvisioner>,
    /// Where file outputs may go, resolved: `<state>/outputs` and the operator's roots.
    output_roots: Vec<PathBuf>,
    /// Downloads for customizers, with the operator's `file://` roots.
    fetcher: aib_customizers::fetch::Fetcher,
}

/// Builds a [`LocalBackend`].
#[derive(Debug, Default)]
#[must_use]
pub struct LocalBackendBuilder {
    state: Option<PathBuf>,
    catalog: Option<PathBuf>,
    accel: Option<Accelerator>,
    output_roots: Vec<PathBuf>,
    file_roots: Vec<PathBuf>,
    source_nets: Vec<aib_core::boundary::IpNet>,
    network: Option<crate::GuestNetwork>,
    cold: bool,
    warm_dir: Option<PathBuf>,
    warm_max_age: Option<std::time::Duration>,
    no_cache: bool,
    cache_max_bytes: Option<u64>,
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

    /// Lets templates write file outputs (a `VHD` `uri` or a `LocalFile` `path`) under `dir`,
    /// besides `<state>/outputs`. Only the operator says this: a template can never widen it.
    pub fn allow_output_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.output_roots.push(dir.into());
        self
    }

    /// What build VMs' network reaches: nothing by default ([`crate::GuestNetwork`]);
    /// `Outbound` (passt) for templates that install packages, still without the host's
    /// loopback services. Only the operator says this.
    pub fn guest_network(mut self, n: crate::GuestNetwork) -> Self {
        self.network = Some(n);
        self
    }

    /// Boots every build VM instead of restoring a saved VM state ([`crate::warm`]; on by
    /// default).
    pub fn cold_boot(mut self, cold: bool) -> Self {
        self.cold = cold;
        self
    }

    /// Keeps saved VM states elsewhere (default `<state>/warm`), to share them between state
    /// directories as the catalog is.
    pub fn warm_dir(mut self, d: impl Into<PathBuf>) -> Self {
        self.warm_dir = Some(d.into());
        self
    }

    /// Saved VM states older than this are not restored (default 24 h).
    pub fn warm_max_age(mut self, age: std::time::Duration) -> Self {
        self.warm_max_age = Some(age);
        self
    }

    /// Keeps no resume points of the step cache ([`crate::cache`]; kept in `<state>/cache` by
    /// default, with warm states). A pipeline turns the cache off for one build with
    /// [`aib_core::PipelineBuilder::cache`].
    pub fn no_step_cache(mut self, off: bool) -> Self {
        self.no_cache = off;
        self
    }

    /// The step cache's size limit (default 20 GiB): past it, the least recently used resume
    /// points go first.
    pub fn step_cache_max_bytes(mut self, n: u64) -> Self {
        self.cache_max_bytes = Some(n);
        self
    }

    /// Lets templates read `file://` scripts and files under `dir` (off by default).
    pub fn allow_file_root(mut self, dir: impl Into<PathBuf>) -> Self {
        self.file_roots.push(dir.into());
        self
    }

    /// Lets templates' `scriptUri`/`sourceUri` come from internal addresses inside `net` (a lab
    /// mirror; `127.0.0.1` for a test server). By default sources come from public addresses
    /// only ([`aib_core::boundary::is_internal`]).
    pub fn allow_source_network(mut self, net: aib_core::boundary::IpNet) -> Self {
        self.source_nets.push(net);
        self
    }

    /// Creates the state directory and builds. No VM starts here.
    pub fn build(self) -> Result<LocalBackend> {
        let state = match self.state {
            Some(s) => s,
            None => default_state_dir()?,
        };
        // Absolute: disks name their backing files by path, and a relative one would be read
        // from the overlay's own directory.
        let state = std::path::absolute(&state).map_err(|e| Error::io(&state, e))?;
        private_dir(&state)?;
        for d in ["catalog", "gallery", "runs", "outputs", "ledger", "logs"] {
            private_dir(&state.join(d))?;
        }
        let warm_dir = self.warm_dir.unwrap_or_else(|| state.join("warm"));
        let mut warm = crate::warm::WarmStore::new(std::path::absolute(&warm_dir).map_err(|e| Error::io(&warm_dir, e))?);
        if let Some(age) = self.warm_max_age {
            warm = warm.with_max_age(age);
        }
        let mut cache = crate::cache::StepCache::new(state.join("cache"));
        if let Some(n) = self.cache_max_bytes {
            cache = cache.with_max_bytes(n);
        }
        let mut p = QemuProvisioner::new(state.join("runs"))
            .with_warm_states((!self.cold).then_some(warm))
            .with_step_cache((!self.cold && !self.no_cache).then_some(cache));
        if let Some(a) = self.accel {
            p = p.with_accelerator(a);
        }
        if let Some(n) = self.network {
            p = p.with_guest_network(n);
        }
        let catalog = self.catalog.unwrap_or_else(|| state.join("catalog"));
        let catalog = std::path::absolute(&catalog).map_err(|e| Error::io(&catalog, e))?;
        std::fs::create_dir_all(&catalog).map_err(|e| Error::io(&catalog, e))?;
        // Roots are compared resolved, so a link inside one cannot lead out of it.
        let resolve = |d: PathBuf| std::fs::canonicalize(&d).map_err(|e| Error::io(&d, e));
        let mut output_roots = vec![resolve(state.join("outputs"))?];
        for r in self.output_roots {
            output_roots.push(resolve(r)?);
        }
        let mut fetcher = aib_customizers::fetch::Fetcher::new();
        for r in self.file_roots {
            fetcher = fetcher.with_file_root(resolve(r)?);
        }
        for n in self.source_nets {
            fetcher = fetcher.with_allowed_network(n);
        }
        Ok(LocalBackend { state, catalog, provisioner: Arc::new(p), output_roots, fetcher })
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
        Catalog::new(self.catalog.clone()).with_runs_dir(self.state.join("runs")).with_ledger_dir(self.state.join("ledger"))
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
            let (o, roots) = (outputs.clone(), self.output_roots.clone());
            reg = reg.with_distributor(t, move |spec| {
                Ok(Arc::new(FileDistributor::from_spec(spec, &o)?.confined_to(roots.clone())?) as Arc<dyn Distributor>)
            });
        }
        for t in [type_names::SHARED_IMAGE, type_names::MANAGED_IMAGE] {
            let g = self.gallery();
            reg =
                reg.with_distributor(t, move |spec| Ok(Arc::new(GalleryDistributor::from_spec(spec, g.clone())?) as Arc<dyn Distributor>));
        }
        Backend::new(self.provisioner.clone(), aib_customizers::registry_with(self.fetcher.clone()).merge(reg))
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
