//! The `PowerShell` customizer: inline lines or a downloaded script on Windows, with
//! `runElevated`, `runAsSystem` (scheduled tasks) and `validExitCodes`.

use crate::fetch::Fetcher;
use crate::lines::Tail;
use crate::quote::ps_quote;
use crate::script::{ScriptSource, bad, failed, unique};
use crate::windows::{TaskPrincipal, scheduled_task_script};
use aib_core::template::{Expr, PowerShellStep};
use aib_core::{Communicator, Customizer, ExecRequest, NullSink, Result, StepContext, UploadRequest};
use async_trait::async_trait;
use std::fmt;

/// Runs a PowerShell script on a Windows build VM.
#[derive(Debug, Clone)]
pub struct PowerShellCustomizer {
    source: ScriptSource,
    run_elevated: bool,
    run_as_system: bool,
    valid_exit_codes: Vec<i32>,
    env: Vec<(String, String)>,
    fetcher: Fetcher,
}

impl fmt::Display for PowerShellCustomizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            ScriptSource::Inline(l) => write!(f, "PowerShell(inline, {} lines)", l.len()),
            ScriptSource::Uri { uri, .. } => write!(f, "PowerShell({})", aib_core::redact::url(uri)),
        }
    }
}

impl PowerShellCustomizer {
    /// A customizer for `source`; exit code 0 is success.
    pub fn new(source: ScriptSource) -> Self {
        PowerShellCustomizer {
            source,
            run_elevated: false,
            run_as_system: false,
            valid_exit_codes: vec![0],
            env: Vec::new(),
            fetcher: Fetcher::new(),
        }
    }

    /// From a template step.
    pub fn from_template(step: &PowerShellStep) -> Result<Self> {
        let name = step.name.as_deref().unwrap_or("PowerShell");
        let lit = |e: &Option<Expr<bool>>| e.as_ref().and_then(Expr::value).copied().unwrap_or(false);
        let (elevated, system) = (lit(&step.run_elevated), lit(&step.run_as_system));
        if system && !elevated {
            return Err(bad(name, "`runAsSystem` needs `runElevated`"));
        }
        let mut c = Self::new(ScriptSource::from_template(name, &step.script_uri, &step.inline, &step.sha256_checksum)?);
        c.run_elevated = elevated;
        c.run_as_system = system;
        if let Some(Expr::Value(codes)) = &step.valid_exit_codes
            && !codes.is_empty()
        {
            c.valid_exit_codes = codes.clone();
        }
        Ok(c)
    }

    /// Runs elevated (a scheduled task as the build user, highest run level).
    #[must_use]
    pub fn elevated(mut self) -> Self {
        self.run_elevated = true;
        self
    }

    /// Runs as `NT AUTHORITY\SYSTEM` (implies elevated).
    #[must_use]
    pub fn as_system(mut self) -> Self {
        self.run_elevated = true;
        self.run_as_system = true;
        self
    }

    /// Exit codes that mean success.
    #[must_use]
    pub fn with_valid_exit_codes(mut self, codes: Vec<i32>) -> Self {
        self.valid_exit_codes = codes;
        self
    }

    /// Sets an environment variable.
    #[must_use]
    pub fn with_env(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    /// Uses this fetcher for `scriptUri`.
    #[must_use]
    pub fn with_fetcher(mut self, f: Fetcher) -> Self {
        self.fetcher = f;
        self
    }
}

#[async_trait]
impl Customizer for PowerShellCustomizer {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        let script = match &self.source {
            ScriptSource::Inline(lines) => lines.join("\r\n").into_bytes(),
            src => src.load(&self.fetcher).await?,
        };
        let path = format!(r"C:\Windows\Temp\{}", unique("aib-script", "ps1"));
        comm.upload(&UploadRequest::bytes(script, path.clone())).await?;
        let invoke = format!("& {}; exit $LASTEXITCODE", ps_quote(&path));
        let mut req = ExecRequest::new(if self.run_as_system { scheduled_task_script(&invoke, &TaskPrincipal::System) } else { invoke });
        req.env = self.env.clone();
        req.elevated = self.run_elevated && !self.run_as_system;
        let tail = Tail::new(ctx.output.clone(), 12);
        let status = comm.execute(&req, &tail).await;
        let _ = comm.execute(&ExecRequest::new(format!("Remove-Item -Force -LiteralPath {}", ps_quote(&path))), &NullSink).await;
        let status = status?;
        if status.code.is_some_and(|c| self.valid_exit_codes.contains(&c)) {
            return Ok(());
        }
        let what = match &self.source {
            ScriptSource::Inline(_) => "the inline script".to_string(),
            ScriptSource::Uri { uri, .. } => format!("script {}", aib_core::redact::url(uri)),
        };
        Err(failed(&ctx.name, &status, &format!("{what} (valid exit codes {:?})", self.valid_exit_codes), &tail))
    }
}
