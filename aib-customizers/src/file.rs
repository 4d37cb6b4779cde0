//! The `File` customizer: one file, downloaded by the builder, checked, and put on the VM.

use crate::fetch::{Fetched, Fetcher, digest_parts};
use crate::lines::Tail;
use crate::quote::{ps_quote, sh_quote};
use crate::script::{bad, failed};
use aib_core::template::FileStep;
use aib_core::{Communicator, Customizer, Error, ExecRequest, Platform, Result, StepContext, UploadRequest};
use async_trait::async_trait;
use std::fmt;

/// Copies one file onto the build VM, with AIB's rules: checksum verified, 20 MB by default,
/// the parent directory must exist, and on Linux only `/tmp` is writable (opt out with
/// [`FileCustomizer::allow_any_destination`]).
#[derive(Debug, Clone)]
pub struct FileCustomizer {
    source_uri: String,
    destination: String,
    sha256: Option<String>,
    any_destination: bool,
    fetcher: Fetcher,
    fetched: Fetched,
}

impl fmt::Display for FileCustomizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "File({} -> {})", aib_core::redact::url(&self.source_uri), self.destination)
    }
}

impl FileCustomizer {
    /// Copies `source_uri` to `destination`.
    pub fn new(source_uri: impl Into<String>, destination: impl Into<String>, sha256: Option<String>) -> Self {
        FileCustomizer {
            source_uri: source_uri.into(),
            destination: destination.into(),
            sha256: sha256.filter(|s| !s.is_empty()),
            any_destination: false,
            fetcher: Fetcher::new(),
            fetched: Fetched::default(),
        }
    }

    /// From a template step.
    pub fn from_template(step: &FileStep) -> Result<Self> {
        let name = step.name.as_deref().unwrap_or("File");
        let src = step.source_uri.clone().filter(|s| !s.is_empty()).ok_or_else(|| bad(name, "`sourceUri` is required"))?;
        let dst = step.destination.clone().filter(|s| !s.is_empty()).ok_or_else(|| bad(name, "`destination` is required"))?;
        Ok(Self::new(src, dst, step.sha256_checksum.clone()))
    }

    /// Allows Linux destinations outside `/tmp` (AIB does not).
    #[must_use]
    pub fn allow_any_destination(mut self) -> Self {
        self.any_destination = true;
        self
    }

    /// Uses this fetcher (its size limit applies).
    #[must_use]
    pub fn with_fetcher(mut self, f: Fetcher) -> Self {
        self.fetcher = f;
        self
    }

    fn check_destination(&self, step: &str, platform: Platform) -> Result<String> {
        let d = &self.destination;
        match platform {
            Platform::Linux => {
                if !d.starts_with('/') || d.split('/').any(|s| s == ".." || s == ".") || d.ends_with('/') {
                    return Err(bad(step, &format!("destination `{d}` must be an absolute file path without `.` or `..`")));
                }
                if !self.any_destination && !d.starts_with("/tmp/") {
                    return Err(bad(
                        step,
                        &format!(
                            "destination `{d}`: on Linux the File customizer writes only under /tmp; copy it to /tmp and move it with a Shell step (`sudo mv`)"
                        ),
                    ));
                }
                Ok(d.rsplit_once('/').map(|(p, _)| if p.is_empty() { "/".to_string() } else { p.to_string() }).unwrap_or_default())
            }
            Platform::Windows => {
                if d.split(['\\', '/']).any(|s| s == "..") || d.ends_with('\\') {
                    return Err(bad(step, &format!("destination `{d}` must be a file path without `..`")));
                }
                Ok(d.rsplit_once(['\\', '/']).map(|(p, _)| p.to_string()).unwrap_or_default())
            }
        }
    }
}

#[async_trait]
impl Customizer for FileCustomizer {
    async fn run(&self, comm: &(dyn Communicator + 'static), ctx: &StepContext) -> Result<()> {
        let platform = comm.platform();
        let parent = self.check_destination(&ctx.name, platform)?;
        let output = ctx.output.clone();
        let progress = move |done: u64, total: Option<u64>| output.progress(done, total, "bytes");
        let data = match self.fetched.take(ctx.run.run_id()) {
            Some(data) => data,
            None => self.fetcher.fetch_reporting(&self.source_uri, self.sha256.as_deref(), &progress).await?,
        };
        let size = data.len() as u64;
        let want = crate::fetch::sha256_hex(&data);
        let tail = Tail::new(ctx.output.clone(), 8);
        let check = match platform {
            Platform::Linux => format!("test -d {}", sh_quote(&parent)),
            Platform::Windows => {
                format!("if (Test-Path -LiteralPath {} -PathType Container) {{ exit 0 }} else {{ exit 1 }}", ps_quote(&parent))
            }
        };
        let st = comm.execute(&ExecRequest::new(check), &tail).await?;
        if !st.success() {
            return Err(Error::StepFailed {
                step: ctx.name.clone(),
                exit_code: None,
                message: format!(
                    "the directory `{parent}` of destination `{}` does not exist on the VM; create it in an earlier step",
                    self.destination
                ),
            });
        }
        let n = comm.upload_with_progress(&UploadRequest::bytes(data, self.destination.clone()), &*ctx.output).await?;
        if n != size {
            return Err(Error::StepFailed { step: ctx.name.clone(), exit_code: None, message: format!("uploaded {n} of {size} bytes") });
        }
        // Verify what landed, not only what was sent.
        let verify = match platform {
            Platform::Linux => format!("sha256sum {} | cut -d' ' -f1", sh_quote(&self.destination)),
            Platform::Windows => format!("(Get-FileHash -Algorithm SHA256 -LiteralPath {}).Hash.ToLower()", ps_quote(&self.destination)),
        };
        let sink = aib_core::MemorySink::new();
        let st = comm.execute(&ExecRequest::new(verify), &sink).await?;
        let got = sink.lines().into_iter().map(|(_, l)| l.trim().to_ascii_lowercase()).find(|l| l.len() == 64);
        if !st.success() || got.as_deref() != Some(want.as_str()) {
            return Err(failed(
                &ctx.name,
                &st,
                &format!("verifying {} (expected sha256 {want}, got {})", self.destination, got.unwrap_or_default()),
                &tail,
            ));
        }
        ctx.output.line(
            aib_core::OutputStream::Stdout,
            &format!("copied {} ({size} bytes, sha256 {want}) to {}", aib_core::redact::url(&self.source_uri), self.destination),
        );
        Ok(())
    }
    /// The bytes copied (fetched and verified here, and that copy is the one put on the VM),
    /// where they go, and the destination rule.
    async fn fingerprint(&self, ctx: &StepContext) -> Result<Option<String>> {
        let output = ctx.output.clone();
        let progress = move |done: u64, total: Option<u64>| output.progress(done, total, "bytes");
        let data = self.fetcher.fetch_reporting(&self.source_uri, self.sha256.as_deref(), &progress).await?;
        let digest = crate::fetch::sha256_hex(&data);
        self.fetched.keep(ctx.run.run_id(), data);
        let parts = ["File/1", &digest, &self.destination, if self.any_destination { "any" } else { "tmp" }];
        Ok(Some(digest_parts(&parts)))
    }
}
