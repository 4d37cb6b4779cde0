//! The `aib` command line: `aib validate FILE…`, `aib schema`.
//!
//! ```text
//! cargo run --example aib -- validate template.json
//! cargo run --example aib -- validate --format json a.json b.json
//! cargo run --example aib -- schema > imageTemplate.schema.json
//! ```
//!
//! Exit codes of `validate`: 0 when every file is valid (warnings allowed), 1 when any file
//! has an error, 2 on usage or I/O errors.

use aib::template::{Diagnostic, Document, MAX_DOCUMENT_BYTES, template_schema};
use clap::{Parser, Subcommand, ValueEnum};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "aib", version, about = "Azure VM Image Builder templates, built anywhere")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check templates: one line per diagnostic, `FILE: PATH: CODE: message (hint)`.
    Validate {
        /// Template files (`-` reads standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print the JSON Schema of an image template.
    Schema,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

fn read(path: &PathBuf) -> std::io::Result<String> {
    let mut buf = Vec::new();
    let limit = MAX_DOCUMENT_BYTES as u64 + 1;
    if path.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut buf)?;
    } else {
        std::fs::File::open(path)?.take(limit).read_to_end(&mut buf)?;
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")))
}

fn validate(files: &[PathBuf], format: Format) -> ExitCode {
    let mut any_invalid = false;
    let mut io_error = false;
    let mut json = Vec::new();
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
        match format {
            Format::Text => {
                for d in doc.diagnostics.iter() {
                    println!("{shown}: {}", line(d));
                }
            }
            Format::Json => json.push(serde_json::json!({
                "file": shown,
                "valid": !invalid,
                "diagnostics": doc.diagnostics,
            })),
        }
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
    }
    if io_error {
        ExitCode::from(2)
    } else if any_invalid {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn line(d: &Diagnostic) -> String {
    // One line per diagnostic even when a message quotes a multi-line value.
    d.to_string().replace(['\n', '\r'], " ")
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    match cli.command {
        Command::Validate { files, format } => validate(&files, format),
        Command::Schema => {
            println!("{}", serde_json::to_string_pretty(&template_schema()).unwrap_or_default());
            ExitCode::SUCCESS
        }
    }
}
