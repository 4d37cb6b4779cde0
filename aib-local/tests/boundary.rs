//! Hostile templates against the local backend's boundary: a template never writes a host
//! file outside the outputs (or the operator's allowed directories), and never reads one
//! unless the operator allowed its directory. Each case is refused with the field's JSON path,
//! the `OutsideBoundary` code and a hint, and the host file is untouched.

use aib_core::template::{Code, ImageTemplate, ParseOptions};
use aib_core::{CapturedImage, DistributeRequest, Distributor, Error, Pipeline, ResolvedImage, StepContext};
use aib_local::LocalBackend;
use aib_local::outputs::{DiskFormat, FileDistributor};
use std::path::Path;

fn template(customize: serde_json::Value, distribute: serde_json::Value) -> ImageTemplate {
    let v = serde_json::json!({"location": "westeurope", "properties": {
        "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
        "customize": customize, "distribute": distribute}});
    // Parsed with the local backend's types (it adds `LocalFile`).
    let types =
        LocalBackend::builder().state_dir(std::env::temp_dir().join("aib-boundary-types")).build().unwrap().backend().registry.type_names();
    ImageTemplate::from_json_with(&v.to_string(), &ParseOptions::default().with_types(types)).unwrap().template
}

fn vhd() -> serde_json::Value {
    serde_json::json!([{"type": "VHD", "runOutputName": "disk"}])
}

/// The one diagnostic of a refused template: (path, code, hint).
fn refusal(e: Error) -> (String, Code, String) {
    let Error::InvalidTemplate { diagnostics } = e else { panic!("expected a located refusal, got {e}") };
    assert_eq!(diagnostics.0.len(), 1, "{diagnostics}");
    let d = &diagnostics.0[0];
    (d.path.clone(), d.code, d.hint.clone().unwrap_or_default())
}

fn backend(state: &Path) -> aib_local::LocalBackendBuilder {
    LocalBackend::builder().state_dir(state)
}

#[test]
fn a_raw_output_cannot_be_renamed_over_a_host_file() {
    let state = tempfile::tempdir().unwrap();
    let home = tempfile::tempdir().unwrap();
    let keys = home.path().join(".ssh/authorized_keys");
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    std::fs::write(&keys, "ssh-ed25519 AAAA owner\n").unwrap();
    let local = backend(state.path()).build().unwrap();
    let t = template(
        serde_json::json!([]),
        serde_json::json!([{"type": "LocalFile", "runOutputName": "o", "format": "raw", "path": keys.display().to_string()}]),
    );
    let (path, code, hint) = refusal(Pipeline::from_template(&t, &local.backend()).unwrap_err());
    assert_eq!((path.as_str(), code), ("properties.distribute[0].path", Code::OutsideBoundary));
    assert!(hint.contains("--allow-output-root"), "{hint}");
    // A VHD `uri` is a blob URI: a host path there is refused by validation already.
    let v = serde_json::json!({"location": "westeurope", "properties": {
        "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
        "distribute": [{"type": "VHD", "runOutputName": "v", "uri": format!("file://{}", keys.display())}]}});
    let Err(Error::InvalidTemplate { diagnostics }) = ImageTemplate::from_json(&v.to_string()) else { panic!("a file:// VHD uri parsed") };
    assert!(diagnostics.0.iter().any(|d| d.path == "properties.distribute[0].uri"), "{diagnostics}");
    assert_eq!(std::fs::read_to_string(&keys).unwrap(), "ssh-ed25519 AAAA owner\n", "the host file is untouched");
}

#[test]
fn the_operator_allows_an_output_directory_and_only_it() {
    let state = tempfile::tempdir().unwrap();
    let images = tempfile::tempdir().unwrap();
    let local = backend(state.path()).allow_output_root(images.path()).build().unwrap();
    let inside = template(
        serde_json::json!([]),
        serde_json::json!([{"type": "LocalFile", "runOutputName": "o", "path": images.path().join("web.qcow2").display().to_string()}]),
    );
    Pipeline::from_template(&inside, &local.backend()).unwrap().build().unwrap();
    let sneaky = format!("{}/../escaped.qcow2", images.path().display());
    let t = template(serde_json::json!([]), serde_json::json!([{"type": "LocalFile", "runOutputName": "o", "path": sneaky}]));
    assert!(Pipeline::from_template(&t, &local.backend()).is_err(), "`..` never leads out");
}

#[tokio::test]
async fn a_link_in_an_allowed_directory_does_not_lead_out_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("link")).unwrap();
    let disk = dir.path().join("disk.qcow2");
    let st = std::process::Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg("1M").status();
    assert!(st.expect("qemu-img (apt-get install qemu-utils)").success());
    let image = CapturedImage::new(disk.display().to_string(), "qcow2", disk.display().to_string(), ResolvedImage::default());
    let roots = vec![std::fs::canonicalize(&allowed).unwrap()];
    let d = FileDistributor::new(DiskFormat::Raw, Some(allowed.join("link/x.raw")), dir.path().join("outputs"), "x")
        .confined_to(roots)
        .unwrap();
    let ctx = StepContext::detached("distribute x").unwrap();
    let e = d.distribute(&DistributeRequest::new(image), &ctx).await.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied { .. }), "{e}");
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0, "nothing was written outside");
    assert!(ctx.ledger().outstanding().is_empty());
}

