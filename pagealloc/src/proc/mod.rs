//! Readers of `/proc`: the target process, its mappings and its page tables.
pub mod freeze;
pub mod memory;
pub mod pagemap;

use std::path::{Path, PathBuf};

use procfs::ProcError;
use procfs::process::{MMapPath, Process, Stat};

use crate::error::{Error, Result};
use crate::state::pages::Mapping;

/// What `/proc/PID/maps` appends to the path of a file deleted since it was mapped.
pub const DELETED: &str = " (deleted)";

/// `PF_EXITING` in `/proc/PID/stat`'s flags: the thread has begun to exit (set before its
/// memory is released, so a process whose threads all carry it is going away).
const PF_EXITING: u32 = 0x0000_0004;
/// `PF_KTHREAD`: a kernel thread (include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;
/// Threads looked at to find one that is alive, at most.
const MAX_THREADS_SCANNED: usize = 1 << 16;

/// A process whose memory we look at. Its memory is read through one of its live threads: the
/// process itself, or another thread when the main thread has exited (`pthread_exit`) and left
/// the others running.
pub struct Target {
    pub pid: i32,
    /// The thread whose `/proc` entry and id the reads go through.
    pub reader: i32,
    process: Process,
}

impl Target {
    pub fn open(pid: i32) -> Result<Self> {
        let process = Process::new(pid).map_err(|e| match e {
            ProcError::NotFound(_) => Error::NoSuchProcess { pid },
            other => proc_error(pid, "the entry in /proc", other),
        })?;
        let stat = process.stat().map_err(|e| proc_error(pid, "stat", e))?;
        if stat.flags & PF_KTHREAD != 0 {
            return Err(Error::KernelThread { pid });
        }
        if is_alive(&stat) {
            return Ok(Target {
                pid,
                reader: pid,
                process,
            });
        }
        // The main thread is gone (a zombie, or exiting): another thread may live on.
        match live_thread(pid, &process) {
            Some(tid) => Self::through_thread(pid, tid),
            None if is_dead(&stat) => Err(Error::Zombie { pid }),
            None => Err(Error::ProcessExited { pid }),
        }
    }

    fn through_thread(pid: i32, tid: i32) -> Result<Self> {
        let dir = PathBuf::from(format!("/proc/{pid}/task/{tid}"));
        let process = Process::new_with_root(dir).map_err(|e| proc_error(pid, "a thread", e))?;
        log::debug!("process {pid}: its main thread has exited; reading through thread {tid}");
        Ok(Target {
            pid,
            reader: tid,
            process,
        })
    }

    /// The mappings of `/proc/PID/maps`, in address order.
    pub fn maps(&self) -> Result<Vec<Mapping>> {
        let mappings = mappings_of(&self.process).map_err(|e| self.read_error("maps", e))?;
        if mappings.is_empty() {
            // A live user process always has mappings; none means it exited under us.
            self.ensure_alive()?;
        }
        Ok(mappings)
    }

    /// The process's name (`comm`), for headers.
    pub fn name(&self) -> String {
        self.process.stat().map(|s| s.comm).unwrap_or_default()
    }

    /// A file of the reading thread's `/proc` entry (`pagemap`, ...).
    pub fn proc_file(&self, name: &str) -> PathBuf {
        self.proc_dir().join(name)
    }

    fn proc_dir(&self) -> PathBuf {
        if self.reader == self.pid {
            PathBuf::from(format!("/proc/{}", self.pid))
        } else {
            PathBuf::from(format!("/proc/{}/task/{}", self.pid, self.reader))
        }
    }

    /// Whether the process has gone away: every thread has exited or is exiting.
    pub fn is_gone(&self) -> bool {
        let Ok(leader) = Process::new(self.pid) else {
            return true;
        };
        match leader.stat() {
            Ok(stat) if is_alive(&stat) => false,
            Ok(_) => live_thread(self.pid, &leader).is_none(),
            Err(_) => true,
        }
    }

    /// Called after a read failed or looked inconsistent: turns "the process went away" into
    /// the error that says so.
    pub fn ensure_alive(&self) -> Result<()> {
        if self.is_gone() {
            return Err(Error::ProcessExited { pid: self.pid });
        }
        Ok(())
    }

    /// The error for a failed read of `what` through procfs: gone, forbidden, or an I/O error.
    pub fn read_error(&self, what: &str, error: ProcError) -> Error {
        self.unless_gone(proc_error(self.pid, what, error))
    }

