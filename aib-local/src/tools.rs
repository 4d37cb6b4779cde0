//! The host programs local builds use, and how to run them: every argument is passed as its
//! own argv entry (no shell), and a missing program is an error naming the install command.

use crate::error::LocalError;
use aib_core::{Error, Result};
use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;
use tokio::process::Command;

pub(crate) const BACKEND: &str = "local";

/// What to run when a tool is missing.
pub const SETUP_HINT: &str = "run scripts/setup-local.sh as root (it installs qemu-system-x86 and qemu-utils from one suite, ovmf, mmdebstrap, genisoimage, mtools, fdisk, e2fsprogs)";

/// UEFI firmware (code, read-only) from Debian's `ovmf`.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// UEFI variable store template.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Runs `program args…`, returning stdout; a failure carries the command and its stderr.
pub(crate) async fn run<I, S>(program: &str, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_os_string()).collect();
    // No cloud secrets in the tool's environment; it dies with a cancelled or timed-out run.
    let out = Command::new(program)
        .args(&args)
        .env_clear()
        .envs(aib_core::boundary::tool_env())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| missing(program, e))?;
    if !out.status.success() {
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        return Err(failed(program, &shown, out.status, &out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `qemu-img convert -p …` (give `-p`), telling `progress` the percentage done as qemu-img
/// prints it (`    (42.17/100%)`, one update a carriage return).
pub(crate) async fn run_reporting(program: &str, args: &[String], progress: &(dyn Fn(f64) + Send + Sync)) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let mut child = Command::new(program)
        .args(args)
        .env_clear()
        .envs(aib_core::boundary::tool_env())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| missing(program, e))?;
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let read_stdout = async {
        let Some(out) = stdout.as_mut() else { return };
        let (mut buf, mut pending) = ([0u8; 512], Vec::new());
        while let Ok(n @ 1..) = out.read(&mut buf).await {
            pending.extend_from_slice(&buf[..n]);
            while let Some(i) = pending.iter().position(|b| *b == b'\r' || *b == b'\n') {
                let piece: Vec<u8> = pending.drain(..=i).collect();
                if let Some(p) = percent(&String::from_utf8_lossy(&piece)) {
                    progress(p);
                }
            }
            // A line without an end this long is no progress line: never hold it all.
            if pending.len() > 4096 {
                pending.clear();
            }
        }
    };
    let read_stderr = async {
        let mut err = Vec::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.take(1 << 20).read_to_end(&mut err).await;
        }
        err
    };
    let ((), err) = tokio::join!(read_stdout, read_stderr);
    let status = child.wait().await.map_err(|e| missing(program, e))?;
    if !status.success() {
        return Err(failed(program, args, status, &err));
    }
    Ok(())
}

/// A tool that failed: its command line and the last 15 lines of its stderr.
fn failed(program: &str, args: &[String], status: std::process::ExitStatus, stderr: &[u8]) -> Error {
    let stderr = String::from_utf8_lossy(stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(15).collect::<Vec<_>>().into_iter().rev().collect();
    LocalError::ToolFailed { command: format!("{program} {}", args.join(" ")), status, stderr: tail.join(" | ") }.into()
}

/// `42.17` of qemu-img's `    (42.17/100%)`.
fn percent(piece: &str) -> Option<f64> {
    let inner = piece.trim().strip_prefix('(')?.strip_suffix("/100%)")?;
    inner.parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p))
}

pub(crate) fn missing(program: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        LocalError::ToolMissing { program: program.to_string() }.into()
    } else {
        LocalError::Spawn { program: program.to_string(), source: e }.into()
    }
}

/// Checks the programs and files a local build needs; the error lists every missing one.
pub fn check() -> Result<()> {
    let mut missing = Vec::new();
    for p in [
        "qemu-system-x86_64",
        "qemu-img",
        "mmdebstrap",
        "genisoimage",
        "mcopy",
        "mformat",
        "mmd",
        "sfdisk",
        "mkfs.ext4",
        "dpkg-deb",
        "apt-get",
    ] {
        if which(p).is_none() {
            missing.push(p.to_string());
        }
    }
    for f in [OVMF_CODE, OVMF_VARS] {
        if !Path::new(f).exists() {
            missing.push(f.to_string());
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::NotFound { backend: BACKEND, what: format!("{}: {SETUP_HINT}", missing.join(", ")) })
    }
}

