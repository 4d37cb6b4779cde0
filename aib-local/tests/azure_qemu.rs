//! The Azure provisioner on a real VM: the ARM test server's VMs backed by QEMU guests booted
//! from the local catalog's Debian 12 (UEFI) with the VM body's `customData` as cloud-init's
//! user data — so cloud-init itself installs the host key aib chose, and the admin user comes
//! from `osProfile` as Azure's provisioning agent would make it. Ignored by default (a VM boot
//! under TCG takes half a minute); the test command runs it in its end-to-end step.

use aib_core::template::ImageTemplate;
use aib_core::{Event, OutputSink, Pipeline, RunState};
use aib_testkit::arm::ArmServer;
use aib_testkit::guest::{Guest, GuestHost, GuestSpec};
use aib_testkit::http::StaticServer;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

mod common;
use common::{qemu_processes, shared_catalog};

const SUB: &str = "00000000-0000-0000-0000-0000000000e2";

/// Debian VMs from one base disk.
#[derive(Debug)]
struct QemuGuests {
    base: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

struct QemuGuest {
    child: Child,
    name: String,
}

impl std::fmt::Debug for QemuGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QemuGuest").field("name", &self.name).field("pid", &self.child.id()).finish()
    }
}

impl Guest for QemuGuest {}

impl Drop for QemuGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() { Ok(()) } else { Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr))) }
}

impl GuestHost for QemuGuests {
    fn port(&self) -> u16 {
        self.port
    }

