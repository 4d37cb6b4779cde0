//! A WS-Management (WinRM shell protocol) test server on 127.0.0.1: Create shell, Command,
//! Receive, Signal, Delete, with Basic authentication. Commands go to a handler that plays
//! the Windows machine; PowerShell sent as `-EncodedCommand` arrives decoded.
//!
//! The machine can "restart": a reply with [`WinRmReply::restart`] takes it down (connections
//! are dropped without an answer) for a while, and it comes back with its boot count raised.

use crate::http::{HttpServer, Request, Response};
use base64::Engine;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A command as the machine received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinRmCommand {
    /// The program (`powershell.exe`).
    pub command: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The PowerShell script, when the command is `powershell … -EncodedCommand B64`.
    pub script: Option<String>,
}

/// What the machine answers to a command.
#[derive(Debug, Clone, Default)]
pub struct WinRmReply {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Exit code.
    pub exit_code: i32,
    /// Deliver the output over this many Receive calls (at least 1).
    pub chunks: usize,
    /// Go down for this long instead of answering (a restart).
    pub restart_for: Option<Duration>,
    /// Keep the command running this long before its output is delivered (Receive answers
    /// `Running` meanwhile, as WinRM does when its operation timeout passes).
    pub busy_for: Option<Duration>,
}

impl WinRmReply {
    /// Output and an exit code.
    pub fn output(stdout: impl Into<String>, exit_code: i32) -> Self {
        WinRmReply { stdout: stdout.into(), exit_code, chunks: 1, ..Default::default() }
    }

    /// Adds standard error.
    #[must_use]
    pub fn with_stderr(mut self, s: impl Into<String>) -> Self {
        self.stderr = s.into();
        self
    }

    /// Runs for `d` before the output comes.
    pub fn with_busy_for(mut self, d: Duration) -> Self {
        self.busy_for = Some(d).filter(|d| !d.is_zero());
        self
    }

    /// Splits the output over `n` Receive calls.
    #[must_use]
    pub fn in_chunks(mut self, n: usize) -> Self {
        self.chunks = n.max(1);
        self
    }

    /// The machine restarts: the command never answers, and the machine is down for `down`.
    pub fn restart(down: Duration) -> Self {
        WinRmReply { restart_for: Some(down), chunks: 1, ..Default::default() }
    }
}

/// The handler: a command and the machine's boot count, to a reply.
pub type WinRmHandler = Arc<dyn Fn(&WinRmCommand, u64) -> WinRmReply + Send + Sync>;

#[derive(Default)]
struct Pending {
    chunks: VecDeque<(Vec<u8>, Vec<u8>)>,
    exit_code: i32,
    restart_for: Option<Duration>,
    busy_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    shells: HashMap<String, ()>,
    commands: HashMap<String, Pending>,
    down_until: Option<Instant>,
    boots: u64,
    log: Vec<WinRmCommand>,
    requests: usize,
    rejected_auth: usize,
}

/// A running WinRM test server; stops when dropped.
pub struct WinRmServer {
    http: HttpServer,
    state: Arc<Mutex<State>>,
    user: String,
    password: String,
}

impl fmt::Debug for WinRmServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WinRmServer").field("port", &self.http.port()).field("user", &self.user).finish_non_exhaustive()
    }
}

const SHELL_NS: &str = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell";

fn envelope(body: &str) -> String {
    format!(
        r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" xmlns:rsp="{SHELL_NS}" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><s:Header/><s:Body>{body}</s:Body></s:Envelope>"#
    )
}

fn fault(code: &str, reason: &str) -> Response {
    let body = envelope(&format!(
        "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>{code}</s:Value></s:Subcode></s:Code><s:Reason><s:Text>{}</s:Text></s:Reason></s:Fault>",
        escape(reason)
    ));
    Response::new(500, body).header("Content-Type", "application/soap+xml;charset=UTF-8")
}

fn ok(body: &str) -> Response {
    Response::new(200, envelope(body)).header("Content-Type", "application/soap+xml;charset=UTF-8")
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// Texts of every `<…:name …>text</…:name>` element, by local name.
fn elements(xml: &str, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = xml;
    let open = format!(":{name}");
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        // The local name must end here, and this must be a start tag.
        let is_start = rest[..i].rfind('<').is_some_and(|lt| !rest[lt..i].contains('>') && !rest[lt + 1..i].starts_with('/'));
        if !is_start || !after.starts_with(['>', ' ']) {
            rest = after;
            continue;
        }
        let Some(gt) = after.find('>') else { break };
        let content = &after[gt + 1..];
        let Some(end) = content.find("</") else { break };
        out.push(unescape(&content[..end]));
        rest = &content[end..];
    }
    out
}

