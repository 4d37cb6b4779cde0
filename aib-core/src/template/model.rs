//! The typed model of `Microsoft.VirtualMachineImages/imageTemplates` (API 2025-10-01).
//!
//! Field names serialize exactly as AIB spells them. Optional fields are `Option`s and
//! are left out when `None`, so a template serializes back to what was read, modulo
//! defaults. Fields that an ARM deployment template may fill with an expression
//! (`"[parameters('x')]"`) and that are not strings are [`Expr`]s.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A string map (`tags`, `artifactTags`, `managedResourceTags`).
pub type StringMap = BTreeMap<String, String>;

/// A value, or an ARM template expression standing for one.
///
/// ARM deployment templates may put `"[parameters('regions')]"` where an array is expected;
/// such values survive parsing as [`Expr::Expression`] (with an `ArmExpression` warning) and
/// must be resolved before a build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Expr<T> {
    /// A literal value.
    Value(T),
    /// An unevaluated ARM expression, such as `[parameters('x')]`.
    Expression(String),
}

impl<T> Expr<T> {
    /// The literal value, if this is not an expression.
    pub fn value(&self) -> Option<&T> {
        match self {
            Expr::Value(v) => Some(v),
            Expr::Expression(_) => None,
        }
    }
}

impl<T> From<T> for Expr<T> {
    fn from(v: T) -> Self {
        Expr::Value(v)
    }
}

/// The literal value of an optional field, or `default` when absent. Expressions also give
/// `None` (callers that need a value check [`crate::template::ImageTemplate::expressions`]).
pub(crate) fn lit<T: Clone>(e: &Option<Expr<T>>) -> Option<T> {
    e.as_ref().and_then(|e| e.value().cloned())
}

/// An image template: the ARM resource `Microsoft.VirtualMachineImages/imageTemplates`.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTemplate {
    /// Resource name, `^[A-Za-z0-9-_.]{1,64}$`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Azure region of the template.
    pub location: String,
    /// Resource tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Expr<StringMap>>,
    /// The template identity (required by the service; not needed for local builds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// The template itself.
    pub properties: ImageTemplateProperties,
}

/// `identity`: the template's managed identity.
#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// `UserAssigned` or `None`.
    #[serde(rename = "type")]
    pub kind: IdentityType,
    /// ARM ids of user-assigned identities (the service supports one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_assigned_identities: Option<Expr<BTreeMap<String, Map<String, Value>>>>,
}

/// `identity.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum IdentityType {
    /// One user-assigned identity.
    UserAssigned,
    /// No identity.
    None,
}

/// `properties`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageTemplateProperties {
    /// The image to start from.
    pub source: ImageSource,
    /// Customization steps, in order.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub customize: Vec<CustomizerSpec>,
    /// Optimization of the produced image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optimize: Option<Optimize>,
    /// The validation phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validate: Option<Validate>,
    /// Where the image goes; at least one target.
    pub distribute: Vec<DistributorSpec>,
    /// What to do with the build VM when a step fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_handling: Option<ErrorHandling>,
    /// Whole-run timeout, 0–960; 0 means 240.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build_timeout_in_minutes: Option<Expr<i32>>,
    /// The build VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_profile: Option<VmProfile>,
    /// Extra data disks on the build VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_data_disks: Option<Vec<DataDisk>>,
    /// Resource id of the staging resource group.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub staging_resource_group: Option<String>,
    /// Build on create/update.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_run: Option<AutoRun>,
    /// Tags on every resource a build creates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_resource_tags: Option<Expr<StringMap>>,
}

