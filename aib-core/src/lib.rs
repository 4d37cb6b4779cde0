//! aib core.
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub mod error;
pub mod template;

pub use error::{BoxError, Error, Result};
