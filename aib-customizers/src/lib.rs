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
pub use update::{DEFAULT_CRITERIA, EXIT_MORE, EXIT_REBOOT, PENDING, WindowsUpdateCustomizer};

use aib_core::template::CustomizerSpec;
use aib_core::{Customizer, Error, Registry};
use std::sync::Arc;

/// A registry with AIB's customizer types (also usable as validators where AIB allows).
pub fn registry() -> Registry {
    Registry::new()
        .with_customizer_and_validator("Shell", |spec| match spec {
            CustomizerSpec::Shell(s) => Ok(Arc::new(ShellCustomizer::from_template(s)?) as Arc<dyn Customizer>),
            other => Err(mismatch("Shell", other)),
        })
        .with_customizer_and_validator("File", |spec| match spec {
            CustomizerSpec::File(s) => Ok(Arc::new(FileCustomizer::from_template(s)?) as Arc<dyn Customizer>),
            other => Err(mismatch("File", other)),
        })
        .with_customizer_and_validator("PowerShell", |spec| match spec {
            CustomizerSpec::PowerShell(s) => Ok(Arc::new(PowerShellCustomizer::from_template(s)?) as Arc<dyn Customizer>),
            other => Err(mismatch("PowerShell", other)),
        })
        .with_customizer("WindowsRestart", |spec| match spec {
            CustomizerSpec::WindowsRestart(s) => Ok(Arc::new(WindowsRestartCustomizer::from_template(s)?) as Arc<dyn Customizer>),
            other => Err(mismatch("WindowsRestart", other)),
        })
        .with_customizer("WindowsUpdate", |spec| match spec {
            CustomizerSpec::WindowsUpdate(s) => Ok(Arc::new(WindowsUpdateCustomizer::from_template(s)?) as Arc<dyn Customizer>),
            other => Err(mismatch("WindowsUpdate", other)),
        })
}

fn mismatch(want: &str, got: &CustomizerSpec) -> Error {
    Error::InvalidConfig {
        backend: "registry",
        key: want.into(),
        message: format!("factory for `{want}` got a `{}` step", got.type_name()),
    }
}
