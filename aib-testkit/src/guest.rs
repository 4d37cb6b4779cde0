//! Machines behind the ARM test server's virtual machines: when the server creates a VM it
//! asks a [`GuestHost`] for something real to talk to at the VM's address.
//!
//! [`SshdGuests`] starts an OpenSSH `sshd` per VM, listening on the VM's own loopback address
//! (`127.0.x.y`, one per public or private IP) and on one port shared by all guests. The sshd
//! takes what a Linux VM on Azure takes from its VM body: the admin user and its
//! `ssh.publicKeys`, and from `customData` (cloud-config) the `ssh_keys.ed25519_private` host
//! key, so a client that pinned that key connects verified.
//!
//! Each guest runs chrooted into an overlay of this machine's root, in its own mount, PID, UTS
//! and IPC namespaces, with a minimal `/dev`, a read-only `/sys` and without the capabilities
//! to mount, make device nodes or load modules: everything it writes (customizers' files, deprovisioning's deleted host keys,
//! emptied `/etc/machine-id` and logs) lands in the guest's own upper layer, never on this
//! machine, and is gone with the guest. The admin user is added to the guest's `/etc/passwd`
//! with uid 0, so `sudo` works as on a VM. This needs root, as the test command runs.

use crate::sshd::{INSTALL_HINT, SSHD};
use base64::Engine;
use std::fmt;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_ROOT: &str = "/run/aib-guests";

/// What the server knows of a VM when it starts its guest.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct GuestSpec {
    /// The VM's resource id.
    pub vm_id: String,
    /// The address the guest must listen on (`127.0.x.y`).
    pub address: String,
    /// `osProfile.adminUsername`.
    pub admin_user: String,
    /// `osProfile.computerName`.
    pub computer_name: String,
    /// `osProfile.linuxConfiguration.ssh.publicKeys[].keyData`.
    pub authorized_keys: Vec<String>,
    /// `osProfile.customData`, decoded.
    pub custom_data: Option<String>,
    /// A Windows VM.
    pub windows: bool,
    /// `osProfile.adminPassword` (a Windows VM's).
    pub admin_password: Option<String>,
}

impl fmt::Debug for GuestSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestSpec")
            .field("vm_id", &self.vm_id)
            .field("address", &self.address)
            .field("admin_user", &self.admin_user)
            .field("computer_name", &self.computer_name)
            .field("windows", &self.windows)
            .field("admin_password", &self.admin_password.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

/// What a script run through ARM's Run Command printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A command started on a guest: calling it waits for the command's end (on a thread of the
/// caller's choosing; the ARM test server uses a blocking task, so other requests go on).
pub type CommandRun = Box<dyn FnOnce() -> Result<CommandOutput, String> + Send>;

/// A running guest; stops when dropped.
pub trait Guest: Send + fmt::Debug {
    /// Starts `script` as ARM's Run Command does (through the VM agent, not the network).
    /// Guests without an agent refuse.
    fn run_command(&self, _script: &str) -> Result<CommandRun, String> {
        Err("this guest has no VM agent to run commands".into())
    }
}

/// Starts guests for the ARM test server.
///
/// # Contract
/// `start` returns once the guest is started, or with an error the server reports as the VM's
/// provisioning failure. The guest then accepts connections at `spec.address` on
/// [`GuestHost::port`] — at once, or once it has booted (clients retry, as they must with a
/// new VM). Dropping the guest stops it and everything it runs.
pub trait GuestHost: Send + Sync + fmt::Debug + 'static {
    /// The port every guest listens on (what the client connects to at the VM's address).
    fn port(&self) -> u16;
    /// Starts a guest for `spec`.
    fn start(&self, spec: &GuestSpec) -> Result<Box<dyn Guest>, String>;
}

/// `sshd` guests in private mount namespaces.
#[derive(Debug, Clone)]
pub struct SshdGuests {
    port: u16,
}

