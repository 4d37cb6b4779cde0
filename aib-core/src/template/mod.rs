//! The AIB template model: parsing (four document shapes, strict or lenient by API
//! version), semantic validation with JSON paths and AIB's error codes, serialization
//! back to JSON, and the JSON Schema.
//!
//! ```
//! use aib_core::template::ImageTemplate;
//!
//! let json = r#"{
//!   "location": "westus",
//!   "apiVersion": "2025-10-01",
//!   "identity": {"type": "UserAssigned", "userAssignedIdentities": {
//!     "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id": {}}},
//!   "properties": {
//!     "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
//!     "customize": [{"type": "Shell", "name": "hello", "inline": ["echo hello"]}],
//!     "distribute": [{"type": "VHD", "runOutputName": "disk"}]
//!   }
//! }"#;
//! let parsed = ImageTemplate::from_json(json).unwrap();
//! assert_eq!(parsed.template.properties.customize[0].type_name(), "Shell");
//! assert!(parsed.warnings.is_empty());
//! ```

mod arm_expr;
mod armid;
mod armjson;
mod decode;
mod diag;
mod document;
mod evaluate;
mod model;
mod parse;
mod serde_impls;
mod validate;

pub use decode::{ApiVersion, is_arm_expression, placeholder};
pub use diag::{Code, Diagnostic, Diagnostics, Severity};
pub use document::{Document, Item, ItemKind, MAX_DOCUMENT_BYTES, ParseOptions, Shape};
pub use evaluate::Params;
pub use model::*;
pub use serde_impls::template_schema;
pub use validate::{TypeNames, is_sha256_hex, is_valid_name, parse_go_duration};

use crate::Error;
use serde_json::Value;
use std::time::Duration;

/// A template read from a document, with its warnings.
#[derive(Debug, Clone)]
pub struct ParsedTemplate {
    /// The template.
    pub template: ImageTemplate,
    /// The API version the document declared, if any.
    pub api_version: Option<ApiVersion>,
    /// Warnings (no errors: a template with errors is not returned).
    pub warnings: Diagnostics,
}

/// AIB's default `buildTimeoutInMinutes` (used for 0 and when absent).
pub const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(240 * 60);

/// AIB's largest `buildTimeoutInMinutes`, in minutes.
pub const MAX_BUILD_TIMEOUT_MINUTES: u32 = 960;

/// AIB's largest build timeout (`buildTimeoutInMinutes` 960).
pub const MAX_BUILD_TIMEOUT: Duration = Duration::from_secs(MAX_BUILD_TIMEOUT_MINUTES as u64 * 60);

/// `WindowsRestart.restartCommand` default.
pub const DEFAULT_RESTART_COMMAND: &str = "shutdown /r /f /t 0 /c \"packer restart\"";

impl ImageTemplate {
    /// Parses the template in `text`: a resource object, a deployment template with one
    /// imageTemplates resource, a REST example (its request body), or bare properties.
    /// Fails with [`Error::InvalidTemplate`] when any error is found.
    pub fn from_json(text: &str) -> Result<ParsedTemplate, Error> {
        Self::from_json_with(text, &ParseOptions::default())
    }

    /// [`ImageTemplate::from_json`] with options (plugin type names, API version).
    pub fn from_json_with(text: &str, opts: &ParseOptions) -> Result<ParsedTemplate, Error> {
        Self::from_document(Document::parse_with(text, opts))
    }

    /// Picks the one template out of a parsed document.
    pub fn from_document(doc: Document) -> Result<ParsedTemplate, Error> {
        if doc.diagnostics.has_errors() {
            return Err(Error::InvalidTemplate { diagnostics: doc.diagnostics });
        }
        let mut requests = doc.items.iter().filter(|i| !i.response).filter_map(|i| i.template.clone().map(|t| (t, i.api_version)));
        let first = requests.next().or_else(|| doc.templates().find_map(|i| i.template.clone().map(|t| (t, i.api_version))));
        let Some((template, api_version)) = first else {
            let d = Diagnostic::error("", Code::UnknownDocument, "the document holds no image template")
                .with_hint("give an imageTemplates resource or a REST example with a request body");
            return Err(Error::InvalidTemplate { diagnostics: Diagnostics(vec![d]) });
        };
        if requests.next().is_some() {
            let d = Diagnostic::error("", Code::UnknownDocument, "the document holds more than one image template")
                .with_hint("keep one imageTemplates resource per file");
            return Err(Error::InvalidTemplate { diagnostics: Diagnostics(vec![d]) });
        }
        Ok(ParsedTemplate { template, api_version, warnings: doc.diagnostics })
    }

    /// Runs the semantic checks against `types` (a backend's registry may know plugin
    /// types that AIB does not).
    pub fn validate(&self, types: &TypeNames) -> Diagnostics {
        let mut out = Vec::new();
        validate::check(self, "", types, &mut out);
        Diagnostics(out)
    }

