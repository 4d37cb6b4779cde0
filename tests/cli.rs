//! The `aib` example CLI: exit codes, output lines, JSON output, schema.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Example `name`, built now (`cargo test` builds examples only as test harnesses, which
/// cannot run the program).
fn example(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let st = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--example", name, "--manifest-path"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .status()
        .expect("cargo");
    assert!(st.success(), "cargo build --example {name} failed");
    // Integration tests live in target/<profile>/deps; examples sit next door.
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().and_then(Path::parent).unwrap().join("examples").join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "{} is missing after cargo build", bin.display());
    bin
}

fn aib() -> PathBuf {
    example("aib")
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
}
