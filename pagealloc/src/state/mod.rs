//! Plain data: what the sources found, before anyone renders or exports it. Samples fill it,
//! event streams will update it in place; renderers and exporters only read it.
pub mod events;
pub mod heap;
pub mod history;
pub mod pages;
pub mod probes;
pub mod report;
pub mod resident;
pub mod sample;
pub mod sites;
pub mod timeline;

pub use history::History;
pub use sample::{Heap, HeapUnavailable, LibcInfo, Sample};
