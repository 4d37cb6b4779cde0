//! Decoding the typed model from JSON, field by field, with JSON paths in every diagnostic.

use super::decode::{ApiVersion, Cx, Obj, array, int, string};
use super::diag::Code;
use super::model::*;
use serde_json::{Map, Value};

const V2021_10: ApiVersion = ApiVersion::new(2021, 10, 1);
const V2022_02: ApiVersion = ApiVersion::new(2022, 2, 14);
const V2022_07: ApiVersion = ApiVersion::new(2022, 7, 1);
const V2023_07: ApiVersion = ApiVersion::new(2023, 7, 1);
const V2024_02: ApiVersion = ApiVersion::new(2024, 2, 1);
const V2025_10: ApiVersion = ApiVersion::new(2025, 10, 1);

/// Decodes a template resource object (`{location, identity, properties, …}`) at `path`.
/// Envelope fields of ARM (`type`, `apiVersion`, `dependsOn`, `id`, `systemData`) are accepted.
pub(crate) fn template(cx: &mut Cx, v: &Value, path: &str) -> Option<ImageTemplate> {
    let mut o = Obj::new(cx, v, path)?;
    for k in ["id", "type", "systemData", "apiVersion", "dependsOn", "$schema", "comments", "condition"] {
        o.read_only(cx, k);
    }
    let name = o.str(cx, "name");
    let location = o.req_str(cx, "location", Code::MissingField, "set `location` to the template's region, for example `westus`");
    let tags = o.str_map(cx, "tags");
    let identity = o.take(cx, "identity").and_then(|(v, p)| identity(cx, v, &p));
    let properties = match o.take(cx, "properties") {
        Some((v, p)) => properties(cx, v, &p),
        None => {
            cx.error(
                &super::decode::join(path, "properties"),
                Code::MissingField,
                "`properties` is required",
                "add `properties` with `source` and `distribute`",
            );
            None
        }
    };
    o.finish(cx);
    Some(ImageTemplate { name, location, tags, identity, properties: properties.unwrap_or_default() })
}

fn identity(cx: &mut Cx, v: &Value, path: &str) -> Option<Identity> {
    let mut o = Obj::new(cx, v, path)?;
    o.read_only(cx, "principalId");
    o.read_only(cx, "tenantId");
    let kind = match o.str(cx, "type").as_deref() {
        Some("UserAssigned") => IdentityType::UserAssigned,
        Some("None") => IdentityType::None,
        Some(other) => {
            cx.error(
                &super::decode::join(path, "type"),
                Code::BadIdentity,
                format!("identity type `{other}` is not supported"),
                "use `UserAssigned` (one identity) or `None`",
            );
            IdentityType::None
        }
        None => {
            cx.error(
                &super::decode::join(path, "type"),
                Code::BadIdentity,
                "identity `type` is required",
                "use `UserAssigned` with one identity in `userAssignedIdentities`",
            );
            IdentityType::None
        }
    };
    let ids = o.take(cx, "userAssignedIdentities").and_then(|(v, p)| {
        super::decode::expr(cx, v, &p, "an object keyed by identity ids", |cx, v| {
            let map = v.as_object()?;
            let mut out = std::collections::BTreeMap::new();
            for (k, item) in map {
                let ip = super::decode::join(&p, k);
                // Responses carry read-only principalId/clientId; requests an empty object.
                match item {
                    Value::Object(m) => {
                        out.insert(k.clone(), m.clone());
                    }
                    other => {
                        cx.error(
                            &ip,
                            Code::WrongType,
                            format!("expected an object, found {}", super::decode::json_type(other)),
                            "write `{}` for each identity",
                        );
                    }
                }
                if super::decode::is_arm_expression(k) {
                    cx.warn(
                        &ip,
                        Code::ArmExpression,
                        format!("ARM expression `{k}` kept unevaluated"),
                        "deploy through ARM, or write the identity id",
                    );
                } else if let Some(ph) = super::decode::placeholder(k) {
                    cx.warn(
                        &ip,
                        Code::Placeholder,
                        format!("placeholder `{ph}` must be replaced before a build"),
                        "substitute the identity's resource id",
                    );
                }
            }
            Some(out)
        })
    });
    o.finish(cx);
    Some(Identity { kind, user_assigned_identities: ids })
}

