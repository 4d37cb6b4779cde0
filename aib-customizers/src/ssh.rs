//! The SSH communicator (russh): public-key auth with an ephemeral key, a verified host key,
//! connect retries until a deadline, streamed output, SFTP uploads with an exec fallback,
//! and reconnection after an expected disconnect.

use crate::lines::LineSplitter;
use crate::quote::{is_env_name, sh_quote};
use crate::ssh_error::SshError;
use aib_core::retry::Backoff;
use aib_core::{
    Communicator, Error, ExecRequest, ExitStatus, OutputSink, OutputStream, Platform, ReconnectOptions, Result, UploadContent,
    UploadRequest,
};
use async_trait::async_trait;
pub use russh::keys::PrivateKey;
use russh::keys::{Algorithm, HashAlg, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelMsg, Disconnect, client};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

const BACKEND: &str = "ssh";

/// How the server's host key is checked.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostKeyCheck {
    /// The key's SHA-256 fingerprint, as `ssh-keygen -lf` prints it (`SHA256:…`).
    Fingerprint(String),
    /// The public key itself, in OpenSSH form (`ssh-ed25519 AAAA… comment`).
    PublicKey(String),
    /// Accept any host key. Only for throwaway machines on a trusted network: a man in the
    /// middle would see every command and file.
    InsecureAcceptAnyHostKey,
}

impl fmt::Debug for HostKeyCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostKeyCheck::Fingerprint(fp) => write!(f, "Fingerprint({fp})"),
            HostKeyCheck::PublicKey(k) => write!(f, "PublicKey({})", k.split_whitespace().take(2).collect::<Vec<_>>().join(" ")),
            HostKeyCheck::InsecureAcceptAnyHostKey => f.write_str("InsecureAcceptAnyHostKey"),
        }
    }
}

/// Settings of an SSH connection, built with [`SshConfig::builder`].
#[derive(Clone)]
pub struct SshConfig {
    host: String,
    port: u16,
    user: String,
    key: Arc<PrivateKey>,
    host_key: HostKeyCheck,
    connect_timeout: Duration,
    attempt_timeout: Duration,
    retry_initial: Duration,
    retry_max: Duration,
    keepalive_interval: Duration,
    keepalive_max: usize,
    inactivity_timeout: Option<Duration>,
    sftp: bool,
}

impl fmt::Debug for SshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("host_key", &self.host_key)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Builds an [`SshConfig`]; `build()` checks it.
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SshConfigBuilder {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    key: Option<Arc<PrivateKey>>,
    host_key: Option<HostKeyCheck>,
    connect_timeout: Option<Duration>,
    retry: Option<(Duration, Duration)>,
    keepalive: Option<(Duration, usize)>,
    inactivity_timeout: Option<Option<Duration>>,
    sftp: Option<bool>,
}

impl SshConfig {
    /// A builder. Defaults: port 22, a 5-minute connect deadline with retries from 250 ms to
    /// 5 s, keepalive every 10 s (3 missed = dead), 30-minute inactivity timeout, SFTP uploads.
    pub fn builder() -> SshConfigBuilder {
        SshConfigBuilder::default()
    }
}

fn invalid(key: &str, message: &str) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: key.into(), message: message.into() }
}

