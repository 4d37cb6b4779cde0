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

/// How the base image boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// UEFI with systemd-boot on an ESP (Azure Gen2, `*-gen2` SKUs).
    Uefi,
    /// BIOS with GRUB in a BIOS-boot partition (Azure Gen1).
    Bios,
}

impl Firmware {
    /// `uefi` or `bios`, as manifests and image attributes spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Firmware::Uefi => "uefi",
            Firmware::Bios => "bios",
        }
    }

    /// The firmware a SKU implies: `-gen2` SKUs are UEFI, others BIOS.
    pub fn for_sku(sku: &str) -> Firmware {
        if sku.to_ascii_lowercase().ends_with("gen2") { Firmware::Uefi } else { Firmware::Bios }
    }
}

/// Extra packages of the BIOS variant (GRUB is installed from inside the image).
const BIOS_PACKAGES: &[&str] = &["grub-pc-bin", "grub2-common"];

const BIOS_GRUB: &str = r#"mkdir -p "$1/etc/default/grub.d"; printf 'GRUB_TIMEOUT=0
GRUB_CMDLINE_LINUX="console=tty0 console=ttyS0,115200"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --speed=115200"
GRUB_DISABLE_OS_PROBER=true
' > "$1/etc/default/grub.d/50-aib.cfg""#;

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

fn packages(fw: Firmware) -> Vec<&'static str> {
    let mut p = PACKAGES.to_vec();
    if fw == Firmware::Bios {
        p.extend(BIOS_PACKAGES);
    }
    p
}

