//! Windows build VMs: a generated admin password that is never shown, and WinRM over HTTPS to
//! a certificate learnt through a trusted channel. Azure's Windows images have no HTTPS
//! listener, and a certificate made on the VM cannot be checked against any CA, so the
//! provisioner asks ARM's Run Command (authenticated, over TLS to ARM, executed by the VM
//! agent) to create a self-signed certificate and the listener and print the certificate's
//! SHA-256; the WinRM client then accepts that certificate and no other. Before the VM is
//! deallocated, Run Command removes the listener, the certificate, the firewall rule and the
//! settings it changed, so the image does not carry them.

use crate::api::COMPUTE_API;
use crate::client::ArmClient;
use crate::error::BACKEND;
use aib_core::{Error, Result};
use serde_json::{Value, json};
use std::time::Duration;

/// What the setup script prints before the certificate's SHA-256.
pub const CERTIFICATE_MARK: &str = "aib-winrm-certificate-sha256:";
/// The certificate's friendly name, which the cleanup finds it by.
const FRIENDLY_NAME: &str = "aib-winrm";
/// The firewall rule's name.
const RULE: &str = "aib-winrm-https";
/// What the generalization script prints when its cleanup part is done.
const REMOVED_MARK: &str = "aib-winrm-removed";

/// A 32-character password drawn from a 64-symbol alphabet (letters, digits, `-`, `_`) with
/// the operating system's random generator (through UUIDv4): 192 bits. Draws that miss one of
/// ARM's classes (upper, lower, digit, special) or contain the account name (Windows refuses
/// those) are drawn again.
pub fn generate_password(user: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let user = user.to_ascii_lowercase();
    loop {
        let mut out = String::with_capacity(32);
        while out.len() < 32 {
            let u = uuid::Uuid::new_v4();
            // Bytes 6 and 8 carry the version and variant bits; the others are all random.
            for (i, b) in u.as_bytes().iter().enumerate() {
                if i != 6 && i != 8 && out.len() < 32 {
                    out.push(ALPHABET[usize::from(b % 64)] as char);
                }
            }
        }
        let classes = out.chars().any(|c| c.is_ascii_uppercase())
            && out.chars().any(|c| c.is_ascii_lowercase())
            && out.chars().any(|c| c.is_ascii_digit())
            && out.chars().any(|c| !c.is_ascii_alphanumeric());
        if classes && (user.len() < 3 || !out.to_ascii_lowercase().contains(&user)) {
            return out;
        }
    }
}

/// Where the setup keeps what it changed, for the cleanup to put back.
const STATE_KEY: &str = r"HKLM:\SOFTWARE\aib\winrm";
const POLICY_KEY: &str = r"HKLM:\SOFTWARE\Microsoft\Windows\CurrentVersion\Policies\System";

fn lines(script: &str) -> Vec<String> {
    script.lines().map(str::to_string).collect()
}