/// AIB's `type` names, in one place: validation, every backend's registry and the fakes use
/// these lists, and the specs' `type_name()` these constants.
pub mod type_names {
    /// `source.type` of a marketplace image.
    pub const PLATFORM_IMAGE: &str = "PlatformImage";
    /// `source.type` (and `distribute[].type`) of a managed image.
    pub const MANAGED_IMAGE: &str = "ManagedImage";
    /// `source.type` of a gallery image version.
    pub const SHARED_IMAGE_VERSION: &str = "SharedImageVersion";
    /// The Shell customizer and validator.
    pub const SHELL: &str = "Shell";
    /// The PowerShell customizer and validator.
    pub const POWERSHELL: &str = "PowerShell";
    /// The File customizer and validator.
    pub const FILE: &str = "File";
    /// The WindowsRestart customizer.
    pub const WINDOWS_RESTART: &str = "WindowsRestart";
    /// The WindowsUpdate customizer.
    pub const WINDOWS_UPDATE: &str = "WindowsUpdate";
    /// `distribute[].type` of a gallery image version.
    pub const SHARED_IMAGE: &str = "SharedImage";
    /// `distribute[].type` of a VHD.
    pub const VHD: &str = "VHD";

    /// Every `source.type`.
    pub const SOURCES: [&str; 3] = [PLATFORM_IMAGE, MANAGED_IMAGE, SHARED_IMAGE_VERSION];
    /// Every `customize[].type`.
    pub const CUSTOMIZERS: [&str; 5] = [SHELL, POWERSHELL, FILE, WINDOWS_RESTART, WINDOWS_UPDATE];
    /// Every `validate.inVMValidations[].type`.
    pub const VALIDATORS: [&str; 3] = [SHELL, POWERSHELL, FILE];
    /// Every `distribute[].type`.
    pub const DISTRIBUTORS: [&str; 3] = [MANAGED_IMAGE, SHARED_IMAGE, VHD];
}

/// A step or target whose `type` is not one of AIB's: kept whole so that a plugin
/// registered under that `type` can read its own fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CustomSpec {
    /// The `type` value.
    pub type_name: String,
    /// Every other field, as written.
    pub fields: Map<String, Value>,
    /// Where the step is in the template (`properties.customize[3]`); empty when the spec was
    /// made in code.
    pub path: String,
}

impl CustomSpec {
    /// The optional `name` field.
    pub fn name(&self) -> Option<&str> {
        self.fields.get("name").and_then(Value::as_str)
    }

    /// The step's fields read as the plugin's own configuration `T` (serde; `type` is not
    /// among them). A field of the wrong shape is [`crate::Error::InvalidTemplate`] with a
    /// diagnostic at the field's JSON path, such as `properties.customize[3].packages[1]`.
    ///
    /// ```
    /// use aib_core::template::CustomSpec;
    /// #[derive(serde::Deserialize)]
    /// struct PackageList { packages: Vec<String> }
    /// let spec = CustomSpec {
    ///     type_name: "PackageList".into(),
    ///     fields: serde_json::from_str(r#"{"packages": ["nginx", 7]}"#).unwrap(),
    ///     path: "properties.customize[3]".into(),
    /// };
    /// let e = spec.config::<PackageList>().err().unwrap();
    /// assert!(e.to_string().contains("properties.customize[3].packages[1]"), "{e}");
    /// ```
    pub fn config<T: serde::de::DeserializeOwned>(&self) -> crate::Result<T> {
        let mut fields = self.fields.clone();
        fields.remove("name");
        serde_path_to_error::deserialize(Value::Object(fields)).map_err(|e| {
            let at = e.path().to_string();
            let path = match (self.path.is_empty(), at.as_str()) {
                (true, ".") => String::new(),
                (true, _) => at.clone(),
                (false, ".") => self.path.clone(),
                (false, _) => format!("{}.{at}", self.path),
            };
            let d = super::Diagnostic::error(&path, super::Code::InvalidValue, e.inner().to_string())
                .with_hint(format!("see the `{}` plugin's documentation for this field", self.type_name));
            crate::Error::InvalidTemplate { diagnostics: super::Diagnostics(vec![d]) }
        })
    }
}

/// `source` (discriminator `type`).
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum ImageSource {
    /// A marketplace image.
    PlatformImage(PlatformImageSource),
    /// A managed image.
    ManagedImage(ManagedImageSource),
    /// An Azure Compute Gallery image version.
    SharedImageVersion(SharedImageVersionSource),
    /// A source type added by a plugin.
    Custom(CustomSpec),
}

