//! End to end on this machine: build the example template with QEMU, boot the image it
//! produced and check the customizations and the generalization; a failing customizer under
//! `cleanup` leaves nothing; under `abort` the VM stays, reachable, until `gc`.
//!
//! These boot real VMs (minutes under TCG), so they are `#[ignore]`d in the quick test run and
//! run by their own step of `scripts/test.sh`:
//! `cargo test -p aib-local --test e2e -- --ignored --test-threads=1`.

use aib_core::template::ImageTemplate;
use aib_core::{CommunicatorExt, ExecRequest, MemorySink, Pipeline, Provisioner, Reclaim, RunContext, RunReport, RunState, Source};
use aib_local::GuestNetwork;
use aib_local::LocalBackend;
use common::{qemu_processes, shared_catalog, shared_warm};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod common;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn backend(state: &Path) -> LocalBackend {
    aib_local::tools::check().unwrap_or_else(|e| panic!("{e}"));
    // The example template's scripts are file:// URIs in this checkout: the operator allows
    // that one directory, and nothing else of the host.
    LocalBackend::builder()
        .state_dir(state)
        .catalog_dir(shared_catalog())
        .warm_dir(shared_warm())
        .allow_file_root(repo().join("examples/templates/files"))
        .build()
        .unwrap()
}

/// Boots images as a user of them would: cold, never from a saved state.
fn cold_provisioner(local: &LocalBackend) -> aib_local::QemuProvisioner {
    aib_local::QemuProvisioner::new(local.state_dir().join("runs"))
}

fn example_template(patch: impl FnOnce(&mut serde_json::Value)) -> ImageTemplate {
    let text = std::fs::read_to_string(repo().join("examples/templates/debian-local.json"))
        .unwrap()
        .replace("<repoRoot>", &repo().display().to_string());
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    patch(&mut v);
    ImageTemplate::from_json(&v.to_string()).unwrap().template
}

async fn build(local: &LocalBackend, t: &ImageTemplate) -> RunReport {
    let p = Pipeline::from_template(t, &local.backend()).unwrap().ledger(local.ledger().unwrap()).log_dir(local.log_dir()).build().unwrap();
    p.run().await
}

/// Kills this test's VMs even when an assertion fails midway.
struct KillOnDrop(PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("pkill").arg("-f").arg(format!("qemu-system.*{}", self.0.display())).status();
    }
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(true)
}

