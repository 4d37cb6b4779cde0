//! # aib-customizers
//!
//! The steps of a build and the connections they run over:
//! - communicators: [`ssh::SshCommunicator`] (russh, SFTP) and [`winrm::WinRmCommunicator`]
//!   (winrm-rs);
//! - customizers with AIB's semantics: [`ShellCustomizer`], [`PowerShellCustomizer`],
//!   [`FileCustomizer`], [`WindowsRestartCustomizer`], [`WindowsUpdateCustomizer`], usable
//!   as validators where AIB allows;
//! - [`Generalizer`]: AIB's hidden last step;
//! - [`registry`]: every type, for a backend's [`aib_core::Registry`].
//!
//! A customizer runs over any [`aib_core::Communicator`]; in tests, the testkit's fake VM:
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use aib_core::{Customizer, Error, StepContext};
//! use aib_customizers::{ScriptSource, ShellCustomizer};
//! use aib_testkit::{FakeCommunicator, Reply};
//!
//! let vm = FakeCommunicator::default();
//! let step = ShellCustomizer::new(ScriptSource::Inline(vec!["apt-get install -y nginx".into()]));
//! // The inline lines are uploaded as one script and run; the fake answers for it.
//! vm.reply("aib-script", Reply { stdout: vec!["nginx installed".into()], stderr: vec![], code: 0 });
//! let (ctx, out) = StepContext::capturing("customize[0] nginx").unwrap();
//! step.run(&vm, &ctx).await.unwrap();
//! assert_eq!(out.stdout(), ["nginx installed"]);
//!
//! // A script that fails is `Error::StepFailed`, naming the step and the exit code.
//! let vm = FakeCommunicator::default();
//! vm.reply("aib-script", Reply { stdout: vec![], stderr: vec!["E: no space left".into()], code: 100 });
//! let err = step.run(&vm, &ctx).await.unwrap_err();
//! assert!(matches!(err, Error::StepFailed { exit_code: Some(100), ref step, .. } if step == "customize[0] nginx"));
//! # });
//! ```
//!
//! Over SSH to a real VM, with the host key checked from the first connection:
//!
//! ```no_run
//! # async fn f() -> aib_core::Result<()> {
//! use aib_customizers::ssh::{HostKeyCheck, SshCommunicator, SshConfig, ephemeral_key};
//! let config = SshConfig::builder()
//!     .host("203.0.113.7")
//!     .user("aib")
//!     .key(ephemeral_key()?)
//!     .host_key(HostKeyCheck::Fingerprint("SHA256:…".into()))
//!     .build()?;
//! let vm = SshCommunicator::connect(config).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod fetch;
mod file;
mod generalize;
mod lines;
mod powershell;
pub mod quote;
mod restart;
mod script;
mod shell;
pub mod ssh;
mod ssh_error;
pub mod tls_pin;
mod update;
pub mod windows;
pub mod winrm;

pub use file::FileCustomizer;
pub use generalize::{Generalizer, LINUX_OVERRIDE, WINDOWS_OVERRIDE};
pub use powershell::PowerShellCustomizer;
pub use restart::{SHUTDOWN_IN_PROGRESS, WindowsRestartCustomizer};
pub use script::ScriptSource;
pub use shell::ShellCustomizer;
pub use ssh_error::SshError;
pub use update::{DEFAULT_CRITERIA, EXIT_MORE, EXIT_REBOOT, PENDING, WindowsUpdateCustomizer};

use aib_core::{Customizer, Registry};
use fetch::Fetcher;
use std::sync::Arc;

/// A registry with AIB's customizer types (also usable as validators where AIB allows), with
/// default downloads: `https`/`http` only, `file://` off.
pub fn registry() -> Registry {
    registry_with(Fetcher::new())
}

/// [`registry`] with the operator's download settings: `fetcher`'s size limit and the
/// directories its `file://` sources may read ([`Fetcher::with_file_root`]). A template step
/// whose `scriptUri`/`sourceUri` the fetcher would refuse is refused when the pipeline is
/// built, at the field's JSON path.
pub fn registry_with(fetcher: Fetcher) -> Registry {
    fn arc(c: impl Customizer) -> Arc<dyn Customizer> {
        Arc::new(c)
    }
    let uri = |f: &Fetcher, field: &str, u: &Option<String>| u.as_deref().filter(|u| !u.is_empty()).map_or(Ok(()), |u| f.check(field, u));
    let (f1, f2, f3) = (fetcher.clone(), fetcher.clone(), fetcher);
    Registry::new()
        .with_shell(move |s| {
            uri(&f1, "scriptUri", &s.script_uri)?;
            ShellCustomizer::from_template(s).map(|c| arc(c.with_fetcher(f1.clone())))
        })
        .with_file(move |s| {
            uri(&f2, "sourceUri", &s.source_uri)?;
            FileCustomizer::from_template(s).map(|c| arc(c.with_fetcher(f2.clone())))
        })
        .with_powershell(move |s| {
            uri(&f3, "scriptUri", &s.script_uri)?;
            PowerShellCustomizer::from_template(s).map(|c| arc(c.with_fetcher(f3.clone())))
        })
        .with_windows_restart(|s| WindowsRestartCustomizer::from_template(s).map(arc))
        .with_windows_update(|s| WindowsUpdateCustomizer::from_template(s).map(arc))
}
