//! A fake Windows machine that understands what aib sends it over WinRM (chunked uploads and
//! their SHA-256 check, scheduled tasks for elevated and LocalSystem runs, the boot id,
//! restarts, Windows Update rounds, Sysprep) and through ARM's Run Command (the WinRM HTTPS
//! listener's setup and removal); and [`WindowsGuests`], which back the ARM test server's
//! Windows VMs with such machines behind a real WS-Management server and TLS.
//!
//! PowerShell is not run: the machine recognises aib's scripts and a few plain statements
//! (`Write-Output`, `exit N`, `[Console]::Error.WriteLine(…)`, `Get-Content`, `& 'file'`,
//! `Remove-Item`); anything else succeeds silently. Tests read and script its state.

use crate::guest::{CommandOutput, CommandRun, Guest, GuestHost, GuestSpec};
use crate::tls::{OPENSSL_HINT, TlsFront};
use crate::winrm::{WinRmCommand, WinRmReply, WinRmServer};
use base64::Engine;
use sha2::Digest;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// The marker aib's scheduled-task wrapper prints before the task's exit code.
pub const TASK_EXIT_MARK: &str = "aib-task-exit:";
/// The command aib reads the boot time with.
pub const BOOT_ID_COMMAND: &str = "(Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')";
/// Sysprep's image state once generalized.
pub const GENERALIZED: &str = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE";

/// The machine's state, open for tests to read and script.
#[derive(Default)]
#[non_exhaustive]
pub struct WindowsState {
    /// Files by path.
    pub files: HashMap<String, Vec<u8>>,
    /// Directories made (`mkdir`, `New-Item -ItemType Directory`), lower-case.
    pub directories: HashSet<String>,
    /// Exit codes the restart command answers before it works (1115: shutdown in progress).
    pub restart_refusals: VecDeque<i32>,
    /// Scripted Windows Update rounds (the default: nothing found).
    pub update_rounds: VecDeque<WinRmReply>,
    /// The Windows Update scripts run.
    pub update_scripts: Vec<String>,
    /// Who each scheduled task ran as (`SYSTEM` or the user).
    pub task_principals: Vec<String>,
    /// Restarts done.
    pub restarts: u32,
    /// `HKLM:\…\Setup\State` `ImageState`.
    pub image_state: String,
    /// Scripts received through Run Command.
    pub run_commands: Vec<String>,
    /// Whether the WinRM HTTPS listener is configured.
    pub https_listener: bool,
    /// The admin user the VM was created with.
    pub admin_user: String,
    /// Its password (for tests that check it is never shown).
    pub admin_password: String,
}

impl fmt::Debug for WindowsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowsState")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .field("restarts", &self.restarts)
            .field("image_state", &self.image_state)
            .field("https_listener", &self.https_listener)
            .field("run_commands", &self.run_commands.len())
            .field("admin_user", &self.admin_user)
            .finish_non_exhaustive()
    }
}

/// A fake Windows machine; clones share it.
#[derive(Clone, Default)]
pub struct FakeWindows {
    state: Arc<Mutex<WindowsState>>,
}

impl fmt::Debug for FakeWindows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FakeWindows").field(&*self.state()).finish()
    }
}

fn sha256_hex(b: &[u8]) -> String {
    sha2::Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// The single-quoted PowerShell string after `after`, unescaped (`''` is `'`).
fn quoted(s: &str, after: &str) -> Option<String> {
    let i = s.find(after)? + after.len();
    let rest = &s[i..];
    let start = rest.find('\'')? + 1;
    let mut out = String::new();
    let mut chars = rest[start..].chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' {
            if chars.peek() == Some(&'\'') {
                chars.next();
                out.push('\'');
                continue;
            }
            return Some(out);
        }
        out.push(c);
    }
    None
}

/// What one script runs with: its environment, whether it is elevated, and how long it
/// sleeps (`Start-Sleep`).
#[derive(Default)]
struct Session {
    env: HashMap<String, String>,
    elevated: bool,
    sleep: Duration,
}

