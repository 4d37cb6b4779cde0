//! The values that pass between the pipeline and the backends.

use serde::Serialize;
use serde_json::{Map, Value};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The guest operating system family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
pub enum Platform {
    /// Linux: SSH, Shell, `waagent` deprovisioning.
    #[default]
    Linux,
    /// Windows: WinRM, PowerShell, Sysprep.
    Windows,
}

/// A source resolved to one exact image.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ResolvedImage {
    /// The source `type` (`PlatformImage`, …).
    pub source_type: String,
    /// What the template asked for (a URN, an id).
    pub requested: String,
    /// The exact image used: a URN with its version, an image version id.
    pub exact: String,
    /// The exact version (AIB's `exactVersion`), when the source has versions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exact_version: Option<String>,
    /// The guest OS.
    pub platform: Platform,
    /// Hyper-V generation (`V1`, `V2`), when the source says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hyper_v_generation: Option<String>,
    /// CPU architecture (`x64`, `Arm64`), when the source says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Security type (`TrustedLaunch`, `ConfidentialVM`, …), when the source says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security_type: Option<String>,
    /// Backend-specific facts (a file path, a digest).
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

impl ResolvedImage {
    /// A resolved image.
    pub fn new(source_type: impl Into<String>, requested: impl Into<String>, exact: impl Into<String>) -> Self {
        ResolvedImage { source_type: source_type.into(), requested: requested.into(), exact: exact.into(), ..Default::default() }
    }

    /// Sets the exact version.
    #[must_use]
    pub fn with_exact_version(mut self, v: impl Into<String>) -> Self {
        self.exact_version = Some(v.into());
        self
    }

    /// Sets the platform.
    #[must_use]
    pub fn with_platform(mut self, p: Platform) -> Self {
        self.platform = p;
        self
    }

    /// Sets the Hyper-V generation (`V1`, `V2`).
    #[must_use]
    pub fn with_hyper_v_generation(mut self, g: impl Into<String>) -> Self {
        self.hyper_v_generation = Some(g.into());
        self
    }

    /// Sets the CPU architecture (`x64`, `Arm64`).
    #[must_use]
    pub fn with_architecture(mut self, a: impl Into<String>) -> Self {
        self.architecture = Some(a.into());
        self
    }

    /// Sets the security type (`TrustedLaunch`, `ConfidentialVM`, …).
    #[must_use]
    pub fn with_security_type(mut self, t: impl Into<String>) -> Self {
        self.security_type = Some(t.into());
        self
    }

    /// Adds a backend-specific attribute.
    #[must_use]
    pub fn with_attribute(mut self, k: impl Into<String>, v: impl Into<Value>) -> Self {
        self.attributes.insert(k.into(), v.into());
        self
    }
}

/// How a person reaches a build VM (for `abort`, and for logs).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct AccessInfo {
    /// `ssh` or `winrm`.
    pub protocol: String,
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name.
    pub user: String,
    /// Private key file, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A command that connects, ready to paste.
    pub command: String,
}

impl AccessInfo {
    /// Access over `protocol` to `user@host:port`, with a ready-to-paste command.
    pub fn new(
        protocol: impl Into<String>,
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        command: impl Into<String>,
    ) -> Self {
        AccessInfo { protocol: protocol.into(), host: host.into(), port, user: user.into(), key_file: None, command: command.into() }
    }
}

/// A running build VM, as a provisioner hands it back.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct BuildVm {
    /// Backend id of the VM (an ARM id, a process id).
    pub id: String,
    /// Ledger id of the VM's main resource.
    pub resource: String,
    /// Guest OS.
    pub platform: Platform,
    /// How to reach it.
    pub access: AccessInfo,
    /// Backend-specific facts.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
    /// How many customizers the VM already went through: it was started at the resume point
    /// of the customizer before this index (0: it starts from the source).
    #[serde(skip_serializing_if = "is_zero")]
    pub resumed: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl BuildVm {
    /// A VM known by `id` whose ledger record is `resource`.
    pub fn new(id: impl Into<String>, resource: impl Into<String>, platform: Platform, access: AccessInfo) -> Self {
        BuildVm { id: id.into(), resource: resource.into(), platform, access, attributes: Map::new(), resumed: 0 }
    }
}

/// The disk a provisioner captured from a generalized build VM.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct CapturedImage {
    /// Backend id (a disk id, a file path).
    pub id: String,
    /// Disk format (`qcow2`, `vhd`, `managedDisk`).
    pub format: String,
    /// Where it is (a path or URI).
    pub location: String,
    /// Size in bytes, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// SHA-256 of the content, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Guest OS.
    pub platform: Platform,
    /// The image the build started from.
    pub source: ResolvedImage,
    /// Backend-specific facts.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub attributes: Map<String, Value>,
}