#[test]
fn file_sources_are_off_unless_the_operator_allows_their_directory() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    std::fs::write(files.path().join("setup.sh"), "echo hi\n").unwrap();
    let hostile = [
        (serde_json::json!({"type": "Shell", "name": "s", "scriptUri": "file:///etc/passwd"}), "properties.customize[0].scriptUri"),
        (
            serde_json::json!({"type": "File", "name": "f", "sourceUri": "file:///proc/self/environ", "destination": "/tmp/e"}),
            "properties.customize[0].sourceUri",
        ),
    ];
    let local = backend(state.path()).build().unwrap();
    for (step, want) in &hostile {
        let t = template(serde_json::json!([step]), vhd());
        let (path, code, hint) = refusal(Pipeline::from_template(&t, &local.backend()).unwrap_err());
        assert_eq!((path.as_str(), code), (*want, Code::OutsideBoundary));
        assert!(hint.contains("--allow-file-root"), "{hint}");
    }
    // Allowed: that directory's files, and still no other host file, even with `/` allowed.
    let local = backend(state.path()).allow_file_root(files.path()).build().unwrap();
    let ok = serde_json::json!({"type": "Shell", "name": "s", "scriptUri": format!("file://{}/setup.sh", files.path().display())});
    Pipeline::from_template(&template(serde_json::json!([ok]), vhd()), &local.backend()).unwrap().build().unwrap();
    for (step, _) in &hostile {
        assert!(Pipeline::from_template(&template(serde_json::json!([step]), vhd()), &local.backend()).is_err());
    }
    let everything = backend(state.path()).allow_file_root("/").build().unwrap();
    let t = template(serde_json::json!([hostile[1].0.clone()]), vhd());
    assert!(Pipeline::from_template(&t, &everything.backend()).is_err(), "kernel files stay out");
}

#[test]
fn a_state_directory_other_users_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = LocalBackend::builder().state_dir(&shared).build().unwrap_err();
    assert!(matches!(&e, Error::InvalidConfig { key, .. } if key == "state_dir"), "{e}");
    // A new one is made private.
    let fresh = dir.path().join("fresh");
    LocalBackend::builder().state_dir(&fresh).build().unwrap();
    for d in [fresh.clone(), fresh.join("ledger"), fresh.join("outputs")] {
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
    }
}

#[test]
fn sources_on_internal_addresses_are_refused_unless_the_operator_allows_their_network() {
    let state = tempfile::tempdir().unwrap();
    let hostile = [
        (serde_json::json!({"type": "Shell", "name": "s", "scriptUri": "http://169.254.169.254/latest/meta-data/iam/x"}), "scriptUri"),
        (
            serde_json::json!({"type": "File", "name": "f", "sourceUri": "http://127.0.0.1:2375/containers/json", "destination": "/tmp/e"}),
            "sourceUri",
        ),
        (serde_json::json!({"type": "Shell", "name": "s", "scriptUri": "https://[fd00::5]/s.sh"}), "scriptUri"),
    ];
    let local = backend(state.path()).build().unwrap();
    for (step, field) in &hostile {
        let t = template(serde_json::json!([step]), vhd());
        let (path, code, hint) = refusal(Pipeline::from_template(&t, &local.backend()).unwrap_err());
        assert_eq!((path, code), (format!("properties.customize[0].{field}"), Code::OutsideBoundary));
        assert!(hint.contains("--allow-source-net"), "{hint}");
    }
    let lab = backend(state.path()).allow_source_network("127.0.0.0/8".parse().unwrap()).build().unwrap();
    Pipeline::from_template(&template(serde_json::json!([hostile[1].0.clone()]), vhd()), &lab.backend()).unwrap().build().unwrap();
    let t = template(serde_json::json!([hostile[0].0.clone()]), vhd());
    assert!(Pipeline::from_template(&t, &lab.backend()).is_err(), "the metadata service stays out");
}

#[tokio::test]
async fn an_imported_image_cannot_pull_host_files_into_the_catalog() {
    let state = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let secret = host.path().join("id_ed25519");
    std::fs::write(&secret, vec![b'K'; 1 << 20]).unwrap();
    let qemu_img = |args: &[&str]| {
        let out = std::process::Command::new("qemu-img").args(args).output().expect("qemu-img (apt install qemu-utils)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let backed = host.path().join("backed.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", "-b", &secret.display().to_string(), "-F", "raw", &backed.display().to_string()]);
    let data = host.path().join("data.qcow2");
    let opts = format!("data_file={},data_file_raw=on", secret.display());
    qemu_img(&["create", "-q", "-f", "qcow2", "-o", &opts, &data.display().to_string(), "1M"]);
    let catalog = backend(state.path()).build().unwrap().catalog();
    for (disk, kind) in [(&backed, "backing file"), (&data, "data file")] {
        let sum = sha256(disk);
        let e = catalog.import("Evil:image:1:1.0.0", &disk.display().to_string(), &sum, false).await.unwrap_err();
        assert!(e.to_string().contains(kind) && e.to_string().contains("standalone"), "{e}");
    }
    assert!(catalog.list().await.unwrap().is_empty(), "nothing entered the catalog");
    let leftovers: Vec<_> = walk(state.path()).into_iter().filter(|p| p.to_string_lossy().contains(".tmp-import")).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn sha256(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

fn walk(p: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}
