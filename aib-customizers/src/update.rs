//! The `WindowsUpdate` customizer: search → install → restart, until nothing is pending or
//! `updateLimit` is reached, reporting what it installed.

use crate::lines::Tail;
use crate::quote::ps_quote;
use crate::restart::WindowsRestartCustomizer;
use crate::script::{bad, failed};
use aib_core::template::{Expr, WindowsUpdateStep};
use aib_core::{Communicator, Customizer, Error, ExecRequest, OutputStream, Result, StepContext};
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// AIB's default search criteria.
pub const DEFAULT_CRITERIA: &str = "BrowseOnly=0 and IsInstalled=0";
/// Exit code of the update script when it installed updates and Windows wants a restart.
pub const EXIT_REBOOT: i32 = 101;
/// Exit code when it installed updates and more may be found.
pub const EXIT_MORE: i32 = 102;
/// `WU_E_INSTALL_NOT_ALLOWED`: an install or restart is pending; restart first.
pub const PENDING: &str = "0x80240016";
const MARK: &str = "aib-wu:";

/// Installs Windows updates, restarting as often as they need.
#[derive(Debug, Clone)]
pub struct WindowsUpdateCustomizer {
    criteria: String,
    filters: Vec<(bool, String)>,
    limit: u32,
    max_rounds: u32,
    restart: WindowsRestartCustomizer,
}

impl fmt::Display for WindowsUpdateCustomizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WindowsUpdate({})", self.criteria)
    }
}

impl Default for WindowsUpdateCustomizer {
    fn default() -> Self {
        WindowsUpdateCustomizer {
            criteria: DEFAULT_CRITERIA.into(),
            filters: Vec::new(),
            limit: 1000,
            max_rounds: 20,
            restart: WindowsRestartCustomizer::default().with_timeout(Duration::from_secs(30 * 60)),
        }
    }
}

impl WindowsUpdateCustomizer {
    /// From a template step.
    pub fn from_template(step: &WindowsUpdateStep) -> Result<Self> {
        let name = step.name.as_deref().unwrap_or("WindowsUpdate");
        let mut c = Self::default();
        if let Some(s) = step.search_criteria.as_deref().filter(|s| !s.is_empty()) {
            c.criteria = s.to_string();
        }
        if let Some(Expr::Value(filters)) = &step.filters {
            c = c.with_filters(filters).map_err(|e| bad(name, &e.to_string()))?;
        }
        if let Some(Expr::Value(n)) = step.update_limit {
            if n < 0 {
                return Err(bad(name, "`updateLimit` must not be negative"));
            }
            if n > 0 {
                c.limit = n as u32;
            }
        }
        Ok(c)
    }

    /// `include:EXPR` / `exclude:EXPR` filters, in order; the first matching one decides, and
    /// an update no filter matches is not installed (end with `include:$true` to take the
    /// rest). A filter with no prefix is an `include:`.
    pub fn with_filters(mut self, filters: &[String]) -> Result<Self> {
        self.filters = filters
            .iter()
            .map(|f| match (f.strip_prefix("include:"), f.strip_prefix("exclude:")) {
                (Some(e), _) => (true, e.to_string()),
                (_, Some(e)) => (false, e.to_string()),
                _ => (true, f.clone()),
            })
            .collect();
        if self.filters.iter().any(|(_, e)| e.trim().is_empty()) {
            return Err(bad("WindowsUpdate", "a filter has an empty expression"));
        }
        Ok(self)
    }

    /// Install at most `n` updates.
    #[must_use]
    pub fn with_limit(mut self, n: u32) -> Self {
        self.limit = n.max(1);
        self
    }

    /// The restart used between rounds.
    #[must_use]
    pub fn with_restart(mut self, r: WindowsRestartCustomizer) -> Self {
        self.restart = r;
        self
    }

