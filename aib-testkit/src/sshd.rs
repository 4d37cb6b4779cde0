//! A real OpenSSH `sshd` on 127.0.0.1 for tests: a temp dir, a free port, throwaway host and
//! user keys. It runs as the current user and logs in as that user.
//!
//! ```no_run
//! let sshd = aib_testkit::sshd::Sshd::start().expect("sshd");
//! println!("ssh -p {} -i {} {}@127.0.0.1", sshd.port(), sshd.user_key_path().display(), sshd.user());
//! ```

use std::fmt;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where Debian installs sshd; it must be started by absolute path (it re-executes itself).
pub const SSHD: &str = "/usr/sbin/sshd";

/// What to run when OpenSSH is missing.
pub const INSTALL_HINT: &str = "install OpenSSH with `apt-get install -y openssh-server openssh-client` (as root)";

/// The harness could not start.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

fn err(msg: impl Into<String>) -> HarnessError {
    HarnessError(msg.into())
}

/// A running (or prepared) sshd. Dropping it kills sshd and every session it started.
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    user: String,
    child: Option<Child>,
}

impl fmt::Debug for Sshd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sshd").field("port", &self.port).field("dir", &self.dir.path()).field("running", &self.child.is_some()).finish()
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<String, HarnessError> {
    let out = cmd.output().map_err(|e| err(format!("{what}: {e}; {INSTALL_HINT}")))?;
    if !out.status.success() {
        return Err(err(format!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16, HarnessError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| err(format!("no free port: {e}")))?;
    l.local_addr().map(|a| a.port()).map_err(|e| err(e.to_string()))
}

fn keygen(path: &Path, comment: &str) -> Result<(), HarnessError> {
    run(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"]).arg(path), "ssh-keygen").map(|_| ())
}

impl Sshd {
    /// Prepares and starts sshd, and waits until it accepts connections.
    pub fn start() -> Result<Self, HarnessError> {
        let mut s = Self::prepare()?;
        s.launch()?;
        Ok(s)
    }

    /// Writes keys and config but does not start sshd (see [`Sshd::launch`]), so a test can
    /// start it late.
    pub fn prepare() -> Result<Self, HarnessError> {
        if !Path::new(SSHD).exists() {
            return Err(err(format!("{SSHD} not found: {INSTALL_HINT}")));
        }
        let user = run(Command::new("id").arg("-un"), "id -un")?;
        let dir = tempfile::Builder::new().prefix("aib-sshd-").tempdir().map_err(|e| err(e.to_string()))?;
        let d = dir.path();
        keygen(&d.join("hostkey"), "aib-test-host")?;
        keygen(&d.join("userkey"), "aib-test-user")?;
        std::fs::copy(d.join("userkey.pub"), d.join("authorized_keys")).map_err(|e| err(e.to_string()))?;
        let port = free_port()?;
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {d}/hostkey\nPidFile {d}/sshd.pid\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
             StrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\nMaxSessions 64\nMaxStartups 64\nLogLevel VERBOSE\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).map_err(|e| err(e.to_string()))?;
        if !Path::new("/run/sshd").exists() {
            std::fs::create_dir_all("/run/sshd").map_err(|e| err(format!("sshd needs /run/sshd: {e} (create it as root)")))?;
        }
        run(Command::new(SSHD).arg("-t").arg("-f").arg(d.join("sshd_config")), "sshd -t")?;
        Ok(Sshd { dir, port, user, child: None })
    }

    /// Starts the prepared sshd and waits (up to 10 s) until it accepts connections.
    pub fn launch(&mut self) -> Result<(), HarnessError> {
        let log = std::fs::File::create(self.dir.path().join("sshd.log")).map_err(|e| err(e.to_string()))?;
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(self.dir.path().join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| err(e.to_string()))?)
            .stderr(log)
            .spawn()
            .map_err(|e| err(format!("cannot start {SSHD}: {e}; {INSTALL_HINT}")))?;
        self.child = Some(child);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err(err(format!("sshd did not listen on port {} within 10 s; log:\n{}", self.port, self.log())));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user to log in as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The host's public key line.
    pub fn host_public_key(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("hostkey.pub")).unwrap_or_default().trim().to_string()
    }

    /// The host key's SHA-256 fingerprint (`SHA256:…`).
    pub fn host_fingerprint(&self) -> Result<String, HarnessError> {
        let out = run(Command::new("ssh-keygen").arg("-lf").arg(self.dir.path().join("hostkey.pub")), "ssh-keygen -lf")?;
        out.split_whitespace().nth(1).map(str::to_string).ok_or_else(|| err("no fingerprint"))
    }

    /// The user's private key file (OpenSSH format).
    pub fn user_key_path(&self) -> PathBuf {
        self.dir.path().join("userkey")
    }

    /// Also accepts this public key line for the user.
    pub fn authorize(&self, public_key_line: &str) -> Result<(), HarnessError> {
        let mut f =
            std::fs::OpenOptions::new().append(true).open(self.dir.path().join("authorized_keys")).map_err(|e| err(e.to_string()))?;
        writeln!(f, "{public_key_line}").map_err(|e| err(e.to_string()))
    }

    /// A scratch directory owned by the harness (removed with it).
    pub fn scratch(&self) -> PathBuf {
        let p = self.dir.path().join("scratch");
        let _ = std::fs::create_dir_all(&p);
        p
    }

    /// sshd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Kills sshd and every process it started (live sessions included), as a crash or a
    /// power-off would.
    pub fn kill_all(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pids = descendants(c.id());
            let _ = c.kill();
            for pid in pids {
                let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Every process below `root` in the process tree (from /proc).
fn descendants(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
            // Field 4 (ppid) follows the `)` that closes the command name.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            if let Some(pp) = ppid {
                parents.push((pid, pp));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parents {
            if *parent == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}