/// Runs the statements the machine understands; others succeed silently.
fn interpret(m: &mut WindowsState, script: &str, out: &mut String, err: &mut String) -> i32 {
    interpret_at(m, &mut Session::default(), script, out, err, 0)
}

fn interpret_at(m: &mut WindowsState, session: &mut Session, script: &str, out: &mut String, err: &mut String, depth: usize) -> i32 {
    if depth > 16 {
        err.push_str("The script call depth overflowed.\n");
        return 1;
    }
    let mut last = 0;
    for stmt in script.split(['\n', ';']).map(str::trim).filter(|s| !s.is_empty()) {
        if stmt.contains("IsInRole(") {
            out.push_str(if session.elevated { "True\n" } else { "False\n" });
        } else if let Some((name, value)) = stmt.strip_prefix("$env:").and_then(|a| a.split_once('=')) {
            session.env.insert(name.trim().to_string(), quoted(value, "").unwrap_or_default());
        } else if let Some(secs) = stmt.strip_prefix("Start-Sleep -Seconds ") {
            session.sleep += Duration::from_secs(secs.trim().parse().unwrap_or(0));
        } else if let Some(v) = stmt.strip_prefix("Write-Output ").or_else(|| stmt.strip_prefix("echo ")) {
            let v = v.trim();
            match v.strip_prefix("$env:") {
                Some(name) => out.push_str(session.env.get(name).map(String::as_str).unwrap_or_default()),
                None => out.push_str(v.trim_matches('\'').trim_matches('"')),
            }
            out.push('\n');
        } else if let Some(dir) = stmt.strip_prefix("mkdir ").or_else(|| stmt.strip_prefix("md ")) {
            m.directories.insert(dir.trim().trim_matches(['\'', '"']).to_ascii_lowercase());
        } else if stmt.starts_with("New-Item") && stmt.contains("Directory") {
            if let Some(dir) = quoted(stmt, "-Path") {
                m.directories.insert(dir.to_ascii_lowercase());
            }
        } else if stmt.starts_with("[Console]::Error.WriteLine(") {
            err.push_str(&quoted(stmt, "WriteLine(").unwrap_or_default());
            err.push('\n');
        } else if let Some(code) = stmt.strip_prefix("exit ") {
            return if code.trim() == "$LASTEXITCODE" { last } else { code.trim().parse().unwrap_or(1) };
        } else if stmt.starts_with("Get-Content") {
            let p = quoted(stmt, "-LiteralPath").unwrap_or_default();
            match m.files.get(&p) {
                Some(b) => out.push_str(&String::from_utf8_lossy(b)),
                None => return 1,
            }
        } else if let Some(rest) = stmt.strip_prefix("& ") {
            let p = quoted(rest, "").unwrap_or_default();
            let body = m.files.get(&p).cloned().unwrap_or_default();
            last = interpret_at(m, session, &String::from_utf8_lossy(&body), out, err, depth + 1);
        } else if stmt.starts_with("Remove-Item")
            && let Some(p) = quoted(stmt, "-LiteralPath")
        {
            m.files.remove(&p);
        }
    }
    last
}

/// The Windows override of generalization AIB honours.
const DEPROVISIONING_OVERRIDE: &str = r"C:\DeprovisioningScript.ps1";

/// Sysprep, or the override AIB honours when it exists: (stdout, stderr, exit code).
fn generalize(m: &mut WindowsState) -> (String, String, i32) {
    if m.files.contains_key(DEPROVISIONING_OVERRIDE) {
        let (mut out, mut err) = (format!("aib: running {DEPROVISIONING_OVERRIDE}\n"), String::new());
        let code = interpret(m, &format!("& '{DEPROVISIONING_OVERRIDE}'"), &mut out, &mut err);
        return (out, err, code);
    }
    m.image_state = GENERALIZED.into();
    (format!("aib: Sysprep.exe /oobe /generalize /quiet /quit\naib: ImageState {GENERALIZED}\n"), String::new(), 0)
}

