//! `aib validate`.

use aib::template::{Diagnostic, Document, MAX_DOCUMENT_BYTES};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) fn read(path: &PathBuf) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let limit = MAX_DOCUMENT_BYTES as u64 + 1;
    if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut buf)?;
    } else {
        std::fs::File::open(path)?.take(limit).read_to_end(&mut buf)?;
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")))
}

pub(crate) fn line(d: &Diagnostic) -> String {
    // One line per diagnostic even when a message quotes a multi-line value.
    d.to_string().replace(['\n', '\r'], " ")
}

pub(crate) fn validate(files: &[PathBuf], json: bool) -> ExitCode {
    let mut any_invalid = false;
    let mut io_error = false;
    let mut out = Vec::new();
    for path in files {
        let shown = path.display().to_string();
        let text = match read(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{shown}: cannot read: {e}");
                io_error = true;
                continue;
            }
        };
        let doc = Document::parse(&text);
        let invalid = doc.diagnostics.has_errors();
        any_invalid |= invalid;
        if json {
            out.push(serde_json::json!({ "file": shown, "valid": !invalid, "diagnostics": doc.diagnostics }));
        } else {
            for d in doc.diagnostics.iter() {
                println!("{shown}: {}", line(d));
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    }
    if io_error {
        ExitCode::from(2)
    } else if any_invalid {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