fn properties(cx: &mut Cx, v: &Value, path: &str) -> Option<ImageTemplateProperties> {
    let mut o = Obj::new(cx, v, path)?;
    for k in ["provisioningState", "provisioningError", "lastRunStatus", "exactStagingResourceGroup"] {
        o.read_only(cx, k);
    }
    let source = match o.take(cx, "source") {
        Some((v, p)) => source(cx, v, &p),
        None => {
            cx.error(
                &super::decode::join(path, "source"),
                Code::BadSourceType,
                "`source` is required",
                "add a source, for example {\"type\": \"PlatformImage\", \"publisher\": …}",
            );
            None
        }
    };
    let customize = o.array(cx, "customize", customizer).unwrap_or_default();
    let optimize = o.take_since(cx, "optimize", V2022_07).and_then(|(v, p)| optimize(cx, v, &p));
    let validate = o.take_since(cx, "validate", V2022_02).and_then(|(v, p)| validate(cx, v, &p));
    let distribute = match o.take(cx, "distribute") {
        Some((v, p)) => array(cx, v, &p, distributor).unwrap_or_default(),
        None => {
            cx.error(
                &super::decode::join(path, "distribute"),
                Code::NoDistributeTarget,
                "`distribute` is required",
                "add at least one target: ManagedImage, SharedImage or VHD",
            );
            Vec::new()
        }
    };
    let error_handling = o.take_since(cx, "errorHandling", V2023_07).and_then(|(v, p)| error_handling(cx, v, &p));
    let build_timeout_in_minutes = o.int(cx, "buildTimeoutInMinutes");
    let vm_profile = o.take(cx, "vmProfile").and_then(|(v, p)| vm_profile(cx, v, &p));
    let additional_data_disks = o.take_since(cx, "additionalDataDisks", V2025_10).and_then(|(v, p)| {
        array(cx, v, &p, |cx, v, p| {
            let mut d = Obj::new(cx, v, p)?;
            let size_gb = d.int(cx, "sizeGB");
            d.finish(cx);
            Some(DataDisk { size_gb })
        })
    });
    let staging_resource_group = o.str_since(cx, "stagingResourceGroup", V2022_02);
    let auto_run = o.take_since(cx, "autoRun", V2024_02).and_then(|(v, p)| state_only(cx, v, &p));
    let managed_resource_tags = o.take_since(cx, "managedResourceTags", V2024_02).and_then(|(v, p)| super::decode::str_map(cx, v, &p));
    o.finish(cx);
    Some(ImageTemplateProperties {
        source: source.unwrap_or_default(),
        customize,
        optimize,
        validate,
        distribute,
        error_handling,
        build_timeout_in_minutes,
        vm_profile,
        additional_data_disks,
        staging_resource_group,
        auto_run,
        managed_resource_tags,
    })
}

/// The `type` discriminator of an object; errors with `code` when missing.
fn discriminator(cx: &mut Cx, o: &mut Obj<'_>, key: &'static str, code: Code, what: &str) -> Option<String> {
    match o.take(cx, key) {
        Some((v, p)) => string(cx, v, &p),
        None => {
            cx.error(
                &super::decode::join(o.path(), key),
                code,
                format!("{what} `{key}` is required"),
                format!("set `{key}` to one of the {what} types"),
            );
            None
        }
    }
}

/// Everything but `type`, for plugin-defined types.
fn custom(v: &Value, type_name: String, path: &str) -> CustomSpec {
    let mut fields = v.as_object().cloned().unwrap_or_default();
    fields.retain(|k, _| k != "type");
    CustomSpec { type_name, fields, path: path.to_string() }
}

