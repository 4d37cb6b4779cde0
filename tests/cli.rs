//! The `aib` CLI (feature `cli`): exit codes, output lines, JSON output, schema, completions,
//! and (slow, ignored) `cargo install` of it into a clean cargo home.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Example `name`, built now (`cargo test` builds examples only as test harnesses, which
/// cannot run the program).
fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    // The same features as this test: one binary, not one flipping between feature sets.
    let features: &[&str] = if cfg!(feature = "azure") { &["--features", "azure"] } else { &[] };
    let st = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .args(features)
        .status()
        .expect("cargo");
    assert!(st.success(), "cargo build --example {name} failed");
    // Integration tests live in target/<profile>/deps; examples sit next door.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing after cargo build", bin.display());
    bin
}

/// The `aib` binary cargo built for this test (same features).
fn aib() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aib"))
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(aib());
    cmd.args(args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    if stdin.is_some() {
        cmd.stdin(std::process::Stdio::piped());
    }
    let mut child = cmd.spawn().unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn corpus_files() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("aib-core/tests/corpus");
    let mut out = Vec::new();
    for d in ["quickstarts", "rest-api-examples"] {
        for e in std::fs::read_dir(root.join(d)).unwrap() {
            out.push(e.unwrap().path().display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn validate_accepts_the_whole_corpus() {
    let files = corpus_files();
    assert_eq!(files.len(), 44);
    let mut args = vec!["validate"];
    args.extend(files.iter().map(String::as_str));
    let out = run(&args, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.lines().all(|l| l.contains("[warning]")), "only warnings: {stdout}");
}

#[test]
fn validate_evaluates_a_deployment_template_with_its_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("azuredeploy.json");
    // A deployment template as people write them: comments, parameters, a resource id.
    std::fs::write(
        &t,
        r#"{
  "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
  "contentVersion": "1.0.0.0",
  "parameters": {
    "imageName": {"type": "string"},
    "timeout": {"type": "int", "defaultValue": 60, "allowedValues": [60, 120]}, // minutes
  },
  "resources": [{
    "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2024-02-01",
    "name": "[parameters('imageName')]", "location": "[resourceGroup().location]",
    "identity": {"type": "UserAssigned", "userAssignedIdentities": {"[resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', 'builder')]": {}}},
    "properties": {
      "buildTimeoutInMinutes": "[parameters('timeout')]",
      "source": {"type": "PlatformImage", "publisher": "Canonical", "offer": "ubuntu-24_04-lts", "sku": "server", "version": "latest"},
      "customize": [{"type": "Shell", "name": "hello", "inline": ["[concat('echo ', parameters('imageName'))]"]}],
      "distribute": [{"type": "ManagedImage", "runOutputName": "[parameters('imageName')]", "location": "[resourceGroup().location]",
        "imageId": "[resourceId('Microsoft.Compute/images', parameters('imageName'))]"}]
    }
  }]
}"#,
    )
    .unwrap();
    let p = dir.path().join("azuredeploy.parameters.json");
    std::fs::write(&p, r#"{"$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#", "contentVersion": "1.0.0.0", "parameters": {"imageName": {"value": "web"}}}"#).unwrap();
    let (t, p) = (t.display().to_string(), p.display().to_string());
    let ctx = ["--subscription", "00000000-0000-0000-0000-000000000000", "--resource-group", "img", "--rg-location", "westeurope"];
    let out = run(&[&["validate", t.as_str(), "--parameters", p.as_str()][..], &ctx[..]].concat(), None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("ArmExpression") && stdout.contains("JsonExtension"), "evaluated in full: {stdout}");
    // Without the parameters, it is checked as written and says why it was not evaluated.
    let out = run(&["validate", t.as_str()], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("not evaluated: ") && stdout.contains("-p imageName=VALUE"), "{stdout}");
    // A value outside allowedValues is an error at the parameter.
    let out = run(&[&["validate", t.as_str(), "--parameters", p.as_str(), "-p", "timeout=45"][..], &ctx[..]].concat(), None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("parameters.timeout: ArmExpression:") && stdout.contains("allowedValues"), "{stdout}");
    // A broken parameter file: its name, where, and the fix, on one line.
    std::fs::write(&p, "{\"parameters\": {\"imageName\": {\"value\": \"web\"},\n").unwrap();
    let out = run(&[&["validate", t.as_str(), "--parameters", p.as_str()][..], &ctx[..]].concat(), None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("{p}: $: InvalidValue: the parameter file is not valid JSON")) && stderr.contains("line 2"),
        "{stderr}"
    );
    assert!(stderr.contains("(fix the JSON syntax)") && !stderr.contains("invalid template"), "{stderr}");
    // A parameter the template does not declare: the names it does declare.
    let out = run(&[&["validate", t.as_str(), "-p", "imageName=web", "-p", "nope=1"][..], &ctx[..]].concat(), None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("no parameter `nope` (it declares: imageName, timeout)"), "{stdout}");
}

#[test]
fn validate_reports_file_path_code_message_hint() {
    let bad = r#"{"location": "westus", "apiVersion": "2025-10-01", "properties": {
        "source": {"type": "PlatformImage", "publisher": "a", "offer": "b", "sku": "c", "version": "latest"},
        "customize": [{"type": "Shell", "name": "x"}],
        "distribute": [{"type": "VHD", "runOutputName": "v"}]}}"#;
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.json");
    std::fs::write(&f, bad).unwrap();
    let out = run(&["validate", f.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.contains("NoCustomizerScript")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(line.starts_with(&format!("{}: properties.customize[0]: NoCustomizerScript: ", f.display())), "{line}");
    assert!(line.ends_with(')'), "hint in parentheses: {line}");

    let out = run(&["validate", "--format", "json", "-"], Some(bad));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["valid"], false);
    let d = v[0]["diagnostics"].as_array().unwrap().iter().find(|d| d["code"] == "NoCustomizerScript").unwrap();
    assert_eq!(d["path"], "properties.customize[0]");
    assert_eq!(d["severity"], "error");
    assert!(d["hint"].is_string());
}

#[test]
fn usage_and_io_errors_exit_2() {
    assert_eq!(run(&["validate", "/nonexistent/template.json"], None).status.code(), Some(2));
    assert_eq!(run(&["validate"], None).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"], None).status.code(), Some(2));
    // An I/O error names the path and the operating system's reason.
    let out = run(&["gc", "--state-dir", "/proc/aib-none"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/proc/aib-none: No such file or directory"), "{stderr}");
}

#[test]
fn version_names_the_version_and_the_backends() {
    let out = run(&["--version"], None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.starts_with(&format!("aib {} (backends: local", env!("CARGO_PKG_VERSION"))), "{stdout}");
    assert_eq!(stdout.contains("azure)"), cfg!(feature = "azure"), "{stdout}");
    // The exit codes are in --help.
    let help = String::from_utf8_lossy(&run(&["--help"], None).stdout).to_string();
    assert!(help.contains("Exit codes: 0 success") && help.contains("3 a build that PartiallySucceeded"), "{help}");
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    for (shell, marker) in [("bash", "complete -F _aib"), ("zsh", "#compdef aib"), ("fish", "complete -c aib")] {
        let out = run(&["completions", shell], None);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(script.contains(marker), "{shell}: no `{marker}` in\n{script}");
        for command in ["validate", "build", "gc", "warm", "cache", "images", "completions"] {
            assert!(script.contains(command), "{shell}: `{command}` missing");
        }
        assert!(script.contains("parameters"), "{shell}: the options of the commands are completed too");
    }
    // bash itself reads the script without complaint, and then completes `aib va` to `validate`.
    let out = run(&["completions", "bash"], None);
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("aib.bash");
    std::fs::write(&script, &out.stdout).unwrap();
    let probe = format!(
        "source {}; COMP_WORDS=(aib va); COMP_CWORD=1; COMP_LINE='aib va'; COMP_POINT=6; _aib aib va aib; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = Command::new("bash").args(["--norc", "-c", &probe]).output().expect("bash");
    let replies = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(replies.trim(), "validate", "{replies}");
}

/// A download shows its progress: without a terminal, plain lines (one at the end at least)
/// naming the transfer, the bytes and the percentage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_download_reports_its_progress_in_plain_lines() {
    let web = aib_testkit::http::StaticServer::start().await.unwrap();
    let disk: Vec<u8> = (0..3u32 << 20).map(|i| (i % 253) as u8).collect();
    let sum = aib::customizers::fetch::sha256_hex(&disk);
    let url = web.put("disk.raw", disk);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state").display().to_string();
    let out = tokio::task::spawn_blocking(move || {
        run(&["images", "--state-dir", &state, "import", "Test:img:1:1.0.0", &url, "--sha256", &sum], None)
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("[download Test:img:1:1.0.0] 3.00 MiB / 3.00 MiB (100%)"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("imported Test:img:1:1.0.0 ("), "{stdout}");
}

#[test]
fn garbage_never_crashes() {
    for input in ["", "\u{0}\u{1}", "{{{{", "[]", &"[".repeat(200_000), "{\"resources\": 5}"] {
        let out = run(&["validate", "-"], Some(input));
        assert_eq!(out.status.code(), Some(1), "{input:.20}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bin");
    std::fs::write(&f, [0xff, 0xfe, 0x00, 0x80]).unwrap();
    assert_eq!(run(&["validate", f.to_str().unwrap()], None).status.code(), Some(2), "non-UTF-8 is an I/O-level error");
}

#[test]
fn schema_is_a_json_schema_of_the_template() {
    let out = run(&["schema"], None);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["$schema"].as_str().unwrap().contains("2020-12"));
    assert!(v["properties"]["properties"].is_object());
    let text = String::from_utf8_lossy(&out.stdout);
    for name in ["runOutputName", "galleryImageId", "inVMValidations", "restartTimeout", "osDiskSizeGB", "replicationMode", "WindowsUpdate"]
    {
        assert!(text.contains(name), "schema mentions {name}");
    }
}

#[test]
fn the_plugin_example_builds_with_its_own_type() {
    let exe = example("plugin_customizer");
    let out = Command::new(&exe).output().unwrap_or_else(|e| panic!("{}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("Succeeded"), "{stdout}");
    assert!(stdout.contains("apt-get install -y --no-install-recommends 'nginx' 'curl'"), "{stdout}");
    assert!(stdout.contains("refused: invalid template:") && stdout.contains("properties.customize[0].packages[1]"), "{stdout}");
}

/// `aib build --backend azure` and `aib gc --backend azure` against the ARM test server
/// (VMs backed by sshd guests: needs root and OpenSSH), with the ordinary client-secret
/// credential pointed at the server's token endpoint.
/// `aib testkit arm-server` runs on its own, like Azurite: it listens, answers ARM calls with
/// its marketplace images, says where its Windows guests listen, and stops on Ctrl-C.
#[test]
fn the_arm_test_server_runs_standalone() {
    use std::io::{BufRead, Read, Write};
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let mut child = Command::new(aib())
        .args(["testkit", "arm-server", "--port", &port, "--windows-guests", "--image", "westus2:Canonical:ubuntu:server:24.04.1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        lines.push(l);
    }
    assert_eq!(lines[0].trim(), format!("ARM test server listening on http://127.0.0.1:{port}"), "{lines:?}");
    assert!(lines[1].contains("Windows VM guests: WinRM over HTTPS on port"), "{lines:?}");
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    write!(
        tcp,
        "GET /subscriptions/s/providers/Microsoft.Compute/locations/westus2/publishers/Canonical/artifacttypes/vmimage/offers/ubuntu/skus/server/versions?api-version=2024-07-01 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // The status line and headers, then as many bytes as Content-Length says.
    let mut reader = std::io::BufReader::new(tcp);
    let (mut head, mut length) = (String::new(), 0usize);
    loop {
        let mut l = String::new();
        reader.read_line(&mut l).unwrap();
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        if l.trim().is_empty() {
            break;
        }
        head.push_str(&l);
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(head.starts_with("HTTP/1.1 200") && body.contains("\"name\":\"24.04.1\""), "{head}{body}");
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "Ctrl-C stops it cleanly: {status}");
}

#[cfg(feature = "azure")]
mod azure {
    use super::aib;
    use aib_testkit::arm::ArmServer;
    use aib_testkit::guest::SshdGuests;
    use aib_testkit::http::StaticServer;
    use serde_json::{Value, json};
    use std::process::{Command, Output};
    use std::sync::Arc;

    const SUB: &str = "00000000-0000-0000-0000-0000000000c1";
    /// A marked secret: a SAS signature on every template source.
    const SIG: &str = "AIBMARK-sas-signature-7f3c";
    const SAS: &str = "?sv=2024-01-01&sr=b&sig=AIBMARK-sas-signature-7f3c";
    /// A marked secret: the service principal's secret in the environment.
    const CLIENT_SECRET: &str = "AIBMARK-client-secret-91d2";

    /// Everything a CLI run wrote: its output and every file of its state directory.
    fn written(out: &Output, state: &std::path::Path) -> String {
        let mut all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let mut dirs = vec![state.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    dirs.push(e.path());
                } else {
                    all.push_str(&String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()));
                }
            }
        }
        all
    }

    async fn cli(s: &ArmServer, storage: &str, args: Vec<String>) -> Output {
        cli_logging(s, storage, args, None).await
    }

    /// [`cli`] with `RUST_LOG` set.
    async fn cli_logging(s: &ArmServer, storage: &str, mut args: Vec<String>, rust_log: Option<&str>) -> Output {
        let (url, storage, rust_log) = (s.url(), storage.to_string(), rust_log.unwrap_or("warn").to_string());
        if let Some(port) = s.guest_port() {
            args.extend(["--ssh-port".into(), port.to_string()]);
        }
        if let Some(port) = s.windows_guest_port() {
            args.extend(["--winrm-port".into(), port.to_string()]);
        }
        tokio::task::spawn_blocking(move || {
            Command::new(aib())
                .args(&args)
                .args([
                    "--resource-group",
                    "images",
                    "--arm-endpoint",
                    &url,
                    "--storage-endpoint",
                    &storage,
                    "--allowed-source",
                    "127.0.0.1/32",
                ])
                .env("AZURE_TENANT_ID", "tenant")
                .env("AZURE_CLIENT_ID", "client")
                .env("AZURE_CLIENT_SECRET", CLIENT_SECRET)
                .env("AZURE_AUTHORITY_HOST", &url)
                .env("AZURE_SUBSCRIPTION_ID", SUB)
                .env("RUST_LOG", &rust_log)
                .env_remove("AZURE_FEDERATED_TOKEN_FILE")
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    fn template(web: &StaticServer, dir: &std::path::Path, abort_on: Option<&str>) -> std::path::PathBuf {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/aib-core/tests/corpus/quickstarts/azvmimagebuilder__quickquickstarts__0_Creating_a_Custom_Linux_Managed_Image__helloImageTemplateLinux.json"
        );
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let c = &mut v["properties"]["customize"];
        let s2 = "#!/bin/sh\necho checksummed script ran\n";
        // Every source carries a marked SAS signature: the secret scan looks for it afterwards.
        c[0]["scriptUri"] = (web.put("customizeScript.sh", "#!/bin/sh\necho customizeScript ran\n") + SAS).into();
        c[1]["scriptUri"] = (web.put("customizeScript2.sh", s2) + SAS).into();
        c[1]["sha256Checksum"] = aib::customizers::fetch::sha256_hex(s2.as_bytes()).into();
        c[2]["sourceUri"] = (web.put("index.html", "<h1>hello</h1>\n") + SAS).into();
        c[4]["inline"] = json!([abort_on.unwrap_or("echo would run: sudo apt install unattended-upgrades")]);
        if abort_on.is_some() {
            v["properties"]["errorHandling"] = json!({"onCustomizerError": "abort"});
        } else {
            v["properties"]["distribute"].as_array_mut().unwrap().push(json!({"type": "VHD", "runOutputName": "vhd"}));
        }
        let text = aib_testkit::corpus::fill_placeholders(
            &v.to_string(),
            SUB,
            "images",
            &[("<region>", "westus2"), ("<imageName>", "hello"), ("<runOutputName>", "hello")],
        );
        // The failing build's template is an ARM deployment template in the group's region:
        // `aib build --backend azure` asks ARM where `resourceGroup()` is (westus2, where the
        // source image is; a wrong or empty location finds no image and fails before any VM).
        let text = match abort_on {
            None => text,
            Some(_) => {
                let mut resource: Value = serde_json::from_str(&text).unwrap();
                resource["location"] = json!("[resourceGroup().location]");
                resource["name"] = json!("[parameters('name')]");
                json!({
                    "$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#",
                    "contentVersion": "1.0.0.0",
                    "parameters": {"name": {"type": "string", "defaultValue": "hello"}},
                    "resources": [resource],
                })
                .to_string()
            }
        };
        let out = dir.join("helloImageTemplateLinux.json");
        std::fs::write(&out, text).unwrap();
        out
    }

    fn build_resources(s: &ArmServer) -> Vec<String> {
        s.resource_ids()
            .into_iter()
            .filter(|id| !id.contains("/Microsoft.Compute/images/") && !id.contains("/Microsoft.Storage/"))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn build_and_gc_with_backend_azure() {
        let guests = SshdGuests::new().unwrap_or_else(|e| panic!("{e}"));
        let azurite = aib_testkit::azurite::Azurite::start().unwrap_or_else(|e| panic!("{e}"));
        let storage = azurite.endpoint();
        let s = ArmServer::start_with(0, Some(Arc::new(guests)))
            .await
            .unwrap()
            .with_disk_store(Arc::new(aib_testkit::arm::storage::AzuriteDisks::new(&storage)));
        s.add_marketplace_image("westus2", "Canonical", "UbuntuServer", "18.04-LTS", "18.04.202401161");
        let arm = aib::azure::ArmClient::builder().endpoint(s.url()).credential(aib::azure::Credential::static_token("t")).build().unwrap();
        arm.put(&format!("/subscriptions/{SUB}/resourceGroups/images"), "2021-04-01", &json!({"location": "westus2"})).await.unwrap();
        let web = StaticServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state").display().to_string();

        let t = template(&web, dir.path(), None).display().to_string();
        // RUST_LOG=debug, unscoped (third-party crates' debug lines too), and one ARM server
        // error on the way: the retry and the SSH connect attempts are tracing events, and the
        // secret scan below reads all of it.
        s.inject(aib_testkit::arm::ArmFault::ServerError, 1);
        let out = cli_logging(
            &s,
            &storage,
            vec![
                "build".into(),
                t,
                "--backend".into(),
                "azure".into(),
                "--state-dir".into(),
                state.clone(),
                "--output".into(),
                "json".into(),
                "--allow-source-net".into(),
                "127.0.0.1".into(),
            ],
            Some("debug"),
        )
        .await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(stderr.contains("retrying"), "the ARM client's retry at debug: {stderr}");
        assert!(stderr.contains("ssh connect attempt") && stderr.contains("ssh connected"), "SSH connect attempts at debug: {stderr}");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["runState"], "Succeeded");
        assert_eq!(report["nextSteps"], json!([]), "a run that succeeded has nothing to do next");
        assert_eq!(
            report["runOutputs"][0]["artifactId"],
            format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/hello")
        );
        assert_eq!(report["source"]["exactVersion"], "18.04.202401161");
        let vhd = report["runOutputs"][1]["artifactUri"].as_str().unwrap_or_default();
        assert!(vhd.starts_with(&storage) && vhd.ends_with(".vhd"), "{vhd}");
        assert!(s.tokens_issued() >= 1, "the client-secret credential got its token from the server");
        // The secret scan: no marked SAS signature, no client secret, no SAS the backend got
        // from ARM (the OS disk's read access) in the output, the logs, the ledger or the report.
        let all = written(&out, std::path::Path::new(&state));
        assert!(all.contains("customizeScript ran"), "the scan reads the customization log");
        assert!(!all.contains(SIG) && !all.contains(CLIENT_SECRET), "a marked secret was written");
        let unredacted: Vec<&str> =
            all.match_indices("sig=").map(|(i, _)| &all[i..(i + 16).min(all.len())]).filter(|m| !m.starts_with("sig=REDACTED")).collect();
        assert!(unredacted.is_empty(), "a SAS signature (the OS disk's read access among them) was written: {unredacted:?}");
        assert_eq!(build_resources(&s), Vec::<String>::new(), "only the staging group stays");

        // A failing customizer under `abort` keeps the VM; gc removes it.
        let t = template(&web, dir.path(), Some("exit 7")).display().to_string();
        let build = vec!["build".into(), t, "--backend".into(), "azure".into(), "--state-dir".into(), state.clone()];
        let out = cli(&s, &storage, [build, vec!["--allow-source-net".into(), "127.0.0.1".into()]].concat()).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{stdout}");
        // The top failure says which step, why, and what to do next.
        assert!(stdout.contains("step `customize[4]") && stdout.contains("exit code 7"), "{stdout}");
        assert!(stdout.contains("next: read why `customize[4]"), "{stdout}");
        assert!(stdout.contains("next: reach the kept build VM with `ssh -p"), "{stdout}");
        // `--output json` carries the same sentences as `nextSteps`.
        let t = template(&web, dir.path(), Some("exit 7")).display().to_string();
        let build = vec!["build".into(), t, "--backend".into(), "azure".into(), "--state-dir".into(), state.clone()];
        let json_out = vec!["--allow-source-net".into(), "127.0.0.1".into(), "--output".into(), "json".into()];
        let out = cli(&s, &storage, [build, json_out].concat()).await;
        assert_eq!(out.status.code(), Some(1));
        let failed: Value = serde_json::from_slice(&out.stdout).unwrap();
        let next: Vec<&str> = failed["nextSteps"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        assert!(next.iter().any(|n| n.starts_with("read why `customize[4]")), "{next:?}");
        assert!(next.iter().any(|n| n.starts_with("reach the kept build VM with `ssh -p")), "{next:?}");
        assert!(build_resources(&s).iter().any(|r| r.contains("/virtualMachines/")));
        assert_eq!(s.running_guests(), 2);
        let out = cli(&s, &storage, vec!["gc".into(), "--backend".into(), "azure".into(), "--state-dir".into(), state]).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("deleted azure virtualMachine"), "{stdout}");
        assert_eq!(build_resources(&s), Vec::<String>::new(), "{stdout}");
        assert_eq!(s.running_guests(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_windows_build_with_backend_azure() {
        let guests = aib_testkit::windows::WindowsGuests::new().unwrap_or_else(|e| panic!("{e}"));
        let s = ArmServer::start_with_guests(0, None, Some(Arc::new(guests.clone()))).await.unwrap();
        s.add_marketplace_image("westus2", "MicrosoftWindowsServer", "WindowsServer", "2022-datacenter-azure-edition", "20348.3207.250210");
        let arm = aib::azure::ArmClient::builder().endpoint(s.url()).credential(aib::azure::Credential::static_token("t")).build().unwrap();
        arm.put(&format!("/subscriptions/{SUB}/resourceGroups/images"), "2021-04-01", &json!({"location": "westus2"})).await.unwrap();
        let web = StaticServer::start().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/aib-core/tests/corpus/quickstarts/azvmimagebuilder__quickquickstarts__0_Creating_a_Custom_Windows_Managed_Image__helloImageTemplateWin.json"
        );
        let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let c = &mut v["properties"]["customize"];
        c[0]["scriptUri"] = (web.put("testPsScript.ps1", "mkdir c:\\buildArtifacts\r\nWrite-Output 'build path created'\r\n") + SAS).into();
        c[2]["sourceUri"] = (web.put("index.html", "<h1>hello</h1>\n") + SAS).into();
        let text = aib_testkit::corpus::fill_placeholders(
            &v.to_string(),
            SUB,
            "images",
            &[("<region>", "westus2"), ("<imageName>", "win"), ("<runOutputName>", "win")],
        );
        let t = dir.path().join("helloImageTemplateWin.json");
        std::fs::write(&t, text).unwrap();
        let state = dir.path().join("state").display().to_string();
        let args = [
            "build",
            &t.display().to_string(),
            "--backend",
            "azure",
            "--state-dir",
            &state,
            "--allow-source-net",
            "127.0.0.1",
            "--output",
            "jsonl",
        ]
        .map(String::from)
        .to_vec();
        // One server error on the way: the ARM client's retry is a tracing event at debug.
        s.inject(aib_testkit::arm::ArmFault::ServerError, 1);
        let out = cli_logging(&s, "http://127.0.0.1:9/devstoreaccount1", args, Some("aib=debug")).await;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        // `--output jsonl`: every line one JSON object, the events as they came, the report last.
        let lines: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
        let (report, events) = lines.split_last().unwrap();
        assert_eq!(report["report"]["runState"], "Succeeded", "{stdout}");
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
        assert!(kinds.contains(&"stepStarted") && kinds.contains(&"stepFinished") && kinds.contains(&"output"), "{kinds:?}");
        assert!(stderr.contains("retrying"), "RUST_LOG=aib=debug shows the ARM client's retry: {stderr}");
        assert!(
            stderr.contains("step finished") && stderr.contains("run_id="),
            "run events are tracing events in the run's span: {stderr}"
        );
        // The secret scan: nothing shown or kept holds the password or a marked signature: not
        // the output, not the state directory.
        let shown = written(&out, &dir.path().join("state"));
        assert!(shown.contains("over WinRM/HTTPS") && shown.contains("pinned"), "{shown}");
        assert!(!shown.contains(SIG) && !shown.contains(CLIENT_SECRET), "a marked secret was written");
        assert!(shown.match_indices("sig=").all(|(i, _)| shown[i..].starts_with("sig=REDACTED")), "a SAS signature was written");
        let m = guests.machines()[0].1.clone();
        assert!(shown.contains("ImageState IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"), "the customization log has Sysprep's output");
        assert!(!shown.contains(&m.state().admin_password), "the password was shown or stored");
        assert_eq!(m.state().image_state, aib_testkit::windows::GENERALIZED);
        assert!(s.resource(&format!("/subscriptions/{SUB}/resourceGroups/images/providers/Microsoft.Compute/images/win")).is_some());
        assert_eq!(build_resources(&s), Vec::<String>::new(), "only the staging group stays");
    }
}

/// Copies the directory tree `from` to `to` (files hard-linked where the file system allows).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).unwrap();
        }
    }
}

/// `cargo install --path . --features cli` into a cargo home holding nothing but the crate
/// archives (copied from the home that built this test, so the install reaches no network:
/// `--offline`) puts a working `aib` on the PATH. A whole build of the CLI: the test command
/// runs it in its slow step. `--debug` keeps it to minutes; its target directory stays under
/// `$CARGO_TARGET_DIR/install-check` so a second run is incremental, and the home is wiped and
/// seeded again every time.
#[test]
#[ignore = "slow (a whole build of the CLI): run by the end-to-end step of scripts/test.sh"]
fn cargo_install_puts_a_working_aib_on_the_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let source_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    let registry = source_home.join("registry");
    assert!(registry.join("cache").is_dir(), "no crate archives in {}: build the workspace once (cargo fetch)", registry.display());
    // Integration tests run from target/<profile>/deps.
    let target_dir = std::env::current_exe().unwrap().ancestors().nth(3).unwrap().join("install-check");
    let home = target_dir.join("cargo-home");
    let _ = std::fs::remove_dir_all(&home);
    for part in ["index", "cache"] {
        copy_tree(&registry.join(part), &home.join("registry").join(part));
    }
    let prefix = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO"))
        .args(["install", "--offline", "--locked", "--debug", "--features", "cli", "--path"])
        .arg(root)
        .arg("--root")
        .arg(prefix.path())
        .env("CARGO_HOME", &home)
        .env("CARGO_TARGET_DIR", target_dir.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .expect("cargo install");
    assert!(out.status.success(), "cargo install failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let bin = prefix.path().join("bin");
    assert!(bin.join("aib").is_file(), "no aib in {}", bin.display());
    // On the PATH, by name: --version, a validation of the example template, a completion script.
    let template = root.join("examples/templates/debian-local.json");
    let script = format!(
        "aib --version && aib validate {} && aib completions bash | grep -q 'complete -F _aib' && echo completions-ok",
        template.display()
    );
    let out = Command::new("sh").args(["-c", &script]).env("PATH", format!("{}:/usr/bin:/bin", bin.display())).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with(&format!("aib {} (backends: local;", env!("CARGO_PKG_VERSION"))), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("completions-ok"), "{stdout}");
}
