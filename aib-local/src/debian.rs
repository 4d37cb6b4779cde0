//! Builds the Debian 12 base image from Debian's package mirror: mmdebstrap into a directory,
//! then a bootable GPT disk (UEFI, systemd-boot) assembled from files — no loop devices, no
//! mounts — and cached as a zstd qcow2 under a key that hashes the recipe.

use crate::tools::{BACKEND, run};
use aib_core::{Error, OutputSink, OutputStream, Result};
use sha2::Digest;
use std::path::{Path, PathBuf};

/// Packages of the base image: a systemd system with sshd, cloud-init (NoCloud) and a kernel.
pub const PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "linux-image-cloud-amd64",
    "initramfs-tools",
    "iproute2",
    "netbase",
    "sudo",
    "ca-certificates",
    "cloud-init",
    "cloud-guest-utils",
];

const SUITE: &str = "bookworm";
const DISK_MIB: u64 = 2048;
const ESP_MIB: u64 = 64;

fn hooks() -> Vec<String> {
    vec![
        r#"echo debian > "$1/etc/hostname"; printf "127.0.0.1 localhost\n127.0.1.1 debian\n" > "$1/etc/hosts"; printf "LABEL=root / ext4 rw,discard,errors=remount-ro 0 1\n" > "$1/etc/fstab""#.into(),
        r#"printf "[Match]\nName=en* eth*\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/10-dhcp.network"; chroot "$1" systemctl enable systemd-networkd"#.into(),
        r#"printf "datasource_list: [ NoCloud, None ]\nnetwork: {config: disabled}\n" > "$1/etc/cloud/cloud.cfg.d/99-aib-local.cfg""#.into(),
        r#"rm -f "$1"/etc/ssh/ssh_host_*; truncate -s0 "$1/etc/machine-id"; rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin"#.into(),
    ]
}

/// The cache key: a hash of everything that shapes the image.
pub fn recipe_key() -> String {
    let mut h = sha2::Sha256::new();
    h.update(format!("aib-debian-base v1\n{SUITE}\n{}\n{DISK_MIB}\n{ESP_MIB}\nuefi-systemd-boot\n", PACKAGES.join(",")));
    for k in hooks() {
        h.update(k);
        h.update("\n");
    }
    hex::encode(h.finalize())[..16].to_string()
}

fn say(out: &dyn OutputSink, s: &str) {
    out.line(OutputStream::Stdout, s);
}