impl Default for ImageSource {
    fn default() -> Self {
        ImageSource::PlatformImage(PlatformImageSource::default())
    }
}

impl ImageSource {
    /// The `type` name.
    pub fn type_name(&self) -> &str {
        match self {
            ImageSource::PlatformImage(_) => type_names::PLATFORM_IMAGE,
            ImageSource::ManagedImage(_) => type_names::MANAGED_IMAGE,
            ImageSource::SharedImageVersion(_) => type_names::SHARED_IMAGE_VERSION,
            ImageSource::Custom(c) => &c.type_name,
        }
    }
}

/// `source` of type `PlatformImage`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformImageSource {
    /// Image publisher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub publisher: Option<String>,
    /// Image offer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offer: Option<String>,
    /// Image SKU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// Image version, or `latest` (resolved when the build runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Marketplace plan.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan_info: Option<PlanInfo>,
}

/// `source.planInfo`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanInfo {
    /// Plan name.
    pub plan_name: String,
    /// Plan product.
    pub plan_product: String,
    /// Plan publisher.
    pub plan_publisher: String,
}

/// `source` of type `ManagedImage`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedImageSource {
    /// ARM id of the managed image.
    pub image_id: String,
}

/// `source` of type `SharedImageVersion`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedImageVersionSource {
    /// ARM id of the gallery image version (the version may be `latest`).
    pub image_version_id: String,
}

/// `customize[]` (discriminator `type`).
#[derive(Debug, Clone, PartialEq)]
pub enum CustomizerSpec {
    /// Run a shell script on Linux.
    Shell(ShellStep),
    /// Run a PowerShell script on Windows.
    PowerShell(PowerShellStep),
    /// Copy one file onto the VM.
    File(FileStep),
    /// Restart Windows and wait for it to come back.
    WindowsRestart(WindowsRestartStep),
    /// Install Windows updates.
    WindowsUpdate(WindowsUpdateStep),
    /// A customizer type added by a plugin.
    Custom(CustomSpec),
}

impl CustomizerSpec {
    /// The `type` name.
    pub fn type_name(&self) -> &str {
        match self {
            CustomizerSpec::Shell(_) => type_names::SHELL,
            CustomizerSpec::PowerShell(_) => type_names::POWERSHELL,
            CustomizerSpec::File(_) => type_names::FILE,
            CustomizerSpec::WindowsRestart(_) => type_names::WINDOWS_RESTART,
            CustomizerSpec::WindowsUpdate(_) => type_names::WINDOWS_UPDATE,
            CustomizerSpec::Custom(c) => &c.type_name,
        }
    }

    /// The optional `name`.
    pub fn name(&self) -> Option<&str> {
        match self {
            CustomizerSpec::Shell(s) => s.name.as_deref(),
            CustomizerSpec::PowerShell(s) => s.name.as_deref(),
            CustomizerSpec::File(s) => s.name.as_deref(),
            CustomizerSpec::WindowsRestart(s) => s.name.as_deref(),
            CustomizerSpec::WindowsUpdate(s) => s.name.as_deref(),
            CustomizerSpec::Custom(c) => c.name(),
        }
    }
}

/// `validate.inVMValidations[]` (discriminator `type`): Shell, PowerShell and File only.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidatorSpec {
    /// Run a shell script on Linux.
    Shell(ShellStep),
    /// Run a PowerShell script on Windows.
    PowerShell(PowerShellStep),
    /// Copy one file onto the VM.
    File(FileStep),
    /// A validator type added by a plugin.
    Custom(CustomSpec),
}

impl ValidatorSpec {
    /// The `type` name.
    pub fn type_name(&self) -> &str {
        match self {
            ValidatorSpec::Shell(_) => type_names::SHELL,
            ValidatorSpec::PowerShell(_) => type_names::POWERSHELL,
            ValidatorSpec::File(_) => type_names::FILE,
            ValidatorSpec::Custom(c) => &c.type_name,
        }
    }