    /// The template as a JSON resource object.
    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The template as pretty JSON.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Paths of the values still holding ARM expressions (they must be resolved before a
    /// build can run).
    pub fn expressions(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_expressions(&self.to_json_value(), String::new(), &mut out);
        out
    }

    /// SHA-256 (hex) of the template as parsed, serialized as aib writes it: the same for two
    /// files that differ only in whitespace.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        /// Hashes what is written to it: the JSON is never built in memory.
        struct Hashing(sha2::Sha256);
        impl std::io::Write for Hashing {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.update(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut h = Hashing(sha2::Sha256::new());
        let _ = serde_json::to_writer(&mut h, self);
        let sum = h.0.finalize();
        let mut hex = String::with_capacity(64);
        for b in sum.iter() {
            use std::fmt::Write;
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// `buildTimeoutInMinutes` as a duration (0 or absent: 240 minutes).
    pub fn build_timeout(&self) -> Duration {
        match lit(&self.properties.build_timeout_in_minutes) {
            Some(n) if n > 0 => Duration::from_secs(n as u64 * 60),
            _ => DEFAULT_BUILD_TIMEOUT,
        }
    }

    /// The template with every documented default written out and empty strings that mean
    /// "default" removed, so that two templates that mean the same compare equal.
    pub fn normalized(&self) -> ImageTemplate {
        let mut t = self.clone();
        let p = &mut t.properties;
        let blank = |s: &mut Option<String>| {
            if s.as_deref() == Some("") {
                *s = None;
            }
        };
        let ps = |s: &mut PowerShellStep| {
            s.run_elevated.get_or_insert(Expr::Value(false));
            s.run_as_system.get_or_insert(Expr::Value(false));
            s.valid_exit_codes.get_or_insert(Expr::Value(vec![0]));
            if s.valid_exit_codes == Some(Expr::Value(vec![])) {
                s.valid_exit_codes = Some(Expr::Value(vec![0]));
            }
        };
        for c in &mut p.customize {
            match c {
                CustomizerSpec::Shell(s) => blank(&mut s.sha256_checksum),
                CustomizerSpec::PowerShell(s) => {
                    blank(&mut s.sha256_checksum);
                    ps(s)
                }
                CustomizerSpec::File(s) => blank(&mut s.sha256_checksum),
                CustomizerSpec::WindowsRestart(s) => {
                    s.restart_command.get_or_insert_with(|| DEFAULT_RESTART_COMMAND.into());
                    s.restart_timeout.get_or_insert_with(|| "5m".into());
                    blank(&mut s.restart_check_command);
                }
                CustomizerSpec::WindowsUpdate(s) => {
                    blank(&mut s.search_criteria);
                    if s.filters == Some(Expr::Value(vec![])) {
                        s.filters = None;
                    }
                    if s.update_limit == Some(Expr::Value(0)) {
                        s.update_limit = None;
                    }
                }
                CustomizerSpec::Custom(_) => {}
            }
        }
        if let Some(v) = &mut p.validate {
            for c in &mut v.in_vm_validations {
                match c {
                    ValidatorSpec::Shell(s) => blank(&mut s.sha256_checksum),
                    ValidatorSpec::PowerShell(s) => {
                        blank(&mut s.sha256_checksum);
                        ps(s)
                    }
                    ValidatorSpec::File(s) => blank(&mut s.sha256_checksum),
                    ValidatorSpec::Custom(_) => {}
                }
            }
            v.continue_distribute_on_failure.get_or_insert(Expr::Value(false));
            v.source_validation_only.get_or_insert(Expr::Value(false));
        }
        for d in &mut p.distribute {
            if let DistributorSpec::SharedImage(s) = d {
                s.exclude_from_latest.get_or_insert(Expr::Value(false));
                s.replication_mode.get_or_insert(ReplicationMode::Full);
                if let Some(Expr::Value(regions)) = &mut s.target_regions {
                    for r in regions {
                        r.replica_count.get_or_insert(Expr::Value(1));
                        r.storage_account_type.get_or_insert_with(|| "Standard_LRS".into());
                    }
                }
            }
        }
        if p.build_timeout_in_minutes == Some(Expr::Value(0)) {
            p.build_timeout_in_minutes = None;
        }
        let eh = p.error_handling.get_or_insert_with(Default::default);
        eh.on_customizer_error.get_or_insert(ErrorAction::Cleanup);
        eh.on_validation_error.get_or_insert(ErrorAction::Cleanup);
        if let Some(vm) = &mut p.vm_profile {
            blank(&mut vm.vm_size);
            if vm.os_disk_size_gb == Some(Expr::Value(0)) {
                vm.os_disk_size_gb = None;
            }
            if let Some(n) = &mut vm.vnet_config {
                blank(&mut n.subnet_id);
                blank(&mut n.proxy_vm_size);
                blank(&mut n.container_instance_subnet_id);
            }
        }
        blank(&mut p.staging_resource_group);
        t
    }
}

fn collect_expressions(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::String(s) if is_arm_expression(s) => out.push(path),
        Value::Object(m) => {
            for (k, v) in m {
                if is_arm_expression(k) {
                    out.push(if path.is_empty() { k.clone() } else { format!("{path}.{k}") });
                }
                collect_expressions(v, if path.is_empty() { k.clone() } else { format!("{path}.{k}") }, out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                collect_expressions(v, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}