impl SshConfigBuilder {
    /// Host name or address.
    pub fn host(mut self, h: impl Into<String>) -> Self {
        self.host = Some(h.into());
        self
    }
    /// Port.
    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }
    /// User name.
    pub fn user(mut self, u: impl Into<String>) -> Self {
        self.user = Some(u.into());
        self
    }
    /// The private key (see [`ephemeral_key`]).
    pub fn key(mut self, k: PrivateKey) -> Self {
        self.key = Some(Arc::new(k));
        self
    }
    /// How the host key is verified (required: there is no silent default).
    pub fn host_key(mut self, h: HostKeyCheck) -> Self {
        self.host_key = Some(h);
        self
    }
    /// Give up connecting after this long (a booting VM is normal until then).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = Some(t);
        self
    }
    /// Delay between connection attempts: starts at `initial`, doubles, capped at `max`.
    pub fn retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry = Some((initial, max));
        self
    }
    /// Keepalive interval, and how many unanswered keepalives close the connection.
    pub fn keepalive(mut self, every: Duration, max: usize) -> Self {
        self.keepalive = Some((every, max));
        self
    }
    /// Close an idle connection after this long (`None`: never).
    pub fn inactivity_timeout(mut self, t: Option<Duration>) -> Self {
        self.inactivity_timeout = Some(t);
        self
    }
    /// Upload with SFTP (default) or with `cat` over exec.
    pub fn sftp(mut self, yes: bool) -> Self {
        self.sftp = Some(yes);
        self
    }

    /// Checks and builds.
    pub fn build(self) -> Result<SshConfig> {
        let host = self.host.filter(|h| !h.is_empty()).ok_or_else(|| invalid("host", "set the host to connect to"))?;
        let user = self.user.filter(|u| !u.is_empty()).ok_or_else(|| invalid("user", "set the user to log in as"))?;
        let key = self.key.ok_or_else(|| invalid("key", "set a private key (aib_customizers::ssh::ephemeral_key() makes one)"))?;
        let host_key = self.host_key.ok_or_else(|| {
            invalid(
                "host_key",
                "say how to verify the host key: HostKeyCheck::Fingerprint/PublicKey, or the explicit InsecureAcceptAnyHostKey",
            )
        })?;
        if let HostKeyCheck::PublicKey(k) = &host_key {
            PublicKey::from_openssh(k).map_err(|e| invalid("host_key", &format!("not an OpenSSH public key: {e}")))?;
        }
        if let HostKeyCheck::Fingerprint(fp) = &host_key
            && !fp.starts_with("SHA256:")
        {
            return Err(invalid("host_key", "fingerprints are SHA-256, written `SHA256:…` as `ssh-keygen -lf` prints them"));
        }
        let (retry_initial, retry_max) = self.retry.unwrap_or((Duration::from_millis(250), Duration::from_secs(5)));
        let (keepalive_interval, keepalive_max) = self.keepalive.unwrap_or((Duration::from_secs(10), 3));
        let connect_timeout = self.connect_timeout.unwrap_or(Duration::from_secs(300));
        if connect_timeout.is_zero() || retry_initial.is_zero() || keepalive_interval.is_zero() {
            return Err(invalid("timeouts", "timeouts and intervals must be above zero"));
        }
        Ok(SshConfig {
            host,
            port: self.port.unwrap_or(22),
            user,
            key,
            host_key,
            connect_timeout,
            attempt_timeout: Duration::from_secs(30).min(connect_timeout),
            retry_initial,
            retry_max: retry_max.max(retry_initial),
            keepalive_interval,
            keepalive_max,
            inactivity_timeout: self.inactivity_timeout.unwrap_or(Some(Duration::from_secs(30 * 60))),
            sftp: self.sftp.unwrap_or(true),
        })
    }
}

/// A fresh ed25519 key for one build.
pub fn ephemeral_key() -> Result<PrivateKey> {
    PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).map_err(|e| Error::generic(BACKEND, e))
}

/// The OpenSSH public-key line of `key` (for `authorized_keys`).
pub fn public_key_line(key: &PrivateKey, comment: &str) -> Result<String> {
    let mut public = key.public_key().clone();
    public.set_comment(comment);
    public.to_openssh().map_err(|e| Error::generic(BACKEND, e))
}

/// `key` in OpenSSH private-key format (PEM text), for files and cloud-init.
pub fn private_key_openssh(key: &PrivateKey) -> Result<String> {
    key.to_openssh(russh::keys::ssh_key::LineEnding::LF).map(|z| z.to_string()).map_err(|e| Error::generic(BACKEND, e))
}