/// The cache key: a hash of everything that shapes the image.
pub fn recipe_key(fw: Firmware) -> String {
    let mut h = sha2::Sha256::new();
    let boot = match fw {
        Firmware::Uefi => "uefi-systemd-boot".to_string(),
        Firmware::Bios => format!("bios-grub\n{BIOS_GRUB}"),
    };
    h.update(format!("aib-debian-base v1\n{SUITE}\n{}\n{DISK_MIB}\n{ESP_MIB}\n{boot}\n", packages(fw).join(",")));
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
        .env_clear()
        .envs(aib_core::boundary::tool_env())
        .kill_on_drop(true)
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
/// `out`. Takes about a minute with a warm package cache. A BIOS disk has no boot loader yet:
/// its kernel and initrd are left next to `dest` (`vmlinuz`, `initrd.img`) for the first boot
/// that installs GRUB from inside ([`crate::Catalog`] does that).
pub async fn build(work: &Path, dest: &Path, out: &dyn OutputSink, fw: Firmware) -> Result<()> {
    let root = work.join("root");
    let _ = tokio::fs::remove_dir_all(work).await;
    tokio::fs::create_dir_all(work).await.map_err(|e| Error::io(work, e))?;
    let efi = match fw {
        Firmware::Uefi => Some(systemd_boot_efi(work).await?),
        Firmware::Bios => None,
    };
    let pkgs = packages(fw);
    say(out, &format!("mmdebstrap {SUITE} ({} packages, {}) — about a minute", pkgs.len(), fw.as_str()));
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
    args.push(format!("--include={}", pkgs.join(",")));
    for h in hooks() {
        args.push(format!("--customize-hook={h}"));
    }
    if fw == Firmware::Bios {
        args.push(format!("--customize-hook={BIOS_GRUB}"));
    }
    args.push(SUITE.into());
    args.push(root.display().to_string());
    run("mmdebstrap", &args).await?;

    let cp = |from: &str, to: &Path| {
        let (from, to) = (root.join(from), to.to_path_buf());
        async move { tokio::fs::copy(&from, &to).await.map_err(|e| Error::io(&from, e)) }
    };
    let (vmlinuz, initrd) = (work.join("vmlinuz"), work.join("initrd.img"));
    cp("vmlinuz", &vmlinuz).await?;
    cp("initrd.img", &initrd).await?;
    let disk = work.join("disk.raw").display().to_string();
    run("truncate", ["-s", &format!("{DISK_MIB}M"), &disk]).await?;
    let (table, root_start, root_mib) = match &efi {
        Some(efi) => {
            say(out, "assembling a GPT disk: ESP (systemd-boot) + ext4 root, without mounts");
            let esp = work.join("esp.img");
            let esp_s = esp.display().to_string();
            run("truncate", ["-s", &format!("{ESP_MIB}M"), &esp_s]).await?;
            run("mformat", ["-i", &esp_s, "-F", "-v", "ESP", "::"]).await?;
            run("mmd", ["-i", &esp_s, "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries"]).await?;
            let loader = work.join("loader.conf");
            tokio::fs::write(&loader, "default debian.conf\ntimeout 0\n").await.map_err(|e| Error::io(&loader, e))?;
            let entry = work.join("debian.conf");
            tokio::fs::write(&entry, "title Debian\nlinux /vmlinuz\ninitrd /initrd.img\noptions root=LABEL=root rw console=ttyS0\n")
                .await
                .map_err(|e| Error::io(&entry, e))?;
            for (src, dst) in [
                (efi.as_path(), "::/EFI/BOOT/BOOTX64.EFI"),
                (loader.as_path(), "::/loader/loader.conf"),
                (entry.as_path(), "::/loader/entries/debian.conf"),
                (vmlinuz.as_path(), "::/vmlinuz"),
                (initrd.as_path(), "::/initrd.img"),
            ] {
                run("mcopy", ["-i", &esp_s, &src.display().to_string(), dst]).await?;
            }
            run(
                "dd",
                [
                    format!("if={esp_s}"),
                    format!("of={disk}"),
                    "bs=1M".into(),
                    "seek=1".into(),
                    "conv=notrunc,sparse".into(),
                    "status=none".into(),
                ],
            )
            .await?;
            let root_mib = DISK_MIB - ESP_MIB - 2;
            (
                format!(
                    "label: gpt\nstart=1MiB, size={ESP_MIB}MiB, type=uefi, name=esp\nstart={}MiB, size={root_mib}MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, name=root\n",
                    ESP_MIB + 1
                ),
                ESP_MIB + 1,
                root_mib,
            )
        }
        None => {
            say(out, "assembling a GPT disk: BIOS boot partition + ext4 root, without mounts");
            let root_mib = DISK_MIB - 3;
            (
                format!(
                    "label: gpt\nstart=1MiB, size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name=bios\nstart=2MiB, size={root_mib}MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, name=root\n"
                ),
                2,
                root_mib,
            )
        }
    };
    let rootimg = work.join("root.img").display().to_string();
    run("truncate", ["-s", &format!("{root_mib}M"), &rootimg]).await?;
    run("mkfs.ext4", ["-q", "-L", "root", "-d", &root.display().to_string(), &rootimg]).await?;
    let mut child = tokio::process::Command::new("sfdisk")
        .env_clear()
        .envs(aib_core::boundary::tool_env())
        .kill_on_drop(true)
        .args(["-q", "--no-reread", "--no-tell-kernel", &disk])
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
        [
            format!("if={rootimg}"),
            format!("of={disk}"),
            "bs=1M".into(),
            format!("seek={root_start}"),
            "conv=notrunc,sparse".into(),
            "status=none".into(),
        ],
    )
    .await?;
    if efi.is_none() {
        let dir = dest.parent().unwrap_or(work);
        tokio::fs::copy(&vmlinuz, dir.join("vmlinuz")).await.map_err(|e| Error::io(&vmlinuz, e))?;
        tokio::fs::copy(&initrd, dir.join("initrd.img")).await.map_err(|e| Error::io(&initrd, e))?;
    }
    say(out, "compressing the base image (qcow2, zstd)");
    let tmp = dest.with_extension("qcow2.tmp");
    crate::tools::to_zstd_qcow2(&disk, "raw", &tmp).await?;
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
        use super::Firmware::*;
        let k = super::recipe_key(Uefi);
        assert_eq!(k.len(), 16);
        assert_eq!(k, super::recipe_key(Uefi));
        assert_ne!(k, super::recipe_key(Bios));
        assert_eq!(super::Firmware::for_sku("12-gen2"), Uefi);
        assert_eq!(super::Firmware::for_sku("12"), Bios);
    }
}
