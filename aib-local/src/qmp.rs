//! A minimal QMP client: power-down and hard stop of a QEMU process, and the migration
//! commands that save and restore a warm VM state.

use crate::tools::BACKEND;
use aib_core::{Error, Result};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

/// How long one QMP command may take to answer.
const ANSWER: Duration = Duration::from_secs(10);

/// One QMP session (after the capabilities handshake).
pub(crate) struct Qmp {
    lines: Lines<BufReader<OwnedReadHalf>>,
    wr: OwnedWriteHalf,
    socket: String,
}

impl Qmp {
    /// Connects to `socket` and negotiates capabilities.
    pub(crate) async fn connect(socket: &Path) -> Result<Qmp> {
        let go = async {
            let stream = UnixStream::connect(socket).await.map_err(|e| Error::io(socket, e))?;
            let (rd, wr) = stream.into_split();
            let mut q = Qmp { lines: BufReader::new(rd).lines(), wr, socket: socket.display().to_string() };
            // The greeting.
            q.lines.next_line().await.map_err(|e| Error::io(socket, e))?;
            q.call_inner("qmp_capabilities", None).await?;
            Ok(q)
        };
        tokio::time::timeout(ANSWER, go).await.map_err(|_| Error::Timeout { operation: "connecting to QMP".into(), after: ANSWER })?
    }

    /// Runs `command` with `arguments`; its `return` value. Events in between are skipped.
    pub(crate) async fn call(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let args = if arguments.is_null() { None } else { Some(arguments) };
        tokio::time::timeout(ANSWER, self.call_inner(command, args))
            .await
            .map_err(|_| Error::Timeout { operation: format!("QMP {command}"), after: ANSWER })?
    }

    async fn call_inner(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let mut msg = json!({"execute": command});
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let io = |e| Error::io(&self.socket, e);
        self.wr.write_all(format!("{msg}\n").as_bytes()).await.map_err(io)?;
        loop {
            let Some(line) = self.lines.next_line().await.map_err(|e| Error::io(&self.socket, e))? else {
                // `quit` closes the socket: that is its answer.
                return if command == "quit" {
                    Ok(Value::Null)
                } else {
                    Err(Error::generic(BACKEND, format!("QMP closed before answering `{command}`")))
                };
            };
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("no description");
                return Err(Error::generic(BACKEND, format!("QMP `{command}` failed: {desc}")));
            }
        }
    }
}

/// Sends `command` (no arguments) in a session of its own and waits for its `return`.
pub(crate) async fn execute(socket: &Path, command: &str) -> Result<()> {
    Qmp::connect(socket).await?.call(command, Value::Null).await.map(|_| ())
}
