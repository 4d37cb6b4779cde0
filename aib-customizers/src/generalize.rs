//! AIB's hidden last step: deprovision (Linux) or Sysprep (Windows), overridable with the
//! files AIB honours: `/tmp/DeprovisioningScript.sh` and `C:\DeprovisioningScript.ps1`.

use crate::lines::Tail;
use crate::quote::sh_quote;
use crate::script::failed;
use aib_core::{Communicator, Customizer, ExecRequest, OutputStream, Platform, Result, StepContext};
use async_trait::async_trait;
use std::fmt;
use std::time::Duration;

/// The Linux override AIB honours.
pub const LINUX_OVERRIDE: &str = "/tmp/DeprovisioningScript.sh";
/// The Windows override AIB honours.
pub const WINDOWS_OVERRIDE: &str = r"C:\DeprovisioningScript.ps1";

/// Generalizes the build VM so every VM made from the image starts fresh.
#[derive(Debug, Clone)]
pub struct Generalizer {
    platform: Platform,
    build_user: Option<String>,
    timeout: Duration,
}

impl fmt::Display for Generalizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Generalize({:?})", self.platform)
    }
}

impl Generalizer {
    /// The generalizer for `platform`. Sysprep can take a while: 20 minutes by default.
    pub fn new(platform: Platform) -> Self {
        Generalizer { platform, build_user: None, timeout: Duration::from_secs(20 * 60) }
    }

    /// The throwaway user the build logged in as: its SSH keys are removed when `waagent` is
    /// absent (waagent's `+user` does that itself).
    #[must_use]
    pub fn with_build_user(mut self, user: impl Into<String>) -> Self {
        self.build_user = Some(user.into());
        self
    }

    /// How long the generalization may take.
    #[must_use]
    pub fn with_timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// The command run on the VM.
    pub fn command(&self) -> String {
        match self.platform {
            Platform::Linux => linux_command(self.build_user.as_deref()),
            Platform::Windows => windows_command(),
        }
    }
}

/// `cloud-init clean --logs --seed` without starting cloud-init (its Python start takes 9 s of
/// a build VM under TCG): what it removes (everything in its `/var/lib/cloud`, the seed
/// included, and its two logs) and the `clean.d` scripts it runs. Only where the configuration
/// keeps `cloud_dir` at `/var/lib/cloud`; elsewhere cloud-init itself cleans.
const CLOUD_INIT_CLEAN: &str = "if command -v cloud-init >/dev/null 2>&1; then \
     if grep -rhsE '^[[:space:]]*cloud_dir[[:space:]]*:' /etc/cloud/cloud.cfg /etc/cloud/cloud.cfg.d \
        | grep -qvE ':[[:space:]]*/var/lib/cloud/?[[:space:]]*$'; then cloud-init clean --logs --seed; \
     else rm -rf /var/lib/cloud/* /var/log/cloud-init.log /var/log/cloud-init-output.log; \
       for c in /etc/cloud/clean.d/*; do if [ -f \"$c\" ] && [ -x \"$c\" ]; then \"$c\"; fi; done; fi; fi; ";

/// What a machine without waagent gets: the same effect, spelled out.
fn linux_equivalent(build_user: Option<&str>) -> String {
    let mut s = String::from(CLOUD_INIT_CLEAN);
    s.push_str(
        "\
         rm -f /etc/ssh/ssh_host_*; \
         truncate -s 0 /etc/machine-id; rm -f /var/lib/dbus/machine-id; \
         find /var/log -type f -exec truncate -s 0 {} +; \
         rm -f /root/.bash_history /home/*/.bash_history; \
         rm -rf /var/lib/dhcp/* /var/tmp/aib-* ; ",
    );
    if let Some(u) = build_user {
        let home = format!("~{u}");
        // `~user` is expanded by the shell only unquoted; the name itself was validated.
        if u.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            s.push_str(&format!("rm -f {home}/.ssh/authorized_keys; passwd -l {} >/dev/null 2>&1 || true; ", sh_quote(u)));
        }
    }
    s.push_str("sync");
    s
}

