//! `FakeCommunicator`: a build VM in memory that understands a few shell words.

use crate::faults::{Fault, Faults, fire};
use crate::{Call, Journal};
use aib_core::{
    Communicator, Error, ExecRequest, ExitStatus, OutputSink, OutputStream, Platform, ReconnectOptions, Result, UploadContent,
    UploadRequest,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A scripted reply to commands that contain a pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Lines on stdout.
    pub stdout: Vec<String>,
    /// Lines on stderr.
    pub stderr: Vec<String>,
    /// Exit code.
    pub code: i32,
}

#[derive(Debug, Default)]
struct VmState {
    files: HashMap<String, Vec<u8>>,
    replies: Vec<(String, Reply)>,
    connected: bool,
    reboots: u32,
}

/// A fake build VM reached through [`Communicator`]. Clones share the VM.
///
/// It runs commands made of `;`- or newline-separated words it knows — `echo TEXT`,
/// `echo TEXT >&2`, `exit N`, `cat PATH`, `true`, `false`, `reboot` — and succeeds silently
/// on anything else, unless a scripted [`Reply`] matches first. Uploaded files can be read
/// back with `cat` or [`FakeCommunicator::file`]. Faults: `exec` and `upload` keys.
#[derive(Clone)]
pub struct FakeCommunicator {
    platform: Platform,
    state: Arc<Mutex<VmState>>,
    faults: Faults,
    journal: Journal,
}

impl fmt::Debug for FakeCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeCommunicator").field("platform", &self.platform).finish_non_exhaustive()
    }
}

impl fmt::Display for FakeCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FakeCommunicator({:?})", self.platform)
    }
}

impl Default for FakeCommunicator {
    fn default() -> Self {
        Self::new(Platform::Linux, Faults::new(), Journal::default())
    }
}

impl FakeCommunicator {
    /// A connected fake VM.
    pub fn new(platform: Platform, faults: Faults, journal: Journal) -> Self {
        let state = VmState { connected: true, ..Default::default() };
        FakeCommunicator { platform, state: Arc::new(Mutex::new(state)), faults, journal }
    }

    /// Replies to every command containing `pattern`.
    pub fn reply(&self, pattern: &str, reply: Reply) {
        if let Ok(mut s) = self.state.lock() {
            s.replies.push((pattern.to_string(), reply));
        }
    }

    /// A file uploaded to the VM.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.state.lock().ok()?.files.get(path).cloned()
    }

    /// How many times the VM went down and came back.
    pub fn reboots(&self) -> u32 {
        self.state.lock().map(|s| s.reboots).unwrap_or(0)
    }

    /// The fault table.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    async fn run_word(&self, word: &str, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Option<i32> {
        let word = word.trim();
        let expand = |text: &str| -> String {
            let text = text.trim();
            match text.strip_prefix("\"$").and_then(|t| t.strip_suffix('"')).or_else(|| text.strip_prefix('$')) {
                Some(var) => req.env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone()).unwrap_or_default(),
                None => text.trim_matches('\'').to_string(),
            }
        };
        if let Some(rest) = word.strip_prefix("echo ") {
            match rest.strip_suffix(">&2") {
                Some(e) => out.line(OutputStream::Stderr, &expand(e)),
                None => out.line(OutputStream::Stdout, &expand(rest)),
            }
        } else if let Some(rest) = word.strip_prefix("sha256sum ") {
            // `sha256sum 'FILE' | cut -d' ' -f1`: how steps verify what they uploaded.
            let path = rest.split('|').next().unwrap_or_default().trim().trim_matches('\'');
            match self.file(path) {
                Some(c) => {
                    use sha2::Digest;
                    let hex: String = sha2::Sha256::digest(&c).iter().map(|b| format!("{b:02x}")).collect();
                    out.line(OutputStream::Stdout, &hex);
                }
                None => return Some(1),
            }
        } else if word == "id -u" {
            out.line(OutputStream::Stdout, if req.elevated { "0" } else { "1000" });
        } else if let Some(n) = word.strip_prefix("sleep ") {
            tokio::time::sleep(Duration::from_secs_f64(n.trim().parse().unwrap_or(0.0))).await;
        } else if let Some(n) = word.strip_prefix("exit ") {
            return Some(n.trim().parse().unwrap_or(255));
        } else if word == "false" {
            return Some(1);
        } else if let Some(p) = word.strip_prefix("cat ") {
            let content = self.file(p.trim());
            match content {
                Some(c) => {
                    for l in String::from_utf8_lossy(&c).lines() {
                        out.line(OutputStream::Stdout, l);
                    }
                }
                None => {
                    out.line(OutputStream::Stderr, &format!("cat: {}: No such file or directory", p.trim()));
                    return Some(1);
                }
            }
        }
        None
    }
}