impl FakeWindows {
    /// A fresh machine.
    pub fn new() -> Self {
        FakeWindows::default()
    }

    /// Its state, to read or script.
    pub fn state(&self) -> MutexGuard<'_, WindowsState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handler for [`WinRmServer::start`].
    pub fn handler(&self) -> impl Fn(&WinRmCommand, u64) -> WinRmReply + Send + Sync + 'static {
        let me = self.clone();
        move |cmd, boots| me.reply(cmd, boots)
    }

    /// What the machine answers to a command arriving over WinRM.
    pub fn reply(&self, cmd: &WinRmCommand, boots: u64) -> WinRmReply {
        let mut m = self.state();
        let Some(script) = cmd.script.clone() else { return WinRmReply::output("", 0) };
        let b64 = base64::engine::general_purpose::STANDARD;
        if script.contains("Register-ScheduledTask") {
            m.task_principals.push(if script.contains("NT AUTHORITY\\SYSTEM") {
                "SYSTEM".into()
            } else {
                quoted(&script, "-UserId").unwrap_or_default()
            });
            let Some(inner) = quoted(&script, "FromBase64String(").and_then(|s| b64.decode(s).ok()).and_then(|b| String::from_utf8(b).ok())
            else {
                return WinRmReply::output("", 1).with_stderr("no task script\n");
            };
            if inner.contains("Microsoft.Update.Session") {
                m.update_scripts.push(inner);
                return m.update_rounds.pop_front().unwrap_or_else(|| WinRmReply::output("aib-wu:found 0\n", 0));
            }
            let (mut out, mut err) = (String::new(), String::new());
            let mut session = Session { elevated: true, ..Session::default() };
            let code = interpret_at(&mut m, &mut session, &inner, &mut out, &mut err, 0);
            out.push_str(&format!("{TASK_EXIT_MARK}{code}\n"));
            return WinRmReply::output(out, code).with_stderr(err).with_busy_for(session.sleep);
        }
        if script.contains("[IO.File]::WriteAllBytes(") && script.contains("[byte[]]@()") {
            if let Some(p) = quoted(&script, "WriteAllBytes(") {
                m.files.insert(p, Vec::new());
            }
            return WinRmReply::output("", 0);
        }
        if script.contains("$f = [IO.File]::Open(") {
            let data = quoted(&script, "FromBase64String(").and_then(|s| b64.decode(s).ok()).unwrap_or_default();
            let p = quoted(&script, "[IO.File]::Open(").unwrap_or_default();
            return match m.files.get_mut(&p) {
                Some(f) => {
                    f.extend(data);
                    WinRmReply::output("", 0)
                }
                None => WinRmReply::output("", 1).with_stderr(format!("{p} does not exist\n")),
            };
        }
        if script.contains("Sysprep.exe /oobe /generalize") {
            let (out, err, code) = generalize(&mut m);
            return WinRmReply::output(out, code).with_stderr(err);
        }
        if script.contains("Get-FileHash") && script.contains("Move-Item") {
            let (part, want, dest) = (quoted(&script, "-LiteralPath"), quoted(&script, "-ne"), quoted(&script, "-Destination"));
            let (Some(part), Some(want), Some(dest)) = (part, want, dest) else { return WinRmReply::output("", 1) };
            let data = m.files.remove(&part).unwrap_or_default();
            let got = sha256_hex(&data);
            if got != want {
                return WinRmReply::output(format!("mismatch {got}\n"), 1);
            }
            m.files.insert(dest, data);
            return WinRmReply::output(format!("{got}\n"), 0);
        }
        if script.contains("Get-FileHash") {
            let p = quoted(&script, "-LiteralPath").unwrap_or_default();
            return match m.files.get(&p) {
                Some(d) => WinRmReply::output(format!("{}\n", sha256_hex(d)), 0),
                None => WinRmReply::output("", 1),
            };
        }
        if script.contains("Test-Path") && script.contains("-LiteralPath") {
            let p = quoted(&script, "-LiteralPath").unwrap_or_default();
            let exists = p.eq_ignore_ascii_case(r"C:\Windows\Temp")
                || m.directories.contains(&p.to_ascii_lowercase())
                || m.files.keys().any(|f| f.starts_with(&format!("{p}\\")));
            return WinRmReply::output("", if exists { 0 } else { 1 });
        }
        if script.trim() == BOOT_ID_COMMAND {
            return WinRmReply::output(format!("2026-11-29T00:00:0{boots}Z\n"), 0);
        }
        if script.starts_with("cmd.exe /c --% ") {
            if let Some(code) = m.restart_refusals.pop_front() {
                return WinRmReply::output("", code);
            }
            m.restarts += 1;
            return WinRmReply::restart(Duration::from_millis(300));
        }
        let (mut out, mut err) = (String::new(), String::new());
        let mut session = Session::default();
        let code = interpret_at(&mut m, &mut session, &script, &mut out, &mut err, 0);
        WinRmReply::output(out, code).with_stderr(err).in_chunks(2).with_busy_for(session.sleep)
    }
}

