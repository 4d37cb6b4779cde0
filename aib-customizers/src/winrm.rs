//! The WinRM communicator (winrm-rs): PowerShell with streamed output and exit codes, chunked
//! uploads verified by SHA-256, elevation through a scheduled task, reconnection after a
//! restart.

use crate::fetch::sha256_hex;
use crate::lines::LineSplitter;
use crate::quote::{is_env_name, ps_quote};
use crate::windows::{TaskPrincipal, scheduled_task_script};
use aib_core::{
    Communicator, Error, ExecRequest, ExitStatus, OutputSink, OutputStream, Platform, ReconnectOptions, Result, UploadContent,
    UploadRequest,
};
use async_trait::async_trait;
use base64::Engine;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};
use winrm_rs::{AuthMethod, EncryptionMode, WinrmClient, WinrmConfig, WinrmCredentials, WinrmError};

const BACKEND: &str = "winrm";

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WinRmTransport {
    /// HTTPS (port 5986), the certificate checked against the public CA roots.
    Https,
    /// HTTPS to a listener whose certificate has this SHA-256 fingerprint (a build VM's
    /// self-signed certificate, learnt through a trusted channel): carried by a loopback
    /// [`PinnedTlsTunnel`](crate::tls_pin::PinnedTlsTunnel), since winrm-rs cannot pin.
    HttpsPinnedCertificate([u8; 32]),
    /// HTTPS accepting any certificate: the explicit opt-in for a self-signed listener whose
    /// fingerprint is not known. Prefer [`WinRmTransport::HttpsPinnedCertificate`].
    HttpsInsecureAcceptAnyCertificate,
    /// Plain HTTP (port 5985): opt-in, for test servers and isolated networks.
    Http,
}

/// How to authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WinRmAuth {
    /// NTLMv2 (messages sealed over HTTP).
    Ntlm,
    /// Basic (only over HTTPS, or for tests).
    Basic,
}

/// WinRM settings, built with [`WinRmConfig::builder`].
#[derive(Clone)]
pub struct WinRmConfig {
    host: String,
    port: u16,
    user: String,
    password: String,
    transport: WinRmTransport,
    auth: WinRmAuth,
    operation_timeout: Duration,
    connect_timeout: Duration,
    chunk: usize,
}

impl fmt::Debug for WinRmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WinRmConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"***")
            .field("transport", &self.transport)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// Builds a [`WinRmConfig`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct WinRmConfigBuilder {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<String>,
    transport: Option<WinRmTransport>,
    auth: Option<WinRmAuth>,
    operation_timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    chunk: Option<usize>,
}

fn invalid(key: &str, message: &str) -> Error {
    Error::InvalidConfig { backend: BACKEND, key: key.into(), message: message.into() }
}

impl WinRmConfig {
    /// A builder: HTTPS on 5986 with NTLM, 60 s operations, a 10-minute connect deadline.
    pub fn builder() -> WinRmConfigBuilder {
        WinRmConfigBuilder::default()
    }
}