#[async_trait]
impl Communicator for FakeCommunicator {
    fn platform(&self) -> Platform {
        self.platform
    }

    async fn execute(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus> {
        self.journal.push(Call::Exec { command: req.command.clone() });
        if let Some((k, _)) = req.env.iter().find(|(k, _)| k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')) {
            return Err(Error::InvalidConfig {
                backend: "fake",
                key: "env".into(),
                message: format!("`{k}` is not a valid variable name"),
            });
        }
        match req.timeout {
            Some(t) => tokio::time::timeout(t, self.run(req, out))
                .await
                .map_err(|_| Error::Timeout { operation: req.command.clone(), after: t })?,
            None => self.run(req, out).await,
        }
    }

    async fn upload(&self, req: &UploadRequest) -> Result<u64> {
        self.upload_bytes(req).await
    }

    async fn reconnect(&self, _opts: &ReconnectOptions) -> Result<()> {
        self.faults.apply("reconnect").await?;
        self.journal.push(Call::Reconnect);
        if let Ok(mut s) = self.state.lock() {
            if !s.connected {
                s.reboots += 1;
            }
            s.connected = true;
        }
        Ok(())
    }
}

impl FakeCommunicator {
    async fn run(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus> {
        if !self.state.lock().map(|s| s.connected).unwrap_or(false) {
            return Err(Error::Disconnected { backend: "fake", source: "not connected (reconnect after a restart)".into() });
        }
        match self.faults.take("exec") {
            Some(Fault::ExitCode(c)) => return Ok(ExitStatus::code(c)),
            Some(f) => fire("exec", f).await?,
            None => {}
        }
        let reply =
            self.state.lock().ok().and_then(|s| s.replies.iter().find(|(p, _)| req.command.contains(p.as_str())).map(|(_, r)| r.clone()));
        if let Some(r) = reply {
            r.stdout.iter().for_each(|l| out.line(OutputStream::Stdout, l));
            r.stderr.iter().for_each(|l| out.line(OutputStream::Stderr, l));
            return Ok(ExitStatus::code(r.code));
        }
        let words: Vec<&str> = req.command.split([';', '\n']).collect();
        for w in words {
            if w.trim() == "reboot" || req.expect_disconnect {
                if let Ok(mut s) = self.state.lock() {
                    s.connected = false;
                }
                return Ok(ExitStatus { code: None, signal: None, disconnected: true });
            }
            if let Some(code) = self.run_word(w, req, out).await {
                return Ok(ExitStatus::code(code));
            }
        }
        Ok(ExitStatus::code(0))
    }

    async fn upload_bytes(&self, req: &UploadRequest) -> Result<u64> {
        self.faults.apply("upload").await?;
        let bytes: Vec<u8> = match &req.content {
            UploadContent::Bytes(b) => b.to_vec(),
            UploadContent::File(p) => tokio::fs::read(p).await.map_err(|e| Error::io(p, e))?,
            _ => return Err(Error::Unsupported { operation: "this upload content".into(), backend: "fake" }),
        };
        self.journal.push(Call::Upload { destination: req.destination.clone(), bytes: bytes.len() as u64 });
        let n = bytes.len() as u64;
        if let Ok(mut s) = self.state.lock() {
            if !s.connected {
                return Err(Error::Disconnected { backend: "fake", source: "not connected".into() });
            }
            s.files.insert(req.destination.clone(), bytes);
        }
        Ok(n)
    }
}