/// The Run Command script that makes the HTTPS listener on `port` and prints its
/// certificate's SHA-256. Basic authentication is enabled for the listener's lifetime (over
/// the pinned TLS only), and remote sessions of local administrators get a full token, as
/// WinRM-based builders need. What it changes (Basic, the token policy, an HTTPS listener the
/// image already had) is saved first, for [`cleanup_script`] to restore.
pub fn setup_script(port: u16) -> Vec<String> {
    lines(&format!(
        r#"$ErrorActionPreference = 'Stop'
Enable-PSRemoting -SkipNetworkProfileCheck -Force | Out-Null
$state = '{STATE_KEY}'
if (-not (Test-Path $state)) {{
  New-Item -Path $state -Force | Out-Null
  New-ItemProperty -Path $state -Name Basic -Value ([string](Get-Item WSMan:\localhost\Service\Auth\Basic).Value) -PropertyType String -Force | Out-Null
  $policy = (Get-ItemProperty -Path '{POLICY_KEY}' -ErrorAction SilentlyContinue).LocalAccountTokenFilterPolicy
  if ($null -ne $policy) {{ New-ItemProperty -Path $state -Name TokenPolicy -Value $policy -PropertyType DWord -Force | Out-Null }}
  $previous = @(foreach ($l in @(Get-ChildItem WSMan:\localhost\Listener | Where-Object {{ $_.Keys -contains 'Transport=HTTPS' }})) {{
    $d = "WSMan:\localhost\Listener\$($l.Name)"
    '{{0}}|{{1}}|{{2}}|{{3}}' -f (Get-Item "$d\Address").Value, (Get-Item "$d\Port").Value, (Get-Item "$d\Hostname").Value, (Get-Item "$d\CertificateThumbprint").Value
  }}) -join ';'
  New-ItemProperty -Path $state -Name PreviousListeners -Value $previous -PropertyType String -Force | Out-Null
}}
Get-ChildItem WSMan:\localhost\Listener | Where-Object {{ $_.Keys -contains 'Transport=HTTPS' }} | Remove-Item -Recurse -Force
$cert = New-SelfSignedCertificate -DnsName $env:COMPUTERNAME -FriendlyName '{FRIENDLY_NAME}' -CertStoreLocation Cert:\LocalMachine\My -KeyAlgorithm RSA -KeyLength 2048 -NotAfter (Get-Date).AddDays(7)
New-Item -Path WSMan:\localhost\Listener -Transport HTTPS -Address * -Port {port} -CertificateThumbPrint $cert.Thumbprint -Force | Out-Null
Set-Item -Path WSMan:\localhost\Service\Auth\Basic -Value $true
New-ItemProperty -Path '{POLICY_KEY}' -Name LocalAccountTokenFilterPolicy -Value 1 -PropertyType DWord -Force | Out-Null
Get-NetFirewallRule -Name '{RULE}' -ErrorAction SilentlyContinue | Remove-NetFirewallRule
New-NetFirewallRule -Name '{RULE}' -DisplayName 'aib WinRM over HTTPS' -Direction Inbound -Protocol TCP -LocalPort {port} -Action Allow | Out-Null
$sha = [BitConverter]::ToString([Security.Cryptography.SHA256]::Create().ComputeHash($cert.RawData)).Replace('-', '')
Write-Output "{CERTIFICATE_MARK}$sha""#
    ))
}

/// The Run Command script that undoes [`setup_script`]: the listener, the certificate with its
/// private key and the firewall rule are removed; Basic, the token policy and any HTTPS
/// listener the image had are put back as they were.
pub fn cleanup_script() -> Vec<String> {
    lines(&format!(
        r#"$ErrorActionPreference = 'Continue'
$state = '{STATE_KEY}'
$saved = Get-ItemProperty -Path $state -ErrorAction SilentlyContinue
Get-ChildItem WSMan:\localhost\Listener | Where-Object {{ $_.Keys -contains 'Transport=HTTPS' }} | Remove-Item -Recurse -Force
Get-ChildItem Cert:\LocalMachine\My | Where-Object {{ $_.FriendlyName -eq '{FRIENDLY_NAME}' }} | Remove-Item -DeleteKey -Force
foreach ($entry in @(([string]$saved.PreviousListeners) -split ';' | Where-Object {{ $_ }})) {{
  $address, $port, $hostname, $thumbprint = $entry -split '\|'
  $listener = @{{ Path = 'WSMan:\localhost\Listener'; Transport = 'HTTPS'; Address = $address; Port = $port; CertificateThumbPrint = $thumbprint; Force = $true }}
  if ($hostname) {{ $listener.HostName = $hostname }}
  New-Item @listener | Out-Null
}}
$basic = if ($saved -and $saved.Basic) {{ $saved.Basic }} else {{ 'false' }}
Set-Item -Path WSMan:\localhost\Service\Auth\Basic -Value $basic
if ($saved -and $null -ne $saved.TokenPolicy) {{
  Set-ItemProperty -Path '{POLICY_KEY}' -Name LocalAccountTokenFilterPolicy -Value $saved.TokenPolicy
}} else {{
  Remove-ItemProperty -Path '{POLICY_KEY}' -Name LocalAccountTokenFilterPolicy -ErrorAction SilentlyContinue
}}
Get-NetFirewallRule -Name '{RULE}' -ErrorAction SilentlyContinue | Remove-NetFirewallRule
Remove-Item -Path $state -Recurse -Force -ErrorAction SilentlyContinue
if (-not (Get-ChildItem -Path 'HKLM:\SOFTWARE\aib' -ErrorAction SilentlyContinue)) {{ Remove-Item -Path 'HKLM:\SOFTWARE\aib' -Force -ErrorAction SilentlyContinue }}"#
    ))
}

