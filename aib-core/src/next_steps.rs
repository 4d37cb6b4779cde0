//! What a person can do about a run that did not succeed: [`RunReport::next_steps`].

use crate::error::Error;
use crate::report::RunReport;
use crate::state::{RunState, RunSubState};

impl RunReport {
    /// What to do next about this run, most useful first: one sentence each, from the typed
    /// error of the failed step, the kept build VM, the customization log and what cleanup
    /// left. Empty for a run that succeeded with nothing left behind.
    ///
    /// The sentences name the CLI's commands (`aib gc`, `aib validate`); a library caller
    /// reads them as the matching calls ([`crate::ledger::Ledger::gc`],
    /// [`crate::template::ImageTemplate::from_document`]).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use aib_core::{Pipeline, template::ImageTemplate};
    /// use aib_testkit::{FakeBackend, Fault};
    ///
    /// let template = ImageTemplate::from_json(r#"{"location": "westus", "properties": {
    ///     "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
    ///     "customize": [{"type": "Shell", "name": "install", "inline": ["apt-get install -y nginx"]}],
    ///     "distribute": [{"type": "VHD", "runOutputName": "disk"}]}}"#).unwrap().template;
    /// let fakes = FakeBackend::new();
    /// fakes.faults().inject("exec", Fault::ExitCode(100)); // the script exits 100
    /// let report = Pipeline::from_template(&template, &fakes.backend()).unwrap().build().unwrap().start().wait().await;
    ///
    /// let next = report.next_steps();
    /// assert!(next[0].starts_with("read why `customize[0] install` failed (exit code 100)"), "{next:?}");
    /// assert!(next[1].contains("`abort`"), "how to keep the VM next time: {next:?}");
    /// # });
    /// ```
    pub fn next_steps(&self) -> Vec<String> {
        let mut next = Vec::new();
        if let Some(e) = &self.error {
            let step = &e.step;
            match &*e.source {
                Error::InvalidTemplate { .. } | Error::InvalidField { .. } => next.push(
                    "fix the template fields named above (each with its JSON path and fix); `aib validate FILE` checks a template without building"
                        .to_string(),
                ),
                Error::InvalidConfig { key, .. } => next.push(format!("correct the setting `{key}` of the backend and run the build again")),
                Error::Timeout { operation, .. } => {
                    let how_far = if self.customization_log.is_some() { "; the customization log shows how far it got" } else { "" };
                    next.push(format!("`{operation}` ran out of time: raise its limit, or the template's `buildTimeoutInMinutes`{how_far}"))
                }
                Error::StepFailed { exit_code, .. } => {
                    let how = exit_code.map(|c| format!(" (exit code {c})")).unwrap_or_default();
                    match &self.customization_log {
                        Some(log) => next.push(format!("read why `{step}` failed{how} in the customization log: {}", log.display())),
                        None => next.push(format!("read why `{step}` failed{how} in its output above")),
                    }
                    if self.kept_vm.is_none() && matches!(e.phase, RunSubState::Customizing | RunSubState::Validating) {
                        next.push(
                            "to look inside the build VM after such a failure, set `errorHandling.onCustomizerError` (or `onValidationError`) to `abort`: the VM is kept and the report says how to reach it"
                                .to_string(),
                        );
                    }
                }
                Error::ChecksumMismatch { what, .. } => next.push(format!(
                    "{what} is not the file the template pins: check its `sha256Checksum` against the publisher's digest (nothing from it ran)"
                )),
                Error::NotFound { what, .. } => next.push(format!("check that {what} exists: its name, region and version")),
                Error::AlreadyExists { what, .. } => {
                    next.push(format!("{what} exists already: pick another name or version, or remove the old one"))
                }
                Error::Unsupported { operation, backend } => {
                    next.push(format!("the {backend} backend cannot `{operation}`: change the template, or build it with a backend that can"))
                }
                Error::Unauthenticated { backend, .. } => {
                    next.push(format!("sign in again: the {backend} credentials are missing, expired or refused"))
                }
                Error::PermissionDenied { backend, .. } => {
                    next.push(format!("grant the identity a role on the {backend} resources that allows `{step}`, then run the build again"))
                }
                Error::Disconnected { .. } => next.push(format!(
                    "the connection to the build VM dropped during `{step}`: check the VM's network and the SSH/WinRM port, then run the build again"
                )),
                Error::Throttled { .. } => next.push("the service is throttling: run the build again later".to_string()),
                Error::Io { path: Some(p), .. } => {
                    next.push(format!("check {}: that it exists, that this user may use it and that its disk has room", p.display()))
                }
                Error::Cancelled => {}
                other if other.is_retryable() => next.push("the failure may be transient: run the build again".to_string()),
                _ => {}
            }
        }
        if let Some(vm) = &self.kept_vm {
            next.push(format!("reach the kept build VM with `{}`; remove it with `aib gc` when done", vm.command));
        }
        // A kept VM's line already names `aib gc` for what the run left.
        let left = self.leftover_resources.len().max(self.cleanup_errors.len());
        if left > 0 && self.kept_vm.is_none() {
            next.push(format!("cleanup left {left} resource(s) in the ledger: run `aib gc` to remove them"));
        }
        if self.run_state == RunState::Canceled && next.is_empty() {
            next.push("the run was cancelled; nothing is left behind, run the build again when ready".to_string());
        }
        next
    }
}