impl SshdGuests {
    /// Guests listening on a free port.
    pub fn new() -> Result<Self, String> {
        if !Path::new(SSHD).exists() {
            return Err(format!("{SSHD} not found: {INSTALL_HINT}"));
        }
        let uid = Command::new("id").arg("-u").output().map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
            return Err("sshd guests need root (each runs in a private mount namespace); run the tests as root".into());
        }
        let port = crate::sshd::free_port().map_err(|e| e.0)?;
        Ok(SshdGuests { port })
    }
}

struct SshdGuest {
    child: Child,
    _dir: tempfile::TempDir,
    address: String,
}

impl fmt::Debug for SshdGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshdGuest").field("address", &self.address).field("pid", &self.child.id()).finish()
    }
}

impl Guest for SshdGuest {}

impl Drop for SshdGuest {
    fn drop(&mut self) {
        // The whole process group: sshd and every session it started.
        let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", self.child.id())]).status();
        let _ = self.child.wait();
    }
}

/// The `ed25519_private` block of a cloud-config's `ssh_keys`.
pub fn cloud_config_host_key(cloud_config: &str) -> Option<String> {
    let mut lines = cloud_config.lines().skip_while(|l| !l.trim_start().starts_with("ed25519_private:"));
    let first = lines.next()?;
    let indent = first.len() - first.trim_start().len();
    let key: Vec<&str> = lines
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    (!key.is_empty()).then(|| key.join("\n") + "\n")
}

fn valid_user(u: &str) -> bool {
    !u.is_empty() && u.len() <= 32 && u.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
}

fn io(e: impl fmt::Display) -> String {
    e.to_string()
}

impl GuestHost for SshdGuests {
    fn port(&self) -> u16 {
        self.port
    }