    fn start(&self, spec: &GuestSpec) -> Result<Box<dyn Guest>, String> {
        let d = self.dir.path().join(&spec.computer_name);
        std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
        let overlay = d.join("overlay.qcow2");
        run(Command::new("qemu-img").args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"]).arg(&self.base).arg(&overlay))?;
        // What Azure's agent does from `osProfile`: the admin user with its keys; the rest of
        // the user data is the VM's own `customData`. (`locale: false`: the minimal base image
        // has no locales, which Azure's images do.)
        let keys: String = spec.authorized_keys.iter().map(|k| format!("      - {k}\n")).collect();
        let user_data = format!(
            "{}\nlocale: false\nusers:\n  - name: {}\n    sudo: \"ALL=(ALL) NOPASSWD:ALL\"\n    shell: /bin/bash\n    lock_passwd: true\n    ssh_authorized_keys:\n{keys}",
            spec.custom_data.as_deref().unwrap_or("#cloud-config").trim_end(),
            spec.admin_user
        );
        std::fs::write(d.join("user-data"), user_data).map_err(|e| e.to_string())?;
        std::fs::write(d.join("meta-data"), format!("instance-id: {}\nlocal-hostname: {}\n", spec.vm_id.len(), spec.computer_name))
            .map_err(|e| e.to_string())?;
        run(Command::new("genisoimage")
            .args(["-quiet", "-volid", "cidata", "-joliet", "-rock", "-output"])
            .arg(d.join("seed.iso"))
            .arg(d.join("user-data"))
            .arg(d.join("meta-data")))?;
        std::fs::copy(aib_local::tools::OVMF_VARS, d.join("vars.fd")).map_err(|e| e.to_string())?;
        let accel = match aib_local::tools::Accelerator::probe() {
            aib_local::tools::Accelerator::Kvm => ["-accel", "kvm", "-cpu", "host"],
            _ => ["-accel", "tcg", "-cpu", "max"],
        };
        let console = std::fs::File::create(d.join("console.log")).map_err(|e| e.to_string())?;
        let child = Command::new("qemu-system-x86_64")
            .args(accel)
            .args(["-machine", "q35", "-smp", "2", "-m", "1536", "-display", "none", "-no-reboot", "-drive"])
            .arg(format!("if=pflash,format=raw,readonly=on,file={}", aib_local::tools::OVMF_CODE))
            .arg("-drive")
            .arg(format!("if=pflash,format=raw,file={}", d.join("vars.fd").display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2,cache=unsafe", overlay.display()))
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=raw,readonly=on", d.join("seed.iso").display()))
            .args(["-netdev", &format!("user,id=n0,hostfwd=tcp:{}:{}-:22", spec.address, self.port), "-device", "virtio-net-pci,netdev=n0"])
            .args(["-device", "virtio-rng-pci", "-serial", "stdio", "-monitor", "none"])
            .stdin(Stdio::null())
            .stdout(console.try_clone().map_err(|e| e.to_string())?)
            .stderr(console)
            .spawn()
            .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
        let mut guest = QemuGuest { child, name: spec.computer_name.clone() };
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(Some(st)) = guest.child.try_wait() {
            return Err(format!("qemu exited ({st}): {}", std::fs::read_to_string(d.join("console.log")).unwrap_or_default()));
        }
        Ok(Box::new(guest))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots a VM: run by the test command's end-to-end step"]
async fn the_azure_provisioner_builds_on_a_real_debian_vm() {
    aib_local::tools::check().unwrap_or_else(|e| panic!("{e}"));
    let state = tempfile::tempdir().unwrap();
    let local = aib_local::LocalBackend::builder().state_dir(state.path()).catalog_dir(shared_catalog()).build().unwrap();
    let base = local.catalog().resolve("Debian", "debian-12", "12-gen2", "latest", &aib_core::NullSink as &dyn OutputSink).await.unwrap();
    let disk = PathBuf::from(base.attributes["disk"].as_str().unwrap());
    let version = base.exact_version.clone().unwrap();

    let guests = Arc::new(QemuGuests { base: disk, port: aib_testkit::sshd::free_port().unwrap(), dir: tempfile::tempdir().unwrap() });
    let guest_dir = guests.dir.path().to_path_buf();
    let s = ArmServer::start_with(0, Some(guests.clone() as Arc<dyn GuestHost>)).await.unwrap();
    s.add_marketplace_image("westus2", "Debian", "debian-12", "12-gen2", &version);
    let arm = aib_azure::ArmClient::builder()
        .endpoint(s.url())
        .credential(aib_azure::Credential::static_token("t"))
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    arm.put(&format!("/subscriptions/{SUB}/resourceGroups/images"), "2021-04-01", &json!({"location": "westus2"})).await.unwrap();

    // The corpus's Linux template, placeholders filled, its downloads served here, its
    // package install shown rather than run (no network from tests).
    let web = StaticServer::start().await.unwrap();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../aib-core/tests/corpus/quickstarts/azvmimagebuilder__quickquickstarts__0_Creating_a_Custom_Linux_Managed_Image__helloImageTemplateLinux.json"
    );
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let c = &mut v["properties"]["customize"];
    let s2 = "#!/bin/sh\necho checksummed script ran on $(hostname)\n";
    c[0]["scriptUri"] = web.put("customizeScript.sh", "#!/bin/sh\necho customizeScript ran on $(hostname)\n").into();
    c[1]["scriptUri"] = web.put("customizeScript2.sh", s2).into();
    c[1]["sha256Checksum"] = aib_customizers::fetch::sha256_hex(s2.as_bytes()).into();
    c[2]["sourceUri"] = web.put("index.html", "<h1>hello</h1>\n").into();
    c[4]["inline"] = json!(["echo would run: sudo apt install unattended-upgrades", "test -f /buildArtifacts/index.html"]);
    v["properties"]["source"] =
        json!({"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"});
    let text = aib_testkit::corpus::fill_placeholders(
        &v.to_string(),
        SUB,
        "images",
        &[("<region>", "westus2"), ("<imageName>", "debian-azure"), ("<runOutputName>", "debian")],
    );
    let mut t = ImageTemplate::from_json(&text).unwrap().template;
    t.name = Some("debian-on-qemu".into());

    let provisioner = aib_azure::AzureProvisioner::builder()
        .arm(arm)
        .subscription(SUB)
        .resource_group("images")
        .ssh_port(guests.port)
        .allowed_source("127.0.0.1/32")
        .connect_timeout(Duration::from_secs(600));
    let backend =
        aib_azure::AzureBackend::builder().provisioner(provisioner).allow_source_network(aib_testkit::http::loopback()).build().unwrap();
    let mut run = Pipeline::from_template(&t, &backend.backend()).unwrap().build().unwrap().start();
    let events: Vec<Event> = run.events().collect().await;
    let report = run.wait().await;
    assert_eq!(report.run_state, RunState::Succeeded, "{}\n{:?}", report.message, report.log_tail);
    let lines: Vec<String> =
        events.iter().filter_map(|e| if let Event::Output { line, .. } = e { Some(line.clone()) } else { None }).collect();
    // Customizers ran on the VM (its hostname is the VM's computerName), cloud-init took the
    // host key from customData (the connection was verified), and it was deprovisioned.
    assert!(lines.iter().any(|l| l.starts_with("customizeScript ran on aib-")), "{lines:#?}");
    assert!(lines.iter().any(|l| l.starts_with("checksummed script ran on aib-")));
    assert!(lines.iter().any(|l| l == "aib: deprovisioning without waagent"), "{lines:#?}");
    assert!(events.iter().any(|e| matches!(e, Event::Notice { message } if message.contains("host key verified"))));
    assert_eq!(
        report.run_outputs[0].artifact_id.as_deref(),
        Some(format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/debian-azure").as_str())
    );
    let left: Vec<String> = s.resource_ids().into_iter().filter(|id| !id.contains("/Microsoft.Compute/images/")).collect();
    assert_eq!(left, Vec::<String>::new(), "only the staging group stays");
    assert_eq!(qemu_processes(&guest_dir), 0, "the VM was stopped when it was deallocated");
}