fn linux_command(build_user: Option<&str>) -> String {
    let equivalent = sh_quote(&linux_equivalent(build_user));
    format!(
        "if [ -f {o} ]; then echo 'aib: running {o}'; sudo -n sh {o}; \
         elif command -v waagent >/dev/null 2>&1 || [ -x /usr/sbin/waagent ]; then echo 'aib: sudo waagent -force -deprovision+user && export HISTSIZE=0 && sync'; sudo -n waagent -force -deprovision+user && export HISTSIZE=0 && sync; \
         else echo 'aib: deprovisioning without waagent'; sudo -n sh -c {equivalent}; fi",
        o = LINUX_OVERRIDE
    )
}

fn windows_command() -> String {
    format!(
        r#"$ErrorActionPreference = 'Stop'
if (Test-Path '{o}') {{ Write-Output 'aib: running {o}'; & '{o}'; exit $LASTEXITCODE }}
foreach ($s in 'RdAgent', 'WindowsAzureTelemetryService', 'WindowsAzureGuestAgent') {{
  if (Get-Service -Name $s -ErrorAction SilentlyContinue) {{
    while ((Get-Service $s).Status -ne 'Running') {{ Start-Sleep -Seconds 5 }}
  }}
}}
# What a timed-out or cut-off elevated step left: its scheduled task and its scripts and logs
# (which may hold the step's environment values) stay out of the image.
Get-ScheduledTask -TaskName 'aib-*' -ErrorAction SilentlyContinue | Unregister-ScheduledTask -Confirm:$false -ErrorAction SilentlyContinue
Remove-Item -Force -ErrorAction SilentlyContinue (Join-Path $env:SystemRoot 'Temp\aib-*')
Write-Output 'aib: Sysprep.exe /oobe /generalize /quiet /quit'
& $env:SystemRoot\System32\Sysprep\Sysprep.exe /oobe /generalize /quiet /quit
while ($true) {{
  $state = (Get-ItemProperty 'HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Setup\State').ImageState
  Write-Output "aib: ImageState $state"
  if ($state -eq 'IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE') {{ break }}
  Start-Sleep -Seconds 10
}}
exit 0"#,
        o = WINDOWS_OVERRIDE
    )
}

#[async_trait]
impl Customizer for Generalizer {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        let cmd = self.command();
        // AIB echoes the deprovisioning command into customization.log.
        ctx.output.line(OutputStream::Stdout, &format!("aib: generalizing ({:?})", self.platform));
        let tail = Tail::new(ctx.output.clone(), 12);
        let status = comm.execute(&ExecRequest::new(cmd).with_timeout(self.timeout), &tail).await?;
        if status.success() { Ok(()) } else { Err(failed(&ctx.name, &status, "generalization", &tail)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aib_core::Platform;
    use aib_testkit::FakeCommunicator;

    #[tokio::test]
    async fn runs_the_override_or_waagent_or_the_equivalent_and_nothing_else() {
        let journal = aib_testkit::Journal::default();
        let comm = FakeCommunicator::new(Platform::Linux, aib_testkit::Faults::new(), journal.clone());
        let ctx = StepContext::detached("generalize").unwrap();
        Generalizer::new(Platform::Linux).with_build_user("aib").run(&comm, &ctx).await.unwrap();
        let j = journal.entries();
        assert_eq!(j.len(), 1, "one command: {j:?}");
        let cmd = j[0].command().expect("an exec");
        assert!(cmd.contains("[ -f /tmp/DeprovisioningScript.sh ]"));
        assert!(cmd.contains("sudo -n waagent -force -deprovision+user && export HISTSIZE=0 && sync"));
        assert!(cmd.contains("rm -f /etc/ssh/ssh_host_*") && cmd.contains("truncate -s 0 /etc/machine-id"));
        assert!(cmd.contains("~aib/.ssh/authorized_keys"));
        let win = Generalizer::new(Platform::Windows).command();
        assert!(
            win.contains(r"C:\DeprovisioningScript.ps1")
                && win.contains("/oobe /generalize /quiet /quit")
                && win.contains("IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE")
        );
        assert!(!win.contains("/mode:vm"), "AIB's default sysprep has no /mode:vm");
    }

    #[tokio::test]
    async fn a_failing_generalization_fails_the_step() {
        let comm = FakeCommunicator::default();
        comm.faults().inject("exec", aib_testkit::Fault::ExitCode(3));
        let ctx = StepContext::detached("generalize").unwrap();
        let e = Generalizer::new(Platform::Linux).run(&comm, &ctx).await.unwrap_err();
        assert!(e.to_string().contains("generalization ended with exit code 3"), "{e}");
    }
}
