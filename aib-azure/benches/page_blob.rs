//! Uploads a fixed VHD to a page blob in Azurite and prints the time and the bytes sent.
//!
//! `cargo bench -p aib-azure --bench page_blob` uses `AIB_BENCH_VHD`, or makes a fixed VHD of
//! the newest Debian base in `~/.cache/aib/catalog` (the local backend builds it). Under
//! `cargo test` it uploads a small generated disk once, as a smoke test. Azurite is a single
//! Node process on the same cores: the figures are emulator-bound, not Azure throughput.

use aib_azure::upload::{BlobTarget, data_ranges, upload_page_blob};
use aib_core::NullSink;
use aib_testkit::azurite::{ACCOUNT, Azurite, KEY};
use azure_storage::{CloudLocation, StorageCredentials};
use std::path::PathBuf;
use std::time::Instant;

fn base_vhd(dir: &std::path::Path, bench: bool) -> PathBuf {
    if let Some(p) = std::env::var_os("AIB_BENCH_VHD") {
        return PathBuf::from(p);
    }
    let vhd = dir.join("disk.vhd");
    let catalog = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/aib/catalog/debian/debian-12/12-gen2");
    let newest =
        std::fs::read_dir(&catalog).ok().and_then(|d| d.flatten().map(|e| e.path().join("disk.qcow2")).filter(|p| p.exists()).max());
    let (src, fmt) = match (bench, newest) {
        (true, Some(p)) => (p, "qcow2"),
        _ => {
            let raw = dir.join("small.raw");
            let f = std::fs::File::create(&raw).unwrap();
            f.set_len(32 << 20).unwrap();
            drop(f);
            std::fs::write(dir.join("data"), vec![7u8; 1 << 20]).unwrap();
            let st = std::process::Command::new("dd")
                .args([
                    &format!("if={}", dir.join("data").display()),
                    &format!("of={}", raw.display()),
                    "bs=1M",
                    "seek=3",
                    "conv=notrunc",
                    "status=none",
                ])
                .status()
                .unwrap();
            assert!(st.success());
            (raw, "raw")
        }
    };
    let st = std::process::Command::new("qemu-img")
        .args(["convert", "-f", fmt, "-O", "vpc", "-o", "subformat=fixed,force_size=on"])
        .arg(&src)
        .arg(&vhd)
        .status()
        .expect("qemu-img");
    assert!(st.success());
    vhd
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let dir = tempfile::tempdir().unwrap();
    let vhd = base_vhd(dir.path(), bench);
    let size = std::fs::metadata(&vhd).unwrap().len();
    let allocated: u64 = data_ranges(&vhd).await.unwrap().iter().map(|r| r.1).sum();
    let azurite = Azurite::start().unwrap_or_else(|e| panic!("{e}"));
    let runs = if bench { 3 } else { 1 };
    let mut times = Vec::new();
    let mut sent = 0;
    for i in 0..runs {
        let target = BlobTarget {
            location: CloudLocation::Custom { account: ACCOUNT.into(), uri: azurite.endpoint() },
            credentials: StorageCredentials::access_key(ACCOUNT, azure_core::auth::Secret::new(KEY)),
            container: "vhds".into(),
            blob: format!("disk-{i}.vhd"),
        };
        let t = Instant::now();
        let stats = upload_page_blob(&vhd, &target, 8, &NullSink).await.unwrap();
        times.push(t.elapsed());
        sent = stats.sent;
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "page-blob upload of {} ({} MiB apparent, {} MiB allocated): median {:.2} s of {runs}, {} MiB sent, {:.0} MiB/s effective",
        vhd.display(),
        size >> 20,
        allocated >> 20,
        median.as_secs_f64(),
        sent >> 20,
        (sent as f64 / 1048576.0) / median.as_secs_f64()
    );
}