fn source(cx: &mut Cx, v: &Value, path: &str) -> Option<ImageSource> {
    let mut o = Obj::new(cx, v, path)?;
    let ty = discriminator(cx, &mut o, "type", Code::BadSourceType, "source")?;
    o.read_only(cx, "exactVersion");
    let s = match ty.as_str() {
        type_names::PLATFORM_IMAGE => {
            let publisher = o.str(cx, "publisher");
            let offer = o.str(cx, "offer");
            let sku = o.str(cx, "sku");
            let version = o.str(cx, "version");
            let plan_info = o.take(cx, "planInfo").and_then(|(v, p)| {
                let mut pi = Obj::new(cx, v, &p)?;
                let hint = "planInfo needs planName, planProduct and planPublisher";
                let plan_name = pi.req_str(cx, "planName", Code::BadPIRSource, hint);
                let plan_product = pi.req_str(cx, "planProduct", Code::BadPIRSource, hint);
                let plan_publisher = pi.req_str(cx, "planPublisher", Code::BadPIRSource, hint);
                pi.finish(cx);
                Some(PlanInfo { plan_name, plan_product, plan_publisher })
            });
            ImageSource::PlatformImage(PlatformImageSource { publisher, offer, sku, version, plan_info })
        }
        type_names::MANAGED_IMAGE => {
            let image_id = o.req_str(cx, "imageId", Code::BadManagedImageSource, "set `imageId` to the managed image's resource id");
            ImageSource::ManagedImage(ManagedImageSource { image_id })
        }
        type_names::SHARED_IMAGE_VERSION => {
            let image_version_id = o.req_str(
                cx,
                "imageVersionId",
                Code::BadSharedImageVersionSource,
                "set `imageVersionId` to …/galleries/G/images/D/versions/V (V may be `latest`)",
            );
            ImageSource::SharedImageVersion(SharedImageVersionSource { image_version_id })
        }
        _ => return Some(ImageSource::Custom(custom(v, ty, path))),
    };
    o.finish(cx);
    Some(s)
}

fn step<T>(cx: &mut Cx, o: &mut Obj<'_>, f: impl FnOnce(&mut Cx, &mut Obj<'_>, Option<String>) -> T) -> T {
    let name = o.str(cx, "name");
    f(cx, o, name)
}

fn shell(cx: &mut Cx, o: &mut Obj<'_>, name: Option<String>) -> ShellStep {
    ShellStep { name, script_uri: o.str(cx, "scriptUri"), sha256_checksum: o.str(cx, "sha256Checksum"), inline: o.str_array(cx, "inline") }
}

fn powershell(cx: &mut Cx, o: &mut Obj<'_>, name: Option<String>) -> PowerShellStep {
    PowerShellStep {
        name,
        script_uri: o.str(cx, "scriptUri"),
        sha256_checksum: o.str(cx, "sha256Checksum"),
        inline: o.str_array(cx, "inline"),
        run_elevated: o.bool(cx, "runElevated"),
        run_as_system: o.bool(cx, "runAsSystem"),
        valid_exit_codes: o.take(cx, "validExitCodes").and_then(|(v, p)| {
            super::decode::expr(cx, v, &p, "an array of int32 exit codes", |cx, v| {
                let items = v.as_array()?;
                Some(
                    items
                        .iter()
                        .enumerate()
                        .filter_map(|(i, x)| int(cx, x, &super::decode::index(&p, i)).and_then(|e| e.value().copied()))
                        .collect(),
                )
            })
        }),
    }
}

fn file(cx: &mut Cx, o: &mut Obj<'_>, name: Option<String>) -> FileStep {
    FileStep {
        name,
        source_uri: o.str(cx, "sourceUri"),
        destination: o.str(cx, "destination"),
        sha256_checksum: o.str(cx, "sha256Checksum"),
    }
}

fn customizer(cx: &mut Cx, v: &Value, path: &str) -> Option<CustomizerSpec> {
    let mut o = Obj::new(cx, v, path)?;
    let ty = discriminator(cx, &mut o, "type", Code::BadCustomizerType, "customizer")?;
    let c = match ty.as_str() {
        type_names::SHELL => CustomizerSpec::Shell(step(cx, &mut o, shell)),
        type_names::POWERSHELL => CustomizerSpec::PowerShell(step(cx, &mut o, powershell)),
        type_names::FILE => CustomizerSpec::File(step(cx, &mut o, file)),
        type_names::WINDOWS_RESTART => CustomizerSpec::WindowsRestart(step(cx, &mut o, |cx, o, name| WindowsRestartStep {
            name,
            restart_command: o.str(cx, "restartCommand"),
            restart_check_command: o.str(cx, "restartCheckCommand"),
            restart_timeout: o.str(cx, "restartTimeout"),
        })),
        type_names::WINDOWS_UPDATE => CustomizerSpec::WindowsUpdate(step(cx, &mut o, |cx, o, name| WindowsUpdateStep {
            name,
            search_criteria: o.str(cx, "searchCriteria"),
            filters: o.str_array(cx, "filters"),
            update_limit: o.int(cx, "updateLimit"),
        })),
        _ => return Some(CustomizerSpec::Custom(custom(v, ty, path))),
    };
    o.finish(cx);
    Some(c)
}