/// The full path of `program` on `PATH` (and the sbin directories Debian puts tools in).
pub fn which(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].iter().map(std::path::PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// Takes the exclusive lock of `path` (created if missing), waiting at most `patience`: a
/// holder that hangs makes the wait fail with a message naming the file, never last for ever.
pub(crate) async fn lock_file(path: &Path, patience: std::time::Duration) -> Result<std::fs::File> {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).map_err(|e| Error::io(path, e))?;
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Timeout {
                    operation: format!("taking the lock {} (another aib holds it)", path.display()),
                    after: patience,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(path, e)),
        }
    }
}

/// SHA-256 of a file, streamed.
pub(crate) async fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    use tokio::io::AsyncReadExt;
    let mut f = tokio::fs::File::open(path).await.map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// `qemu-img info` facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageInfo {
    pub(crate) virtual_size: u64,
    pub(crate) actual_size: u64,
}

pub(crate) async fn image_info(path: &Path, format: Option<&str>) -> Result<ImageInfo> {
    let mut args: Vec<String> = vec!["info".into(), "--output=json".into(), "-U".into()];
    if let Some(f) = format {
        args.push("-f".into());
        args.push(f.into());
    }
    args.push(path.display().to_string());
    let out = run("qemu-img", &args).await?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| LocalError::BadOutput { program: "qemu-img info".into(), message: e.to_string() })?;
    Ok(ImageInfo { virtual_size: v["virtual-size"].as_u64().unwrap_or(0), actual_size: v["actual-size"].as_u64().unwrap_or(0) })
}

/// Refuses an image that makes `qemu-img` read other files of the host: a backing file (a
/// `json:` or protocol name among them) or an external data file. A downloaded or imported
/// qcow2 could otherwise pull `~/.ssh/id_ed25519` into the image it becomes.
pub(crate) async fn refuse_external_files(path: &Path, format: &str, what: &str) -> Result<()> {
    let out = run("qemu-img", ["info", "--output=json", "-U", "-f", format, &path.display().to_string()]).await?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| LocalError::BadOutput { program: "qemu-img info".into(), message: e.to_string() })?;
    let data = &v["format-specific"]["data"];
    let named =
        [("backing file", &v["backing-filename"]), ("backing file", &v["full-backing-filename"]), ("data file", &data["data-file"])];
    match named.iter().find(|(_, n)| !n.is_null()) {
        Some((kind, name)) => Err(Error::InvalidConfig {
            backend: BACKEND,
            key: what.to_string(),
            message: format!(
                "the image names a {kind} ({name}), which would read a file of this host into it; give a standalone image (`qemu-img convert -O qcow2 IN OUT` flattens one)"
            ),
        }),
        None => Ok(()),
    }
}

/// Converts `src` (an image in `format`) into a standalone zstd-compressed qcow2 at `dest`:
/// the form the catalog and the gallery keep images in.
pub(crate) async fn to_zstd_qcow2(src: &str, format: &str, dest: &Path) -> Result<()> {
    run(
        "qemu-img",
        ["convert", "-W", "-m", "16", "-f", format, "-O", "qcow2", "-c", "-o", "compression_type=zstd", src, &dest.display().to_string()],
    )
    .await
    .map(|_| ())
}

/// Size on disk, virtual size and SHA-256 of a qcow2 image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskFacts {
    pub(crate) size: u64,
    pub(crate) virtual_size: u64,
    pub(crate) sha256: String,
}

pub(crate) async fn disk_facts(path: &Path) -> Result<DiskFacts> {
    let info = image_info(path, Some("qcow2")).await?;
    let size = tokio::fs::metadata(path).await.map_err(|e| Error::io(path, e))?.len();
    Ok(DiskFacts { size, virtual_size: info.virtual_size, sha256: sha256_file(path).await? })
}

/// The machine type `q35` stands for in the installed QEMU (`pc-q35-10.0` for QEMU 10.0),
/// asked once: build VMs name it exactly, so a saved VM state always meets the same machine.
pub(crate) fn machine_type() -> &'static str {
    static TYPE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TYPE.get_or_init(|| {
        let out = std::process::Command::new("qemu-system-x86_64")
            .args(["-machine", "help"])
            .env_clear()
            .envs(aib_core::boundary::tool_env())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        pinned_machine(&out).unwrap_or_else(|| "q35".into())
    })
}