impl WinRmConfigBuilder {
    /// Host.
    pub fn host(mut self, h: impl Into<String>) -> Self {
        self.host = Some(h.into());
        self
    }
    /// Port (default 5986, or 5985 for HTTP).
    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }
    /// User and password.
    pub fn credentials(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }
    /// Transport.
    pub fn transport(mut self, t: WinRmTransport) -> Self {
        self.transport = Some(t);
        self
    }
    /// Authentication.
    pub fn auth(mut self, a: WinRmAuth) -> Self {
        self.auth = Some(a);
        self
    }
    /// Timeout of one WS-Management operation.
    pub fn operation_timeout(mut self, t: Duration) -> Self {
        self.operation_timeout = Some(t);
        self
    }
    /// How long to keep trying to reach a (re)starting machine.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = Some(t);
        self
    }
    /// Upload chunk size in bytes (default 32 KiB; each chunk is one command).
    pub fn upload_chunk(mut self, n: usize) -> Self {
        self.chunk = Some(n);
        self
    }

    /// Checks and builds.
    pub fn build(self) -> Result<WinRmConfig> {
        let host = self.host.filter(|h| !h.is_empty()).ok_or_else(|| invalid("host", "set the host"))?;
        let user = self.user.filter(|u| !u.is_empty()).ok_or_else(|| invalid("user", "set credentials"))?;
        let password = self.password.unwrap_or_default();
        let transport = self.transport.unwrap_or(WinRmTransport::Https);
        let auth = self.auth.unwrap_or(WinRmAuth::Ntlm);
        let chunk = self.chunk.unwrap_or(32 * 1024);
        if !(512..=48 * 1024).contains(&chunk) {
            return Err(invalid("upload_chunk", "use 512 bytes to 48 KiB (a chunk must fit one WS-Management envelope)"));
        }
        Ok(WinRmConfig {
            host,
            port: self.port.unwrap_or(if transport == WinRmTransport::Http { 5985 } else { 5986 }),
            user,
            password,
            transport,
            auth,
            operation_timeout: self.operation_timeout.unwrap_or(Duration::from_secs(60)),
            connect_timeout: self.connect_timeout.unwrap_or(Duration::from_secs(600)),
            chunk,
        })
    }
}

/// A shell on the VM, closed however the command's future ends: explicitly where it finishes,
/// from a spawned task where the future is dropped (a cancelled run, a step's timeout), so
/// shells never pile up towards the server's `MaxShellsPerUser`.
struct OpenShell {
    client: Arc<WinrmClient>,
    endpoint: String,
    id: String,
    command: Option<String>,
    open: bool,
}

impl OpenShell {
    async fn close(&mut self) {
        self.open = false;
        close_shell(&self.client, &self.endpoint, &self.id, self.command.as_deref()).await;
    }
}

/// Best effort: a failure to close is the VM's to forget when it is deleted.
async fn close_shell(client: &WinrmClient, endpoint: &str, id: &str, command: Option<&str>) {
    if let Some(c) = command {
        let _ = client.signal_terminate(endpoint, id, c).await;
    }
    let _ = client.delete_shell(endpoint, id).await;
}

impl Drop for OpenShell {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (client, endpoint, id, command) =
            (self.client.clone(), std::mem::take(&mut self.endpoint), std::mem::take(&mut self.id), self.command.take());
        rt.spawn(async move { close_shell(&client, &endpoint, &id, command.as_deref()).await });
    }
}

/// A connection to a Windows build VM over WinRM.
pub struct WinRmCommunicator {
    cfg: WinRmConfig,
    client: Arc<WinrmClient>,
    /// Where WinRM requests go: the host, or 127.0.0.1 with a pinned-TLS tunnel.
    endpoint: String,
    tunnel: Option<crate::tls_pin::PinnedTlsTunnel>,
}

impl fmt::Debug for WinRmCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WinRmCommunicator").field("config", &self.cfg).finish_non_exhaustive()
    }
}

impl fmt::Display for WinRmCommunicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.cfg.transport == WinRmTransport::Http { "http" } else { "https" };
        write!(f, "winrm+{scheme}://{}@{}:{}", self.cfg.user, self.cfg.host, self.cfg.port)
    }
}

fn map_err(e: WinrmError) -> Error {
    match e {
        WinrmError::Http(e) => Error::Disconnected { backend: BACKEND, source: Box::new(e) },
        WinrmError::AuthFailed(m) => Error::Unauthenticated { backend: BACKEND, source: m.into() },
        WinrmError::Timeout(s) => Error::Timeout { operation: "WinRM operation".into(), after: Duration::from_secs(s) },
        WinrmError::Cancelled => Error::Cancelled,
        other => Error::generic(BACKEND, other),
    }
}

