//! The `WindowsRestart` customizer: restart, wait for the machine to go down and come back
//! (a new boot id), tolerate "shutdown in progress" (1115), then run the check command.

use crate::lines::Tail;
use crate::script::{bad, failed};
use crate::windows::BOOT_ID_COMMAND;
use aib_core::template::{DEFAULT_RESTART_COMMAND, WindowsRestartStep, parse_go_duration};
use aib_core::{Communicator, Customizer, Error, ExecRequest, MemorySink, ReconnectOptions, Result, StepContext};
use async_trait::async_trait;
use std::fmt;
use std::time::{Duration, Instant};

/// `ERROR_SHUTDOWN_IN_PROGRESS`: the restart command must be retried.
pub const SHUTDOWN_IN_PROGRESS: i32 = 1115;

/// Restarts a Windows build VM and waits for it.
#[derive(Debug, Clone)]
pub struct WindowsRestartCustomizer {
    command: String,
    check: Option<String>,
    timeout: Duration,
    poll: Duration,
}

impl fmt::Display for WindowsRestartCustomizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WindowsRestart({})", humantime::format_duration(self.timeout))
    }
}

impl Default for WindowsRestartCustomizer {
    fn default() -> Self {
        WindowsRestartCustomizer {
            command: DEFAULT_RESTART_COMMAND.into(),
            check: None,
            timeout: Duration::from_secs(300),
            poll: Duration::from_secs(5),
        }
    }
}

impl WindowsRestartCustomizer {
    /// From a template step (`restartTimeout` such as `5m`; default 5 minutes).
    pub fn from_template(step: &WindowsRestartStep) -> Result<Self> {
        let name = step.name.as_deref().unwrap_or("WindowsRestart");
        let mut c = Self::default();
        if let Some(cmd) = step.restart_command.as_deref().filter(|c| !c.is_empty()) {
            c = c.with_command(cmd).map_err(|_| bad(name, "`restartCommand` must be one line"))?;
        }
        c.check = step.restart_check_command.clone().filter(|c| !c.is_empty());
        if let Some(t) = step.restart_timeout.as_deref().filter(|t| !t.is_empty()) {
            c.timeout = parse_go_duration(t).ok_or_else(|| bad(name, &format!("`restartTimeout` `{t}` is not a duration such as 5m")))?;
        }
        Ok(c)
    }

    /// The restart command (one line, run by `cmd.exe`).
    pub fn with_command(mut self, cmd: &str) -> Result<Self> {
        if cmd.contains(['\n', '\r']) {
            return Err(bad("WindowsRestart", "the restart command must be one line"));
        }
        self.command = cmd.to_string();
        Ok(self)
    }

    /// A PowerShell command that must succeed once the VM is back.
    #[must_use]
    pub fn with_check(mut self, cmd: impl Into<String>) -> Self {
        self.check = Some(cmd.into());
        self
    }

    /// How long the whole restart may take.
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// How often to look whether the VM is back.
    #[must_use]
    pub fn with_poll_interval(mut self, t: Duration) -> Self {
        self.poll = t;
        self
    }

    async fn boot_id(comm: &(dyn Communicator + 'static)) -> Result<String> {
        let sink = MemorySink::new();
        let st = comm.execute(&ExecRequest::new(BOOT_ID_COMMAND).with_timeout(Duration::from_secs(60)), &sink).await?;
        let id = sink.lines().into_iter().map(|(_, l)| l.trim().to_string()).find(|l| !l.is_empty()).unwrap_or_default();
        if !st.success() || id.is_empty() {
            return Err(Error::generic("windows-restart", format!("could not read the boot time ({st})")));
        }
        Ok(id)
    }

    /// Restarts and waits; shared with the Windows Update loop.
    pub(crate) async fn restart(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        let deadline = Instant::now() + self.timeout;
        let left = || deadline.saturating_duration_since(Instant::now());
        let timed_out = || Error::Timeout { operation: format!("{}: waiting for the restart", ctx.name), after: self.timeout };
        let before = Self::boot_id(comm).await?;
        let tail = Tail::new(ctx.output.clone(), 8);
        // `--%` hands the rest of the line to cmd.exe verbatim, as AIB's command expects.
        let req = ExecRequest::new(format!("cmd.exe /c --% {}\nexit $LASTEXITCODE", self.command)).expecting_disconnect();
        loop {
            // Every call waits at most for what is left of the step's time.
            let st = comm.execute(&req.clone().with_timeout(left()), &tail).await?;
            if st.disconnected || st.success() {
                break;
            }
            if st.code == Some(SHUTDOWN_IN_PROGRESS) && !left().is_zero() {
                ctx.run.notice(format!("{}: a shutdown is already in progress (1115); retrying the restart", ctx.name));
                tokio::time::sleep(self.poll.min(left())).await;
                continue;
            }
            return Err(failed(&ctx.name, &st, &format!("restart command `{}`", self.command), &tail));
        }
        ctx.output.line(
            aib_core::OutputStream::Stdout,
            &format!("aib: waiting up to {} for the restart", humantime::format_duration(self.timeout)),
        );
        // Down and back: the boot id must change. Connecting to the machine still on its way
        // down is normal; so is failing to connect while it boots.
        loop {
            if left().is_zero() {
                return Err(timed_out());
            }
            if comm.reconnect(&ReconnectOptions::with_timeout(left())).await.is_ok() {
                match Self::boot_id(comm).await {
                    Ok(id) if id != before => break,
                    _ => {}
                }
            }
            tokio::time::sleep(self.poll.min(left())).await;
        }
        if let Some(check) = &self.check {
            loop {
                let st = comm.execute(&ExecRequest::new(check.clone()).with_timeout(left()), &tail).await;
                match st {
                    Ok(s) if s.success() => break,
                    _ if left().is_zero() => return Err(timed_out()),
                    _ => tokio::time::sleep(self.poll.min(left())).await,
                }
            }
        }
        ctx.output.line(aib_core::OutputStream::Stdout, "aib: the machine restarted");
        Ok(())
    }
}

#[async_trait]
impl Customizer for WindowsRestartCustomizer {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        self.restart(comm, ctx).await
    }
}
