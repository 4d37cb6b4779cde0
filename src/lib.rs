//! # aib
//!
//! Azure VM Image Builder as an embeddable library. This crate re-exports [`aib_core`]:
//! the template model ([`template`]), the backend traits, the [`Pipeline`] and its
//! [`RunReport`]. Tests use `aib-testkit`; backends live in their own crates.
//!
//! ```
//! use aib::template::{Code, Document};
//!
//! let doc = Document::parse(r#"{"location": "westus", "apiVersion": "2025-10-01", "properties": {
//!     "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"},
//!     "customize": [{"type": "Shell", "inline": ["echo hi"], "scriptUri": "https://example.com/x.sh"}],
//!     "distribute": [{"type": "VHD", "runOutputName": "disk"}]}}"#);
//! let e = doc.diagnostics.errors().next().unwrap();
//! assert_eq!((e.path.as_str(), e.code), ("properties.customize[0].inline", Code::NoCustomizerScript));
//! ```
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

pub use aib_core::*;

/// Customizers and communicators (feature `customizers`, on by default).
#[cfg(feature = "customizers")]
pub use aib_customizers as customizers;

/// The Azure backend (feature `azure`, off by default).
#[cfg(feature = "azure")]
pub use aib_azure as azure;

/// The local backend (feature `local`, on by default).
#[cfg(feature = "local")]
pub use aib_local as local;

/// The README's examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