/// The SHA-256 fingerprint of an OpenSSH public-key line (`SHA256:…`).
pub fn fingerprint(public_key_line: &str) -> Result<String> {
    let k = PublicKey::from_openssh(public_key_line).map_err(|e| invalid("public_key", &e.to_string()))?;
    Ok(k.fingerprint(HashAlg::Sha256).to_string())
}

struct Verifier {
    check: HostKeyCheck,
    /// Set when the server offered a key that did not match.
    mismatch: Arc<std::sync::Mutex<Option<String>>>,
}

impl client::Handler for Verifier {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> std::result::Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            // A refusal like a wrong key: it will not become the pinned key by retrying.
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some("a host certificate (aib pins host keys, not certificates)".into());
            }
            return Ok(false);
        };
        let seen = key.fingerprint(HashAlg::Sha256).to_string();
        let ok = match &self.check {
            HostKeyCheck::InsecureAcceptAnyHostKey => true,
            HostKeyCheck::Fingerprint(fp) => *fp == seen,
            HostKeyCheck::PublicKey(line) => PublicKey::from_openssh(line).is_ok_and(|k| k.key_data() == key.key_data()),
        };
        if !ok && let Ok(mut m) = self.mismatch.lock() {
            *m = Some(seen);
        }
        Ok(ok)
    }
}

type Session = Arc<client::Handle<Verifier>>;

/// A connection to a Linux build VM over SSH. Cheap to share (`Arc`); commands may run
/// concurrently over one connection.
pub struct SshCommunicator {
    cfg: SshConfig,
    session: Mutex<Option<Session>>,
    connect_time: std::sync::Mutex<Duration>,
}

impl fmt::Debug for SshCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SshCommunicator").field("config", &self.cfg).finish_non_exhaustive()
    }
}

impl fmt::Display for SshCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ssh://{}@{}:{}", self.cfg.user, self.cfg.host, self.cfg.port)
    }
}

fn disconnected(e: impl Into<aib_core::BoxError>) -> Error {
    Error::Disconnected { backend: BACKEND, source: e.into() }
}

impl SshCommunicator {
    /// Connects, retrying until the connect deadline: refused connections, resets and
    /// rejected keys (the VM may still be booting) are retried; a wrong host key is not.
    pub async fn connect(cfg: SshConfig) -> Result<Self> {
        let c = SshCommunicator { cfg, session: Mutex::new(None), connect_time: std::sync::Mutex::new(Duration::ZERO) };
        let s = c.open(c.cfg.connect_timeout).await?;
        *c.session.lock().await = Some(s);
        Ok(c)
    }

    /// How long the last successful connection took, retries included.
    pub fn last_connect_time(&self) -> Duration {
        self.connect_time.lock().map(|d| *d).unwrap_or_default()
    }

    /// The configuration.
    pub fn config(&self) -> &SshConfig {
        &self.cfg
    }

    async fn attempt(&self, mismatch: &Arc<std::sync::Mutex<Option<String>>>) -> std::result::Result<Session, SshError> {
        let config = Arc::new(client::Config {
            inactivity_timeout: self.cfg.inactivity_timeout,
            keepalive_interval: Some(self.cfg.keepalive_interval),
            keepalive_max: self.cfg.keepalive_max,
            nodelay: true,
            ..Default::default()
        });
        let verifier = Verifier { check: self.cfg.host_key.clone(), mismatch: mismatch.clone() };
        let mut handle = client::connect(config, (self.cfg.host.as_str(), self.cfg.port), verifier).await.map_err(SshError::Transport)?;
        let key = PrivateKeyWithHashAlg::new(self.cfg.key.clone(), None);
        let auth = handle.authenticate_publickey(self.cfg.user.clone(), key).await.map_err(SshError::Transport)?;
        if !auth.success() {
            return Err(SshError::AuthRefused { user: self.cfg.user.clone() });
        }
        Ok(Arc::new(handle))
    }