/// The target of the `q35` alias in `qemu -machine help` output.
fn pinned_machine(help: &str) -> Option<String> {
    let line = help.lines().find(|l| l.split_whitespace().next() == Some("q35"))?;
    let rest = line.split("(alias of ").nth(1)?;
    Some(rest.trim_end().trim_end_matches(')').to_string())
}

/// Whether the host can run KVM guests for real.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (always works, 5–10× slower).
    Tcg,
}

impl Accelerator {
    /// Picks KVM only when it can run stock guests: `/dev/kvm` must be usable and backed by
    /// `kvm_intel`/`kvm_amd`. A paravirtualised `kvm_pvm` device starts QEMU but cannot run
    /// unmodified guest code, so it means TCG. `AIB_ACCEL=kvm|tcg` overrides.
    pub fn probe() -> Accelerator {
        match std::env::var("AIB_ACCEL").ok().as_deref() {
            Some("kvm") => return Accelerator::Kvm,
            Some("tcg") => return Accelerator::Tcg,
            _ => {}
        }
        let module = |m: &str| Path::new("/sys/module").join(m).exists();
        let usable = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
        if usable && !module("kvm_pvm") && (module("kvm_intel") || module("kvm_amd")) { Accelerator::Kvm } else { Accelerator::Tcg }
    }

    /// QEMU's `-accel` and `-cpu` values.
    pub(crate) fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accelerator::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accelerator::Tcg => ["-accel", "tcg", "-cpu", "max"],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tools_see_only_the_allowed_environment() {
        // Whatever this process holds (CARGO_*, and in CI perhaps AZURE_* secrets), a tool gets
        // the allowlist only.
        let out = run("env", std::iter::empty::<&str>()).await.unwrap();
        let keys: Vec<&str> = out.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        assert!(!keys.is_empty());
        for k in keys {
            assert!(aib_core::boundary::TOOL_ENV.contains(&k), "`{k}` reached a tool");
        }
    }

    #[test]
    fn the_q35_alias_is_pinned() {
        let help = "pc-q35-9.2           Standard PC (Q35 + ICH9, 2009)\nq35                  Standard PC (Q35 + ICH9, 2009) (alias of pc-q35-10.0)\n";
        assert_eq!(pinned_machine(help).as_deref(), Some("pc-q35-10.0"));
        assert_eq!(pinned_machine("pc-q35-9.2  x\n"), None);
    }

    #[test]
    fn this_machine_kind_gets_tcg_unless_told() {
        // On a kvm_pvm host the probe must not pick KVM.
        if Path::new("/sys/module/kvm_pvm").exists() && std::env::var("AIB_ACCEL").is_err() {
            assert_eq!(Accelerator::probe(), Accelerator::Tcg);
        }
        assert_eq!(Accelerator::Tcg.qemu_args(), ["-accel", "tcg", "-cpu", "max"]);
    }

    #[tokio::test]
    async fn a_conversion_reports_its_percentage() {
        // A 64 MiB raw disk with data in it, converted by the real qemu-img with -p.
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("a.raw"), dir.path().join("b.qcow2"));
        let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, data).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let args: Vec<String> = ["convert", "-p", "-f", "raw", "-O", "qcow2"].map(String::from).to_vec();
        let args = [args, vec![src.display().to_string(), dst.display().to_string()]].concat();
        run_reporting("qemu-img", &args, &|p| seen.lock().unwrap().push(p)).await.unwrap_or_else(|e| panic!("{e}"));
        let seen = seen.into_inner().unwrap();
        assert!(seen.len() >= 2 && seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(seen.last(), Some(&100.0), "{seen:?}");
        assert_eq!(percent("    (42.17/100%)\r"), Some(42.17));
        assert_eq!(percent("(142/100%)"), None);
        let e = run_reporting("qemu-img", &["convert".into(), "-p".into(), "/nonexistent".into(), dst.display().to_string()], &|_| {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent"), "{e}");
    }

    #[tokio::test]
    async fn missing_programs_name_the_setup() {
        let e = run("aib-no-such-program", ["x"]).await.unwrap_err();
        assert!(e.to_string().contains("setup-local.sh"), "{e}");
        let e = run("false", Vec::<String>::new()).await.unwrap_err();
        assert!(e.to_string().contains("`false ` failed"), "{e}");
    }
}