/// The proxy variable that would route a plain-HTTP request to `host` through a proxy, if any
/// (`NO_PROXY` entries `*`, the host itself, or `127.0.0.0/8` for loopback exempt it).
fn system_proxy_for(host: &str) -> Option<&'static str> {
    let set = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let var = ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"].into_iter().find(|k| set(k).is_some())?;
    let no_proxy = set("no_proxy").or_else(|| set("NO_PROXY")).unwrap_or_default();
    let loopback = host == "127.0.0.1" || host == "localhost" || host == "::1";
    let exempt = no_proxy.split(',').map(str::trim).any(|e| e == "*" || e.eq_ignore_ascii_case(host) || (loopback && e == "127.0.0.0/8"));
    (!exempt).then_some(var)
}

/// `powershell.exe` arguments running `script`.
fn powershell_args(script: &str) -> Vec<String> {
    let utf16: Vec<u8> = script.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    let enc = base64::engine::general_purpose::STANDARD.encode(utf16);
    ["-NoProfile", "-NonInteractive", "-ExecutionPolicy", "Bypass", "-EncodedCommand"].iter().map(|s| s.to_string()).chain([enc]).collect()
}

impl WinRmCommunicator {
    /// Connects: waits (until the connect deadline) for the machine to run a command.
    pub async fn connect(cfg: WinRmConfig) -> Result<Self> {
        // A pinned certificate: plain WinRM to a loopback tunnel that speaks TLS to the VM and
        // accepts only that certificate; TLS protects the wire, so no message encryption.
        let tunnel = match cfg.transport {
            WinRmTransport::HttpsPinnedCertificate(pin) => Some(crate::tls_pin::PinnedTlsTunnel::start(&cfg.host, cfg.port, pin).await?),
            _ => None,
        };
        let config = WinrmConfig {
            port: tunnel.as_ref().map(|t| t.port()).unwrap_or(cfg.port),
            use_tls: tunnel.is_none() && cfg.transport != WinRmTransport::Http,
            accept_invalid_certs: cfg.transport == WinRmTransport::HttpsInsecureAcceptAnyCertificate,
            auth_method: match cfg.auth {
                WinRmAuth::Ntlm => AuthMethod::Ntlm,
                WinRmAuth::Basic => AuthMethod::Basic,
            },
            operation_timeout_secs: cfg.operation_timeout.as_secs().max(1),
            connect_timeout_secs: 30,
            encryption: if tunnel.is_some() { EncryptionMode::Never } else { EncryptionMode::Auto },
            ..Default::default()
        };
        let endpoint = if tunnel.is_some() { "127.0.0.1".to_string() } else { cfg.host.clone() };
        // Plain HTTP (to the pinned tunnel, or an explicit `Http` transport) carries Basic
        // credentials and every script: a system proxy must not be on the way. winrm-rs's HTTP
        // client honours `HTTP_PROXY`, so refuse before the first request instead.
        if !config.use_tls
            && let Some(var) = system_proxy_for(&endpoint)
        {
            return Err(Error::InvalidConfig {
                backend: BACKEND,
                key: var.into(),
                message: format!(
                    "a system proxy is set and would receive WinRM's credentials and scripts in plain HTTP to {endpoint}; add {endpoint} to NO_PROXY or unset {var}"
                ),
            });
        }
        let client = WinrmClient::new(config, WinrmCredentials::new(cfg.user.clone(), cfg.password.clone(), "")).map_err(map_err)?;
        let c = WinRmCommunicator { cfg, client: Arc::new(client), endpoint, tunnel };
        c.wait_until_up(c.cfg.connect_timeout).await?;
        Ok(c)
    }

    /// The configuration.
    pub fn config(&self) -> &WinRmConfig {
        &self.cfg
    }