    async fn open(&self, deadline: Duration) -> Result<Session> {
        let start = Instant::now();
        // A booting VM refuses for a while: poll on the shared backoff, up to the deadline.
        let mut backoff = Backoff::new(self.cfg.retry_initial, self.cfg.retry_max).without_jitter();
        let mut attempts = 0u32;
        // The last answer the server gave: an attempt the deadline cut short says less than it.
        let mut answered: Option<String> = None;
        loop {
            attempts += 1;
            tracing::debug!(host = %self.cfg.host, port = self.cfg.port, attempt = attempts, "ssh connect attempt");
            let mismatch = Arc::new(std::sync::Mutex::new(None));
            let left = deadline.saturating_sub(start.elapsed());
            let r = tokio::time::timeout(self.cfg.attempt_timeout.min(left.max(Duration::from_millis(1))), self.attempt(&mismatch)).await;
            let err = match r {
                Ok(Ok(s)) => {
                    tracing::debug!(attempts, elapsed = ?start.elapsed(), "ssh connected");
                    if let Ok(mut t) = self.connect_time.lock() {
                        *t = start.elapsed();
                    }
                    return Ok(s);
                }
                Ok(Err(e)) => e,
                Err(_) => SshError::AttemptTimedOut,
            };
            if let Some(seen) = mismatch.lock().ok().and_then(|m| m.clone()) {
                return Err(Error::PermissionDenied {
                    backend: BACKEND,
                    source: format!(
                        "host key of {}:{} is {seen}, not the expected {:?}; refusing to connect",
                        self.cfg.host, self.cfg.port, self.cfg.host_key
                    )
                    .into(),
                });
            }
            let wait = backoff.next_delay();
            let timed_out = matches!(err, SshError::AttemptTimedOut);
            let mut last = aib_core::report::error_chain(&err);
            if start.elapsed() + wait >= deadline {
                if let (true, Some(before)) = (timed_out, answered) {
                    last = format!("{last}; before it: {before}");
                }
                return Err(Error::Timeout {
                    operation: format!("ssh connect to {}:{} ({attempts} attempts, last: {last})", self.cfg.host, self.cfg.port),
                    after: deadline,
                });
            }
            tracing::debug!(attempt = attempts, error = %err, "ssh connect failed; retrying");
            if !timed_out {
                answered = Some(last);
            }
            tokio::time::sleep(wait).await;
        }
    }

    async fn session(&self) -> Result<Session> {
        let guard = self.session.lock().await;
        match guard.as_ref() {
            Some(s) if !s.is_closed() => Ok(s.clone()),
            _ => Err(disconnected("the SSH connection is closed; reconnect first")),
        }
    }

    /// The command line of `req`. Environment values never appear in it (where `ps` on the VM
    /// and sudo's log would show them): they are in `env_file`, a 0600 file the line sources and
    /// removes before the command runs.
    fn command_line(req: &ExecRequest, env_file: Option<&str>) -> String {
        let mut cmd = String::new();
        if let Some(f) = env_file {
            let f = sh_quote(f);
            cmd.push_str(&format!(". {f} && rm -f {f} || exit 97; "));
        }
        cmd.push_str(&req.command);
        if req.elevated { format!("sudo -n -- sh -c {}", sh_quote(&cmd)) } else { cmd }
    }

    /// Uploads the environment of `req` as a 0600 file of `export` lines; its path.
    async fn env_file(&self, req: &ExecRequest) -> Result<Option<String>> {
        if req.env.is_empty() {
            return Ok(None);
        }
        let mut body = String::new();
        for (k, v) in &req.env {
            if !is_env_name(k) {
                return Err(invalid("env", &format!("`{k}` is not a valid environment variable name")));
            }
            body.push_str(&format!("export {k}={}\n", sh_quote(v)));
        }
        let path = format!("/tmp/aib-env-{}", uuid::Uuid::new_v4().simple());
        self.upload(&UploadRequest::bytes(body.into_bytes(), path.clone()).with_mode(0o600)).await?;
        Ok(Some(path))
    }