async fn systemd_boot_efi(work: &Path) -> Result<PathBuf> {
    let dir = work.join("sdboot");
    tokio::fs::create_dir_all(&dir).await.map_err(|e| Error::io(&dir, e))?;
    // Downloaded as root into our own directory (apt's sandbox user could not write there).
    let out = tokio::process::Command::new("apt-get")
        .args(["download", "-qq", "-o", "APT::Sandbox::User=root", "systemd-boot-efi"])
        .current_dir(&dir)
        .output()
        .await
        .map_err(|e| crate::tools::missing("apt-get", e))?;
    if !out.status.success() {
        return Err(Error::generic(BACKEND, format!("apt-get download systemd-boot-efi: {}", String::from_utf8_lossy(&out.stderr).trim())));
    }
    let mut deb = None;
    let mut rd = tokio::fs::read_dir(&dir).await.map_err(|e| Error::io(&dir, e))?;
    while let Some(e) = rd.next_entry().await.map_err(|e| Error::io(&dir, e))? {
        if e.file_name().to_string_lossy().ends_with(".deb") {
            deb = Some(e.path());
        }
    }
    let deb = deb.ok_or_else(|| Error::generic(BACKEND, "apt-get download produced no .deb"))?;
    run("dpkg-deb", ["-x".to_string(), deb.display().to_string(), dir.join("x").display().to_string()]).await?;
    let efi = dir.join("x/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
    if !efi.exists() {
        return Err(Error::generic(BACKEND, "systemd-bootx64.efi not found in systemd-boot-efi"));
    }
    Ok(efi)
}

/// Builds the base disk into `dest` (a zstd qcow2), working in `work`. Progress lines go to
/// `out`. Takes about a minute with a warm package cache.
pub async fn build(work: &Path, dest: &Path, out: &dyn OutputSink) -> Result<()> {
    let root = work.join("root");
    let _ = tokio::fs::remove_dir_all(work).await;
    tokio::fs::create_dir_all(work).await.map_err(|e| Error::io(work, e))?;
    let efi = systemd_boot_efi(work).await?;
    say(out, &format!("mmdebstrap {SUITE} ({} packages) — about a minute", PACKAGES.len()));
    let mut args: Vec<String> = vec!["--variant=apt".into(), "--quiet".into()];
    if is_root() {
        args.push("--mode=root".into());
    } else {
        args.push("--mode=unshare".into());
    }
    for hook in ["merged-usr", "eatmydata"] {
        let d = format!("/usr/share/mmdebstrap/hooks/{hook}");
        if Path::new(&d).is_dir() {
            args.push(format!("--hook-dir={d}"));
        }
    }
    for opt in ["path-exclude=/usr/share/man/*", "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright"] {
        args.push(format!("--dpkgopt={opt}"));
    }
    args.push(format!("--include={}", PACKAGES.join(",")));
    for h in hooks() {
        args.push(format!("--customize-hook={h}"));
    }
    args.push(SUITE.into());
    args.push(root.display().to_string());
    run("mmdebstrap", &args).await?;

    say(out, "assembling a GPT disk: ESP (systemd-boot) + ext4 root, without mounts");
    let cp = |from: &str, to: &Path| {
        let (from, to) = (root.join(from), to.to_path_buf());
        async move { tokio::fs::copy(&from, &to).await.map_err(|e| Error::io(&from, e)) }
    };
    let (vmlinuz, initrd) = (work.join("vmlinuz"), work.join("initrd.img"));
    cp("vmlinuz", &vmlinuz).await?;
    cp("initrd.img", &initrd).await?;
    let esp = work.join("esp.img");
    let esp_s = esp.display().to_string();
    run("truncate", ["-s", &format!("{ESP_MIB}M"), &esp_s]).await?;
    run("mformat", ["-i", &esp_s, "-F", "-v", "ESP", "::"]).await?;
    run("mmd", ["-i", &esp_s, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"]).await?;
    let write = |name: &str, text: &str| {
        let p = work.join(name);
        let text = text.to_string();
        async move {
            tokio::fs::write(&p, text).await.map_err(|e| Error::io(&p, e))?;
            Ok::<PathBuf, Error>(p)
        }
    };
    let loader = write("loader.conf", "default debian.conf\ntimeout 0\n").await?;
    let entry =
        write("debian.conf", "title Debian\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=LABEL=root rw console=ttyS0\n").await?;
    for (src, dst) in [
        (efi.as_path(), "::/EFI/BOOT/BOOTX64.EFI"),
        (loader.as_path(), "::/loader/loader.conf"),
        (entry.as_path(), "::/loader/entries/debian.conf"),
        (vmlinuz.as_path(), "::/vmlinuz"),
        (initrd.as_path(), "::/initrd.img"),
    ] {
        run("mcopy", ["-i", &esp_s, &src.display().to_string(), dst]).await?;
    }
    let root_mib = DISK_MIB - ESP_MIB - 2;
    let rootimg = work.join("root.img").display().to_string();
    run("truncate", ["-s", &format!("{root_mib}M"), &rootimg]).await?;
    run("mkfs.ext4", ["-q", "-L", "root", "-d", &root.display().to_string(), &rootimg]).await?;
    let disk = work.join("disk.raw").display().to_string();
    run("truncate", ["-s", &format!("{DISK_MIB}M"), &disk]).await?;
    let table = format!(
        "label: gpt\nstart=1MiB, size={ESP_MIB}MiB, type=uefi, name=esp\nstart={}MiB, size={root_mib}MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, name=root\n",
        ESP_MIB + 1
    );
    let mut child = tokio::process::Command::new("sfdisk")
        .args(["-q", &disk])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .map_err(|e| crate::tools::missing("sfdisk", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt;
        stdin.write_all(table.as_bytes()).await.map_err(|e| Error::generic(BACKEND, e))?;
    }
    if !child.wait().await.map_err(|e| Error::generic(BACKEND, e))?.success() {
        return Err(Error::generic(BACKEND, "sfdisk failed"));
    }
    run(
        "dd",
        [format!("if={esp_s}"), format!("of={disk}"), "bs=1M".into(), "seek=1".into(), "conv=notrunc,sparse".into(), "status=none".into()],
    )
    .await?;
    run(
        "dd",
        [
            format!("if={rootimg}"),
            format!("of={disk}"),
            "bs=1M".into(),
            format!("seek={}", ESP_MIB + 1),
            "conv=notrunc,sparse".into(),
            "status=none".into(),
        ],
    )
    .await?;
    say(out, "compressing the base image (qcow2, zstd)");
    let tmp = dest.with_extension("qcow2.tmp");
    run("qemu-img", ["convert", "-W", "-m", "16", "-c", "-O", "qcow2", "-o", "compression_type=zstd", &disk, &tmp.display().to_string()])
        .await?;
    tokio::fs::rename(&tmp, dest).await.map_err(|e| Error::io(dest, e))?;
    let _ = tokio::fs::remove_dir_all(work).await;
    Ok(())
}

fn is_root() -> bool {
    // Root builds in root mode; others need user namespaces (mmdebstrap's unshare mode).
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_key_follows_the_recipe() {
        let k = super::recipe_key();
        assert_eq!(k.len(), 16);
        assert_eq!(k, super::recipe_key());
    }
}
