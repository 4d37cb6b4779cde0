//! The step cache end to end: a build keeps a resume point after its slow first step, a
//! second build of the same template starts there, and its image holds what the image of a
//! build without the cache holds, file for file; nothing of the point reaches either image,
//! and pruning leaves nothing.
//!
//! It boots real VMs (minutes under TCG), so it is `#[ignore]`d in the quick test run and run
//! by the e2e step of `scripts/test.sh`:
//! `cargo test -p aib-local --test step_cache -- --ignored --test-threads=1`.

use aib_core::template::{ImageTemplate, ParseOptions};
use aib_core::{Pipeline, RunReport, RunState};
use aib_local::LocalBackend;
use common::{qemu_processes, shared_catalog};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::Path;

mod common;

/// Three steps: a slow one (a resume point is kept after it), a file, and the last one.
fn template(local: &LocalBackend, files: &Path, out: &Path) -> ImageTemplate {
    std::fs::write(files.join("page.html"), "<h1>cached or not</h1>\n").unwrap();
    let sum = hex::encode(sha2::Sha256::digest(std::fs::read(files.join("page.html")).unwrap()));
    let v = serde_json::json!({
        "location": "local",
        "properties": {
            "vmProfile": {"vmSize": "Standard_D2s_v3"},
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
            "customize": [
                {"type": "Shell", "name": "slow-setup", "inline": [
                    "sleep 3",
                    "sudo mkdir -p /opt/tree /etc/cached-step",
                    "for i in 1 2 3; do echo \"line $i\" | sudo tee /opt/tree/$i >/dev/null; done",
                    "echo setup | sudo tee /etc/cached-step/conf >/dev/null",
                    "sudo useradd -m -s /bin/bash webuser"
                ]},
                {"type": "File", "name": "page", "sourceUri": format!("file://{}", files.join("page.html").display()),
                    "destination": "/tmp/page.html", "sha256Checksum": sum},
                {"type": "Shell", "name": "install", "inline": [
                    "sudo install -m 0644 /tmp/page.html /opt/page.html",
                    "rm -f /tmp/page.html",
                    "echo done | sudo tee /opt/last >/dev/null"
                ]}
            ],
            "distribute": [{"type": "LocalFile", "runOutputName": "image", "format": "qcow2", "path": out.display().to_string()}]
        }
    });
    let opts = ParseOptions::default().with_types(local.backend().registry.type_names());
    ImageTemplate::from_json_with(&v.to_string(), &opts).unwrap().template
}

async fn build(local: &LocalBackend, t: &ImageTemplate, cache: bool) -> RunReport {
    let p = Pipeline::from_template(t, &local.backend())
        .unwrap()
        .ledger(local.ledger().unwrap())
        .log_dir(local.log_dir())
        .cache(cache)
        .build()
        .unwrap();
    let r = p.run().await;
    assert_eq!(r.run_state, RunState::Succeeded, "{}\n{:#?}", r.message, r.log_tail);
    r
}