fn validator(cx: &mut Cx, v: &Value, path: &str) -> Option<ValidatorSpec> {
    let mut o = Obj::new(cx, v, path)?;
    let ty = discriminator(cx, &mut o, "type", Code::BadValidatorType, "validator")?;
    let c = match ty.as_str() {
        type_names::SHELL => ValidatorSpec::Shell(step(cx, &mut o, shell)),
        type_names::POWERSHELL => ValidatorSpec::PowerShell(step(cx, &mut o, powershell)),
        type_names::FILE => {
            if cx.api.is_some_and(|a| a < V2022_07) {
                cx.strict_or_warn(
                    &super::decode::join(path, "type"),
                    Code::FieldTooNew,
                    "the File validator needs apiVersion 2022-07-01 or newer".into(),
                    "raise apiVersion".into(),
                );
            }
            ValidatorSpec::File(step(cx, &mut o, file))
        }
        _ => return Some(ValidatorSpec::Custom(custom(v, ty, path))),
    };
    o.finish(cx);
    Some(c)
}

fn validate(cx: &mut Cx, v: &Value, path: &str) -> Option<Validate> {
    let mut o = Obj::new(cx, v, path)?;
    let out = Validate {
        continue_distribute_on_failure: o.bool(cx, "continueDistributeOnFailure"),
        source_validation_only: o.bool(cx, "sourceValidationOnly"),
        in_vm_validations: o.array(cx, "inVMValidations", validator).unwrap_or_default(),
    };
    o.finish(cx);
    Some(out)
}

fn toggle(cx: &mut Cx, o: &mut Obj<'_>, key: &'static str) -> Option<Toggle> {
    let (v, p) = o.take(cx, key)?;
    match string(cx, v, &p)?.as_str() {
        "Enabled" => Some(Toggle::Enabled),
        "Disabled" => Some(Toggle::Disabled),
        other => {
            cx.error(&p, Code::InvalidValue, format!("`{other}` is not a valid state"), "use `Enabled` or `Disabled`");
            None
        }
    }
}

fn state_only(cx: &mut Cx, v: &Value, path: &str) -> Option<StateOnly> {
    let mut o = Obj::new(cx, v, path)?;
    let state = toggle(cx, &mut o, "state");
    o.finish(cx);
    Some(StateOnly { state })
}

fn optimize(cx: &mut Cx, v: &Value, path: &str) -> Option<Optimize> {
    let mut o = Obj::new(cx, v, path)?;
    let vm_boot = o.take(cx, "vmBoot").and_then(|(v, p)| state_only(cx, v, &p));
    let workload = o.take_since(cx, "workload", V2025_10).and_then(|(v, p)| {
        let mut w = Obj::new(cx, v, &p)?;
        let out = WorkloadOptimize {
            state: toggle(cx, &mut w, "state"),
            script_uri: w.str(cx, "scriptUri"),
            sha256_checksum: w.str(cx, "sha256Checksum"),
        };
        w.finish(cx);
        Some(out)
    });
    o.finish(cx);
    Some(Optimize { vm_boot, workload })
}

fn error_handling(cx: &mut Cx, v: &Value, path: &str) -> Option<ErrorHandling> {
    let mut o = Obj::new(cx, v, path)?;
    let action = |cx: &mut Cx, o: &mut Obj<'_>, key: &'static str| {
        let (v, p) = o.take(cx, key)?;
        match string(cx, v, &p)?.as_str() {
            "cleanup" => Some(ErrorAction::Cleanup),
            "abort" => Some(ErrorAction::Abort),
            other => {
                cx.error(
                    &p,
                    Code::InvalidValue,
                    format!("`{other}` is not an error-handling action"),
                    "use `cleanup` (delete the build VM) or `abort` (keep it for debugging)",
                );
                None
            }
        }
    };
    let out = ErrorHandling {
        on_customizer_error: action(cx, &mut o, "onCustomizerError"),
        on_validation_error: action(cx, &mut o, "onValidationError"),
    };
    o.finish(cx);
    Some(out)
}

