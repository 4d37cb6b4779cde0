//! The SSH communicator against a real OpenSSH sshd on 127.0.0.1.

use aib_core::{Communicator, Error, ExecRequest, MemorySink, OutputStream, ReconnectOptions, UploadContent, UploadRequest};
use aib_customizers::ssh::{HostKeyCheck, SshCommunicator, SshConfig, ephemeral_key, public_key_line};
use aib_testkit::conformance::{self, Capabilities};
use aib_testkit::sshd::Sshd;
use sha2::{Digest, Sha256};
use std::time::Duration;

fn config(sshd: &Sshd, check: HostKeyCheck) -> SshConfig {
    let key = ephemeral_key().unwrap();
    sshd.authorize(&public_key_line(&key, "aib-test").unwrap()).unwrap();
    SshConfig::builder()
        .host("127.0.0.1")
        .port(sshd.port())
        .user(sshd.user())
        .key(key)
        .host_key(check)
        .connect_timeout(Duration::from_secs(20))
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(500))
        .build()
        .unwrap()
}

async fn connect(sshd: &Sshd) -> SshCommunicator {
    SshCommunicator::connect(config(sshd, HostKeyCheck::Fingerprint(sshd.host_fingerprint().unwrap()))).await.unwrap()
}

fn start() -> Sshd {
    Sshd::start().unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn passes_the_communicator_conformance_suite() {
    let sshd = start();
    let c = connect(&sshd).await;
    conformance::communicator(&c, &Capabilities::linux_ssh()).await;
}

#[tokio::test]
async fn passes_the_conformance_suite_with_exec_uploads() {
    let sshd = start();
    let key = ephemeral_key().unwrap();
    sshd.authorize(&public_key_line(&key, "aib-test").unwrap()).unwrap();
    let cfg = SshConfig::builder()
        .host("127.0.0.1")
        .port(sshd.port())
        .user(sshd.user())
        .key(key)
        .host_key(HostKeyCheck::PublicKey(sshd.host_public_key()))
        .sftp(false)
        .build()
        .unwrap();
    let c = SshCommunicator::connect(cfg).await.unwrap();
    conformance::communicator(&c, &Capabilities::linux_ssh()).await;
}

#[tokio::test]
async fn an_unauthorized_key_is_refused_by_the_deadline() {
    let sshd = start();
    let cfg = SshConfig::builder()
        .host("127.0.0.1")
        .port(sshd.port())
        .user(sshd.user())
        .key(ephemeral_key().unwrap())
        .host_key(HostKeyCheck::PublicKey(sshd.host_public_key()))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let err = SshCommunicator::connect(cfg).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }) && err.to_string().contains("refused"), "{err}");
}

#[tokio::test]
async fn a_wrong_host_key_is_refused_at_once() {
    let sshd = start();
    let other = ephemeral_key().unwrap();
    let wrong = aib_customizers::ssh::fingerprint(&public_key_line(&other, "x").unwrap()).unwrap();
    let t = std::time::Instant::now();
    let err = SshCommunicator::connect(config(&sshd, HostKeyCheck::Fingerprint(wrong.clone()))).await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
    let msg = format!("{err:?}");
    assert!(msg.contains(&sshd.host_fingerprint().unwrap()) && msg.contains(&wrong), "names both keys: {msg}");
    assert!(t.elapsed() < Duration::from_secs(5), "not retried until the deadline");
    // The loudly named opt-in connects to anything.
    let c = SshCommunicator::connect(config(&sshd, HostKeyCheck::InsecureAcceptAnyHostKey)).await.unwrap();
    assert!(c.execute(&ExecRequest::new("true"), &MemorySink::new()).await.unwrap().success());
}

#[tokio::test]
async fn connect_retries_until_a_late_sshd_is_up() {
    let mut sshd = Sshd::prepare().unwrap_or_else(|e| panic!("{e}"));
    let cfg = config(&sshd, HostKeyCheck::Fingerprint(sshd.host_fingerprint().unwrap()));
    let connecting = tokio::spawn(SshCommunicator::connect(cfg));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    sshd.launch().unwrap();
    let c = connecting.await.unwrap().unwrap();
    assert!(c.last_connect_time() >= Duration::from_millis(1400), "{:?}", c.last_connect_time());
    assert!(c.execute(&ExecRequest::new("true"), &MemorySink::new()).await.unwrap().success());
}

#[tokio::test]
async fn connect_gives_up_at_the_deadline() {
    let port = aib_testkit::sshd::free_port().unwrap();
    let cfg = SshConfig::builder()
        .host("127.0.0.1")
        .port(port)
        .user("nobody")
        .key(ephemeral_key().unwrap())
        .host_key(HostKeyCheck::InsecureAcceptAnyHostKey)
        .connect_timeout(Duration::from_secs(1))
        .retry_backoff(Duration::from_millis(100), Duration::from_millis(200))
        .build()
        .unwrap();
    let err = SshCommunicator::connect(cfg).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("attempts"), "{err}");
}

#[tokio::test]
async fn sshd_killed_mid_command_is_a_clean_disconnect() {
    let mut sshd = start();
    let c = std::sync::Arc::new(connect(&sshd).await);
    let c2 = c.clone();
    let running = tokio::spawn(async move { c2.execute(&ExecRequest::new("echo started; sleep 60"), &MemorySink::new()).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    sshd.kill_all();
    let r = tokio::time::timeout(Duration::from_secs(40), running).await.expect("no hang").unwrap();
    let err = r.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }) && err.is_retryable(), "{err}");
    // Later commands fail fast too.
    let err = tokio::time::timeout(Duration::from_secs(40), c.execute(&ExecRequest::new("true"), &MemorySink::new()))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
}

