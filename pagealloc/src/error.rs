//! Every failure pagealloc reports, each with a message that says what to do next and an exit code
//! of its own so that scripts can tell them apart.
use std::fmt;
use std::io;

use crate::state::HeapUnavailable;
use crate::trace::TraceError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("process {pid} exited while it was being read; nothing consistent to show")]
    ProcessExited { pid: i32 },
    #[error("process {pid} exec'd a new program while it was being looked at")]
    ProcessExeced { pid: i32 },
    #[error("process {pid} is a zombie: it has exited and its memory is gone")]
    Zombie { pid: i32 },
    #[error("process {pid} is a kernel thread: it has no user address space to show")]
    KernelThread { pid: i32 },
    #[error("{}", permission_denied(*pid, what))]
    PermissionDenied { pid: i32, what: String },
    #[error(
        "process {pid} is already traced by process {tracer} ({name}), and a process has one \
         tracer at most: --stop needs that one to detach (quit the debugger, or run without \
         --stop)"
    )]
    AlreadyTraced { pid: i32, tracer: i32, name: String },
    #[error("process {pid} keeps creating threads: it cannot be stopped for --stop")]
    KeepsSpawning { pid: i32 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The page map is there, the heap map is not.
    #[error(transparent)]
    Heap(#[from] HeapUnavailable),
    /// The heap map is there, but part of the heap could not be found.
    #[error("the heap map is incomplete: {0}")]
    HeapIncomplete(String),
    /// Placing, loading or attaching the eBPF probes failed, or reading their maps.
    #[error(transparent)]
    Trace(TraceError),
    /// A command-line value that only the target can refute (an arena it does not have).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// Exit codes, documented in the README. 2 is also clap's usage error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } | Error::Trace(_) | Error::KeepsSpawning { .. } => 1,
            Error::Usage(_) => 2,
            Error::NoSuchProcess { .. } => 3,
            Error::ProcessExited { .. } | Error::ProcessExeced { .. } => 4,
            Error::PermissionDenied { .. } | Error::AlreadyTraced { .. } => 5,
            Error::Zombie { .. } => 6,
            Error::KernelThread { .. } => 7,
            Error::Heap(HeapUnavailable::NoDebugInfo(_)) => 8,
            Error::Heap(HeapUnavailable::NotGlibc(_)) => 9,
            Error::Heap(HeapUnavailable::Unwalkable(_)) | Error::HeapIncomplete(_) => 10,
        }
    }

    /// The process looked at is no more: it exited (or is a zombie, or never was), or its PID
    /// now runs another program. Looking again cannot help; a new look is at another process.
    pub fn is_gone(&self) -> bool {
        matches!(
            self,
            Error::NoSuchProcess { .. }
                | Error::ProcessExited { .. }
                | Error::ProcessExeced { .. }
                | Error::Zombie { .. }
        )
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// Points to yama's ptrace scope only on kernels that have it.
fn permission_denied(pid: i32, what: &str) -> impl fmt::Display {
    const YAMA: &str = "/proc/sys/kernel/yama/ptrace_scope";
    let yama = if std::path::Path::new(YAMA).exists() {
        format!(" (see {YAMA})")
    } else {
        String::new()
    };
    format!(
        "permission denied reading {what} of process {pid}: run as root, or as the process's \
         owner with ptrace allowed{yama}"
    )
}

/// The probes' failures as the crate's: a process that is not there, or an I/O failure, is the
/// same failure wherever it is met (and has the same exit code).
impl From<TraceError> for Error {
    fn from(error: TraceError) -> Error {
        match error {
            TraceError::NoSuchProcess { pid } => Error::NoSuchProcess { pid },
            TraceError::Io { what, source } => Error::io(what, source),
            other => Error::Trace(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gone_is_a_process_that_is_no_more() {
        let pid = 7;
        for gone in [
            Error::NoSuchProcess { pid },
            Error::ProcessExited { pid },
            Error::ProcessExeced { pid },
            Error::Zombie { pid },
            Error::from(TraceError::NoSuchProcess { pid }),
        ] {
            assert!(gone.is_gone(), "{gone}");
        }
        // There, but not to be read (now, or ever).
        for there in [
            Error::KernelThread { pid },
            Error::PermissionDenied {
                pid,
                what: "its memory".to_string(),
            },
            Error::KeepsSpawning { pid },
            Error::io("reading", io::Error::from(io::ErrorKind::NotFound)),
            Error::Trace(TraceError::ReaderStopped),
        ] {
            assert!(!there.is_gone(), "{there}");
        }
    }
}