    /// The same step as a customizer (validators and customizers share their types).
    pub fn as_customizer(&self) -> CustomizerSpec {
        match self {
            ValidatorSpec::Shell(s) => CustomizerSpec::Shell(s.clone()),
            ValidatorSpec::PowerShell(s) => CustomizerSpec::PowerShell(s.clone()),
            ValidatorSpec::File(s) => CustomizerSpec::File(s.clone()),
            ValidatorSpec::Custom(c) => CustomizerSpec::Custom(c.clone()),
        }
    }
}

/// `Shell` customizer or validator.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShellStep {
    /// Step name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URI of the script (exclusive with `inline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_uri: Option<String>,
    /// Lowercase hex SHA-256 of the script at `scriptUri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_checksum: Option<String>,
    /// Commands, one per line (exclusive with `scriptUri`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline: Option<Expr<Vec<String>>>,
}

/// `PowerShell` customizer or validator.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PowerShellStep {
    /// Step name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URI of the script (exclusive with `inline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_uri: Option<String>,
    /// Lowercase hex SHA-256 of the script at `scriptUri`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_checksum: Option<String>,
    /// Commands, one per line (exclusive with `scriptUri`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inline: Option<Expr<Vec<String>>>,
    /// Run elevated (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_elevated: Option<Expr<bool>>,
    /// Run as LocalSystem; needs `runElevated` (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_as_system: Option<Expr<bool>>,
    /// Exit codes that count as success (default `[0]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_exit_codes: Option<Expr<Vec<i32>>>,
}

/// `File` customizer or validator.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileStep {
    /// Step name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Where to download the file from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_uri: Option<String>,
    /// Full path of the file on the VM (parent must exist).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// Lowercase hex SHA-256 of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_checksum: Option<String>,
}

/// `WindowsRestart` customizer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsRestartStep {
    /// Step name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Command that restarts the VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_command: Option<String>,
    /// Command run once the VM is back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_check_command: Option<String>,
    /// How long to wait, such as `5m` or `2h` (default `5m`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_timeout: Option<String>,
}

/// `WindowsUpdate` customizer.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WindowsUpdateStep {
    /// Step name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Windows Update search criteria.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_criteria: Option<String>,
    /// `include:`/`exclude:` filter expressions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filters: Option<Expr<Vec<String>>>,
    /// Most updates to install (0 = 1000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_limit: Option<Expr<i32>>,
}

/// `distribute[]` (discriminator `type`).
#[derive(Debug, Clone, PartialEq)]
pub enum DistributorSpec {
    /// A managed image.
    ManagedImage(ManagedImageTarget),
    /// An Azure Compute Gallery image version.
    SharedImage(SharedImageTarget),
    /// A VHD file.
    Vhd(VhdTarget),
    /// A distributor type added by a plugin.
    Custom(CustomSpec),
}

impl DistributorSpec {
    /// The `type` name.
    pub fn type_name(&self) -> &str {
        match self {
            DistributorSpec::ManagedImage(_) => type_names::MANAGED_IMAGE,
            DistributorSpec::SharedImage(_) => type_names::SHARED_IMAGE,
            DistributorSpec::Vhd(_) => type_names::VHD,
            DistributorSpec::Custom(c) => &c.type_name,
        }
    }

    /// The `runOutputName`.
    pub fn run_output_name(&self) -> &str {
        match self {
            DistributorSpec::ManagedImage(t) => &t.run_output_name,
            DistributorSpec::SharedImage(t) => &t.run_output_name,
            DistributorSpec::Vhd(t) => &t.run_output_name,
            DistributorSpec::Custom(c) => c.fields.get("runOutputName").and_then(Value::as_str).unwrap_or_default(),
        }
    }
}

/// `ManagedImage` distributor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ManagedImageTarget {
    /// Name of the run output.
    pub run_output_name: String,
    /// Tags on the produced image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_tags: Option<Expr<StringMap>>,
    /// ARM id of the image to create.
    pub image_id: String,
    /// Region of the image.
    pub location: String,
}

