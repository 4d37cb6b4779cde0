//! # aib-customizers
//!
//! The steps of a build and the connections they run over:
//! - communicators: [`ssh::SshCommunicator`] (russh, SFTP);
//! - customizers with AIB's semantics: [`ShellCustomizer`], [`FileCustomizer`];
//! - [`Generalizer`]: AIB's hidden last step;
//! - [`registry`]: every type, for a backend's [`aib_core::Registry`].
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod fetch;
mod file;
mod generalize;
mod lines;
pub mod quote;
mod script;
mod shell;
pub mod ssh;

pub use file::FileCustomizer;
pub use generalize::{Generalizer, LINUX_OVERRIDE, WINDOWS_OVERRIDE};
pub use script::ScriptSource;
pub use shell::ShellCustomizer;

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
}

fn mismatch(want: &str, got: &CustomizerSpec) -> Error {
    Error::InvalidConfig {
        backend: "registry",
        key: want.into(),
        message: format!("factory for `{want}` got a `{}` step", got.type_name()),
    }
}