    async fn wait_until_up(&self, deadline: Duration) -> Result<()> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(200);
        loop {
            let probe = ExecRequest::new("Write-Output 'aib-ready'").with_timeout(self.cfg.operation_timeout);
            let err = match self.run(&probe, &aib_core::NullSink).await {
                Ok(st) if st.success() => return Ok(()),
                Ok(st) => format!("probe ended with {st}"),
                Err(e @ Error::Unauthenticated { .. }) => return Err(e),
                Err(e) => e.to_string(),
            };
            // A certificate that is not the pinned one will not become it: stop at once.
            if let Some(why) = self.tunnel.as_ref().and_then(|t| t.refused_certificate()) {
                return Err(Error::PermissionDenied { backend: BACKEND, source: why.into() });
            }
            let tunnel_err = self.tunnel.as_ref().and_then(|t| t.last_error());
            let err = match tunnel_err {
                Some(t) => format!("{err}; tunnel: {t}"),
                None => err,
            };
            if start.elapsed() + wait >= deadline {
                return Err(Error::Timeout {
                    operation: format!("WinRM connect to {}:{} (last: {err})", self.cfg.host, self.cfg.port),
                    after: deadline,
                });
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    fn script(&self, req: &ExecRequest) -> Result<String> {
        let mut s = String::new();
        for (k, v) in &req.env {
            if !is_env_name(k) {
                return Err(invalid("env", &format!("`{k}` is not a valid environment variable name")));
            }
            s.push_str(&format!("$env:{k} = {}\n", ps_quote(v)));
        }
        s.push_str(&req.command);
        if req.elevated {
            let principal = TaskPrincipal::User { user: self.cfg.user.clone() };
            return Ok(scheduled_task_script(&s, &principal));
        }
        Ok(s)
    }

    async fn run(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus> {
        let script = self.script(req)?;
        let args = powershell_args(&script);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let id = self.client.create_shell(&self.endpoint).await.map_err(map_err)?;
        let mut shell = OpenShell { client: self.client.clone(), endpoint: self.endpoint.clone(), id, command: None, open: true };
        let cmd_id = match self.client.execute_command(&self.endpoint, &shell.id, "powershell.exe", &args).await {
            Ok(id) => id,
            Err(e) => {
                shell.close().await;
                return Err(map_err(e));
            }
        };
        shell.command = Some(cmd_id.clone());
        let (mut so, mut se) = (LineSplitter::default(), LineSplitter::default());
        // The scheduled-task wrapper of elevated runs ends with its own marker line: it is
        // aib's, not the command's, and the exit code comes back as the process's.
        let stdout = |l: &str| {
            if !l.starts_with(crate::windows::TASK_EXIT_MARK) {
                out.line(OutputStream::Stdout, l)
            }
        };
        // The timeout ends the wait, not the shell: it is closed below on every path but a
        // dropped connection (and by `OpenShell`'s drop when this future is), so timed-out,
        // failed and cancelled commands do not pile up on the VM.
        let deadline = req.timeout.map(|t| tokio::time::Instant::now() + t);
        let result = loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, self.client.receive_output(&self.endpoint, &shell.id, &cmd_id)).await {
                    Ok(r) => r,
                    Err(_) => {
                        let after = req.timeout.unwrap_or_default();
                        break Err(Error::Timeout { operation: req.command.lines().next().unwrap_or_default().to_string(), after });
                    }
                },
                None => self.client.receive_output(&self.endpoint, &shell.id, &cmd_id).await,
            };
            match next {
                Ok(r) => {
                    so.push(&r.stdout, stdout);
                    se.push(&r.stderr, |l| out.line(OutputStream::Stderr, l));
                    if r.done {
                        break Ok(ExitStatus { code: r.exit_code, signal: None, disconnected: false });
                    }
                }
                Err(e) => {
                    let e = map_err(e);
                    break if req.expect_disconnect && matches!(e, Error::Disconnected { .. }) {
                        Ok(ExitStatus { code: None, signal: None, disconnected: true })
                    } else {
                        Err(e)
                    };
                }
            }
        };
        so.finish(stdout);
        se.finish(|l| out.line(OutputStream::Stderr, l));
        let dropped = match &result {
            Ok(s) => s.disconnected,
            Err(e) => matches!(e, Error::Disconnected { .. }),
        };
        if dropped {
            shell.open = false;
        } else {
            shell.close().await;
        }
        result
    }