#[tokio::test]
async fn expected_disconnect_then_reconnect() {
    let mut sshd = start();
    let c = connect(&sshd).await;
    // The command takes the connection down with it, as a reboot does.
    let st = c.execute(&ExecRequest::new("kill -KILL $PPID").expecting_disconnect(), &MemorySink::new()).await.unwrap();
    assert!(st.disconnected && st.success(), "{st:?}");
    // The "machine" goes away and comes back on the same address with the same host key.
    sshd.kill_all();
    let relaunch = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(800));
        sshd.launch().unwrap();
        sshd
    });
    c.reconnect(&ReconnectOptions::with_timeout(Duration::from_secs(20))).await.unwrap();
    let _sshd = relaunch.await.unwrap();
    let sink = MemorySink::new();
    assert!(c.execute(&ExecRequest::new("echo back"), &sink).await.unwrap().success());
    assert_eq!(sink.lines()[0].1, "back");
}

#[tokio::test]
async fn large_output_arrives_line_by_line() {
    let sshd = start();
    let c = connect(&sshd).await;
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new("seq 1 200000; seq 1 1000 >&2"), &sink).await.unwrap();
    assert!(st.success());
    let lines = sink.lines();
    let out: Vec<&str> = lines.iter().filter(|(s, _)| *s == OutputStream::Stdout).map(|(_, l)| l.as_str()).collect();
    let err = lines.iter().filter(|(s, _)| *s == OutputStream::Stderr).count();
    assert_eq!(out.len(), 200_000);
    assert_eq!(out[0], "1");
    assert_eq!(out[199_999], "200000");
    assert_eq!(err, 1000);
}

#[tokio::test]
async fn binary_uploads_arrive_intact_by_sftp_and_by_exec() {
    let sshd = start();
    let c = connect(&sshd).await;
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let want = hex::encode(Sha256::digest(&data));
    let dest = sshd.scratch().join("blob.bin").display().to_string();
    let file = sshd.scratch().join("local.bin");
    std::fs::write(&file, &data).unwrap();
    for (how, req) in [
        ("sftp bytes", UploadRequest::bytes(data.clone(), dest.clone())),
        ("sftp file", UploadRequest::new(UploadContent::File(file.clone()), dest.clone()).with_mode(0o640)),
    ] {
        let n = c.upload(&req).await.unwrap();
        assert_eq!(n, data.len() as u64, "{how}");
        let sink = MemorySink::new();
        c.execute(&ExecRequest::new(format!("sha256sum {dest}")), &sink).await.unwrap();
        assert!(sink.lines()[0].1.starts_with(&want), "{how}: {:?}", sink.lines());
    }
    let meta = std::fs::metadata(&dest).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    let n = c.upload_with_exec(&UploadRequest::bytes(data.clone(), format!("{dest}.exec"))).await.unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(std::fs::read(format!("{dest}.exec")).unwrap(), data);
    // A destination whose directory is missing fails with the reason.
    let err = c.upload_with_exec(&UploadRequest::bytes(vec![1, 2, 3], "/nonexistent-dir/x")).await.unwrap_err();
    assert!(err.to_string().contains("No such file or directory"), "{err}");
}

#[tokio::test]
async fn exit_codes_signals_env_sudo_and_timeouts() {
    let sshd = start();
    let c = connect(&sshd).await;
    let st = c.execute(&ExecRequest::new("exit 42"), &MemorySink::new()).await.unwrap();
    assert_eq!(st.code, Some(42));
    let st = c.execute(&ExecRequest::new("kill -TERM $$"), &MemorySink::new()).await.unwrap();
    assert!(st.signal.is_some() || st.code == Some(143), "{st:?}");
    let sink = MemorySink::new();
    let req = ExecRequest::new("printf '%s\\n' \"$GREETING\"").with_env("GREETING", "it's \"quoted\" $(not run)");
    c.execute(&req, &sink).await.unwrap();
    assert_eq!(sink.lines()[0].1, "it's \"quoted\" $(not run)");
    assert!(c.execute(&ExecRequest::new("true").with_env("BAD-NAME", "x"), &MemorySink::new()).await.is_err());
    let sink = MemorySink::new();
    let st = c.execute(&ExecRequest::new("id -u").elevated(), &sink).await.unwrap();
    assert!(st.success(), "sudo -n must work for the build user: {:?}", sink.lines());
    assert_eq!(sink.lines()[0].1, "0");
    let t = std::time::Instant::now();
    let err = c.execute(&ExecRequest::new("sleep 30").with_timeout(Duration::from_millis(500)), &MemorySink::new()).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5));
    // The connection is still usable after a timed-out command.
    assert!(c.execute(&ExecRequest::new("true"), &MemorySink::new()).await.unwrap().success());
}

#[tokio::test]
async fn shell_steps_pass_the_customizer_conformance_suite() {
    use aib_customizers::{ScriptSource, ShellCustomizer};
    let sshd = start();
    let c = connect(&sshd).await;
    let failing = ShellCustomizer::new(ScriptSource::Inline(vec!["echo before".into(), "exit 5".into()]));
    let printing = ShellCustomizer::new(ScriptSource::Inline(vec!["echo conformance-marker".into()]));
    conformance::customizer(&failing, &printing, "conformance-marker", &c).await;
}
