//! Which processes serve samples: those named by PID, and those whose name or cgroup matches,
//! found again at every look at /proc so that processes started later are picked up.
use std::path::{Path, PathBuf};

use regex::Regex;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub pids: Vec<i32>,
    /// Matched against `comm` anywhere in it, as pgrep does.
    pub comm: Option<Regex>,
    /// A cgroup path: processes in it or in a cgroup below it (in any hierarchy).
    pub cgroup: Option<PathBuf>,
}

/// Where cgroup hierarchies are usually mounted; `--cgroup` may name a path in a hierarchy or
/// under this.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

impl Selection {
    /// Checks what can be checked before serving: the PIDs exist and are not kernel threads
    /// (as `watch` says), the cgroup exists and stays in the cgroup filesystems.
    pub fn check(&self) -> Result<()> {
        for &pid in &self.pids {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                return Err(Error::NoSuchProcess { pid });
            }
            let stat = procfs::process::Process::new(pid).and_then(|p| p.stat());
            if stat.is_ok_and(|stat| kernel_thread(&stat)) {
                return Err(Error::KernelThread { pid });
            }
        }
        if let Some(cgroup) = &self.cgroup {
            // `..` would leave the hierarchy (`/sys/fs/cgroup/../../proc`): no cgroup's path
            // has one.
            if cgroup
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return Err(Error::Usage(format!(
                    "--cgroup {}: a cgroup's path has no `..` (it would leave the cgroup \
                     filesystem): name a cgroup such as /system.slice/nginx.service",
                    cgroup.display()
                )));
            }
            let path = cgroup_path(cgroup);
            let mounts = cgroup_mounts();
            let exists = mounts
                .iter()
                .any(|mount| mount.join(path.trim_start_matches('/')).is_dir());
            if !exists {
                let looked: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
                return Err(Error::Usage(format!(
                    "--cgroup {}: no such cgroup (looked for {path} in {}): name a cgroup such \
                     as /system.slice/nginx.service",
                    cgroup.display(),
                    if looked.is_empty() {
                        "no mounted cgroup hierarchy".to_string()
                    } else {
                        looked.join(", ")
                    }
                )));
            }
        }
        Ok(())
    }

    /// What the selection names by pattern rather than by PID.
    pub fn has_patterns(&self) -> bool {
        self.comm.is_some() || self.cgroup.is_some()
    }

    /// Every process (not thread) that the patterns match now, ourselves excepted; kernel
    /// threads have no memory to show and are left out.
    pub fn matching(&self) -> Vec<i32> {
        if !self.has_patterns() {
            return Vec::new();
        }
        let me = std::process::id() as i32;
        let Ok(processes) = procfs::process::all_processes() else {
            return Vec::new();
        };
        let cgroup = self.cgroup.as_deref().map(cgroup_path);
        processes
            .filter_map(|p| p.ok())
            .filter(|p| p.pid != me)
            .filter(|p| {
                // A process vanishing while it is looked at simply does not match.
                let Ok(stat) = p.stat() else { return false };
                let comm_ok = self.comm.as_ref().is_none_or(|re| re.is_match(&stat.comm));
                let cgroup_ok = cgroup.as_ref().is_none_or(|want| in_cgroup(p, want));
                !kernel_thread(&stat) && comm_ok && cgroup_ok
            })
            .map(|p| p.pid)
            .collect()
    }
}

/// Whether the process is a kernel thread (PF_KTHREAD): it has no memory to follow.
fn kernel_thread(stat: &procfs::process::Stat) -> bool {
    stat.flags & 0x0020_0000 != 0
}

/// `--cgroup` as a path in a hierarchy: `/sys/fs/cgroup/a/b` and `/a/b` name the same (and so
/// does `/sys/fs/cgroup/memory/a/b` on a v1 system, for the memory hierarchy's `/a/b`).
fn cgroup_path(given: &Path) -> String {
    let text = given.to_string_lossy();
    let mut inner = text.strip_prefix(CGROUP_ROOT).unwrap_or(&text);
    for mount in cgroup_mounts() {
        if let Some(rest) = mount
            .to_str()
            .and_then(|m| text.strip_prefix(m))
            .filter(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            inner = rest;
            break;
        }
    }
    let trimmed = inner.trim_end_matches('/');
    if trimmed.starts_with('/') {
        trimmed.to_string()
    } else {
        format!("/{trimmed}")
    }
}

/// Where the cgroup hierarchies (v2, and v1 on older or hybrid systems) are mounted.
fn cgroup_mounts() -> Vec<PathBuf> {
    let Ok(mounts) = procfs::process::Process::myself().and_then(|me| me.mountinfo()) else {
        return Vec::new();
    };
    mounts
        .into_iter()
        .filter(|m| m.fs_type == "cgroup2" || m.fs_type == "cgroup")
        .map(|m| m.mount_point)
        .collect()
}

/// Whether the process is in cgroup `want` or below it, in any hierarchy (the v2 one, or a v1
/// controller's).
fn in_cgroup(process: &procfs::process::Process, want: &str) -> bool {
    let Ok(groups) = process.cgroups() else {
        return false;
    };
    groups.0.iter().any(|g| {
        want == "/"
            || g.pathname == want
            || g.pathname
                .strip_prefix(want)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[cfg(test)]
mod tests {
    use super::cgroup_path;
    use std::path::Path;

    #[test]
    fn cgroup_paths_name_the_same_group_either_way() {
        for given in [
            "/sys/fs/cgroup/system.slice/a.service",
            "/system.slice/a.service",
            "system.slice/a.service/",
        ] {
            assert_eq!(cgroup_path(Path::new(given)), "/system.slice/a.service");
        }
        assert_eq!(cgroup_path(Path::new("/sys/fs/cgroup")), "/");
    }
}
