//! One look at a process: everything it found, and why a part of it is missing.
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::heap::HeapMap;
use super::pages::PageMap;

/// Which C library the heap map was read with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LibcInfo {
    /// The path as the target sees it.
    pub path: String,
    pub build_id: String,
    /// The debug file malloc's layout was read from; None: derived from the library's code.
    pub debug_file: Option<String>,
    pub version: Option<String>,
}

impl LibcInfo {
    /// Where malloc's layout came from, as the outputs say it.
    pub fn layout_source(&self) -> &'static str {
        match self.debug_file {
            Some(_) => "debug info",
            None => "derived from the code, no debug info",
        }
    }
}

/// The failure behind a missing heap map, as the layer that met it typed it (state knows none of
/// those layers); shared, since a sample is cloned.
pub type Cause = Arc<dyn Error + Send + Sync>;

/// Why a look has no heap map (the page map is there all the same). Its message is its cause's,
/// and its source the cause itself (not the `Arc`, so that it downcasts to its type).
#[derive(Clone, Debug)]
pub enum HeapUnavailable {
    /// The C library's debug info is missing: installing it fixes this.
    NoDebugInfo(Cause),
    /// A static or musl program, or a C library that is not glibc.
    NotGlibc(Cause),
    /// glibc's structures could not be read (an unreadable arena, an unknown layout).
    Unwalkable(Cause),
}

impl HeapUnavailable {
    /// A short stable name, for labels.
    pub fn key(&self) -> &'static str {
        match self {
            HeapUnavailable::NoDebugInfo(_) => "no_debug_info",
            HeapUnavailable::NotGlibc(_) => "not_glibc",
            HeapUnavailable::Unwalkable(_) => "unwalkable",
        }
    }

    /// The failure the heap map is missing for.
    pub fn cause(&self) -> &(dyn Error + Send + Sync + 'static) {
        match self {
            HeapUnavailable::NoDebugInfo(cause)
            | HeapUnavailable::NotGlibc(cause)
            | HeapUnavailable::Unwalkable(cause) => &**cause,
        }
    }
}

impl fmt::Display for HeapUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "heap map unavailable: {}", self.cause())
    }
}

impl Error for HeapUnavailable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.cause())
    }
}

/// What a look found of the heap.
#[derive(Clone, Debug)]
pub enum Heap {
    /// Not asked for (the page map alone).
    NotRead,
    Map(Box<HeapMap>),
    Unavailable(HeapUnavailable),
}

/// One look at a process.
#[derive(Clone, Debug)]
pub struct Sample {
    pub pid: i32,
    /// When the look began: what the process did before this is in it.
    pub taken: SystemTime,
    /// How long it took.
    pub duration: Duration,
    pub pages: PageMap,
    /// The C library the heap was read with, when it was.
    pub libc: Option<LibcInfo>,
    pub heap: Heap,
    /// Live mode: what the events did so far (None: the heap was walked, as in walk mode).
    pub events: Option<super::events::Counts>,
    /// Live mode with stacks: who holds the memory.
    pub sites: Option<Arc<super::sites::SitesReport>>,
}

impl Sample {
    pub fn heap_map(&self) -> Option<&HeapMap> {
        match &self.heap {
            Heap::Map(map) => Some(map),
            _ => None,
        }
    }

    pub fn heap_unavailable(&self) -> Option<&HeapUnavailable> {
        match &self.heap {
            Heap::Unavailable(why) => Some(why),
            _ => None,
        }
    }
}
