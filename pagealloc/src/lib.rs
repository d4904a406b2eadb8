//! pagealloc: where a running process's memory is, page by page and chunk by chunk.
//!
//! Data flows one way: sources (`proc`, `debuginfo`, `glibc`, `objects`, `trace`) fill plain
//! data (`state`), which outputs (`render`) only read. A [`session::Session`] holds the sources
//! of one process and yields samples; `watch` takes them in a loop.
pub mod cancel;
pub mod debuginfo;
pub mod error;
pub mod glibc;
pub mod live;
pub mod metrics;
pub mod monitor;
pub mod objects;
pub mod parallel;
pub mod pprof;
pub mod proc;
pub mod profile;
pub mod render;
pub mod serve;
pub mod session;
pub mod stacks;
pub mod state;
pub mod trace;
pub mod watch;
pub mod web;

pub use error::{Error, Result};