    async fn checked(&self, script: String) -> Result<String> {
        let sink = aib_core::MemorySink::new();
        let st = self.execute(&ExecRequest::new(script).with_timeout(self.cfg.operation_timeout * 2), &sink).await?;
        let text = sink.lines().into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n");
        if !st.success() {
            return Err(Error::StepFailed { step: "upload".into(), exit_code: st.code, message: text });
        }
        Ok(text)
    }
}

#[async_trait]
impl Communicator for WinRmCommunicator {
    fn platform(&self) -> Platform {
        Platform::Windows
    }

    async fn execute(&self, req: &ExecRequest, out: &(dyn OutputSink + 'static)) -> Result<ExitStatus> {
        self.run(req, out).await
    }

    async fn upload(&self, req: &UploadRequest) -> Result<u64> {
        self.upload_reporting(req, &aib_core::NullSink).await
    }

    async fn upload_with_progress(&self, req: &UploadRequest, progress: &(dyn OutputSink + 'static)) -> Result<u64> {
        self.upload_reporting(req, progress).await
    }

    async fn reconnect(&self, opts: &ReconnectOptions) -> Result<()> {
        self.wait_until_up(opts.timeout).await
    }
}

impl WinRmCommunicator {
    /// One command a chunk, then the checksum check and the move into place; the bytes sent
    /// are reported after each chunk.
    async fn upload_reporting(&self, req: &UploadRequest, progress: &dyn OutputSink) -> Result<u64> {
        let data = match &req.content {
            UploadContent::Bytes(b) => b.to_vec(),
            UploadContent::File(p) => tokio::fs::read(p).await.map_err(|e| Error::io(p, e))?,
            _ => return Err(Error::Unsupported { operation: "this upload content".into(), backend: BACKEND }),
        };
        let dest = ps_quote(&req.destination);
        let part = ps_quote(&format!("{}.aib-part", req.destination));
        self.checked(format!("$ErrorActionPreference = 'Stop'; [IO.File]::WriteAllBytes({part}, [byte[]]@())")).await?;
        let total = Some(data.len() as u64);
        let mut sent = 0u64;
        if data.is_empty() {
            progress.progress(0, total, "bytes");
        }
        for chunk in data.chunks(self.cfg.chunk) {
            let b64 = base64::engine::general_purpose::STANDARD.encode(chunk);
            self.checked(format!(
                "$ErrorActionPreference = 'Stop'; $b = [Convert]::FromBase64String('{b64}'); $f = [IO.File]::Open({part}, 'Append'); $f.Write($b, 0, $b.Length); $f.Close()"
            ))
            .await?;
            sent += chunk.len() as u64;
            progress.progress(sent, total, "bytes");
        }
        // The whole file or nothing: check the checksum, then move it into place.
        let want = sha256_hex(&data);
        let got = self
            .checked(format!(
                "$ErrorActionPreference = 'Stop'; $h = (Get-FileHash -Algorithm SHA256 -LiteralPath {part}).Hash.ToLower(); if ($h -ne '{want}') {{ Remove-Item -Force -LiteralPath {part}; Write-Output \"mismatch $h\"; exit 1 }}; Move-Item -Force -LiteralPath {part} -Destination {dest}; Write-Output $h"
            ))
            .await
            .map_err(|e| Error::StepFailed { step: format!("upload {}", req.destination), exit_code: None, message: format!("checksum check failed (expected {want}): {e}") })?;
        if !got.contains(&want) {
            return Err(Error::ChecksumMismatch { what: req.destination.clone(), expected: want, actual: got });
        }
        Ok(data.len() as u64)
    }
}
