//! `--stop`: hold every thread of the target still for a consistent snapshot.
//!
//! Uses ptrace SEIZE + INTERRUPT rather than SIGSTOP: if pagealloc dies in any way (Ctrl-C, a
//! panic, SIGKILL), the kernel detaches and the target runs on. A SIGSTOP would stay.
use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

use crate::error::{Error, Result};

/// Rounds of "list the threads, seize the new ones" before giving up on a target that keeps
/// spawning threads.
const MAX_ROUNDS: usize = 64;

/// The target's threads, stopped until this is dropped.
pub struct Frozen {
    threads: Vec<Pid>,
}

impl Frozen {
    pub fn freeze(pid: i32) -> Result<Frozen> {
        let mut frozen = Frozen {
            threads: Vec::new(),
        };
        for _ in 0..MAX_ROUNDS {
            let mut new = 0;
            for tid in threads(pid)? {
                if frozen.threads.contains(&tid) {
                    continue;
                }
                match ptrace::seize(tid, ptrace::Options::empty()) {
                    Ok(()) => {}
                    Err(Errno::ESRCH) => continue, // the thread exited meanwhile
                    Err(Errno::EPERM) => return Err(seize_refused(pid, tid)),
                    Err(e) => {
                        return Err(Error::io(
                            format!("stopping thread {tid} of process {pid} (ptrace, for --stop)"),
                            std::io::Error::from(e),
                        ));
                    }
                }
                frozen.threads.push(tid);
                if ptrace::interrupt(tid).is_ok() {
                    // Wait for the interrupt stop; __WALL because these are threads.
                    let _ = waitpid(tid, Some(WaitPidFlag::__WALL));
                }
                new += 1;
            }
            if new == 0 {
                return Ok(frozen);
            }
        }
        Err(Error::KeepsSpawning { pid })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for &tid in &self.threads {
            let _ = ptrace::detach(tid, None);
        }
    }
}

/// Why the kernel refused to let us trace `tid`: another tracer holds it (a thread has one at
/// most), or we lack the right to trace.
fn seize_refused(pid: i32, tid: Pid) -> Error {
    let tracer = procfs::process::Process::new(tid.as_raw())
        .and_then(|thread| thread.status())
        .map_or(0, |status| status.tracerpid);
    if tracer != 0 {
        let name = procfs::process::Process::new(tracer)
            .and_then(|p| p.stat())
            .map(|s| s.comm)
            .unwrap_or_else(|_| "?".into());
        return Error::AlreadyTraced { pid, tracer, name };
    }
    Error::PermissionDenied {
        pid,
        what: "the threads (ptrace, for --stop)".into(),
    }
}

fn threads(pid: i32) -> Result<Vec<Pid>> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::ProcessExited { pid },
        _ => Error::io(format!("listing {dir}"), e),
    })?;
    Ok(entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .map(Pid::from_raw)
        .collect())
}
