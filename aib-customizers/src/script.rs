//! Where a script comes from, and turning a failed command into a step error that says why.

use crate::fetch::Fetcher;
use crate::lines::Tail;
use aib_core::template::Expr;
use aib_core::{Error, ExitStatus, Result};

/// A script: inline lines, or a URI downloaded by the builder and checked against its
/// SHA-256 before it goes anywhere.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScriptSource {
    /// Lines of the script.
    Inline(Vec<String>),
    /// A script to download.
    Uri {
        /// `https`, `http` or `file` URI.
        uri: String,
        /// Expected lowercase hex SHA-256; `None` skips the check.
        sha256: Option<String>,
    },
}

impl ScriptSource {
    /// From a template's `scriptUri`/`inline`/`sha256Checksum` (exactly one of the first two).
    pub fn from_template(step: &str, uri: &Option<String>, inline: &Option<Expr<Vec<String>>>, sha256: &Option<String>) -> Result<Self> {
        match (uri.as_deref().filter(|u| !u.is_empty()), inline) {
            (Some(_), Some(_)) => Err(bad(step, "set exactly one of `scriptUri` and `inline`")),
            (Some(u), None) => Ok(ScriptSource::Uri { uri: u.to_string(), sha256: sha256.clone().filter(|s| !s.is_empty()) }),
            (None, Some(Expr::Value(lines))) if !lines.is_empty() => Ok(ScriptSource::Inline(lines.clone())),
            (None, Some(Expr::Expression(e))) => Err(bad(step, &format!("`inline` is an unresolved ARM expression `{e}`"))),
            _ => Err(bad(step, "set `scriptUri` or `inline`")),
        }
    }

    /// The script's text (downloaded and verified for URIs).
    pub(crate) async fn load(&self, fetcher: &Fetcher) -> Result<Vec<u8>> {
        match self {
            ScriptSource::Inline(lines) => Ok(lines.join("\n").into_bytes()),
            ScriptSource::Uri { uri, sha256 } => fetcher.fetch(uri, sha256.as_deref()).await,
        }
    }
}

pub(crate) fn bad(step: &str, why: &str) -> Error {
    Error::InvalidConfig { backend: "customizer", key: step.to_string(), message: why.to_string() }
}

/// A failed command as a step error: the exit status, what failed, and the last output.
pub(crate) fn failed(step: &str, status: &ExitStatus, what: &str, tail: &Tail) -> Error {
    let last = tail.summary();
    let mut message = format!("{what} ended with {status}");
    if !last.is_empty() {
        message.push_str(&format!("; last output: {last}"));
    }
    Error::StepFailed { step: step.to_string(), exit_code: status.code, message }
}

/// A unique name for a file the step puts on the VM.
pub(crate) fn unique(prefix: &str, ext: &str) -> String {
    format!("{prefix}-{}.{ext}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