    fn start(&self, spec: &GuestSpec) -> Result<Box<dyn Guest>, String> {
        if spec.windows {
            return Err("the test server's sshd guests are Linux only".into());
        }
        if !valid_user(&spec.admin_user) {
            return Err(format!("adminUsername `{}` is not a valid Linux user name", spec.admin_user));
        }
        // Not under /tmp: the guest's /tmp is replaced by its own.
        std::fs::create_dir_all(GUEST_ROOT).map_err(|e| format!("{GUEST_ROOT}: {e}"))?;
        let dir = tempfile::Builder::new().prefix("guest-").tempdir_in(GUEST_ROOT).map_err(io)?;
        let d = dir.path();
        let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
            let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
            if out.status.success() { Ok(()) } else { Err(format!("{what}: {}", String::from_utf8_lossy(&out.stderr).trim())) }
        };
        // The upper layer of an overlay over this machine's root: what the guest writes lands
        // here. The files it starts with are put here before the overlay is mounted.
        for sub in ["upper/etc/aib-guest", "work", "merged"] {
            std::fs::create_dir_all(d.join(sub)).map_err(io)?;
        }
        let up = d.join("upper");
        let user = &spec.admin_user;
        let passwd = std::fs::read_to_string("/etc/passwd").map_err(io)?;
        if !passwd.lines().any(|l| l.split(':').next() == Some(user)) {
            std::fs::write(up.join("etc/passwd"), format!("{passwd}{user}:x:0:0:{user}:/home/{user}:/bin/bash\n")).map_err(io)?;
            let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
            std::fs::write(up.join("etc/shadow"), format!("{shadow}{user}:*:19000:0:99999:7:::\n")).map_err(io)?;
            run(Command::new("chmod").arg("640").arg(up.join("etc/shadow")), "chmod")?;
        }
        let conf = up.join("etc/aib-guest");
        match spec.custom_data.as_deref().and_then(cloud_config_host_key) {
            Some(k) => std::fs::write(conf.join("hostkey"), k).map_err(io)?,
            None => run(
                Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", "aib-guest", "-f"]).arg(conf.join("hostkey")),
                "ssh-keygen",
            )?,
        }
        run(Command::new("chmod").arg("600").arg(conf.join("hostkey")), "chmod")?;
        // The keys live in the guest's home as on a VM; the deprovisioner removes them there.
        let ssh_dir = up.join("home").join(user).join(".ssh");
        std::fs::create_dir_all(&ssh_dir).map_err(io)?;
        std::fs::write(ssh_dir.join("authorized_keys"), spec.authorized_keys.join("\n") + "\n").map_err(io)?;
        let config = format!(
            "ListenAddress {addr}\nPort {port}\nHostKey /etc/aib-guest/hostkey\nPidFile /run/aib-guest-sshd.pid\nAuthorizedKeysFile .ssh/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nMaxSessions 64\nMaxStartups 64\nLogLevel VERBOSE\n",
            addr = spec.address,
            port = self.port,
        );
        std::fs::write(conf.join("sshd_config"), config).map_err(io)?;
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
        let m = q(&d.join("merged"));
        // A minimal /dev (no block devices), a read-only /sys, its own /proc, and capabilities
        // that cannot reach this machine (no mounts, no device nodes, no modules) for sshd and
        // everything it starts; the PID, UTS and IPC namespaces are the guest's own, so its
        // processes die with it and a hostname change stays inside.
        let script = format!(
            "mount -t overlay overlay -o lowerdir=/,upperdir={u},workdir={w} {m} && mount -t proc proc {m}/proc && \
             mount -t tmpfs -o mode=755 tmpfs {m}/dev && \
             for n in null zero full random urandom tty; do touch {m}/dev/$n && mount --bind /dev/$n {m}/dev/$n; done && \
             mkdir {m}/dev/pts {m}/dev/shm && mount -t devpts -o newinstance,ptmxmode=0666 devpts {m}/dev/pts && ln -s pts/ptmx {m}/dev/ptmx && \
             mount --rbind /sys {m}/sys && mount -o remount,bind,ro {m}/sys && mount -t tmpfs tmpfs {m}/run && mkdir -p {m}/run/sshd && \
             exec setpriv --bounding-set -sys_admin,-mknod,-sys_module,-sys_rawio,-sys_boot,-sys_time,-net_admin,-sys_ptrace \
             chroot {m} {SSHD} -D -e -f /etc/aib-guest/sshd_config",
            u = q(&up),
            w = q(&d.join("work")),
        );
        let log = std::fs::File::create(d.join("sshd.log")).map_err(io)?;
        let mut child = {
            use std::os::unix::process::CommandExt;
            Command::new("unshare")
                .args(["--mount", "--pid", "--fork", "--uts", "--ipc", "--propagation", "private", "--", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(io)?)
                .stderr(log)
                .process_group(0)
                .spawn()
                .map_err(|e| format!("unshare: {e} (util-linux)"))?
        };
        let start = Instant::now();
        while TcpStream::connect((spec.address.as_str(), self.port)).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!(
                    "guest sshd exited ({st}): {}",
                    std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default().trim()
                ));
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(format!("guest sshd did not listen on {}:{} within 10 s", spec.address, self.port));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Box::new(SshdGuest { child, _dir: dir, address: spec.address.clone() }))
    }
}

/// Decodes `osProfile.customData` (base64).
pub fn decode_custom_data(b64: &str) -> Option<String> {
    base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok().and_then(|b| String::from_utf8(b).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_key_from_cloud_config() {
        let cc = "#cloud-config\nssh_keys:\n  ed25519_private: |\n    -----BEGIN OPENSSH PRIVATE KEY-----\n    abc\n    -----END OPENSSH PRIVATE KEY-----\n  ed25519_public: ssh-ed25519 AAAA\nusers: []\n";
        assert_eq!(
            cloud_config_host_key(cc).as_deref(),
            Some("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n")
        );
        assert_eq!(cloud_config_host_key("#cloud-config\n"), None);
    }
}