/// Every file, link and directory under the root file system's `dirs` in `disk`, with its
/// content digest, owner and mode, read offline (`debugfs rdump` of a raw copy).
fn tree(disk: &Path, dirs: &[&str]) -> BTreeMap<String, String> {
    let work = tempfile::tempdir().unwrap();
    let raw = work.path().join("disk.raw");
    let st = std::process::Command::new("qemu-img").arg("convert").arg("-O").arg("raw").arg(disk).arg(&raw).status().unwrap();
    assert!(st.success());
    let table = std::process::Command::new("sfdisk").arg("-J").arg(&raw).output().unwrap();
    let table: serde_json::Value = serde_json::from_slice(&table.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().cloned().unwrap();
    let root = parts.iter().find(|p| p["name"] == "root").or_else(|| parts.iter().max_by_key(|p| p["size"].as_u64())).unwrap().clone();
    let offset = root["start"].as_u64().unwrap() * 512;
    let dump = work.path().join("dump");
    std::fs::create_dir(&dump).unwrap();
    for d in dirs {
        let out = std::process::Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump {d} {}", dump.display()))
            .arg(format!("{}?offset={offset}", raw.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "debugfs rdump {d}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut files = BTreeMap::new();
    let mut stack = vec![dump.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            use std::os::unix::fs::MetadataExt;
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(&dump).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else {
                hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()))
            };
            files.insert(rel, format!("{what} {}:{} {:o}", m.uid(), m.gid(), m.mode() & 0o7777));
        }
    }
    files
}

/// What differs between any two builds of one template, cached or not: what generalization
/// removes or empties and what every boot rewrites (random seed, timers' stamps, DHCP leases,
/// sudo's and logrotate's state).
fn unique_per_build(path: &str) -> bool {
    const PER_BUILD: &[&str] = &[
        "lib/systemd/random-seed",
        "lib/systemd/timers",
        "lib/systemd/timesync",
        "lib/systemd/catalog",
        "lib/systemd/linger",
        "lib/dhcp",
        "lib/private",
        "lib/sudo",
        "lib/logrotate",
        "lib/apt/periodic",
        "lib/dpkg/lock",
        "lib/polkit-1",
        "lib/waagent",
    ];
    PER_BUILD.iter().any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "boots QEMU VMs for minutes; run by the e2e step of scripts/test.sh"]
async fn a_cache_hit_builds_the_image_a_build_without_the_cache_builds() {
    aib_local::tools::check().unwrap_or_else(|e| panic!("{e}"));
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    // The shared warm states: a resume point descends from the state its build restored.
    let local = LocalBackend::builder()
        .state_dir(state.path())
        .catalog_dir(shared_catalog())
        .warm_dir(common::shared_warm())
        .allow_file_root(files.path())
        .build()
        .unwrap();
    let out = |n: &str| state.path().join(format!("outputs/{n}.qcow2"));

    // The first build keeps a point after its slow first step; the second starts there.
    let r = build(&local, &template(&local, files.path(), &out("first")), true).await;
    let c = r.cache.as_ref().unwrap();
    assert!(c.hits.is_empty());
    assert_eq!(c.kept, ["customize[0] slow-setup"], "{c:?}\n{:#?}", r.log_tail);
    let cache = local.provisioner().step_cache().cloned().unwrap();
    // The point counts once it is synced, beside the build.
    for _ in 0..100 {
        if !cache.list().await.unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(cache.list().await.unwrap().len(), 1);
    let hit = build(&local, &template(&local, files.path(), &out("hit")), true).await;
    let c = hit.cache.as_ref().unwrap();
    assert_eq!(c.hits, ["customize[0] slow-setup"], "{c:?}\n{:#?}", hit.log_tail);
    assert!(hit.step("customize[0] slow-setup").unwrap().cached);
    let log = std::fs::read_to_string(hit.customization_log.as_ref().unwrap()).unwrap();
    assert!(log.contains("restored the resume point after `customize[0] slow-setup`"), "{log}");
    let plain = build(&local, &template(&local, files.path(), &out("plain")), false).await;
    assert!(plain.cache.is_none() && !plain.steps.iter().any(|s| s.cached));

    // The same file systems, but for what differs between any two builds.
    let dirs = ["/etc", "/opt", "/home", "/root", "/usr/local", "/var/lib"];
    let (a, b) = (tree(&out("hit"), &dirs), tree(&out("plain"), &dirs));
    assert!(
        a.contains_key("opt/tree/3") && a.contains_key("opt/page.html") && a.contains_key("etc/cached-step/conf"),
        "{:?}",
        a.keys().take(20).collect::<Vec<_>>()
    );
    let differ: Vec<String> = a
        .keys()
        .chain(b.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k) && !unique_per_build(k))
        .map(|k| format!("{k}: {:?} vs {:?}", a.get(k), b.get(k)))
        .collect();
    // Generalized: cloud-init's state is gone (it boots as a new instance), in both.
    for t in [&a, &b] {
        let cloud: Vec<&String> = t.keys().filter(|k| k.starts_with("lib/cloud/")).collect();
        assert!(cloud.is_empty(), "cloud-init's state is in the image: {cloud:?}");
    }
    assert!(differ.is_empty(), "the cached build's image differs from the uncached one's:\n{}", differ.join("\n"));

    // Nothing of the resume point reaches the image: not its keys, no host key, no build key.
    let entry = &cache.list().await.unwrap()[0];
    let point_host = std::fs::read_to_string(entry.dir.join("host_ed25519.pub")).unwrap();
    for n in ["hit", "plain"] {
        assert_eq!(common::file_in_image(&out(n), "/etc/ssh/ssh_host_ed25519_key.pub"), None, "{n}: a host key is in the image");
        assert_eq!(common::file_in_image(&out(n), "/home/aib/.ssh/authorized_keys"), None, "{n}: a build key is in the image");
    }
    assert!(!a.values().any(|v| v.contains(point_host.split_whitespace().nth(1).unwrap())));

    // Pruning everything leaves no entry, and no build left a VM or a run directory.
    let kept = cache.list().await.unwrap().len();
    assert!(kept >= 1);
    assert_eq!(cache.prune(true).await.unwrap().len(), kept);
    assert!(cache.list().await.unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(cache.dir()).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(std::fs::read_dir(state.path().join("runs")).unwrap().next().is_none(), "a run directory is left");
    assert_eq!(qemu_processes(state.path()), 0);
}
