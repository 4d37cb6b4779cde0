//! `aib validate`.

use aib::template::{Code, Diagnostic, Document, MAX_DOCUMENT_BYTES, Params};
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

/// Values for a deployment template's parameters and functions.
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct TemplateParams {
    /// An ARM parameter file for a deployment template (`{"parameters": {"name": {"value": …}}}`,
    /// either schema, or just the `parameters` object).
    #[arg(long = "parameters", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A parameter value, `NAME=VALUE`, read as the parameter's declared type; repeatable,
    /// and it wins over the parameter file.
    #[arg(short = 'p', long = "parameter", value_name = "NAME=VALUE")]
    pub values: Vec<String>,
    /// The resource group's region, for `resourceGroup().location` (with --resource-group;
    /// `--backend azure` asks ARM for it).
    #[arg(long = "rg-location", value_name = "REGION")]
    pub rg_location: Option<String>,
}

impl TemplateParams {
    fn given(&self) -> bool {
        self.file.is_some() || !self.values.is_empty()
    }

    /// The parameters, and what `subscription()`/`resourceGroup()` see: the backend's `context`
    /// when there is one (`--backend azure`: the group's location from ARM), where
    /// `--rg-location` wins; otherwise the options.
    pub(crate) fn params(
        &self,
        context: Option<&Params>,
        subscription: Option<&str>,
        resource_group: Option<&str>,
    ) -> Result<Params, String> {
        let mut p = context.cloned().unwrap_or_default();
        if let Some(f) = &self.file {
            let text = read(f).map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
            p = p.with_file(&text).map_err(|e| match e {
                // Each finding on a line of its own: `FILE: PATH: CODE: message (fix)`.
                aib::Error::InvalidTemplate { diagnostics } => {
                    diagnostics.iter().map(|d| format!("{}: {}", f.display(), line(d))).collect::<Vec<_>>().join("\n")
                }
                e => format!("{}: {e}", f.display()),
            })?;
        }
        for v in &self.values {
            let (k, val) = v.split_once('=').ok_or_else(|| format!("-p {v}: expected NAME=VALUE"))?;
            p = p.set_text(k.trim(), val);
        }
        if context.is_none()
            && let Some(s) = subscription.map(str::to_string).or_else(|| std::env::var("AZURE_SUBSCRIPTION_ID").ok())
        {
            p = p.subscription(s);
        }
        match (resource_group, &self.rg_location) {
            (Some(rg), Some(location)) => p = p.resource_group(rg, location),
            (Some(rg), None) if context.is_none() => p = p.resource_group(rg, ""),
            _ => {}
        }
        Ok(p)
    }

    /// `doc` evaluated when it is a deployment template with expressions (or parameters were
    /// given): errors are the document's. Without parameters, a template that cannot be
    /// evaluated is checked as it is, with a warning saying why (`required` makes it an error).
    pub(crate) fn evaluate(
        &self,
        doc: Document,
        context: Option<&Params>,
        subscription: Option<&str>,
        resource_group: Option<&str>,
        required: bool,
    ) -> Result<Document, String> {
        if !self.given() && !doc.has_expressions() {
            return Ok(doc);
        }
        let params = self.params(context, subscription, resource_group)?;
        match doc.evaluate(&params) {
            Ok(d) => Ok(d),
            Err(aib::Error::InvalidTemplate { diagnostics }) if !self.given() && !required => {
                let mut doc = doc;
                for d in diagnostics.iter() {
                    doc.diagnostics.push(
                        Diagnostic::warning(d.path.clone(), Code::ArmExpression, format!("not evaluated: {}", d.message))
                            .with_hint("give --parameters FILE or -p NAME=VALUE to check the evaluated template in full"),
                    );
                }
                Ok(doc)
            }
            Err(aib::Error::InvalidTemplate { diagnostics }) => {
                let mut doc = doc;
                doc.diagnostics = diagnostics;
                Ok(doc)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}

pub(crate) fn line(d: &Diagnostic) -> String {
    // One line per diagnostic even when a message quotes a multi-line value.
    d.to_string().replace(['\n', '\r'], " ")
}

pub(crate) fn validate(
    files: &[PathBuf],
    json: bool,
    tp: &TemplateParams,
    subscription: Option<&str>,
    resource_group: Option<&str>,
) -> ExitCode {
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
        let doc = match tp.evaluate(Document::parse(&text), None, subscription, resource_group, false) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("{shown}: {e}");
                io_error = true;
                continue;
            }
        };
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