    /// The error for a failed read of `what` through std::io.
    pub fn io_error(&self, what: &str, error: std::io::Error) -> Error {
        self.unless_gone(match error.kind() {
            std::io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                pid: self.pid,
                what: what.to_string(),
            },
            _ => Error::io(format!("reading {what} of process {}", self.pid), error),
        })
    }

    /// `error`, unless the real cause is that the process went away.
    pub fn unless_gone(&self, error: Error) -> Error {
        match self.ensure_alive() {
            Ok(()) => error,
            Err(gone) => gone,
        }
    }

    /// A file the target has mapped (`path` as its maps show it), as this process can open it:
    /// through the mapping itself (`map_files`, whatever namespace or root the target has),
    /// else through the target's root, else as the path reads.
    pub fn mapped_file(&self, path: &Path, maps: &[Mapping]) -> PathBuf {
        let through_mapping = maps.iter().find(|m| Path::new(&m.path) == path).map(|m| {
            self.proc_dir()
                .join(format!("map_files/{:x}-{:x}", m.start, m.end))
        });
        through_mapping
            .into_iter()
            .chain([self.root_path(path), path.to_path_buf()])
            .find(|candidate| std::fs::metadata(candidate).is_ok())
            .unwrap_or_else(|| self.root_path(path))
    }

    /// A path inside the target's mount namespace (so files of containers resolve).
    pub fn root_path(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        self.proc_dir().join("root").join(relative)
    }
}

fn is_dead(stat: &Stat) -> bool {
    matches!(stat.state, 'Z' | 'X' | 'x')
}

fn is_alive(stat: &Stat) -> bool {
    !is_dead(stat) && stat.flags & PF_EXITING == 0
}

/// A thread of `pid` that is neither dead nor exiting.
fn live_thread(pid: i32, process: &Process) -> Option<i32> {
    let tasks = process.tasks().ok()?;
    tasks
        .take(MAX_THREADS_SCANNED)
        .filter_map(|task| task.ok())
        .filter(|task| task.tid != pid)
        .find(|task| task.stat().is_ok_and(|stat| is_alive(&stat)))
        .map(|task| task.tid)
}

fn proc_error(pid: i32, what: &str, error: ProcError) -> Error {
    match error {
        ProcError::PermissionDenied(_) => Error::PermissionDenied {
            pid,
            what: what.to_string(),
        },
        ProcError::NotFound(_) => Error::ProcessExited { pid },
        ProcError::Io(e, _) => Error::io(format!("reading {what} of process {pid}"), e),
        other => Error::io(
            format!("reading {what} of process {pid}"),
            std::io::Error::other(other.to_string()),
        ),
    }
}

/// The name (`comm`) of process `pid`, or "?" when it cannot be read.
pub fn comm(pid: i32) -> String {
    Process::new(pid)
        .and_then(|p| p.stat())
        .map_or_else(|_| "?".to_string(), |stat| stat.comm)
}

/// The mappings of `/proc/PID/maps` of process `pid`, in address order (without a [`Target`]:
/// for readers that go on whatever the process does, such as the stack unwinder's).
pub fn maps_of(pid: i32) -> std::result::Result<Vec<Mapping>, ProcError> {
    mappings_of(&Process::new(pid)?)
}

fn mappings_of(process: &Process) -> std::result::Result<Vec<Mapping>, ProcError> {
    let maps = process.maps()?;
    Ok(maps
        .into_iter()
        .map(|m| Mapping {
            start: m.address.0,
            end: m.address.1,
            perms: m.perms.as_str(),
            offset: m.offset,
            path: path_column(&m.pathname),
        })
        .collect())
}

fn path_column(path: &MMapPath) -> String {
    match path {
        MMapPath::Path(p) => p.display().to_string(),
        MMapPath::Heap => "[heap]".into(),
        MMapPath::Stack => "[stack]".into(),
        MMapPath::TStack(tid) => format!("[stack:{tid}]"),
        MMapPath::Vdso => "[vdso]".into(),
        MMapPath::Vvar => "[vvar]".into(),
        MMapPath::Vsyscall => "[vsyscall]".into(),
        MMapPath::Rollup => "[rollup]".into(),
        MMapPath::Anonymous => String::new(),
        MMapPath::Vsys(key) => format!("/SYSV{key:08x}"),
        // procfs strips the brackets of pseudo-paths it does not know (`[vvar_vclock]`).
        MMapPath::Other(other) => format!("[{other}]"),
    }
}
