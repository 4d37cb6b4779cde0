//! passt: the network of build VMs that may reach out ([`crate::GuestNetwork::Outbound`])
//! without reaching the host.
//!
//! QEMU's user networking maps the host's loopback at the gateway address (10.0.2.2), so a VM
//! with outbound access through it reaches every loopback service of the host: databases,
//! emulators with well-known keys, other runs' SSH forwards and tunnels. passt gives the VM the
//! host's own view of the network instead, and with `--no-map-gw` the gateway address is the
//! real gateway, not the host: the internet and mirrors are reachable, the host's loopback is
//! not. aib's SSH forward is one of passt's, bound to the host's 127.0.0.1. passt serves one
//! QEMU (`--one-off`) and ends with it; it is in the ledger like QEMU, so `gc` stops one a
//! killed run left.

use crate::error::LocalError;
use crate::tools::BACKEND;
use aib_core::{Error, ResourceRecord, Result, Scope, StepContext};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a build VM of `workdir` connects to its passt.
#[derive(Debug)]
pub(crate) struct Passt {
    pub(crate) socket: PathBuf,
}

impl Passt {
    /// The `-netdev` of the VM.
    pub(crate) fn netdev(&self) -> String {
        format!("stream,id=n0,server=off,addr.type=unix,addr.path={}", self.socket.display())
    }
}

/// Starts passt for the VM of `workdir`, forwarding the host's `127.0.0.1:port` to its SSH.
/// A taken port is a retryable error, as with QEMU's own forward.
pub(crate) async fn start(workdir: &Path, port: u16, ctx: &StepContext) -> Result<Passt> {
    let socket = workdir.join("passt.sock");
    let pidfile = workdir.join("passt.pid");
    ctx.record(
        ResourceRecord::new(BACKEND, "process", format!("passt {}", workdir.display()), Scope::BuildVm)
            .with_attribute("pidfile", pidfile.display().to_string())
            .with_attribute("workdir", workdir.display().to_string()),
    )?;
    let out_path = workdir.join("passt.out");
    let out = std::fs::File::create(&out_path).map_err(|e| Error::io(&out_path, e))?;
    // passt leaves root for `nobody` unless told otherwise; it must create its socket in the
    // VM's private directory, so it stays this user.
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut child = tokio::process::Command::new("passt")
        .args(["--foreground", "--one-off", "--no-map-gw", "--quiet", "--stderr", "--runas", &format!("{uid}:{gid}")])
        .arg("--socket")
        .arg(&socket)
        .arg("--pid")
        .arg(&pidfile)
        .args(["--tcp-ports", &format!("127.0.0.1/{port}:22"), "--udp-ports", "none"])
        .env_clear()
        .envs(aib_core::boundary::tool_env())
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| Error::io(&out_path, e))?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|e| crate::tools::missing("passt", e))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(&out_path).unwrap_or_default().trim().to_string();
            return Err(if log.contains("in use") {
                LocalError::PortTaken { port, log }
            } else {
                LocalError::ToolFailed { command: "passt".into(), status, stderr: log }
            }
            .into());
        }
        if socket.exists() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.start_kill();
            return Err(Error::Timeout { operation: format!("passt creating {}", socket.display()), after: Duration::from_secs(10) });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It ends with its QEMU; this only reaps it.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    Ok(Passt { socket })
}
