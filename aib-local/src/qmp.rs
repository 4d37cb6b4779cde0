//! A minimal QMP client: graceful power-down and hard stop of a QEMU process.

use crate::tools::BACKEND;
use aib_core::{Error, Result};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// Sends `command` (after the capabilities handshake) and waits for its `return`.
pub(crate) async fn execute(socket: &Path, command: &str) -> Result<()> {
    let go = async {
        let stream = UnixStream::connect(socket).await.map_err(|e| Error::io(socket, e))?;
        let (rd, mut wr) = stream.into_split();
        let mut lines = BufReader::new(rd).lines();
        // Greeting, then capabilities negotiation.
        lines.next_line().await.map_err(|e| Error::io(socket, e))?;
        for cmd in ["qmp_capabilities", command] {
            wr.write_all(format!("{{\"execute\": \"{cmd}\"}}\n").as_bytes()).await.map_err(|e| Error::io(socket, e))?;
            loop {
                let Some(line) = lines.next_line().await.map_err(|e| Error::io(socket, e))? else {
                    // `quit` closes the socket: that is its answer.
                    return if cmd == "quit" {
                        Ok(())
                    } else {
                        Err(Error::generic(BACKEND, format!("QMP closed before answering `{cmd}`")))
                    };
                };
                if line.contains("\"return\"") {
                    break;
                }
                if line.contains("\"error\"") {
                    return Err(Error::generic(BACKEND, format!("QMP `{cmd}`: {line}")));
                }
            }
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), go)
        .await
        .map_err(|_| Error::Timeout { operation: format!("QMP {command}"), after: Duration::from_secs(10) })?
}
