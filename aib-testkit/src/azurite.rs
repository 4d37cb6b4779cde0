//! Azurite, Microsoft's storage emulator (npm `azurite`), started on a free port of 127.0.0.1
//! with in-memory storage, its well-known account and a pool of [`POOL`] more
//! (`AZURITE_ACCOUNTS`): one for each storage account the ARM test server creates.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Azurite's well-known account.
pub const ACCOUNT: &str = "devstoreaccount1";
/// Azurite's well-known account key.
pub const KEY: &str = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Accounts of the pool, beside the well-known one.
pub const POOL: usize = 16;

/// The pool's account `i`: its name and key.
pub fn pool_account(i: usize) -> (String, String) {
    use base64::Engine;
    use sha2::Digest;
    let name = format!("aibpool{i:02}");
    let mut key = sha2::Sha256::digest(name.as_bytes()).to_vec();
    key.extend(sha2::Sha256::digest(key.as_slice()));
    (name, base64::engine::general_purpose::STANDARD.encode(key))
}

/// What to run when Azurite is missing.
pub const INSTALL_HINT: &str = "install Azurite with `mkdir -p ~/.cache/aib/azurite && cd ~/.cache/aib/azurite && npm install azurite@3` (or set AIB_AZURITE_DIR to a directory holding node_modules/.bin/azurite-blob)";

/// A running Azurite blob service; killed when dropped.
#[derive(Debug)]
pub struct Azurite {
    child: Child,
    port: u16,
}

fn binary() -> Option<PathBuf> {
    let dirs = [
        std::env::var_os("AIB_AZURITE_DIR").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/aib/azurite")),
    ];
    dirs.into_iter().flatten().map(|d| d.join("node_modules/.bin/azurite-blob")).find(|p| p.exists())
}

impl Azurite {
    /// Starts the blob service and waits until it answers.
    pub fn start() -> Result<Self, String> {
        let bin = binary().ok_or_else(|| format!("azurite-blob not found: {INSTALL_HINT}"))?;
        let port = crate::sshd::free_port().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        // `AIB_AZURITE_DEBUG=FILE` keeps Azurite's debug log there.
        if let Some(log) = std::env::var_os("AIB_AZURITE_DEBUG") {
            cmd.arg("--debug").arg(log);
        }
        let accounts: Vec<String> = std::iter::once((ACCOUNT.to_string(), KEY.to_string()))
            .chain((0..POOL).map(pool_account))
            .map(|(n, k)| format!("{n}:{k}"))
            .collect();
        cmd.env("AZURITE_ACCOUNTS", accounts.join(";"));
        let child = cmd
            .args([
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--inMemoryPersistence",
                "--loose",
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--disableProductStyleUrl",
                "--silent",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}; {INSTALL_HINT}", bin.display()))?;
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(30) {
                return Err("Azurite did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Azurite { child, port })
    }

    /// The blob port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The account's blob endpoint, `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{ACCOUNT}", self.port)
    }
}

impl Drop for Azurite {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
