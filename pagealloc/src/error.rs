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
    /// The work under way was asked to end early ([`crate::cancel`]): not a failure, what was
    /// read is thrown away.
    #[error("cancelled")]
    Cancelled,
    #[error("process {pid}: no allocation stacks: {why}")]
    NoStacks { pid: i32, why: String },
}

impl Error {
    /// Exit codes, documented in the README. 2 is also clap's usage error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } | Error::Trace(_) | Error::KeepsSpawning { .. } => 1,
            Error::NoStacks { .. } => 11,
            Error::Usage(_) => 2,
            Error::NoSuchProcess { .. } => 3,
            Error::ProcessExited { .. } | Error::ProcessExeced { .. } => 4,
            Error::PermissionDenied { .. } | Error::AlreadyTraced { .. } => 5,
            Error::Zombie { .. } => 6,
            Error::KernelThread { .. } => 7,
            Error::Heap(HeapUnavailable::NoDebugInfo(_)) => 8,
            Error::Heap(HeapUnavailable::NotGlibc(_)) => 9,
            Error::Heap(HeapUnavailable::Unwalkable(_)) | Error::HeapIncomplete(_) => 10,
            Error::Cancelled => 0,
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

/// The message for a read of `what` of process `pid` the kernel refused: what this process
/// lacks, as far as it can tell.
fn permission_denied(pid: i32, what: &str) -> impl fmt::Display {
    refused(pid, what, &Standing::of_this_process())
}

const YAMA: &str = "/proc/sys/kernel/yama/ptrace_scope";

/// Capability bits (linux/capability.h).
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_DAC_READ_SEARCH: u32 = 2;
const CAP_SYS_PTRACE: u32 = 19;

/// What this process is, as far as being let into another process goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Standing {
    root: bool,
    /// The effective capabilities (`CapEff`), if they read.
    capabilities: Option<u64>,
    /// The user namespace's uid map, unless it is the initial namespace's (every uid as it is).
    user_namespace: Option<String>,
    /// `kernel.yama.ptrace_scope`, on kernels that have it.
    ptrace_scope: Option<u32>,
}

impl Standing {
    fn of_this_process() -> Standing {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let capabilities = (status.lines())
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|bits| u64::from_str_radix(bits.trim(), 16).ok());
        let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let uid_map = uid_map.split_whitespace().collect::<Vec<_>>().join(" ");
        let initial = uid_map.is_empty() || uid_map == "0 0 4294967295";
        // SAFETY: geteuid has no arguments and cannot fail.
        let euid = unsafe { libc::geteuid() };
        Standing {
            root: euid == 0,
            capabilities,
            user_namespace: (!initial).then_some(uid_map),
            ptrace_scope: (std::fs::read_to_string(YAMA).ok())
                .and_then(|scope| scope.trim().parse().ok()),
        }
    }

    /// The capabilities reading another user's process needs that this one lacks (None if
    /// its capabilities are unknown): ptrace's, and one that reads its /proc files.
    fn missing(&self) -> Option<Vec<&'static str>> {
        let has = |cap: u32| self.capabilities.map(|bits| bits & (1 << cap) != 0);
        let mut missing = Vec::new();
        if !has(CAP_SYS_PTRACE)? {
            missing.push("CAP_SYS_PTRACE (to trace it and read its memory)");
        }
        if !has(CAP_DAC_READ_SEARCH)? && !has(CAP_DAC_OVERRIDE)? {
            missing.push("CAP_DAC_READ_SEARCH (to open its /proc files)");
        }
        Some(missing)
    }
}

/// Says what to do about a refused read, for a process that stands as `standing` does: "run
/// as root" only to one that is not root; to root, what it lacks.
fn refused(pid: i32, what: &str, standing: &Standing) -> String {
    let head = format!("permission denied reading {what} of process {pid}");
    if !standing.root {
        let yama = match standing.ptrace_scope {
            Some(_) => format!(" (see {YAMA})"),
            None => String::new(),
        };
        return format!("{head}: run as root, or as the process's owner with ptrace allowed{yama}");
    }
    if let Some(uid_map) = &standing.user_namespace {
        return format!(
            "{head}: pagealloc is root of a user namespace (uid_map {uid_map}), whose \
             capabilities do not reach a process outside it: run it in the user namespace \
             that owns the process (the host's, for most)"
        );
    }
    match standing.missing() {
        Some(missing) if !missing.is_empty() => format!(
            "{head}: pagealloc runs as root without {}, which reading another user's process \
             needs: they were dropped (capsh, setpriv, systemd's CapabilityBoundingSet=, a \
             container); give them back (a container: --cap-add SYS_PTRACE)",
            missing.join(" and ")
        ),
        _ if standing.ptrace_scope == Some(3) => format!(
            "{head}: {YAMA} is 3, which lets no process trace another, root included, until \
             a reboot"
        ),
        Some(_) => format!(
            "{head}: pagealloc runs as root with CAP_SYS_PTRACE and was refused all the same: \
             a security module (SELinux, AppArmor, Landlock) or a seccomp filter forbids it"
        ),
        None => format!(
            "{head}: pagealloc runs as root, but its capabilities do not read: it may lack \
             CAP_SYS_PTRACE, or a security module (SELinux, AppArmor) forbids it"
        ),
    }
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

    fn root(capabilities: Option<u64>) -> Standing {
        Standing {
            root: true,
            capabilities,
            user_namespace: None,
            ptrace_scope: Some(1),
        }
    }

    /// "Run as root" only to one that is not; root is told what it lacks.
    #[test]
    fn a_refusal_names_what_is_missing() {
        let all = u64::MAX >> 23;
        let user = Standing {
            root: false,
            ..root(Some(0))
        };
        assert!(refused(7, "its memory", &user).contains("run as root"));
        let without = |caps: &[u32]| {
            let bits = caps.iter().fold(all, |bits, &cap| bits & !(1 << cap));
            refused(7, "pagemap", &root(Some(bits)))
        };
        let ptrace = without(&[CAP_SYS_PTRACE]);
        assert!(ptrace.contains("without CAP_SYS_PTRACE"), "{ptrace}");
        assert!(!ptrace.contains("CAP_DAC") && !ptrace.contains("run as root"));
        // Either capability reads another's /proc files.
        let one_dac = without(&[CAP_SYS_PTRACE, CAP_DAC_OVERRIDE]);
        assert!(!one_dac.contains("CAP_DAC_READ_SEARCH"), "{one_dac}");
        let no_dac = without(&[CAP_SYS_PTRACE, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH]);
        assert!(no_dac.contains("CAP_DAC_READ_SEARCH"), "{no_dac}");
        let namespaced = Standing {
            user_namespace: Some("0 1000 1".into()),
            ..root(Some(all))
        };
        assert!(refused(7, "pagemap", &namespaced).contains("root of a user namespace"));
        let yama = Standing {
            ptrace_scope: Some(3),
            ..root(Some(all))
        };
        assert!(refused(7, "pagemap", &yama).contains("is 3"));
        assert!(refused(7, "pagemap", &root(Some(all))).contains("security module"));
        assert!(refused(7, "pagemap", &root(None)).contains("may lack CAP_SYS_PTRACE"));
    }
}