    async fn run(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus> {
        let env_file = self.env_file(req).await?;
        let session = self.session().await?;
        let mut ch = session.channel_open_session().await.map_err(disconnected)?;
        ch.exec(true, Self::command_line(req, env_file.as_deref())).await.map_err(disconnected)?;
        let (mut so, mut se) = (LineSplitter::default(), LineSplitter::default());
        let mut status = ExitStatus::default();
        let mut got_status = false;
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => so.push(&data, |l| out.line(OutputStream::Stdout, l)),
                ChannelMsg::ExtendedData { data, ext: 1 } => se.push(&data, |l| out.line(OutputStream::Stderr, l)),
                ChannelMsg::ExitStatus { exit_status } => {
                    status.code = Some(i32::try_from(exit_status).unwrap_or(i32::MAX));
                    got_status = true;
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    status.signal = Some(format!("{signal_name:?}"));
                    got_status = true;
                }
                _ => {}
            }
        }
        so.finish(|l| out.line(OutputStream::Stdout, l));
        se.finish(|l| out.line(OutputStream::Stderr, l));
        if got_status {
            return Ok(status);
        }
        if req.expect_disconnect {
            return Ok(ExitStatus { code: None, signal: None, disconnected: true });
        }
        Err(disconnected(format!("the connection dropped while `{}` ran, before it exited", short(&req.command))))
    }

    async fn upload_sftp(&self, session: &Session, req: &UploadRequest, progress: &dyn OutputSink) -> std::result::Result<u64, SshError> {
        let sftp_err = |what: String| move |e: russh_sftp::client::error::Error| SshError::Sftp { what, source: Box::new(e) };
        let ch = session.channel_open_session().await.map_err(SshError::Transport)?;
        ch.request_subsystem(true, "sftp").await.map_err(SshError::Transport)?;
        let sftp = russh_sftp::client::SftpSession::new(ch.into_stream()).await.map_err(sftp_err("starting the session".into()))?;
        // A new file gets its mode when it is created, never readable by others in between.
        let attrs = russh_sftp::protocol::FileAttributes { permissions: req.mode, ..Default::default() };
        let flags =
            russh_sftp::protocol::OpenFlags::CREATE | russh_sftp::protocol::OpenFlags::TRUNCATE | russh_sftp::protocol::OpenFlags::WRITE;
        let mut f = sftp
            .open_with_flags_and_attributes(&req.destination, flags, attrs)
            .await
            .map_err(sftp_err(format!("creating {}", req.destination)))?;
        let n = copy_content(&req.content, &mut f, progress).await?;
        f.shutdown().await.map_err(SshError::Write)?;
        if let Some(mode) = req.mode {
            let attrs = russh_sftp::protocol::FileAttributes { permissions: Some(mode), ..Default::default() };
            sftp.set_metadata(&req.destination, attrs).await.map_err(sftp_err(format!("setting the mode of {}", req.destination)))?;
        }
        let _ = sftp.close().await;
        Ok(n)
    }

    async fn upload_exec(&self, session: &Session, req: &UploadRequest, progress: &dyn OutputSink) -> Result<u64> {
        let mut ch = session.channel_open_session().await.map_err(disconnected)?;
        let mut cmd = format!("cat > {}", sh_quote(&req.destination));
        if let Some(mode) = req.mode {
            cmd.push_str(&format!(" && chmod {mode:o} {}", sh_quote(&req.destination)));
        }
        ch.exec(true, cmd).await.map_err(disconnected)?;
        let mut writer = ch.make_writer();
        let n = copy_content(&req.content, &mut writer, progress).await?;
        writer.shutdown().await.map_err(disconnected)?;
        drop(writer);
        ch.eof().await.map_err(disconnected)?;
        let mut code = None;
        let mut err = LineSplitter::default();
        let mut stderr = Vec::new();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::ExitStatus { exit_status } => code = Some(exit_status),
                ChannelMsg::ExtendedData { data, .. } => err.push(&data, |l| stderr.push(l.to_string())),
                _ => {}
            }
        }
        match code {
            Some(0) => Ok(n),
            Some(c) => Err(Error::StepFailed {
                step: format!("upload {}", req.destination),
                exit_code: Some(c as i32),
                message: stderr.join(" | "),
            }),
            None => Err(disconnected("the connection dropped during the upload")),
        }
    }

    /// Uploads with the `cat` fallback only (for measurements and servers without SFTP).
    pub async fn upload_with_exec(&self, req: &UploadRequest) -> Result<u64> {
        let session = self.session().await?;
        self.upload_exec(&session, req, &aib_core::NullSink).await
    }

    async fn upload_reporting(&self, req: &UploadRequest, progress: &dyn OutputSink) -> Result<u64> {
        let session = self.session().await?;
        if self.cfg.sftp {
            match self.upload_sftp(&session, req, progress).await {
                Ok(n) => return Ok(n),
                Err(e) if session.is_closed() => return Err(disconnected(e)),
                Err(e @ (SshError::Read { .. } | SshError::UnsupportedContent)) => return Err(e.into()),
                Err(e) => tracing::debug!(error = %e, "SFTP upload failed; falling back to cat over exec"),
            }
        }
        self.upload_exec(&session, req, progress).await
    }
}

