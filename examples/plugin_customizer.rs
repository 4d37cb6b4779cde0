//! A third-party customizer: a `PackageList` step that installs Debian packages, registered
//! under its own template `type` and used from JSON like any AIB customizer.
//!
//! ```text
//! cargo run --example plugin_customizer
//! ```
//!
//! The template says `{"type": "PackageList", "packages": ["nginx", "curl"]}`; the registry
//! maps `PackageList` to a factory that reads those fields. Validation knows the type through
//! the registry, so a misspelled type is still `BadCustomizerType`. Here the build runs on the
//! testkit's fakes; with the local or Azure backend the same code runs on a real VM.

use aib::customizers::quote::sh_quote;
use aib::template::{Code, CustomizerSpec, Diagnostic, Diagnostics, ImageTemplate, ParseOptions};
use aib::{Backend, Communicator, CommunicatorExt, Customizer, Error, ExecRequest, Pipeline, Registry, Result, StepContext};
use aib_testkit::FakeBackend;
use std::fmt;
use std::sync::Arc;

/// Installs a list of packages with apt-get.
#[derive(Debug)]
struct PackageList {
    packages: Vec<String>,
}

impl fmt::Display for PackageList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackageList({})", self.packages.join(", "))
    }
}

/// The step's own fields, read with serde.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PackageListConfig {
    packages: Vec<String>,
}

impl PackageList {
    /// Reads the step's own fields; unknown `type`s keep every field (and where they are) for
    /// their plugin, so a wrong field is reported at its JSON path.
    fn from_spec(spec: &CustomizerSpec) -> Result<Self> {
        let CustomizerSpec::Custom(c) = spec else {
            return Err(Error::InvalidConfig { backend: "PackageList", key: "type".into(), message: "not a PackageList step".into() });
        };
        let config: PackageListConfig = c.config()?;
        let valid = |p: &String| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_alphanumeric() || "+-.:=~".contains(ch));
        if let Some(i) = config.packages.iter().position(|p| !valid(p)) {
            let d = Diagnostic::error(format!("{}.packages[{i}]", c.path), Code::InvalidValue, "not a Debian package name")
                .with_hint("use letters, digits and + - . : = ~");
            return Err(Error::InvalidTemplate { diagnostics: Diagnostics(vec![d]) });
        }
        if config.packages.is_empty() {
            let d = Diagnostic::error(format!("{}.packages", c.path), Code::InvalidValue, "no packages")
                .with_hint("list at least one Debian package");
            return Err(Error::InvalidTemplate { diagnostics: Diagnostics(vec![d]) });
        }
        Ok(PackageList { packages: config.packages })
    }
}

#[async_trait::async_trait]
impl Customizer for PackageList {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        // Every argument is quoted: package names never reach the shell as code.
        let names: Vec<String> = self.packages.iter().map(|p| sh_quote(p)).collect();
        let cmd = format!("DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}", names.join(" "));
        comm.run_checked(&ctx.name, &ExecRequest::new(cmd).elevated(), &*ctx.output).await
    }
}

const TEMPLATE: &str = r#"{
  "location": "westeurope",
  "name": "web",
  "properties": {
    "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
    "customize": [
      {"type": "PackageList", "name": "web-server", "packages": ["nginx", "curl"]},
      {"type": "Shell", "name": "hello", "inline": ["echo installed"]}
    ],
    "distribute": [{"type": "VHD", "runOutputName": "disk"}]
  }
}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let fakes = FakeBackend::new();
    let plugins = Registry::new().with_customizer("PackageList", |spec| Ok(Arc::new(PackageList::from_spec(spec)?) as Arc<dyn Customizer>));
    let backend = Backend::new(Arc::new(fakes.provisioner()), fakes.backend().registry.merge(plugins));

    // Parse with the backend's type names: `PackageList` is known, a typo would not be.
    let parsed = ImageTemplate::from_json_with(TEMPLATE, &ParseOptions::default().with_types(backend.registry.type_names()))?;
    let report = Pipeline::from_template(&parsed.template, &backend)?.build()?.run().await;
    println!("{}: {}", report.run_state, report.message);
    for command in fakes.journal().iter().filter_map(aib_testkit::Call::command) {
        println!("  exec {command}");
    }
    if !report.succeeded() {
        return Err(report.message.into());
    }

    // A plugin's own fields are checked like AIB's: the error names the field's JSON path.
    let bad = TEMPLATE.replace(r#"["nginx", "curl"]"#, r#"["nginx", 42]"#);
    let parsed = ImageTemplate::from_json_with(&bad, &ParseOptions::default().with_types(backend.registry.type_names()))?;
    match Pipeline::from_template(&parsed.template, &backend) {
        Err(e) => println!("refused: {e}"),
        Ok(_) => return Err("a package list with a number in it was accepted".into()),
    }
    Ok(())
}
