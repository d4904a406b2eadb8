//! pagealloc: where a running process's memory is, page by page.
//!
//! Data flows one way: sources (`proc`, `trace`) fill plain data (`state`), which outputs
//! (`render`) only read.
pub mod error;
pub mod proc;
pub mod render;
pub mod state;
pub mod trace;

pub use error::{Error, Result};

use state::pages::PageMap;

/// The page map of process `pid`, read once.
pub fn page_map(pid: i32) -> Result<PageMap> {
    let target = proc::Target::open(pid)?;
    proc::pagemap::PageReader::open(&target)?.read_all()
}