fn attribute(xml: &str, element: &str, attr: &str) -> Option<String> {
    let i = xml.find(&format!(":{element} "))?;
    let tag = &xml[i..i + xml[i..].find('>')?];
    let a = tag.find(&format!("{attr}=\""))? + attr.len() + 2;
    Some(tag[a..a + tag[a..].find('"')?].to_string())
}

fn decode_powershell(args: &[String]) -> Option<String> {
    let i = args.iter().position(|a| a.eq_ignore_ascii_case("-EncodedCommand"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(args.get(i + 1)?).ok()?;
    let units: Vec<u16> = bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
    String::from_utf16(&units).ok()
}

fn split<T: Clone>(data: &[T], n: usize) -> Vec<Vec<T>> {
    let size = data.len().div_ceil(n).max(1);
    let mut parts: Vec<Vec<T>> = data.chunks(size).map(|c| c.to_vec()).collect();
    parts.resize(n.max(parts.len()), Vec::new());
    parts
}

impl WinRmServer {
    /// Starts a server accepting Basic `user`/`password`; `handler` plays the machine.
    pub async fn start(
        user: &str,
        password: &str,
        handler: impl Fn(&WinRmCommand, u64) -> WinRmReply + Send + Sync + 'static,
    ) -> std::io::Result<Self> {
        let state = Arc::new(Mutex::new(State::default()));
        let handler: WinRmHandler = Arc::new(handler);
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")));
        let st = state.clone();
        let http = HttpServer::start(move |req| {
            let r = Self::handle(&st, &handler, &expected, req);
            async move { r }
        })
        .await?;
        Ok(WinRmServer { http, state, user: user.into(), password: password.into() })
    }

    fn handle(state: &Mutex<State>, handler: &WinRmHandler, expected_auth: &str, req: Request) -> Response {
        let Ok(mut st) = state.lock() else { return Response::new(500, "poisoned") };
        st.requests += 1;
        if let Some(until) = st.down_until {
            if Instant::now() < until {
                return Response::dropped();
            }
            st.down_until = None;
            st.boots += 1;
            st.shells.clear();
            st.commands.clear();
        }
        if req.method != "POST" || req.path != "/wsman" {
            return Response::new(404, "");
        }
        if req.headers.get("authorization").map(String::as_str) != Some(expected_auth) {
            st.rejected_auth += 1;
            return Response::new(401, "").header("WWW-Authenticate", "Basic realm=\"WSMAN\"");
        }
        let body = String::from_utf8_lossy(&req.body).into_owned();
        let action = elements(&body, "Action").into_iter().next().unwrap_or_default();
        let shell_id = body
            .find("Name=\"ShellId\"")
            .and_then(|i| body[i..].find('>').map(|j| i + j + 1))
            .and_then(|s| body[s..].find('<').map(|e| body[s..s + e].to_string()));
        let verb = action.rsplit('/').next().unwrap_or_default().to_string();
        match verb.as_str() {
            "Create" => {
                let id = uuid::Uuid::new_v4().to_string().to_uppercase();
                st.shells.insert(id.clone(), ());
                ok(&format!("<rsp:Shell><rsp:ShellId>{id}</rsp:ShellId><rsp:ResourceUri>{SHELL_NS}/cmd</rsp:ResourceUri></rsp:Shell>"))
            }
            "Command" | "Receive" | "Signal" | "Delete" if !shell_id.as_ref().is_some_and(|s| st.shells.contains_key(s)) => {
                fault("w:InvalidSelectors", "The WS-Management service cannot process the request because the shell was not found")
            }
            "Command" => {
                let command = elements(&body, "Command").into_iter().next().unwrap_or_default();
                let args = elements(&body, "Arguments");
                let script = decode_powershell(&args);
                let cmd = WinRmCommand { command, args, script };
                st.log.push(cmd.clone());
                let boots = st.boots;
                drop(st);
                let reply = handler(&cmd, boots);
                let Ok(mut st) = state.lock() else { return Response::new(500, "poisoned") };
                let id = uuid::Uuid::new_v4().to_string().to_uppercase();
                let n = reply.chunks.max(1);
                let chunks = split(reply.stdout.as_bytes(), n).into_iter().zip(split(reply.stderr.as_bytes(), n)).collect();
                let busy_until = reply.busy_for.map(|d| Instant::now() + d);
                st.commands.insert(id.clone(), Pending { chunks, exit_code: reply.exit_code, restart_for: reply.restart_for, busy_until });
                ok(&format!("<rsp:CommandResponse><rsp:CommandId>{id}</rsp:CommandId></rsp:CommandResponse>"))
            }
            "Receive" => {
                let id = attribute(&body, "DesiredStream", "CommandId").unwrap_or_default();
                let Some(p) = st.commands.get_mut(&id) else { return fault("w:InvalidParameter", "unknown command") };
                if let Some(down) = p.restart_for.take() {
                    st.down_until = Some(Instant::now() + down);
                    return Response::dropped();
                }
                if let Some(left) = p.busy_until.and_then(|u| u.checked_duration_since(Instant::now())) {
                    drop(st);
                    std::thread::sleep(left.min(Duration::from_millis(200)));
                    return ok(&format!(
                        r#"<rsp:ReceiveResponse><rsp:CommandState CommandId="{id}" State="{SHELL_NS}/CommandState/Running"></rsp:CommandState></rsp:ReceiveResponse>"#
                    ));
                }
                let (out, err) = p.chunks.pop_front().unwrap_or_default();
                let b64 = |d: &[u8]| base64::engine::general_purpose::STANDARD.encode(d);
                let mut streams = String::new();
                if !out.is_empty() {
                    streams.push_str(&format!(r#"<rsp:Stream Name="stdout" CommandId="{id}">{}</rsp:Stream>"#, b64(&out)));
                }
                if !err.is_empty() {
                    streams.push_str(&format!(r#"<rsp:Stream Name="stderr" CommandId="{id}">{}</rsp:Stream>"#, b64(&err)));
                }
                let state_xml = if p.chunks.is_empty() {
                    format!(
                        r#"<rsp:Stream Name="stdout" CommandId="{id}" End="true"></rsp:Stream><rsp:Stream Name="stderr" CommandId="{id}" End="true"></rsp:Stream><rsp:CommandState CommandId="{id}" State="{SHELL_NS}/CommandState/Done"><rsp:ExitCode>{}</rsp:ExitCode></rsp:CommandState>"#,
                        p.exit_code
                    )
                } else {
                    format!(r#"<rsp:CommandState CommandId="{id}" State="{SHELL_NS}/CommandState/Running"></rsp:CommandState>"#)
                };
                ok(&format!("<rsp:ReceiveResponse>{streams}{state_xml}</rsp:ReceiveResponse>"))
            }
            "Signal" => {
                if let Some(id) = attribute(&body, "Signal", "CommandId") {
                    st.commands.remove(&id);
                }
                ok("<rsp:SignalResponse/>")
            }
            "Delete" => {
                if let Some(s) = shell_id {
                    st.shells.remove(&s);
                }
                ok("")
            }
            _ => fault("w:ActionNotSupported", &format!("action `{action}` is not supported by the test server")),
        }
    }

    /// The port (HTTP).
    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// The Basic credentials it accepts.
    pub fn credentials(&self) -> (&str, &str) {
        (&self.user, &self.password)
    }

    /// Every command received, in order.
    pub fn commands(&self) -> Vec<WinRmCommand> {
        self.state.lock().map(|s| s.log.clone()).unwrap_or_default()
    }

    /// How many times the machine restarted.
    pub fn boots(&self) -> u64 {
        self.state.lock().map(|s| s.boots).unwrap_or(0)
    }

    /// Requests refused for bad credentials.
    pub fn rejected_auth(&self) -> usize {
        self.state.lock().map(|s| s.rejected_auth).unwrap_or(0)
    }

    /// Shells open right now (a client that closes its shells leaves none).
    pub fn open_shells(&self) -> usize {
        self.state.lock().map(|s| s.shells.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_helpers() {
        let x = r#"<a:Body><rsp:Command>power&amp;shell</rsp:Command><rsp:Arguments>-x</rsp:Arguments><rsp:Arguments>y</rsp:Arguments><rsp:DesiredStream CommandId="C1">stdout</rsp:DesiredStream></a:Body>"#;
        assert_eq!(elements(x, "Command"), vec!["power&shell"]);
        assert_eq!(elements(x, "Arguments"), vec!["-x", "y"]);
        assert_eq!(attribute(x, "DesiredStream", "CommandId").as_deref(), Some("C1"));
        let enc: Vec<u8> = "Write-Output 1".encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
        let b = base64::engine::general_purpose::STANDARD.encode(enc);
        assert_eq!(decode_powershell(&["-EncodedCommand".into(), b]).as_deref(), Some("Write-Output 1"));
        assert_eq!(split(b"abcde", 2), vec![b"abc".to_vec(), b"de".to_vec()]);
        assert_eq!(split(b"", 3).len(), 3);
    }
}
