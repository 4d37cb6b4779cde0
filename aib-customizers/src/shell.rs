//! The `Shell` customizer: inline lines or a downloaded script, run on Linux with `sh -e`
//! semantics; the first failing line fails the step and is named.

use crate::fetch::{Fetched, Fetcher, digest_parts, sha256_hex};
use crate::lines::Tail;
use crate::quote::sh_quote;
use crate::script::{ScriptSource, failed, unique};
use aib_core::template::ShellStep;
use aib_core::{Communicator, Customizer, ExecRequest, NullSink, Result, StepContext, UploadRequest};
use async_trait::async_trait;
use std::fmt;

/// Runs a shell script on a Linux build VM.
#[derive(Debug, Clone)]
pub struct ShellCustomizer {
    source: ScriptSource,
    env: Vec<(String, String)>,
    sudo: bool,
    remote_dir: String,
    fetcher: Fetcher,
    fetched: Fetched,
}

impl fmt::Display for ShellCustomizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ScriptSource::Inline(l) => write!(f, "Shell(inline, {} lines)", l.len()),
            ScriptSource::Uri { uri, .. } => write!(f, "Shell({})", aib_core::redact::url(uri)),
        }
    }
}

/// The marker the wrapper prints when an inline line fails.
const MARK: &str = "aib-inline-failed:";

impl ShellCustomizer {
    /// A customizer for `source`.
    pub fn new(source: ScriptSource) -> Self {
        ShellCustomizer {
            source,
            env: Vec::new(),
            sudo: false,
            remote_dir: "/tmp".into(),
            fetcher: Fetcher::new(),
            fetched: Fetched::default(),
        }
    }

    /// From a template step.
    pub fn from_template(step: &ShellStep) -> Result<Self> {
        let name = step.name.as_deref().unwrap_or("Shell");
        Ok(Self::new(ScriptSource::from_template(name, &step.script_uri, &step.inline, &step.sha256_checksum)?))
    }

    /// Sets an environment variable for the script.
    #[must_use]
    pub fn with_env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Runs the script as root with `sudo` (AIB runs it as the build user: write `sudo` in
    /// the script instead to stay portable).
    #[must_use]
    pub fn with_sudo(mut self) -> Self {
        self.sudo = true;
        self
    }

    /// Where the script is uploaded (default `/tmp`).
    #[must_use]
    pub fn with_remote_dir(mut self, dir: impl Into<String>) -> Self {
        self.remote_dir = dir.into();
        self
    }

    /// Uses this fetcher for `scriptUri`.
    #[must_use]
    pub fn with_fetcher(mut self, f: Fetcher) -> Self {
        self.fetcher = f;
        self
    }

    /// The script uploaded for inline lines: `set -e`, and a trap that names the failing line.
    pub fn inline_script(lines: &[String]) -> String {
        let mut s = String::from("#!/bin/sh\nset -e\n__aib_line=0\n");
        s.push_str(&format!("trap '__aib_rc=$?; [ \"$__aib_rc\" -eq 0 ] || echo \"{MARK}$__aib_line\" >&2' EXIT\n"));
        for (i, l) in lines.iter().enumerate() {
            s.push_str(&format!("__aib_line={}\n{l}\n", i + 1));
        }
        s
    }
}

#[async_trait]
impl Customizer for ShellCustomizer {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        // Download and verify first: nothing is uploaded or run if the checksum is wrong.
        let script = match &self.source {
            ScriptSource::Inline(lines) => Self::inline_script(lines).into_bytes(),
            src => match self.fetched.take(ctx.run.run_id()) {
                Some(script) => script,
                None => src.load(&self.fetcher).await?,
            },
        };
        let path = format!("{}/{}", self.remote_dir.trim_end_matches('/'), unique("aib-script", "sh"));
        comm.upload(&UploadRequest::bytes(script, path.clone()).with_mode(0o700)).await?;
        let mut req = ExecRequest::new(sh_quote(&path));
        req.env = self.env.clone();
        req.elevated = self.sudo;
        let tail = Tail::new(ctx.output.clone(), 12);
        let status = comm.execute(&req, &tail).await;
        let _ = comm.execute(&ExecRequest::new(format!("rm -f {}", sh_quote(&path))), &NullSink).await;
        let status = status?;
        if status.success() {
            return Ok(());
        }
        let what = match &self.source {
            ScriptSource::Inline(lines) => {
                let n = tail.lines().iter().rev().find_map(|l| l.strip_prefix(MARK).and_then(|n| n.trim().parse::<usize>().ok()));
                match n.and_then(|n| lines.get(n.wrapping_sub(1)).map(|l| (n, l))) {
                    Some((n, l)) => format!("inline line {n} (`{l}`)"),
                    None => "the inline script".to_string(),
                }
            }
            ScriptSource::Uri { uri, .. } => format!("script {}", aib_core::redact::url(uri)),
        };
        Err(failed(&ctx.name, &status, &what, &tail))
    }

    /// The script (a downloaded one is fetched and verified here, and that copy is the one
    /// run), its environment, `sudo` and where it is put.
    async fn fingerprint(&self, ctx: &StepContext) -> Result<Option<String>> {
        let script = match &self.source {
            ScriptSource::Inline(lines) => sha256_hex(Self::inline_script(lines).as_bytes()),
            src => {
                let bytes = src.load(&self.fetcher).await?;
                let digest = sha256_hex(&bytes);
                self.fetched.keep(ctx.run.run_id(), bytes);
                digest
            }
        };
        let mut parts = vec!["Shell/1".to_string(), script, self.sudo.to_string(), self.remote_dir.clone()];
        for (k, v) in &self.env {
            parts.push(format!("{k}={v}"));
        }
        Ok(Some(digest_parts(&parts)))
    }
}

impl ShellCustomizer {
    /// The script source.
    pub fn source(&self) -> &ScriptSource {
        &self.source
    }
}