/// What the generalization script prints before the generalizer's exit code.
pub const GENERALIZE_EXIT_MARK: &str = "aib-generalize-exit:";

/// The Run Command script that generalizes a Windows build VM: first [`cleanup_script`]
/// (WinRM is not needed any more), then `generalizer` (Sysprep, or the template's
/// `C:\DeprovisioningScript.ps1`) as a script file of its own, as LocalSystem through the
/// VM agent, as AIB runs Sysprep. Its last two lines say that the script ran to its end and
/// the generalizer's exit code (after [`GENERALIZE_EXIT_MARK`]): Run Command keeps only the
/// last 4 KiB of output.
pub fn generalize_script(generalizer: &str) -> Vec<String> {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(generalizer.as_bytes());
    let mut s = cleanup_script();
    s.extend(lines(&format!(
        r#"$f = Join-Path $env:SystemRoot 'Temp\aib-generalize.ps1'
[IO.File]::WriteAllText($f, [Text.Encoding]::UTF8.GetString([Convert]::FromBase64String('{encoded}')))
& powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -File $f
$code = $LASTEXITCODE
Remove-Item -LiteralPath $f -Force -ErrorAction SilentlyContinue
Write-Output '{REMOVED_MARK}'
Write-Output "{GENERALIZE_EXIT_MARK}$code""#
    )));
    s
}

/// The generalizer's exit code, from [`generalize_script`]'s output.
pub fn generalize_exit(out: &RunOutput) -> Option<i32> {
    out.stdout.lines().rev().find_map(|l| l.trim().strip_prefix(GENERALIZE_EXIT_MARK)).and_then(|c| c.trim().parse().ok())
}

/// What a Run Command printed: (standard output, standard error).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutput {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs a PowerShell script on `vm` through ARM's Run Command, within `deadline`.
pub async fn run_command(arm: &ArmClient, vm: &str, script: &[String], deadline: Duration) -> Result<RunOutput> {
    let body = json!({"commandId": "RunPowerShellScript", "script": script});
    // Not repeated on a 5xx: a second setup or Sysprep could start beside the first.
    let out = tokio::time::timeout(deadline, arm.post_once(&format!("{vm}/runCommand"), COMPUTE_API, Some(&body)))
        .await
        .map_err(|_| Error::Timeout { operation: format!("Run Command on {vm}"), after: deadline })??;
    Ok(parse_output(&out))
}

fn parse_output(v: &Value) -> RunOutput {
    let mut r = RunOutput::default();
    for s in v["value"].as_array().into_iter().flatten() {
        let code = s["code"].as_str().unwrap_or_default();
        let message = s["message"].as_str().unwrap_or_default().to_string();
        if code.contains("/StdOut/") {
            r.stdout = message;
        } else if code.contains("/StdErr/") {
            r.stderr = message;
        }
    }
    r
}

/// The certificate's SHA-256 from the setup script's output.
pub fn certificate_pin(out: &RunOutput) -> Result<[u8; 32]> {
    let line = out.stdout.lines().rev().find_map(|l| l.trim().strip_prefix(CERTIFICATE_MARK).map(str::trim));
    match line.and_then(aib_customizers::tls_pin::parse_fingerprint) {
        Some(pin) => Ok(pin),
        None => Err(Error::generic(
            BACKEND,
            format!(
                "setting up WinRM over HTTPS on the build VM failed (no certificate fingerprint in the Run Command output): {}",
                if out.stderr.trim().is_empty() { out.stdout.trim() } else { out.stderr.trim() }
            ),
        )),
    }
}

/// Whether the generalization script (and so its cleanup part) ran to its end.
pub fn cleaned_up(out: &RunOutput) -> bool {
    out.stdout.lines().any(|l| l.trim() == REMOVED_MARK)
}

