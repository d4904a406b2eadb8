//! pagealloc: where a running process's memory is, page by page and chunk by chunk.
//!
//! Data flows one way: sources (`proc`, `debuginfo`, `glibc`, `trace`) fill plain data
//! (`state`), which outputs (`render`) only read.
pub mod debuginfo;
pub mod error;
pub mod glibc;
pub mod parallel;
pub mod proc;
pub mod render;
pub mod snapshot;
pub mod state;
pub mod trace;

pub use error::{Error, Result};
pub use snapshot::{LibcInfo, Snapshot, SnapshotOptions, heap_map, snapshot};
