//! One look at a process: the page map, then the heap walked with glibc's layouts, held still
//! with `--stop` if asked. The sources are read here; the result is plain data.
use serde::Serialize;

use crate::error::{Error, Result};
use crate::{debuginfo, glibc, proc};

use crate::debuginfo::{DebugInfoError, DebugOptions};
use crate::proc::Target;
use crate::proc::memory::ProcessMemory;
use crate::proc::pagemap::PageReader;
use crate::state::heap::HeapMap;
use crate::state::pages::{Mapping, PageMap};

/// Which C library the heap map was read with (JSON `libc`).
#[derive(Clone, Debug, Serialize)]
pub struct LibcInfo {
    /// The path as the target sees it.
    pub path: String,
    pub build_id: String,
    pub debug_file: String,
    pub version: Option<String>,
}

/// One look at a process: its page map and, where glibc's debug info allows, its heap map.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    #[serde(flatten)]
    pub pages: PageMap,
    pub libc: Option<LibcInfo>,
    pub heap: Option<HeapMap>,
    /// Why there is no heap map, when there is none.
    pub heap_error: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct SnapshotOptions {
    /// Walk the heap too (needs glibc's debug info).
    pub heap: bool,
    /// Hold the target still while reading (ptrace).
    pub stop: bool,
    pub debug: DebugOptions,
}

/// Reads a snapshot. A heap that cannot be walked does not lose the page map: the snapshot comes
/// back with `heap_error` set, together with the error (for the exit code).
pub fn snapshot(pid: i32, options: &SnapshotOptions) -> Result<(Snapshot, Option<Error>)> {
    let target = Target::open(pid)?;
    if !options.stop {
        return read_snapshot(&target, options);
    }
    // A thread stopped in the middle of malloc can leave its arena half updated: when the heap
    // reads inconsistent, let the target run on for a moment and look again.
    let mut attempt = 1;
    loop {
        let frozen = proc::freeze::Frozen::freeze(pid)?;
        let result = read_snapshot(&target, options);
        drop(frozen);
        let consistent = match &result {
            Ok((snapshot, _)) => snapshot.heap.as_ref().is_none_or(HeapMap::is_consistent),
            Err(_) => true,
        };
        if consistent || attempt == STOP_ATTEMPTS {
            return result;
        }
        log::debug!("heap inconsistent while stopped (attempt {attempt}): looking again");
        attempt += 1;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Tries of `--stop` before an inconsistent heap is shown as it is.
const STOP_ATTEMPTS: u32 = 3;

fn read_snapshot(target: &Target, options: &SnapshotOptions) -> Result<(Snapshot, Option<Error>)> {
    let started = std::time::Instant::now();
    let maps = target.maps()?;
    let pages = PageReader::open(target)?.read_mappings(maps.clone())?;
    log::debug!("page map read in {:?}", started.elapsed());
    let mut snapshot = Snapshot {
        pages,
        libc: None,
        heap: None,
        heap_error: None,
    };
    if !options.heap {
        return Ok((snapshot, None));
    }
    let heap = heap_map(target, &maps, &snapshot.pages, &options.debug);
    // The walk reads memory that vanishes with the process: say so rather than "corrupt heap".
    target.ensure_alive()?;
    match heap {
        Ok((heap, libc)) => {
            snapshot.heap = Some(heap);
            snapshot.libc = Some(libc);
            Ok((snapshot, None))
        }
        Err(error) => {
            snapshot.heap_error = Some(error.to_string());
            Ok((snapshot, Some(error)))
        }
    }
}

/// Walks the target's glibc heap.
pub fn heap_map(
    target: &Target,
    maps: &[Mapping],
    pages: &PageMap,
    options: &DebugOptions,
) -> Result<(HeapMap, LibcInfo)> {
    let (libc_host_path, libc_path) = target.libc(maps).ok_or_else(|| {
        Error::NotGlibc(format!(
            "process {} has no glibc libc.so.6 mapped (a static or musl binary?): pagealloc \
             reads glibc's malloc only; the page map still applies",
            target.pid
        ))
    })?;
    let started = std::time::Instant::now();
    let info = debuginfo::load(&libc_host_path, options).map_err(debug_info_error)?;
    log::debug!(
        "malloc layout loaded in {:?} (cached: {})",
        started.elapsed(),
        info.from_cache
    );
    let load_base = maps
        .iter()
        .filter(|m| m.path == libc_path)
        .map(|m| m.start - m.offset)
        .min()
        .ok_or_else(|| Error::Heap("the libc mapping vanished".into()))?;
    let bias = load_base - (info.layout.symbols.first_load_vaddr & !(pages.page_size - 1));
    let libc = glibc::Libc::new(&info.layout, bias).map_err(debug_info_error)?;
    let memory = ProcessMemory::new(target.pid, pages);
    let walked = glibc::walk(&libc, &memory, maps, glibc::Split::for_this_machine())
        .map_err(|e| Error::Heap(e.to_string()))?;
    let walked = glibc::identity::note_interposer(walked, maps, |path| target.root_path(path));
    log::debug!("heap walked in {:?}", started.elapsed());
    let libc = LibcInfo {
        path: libc_path,
        build_id: info.build_id,
        debug_file: info.debug_file.display().to_string(),
        version: info.layout.glibc_version.clone(),
    };
    Ok((walked, libc))
}

fn debug_info_error(error: DebugInfoError) -> Error {
    if error.is_missing_debug_info() {
        return Error::NoDebugInfo(error.to_string());
    }
    match error {
        DebugInfoError::NotGlibc { .. }
        | DebugInfoError::MissingSymbol { .. }
        | DebugInfoError::MissingStruct { .. } => Error::NotGlibc(error.to_string()),
        other => Error::Heap(other.to_string()),
    }
}