fn vm_profile(cx: &mut Cx, v: &Value, path: &str) -> Option<VmProfile> {
    let mut o = Obj::new(cx, v, path)?;
    let vm_size = o.str(cx, "vmSize");
    let os_disk_size_gb = o.int(cx, "osDiskSizeGB");
    let user_assigned_identities =
        o.take_since(cx, "userAssignedIdentities", V2021_10).and_then(|(v, p)| super::decode::str_array(cx, v, &p));
    let vnet_config = o.take(cx, "vnetConfig").and_then(|(v, p)| {
        let mut n = Obj::new(cx, v, &p)?;
        let out = VnetConfig {
            subnet_id: n.str(cx, "subnetId"),
            container_instance_subnet_id: n.str_since(cx, "containerInstanceSubnetId", V2024_02),
            proxy_vm_size: n.str_since(cx, "proxyVmSize", V2021_10),
        };
        n.finish(cx);
        Some(out)
    });
    o.finish(cx);
    Some(VmProfile { vm_size, os_disk_size_gb, user_assigned_identities, vnet_config })
}

fn distributor(cx: &mut Cx, v: &Value, path: &str) -> Option<DistributorSpec> {
    let mut o = Obj::new(cx, v, path)?;
    let ty = discriminator(cx, &mut o, "type", Code::BadDistributeType, "distributor")?;
    let run_output = |cx: &mut Cx, o: &mut Obj<'_>| {
        o.req_str(cx, "runOutputName", Code::BadRunOutputName, "name the run output, unique in this template: ^[A-Za-z0-9-_.]{1,64}$")
    };
    let d = match ty.as_str() {
        type_names::MANAGED_IMAGE => {
            let run_output_name = run_output(cx, &mut o);
            let artifact_tags = o.str_map(cx, "artifactTags");
            let image_id = o.req_str(cx, "imageId", Code::MissingField, "set `imageId` to …/providers/Microsoft.Compute/images/NAME");
            let location = o.req_str(cx, "location", Code::MissingField, "set `location` to the image's region");
            DistributorSpec::ManagedImage(ManagedImageTarget { run_output_name, artifact_tags, image_id, location })
        }
        type_names::SHARED_IMAGE => {
            let run_output_name = run_output(cx, &mut o);
            let artifact_tags = o.str_map(cx, "artifactTags");
            let gallery_image_id =
                o.req_str(cx, "galleryImageId", Code::BadSharedImageDistribute, "set `galleryImageId` to …/galleries/G/images/D");
            let target_regions = o.take_since(cx, "targetRegions", V2022_07).and_then(|(v, p)| {
                super::decode::expr(cx, v, &p, "an array of target regions", |cx, v| {
                    v.as_array()?;
                    array(cx, v, &p, |cx, v, p| {
                        let mut r = Obj::new(cx, v, p)?;
                        let out = TargetRegion {
                            name: r.req_str(cx, "name", Code::MissingField, "name the region, for example `westus`"),
                            replica_count: r.int(cx, "replicaCount"),
                            storage_account_type: r.str(cx, "storageAccountType"),
                        };
                        r.finish(cx);
                        Some(out)
                    })
                })
            });
            let replication_regions = o.str_array(cx, "replicationRegions");
            let storage_account_type = o.str(cx, "storageAccountType");
            let exclude_from_latest = o.bool(cx, "excludeFromLatest");
            let versioning = o.take_since(cx, "versioning", V2022_07).and_then(|(v, p)| versioning(cx, v, &p));
            let replication_mode = o.take_since(cx, "replicationMode", V2025_10).and_then(|(v, p)| match string(cx, v, &p)?.as_str() {
                "Full" => Some(ReplicationMode::Full),
                "Shallow" => Some(ReplicationMode::Shallow),
                other => {
                    cx.error(&p, Code::BadSharedImageDistribute, format!("`{other}` is not a replication mode"), "use `Full` or `Shallow`");
                    None
                }
            });
            DistributorSpec::SharedImage(SharedImageTarget {
                run_output_name,
                artifact_tags,
                gallery_image_id,
                target_regions,
                replication_regions,
                storage_account_type,
                exclude_from_latest,
                versioning,
                replication_mode,
            })
        }
        type_names::VHD => {
            let run_output_name = run_output(cx, &mut o);
            let artifact_tags = o.str_map(cx, "artifactTags");
            let uri = o.str_since(cx, "uri", V2022_07);
            DistributorSpec::Vhd(VhdTarget { run_output_name, artifact_tags, uri })
        }
        _ => return Some(DistributorSpec::Custom(custom(v, ty, path))),
    };
    o.finish(cx);
    Some(d)
}

