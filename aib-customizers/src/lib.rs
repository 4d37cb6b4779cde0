//! # aib-customizers
//!
//! The steps of a build and the connections they run over: the SSH communicator ([`ssh`]).
#![deny(missing_docs, rustdoc::broken_intra_doc_links)]

mod lines;
pub mod quote;
pub mod ssh;
