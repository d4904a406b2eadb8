//! Probes by hand for the floors: where pagealloc puts its probes (`pagealloc probes`), bare
//! uprobes opened with `perf_event_open` that only count, and the proof that a tracer's
//! breakpoints are in.
use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where the probes go, from `pagealloc probes PID --format json`.
pub(super) struct Plan {
    pub(super) libc: String,
    /// File offsets of malloc's and free's first instructions, and of free's probe.
    pub(super) malloc: u64,
    pub(super) free: u64,
    pub(super) free_probe: u64,
    /// pagealloc's own probes on malloc and free.
    pub(super) pagealloc: Vec<Bare>,
}

impl Plan {
    pub(super) fn of(pagealloc: &Path, pid: u32) -> Result<Plan> {
        let out = Command::new(pagealloc)
            .args(["probes", &pid.to_string(), "--format", "json"])
            .output()
            .context("running pagealloc probes")?;
        if !out.status.success() {
            bail!(
                "pagealloc probes failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let json: Value = serde_json::from_slice(&out.stdout).context("pagealloc probes")?;
        let libc = json["libc"]
            .as_str()
            .context("no libc in pagealloc probes")?;
        let mut pagealloc = Vec::new();
        let (mut malloc, mut free, mut free_probe) = (None, None, None);
        for probe in json["probes"].as_array().context("no probes")? {
            let function = probe["function"].as_str().unwrap_or_default();
            if function != "malloc" && function != "free" {
                continue;
            }
            let file_offset = probe["file_offset"].as_u64().context("file_offset")?;
            let offset = probe["offset"].as_u64().context("offset")?;
            let returns = probe["returns"].as_bool().context("returns")?;
            let start = file_offset.checked_sub(offset).with_context(|| {
                format!("pagealloc probes: {function}+{offset} at file offset {file_offset}")
            })?;
            if function == "malloc" {
                malloc = Some(start);
            } else {
                free = Some(start);
                if !returns {
                    free_probe = Some(file_offset);
                }
            }
            let bare = Bare {
                function: if function == "malloc" {
                    "malloc"
                } else {
                    "free"
                },
                offset,
                file_offset,
                returns,
            };
            if !pagealloc
                .iter()
                .any(|p: &Bare| p.file_offset == file_offset && p.returns == returns)
            {
                pagealloc.push(bare);
            }
        }
        Ok(Plan {
            libc: libc.to_string(),
            malloc: malloc.context("pagealloc probes nothing on malloc")?,
            free: free.context("pagealloc probes nothing on free")?,
            free_probe: free_probe.context("pagealloc has no entry probe on free")?,
            pagealloc,
        })
    }
}

/// A bare uprobe: the kernel's uprobe PMU, counting, no program.
#[derive(Clone)]
pub(super) struct Bare {
    pub(super) function: &'static str,
    offset: u64,
    pub(super) file_offset: u64,
    pub(super) returns: bool,
}

impl Bare {
    pub(super) fn entry(function: &'static str, start: u64, offset: u64) -> Bare {
        Bare {
            function,
            offset,
            file_offset: start + offset,
            returns: false,
        }
    }

    pub(super) fn ret(function: &'static str, start: u64) -> Bare {
        Bare {
            function,
            offset: 0,
            file_offset: start,
            returns: true,
        }
    }

    fn kind(&self) -> &'static str {
        if self.returns { "uretprobe" } else { "uprobe" }
    }

    pub(super) fn describe(&self) -> String {
        format!("{} {}+{}", self.kind(), self.function, self.offset)
    }

    /// `perf_event_open` of this probe for thread `tid`, counting.
    pub(super) fn open(&self, libc: &str, tid: u32) -> Result<File> {
        let (kind, retprobe_bit) = uprobe_pmu()?;
        let path = CString::new(libc)?;
        let attr = PerfEventAttr {
            kind,
            size: std::mem::size_of::<PerfEventAttr>() as u32,
            config: if self.returns { 1 << retprobe_bit } else { 0 },
            config1: path.as_ptr() as u64,
            config2: self.file_offset,
            ..Default::default()
        };
        // SAFETY: attr is a valid perf_event_attr of the size it states; the path outlives
        // the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_perf_event_open,
                &attr as *const PerfEventAttr,
                tid as libc::pid_t,
                -1 as libc::c_int,
                -1 as libc::c_int,
                PERF_FLAG_FD_CLOEXEC,
            )
        };
        if fd < 0 {
            bail!(
                "perf_event_open({}) failed: {}",
                self.describe(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { File::from_raw_fd(fd as i32) })
    }
}

/// Probes as a list, each kind named once where it starts: "uprobe malloc+156, malloc+343,
/// free+3".
pub(super) fn describe_all(probes: &[Bare]) -> String {
    let mut kind = None;
    probes
        .iter()
        .map(|p| {
            let named = kind == Some(p.kind());
            kind = Some(p.kind());
            if named {
                format!("{}+{}", p.function, p.offset)
            } else {
                p.describe()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// `struct perf_event_attr` up to `config2` (PERF_ATTR_SIZE_VER1, 72 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    kind: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
    config2: u64,
}

/// The uprobe PMU's type and the bit of `config` that makes a return probe.
pub(super) fn uprobe_pmu() -> Result<(u32, u32)> {
    let dir = Path::new("/sys/bus/event_source/devices/uprobe");
    let kind = std::fs::read_to_string(dir.join("type"))
        .with_context(|| format!("reading {}", dir.join("type").display()))?
        .trim()
        .parse()?;
    let format = std::fs::read_to_string(dir.join("format/retprobe"))?;
    let bit = format
        .trim()
        .strip_prefix("config:")
        .context("retprobe format is not config:N")?
        .parse()?;
    Ok((kind, bit))
}

pub(super) fn read_count(file: &File) -> Result<u64> {
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, 0)
        .or_else(|_| (&*file).read_exact(&mut buf))?;
    Ok(u64::from_ne_bytes(buf))
}

/// Waits until an int3 (0xcc) sits at each of these libc file offsets in the process: the
/// proof that a tracer's uprobes are in.
pub(super) fn expect_breakpoints(pid: u32, file_offsets: &[u64], timeout: Duration) -> Result<()> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let address = |offset: u64| -> Option<u64> {
        maps.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 || !f[5].ends_with("/libc.so.6") {
                return None;
            }
            let (lo, hi) = f[0].split_once('-')?;
            let lo = u64::from_str_radix(lo, 16).ok()?;
            let hi = u64::from_str_radix(hi, 16).ok()?;
            let file = u64::from_str_radix(f[2], 16).ok()?;
            let len = hi.checked_sub(lo)?;
            (offset >= file && offset - file < len).then(|| lo + (offset - file))
        })
    };
    let deadline = Instant::now() + timeout;
    for &offset in file_offsets {
        let at = address(offset).with_context(|| format!("libc offset {offset:#x} not mapped"))?;
        loop {
            let mut byte = [0u8];
            mem.read_exact_at(&mut byte, at)?;
            if byte[0] == 0xcc {
                break;
            }
            if Instant::now() > deadline {
                bail!("no breakpoint at libc offset {offset:#x}: the probes are not attached");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}
