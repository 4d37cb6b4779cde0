//! PowerShell building blocks for Windows build VMs: the scheduled-task technique for
//! elevated and LocalSystem runs, and the boot id used to tell that a restart happened.

use crate::quote::ps_quote;
use base64::Engine;

/// Who a scheduled task runs as. No variant holds a password: none is stored with a task or
/// written into the script the VM runs (where an error record quoting the failing line, the
/// command line of `powershell.exe` or script-block logging could keep it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskPrincipal {
    /// `NT AUTHORITY\SYSTEM` (AIB's `runAsSystem`).
    System,
    /// The build user with the highest run level (AIB's `runElevated`), logged on by the Task
    /// Scheduler through S4U: the user's full administrator token without a stored password,
    /// and without network credentials of the user (shares need their own).
    User {
        /// User name.
        user: String,
    },
}

/// The marker a wrapper prints before the task's exit code.
pub const TASK_EXIT_MARK: &str = "aib-task-exit:";

/// A PowerShell script that runs `inner` (PowerShell code) as a scheduled task under
/// `principal`, streams its output as it is written, removes the task, and exits with the
/// task's exit code. This is how Packer and AIB run elevated steps over WinRM, where a
/// remote session is not elevated.
pub fn scheduled_task_script(inner: &str, principal: &TaskPrincipal) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let name = format!("aib-{}", &id[..12]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(inner.as_bytes());
    let register = match principal {
        TaskPrincipal::System => {
            "$principal = New-ScheduledTaskPrincipal -UserId 'NT AUTHORITY\\SYSTEM' -LogonType ServiceAccount -RunLevel Highest\n\
             Register-ScheduledTask -TaskName $name -Action $action -Principal $principal -Force | Out-Null"
                .to_string()
        }
        TaskPrincipal::User { user } => format!(
            "$principal = New-ScheduledTaskPrincipal -UserId {} -LogonType S4U -RunLevel Highest\n\
             Register-ScheduledTask -TaskName $name -Action $action -Principal $principal -Force | Out-Null",
            ps_quote(user)
        ),
    };
    format!(
        r#"$ErrorActionPreference = 'Stop'
$name = '{name}'
$dir = Join-Path $env:SystemRoot 'Temp'
$script = Join-Path $dir "$name.ps1"
$log = Join-Path $dir "$name.log"
[IO.File]::WriteAllText($script, [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{encoded}')))
$arg = "-NoProfile -NonInteractive -ExecutionPolicy Bypass -Command `"& '$script' *> '$log'; exit `$LASTEXITCODE`""
$action = New-ScheduledTaskAction -Execute 'powershell.exe' -Argument $arg
{register}
Start-ScheduledTask -TaskName $name
$pos = 0
function Show-New {{
  if (Test-Path $log) {{
    $fs = [IO.File]::Open($log, 'Open', 'Read', 'ReadWrite'); $fs.Seek($pos, 'Begin') | Out-Null
    $sr = New-Object IO.StreamReader($fs); $text = $sr.ReadToEnd(); $script:pos = $fs.Position; $sr.Close()
    if ($text) {{ Write-Output $text.TrimEnd("`r", "`n") }}
  }}
}}
do {{ Start-Sleep -Milliseconds 500; Show-New }} while ((Get-ScheduledTask -TaskName $name).State -ne 'Ready')
Show-New
$code = (Get-ScheduledTaskInfo -TaskName $name).LastTaskResult
Unregister-ScheduledTask -TaskName $name -Confirm:$false
Remove-Item -Force $script, $log -ErrorAction SilentlyContinue
Write-Output "{TASK_EXIT_MARK}$code"
exit $code"#
    )
}

/// A command printing an id that changes at every boot.
pub const BOOT_ID_COMMAND: &str = "(Get-CimInstance -ClassName Win32_OperatingSystem).LastBootUpTime.ToUniversalTime().ToString('o')";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_scripts_quote_and_embed() {
        let s = scheduled_task_script("Write-Output 'hi'", &TaskPrincipal::User { user: "pack'er".into() });
        assert!(s.contains("-UserId 'pack''er' -LogonType S4U -RunLevel Highest") && !s.contains("-Password"), "{s}");
        assert!(!s.contains("Write-Output 'hi'"), "the inner script is embedded encoded");
        assert!(s.contains(TASK_EXIT_MARK));
        let s = scheduled_task_script("x", &TaskPrincipal::System);
        assert!(s.contains("NT AUTHORITY\\SYSTEM") && !s.contains("-Password"));
    }
}
