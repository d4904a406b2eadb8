//! Readers of `/proc`: the target process, its mappings and its page tables.
pub mod freeze;
pub mod memory;
pub mod pagemap;

use std::path::{Path, PathBuf};

use procfs::ProcError;
use procfs::process::{MMapPath, Process};

use crate::error::{Error, Result};
use crate::state::pages::Mapping;

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags field (include/linux/sched.h).
const PF_KTHREAD: u32 = 0x0020_0000;

/// A process whose memory we look at. Opening it checks that there is a user address space.
pub struct Target {
    pub pid: i32,
    process: Process,
}

impl Target {
    pub fn open(pid: i32) -> Result<Self> {
        let process = Process::new(pid).map_err(|e| match e {
            ProcError::NotFound(_) => Error::NoSuchProcess { pid },
            other => proc_error(pid, "the entry in /proc", other),
        })?;
        let target = Target { pid, process };
        let stat = target
            .process
            .stat()
            .map_err(|e| target.read_error("stat", e))?;
        if stat.flags & PF_KTHREAD != 0 {
            return Err(Error::KernelThread { pid });
        }
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            return Err(Error::Zombie { pid });
        }
        Ok(target)
    }

    /// The mappings of `/proc/PID/maps`, in address order.
    pub fn maps(&self) -> Result<Vec<Mapping>> {
        let maps = self
            .process
            .maps()
            .map_err(|e| self.read_error("maps", e))?;
        let mappings: Vec<Mapping> = maps
            .into_iter()
            .map(|m| Mapping {
                start: m.address.0,
                end: m.address.1,
                perms: m.perms.as_str(),
                offset: m.offset,
                path: path_column(&m.pathname),
            })
            .collect();
        if mappings.is_empty() {
            // A live user process always has mappings; none means it exited under us.
            self.ensure_alive()?;
        }
        Ok(mappings)
    }

    /// The C library the target has mapped, as a path this process can open, and the mapping's
    /// own path. `None` for static or non-glibc programs.
    pub fn libc(&self, maps: &[Mapping]) -> Option<(PathBuf, String)> {
        maps.iter()
            .filter(|m| m.offset == 0)
            .find(|m| crate::glibc::identity::is_libc_name(&m.path))
            .map(|m| (self.root_path(Path::new(&m.path)), m.path.clone()))
    }

    /// Called after a read failed or returned nothing: turns "the process went away" into the
    /// error that says so.
    pub fn ensure_alive(&self) -> Result<()> {
        match self.process.stat() {
            Ok(stat) if !matches!(stat.state, 'Z' | 'X' | 'x') => Ok(()),
            _ => Err(Error::ProcessExited { pid: self.pid }),
        }
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
    fn unless_gone(&self, error: Error) -> Error {
        match self.ensure_alive() {
            Ok(()) => error,
            Err(gone) => gone,
        }
    }

    /// A path inside the target's mount namespace (so files of containers resolve).
    pub fn root_path(&self, path: &Path) -> PathBuf {
        let relative = path.strip_prefix("/").unwrap_or(path);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(relative)
    }
}

fn proc_error(pid: i32, what: &str, error: ProcError) -> Error {
    match error {
        ProcError::PermissionDenied(_) => Error::PermissionDenied {
            pid,
            what: what.to_string(),
        },
        ProcError::NotFound(_) => Error::ProcessExited { pid },
        ProcError::Io(e, _) => Error::io(format!("reading {what} of process {pid}"), e),
        other => Error::Other(format!("reading {what} of process {pid}: {other}")),
    }
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