/// `SharedImage` distributor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SharedImageTarget {
    /// Name of the run output.
    pub run_output_name: String,
    /// Tags on the produced image version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_tags: Option<Expr<StringMap>>,
    /// ARM id of the image definition, or of an explicit version.
    pub gallery_image_id: String,
    /// Regions with replica counts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_regions: Option<Expr<Vec<TargetRegion>>>,
    /// Deprecated: plain region list.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_regions: Option<Expr<Vec<String>>>,
    /// Deprecated: storage type with `replicationRegions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_account_type: Option<String>,
    /// Keep the version out of `latest`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exclude_from_latest: Option<Expr<bool>>,
    /// How the version number is chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versioning: Option<Versioning>,
    /// `Full` (default) or `Shallow`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replication_mode: Option<ReplicationMode>,
}

/// `targetRegions[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRegion {
    /// Region name.
    pub name: String,
    /// Replicas in the region (≥ 1, default 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica_count: Option<Expr<i32>>,
    /// `Standard_LRS` (default), `Standard_ZRS`, `Premium_LRS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_account_type: Option<String>,
}

/// `versioning` (discriminator `scheme`).
#[derive(Debug, Clone, PartialEq)]
pub enum Versioning {
    /// The next version above the existing ones, within `major` when set.
    Latest {
        /// Major version to stay in; -1 or absent = any.
        major: Option<Expr<i32>>,
    },
    /// The source image's version.
    Source,
}

/// `replicationMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum ReplicationMode {
    /// Full copies (default).
    Full,
    /// Shallow replication.
    Shallow,
}

/// `VHD` distributor.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VhdTarget {
    /// Name of the run output.
    pub run_output_name: String,
    /// Tags on the produced artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_tags: Option<Expr<StringMap>>,
    /// Blob or container URI (default: the staging storage account).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// `optimize`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Optimize {
    /// VM boot optimization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_boot: Option<StateOnly>,
    /// Workload optimization (2025-10-01).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadOptimize>,
}

/// An object with just `state`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateOnly {
    /// `Enabled` or `Disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Toggle>,
}

/// `optimize.workload`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadOptimize {
    /// `Enabled` or `Disabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<Toggle>,
    /// Script to run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script_uri: Option<String>,
    /// SHA-256 of the script.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_checksum: Option<String>,
}

/// `Enabled` / `Disabled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
pub enum Toggle {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

/// `autoRun`.
pub type AutoRun = StateOnly;

/// `validate`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Validate {
    /// Distribute even when validation fails (the run still fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continue_distribute_on_failure: Option<Expr<bool>>,
    /// Validate the source image only: no customization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_validation_only: Option<Expr<bool>>,
    /// Validators, in order.
    #[serde(rename = "inVMValidations", skip_serializing_if = "Vec::is_empty", default)]
    pub in_vm_validations: Vec<ValidatorSpec>,
}

/// `errorHandling`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorHandling {
    /// When a customizer fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_customizer_error: Option<ErrorAction>,
    /// When a validator fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_validation_error: Option<ErrorAction>,
}

/// `cleanup` (default) or `abort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ErrorAction {
    /// Delete the build VM and everything the run created.
    #[default]
    Cleanup,
    /// Keep the build VM for debugging; the report says how to reach it.
    Abort,
}

/// `vmProfile`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VmProfile {
    /// VM size (default by source generation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_size: Option<String>,
    /// OS disk size; 0 keeps the source size.
    #[serde(rename = "osDiskSizeGB", skip_serializing_if = "Option::is_none")]
    pub os_disk_size_gb: Option<Expr<i32>>,
    /// Identities attached to the build VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_assigned_identities: Option<Expr<Vec<String>>>,
    /// Network placement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vnet_config: Option<VnetConfig>,
}

/// `vmProfile.vnetConfig`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VnetConfig {
    /// Existing subnet for the build VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet_id: Option<String>,
    /// Subnet for an isolated build's container instance.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_instance_subnet_id: Option<String>,
    /// Size of the proxy VM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_vm_size: Option<String>,
}

/// `additionalDataDisks[]`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, JsonSchema)]
pub struct DataDisk {
    /// Size in GB.
    #[serde(rename = "sizeGB", skip_serializing_if = "Option::is_none")]
    pub size_gb: Option<Expr<i32>>,
}