/// What the Windows guest's own thread is asked to do.
enum ListenerCommand {
    /// Configure the HTTPS listener with a fresh certificate; answers its SHA-256 (hex).
    Start(std::sync::mpsc::Sender<Result<String, String>>),
    /// Remove the HTTPS listener; answers once it is gone.
    Stop(std::sync::mpsc::Sender<()>),
}

/// Windows guests for the ARM test server: each VM is a [`FakeWindows`] behind a real
/// WS-Management server that accepts the VM's `adminUsername`/`adminPassword` (Basic). As on
/// an Azure Windows image, there is no HTTPS listener at first: the Run Command script that
/// creates a self-signed certificate and the listener starts a TLS front at the VM's address
/// on [`GuestHost::port`] and prints the certificate's SHA-256; the script that removes the
/// listener stops it.
#[derive(Debug, Clone)]
pub struct WindowsGuests {
    port: u16,
    machines: Arc<Mutex<Vec<(String, FakeWindows)>>>,
}

impl WindowsGuests {
    /// Guests whose HTTPS listeners use a free port.
    pub fn new() -> Result<Self, String> {
        match std::process::Command::new("openssl").arg("version").output() {
            Ok(o) if o.status.success() => {}
            _ => return Err(OPENSSL_HINT.into()),
        }
        let port = crate::sshd::free_port().map_err(|e| e.0)?;
        Ok(WindowsGuests { port, machines: Arc::default() })
    }

    /// Every machine started, with its VM's id.
    pub fn machines(&self) -> Vec<(String, FakeWindows)> {
        self.machines.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

struct WindowsGuest {
    machine: FakeWindows,
    address: String,
    tx: tokio::sync::mpsc::UnboundedSender<ListenerCommand>,
}

impl fmt::Debug for WindowsGuest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WindowsGuest").field("address", &self.address).finish_non_exhaustive()
    }
}

impl Guest for WindowsGuest {
    fn run_command(&self, script: &str) -> Result<CommandRun, String> {
        self.machine.state().run_commands.push(script.to_string());
        let (machine, tx, script) = (self.machine.clone(), self.tx.clone(), script.to_string());
        Ok(Box::new(move || run_script(&machine, &tx, script)))
    }
}