impl CapturedImage {
    /// A captured image.
    pub fn new(id: impl Into<String>, format: impl Into<String>, location: impl Into<String>, source: ResolvedImage) -> Self {
        CapturedImage {
            id: id.into(),
            format: format.into(),
            location: location.into(),
            platform: source.platform,
            source,
            ..Default::default()
        }
    }
}

/// What a distributor produced: AIB's RunOutput properties.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Artifact {
    /// A managed image or gallery image version id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_id: Option<String>,
    /// A VHD or file URI.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_uri: Option<String>,
}

impl Artifact {
    /// An artifact known by id.
    pub fn with_id(id: impl Into<String>) -> Self {
        Artifact { artifact_id: Some(id.into()), artifact_uri: None }
    }

    /// An artifact known by URI.
    pub fn with_uri(uri: impl Into<String>) -> Self {
        Artifact { artifact_id: None, artifact_uri: Some(uri.into()) }
    }
}

/// A command to run on the build VM.
#[derive(Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ExecRequest {
    /// The command line (a shell command on Linux, PowerShell on Windows).
    pub command: String,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Run as root (Linux) or elevated (Windows).
    pub elevated: bool,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// The command will drop the connection (a reboot): a disconnect is success.
    pub expect_disconnect: bool,
}

impl fmt::Debug for ExecRequest {
    // Values of environment variables may be secrets: only names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExecRequest")
            .field("command", &self.command)
            .field("env", &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("elevated", &self.elevated)
            .field("timeout", &self.timeout)
            .field("expect_disconnect", &self.expect_disconnect)
            .finish()
    }
}

impl ExecRequest {
    /// Runs `command`.
    pub fn new(command: impl Into<String>) -> Self {
        ExecRequest { command: command.into(), ..Default::default() }
    }

    /// Adds an environment variable.
    #[must_use]
    pub fn with_env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs elevated.
    #[must_use]
    pub fn elevated(mut self) -> Self {
        self.elevated = true;
        self
    }

    /// Sets a timeout.
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// Marks the command as one that drops the connection.
    #[must_use]
    pub fn expecting_disconnect(mut self) -> Self {
        self.expect_disconnect = true;
        self
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitStatus {
    /// The exit code, when the command exited.
    pub code: Option<i32>,
    /// The signal, when it was killed.
    pub signal: Option<String>,
    /// True when the connection dropped as [`ExecRequest::expect_disconnect`] announced.
    pub disconnected: bool,
}

impl ExitStatus {
    /// Exited with `code`.
    pub fn code(code: i32) -> Self {
        ExitStatus { code: Some(code), signal: None, disconnected: false }
    }

    /// True for exit code 0, or an expected disconnect.
    pub fn success(&self) -> bool {
        self.code == Some(0) || self.disconnected
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.code, &self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => write!(f, "signal {s}"),
            _ if self.disconnected => f.write_str("disconnected"),
            _ => f.write_str("no exit status"),
        }
    }
}

/// What to upload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UploadContent {
    /// Bytes in memory.
    Bytes(Arc<[u8]>),
    /// A local file.
    File(PathBuf),
}

/// A file to put on the build VM.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadRequest {
    /// The content.
    pub content: UploadContent,
    /// Full destination path on the VM.
    pub destination: String,
    /// Unix permission bits, when they matter.
    pub mode: Option<u32>,
}

impl UploadRequest {
    /// Uploads `content` to `destination`.
    pub fn new(content: UploadContent, destination: impl Into<String>) -> Self {
        UploadRequest { content, destination: destination.into(), mode: None }
    }

    /// Uploads bytes.
    pub fn bytes(bytes: impl Into<Arc<[u8]>>, destination: impl Into<String>) -> Self {
        Self::new(UploadContent::Bytes(bytes.into()), destination)
    }

    /// Sets the permission bits.
    #[must_use]
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// How long to wait for a VM to come back after an expected disconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReconnectOptions {
    /// Give up after this long.
    pub timeout: Duration,
}

impl Default for ReconnectOptions {
    fn default() -> Self {
        ReconnectOptions { timeout: Duration::from_secs(5 * 60) }
    }
}

impl ReconnectOptions {
    /// Waits up to `timeout`.
    pub fn with_timeout(timeout: Duration) -> Self {
        ReconnectOptions { timeout }
    }
}

