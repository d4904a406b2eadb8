//! Why the probes could not be placed, loaded or attached, or their maps read.
use std::io;
use std::path::PathBuf;

use aya::EbpfError;
use aya::maps::MapError;
use aya::programs::ProgramError;
use pagealloc_common::Program;

use crate::objects::ObjectError;

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Not a PID probes can be scoped to.
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The reader thread stopped handing events over.
    #[error("reading the events: the event reader stopped handing them over")]
    ReaderStopped,
    #[error(
        "loading the eBPF programs: {source} (this needs root, or CAP_BPF and CAP_PERFMON, and \
         CAP_SYS_ADMIN to attach uprobes on kernels since 6.16)"
    )]
    Load {
        #[source]
        source: EbpfError,
    },
    /// A program or map the loader expects is not in the embedded object (a build mismatch).
    #[error("{name}: missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("{}: {source}", program.name())]
    ProgramKind {
        program: Program,
        #[source]
        source: ProgramError,
    },
    #[error("loading {}: {source}", program.name())]
    LoadProgram {
        program: Program,
        #[source]
        source: ProgramError,
    },
    #[error("attaching {} to {function}+{offset}: {source}", program.name())]
    Attach {
        program: Program,
        function: String,
        offset: u64,
        #[source]
        source: ProgramError,
    },
    /// `what`: the map, or what was being done with it.
    #[error("{what}: {source}")]
    Map {
        what: String,
        #[source]
        source: MapError,
    },
    #[error("running {} on CPU {cpu}: {source}", Program::Drain.name())]
    Drain {
        cpu: u32,
        #[source]
        source: io::Error,
    },
    #[error("placing a probe on {function}: {} does not export it", libc.display())]
    NotExported { function: String, libc: PathBuf },
    #[error("placing a probe on {function}: its address is not in a loaded segment of the library")]
    NotLoaded { function: String },
    #[error(transparent)]
    Object(#[from] ObjectError),
}

impl TraceError {
    pub(super) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> TraceError {
        let what = what.into();
        move |source| TraceError::Io { what, source }
    }

    pub(super) fn map(what: impl Into<String>) -> impl FnOnce(MapError) -> TraceError {
        let what = what.into();
        move |source| TraceError::Map { what, source }
    }
}
