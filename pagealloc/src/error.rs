//! Every failure pagealloc reports, each with a message that says what to do next and an exit code
//! of its own so that scripts can tell them apart.
use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("process {pid} does not exist")]
    NoSuchProcess { pid: i32 },
    #[error("process {pid} exited while it was being read; nothing consistent to show")]
    ProcessExited { pid: i32 },
    #[error("process {pid} is a zombie: it has exited and its memory is gone")]
    Zombie { pid: i32 },
    #[error("process {pid} is a kernel thread: it has no user address space to show")]
    KernelThread { pid: i32 },
    #[error(
        "permission denied reading {what} of process {pid}: run as root, or as the process's \
         owner with ptrace allowed (see /proc/sys/kernel/yama/ptrace_scope)"
    )]
    PermissionDenied { pid: i32, what: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The C library's debug info is missing: the page map works, the heap map does not.
    #[error("heap map unavailable: {0}")]
    NoDebugInfo(String),
    /// Static, musl, or otherwise not glibc's malloc.
    #[error("heap map unavailable: {0}")]
    NotGlibc(String),
    /// The heap could not be walked (unreadable arena, unknown layout).
    #[error("heap map unavailable: {0}")]
    Heap(String),
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Exit codes, documented in the README. 2 is clap's usage error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Other(_) | Error::Io { .. } => 1,
            Error::NoSuchProcess { .. } => 3,
            Error::ProcessExited { .. } => 4,
            Error::PermissionDenied { .. } => 5,
            Error::Zombie { .. } => 6,
            Error::KernelThread { .. } => 7,
            Error::NoDebugInfo(_) => 8,
            Error::NotGlibc(_) => 9,
            Error::Heap(_) => 10,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