fn versioning(cx: &mut Cx, v: &Value, path: &str) -> Option<Versioning> {
    let mut o = Obj::new(cx, v, path)?;
    let scheme = discriminator(cx, &mut o, "scheme", Code::BadSharedImageDistribute, "versioning")?;
    let out = match scheme.as_str() {
        "Latest" => Some(Versioning::Latest { major: o.int(cx, "major") }),
        "Source" => Some(Versioning::Source),
        other => {
            cx.error(
                &super::decode::join(path, "scheme"),
                Code::BadSharedImageDistribute,
                format!("`{other}` is not a versioning scheme"),
                "use `Latest` or `Source`",
            );
            None
        }
    };
    o.finish(cx);
    out
}

/// Decodes `{properties: {distribute?, vmProfile?}, tags?, identity?}`, the PATCH body.
pub(crate) fn template_update(cx: &mut Cx, v: &Value, path: &str) -> Option<()> {
    let mut o = Obj::new(cx, v, path)?;
    let _ = o.str_map(cx, "tags");
    let _ = o.take(cx, "identity").and_then(|(v, p)| identity(cx, v, &p));
    if let Some((v, p)) = o.take(cx, "properties") {
        let mut props = Obj::new(cx, v, &p)?;
        if let Some((v, p)) = props.take_since(cx, "distribute", V2023_07) {
            let _ = array(cx, v, &p, distributor);
        }
        let _ = props.take_since(cx, "vmProfile", V2024_02).and_then(|(v, p)| vm_profile(cx, v, &p));
        props.finish(cx);
    }
    o.finish(cx);
    Some(())
}

/// Decodes a trigger body `{location?, properties: {kind: "SourceImage"}}`.
pub(crate) fn trigger(cx: &mut Cx, v: &Value, path: &str) -> Option<()> {
    let mut o = Obj::new(cx, v, path)?;
    for k in ["id", "name", "type", "systemData", "location"] {
        o.read_only(cx, k);
    }
    if let Some((v, p)) = o.take(cx, "properties") {
        let mut props = Obj::new(cx, v, &p)?;
        props.read_only(cx, "status");
        props.read_only(cx, "provisioningState");
        props.read_only(cx, "imageTemplateName");
        match props.str(cx, "kind").as_deref() {
            Some("SourceImage") => {}
            Some(other) => cx.error(
                &super::decode::join(&p, "kind"),
                Code::InvalidValue,
                format!("trigger kind `{other}` is not supported"),
                "use `SourceImage`",
            ),
            None => {
                cx.error(&super::decode::join(&p, "kind"), Code::MissingField, "trigger `kind` is required", "set `kind` to `SourceImage`")
            }
        }
        props.finish(cx);
    }
    o.finish(cx);
    Some(())
}

/// Decodes a run output resource.
pub(crate) fn run_output(cx: &mut Cx, v: &Value, path: &str) -> Option<()> {
    let mut o = Obj::new(cx, v, path)?;
    for k in ["id", "name", "type", "systemData"] {
        o.read_only(cx, k);
    }
    if let Some((v, p)) = o.take(cx, "properties") {
        let mut props = Obj::new(cx, v, &p)?;
        let _ = props.str(cx, "artifactId");
        let _ = props.str(cx, "artifactUri");
        props.read_only(cx, "provisioningState");
        props.finish(cx);
    }
    o.finish(cx);
    Some(())
}

/// True when `m` looks like an image template resource or its properties.
pub(crate) fn looks_like_template(m: &Map<String, Value>) -> bool {
    m.get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| p.contains_key("source") || p.contains_key("distribute") || p.contains_key("customize"))
}
