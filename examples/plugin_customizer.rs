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
use aib::template::{CustomizerSpec, ImageTemplate, ParseOptions};
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

impl PackageList {
    /// Reads the step's own fields; unknown `type`s keep every field for their plugin.
    fn from_spec(spec: &CustomizerSpec) -> Result<Self> {
        let CustomizerSpec::Custom(c) = spec else {
            return Err(Error::InvalidConfig { backend: "PackageList", key: "type".into(), message: "not a PackageList step".into() });
        };
        let packages: Vec<String> = c
            .fields
            .get("packages")
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|p| p.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let valid = |p: &String| !p.is_empty() && p.chars().all(|ch| ch.is_ascii_alphanumeric() || "+-.:=~".contains(ch));
        if packages.is_empty() || !packages.iter().all(valid) {
            return Err(Error::InvalidConfig {
                backend: "PackageList",
                key: "packages".into(),
                message: "give a non-empty list of Debian package names".into(),
            });
        }
        Ok(PackageList { packages })
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
    for entry in fakes.journal().iter().filter(|e| e.starts_with("exec ")) {
        println!("  {entry}");
    }
    if !report.succeeded() {
        return Err(report.message.into());
    }
    Ok(())
}
