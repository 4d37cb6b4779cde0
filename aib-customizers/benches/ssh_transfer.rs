//! SSH against OpenSSH on this machine: connect time, and a 100 MiB upload by SFTP, by the
//! `cat` fallback, and by OpenSSH's own `scp`, side by side.
//!
//! `cargo bench -p aib-customizers --bench ssh_transfer` (needs openssh-server and
//! openssh-client). Under `cargo test` it runs once with 1 MiB, as a smoke test.

use aib_core::{Communicator, ExecRequest, NullSink, UploadContent, UploadRequest};
use aib_customizers::ssh::{HostKeyCheck, SshCommunicator, SshConfig, ephemeral_key, public_key_line};
use aib_testkit::sshd::Sshd;
use std::process::Command;
use std::time::{Duration, Instant};

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / d.as_secs_f64()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let (size, runs) = if bench { (100u64 << 20, 3) } else { (1 << 20, 1) };
    let sshd = Sshd::start().unwrap_or_else(|e| panic!("{e}"));
    let key = ephemeral_key().unwrap();
    sshd.authorize(&public_key_line(&key, "bench").unwrap()).unwrap();
    let cfg = SshConfig::builder()
        .host("127.0.0.1")
        .port(sshd.port())
        .user(sshd.user())
        .key(key)
        .host_key(HostKeyCheck::Fingerprint(sshd.host_fingerprint().unwrap()))
        .build()
        .unwrap();

    let mut connects = Vec::new();
    for _ in 0..if bench { 10 } else { 1 } {
        let t = Instant::now();
        let c = SshCommunicator::connect(cfg.clone()).await.unwrap();
        c.execute(&ExecRequest::new("true"), &NullSink).await.unwrap();
        connects.push(t.elapsed());
    }
    println!("connect + first command (median of {}): {:.1} ms", connects.len(), median(connects).as_secs_f64() * 1000.0);

    let c = SshCommunicator::connect(cfg.clone()).await.unwrap();
    let dir = sshd.scratch();
    let src = dir.join("payload.bin");
    let data: Vec<u8> = (0..size).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    drop(data);
    let dest = dir.join("uploaded.bin").display().to_string();

    let mut sftp = Vec::new();
    let mut exec = Vec::new();
    let mut scp = Vec::new();
    let mut fresh = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let c2 = SshCommunicator::connect(cfg.clone()).await.unwrap();
        c2.upload(&UploadRequest::new(UploadContent::File(src.clone()), dest.clone())).await.unwrap();
        fresh.push(t.elapsed());
        let t = Instant::now();
        c.upload(&UploadRequest::new(UploadContent::File(src.clone()), dest.clone())).await.unwrap();
        sftp.push(t.elapsed());
        let t = Instant::now();
        c.upload_with_exec(&UploadRequest::new(UploadContent::File(src.clone()), dest.clone())).await.unwrap();
        exec.push(t.elapsed());
        let t = Instant::now();
        let st = Command::new("scp")
            .args(["-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-P"])
            .arg(sshd.port().to_string())
            .arg("-i")
            .arg(sshd.user_key_path())
            .arg(&src)
            .arg(format!("{}@127.0.0.1:{dest}", sshd.user()))
            .status()
            .expect("scp (apt-get install -y openssh-client)");
        assert!(st.success());
        scp.push(t.elapsed());
    }
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), size);
    let (s, e, o, f) = (median(sftp), median(exec), median(scp), median(fresh));
    println!("upload {} MiB, median of {runs}:", size >> 20);
    println!("  aib SFTP        {:>8.1} MiB/s  ({:.2} s)", mib_s(size, s), s.as_secs_f64());
    println!("  aib exec `cat`  {:>8.1} MiB/s  ({:.2} s)", mib_s(size, e), e.as_secs_f64());
    println!("  aib connect+SFTP{:>8.1} MiB/s  ({:.2} s)  (like scp: a new connection each time)", mib_s(size, f), f.as_secs_f64());
    println!("  OpenSSH scp     {:>8.1} MiB/s  ({:.2} s)", mib_s(size, o), o.as_secs_f64());
    println!(
        "  ratios to scp (above 1 = faster): connect+SFTP {:.2}, SFTP on an open connection {:.2}, exec {:.2}",
        o.as_secs_f64() / f.as_secs_f64(),
        o.as_secs_f64() / s.as_secs_f64(),
        o.as_secs_f64() / e.as_secs_f64()
    );
}