async fn sh(comm: &dyn aib_core::Communicator, cmd: &str) -> String {
    let sink = MemorySink::new();
    comm.run_checked("check", &ExecRequest::new(cmd), &sink).await.unwrap_or_else(|e| panic!("{cmd}: {e}"));
    sink.lines().into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn builds_the_example_and_the_image_boots_customized_and_generalized() {
    let state = tempfile::tempdir().unwrap();
    let _guard = KillOnDrop(state.path().to_path_buf());
    let local = backend(state.path());
    let t = example_template(|_| {});
    let report = build(&local, &t).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:#?}", report.message, report.log_tail);
    assert!(report.source.as_ref().unwrap().exact_version.as_deref().unwrap().starts_with("12."));

    // The VHD: Azure's rules.
    let vhd = report.output("debian-web-vhd").unwrap().artifact_uri.clone().unwrap();
    let vhd = PathBuf::from(vhd.strip_prefix("file://").unwrap());
    let size = aib_local::outputs::check_vhd(&vhd).unwrap();
    assert_eq!(size, 4 << 30, "osDiskSizeGB: 4");

    // The gallery version, with its replicas and manifest.
    let gallery_id = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/images/providers/Microsoft.Compute/galleries/local/images/debian-web";
    let out = report.output("debian-web-gallery").unwrap();
    assert_eq!(out.artifact_id.as_deref(), Some(format!("{gallery_id}/versions/1.0.0").as_str()));
    let versions = local.gallery().versions(gallery_id).await.unwrap();
    assert_eq!(versions.len(), 1);
    let m = &versions[0];
    assert_eq!(m.regions.get("northeurope"), Some(&2));
    assert_eq!(m.source_version, report.source.as_ref().unwrap().exact_version);
    assert_eq!(m.template_digest.as_deref(), Some(t.digest().as_str()), "the pipeline hands the template's digest to the gallery");

    // Nothing of the build is left.
    assert_eq!(qemu_processes(state.path()), 0);
    assert!(empty(&state.path().join("runs")) && empty(&state.path().join("ledger")));

    // Boot the produced image, as a user of the gallery would.
    let image = local.gallery().resolve_version(&format!("{gallery_id}/versions/latest")).await.unwrap();
    assert_eq!(image.exact_version.as_deref(), Some("1.0.0"));
    let prov = cold_provisioner(&local);
    let ctx = RunContext::detached("e2e-boot").unwrap();
    let vm = prov.provision(&aib_core::ProvisionRequest::new(image), &ctx.step("provision")).await.unwrap();
    let comm = prov.connect(&vm, &ctx.step("connect")).await.unwrap();
    assert_eq!(sh(&*comm, "cat /etc/aib-release").await, "built by aib");
    let root_gib: u64 = sh(&*comm, "df --output=size -B1G / | tail -1").await.trim().parse().unwrap();
    assert!(root_gib >= 3, "osDiskSizeGB 4 grew the root file system: {root_gib} GiB");
    assert!(sh(&*comm, "cat /opt/web/setup.log").await.contains("setup-web.sh ran"));
    assert!(sh(&*comm, "cat /opt/web/index.html").await.contains("File customizer"));
    let machine_id = sh(&*comm, "cat /etc/machine-id").await;
    let build_machine_id = sh(&*comm, "cat /var/lib/aib-build-machine-id").await;
    assert_eq!(machine_id.len(), 32);
    assert_ne!(machine_id, build_machine_id, "a fresh machine-id");
    let host_key = sh(&*comm, "sudo cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").await;
    let build_host_key = sh(&*comm, "sudo cut -d' ' -f2 /var/lib/aib-build-hostkey.pub").await;
    assert!(host_key.len() > 40 && build_host_key.len() > 40, "{host_key} / {build_host_key}");
    assert_ne!(host_key, build_host_key, "fresh host keys");
    assert_eq!(sh(&*comm, "wc -l < ~/.ssh/authorized_keys").await, "1", "the build's key is gone; only this boot's key is there");
    drop(comm);
    for r in ctx.ledger().outstanding().iter().rev() {
        prov.delete(r).await.unwrap();
        ctx.ledger().release(&r.id).unwrap();
    }
    assert_eq!(qemu_processes(state.path()), 0);
}

fn failing(v: &mut serde_json::Value, action: Option<&str>) {
    let p = &mut v["properties"];
    p["customize"] = serde_json::json!([{"type": "Shell", "name": "breaks", "inline": ["echo about to fail", "exit 7"]}]);
    p.as_object_mut().unwrap().remove("validate");
    if let Some(a) = action {
        p["errorHandling"] = serde_json::json!({"onCustomizerError": a});
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn a_failing_customizer_under_cleanup_leaves_nothing() {
    let state = tempfile::tempdir().unwrap();
    let _guard = KillOnDrop(state.path().to_path_buf());
    let local = backend(state.path());
    let report = build(&local, &example_template(|v| failing(v, None))).await;
    assert_eq!(report.run_state, RunState::Failed);
    assert!(report.message.contains("customize[0] breaks") && report.message.contains("exit code 7"), "{}", report.message);
    assert!(report.kept_vm.is_none() && report.leftover_resources.is_empty() && report.cleanup_errors.is_empty(), "{report:#?}");
    assert_eq!(qemu_processes(state.path()), 0, "no process left");
    assert!(empty(&state.path().join("runs")), "no overlay left");
    assert!(empty(&state.path().join("ledger")), "nothing for gc");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn abort_keeps_the_vm_reachable_until_gc() {
    let state = tempfile::tempdir().unwrap();
    let _guard = KillOnDrop(state.path().to_path_buf());
    let local = backend(state.path());
    let report = build(&local, &example_template(|v| failing(v, Some("abort")))).await;
    assert_eq!(report.run_state, RunState::Failed);
    let kept = report.kept_vm.clone().expect("the report says how to reach the VM");
    assert!(report.message.contains(&kept.command), "{}", report.message);
    assert_eq!(qemu_processes(state.path()), 1, "the VM runs");
    // The command in the report works, host key checked.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{} -o BatchMode=yes -o ConnectTimeout=20 cat /etc/hostname", kept.command))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A second process's gc finds and removes it.
    let again = backend(state.path());
    let provisioner = again.provisioner();
    let p: &dyn Provisioner = &*provisioner;
    let gc = again.ledger().unwrap().gc(&[p], Duration::ZERO).await.unwrap();
    assert!(gc.failed.is_empty(), "{gc:?}");
    assert!(gc.deleted.iter().any(|r| r.kind == "process"));
    assert_eq!(qemu_processes(state.path()), 0);
    assert!(empty(&state.path().join("runs")) && empty(&state.path().join("ledger")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn the_local_source_and_qemu_provisioner_pass_the_conformance_suite() {
    let state = tempfile::tempdir().unwrap();
    let _guard = KillOnDrop(state.path().to_path_buf());
    let local = backend(state.path());
    let spec = aib_testkit::conformance::debian_spec();
    let source = local.backend().registry.source(&spec).unwrap();
    let req = aib_core::ResolveRequest::new(spec.clone());
    aib_testkit::conformance::source(&*source, &req).await;
    let image = source.resolve(&req, &aib_core::StepContext::detached("resolve").unwrap()).await.unwrap();
    let prov = local.provisioner();
    // `-no-reboot`: a guest restart ends the VM, so the restart rule does not apply.
    let caps = aib_testkit::conformance::Capabilities::linux_ssh();
    aib_testkit::conformance::provisioner(&*prov, &aib_core::ProvisionRequest::new(image), &caps).await;
    assert_eq!(qemu_processes(state.path()), 0);
    assert!(empty(&state.path().join("runs")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn a_gen1_bios_image_builds_and_its_vhd_boots_with_bios() {
    let state = tempfile::tempdir().unwrap();
    let _guard = KillOnDrop(state.path().to_path_buf());
    let local = backend(state.path());
    let t = example_template(|v| {
        v["properties"]["source"]["sku"] = "12".into();
        v["properties"]["distribute"] = serde_json::json!([{"type": "VHD", "runOutputName": "gen1-vhd"}]);
    });
    let report = build(&local, &t).await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:#?}", report.message, report.log_tail);
    assert_eq!(report.source.as_ref().unwrap().attributes["firmware"], "bios");
    let vhd = report.output("gen1-vhd").unwrap().artifact_uri.clone().unwrap().replace("file://", "");
    aib_local::outputs::check_vhd(Path::new(&vhd)).unwrap();
    // The VHD itself boots: SeaBIOS, GRUB from the BIOS boot partition, no UEFI.
    let image = aib_core::ResolvedImage::new("PlatformImage", "vhd", vhd.clone())
        .with_attribute("disk", vhd.clone())
        .with_attribute("diskFormat", "vpc")
        .with_attribute("firmware", "bios");
    let prov = cold_provisioner(&local);
    let ctx = RunContext::detached("e2e-gen1").unwrap();
    let vm = prov.provision(&aib_core::ProvisionRequest::new(image), &ctx.step("provision")).await.unwrap();
    let comm = prov.connect(&vm, &ctx.step("connect")).await.unwrap();
    assert_eq!(sh(&*comm, "cat /etc/aib-release").await, "built by aib");
    assert_eq!(sh(&*comm, "if [ -d /sys/firmware/efi ]; then echo uefi; else echo bios; fi").await, "bios");
    drop(comm);
    for r in ctx.ledger().outstanding().iter().rev() {
        prov.delete(r).await.unwrap();
        ctx.ledger().release(&r.id).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn template_code_cannot_reach_the_hosts_loopback_services() {
    let state = tempfile::tempdir().unwrap();
    let _kill = KillOnDrop(state.path().to_path_buf());
    // A service on the host's loopback, as a database or the ARM test server would be.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let web = aib_testkit::http::StaticServer::start().await.unwrap();
    let signed = web.put("signed.txt", "signed content\n") + "?sv=2024-01-01&sr=b&sig=AIBMARK-local-sas-3e9a";
    // QEMU's user networking maps the host's loopback at 10.0.2.2; passt's gateway is the real
    // one. The step tries both, and the gateway its VM was given.
    let t = example_template(|v| {
        let probe = format!(
            "gw=$(ip -4 route show default | awk '{{print $3; exit}}'); echo \"gateway $gw\"; \
             for h in 10.0.2.2 $gw; do if timeout 15 bash -c \"echo hello > /dev/tcp/$h/{port}\"; then echo \"REACHED $h\"; exit 1; fi; done; \
             echo 'host loopback unreachable'"
        );
        v["properties"]["customize"] = serde_json::json!([
            {"type": "Shell", "name": "reach-the-host", "inline": [probe]},
            // A source with a marked SAS signature, for the secret scan below.
            {"type": "File", "name": "signed", "sourceUri": signed, "destination": "/tmp/signed.txt"},
        ]);
        v["properties"].as_object_mut().unwrap().remove("validate");
        v["properties"]["distribute"] = serde_json::json!([{"type": "VHD", "runOutputName": "vhd"}]);
    });
    for network in [GuestNetwork::Isolated, GuestNetwork::Outbound] {
        let local = LocalBackend::builder()
            .state_dir(state.path())
            .catalog_dir(shared_catalog())
            .warm_dir(shared_warm())
            .guest_network(network)
            .allow_source_network(aib_testkit::http::loopback())
            .build()
            .unwrap();
        aib_local::tools::check().unwrap_or_else(|e| panic!("{e}"));
        let report = build(&local, &t).await;
        assert_eq!(report.run_state, RunState::Succeeded, "{network:?}: {}\n{:?}", report.message, report.log_tail);
        assert!(report.log_tail.iter().any(|l| l.contains("host loopback unreachable")), "{network:?}: {:?}", report.log_tail);
        assert!(listener.accept().is_err(), "{network:?}: the host's loopback service was reached from the build VM");
        let gateway = report.log_tail.iter().find_map(|l| l.split("gateway ").nth(1)).unwrap_or_default().trim().to_string();
        // passt hands the VM the host's own gateway, not QEMU's 10.0.2.2.
        if network == GuestNetwork::Outbound {
            assert!(!gateway.is_empty() && gateway != "10.0.2.2", "the Outbound VM's gateway is {gateway:?}: {:?}", report.log_tail);
        }
        // The secret scan: the marked signature is in nothing the run wrote (logs, ledger,
        // report, state), disks and saved VM memory (warm states, resume points) aside.
        let mut written = serde_json::to_string(&report).unwrap();
        let mut dirs = vec![state.path().to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                let (path, ft) = (e.path(), e.file_type().unwrap());
                let disk = path.extension().is_some_and(|x| x == "qcow2" || x == "vhd" || x == "raw" || x == "state" || x == "fd");
                if ft.is_dir() {
                    dirs.push(path);
                } else if ft.is_file() && !disk {
                    written.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()));
                }
            }
        }
        assert!(written.contains("signed.txt"), "the scan reads the run's log");
        assert!(!written.contains("AIBMARK-local-sas-3e9a"), "{network:?}: the SAS signature was written");
    }
}

/// A template that records, in the image, what its build VM was: machine-id, SSH host key,
/// bytes of the kernel's RNG and the clock.
fn identity_template(local: &LocalBackend, out: &Path) -> ImageTemplate {
    let record = "sudo sh -c 'mkdir -p /var/lib/aib-id; cat /etc/machine-id > /var/lib/aib-id/machine-id; \
                  cut -d\" \" -f2 /etc/ssh/ssh_host_ed25519_key.pub > /var/lib/aib-id/host-key; \
                  head -c 32 /dev/urandom | od -An -tx1 | tr -d \" \\n\" > /var/lib/aib-id/random; date +%s > /var/lib/aib-id/clock'";
    let v = serde_json::json!({"location": "local", "apiVersion": "2025-10-01", "properties": {
        "vmProfile": {"vmSize": "Standard_D2ds_v4"},
        "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
        "customize": [{"type": "Shell", "name": "record-identity", "inline": [record]}],
        "distribute": [{"type": "LocalFile", "runOutputName": "disk", "format": "qcow2", "compression": "none", "path": out.display().to_string()}]
    }});
    let opts = aib_core::template::ParseOptions::default().with_types(local.backend().registry.type_names());
    ImageTemplate::from_json_with(&v.to_string(), &opts).unwrap().template
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn builds_restored_from_one_warm_state_share_no_identity() {
    let state = tempfile::tempdir().unwrap();
    let _guard = KillOnDrop(state.path().to_path_buf());
    // A store of its own: the first build saves its VM, the second restores it. No step
    // cache: the second build would take the first's step, and its identity, from it.
    let warm_dir = state.path().join("warm");
    let local = LocalBackend::builder()
        .state_dir(state.path())
        .catalog_dir(shared_catalog())
        .warm_dir(&warm_dir)
        .no_step_cache(true)
        .build()
        .unwrap();
    aib_local::tools::check().unwrap_or_else(|e| panic!("{e}"));
    let text = |b: Option<Vec<u8>>| String::from_utf8(b.unwrap_or_default()).unwrap().trim().to_string();
    let mut seen = Vec::new();
    for n in ["a", "b"] {
        let out = state.path().join(format!("outputs/{n}.qcow2"));
        let report = build(&local, &identity_template(&local, &out)).await;
        assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:#?}", report.message, report.log_tail);
        let log = std::fs::read_to_string(report.customization_log.as_ref().unwrap()).unwrap();
        let how = if n == "a" { "saved as warm state " } else { "restored warm state " };
        let key = log.lines().find_map(|l| l.split(how).nth(1)).map(|k| k.split_whitespace().next().unwrap().to_string());
        let key = key.unwrap_or_else(|| panic!("build {n}: no `{how}` in its log:\n{log}"));
        let id = |f: &str| text(common::file_in_image(&out, &format!("/var/lib/aib-id/{f}")));
        let (machine, host, random) = (id("machine-id"), id("host-key"), id("random"));
        let clock: u64 = id("clock").parse().unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        assert!(now.abs_diff(clock) < 600, "build {n}: the restored VM's clock was set from the host ({clock} vs {now})");
        assert_eq!((machine.len(), random.len()), (32, 64), "{machine} {random}");
        // Generalized: no host key, no build key, no machine-id in the image.
        assert_eq!(common::file_in_image(&out, "/etc/ssh/ssh_host_ed25519_key"), None, "build {n}: a host key is in the image");
        assert_eq!(common::file_in_image(&out, "/home/aib/.ssh/authorized_keys"), None, "build {n}: the build key is in the image");
        assert_eq!(text(common::file_in_image(&out, "/etc/machine-id")), "", "build {n}");
        let seed = common::file_in_image(&out, "/var/lib/systemd/random-seed").unwrap_or_default();
        seen.push((key, machine, host, random, seed, out));
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_eq!(a.0, b.0, "the second build restored the state the first saved");
    assert_ne!(a.1, b.1, "the machine-id is this build's");
    assert_ne!(a.2, b.2, "the SSH host key is this build's");
    assert_ne!(a.3, b.3, "the kernel's RNG was reseeded");
    assert!(!a.4.is_empty() && a.4 != b.4, "the random seed written at power-off is this build's");
    // And none of it is the warm state's.
    let warm = warm_dir.join(&a.0);
    let warm_disk = warm.join("overlay.qcow2");
    let warm_host = std::fs::read_to_string(warm.join("host_ed25519.pub")).unwrap();
    let warm_machine = text(common::file_in_image(&warm_disk, "/etc/machine-id"));
    let warm_seed = common::file_in_image(&warm_disk, "/var/lib/systemd/random-seed").unwrap_or_default();
    for s in &seen {
        assert!(!warm_host.contains(&s.2), "the warm host key served a build");
        assert_ne!(warm_machine, s.1, "the warm machine-id served a build");
        assert_ne!(warm_seed, s.4, "the warm random seed reached an image");
    }
    // The images boot, each with an identity of its own.
    let prov = cold_provisioner(&local);
    let mut booted = Vec::new();
    for s in &seen {
        let image = aib_core::ResolvedImage::new("PlatformImage", "out", s.5.display().to_string())
            .with_attribute("disk", s.5.display().to_string())
            .with_attribute("diskFormat", "qcow2");
        let ctx = RunContext::detached("e2e-warm-boot").unwrap();
        let vm = prov.provision(&aib_core::ProvisionRequest::new(image), &ctx.step("provision")).await.unwrap();
        let comm = prov.connect(&vm, &ctx.step("connect")).await.unwrap();
        let host = sh(&*comm, "sudo cut -d' ' -f2 /etc/ssh/ssh_host_ed25519_key.pub").await;
        let machine = sh(&*comm, "cat /etc/machine-id").await;
        let seed = sh(&*comm, "sudo sha256sum /var/lib/systemd/random-seed | cut -c1-64").await;
        drop(comm);
        for r in ctx.ledger().outstanding().iter().rev() {
            prov.delete(r).await.unwrap();
            ctx.ledger().release(&r.id).unwrap();
        }
        assert!(!warm_host.contains(&host) && host != s.2, "a first boot's host key");
        assert!(machine != warm_machine && machine != s.1, "a first boot's machine-id");
        booted.push((host, machine, seed));
    }
    assert_ne!(booted[0], booted[1], "two images of one warm state boot as different machines");
    assert_eq!(qemu_processes(state.path()), 0);
}
