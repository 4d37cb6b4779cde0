//! Invalid templates, each with the exact JSON path and code it must be reported with.

use aib_core::template::{Code, Document};
use serde_json::{Value, json};

const ID: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/builder";
const GALLERY: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/images/d";
const SUBNET: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/a";
const SHA: &str = "0f343b0931126a20f133d67c2b018a3b0f343b0931126a20f133d67c2b018a3b";

fn base() -> Value {
    json!({
        "type": "Microsoft.VirtualMachineImages/imageTemplates",
        "apiVersion": "2025-10-01",
        "name": "t1",
        "location": "westus",
        "identity": {"type": "UserAssigned", "userAssignedIdentities": {ID: {}}},
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
            "customize": [
                {"type": "Shell", "name": "sh", "inline": ["echo hi"]},
                {"type": "PowerShell", "name": "ps", "inline": ["Write-Host hi"], "runElevated": true},
                {"type": "File", "name": "file", "sourceUri": "https://example.com/a.txt", "destination": "/tmp/a.txt", "sha256Checksum": SHA},
                {"type": "WindowsRestart", "restartTimeout": "5m"},
                {"type": "WindowsUpdate", "updateLimit": 10}
            ],
            "validate": {"inVMValidations": [{"type": "Shell", "name": "check", "inline": ["true"]}]},
            "distribute": [
                {"type": "VHD", "runOutputName": "vhd"},
                {"type": "SharedImage", "runOutputName": "sig", "galleryImageId": GALLERY, "targetRegions": [{"name": "westus", "replicaCount": 1}]},
                {"type": "ManagedImage", "runOutputName": "mi", "imageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/i", "location": "westus"}
            ],
            "vmProfile": {"vmSize": "Standard_D2s_v3", "osDiskSizeGB": 64, "vnetConfig": {"subnetId": SUBNET}}
        }
    })
}

/// Sets (`Some`) or removes (`None`) the value at a JSON pointer; parents must exist.
fn patch(mut v: Value, ops: &[(&str, Option<Value>)]) -> Value {
    for (ptr, val) in ops {
        let (parent, key) = ptr.rsplit_once('/').unwrap();
        let p = v.pointer_mut(parent).unwrap_or_else(|| panic!("no parent {parent}"));
        match (p, val) {
            (Value::Object(m), Some(x)) => {
                m.insert(key.to_string(), x.clone());
            }
            (Value::Object(m), None) => {
                m.remove(key);
            }
            (Value::Array(a), Some(x)) => {
                let i: usize = key.parse().unwrap();
                if i == a.len() { a.push(x.clone()) } else { a[i] = x.clone() }
            }
            (Value::Array(a), None) => {
                a.remove(key.parse::<usize>().unwrap());
            }
            _ => panic!("bad pointer {ptr}"),
        }
    }
    v
}

fn set(ptr: &str, v: Value) -> (&str, Option<Value>) {
    (ptr, Some(v))
}

fn del(ptr: &str) -> (&str, Option<Value>) {
    (ptr, None)
}

struct Case {
    name: &'static str,
    doc: String,
    path: &'static str,
    code: Code,
}

fn case(name: &'static str, ops: &[(&str, Option<Value>)], path: &'static str, code: Code) -> Case {
    Case { name, doc: patch(base(), ops).to_string(), path, code }
}

fn raw(name: &'static str, doc: &str, path: &'static str, code: Code) -> Case {
    Case { name, doc: doc.to_string(), path, code }
}