/// The setters every request with template facts has: `with_location`,
/// `with_template_name`, where it has tags `with_tag`, and for one target
/// `with_run_output_name`.
macro_rules! template_fact_setters {
    ($t:ty) => {
        impl $t {
            /// In region `location` (the template's `location`).
            #[must_use]
            pub fn with_location(mut self, location: impl Into<String>) -> Self {
                self.location = location.into();
                self
            }

            /// For template `name`.
            #[must_use]
            pub fn with_template_name(mut self, name: impl Into<String>) -> Self {
                self.template_name = name.into();
                self
            }
        }
    };
    ($t:ty, target) => {
        impl $t {
            /// As target `name`.
            #[must_use]
            pub fn with_run_output_name(mut self, name: impl Into<String>) -> Self {
                self.run_output_name = name.into();
                self
            }
        }
    };
    ($t:ty, tags) => {
        template_fact_setters!($t);
        impl $t {
            /// With tag `k` = `v`.
            #[must_use]
            pub fn with_tag(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
                self.tags.insert(k.into(), v.into());
                self
            }
        }
    };
}
template_fact_setters!(ResolveRequest);
template_fact_setters!(ProvisionRequest, tags);
template_fact_setters!(DistributeRequest, tags);
template_fact_setters!(DistributeRequest, target);
template_fact_setters!(PreflightRequest);
template_fact_setters!(PreflightRequest, target);

/// What a target is asked to check before the build ([`crate::Distributor::preflight`]).
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct PreflightRequest {
    /// The resolved source the image will be built from.
    pub source: ResolvedImage,
    /// The target's `runOutputName`.
    pub run_output_name: String,
    /// The template name.
    pub template_name: String,
    /// The build region (the template's `location`): where the captured image will be.
    pub location: String,
}

impl PreflightRequest {
    /// Checks a target for an image built from `source`.
    pub fn new(source: ResolvedImage) -> Self {
        PreflightRequest { source, ..Default::default() }
    }
}

/// What the provisioner is asked to start.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct ProvisionRequest {
    /// The image to boot.
    pub image: ResolvedImage,
    /// The template's `vmProfile`.
    pub vm_profile: crate::template::VmProfile,
    /// Sizes of extra data disks, in GB.
    pub data_disks_gb: Vec<u32>,
    /// Tags for everything created (`managedResourceTags` plus aib's own).
    pub tags: crate::template::StringMap,
    /// The template name, for resource names.
    pub template_name: String,
    /// The template's region (`location`); backends without regions ignore it.
    pub location: String,
    /// The template's `stagingResourceGroup` (an ARM resource group id), if any.
    pub staging_resource_group: Option<String>,
    /// The step cache's resume points, one for each leading customizer that can be cached, in
    /// order: a provisioner that keeps them may start the VM at the longest it holds.
    pub resume: Vec<ResumePoint>,
}

/// A point after a customizer where a build can resume: the VM as it is after the steps up
/// to `step`. `key` digests all the VM then depends on: the source, the VM profile and every
/// step's fingerprint up to this one; a provisioner adds its own settings to it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ResumePoint {
    /// The step after which the VM is kept, such as `customize[1] payload`.
    pub step: String,
    /// Its index among the customizers.
    pub index: usize,
    /// The key: lowercase hex SHA-256.
    pub key: String,
    /// The key of the point before it (of the source and VM profile, for the first step).
    pub parent: String,
    /// The step's own fingerprint.
    pub fingerprint: String,
}

impl ResumePoint {
    /// The point after step `index` named `step` with `fingerprint`, after `parent`.
    pub fn new(step: impl Into<String>, index: usize, parent: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        use sha2::Digest;
        let (parent, fingerprint) = (parent.into(), fingerprint.into());
        let mut h = sha2::Sha256::new();
        for part in ["aib-step-cache/1", &parent, &fingerprint] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        ResumePoint { step: step.into(), index, key: hex::encode(h.finalize()), parent, fingerprint }
    }
}

impl ProvisionRequest {
    /// Boots `image` with defaults.
    pub fn new(image: ResolvedImage) -> Self {
        ProvisionRequest { image, ..Default::default() }
    }
}

/// What a [`crate::Source`] is asked to resolve: the template's `source` and the facts of
/// the template it belongs to.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ResolveRequest {
    /// The template's `source`.
    pub spec: crate::template::ImageSource,
    /// The template's region (`location`): where the build VM will run.
    pub location: String,
    /// The template name.
    pub template_name: String,
}