    /// The script of one round: search, filter, install up to `limit`.
    pub fn script(&self, limit: u32) -> String {
        let filters = if self.filters.is_empty() {
            "$filters = @()".to_string()
        } else {
            let items: Vec<String> = self.filters.iter().map(|(inc, e)| format!("@{{ Include = ${inc}; Test = {{ {e} }} }}")).collect();
            format!("$filters = @(\n  {}\n)", items.join(",\n  "))
        };
        format!(
            r#"$ErrorActionPreference = 'Stop'
$limit = {limit}
{filters}
$session = New-Object -ComObject Microsoft.Update.Session
$searcher = $session.CreateUpdateSearcher()
$result = $searcher.Search({criteria})
$selected = New-Object -ComObject Microsoft.Update.UpdateColl
foreach ($u in $result.Updates) {{
  $take = $filters.Count -eq 0
  foreach ($f in $filters) {{
    if (@($u | Where-Object -FilterScript $f.Test).Count -gt 0) {{ $take = $f.Include; break }}
  }}
  if ($take -and $selected.Count -lt $limit) {{
    if (-not $u.EulaAccepted) {{ $u.AcceptEula() }}
    $selected.Add($u) | Out-Null
  }} else {{ Write-Output "{MARK}skipped $($u.Title)" }}
}}
Write-Output "{MARK}found $($selected.Count)"
if ($selected.Count -eq 0) {{ exit 0 }}
$downloader = $session.CreateUpdateDownloader(); $downloader.Updates = $selected; $downloader.Download() | Out-Null
$installer = $session.CreateUpdateInstaller(); $installer.Updates = $selected; $r = $installer.Install()
for ($i = 0; $i -lt $selected.Count; $i++) {{
  Write-Output "{MARK}installed $($r.GetUpdateResult($i).ResultCode) $($selected.Item($i).Title)"
}}
if ($r.RebootRequired) {{ Write-Output '{MARK}reboot-required'; exit {EXIT_REBOOT} }}
exit {EXIT_MORE}"#,
            criteria = ps_quote(&self.criteria)
        )
    }
}

#[async_trait]
impl Customizer for WindowsUpdateCustomizer {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        let mut installed: Vec<String> = Vec::new();
        for round in 1..=self.max_rounds {
            let left = self.limit.saturating_sub(installed.len() as u32);
            if left == 0 {
                break;
            }
            let tail = Tail::new(ctx.output.clone(), 200);
            // As SYSTEM, as the Windows Update service itself runs: the update agent refuses
            // remote sessions, and no password goes into the task.
            let task = crate::windows::scheduled_task_script(&self.script(left), &crate::windows::TaskPrincipal::System);
            let st = comm.execute(&ExecRequest::new(task), &tail).await?;
            let lines = tail.lines();
            let found: u32 = lines
                .iter()
                .find_map(|l| l.strip_prefix(MARK).and_then(|r| r.strip_prefix("found ")).and_then(|n| n.trim().parse().ok()))
                .unwrap_or(0);
            for l in &lines {
                if let Some(t) = l.strip_prefix(MARK).and_then(|r| r.strip_prefix("installed ")) {
                    // "<ResultCode> <Title>": 2 = succeeded, 3 = succeeded with errors.
                    let (code, title) = t.split_once(' ').unwrap_or((t, ""));
                    if matches!(code, "2" | "3") {
                        installed.push(title.to_string());
                    } else {
                        ctx.run.notice(format!("{}: update `{title}` did not install (result code {code})", ctx.name));
                    }
                }
            }
            match st.code {
                Some(0) if found == 0 => break,
                Some(0) | Some(EXIT_MORE) => continue,
                Some(EXIT_REBOOT) => {
                    ctx.output.line(OutputStream::Stdout, &format!("aib: round {round}: restarting to finish installing"));
                    self.restart.restart(comm, ctx).await?;
                }
                _ if lines.iter().any(|l| l.contains(PENDING)) => {
                    ctx.output.line(
                        OutputStream::Stdout,
                        &format!("aib: round {round}: an install or restart is pending ({PENDING}); restarting first"),
                    );
                    self.restart.restart(comm, ctx).await?;
                }
                _ => return Err(failed(&ctx.name, &st, "the Windows Update round", &tail)),
            }
            if round == self.max_rounds {
                return Err(Error::StepFailed {
                    step: ctx.name.clone(),
                    exit_code: None,
                    message: format!("updates still pending after {round} rounds"),
                });
            }
        }
        let summary = if installed.is_empty() {
            "no updates installed".to_string()
        } else {
            format!("installed {} update(s): {}", installed.len(), installed.join("; "))
        };
        ctx.output.line(OutputStream::Stdout, &format!("aib: {summary}"));
        ctx.run.notice(format!("{}: {summary}", ctx.name));
        Ok(())
    }
}