/// What a Run Command script does on the machine: aib's WinRM setup starts the HTTPS
/// listener and prints its certificate's SHA-256; its cleanup stops the listener; a script
/// embedded in base64 (the generalizer) runs, its exit code standing for `$code`.
fn run_script(
    machine: &FakeWindows,
    tx: &tokio::sync::mpsc::UnboundedSender<ListenerCommand>,
    script: String,
) -> Result<CommandOutput, String> {
    if script.contains("New-SelfSignedCertificate") && script.contains("WSMan:\\localhost\\Listener") {
        let (reply, answer) = std::sync::mpsc::channel();
        tx.send(ListenerCommand::Start(reply)).map_err(|_| "the guest is stopped".to_string())?;
        let sha = answer.recv_timeout(Duration::from_secs(20)).map_err(|e| format!("the listener did not start: {e}"))??;
        machine.state().https_listener = true;
        return Ok(CommandOutput { stdout: format!("aib-winrm-certificate-sha256:{sha}\n"), stderr: String::new() });
    }
    if script.contains("WSMan:\\localhost\\Listener") && script.contains("Remove-Item") {
        let (reply, answer) = std::sync::mpsc::channel();
        if tx.send(ListenerCommand::Stop(reply)).is_ok() {
            let _ = answer.recv_timeout(Duration::from_secs(20));
        }
        machine.state().https_listener = false;
    }
    let (mut out, mut err) = (String::new(), String::new());
    let mut m = machine.state();
    let mut script = script;
    let embedded = quoted(&script, "FromBase64String(")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    if let Some(inner) = embedded {
        let (o, e, code) = if inner.contains("Sysprep.exe /oobe /generalize") {
            generalize(&mut m)
        } else {
            let (mut o, mut e) = (String::new(), String::new());
            let code = interpret(&mut m, &inner, &mut o, &mut e);
            (o, e, code)
        };
        let at = script.find("FromBase64String(").unwrap_or(0);
        interpret(&mut m, &script[..at], &mut out, &mut err);
        out.push_str(&o);
        err.push_str(&e);
        script = script[at..].replace("$code", &code.to_string());
    }
    interpret(&mut m, &script, &mut out, &mut err);
    Ok(CommandOutput { stdout: out, stderr: err })
}

impl GuestHost for WindowsGuests {
    fn port(&self) -> u16 {
        self.port
    }

    fn start(&self, spec: &GuestSpec) -> Result<Box<dyn Guest>, String> {
        if !spec.windows {
            return Err("the test server's Windows guests run Windows images only".into());
        }
        let password = spec.admin_password.clone().ok_or("a Windows VM needs osProfile.adminPassword")?;
        let machine = FakeWindows::new();
        {
            let mut st = machine.state();
            st.admin_user = spec.admin_user.clone();
            st.admin_password = password.clone();
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (ready, started) = std::sync::mpsc::channel::<Result<(), String>>();
        let (user, address, port, m) = (spec.admin_user.clone(), spec.address.clone(), self.port, machine.clone());
        // The guest's servers run on a runtime of their own: the ARM server starts guests
        // from synchronous code inside its handler.
        std::thread::Builder::new()
            .name(format!("windows-guest-{address}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => return drop(ready.send(Err(e.to_string()))),
                };
                rt.block_on(async move {
                    let server = match WinRmServer::start(&user, &password, m.handler()).await {
                        Ok(s) => s,
                        Err(e) => return drop(ready.send(Err(format!("WS-Management server: {e}")))),
                    };
                    let _ = ready.send(Ok(()));
                    let mut front: Option<TlsFront> = None;
                    while let Some(cmd) = rx.recv().await {
                        match cmd {
                            ListenerCommand::Start(reply) => {
                                if let Some(f) = front.take() {
                                    f.stop().await;
                                }
                                match TlsFront::start(&address, port, server.port()).await {
                                    Ok(f) => {
                                        let _ = reply.send(Ok(f.fingerprint_hex()));
                                        front = Some(f);
                                    }
                                    Err(e) => drop(reply.send(Err(format!("HTTPS listener at {address}:{port}: {e}")))),
                                }
                            }
                            ListenerCommand::Stop(reply) => {
                                if let Some(f) = front.take() {
                                    f.stop().await;
                                }
                                let _ = reply.send(());
                            }
                        }
                    }
                    drop(front);
                });
            })
            .map_err(|e| e.to_string())?;
        started.recv_timeout(Duration::from_secs(20)).map_err(|e| format!("the guest did not start: {e}"))??;
        if let Ok(mut all) = self.machines.lock() {
            all.push((spec.vm_id.clone(), machine.clone()));
        }
        Ok(Box::new(WindowsGuest { machine, address: spec.address.clone(), tx }))
    }
}