fn short(cmd: &str) -> String {
    let first = cmd.lines().next().unwrap_or_default();
    if first.len() > 80 || cmd.lines().nth(1).is_some() {
        format!("{}…", &first[..first.floor_char_boundary(80)])
    } else {
        first.to_string()
    }
}

/// Copies in 256 KiB writes, reporting the bytes written after each.
async fn copy_content<W: tokio::io::AsyncWrite + Unpin>(
    content: &UploadContent,
    w: &mut W,
    progress: &dyn OutputSink,
) -> std::result::Result<u64, SshError> {
    const CHUNK: usize = 256 * 1024;
    let mut n = 0u64;
    match content {
        UploadContent::Bytes(b) => {
            let total = Some(b.len() as u64);
            for part in b.chunks(CHUNK) {
                w.write_all(part).await.map_err(SshError::Write)?;
                n += part.len() as u64;
                progress.progress(n, total, "bytes");
            }
        }
        UploadContent::File(p) => {
            let read = |source| SshError::Read { path: p.clone(), source };
            let mut f = tokio::fs::File::open(p).await.map_err(read)?;
            let total = f.metadata().await.ok().map(|m| m.len());
            let mut buf = vec![0u8; CHUNK];
            loop {
                let k = f.read(&mut buf).await.map_err(read)?;
                if k == 0 {
                    break;
                }
                w.write_all(&buf[..k]).await.map_err(SshError::Write)?;
                n += k as u64;
                progress.progress(n, total.map(|t| t.max(n)), "bytes");
            }
        }
        _ => return Err(SshError::UnsupportedContent),
    }
    if n == 0 {
        progress.progress(0, Some(0), "bytes");
    }
    Ok(n)
}

#[async_trait]
impl Communicator for SshCommunicator {
    fn platform(&self) -> Platform {
        Platform::Linux
    }

    async fn execute(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus> {
        match req.timeout {
            Some(t) => tokio::time::timeout(t, self.run(req, out))
                .await
                .map_err(|_| Error::Timeout { operation: short(&req.command), after: t })?,
            None => self.run(req, out).await,
        }
    }

    async fn upload(&self, req: &UploadRequest) -> Result<u64> {
        self.upload_reporting(req, &aib_core::NullSink).await
    }

    async fn upload_with_progress(&self, req: &UploadRequest, progress: &(dyn OutputSink + 'static)) -> Result<u64> {
        self.upload_reporting(req, progress).await
    }

    async fn reconnect(&self, opts: &ReconnectOptions) -> Result<()> {
        let old = self.session.lock().await.take();
        if let Some(s) = old {
            let _ = s.disconnect(Disconnect::ByApplication, "reconnecting", "en").await;
        }
        let s = self.open(opts.timeout).await?;
        *self.session.lock().await = Some(s);
        Ok(())
    }
}