/// ARM's rules for a Windows admin name: at most 20 characters, none of `"/\[]:|<>+=;,?*@`,
/// not ending in `.`, and not a reserved name.
pub fn valid_admin_user(u: &str) -> bool {
    const RESERVED: &[&str] = &[
        "administrator",
        "admin",
        "user",
        "user1",
        "test",
        "user2",
        "test1",
        "user3",
        "admin1",
        "1",
        "123",
        "a",
        "actuser",
        "adm",
        "admin2",
        "aspnet",
        "backup",
        "console",
        "david",
        "guest",
        "john",
        "owner",
        "root",
        "server",
        "sql",
        "support",
        "support_388945a0",
        "sys",
        "test2",
        "test3",
        "user4",
        "user5",
    ];
    !u.is_empty()
        && u.chars().count() <= 20
        && !u.ends_with('.')
        && !u.chars().any(|c| c.is_control() || "\"/\\[]:|<>+=;,?*@ ".contains(c))
        && !RESERVED.contains(&u.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_meet_arms_rule_and_differ() {
        let a = generate_password("aib");
        assert_eq!(a.len(), 32);
        assert!(a.chars().any(|c| c.is_ascii_uppercase()) && a.chars().any(|c| c.is_ascii_lowercase()));
        assert!(a.chars().any(|c| c.is_ascii_digit()) && a.chars().any(|c| !c.is_ascii_alphanumeric()));
        assert_ne!(a, generate_password("aib"));
        for _ in 0..2000 {
            assert!(!generate_password("aib").to_ascii_lowercase().contains("aib"), "Windows refuses a password holding the user name");
        }
    }

    #[test]
    fn the_pin_is_read_from_the_output_and_its_absence_explained() {
        let hex = "AB".repeat(32);
        let out = RunOutput { stdout: format!("noise\n{CERTIFICATE_MARK}{hex}\n"), stderr: String::new() };
        assert_eq!(certificate_pin(&out).unwrap(), [0xab; 32]);
        let bad = RunOutput { stdout: String::new(), stderr: "New-SelfSignedCertificate : Access is denied".into() };
        assert!(certificate_pin(&bad).unwrap_err().to_string().contains("Access is denied"));
        let v = json!({"value": [{"code": "ComponentStatus/StdOut/succeeded", "message": "a"}, {"code": "ComponentStatus/StdErr/succeeded", "message": "b"}]});
        assert_eq!(parse_output(&v), RunOutput { stdout: "a".into(), stderr: "b".into() });
    }

    #[test]
    fn scripts_undo_what_they_do() {
        let setup = setup_script(5986).join("\n");
        assert!(setup.contains("-Port 5986") && setup.contains("-LocalPort 5986") && setup.contains(CERTIFICATE_MARK));
        let cleanup = cleanup_script().join("\n");
        for what in [FRIENDLY_NAME, RULE, "Auth\\Basic", "LocalAccountTokenFilterPolicy", "Transport=HTTPS", STATE_KEY, "PreviousListeners"]
        {
            assert!(setup.contains(what) && cleanup.contains(what), "{what}");
        }
        let g = generalize_script("Write-Output 'sysprep'").join("\n");
        assert!(g.starts_with(&cleanup_script().join("\n")), "WinRM is removed first");
        let lines = g.lines().collect::<Vec<_>>();
        assert!(
            lines[lines.len() - 2].contains(REMOVED_MARK) && lines[lines.len() - 1].contains(GENERALIZE_EXIT_MARK),
            "the markers come last"
        );
        let out = RunOutput { stdout: format!("sysprep\n{REMOVED_MARK}\n{GENERALIZE_EXIT_MARK}3\n"), stderr: String::new() };
        assert_eq!(generalize_exit(&out), Some(3));
        assert!(cleaned_up(&out));
        assert!(valid_admin_user("aib") && valid_admin_user("Build.User1"));
        assert!(!valid_admin_user("Administrator") && !valid_admin_user("a@b") && !valid_admin_user("x."));
    }
}
