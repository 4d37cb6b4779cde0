//! aib facade.
pub use aib_core::*;