fn cases() -> Vec<Case> {
    use Code::*;
    let c0 = "/properties/customize/0";
    let d1 = "/properties/distribute/1";
    vec![
        case("no source", &[del("/properties/source")], "properties.source", BadSourceType),
        case("unknown source type", &[set("/properties/source/type", json!("Iso"))], "properties.source.type", BadSourceType),
        case("source without type", &[del("/properties/source/type")], "properties.source.type", BadSourceType),
        case("platform image without sku", &[del("/properties/source/sku")], "properties.source.sku", BadPIRSource),
        case(
            "planInfo without planName",
            &[set("/properties/source/planInfo", json!({"planProduct": "p", "planPublisher": "q"}))],
            "properties.source.planInfo.planName",
            BadPIRSource,
        ),
        case(
            "managed image without imageId",
            &[set("/properties/source", json!({"type": "ManagedImage"}))],
            "properties.source.imageId",
            BadManagedImageSource,
        ),
        case(
            "managed image id of a disk",
            &[set(
                "/properties/source",
                json!({"type": "ManagedImage", "imageId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/disks/d"}),
            )],
            "properties.source.imageId",
            BadManagedImageSource,
        ),
        case(
            "image version id without version",
            &[set("/properties/source", json!({"type": "SharedImageVersion", "imageVersionId": GALLERY}))],
            "properties.source.imageVersionId",
            BadSharedImageVersionSource,
        ),
        case(
            "imageVersionID spelled with a capital D",
            &[set("/properties/source", json!({"type": "SharedImageVersion", "imageVersionID": format!("{GALLERY}/versions/1.0.0")}))],
            "properties.source.imageVersionID",
            FieldCase,
        ),
        case(
            "scriptUri and inline both",
            &[set(&format!("{c0}/scriptUri"), json!("https://example.com/s.sh"))],
            "properties.customize[0].inline",
            NoCustomizerScript,
        ),
        case("neither scriptUri nor inline", &[del(&format!("{c0}/inline"))], "properties.customize[0]", NoCustomizerScript),
        case("empty inline", &[set(&format!("{c0}/inline"), json!([]))], "properties.customize[0].inline", NoCustomizerScript),
        case("unknown customizer type", &[set(&format!("{c0}/type"), json!("Ansible"))], "properties.customize[0].type", BadCustomizerType),
        case("customizer without type", &[del(&format!("{c0}/type"))], "properties.customize[0].type", BadCustomizerType),
        case(
            "runAsSystem without runElevated",
            &[set("/properties/customize/1/runAsSystem", json!(true)), del("/properties/customize/1/runElevated")],
            "properties.customize[1].runAsSystem",
            ConflictingFields,
        ),
        case(
            "short checksum",
            &[set("/properties/customize/2/sha256Checksum", json!("abc123"))],
            "properties.customize[2].sha256Checksum",
            BadChecksum,
        ),
        case(
            "non-hex checksum",
            &[set("/properties/customize/2/sha256Checksum", json!("z".repeat(64)))],
            "properties.customize[2].sha256Checksum",
            BadChecksum,
        ),
        case(
            "scriptUri not a URI",
            &[del(&format!("{c0}/inline")), set(&format!("{c0}/scriptUri"), json!("not a uri"))],
            "properties.customize[0].scriptUri",
            BadUri,
        ),
        case(
            "File without destination",
            &[del("/properties/customize/2/destination")],
            "properties.customize[2].destination",
            MissingField,
        ),
        case(
            "File with a relative destination",
            &[set("/properties/customize/2/destination", json!("tmp/a.txt"))],
            "properties.customize[2].destination",
            InvalidValue,
        ),
        case(
            "File destination climbing out",
            &[set("/properties/customize/2/destination", json!("/tmp/../etc/passwd"))],
            "properties.customize[2].destination",
            InvalidValue,
        ),
        case("File without sourceUri", &[del("/properties/customize/2/sourceUri")], "properties.customize[2].sourceUri", MissingField),
        case(
            "restartTimeout in words",
            &[set("/properties/customize/3/restartTimeout", json!("5 minutes"))],
            "properties.customize[3].restartTimeout",
            BadRestartTimeout,
        ),
        case(
            "negative updateLimit",
            &[set("/properties/customize/4/updateLimit", json!(-1))],
            "properties.customize[4].updateLimit",
            OutOfRange,
        ),
        case("inline as a number", &[set(&format!("{c0}/inline"), json!(5))], "properties.customize[0].inline", WrongType),
        case(
            "runElevated as a string",
            &[set("/properties/customize/1/runElevated", json!("yes"))],
            "properties.customize[1].runElevated",
            WrongType,
        ),
        case(
            "validExitCodes of strings",
            &[set("/properties/customize/1/validExitCodes", json!(["0"]))],
            "properties.customize[1].validExitCodes[0]",
            WrongType,
        ),
        case(
            "unknown customizer field",
            &[set(&format!("{c0}/environment"), json!({}))],
            "properties.customize[0].environment",
            UnknownField,
        ),
        case("empty distribute", &[set("/properties/distribute", json!([]))], "properties.distribute", NoDistributeTarget),
        case("no distribute", &[del("/properties/distribute")], "properties.distribute", NoDistributeTarget),
        case(
            "unknown distributor type",
            &[set("/properties/distribute/0/type", json!("S3"))],
            "properties.distribute[0].type",
            BadDistributeType,
        ),
        case(
            "no runOutputName",
            &[del("/properties/distribute/0/runOutputName")],
            "properties.distribute[0].runOutputName",
            BadRunOutputName,
        ),
        case(
            "runOutputName with a space",
            &[set("/properties/distribute/0/runOutputName", json!("my disk"))],
            "properties.distribute[0].runOutputName",
            BadRunOutputName,
        ),
        case(
            "runOutputName of dots only (a directory in every path it is part of)",
            &[set("/properties/distribute/0/runOutputName", json!(".."))],
            "properties.distribute[0].runOutputName",
            BadRunOutputName,
        ),
        case(
            "duplicate runOutputName",
            &[set(&format!("{d1}/runOutputName"), json!("vhd"))],
            "properties.distribute[1].runOutputName",
            DuplicateRunOutputName,
        ),
        case(
            "targetRegions and replicationRegions",
            &[set(&format!("{d1}/replicationRegions"), json!(["westus"]))],
            "properties.distribute[1].replicationRegions",
            BadSharedImageDistribute,
        ),
        case(
            "galleryImageId of a managed image",
            &[set(&format!("{d1}/galleryImageId"), json!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/images/i"))],
            "properties.distribute[1].galleryImageId",
            BadSharedImageDistribute,
        ),
        case(
            "explicit version not x.y.z",
            &[set(&format!("{d1}/galleryImageId"), json!(format!("{GALLERY}/versions/1.0")))],
            "properties.distribute[1].galleryImageId",
            BadSharedImageDistribute,
        ),
        case(
            "explicit version with versioning",
            &[
                set(&format!("{d1}/galleryImageId"), json!(format!("{GALLERY}/versions/1.0.0"))),
                set(&format!("{d1}/versioning"), json!({"scheme": "Latest"})),
            ],
            "properties.distribute[1].versioning",
            BadSharedImageDistribute,
        ),
        case(
            "zero replicas",
            &[set(&format!("{d1}/targetRegions/0/replicaCount"), json!(0))],
            "properties.distribute[1].targetRegions[0].replicaCount",
            OutOfRange,
        ),
        case(
            "region listed twice",
            &[set(&format!("{d1}/targetRegions/1"), json!({"name": "WestUS"}))],
            "properties.distribute[1].targetRegions[1].name",
            BadSharedImageDistribute,
        ),
        case(
            "unknown versioning scheme",
            &[set(&format!("{d1}/versioning"), json!({"scheme": "Semver"}))],
            "properties.distribute[1].versioning.scheme",
            BadSharedImageDistribute,
        ),
        case(
            "storageAccountType with targetRegions",
            &[set(&format!("{d1}/storageAccountType"), json!("Standard_LRS"))],
            "properties.distribute[1].storageAccountType",
            BadSharedImageDistribute,
        ),
        case(
            "unknown replicationMode",
            &[set(&format!("{d1}/replicationMode"), json!("Deep"))],
            "properties.distribute[1].replicationMode",
            BadSharedImageDistribute,
        ),
        case(
            "ManagedImage without location",
            &[del("/properties/distribute/2/location")],
            "properties.distribute[2].location",
            MissingField,
        ),
        case(
            "ManagedImage id of a gallery",
            &[set("/properties/distribute/2/imageId", json!(GALLERY))],
            "properties.distribute[2].imageId",
            BadResourceId,
        ),
        case(
            "VHD uri with ftp",
            &[set("/properties/distribute/0/uri", json!("ftp://example.com/x.vhd"))],
            "properties.distribute[0].uri",
            BadUri,
        ),
        case("timeout above 960", &[set("/properties/buildTimeoutInMinutes", json!(961))], "properties.buildTimeoutInMinutes", OutOfRange),
        case("negative timeout", &[set("/properties/buildTimeoutInMinutes", json!(-1))], "properties.buildTimeoutInMinutes", OutOfRange),
        case(
            "timeout beyond int32",
            &[set("/properties/buildTimeoutInMinutes", json!(1_000_000_000_000i64))],
            "properties.buildTimeoutInMinutes",
            OutOfRange,
        ),
        case(
            "negative osDiskSizeGB",
            &[set("/properties/vmProfile/osDiskSizeGB", json!(-5))],
            "properties.vmProfile.osDiskSizeGB",
            OutOfRange,
        ),
        case(
            "proxyVmSize with an isolated build",
            &[
                set("/properties/vmProfile/vnetConfig/containerInstanceSubnetId", json!(SUBNET)),
                set("/properties/vmProfile/vnetConfig/proxyVmSize", json!("Standard_A1_v2")),
            ],
            "properties.vmProfile.vnetConfig.proxyVmSize",
            ConflictingFields,
        ),
        case(
            "isolated build without subnetId",
            &[set("/properties/vmProfile/vnetConfig", json!({"containerInstanceSubnetId": SUBNET}))],
            "properties.vmProfile.vnetConfig.containerInstanceSubnetId",
            ConflictingFields,
        ),
        case(
            "subnetId of a VNet",
            &[set(
                "/properties/vmProfile/vnetConfig/subnetId",
                json!("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v"),
            )],
            "properties.vmProfile.vnetConfig.subnetId",
            BadResourceId,
        ),
        case(
            "identity id of the wrong type",
            &[set("/properties/vmProfile/userAssignedIdentities", json!([GALLERY]))],
            "properties.vmProfile.userAssignedIdentities[0]",
            BadResourceId,
        ),
        case(
            "staging group with a provider",
            &[set("/properties/stagingResourceGroup", json!(GALLERY))],
            "properties.stagingResourceGroup",
            BadStagingResourceGroup,
        ),
        case(
            "errorHandling keep",
            &[set("/properties/errorHandling", json!({"onCustomizerError": "keep"}))],
            "properties.errorHandling.onCustomizerError",
            InvalidValue,
        ),
        case("autoRun On", &[set("/properties/autoRun", json!({"state": "On"}))], "properties.autoRun.state", InvalidValue),
        case(
            "WindowsRestart validator",
            &[set("/properties/validate/inVMValidations/0", json!({"type": "WindowsRestart"}))],
            "properties.validate.inVMValidations[0].type",
            UnsupportedValidatorType,
        ),
        case(
            "unknown validator type",
            &[set("/properties/validate/inVMValidations/0", json!({"type": "Pester", "inline": ["x"]}))],
            "properties.validate.inVMValidations[0].type",
            BadValidatorType,
        ),
        case(
            "validator without script",
            &[del("/properties/validate/inVMValidations/0/inline")],
            "properties.validate.inVMValidations[0]",
            NoValidatorScript,
        ),
        case(
            "sourceValidationOnly with customizers",
            &[set("/properties/validate/sourceValidationOnly", json!(true))],
            "properties.validate.sourceValidationOnly",
            ConflictingFields,
        ),
        case(
            "two template identities",
            &[set("/identity/userAssignedIdentities", json!({ID: {}, format!("{ID}2"): {}}))],
            "identity.userAssignedIdentities",
            BadIdentity,
        ),
        case("SystemAssigned identity", &[set("/identity/type", json!("SystemAssigned"))], "identity.type", BadIdentity),
        case("template name with a space", &[set("/name", json!("my template"))], "name", InvalidValue),
        case("no location", &[del("/location")], "location", MissingField),
        case("unknown properties field", &[set("/properties/buildTimeout", json!(60))], "properties.buildTimeout", UnknownField),
        case(
            "2025 field at apiVersion 2024-02-01",
            &[set("/apiVersion", json!("2024-02-01")), set("/properties/additionalDataDisks", json!([{"sizeGB": 10}]))],
            "properties.additionalDataDisks",
            FieldTooNew,
        ),
        case("properties not an object", &[set("/properties", json!([]))], "properties", WrongType),
        raw("not JSON", "{\"location\": ", "", InvalidJson),
        raw("a JSON array", "[1, 2]", "", InvalidJson),
        raw(
            "deployment template without an image template",
            r#"{"$schema": "x", "resources": [{"type": "Microsoft.Compute/galleries", "name": "g"}]}"#,
            "resources",
            UnknownDocument,
        ),
        raw("an unrelated object", r#"{"hello": "world"}"#, "", UnknownDocument),
    ]
}

#[test]
fn base_template_is_valid() {
    let doc = Document::parse(&base().to_string());
    assert!(!doc.diagnostics.has_errors(), "{}", doc.diagnostics);
}

/// Every field aib models, set at once: it must serialize back to the same JSON.
#[test]
fn full_template_round_trips_exactly() {
    let full = patch(
        base(),
        &[
            set("/tags", json!({"team": "images"})),
            set("/properties/source/planInfo", json!({"planName": "n", "planProduct": "p", "planPublisher": "q"})),
            set(
                "/properties/customize/0",
                json!({"type": "Shell", "name": "sh", "scriptUri": "https://example.com/s.sh", "sha256Checksum": SHA}),
            ),
            set("/properties/customize/1/runAsSystem", json!(true)),
            set("/properties/customize/1/validExitCodes", json!([0, 3010])),
            set(
                "/properties/customize/3",
                json!({"type": "WindowsRestart", "restartCommand": "shutdown /r", "restartCheckCommand": "echo ok", "restartTimeout": "10m"}),
            ),
            set(
                "/properties/customize/4",
                json!({"type": "WindowsUpdate", "searchCriteria": "IsInstalled=0", "filters": ["exclude:$_.Title -like '*Preview*'"], "updateLimit": 20}),
            ),
            set(
                "/properties/optimize",
                json!({"vmBoot": {"state": "Enabled"}, "workload": {"state": "Disabled", "scriptUri": "https://example.com/w.ps1", "sha256Checksum": SHA}}),
            ),
            set(
                "/properties/validate",
                json!({"continueDistributeOnFailure": true, "sourceValidationOnly": false, "inVMValidations": [
            {"type": "Shell", "name": "a", "inline": ["true"]},
            {"type": "PowerShell", "name": "b", "inline": ["exit 0"], "validExitCodes": [0]},
            {"type": "File", "name": "c", "sourceUri": "https://example.com/x", "destination": "/tmp/x"}]}),
            ),
            set("/properties/distribute/0/uri", json!("https://acct.blob.core.windows.net/vhds/x.vhd")),
            set("/properties/distribute/0/artifactTags", json!({"k": "v"})),
            set(
                "/properties/distribute/1",
                json!({"type": "SharedImage", "runOutputName": "sig", "galleryImageId": GALLERY,
            "targetRegions": [{"name": "westus", "replicaCount": 2, "storageAccountType": "Standard_ZRS"}],
            "excludeFromLatest": true, "versioning": {"scheme": "Latest", "major": 2}, "replicationMode": "Shallow"}),
            ),
            set("/properties/errorHandling", json!({"onCustomizerError": "abort", "onValidationError": "cleanup"})),
            set("/properties/buildTimeoutInMinutes", json!(90)),
            set("/properties/vmProfile/userAssignedIdentities", json!([ID])),
            set("/properties/vmProfile/vnetConfig/proxyVmSize", json!("Standard_A1_v2")),
            set("/properties/additionalDataDisks", json!([{"sizeGB": 32}])),
            set("/properties/stagingResourceGroup", json!("/subscriptions/s/resourceGroups/staging")),
            set("/properties/autoRun", json!({"state": "Disabled"})),
            set("/properties/managedResourceTags", json!({"owner": "me"})),
        ],
    );
    let parsed = aib_core::ImageTemplate::from_json(&full.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let mut expected = full.clone();
    // Envelope fields are read but not part of the model.
    let m = expected.as_object_mut().unwrap();
    m.remove("type");
    m.remove("apiVersion");
    assert_eq!(parsed.template.to_json_value(), expected);
}

#[test]
fn every_invalid_template_is_reported_at_its_path_with_its_code() {
    let cases = cases();
    assert!(cases.len() >= 40);
    let mut failures = Vec::new();
    for c in &cases {
        let doc = Document::parse(&c.doc);
        let errors: Vec<_> = doc.diagnostics.errors().collect();
        let hit = errors.iter().any(|d| d.path == c.path && d.code == c.code);
        let only = errors.len() == 1;
        if !hit || !only {
            failures.push(format!(
                "{}: want `{}: {}` only, got:\n  {}",
                c.name,
                c.path,
                c.code,
                errors.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n  ")
            ));
        }
        for d in &errors {
            assert!(d.hint.is_some(), "{}: every error has a hint: {d}", c.name);
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

#[test]
fn lenient_api_versions_warn_instead() {
    // Before 2024-02-01 the service ignored unknown fields and case; so does aib, with warnings.
    let v = patch(
        base(),
        &[
            set("/apiVersion", json!("2022-07-01")),
            set("/properties/customize/0/environment", json!({})),
            del("/properties/source/sku"),
            set("/properties/source/SKU", json!("12")),
        ],
    );
    let v = patch(v, &[del("/properties/errorHandling")]);
    let doc = Document::parse(&v.to_string());
    assert!(!doc.diagnostics.has_errors(), "{}", doc.diagnostics);
    let codes: Vec<_> = doc.diagnostics.warnings().map(|d| (d.path.as_str(), d.code)).collect();
    assert!(codes.contains(&("properties.customize[0].environment", Code::UnknownField)), "{codes:?}");
    assert!(codes.contains(&("properties.source.SKU", Code::FieldCase)), "{codes:?}");
}