impl ResolveRequest {
    /// Resolves `spec`, with no region or template name.
    pub fn new(spec: crate::template::ImageSource) -> Self {
        ResolveRequest { spec, location: String::new(), template_name: String::new() }
    }
}

/// What a [`crate::Distributor`] is asked to publish: the captured image and the facts of
/// the template and run it came from.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct DistributeRequest {
    /// The captured disk (its `source` says what the build started from: platform,
    /// generation, architecture, security type).
    pub image: CapturedImage,
    /// The target's `runOutputName`.
    pub run_output_name: String,
    /// The template name.
    pub template_name: String,
    /// The build region (the template's `location`).
    pub location: String,
    /// Tags for what the target creates (`managedResourceTags`, `imageTemplateName`, `aibRunId`).
    pub tags: crate::template::StringMap,
    /// SHA-256 of the template, hex (for manifests that say what an image was built from),
    /// computed the first time a target asks ([`TemplateDigest::get`]).
    pub template_digest: TemplateDigest,
}

/// A template's SHA-256 (hex), computed when first asked: hashing a template is not free and
/// most targets never ask. Clones share the value.
#[derive(Clone, Default)]
pub struct TemplateDigest {
    value: Arc<std::sync::OnceLock<String>>,
    template: Option<Arc<crate::template::ImageTemplate>>,
}

impl TemplateDigest {
    /// The digest of `template` ([`crate::template::ImageTemplate::digest`]), when asked.
    pub fn of(template: Arc<crate::template::ImageTemplate>) -> Self {
        TemplateDigest { value: Arc::default(), template: Some(template) }
    }

    /// A digest computed elsewhere (of the template file's bytes, say).
    pub fn given(digest: impl Into<String>) -> Self {
        let value = std::sync::OnceLock::new();
        let _ = value.set(digest.into());
        TemplateDigest { value: Arc::new(value), template: None }
    }

    /// The digest, if there is a template or a given value.
    pub fn get(&self) -> Option<&str> {
        if let Some(v) = self.value.get() {
            return Some(v);
        }
        let t = self.template.as_ref()?;
        Some(self.value.get_or_init(|| t.digest()))
    }
}

impl fmt::Debug for TemplateDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value.get() {
            Some(v) => write!(f, "TemplateDigest({v})"),
            None if self.template.is_some() => f.write_str("TemplateDigest(not computed yet)"),
            None => f.write_str("TemplateDigest(none)"),
        }
    }
}

impl PartialEq for TemplateDigest {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl DistributeRequest {
    /// Publishes `image`, with no template facts.
    pub fn new(image: CapturedImage) -> Self {
        DistributeRequest { image, ..Default::default() }
    }

    /// From a template whose SHA-256 is `digest` (hex).
    #[must_use]
    pub fn with_template_digest(mut self, digest: impl Into<String>) -> Self {
        self.template_digest = TemplateDigest::given(digest);
        self
    }
}

/// What a provisioner keeps about the build VMs it started (keys, addresses), by
/// [`BuildVm::id`], from `provision` until the VM's resource is deleted. Clones share it.
///
/// ```
/// use aib_core::{BuildVmTable, Error};
/// let vms: BuildVmTable<u16> = BuildVmTable::default();
/// vms.insert("vm-1", 2222);
/// assert_eq!(*vms.get("vm-1", "example").unwrap(), 2222);
/// vms.remove("vm-1");
/// assert!(matches!(vms.get("vm-1", "example"), Err(Error::NotFound { .. })));
/// ```
#[derive(Debug)]
pub struct BuildVmTable<T> {
    vms: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<T>>>>,
}

impl<T> Default for BuildVmTable<T> {
    fn default() -> Self {
        BuildVmTable { vms: Arc::default() }
    }
}

impl<T> Clone for BuildVmTable<T> {
    fn clone(&self) -> Self {
        BuildVmTable { vms: self.vms.clone() }
    }
}

impl<T> BuildVmTable<T> {
    /// Keeps `state` for the VM `id`.
    pub fn insert(&self, id: impl Into<String>, state: T) {
        self.vms.lock().unwrap_or_else(|e| e.into_inner()).insert(id.into(), Arc::new(state));
    }

    /// The state of the VM `id`; `NotFound` (naming `backend`) when this process did not
    /// start it.
    pub fn get(&self, id: &str, backend: &'static str) -> crate::Result<Arc<T>> {
        self.vms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| crate::Error::NotFound { backend, what: format!("build VM {id} (started by another process?)") })
    }

    /// Forgets the VM `id` (its resource is gone).
    pub fn remove(&self, id: &str) {
        self.vms.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}
