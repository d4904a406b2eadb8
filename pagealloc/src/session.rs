//! A long-lived look at one process. Opening a session resolves what does not change while the
//! process lives (the target, its page tables, its C library, malloc's layout and addresses);
//! each sample then reads only memory: the mappings, the page map, and the heap.
//!
//! A snapshot is one sample, `watch` a loop of samples.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::debuginfo::{DebugInfoError, DebugOptions};
use crate::error::{Error, Result};
use crate::glibc::{self, Libc, Split};
use crate::proc::Target;
use crate::proc::freeze::Frozen;
use crate::proc::memory::ProcessMemory;
use crate::proc::pagemap::PageReader;
use crate::state::heap::HeapMap;
use crate::state::pages::{Mapping, PageMap};
use crate::state::{Heap, HeapUnavailable, LibcInfo, Sample};
use crate::trace::{ChunkWords, Internals};

#[derive(Clone, Debug, Default)]
pub struct SessionOptions {
    /// Walk the heap too (needs glibc's debug info).
    pub heap: bool,
    pub debug: DebugOptions,
    /// Hold the process's threads still (ptrace) while the heap is walked: a consistent heap,
    /// for a pause of the walk's length.
    pub stop: bool,
}

pub struct Session {
    target: Target,
    pages: PageReader,
    options: SessionOptions,
    /// The C library as last resolved, and the mapping it was resolved for: resolved again only
    /// when the process maps another one.
    libc: Option<(LibcMapping, Result<ResolvedLibc, HeapUnavailable>)>,
}

/// Where a process has its C library: what is resolved from it holds while this holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct LibcMapping {
    /// The path as the target sees it.
    path: String,
    /// The run-time address of its first byte (its lowest mapping minus that mapping's offset).
    load_base: u64,
    /// The file as this process can open it.
    file: PathBuf,
}

struct ResolvedLibc {
    libc: Libc,
    info: LibcInfo,
    /// Where live mode's probes on glibc's internals go.
    internals: Internals,
    /// A layout derived from the code is trusted once a walk passed its check
    /// ([`glibc::derive::verify`]); one read from debug info is trusted at once.
    trusted: bool,
}

/// malloc's layout of a libc, where it came from: the debug file, or None (derived from the
/// code), and the library's build-id.
struct Sourced {
    layout: glibc::debug::MallocLayout,
    debug_file: Option<PathBuf>,
    build_id: String,
}

/// A walk not taken, and why (the refusal of `--stop`).
#[derive(Debug, thiserror::Error)]
#[error("this walk was skipped ({0}); watch goes on, and the next walk is tried as usual")]
struct WalkSkipped(String);

/// Where live mode's probes go (see [`Session::probe_site`]).
#[derive(Clone, Debug)]
pub struct ProbeSite {
    pub libc: PathBuf,
    pub internals: Internals,
    /// Where a chunk's header words are below its user pointer, for the probes.
    pub chunk_words: ChunkWords,
    /// `sizeof(struct malloc_chunk)`: the part of a free chunk malloc_trim keeps.
    pub chunk_struct_size: u64,
}

/// Tries of `--stop` before an inconsistent heap is shown as it is.
const STOP_ATTEMPTS: u32 = 3;

impl Session {
    pub fn open(pid: i32, options: SessionOptions) -> Result<Session> {
        let target = Target::open(pid)?;
        let pages = PageReader::open(&target)?;
        Ok(Session {
            target,
            pages,
            options,
            libc: None,
        })
    }

    pub fn pid(&self) -> i32 {
        self.target.pid
    }

    /// The process's name (`comm`).
    pub fn name(&self) -> String {
        self.target.name()
    }

    /// The sample of a walk `--stop` could not take because another tracer (a debugger) held
    /// the process (`refused`, [`Error::AlreadyTraced`]): the page map alone, and the heap said
    /// to be skipped for that reason.
    pub fn sample_skipping_the_walk(&mut self, refused: &Error) -> Result<Sample> {
        let mut sample = self.look(false)?;
        let skipped = WalkSkipped(refused.to_string());
        sample.heap = Heap::Unavailable(HeapUnavailable::Unwalkable(Arc::new(skipped)));
        Ok(sample)
    }

    /// Whether the process has gone away (every thread exited or exiting).
    pub fn is_gone(&self) -> bool {
        self.target.is_gone()
    }

    /// One look at the process while it runs. Fails only when the process itself cannot be
    /// read (gone, forbidden); a heap that cannot be walked is in the sample.
    pub fn sample(&mut self) -> Result<Sample> {
        if self.options.stop && self.options.heap {
            self.sample_stopped()
        } else {
            self.look(self.options.heap)
        }
    }

    /// The page map alone (live mode keeps the heap map current from events in between).
    pub fn sample_pages(&mut self) -> Result<Sample> {
        self.look(false)
    }

    /// Where the probes of live mode go: the C library as this process can open it, and the
    /// glibc internals the debug info locates; and the bytes malloc_trim keeps of a free chunk.
    /// Resolves the library if no sample has yet.
    pub fn probe_site(&mut self) -> Result<ProbeSite> {
        let maps = self.target.maps()?;
        self.resolve_libc(&maps, procfs::page_size())
            .map_err(Error::Heap)?;
        let Some((mapping, Ok(resolved))) = &self.libc else {
            unreachable!("resolved just above");
        };
        Ok(ProbeSite {
            libc: mapping.file.clone(),
            internals: resolved.internals.clone(),
            chunk_words: resolved.libc.offsets.chunk_words(),
            chunk_struct_size: resolved.libc.offsets.chunk_struct_size,
        })
    }

    /// What the `heap_info` at `heap` says now, if it reads (live mode meets heaps made after
    /// its walk). Only that page is read, and only if it is resident.
    pub fn heap_info(&mut self, heap: u64) -> Option<glibc::HeapInfo> {
        let Some((_, Ok(resolved))) = &self.libc else {
            return None;
        };
        let maps = self.target.maps().ok()?;
        let mapping = maps.into_iter().find(|m| m.start <= heap && heap < m.end)?;
        let pages = self.pages.read_mappings(&self.target, vec![mapping]).ok()?;
        let memory = ProcessMemory::new(self.target.reader, &pages);
        glibc::heap_info(&memory, &resolved.libc.offsets, heap).ok()
    }

    /// The tops of the arenas at `arenas` now, each if it reads and lies in one mapping (live
    /// mode follows a heap's bounds between walks): a few words each, through the page map
    /// `pages` just read.
    pub fn arena_tops(&self, pages: &PageMap, arenas: &[u64]) -> Vec<Option<glibc::ArenaTop>> {
        let Some((_, Ok(resolved))) = &self.libc else {
            return vec![None; arenas.len()];
        };
        let memory = ProcessMemory::new(self.target.reader, pages);
        let mapped = |top: &glibc::ArenaTop| {
            let end = top.top.saturating_add(top.top_size);
            (pages.mappings.iter()).any(|m| m.mapping.start <= top.top && end <= m.mapping.end)
        };
        (arenas.iter())
            .map(|&arena| glibc::arena_top(&memory, &resolved.libc.offsets, arena).ok())
            .map(|top| top.filter(mapped))
            .collect()
    }

    fn look(&mut self, heap: bool) -> Result<Sample> {
        let taken = SystemTime::now();
        let started = Instant::now();
        let maps = self.target.maps()?;
        let pages = self.pages.read_mappings(&self.target, maps.clone())?;
        log::debug!("page map read in {:?}", started.elapsed());
        let (heap, libc) = if heap {
            self.heap(&maps, &pages)
        } else {
            (Heap::NotRead, None)
        };
        // A walk cut short by a request to end is no heap to show.
        if crate::cancel::asked() {
            return Err(Error::Cancelled);
        }
        // Reads of a process that is going away fail or come back inconsistent: say that it went
        // away, whatever phase the look was in.
        let suspicious = match &heap {
            Heap::Map(map) => !map.is_consistent(),
            Heap::Unavailable(HeapUnavailable::Unwalkable(_)) => true,
            Heap::Unavailable(_) | Heap::NotRead => false,
        };
        if suspicious {
            self.target.ensure_alive()?;
        }
        Ok(Sample {
            pid: self.target.pid,
            taken,
            duration: started.elapsed(),
            pages,
            libc,
            heap,
            events: None,
            sites: None,
        })
    }

    /// One look with every thread of the process held still (ptrace), for a consistent heap. A
    /// thread stopped in the middle of malloc can leave its arena half updated: when the heap
    /// reads inconsistent, the process runs on for a moment and is looked at again.
    fn sample_stopped(&mut self) -> Result<Sample> {
        let mut attempt = 1;
        loop {
            let frozen = Frozen::freeze(self.target.pid)?;
            let sample = self.look(true);
            drop(frozen);
            let consistent = match &sample {
                Ok(sample) => sample.heap_map().is_none_or(HeapMap::is_consistent),
                Err(_) => true,
            };
            if consistent || attempt == STOP_ATTEMPTS {
                return sample;
            }
            log::debug!("heap inconsistent while stopped (attempt {attempt}): looking again");
            attempt += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    fn heap(&mut self, maps: &[Mapping], pages: &PageMap) -> (Heap, Option<LibcInfo>) {
        if let Err(why) = self.resolve_libc(maps, pages.page_size) {
            return (Heap::Unavailable(why), None);
        }
        let Some((_, Ok(resolved))) = &self.libc else {
            unreachable!("resolved just above");
        };
        let target = &self.target;
        let started = Instant::now();
        let memory = ProcessMemory::new(target.reader, pages);
        let map = match glibc::walk(&resolved.libc, &memory, maps, Split::for_this_machine()) {
            Ok(map) => map,
            Err(e) => {
                let why = HeapUnavailable::Unwalkable(Arc::new(e));
                return (Heap::Unavailable(why), None);
            }
        };
        log::debug!("heap walked in {:?}", started.elapsed());
        if !resolved.trusted {
            let checked = glibc::derive::verify(&resolved.libc, &memory, maps, &map);
            if let Err(why) = self.settle_trust(checked, map.is_consistent()) {
                return (Heap::Unavailable(why), None);
            }
        }
        let Some((_, Ok(resolved))) = &self.libc else {
            unreachable!("trusted just above");
        };
        let map =
            glibc::identity::note_interposer(map, maps, |path| self.target.mapped_file(path, maps));
        (Heap::Map(Box::new(map)), Some(resolved.info.clone()))
    }

    /// What the check of a derived layout on a walk (`checked`) means for it: passed, it is
    /// trusted from now on; failed on a consistent heap, it is refused for good (the page map
    /// alone, with the reason); failed on a heap that changed under the walk, this look has no
    /// heap map and the next one checks again.
    fn settle_trust(
        &mut self,
        checked: std::result::Result<(), glibc::derive::Unverified>,
        consistent: bool,
    ) -> std::result::Result<(), HeapUnavailable> {
        let Some((_, resolution)) = &mut self.libc else {
            return Ok(());
        };
        match (checked, resolution) {
            (Ok(()), Ok(resolved)) => {
                log::info!("malloc's layout derived from the code passed its check");
                resolved.trusted = true;
                Ok(())
            }
            (Err(why), _) if !consistent => Err(HeapUnavailable::Unwalkable(Arc::new(
                WalkSkipped(format!("{why}, while the heap changed under the walk")),
            ))),
            (Err(why), resolution) => {
                let refused = HeapUnavailable::NoDebugInfo(Arc::new(why));
                *resolution = Err(refused.clone());
                Err(refused)
            }
            (Ok(()), Err(why)) => Err(why.clone()),
        }
    }

    /// The C library of the process, resolved the first time and again only if the process
    /// now maps another one (it exec'd).
    fn resolve_libc(&mut self, maps: &[Mapping], page_size: u64) -> Result<(), HeapUnavailable> {
        let pid = self.target.pid;
        let mapping = libc_mapping(&self.target, maps).ok_or_else(|| {
            HeapUnavailable::NotGlibc(Arc::new(LibcUnreadable::NotMapped { pid }))
        })?;
        if mapping.path.ends_with(crate::proc::DELETED) && !mapping.file.exists() {
            return Err(HeapUnavailable::Unwalkable(Arc::new(
                LibcUnreadable::Deleted { pid },
            )));
        }
        if self
            .libc
            .as_ref()
            .is_none_or(|(known, _)| *known != mapping)
        {
            let started = Instant::now();
            let resolved = self.resolve(&mapping, page_size);
            log::debug!(
                "C library {} resolved in {:?}",
                mapping.path,
                started.elapsed()
            );
            self.libc = Some((mapping, resolved));
        } else {
            log::debug!("C library as resolved before: nothing of it read again");
        }
        match &self.libc {
            Some((_, Err(why))) => Err(why.clone()),
            _ => Ok(()),
        }
    }

    fn resolve(
        &self,
        mapping: &LibcMapping,
        page_size: u64,
    ) -> Result<ResolvedLibc, HeapUnavailable> {
        let Sourced {
            layout,
            debug_file,
            build_id,
        } = self.layout(&mapping.file)?;
        let first_load = layout.symbols.first_load_vaddr & !(page_size - 1);
        let libc =
            Libc::new(&layout, mapping.load_base.wrapping_sub(first_load)).map_err(unavailable)?;
        let info = LibcInfo {
            path: mapping.path.clone(),
            build_id,
            debug_file: debug_file.as_ref().map(|f| f.display().to_string()),
            version: layout.glibc_version.clone(),
        };
        Ok(ResolvedLibc {
            libc,
            info,
            internals: Internals {
                thread_freeres: layout.symbols.thread_freeres,
                int_malloc: layout.symbols.int_malloc,
                tcache_init: layout.symbols.tcache_init,
            },
            trusted: debug_file.is_some(),
        })
    }

    /// malloc's layout of `libc` (a host path) from its debug info, or derived from its code
    /// when the debug info is out of reach (not when `--debug-file` named the file to use).
    fn layout(&self, libc: &Path) -> Result<Sourced, HeapUnavailable> {
        let missing = match glibc::debug::load(libc, &self.options.debug) {
            Ok(debug) => {
                log::debug!(
                    "malloc layout loaded (from the cache: {})",
                    debug.from_cache
                );
                return Ok(Sourced {
                    layout: debug.layout,
                    debug_file: Some(debug.debug_file),
                    build_id: debug.build_id,
                });
            }
            Err(e) if e.is_missing_debug_info() && self.options.debug.debug_file.is_none() => e,
            Err(e) => return Err(unavailable(e)),
        };
        match glibc::derive::derive(libc) {
            Ok(derived) => Ok(Sourced {
                layout: derived.layout,
                debug_file: None,
                build_id: derived.build_id,
            }),
            Err(why) => Err(HeapUnavailable::NoDebugInfo(Arc::new(NotDerived {
                missing,
                why,
            }))),
        }
    }
}

/// Neither debug info nor a layout derived from the code: what was missing, and why the code
/// did not do.
#[derive(Debug, thiserror::Error)]
#[error(
    "{missing}; and malloc's layout could not be derived from the library's code instead: {why}"
)]
pub struct NotDerived {
    missing: DebugInfoError,
    #[source]
    why: glibc::derive::DeriveError,
}

/// Where the process has glibc's C library; None for static or non-glibc programs.
fn libc_mapping(target: &Target, maps: &[Mapping]) -> Option<LibcMapping> {
    let path = &maps
        .iter()
        .filter(|m| m.offset == 0)
        .find(|m| glibc::identity::is_libc_name(&m.path))?
        .path;
    let load_base = maps
        .iter()
        .filter(|m| m.path == *path)
        .map(|m| m.start.wrapping_sub(m.offset))
        .min()?;
    Some(LibcMapping {
        path: path.clone(),
        load_base,
        file: target.mapped_file(Path::new(path), maps),
    })
}

/// Why the process's C library is not read, before its debug info is looked for.
#[derive(Debug, thiserror::Error)]
pub enum LibcUnreadable {
    #[error(
        "process {pid} has no glibc libc.so.6 mapped (a static or musl binary?): pagealloc \
         reads glibc's malloc only; the page map still applies"
    )]
    NotMapped { pid: i32 },
    #[error(
        "the C library of process {pid} was deleted since it was mapped (upgraded?): it can be \
         read only through /proc/{pid}/map_files, which needs CAP_SYS_ADMIN"
    )]
    Deleted { pid: i32 },
}

/// Why the debug info gives no heap map: missing (install it), not glibc, or unusable.
fn unavailable(error: DebugInfoError) -> HeapUnavailable {
    let case = if error.is_missing_debug_info() {
        HeapUnavailable::NoDebugInfo
    } else if matches!(
        error,
        DebugInfoError::NotGlibc { .. }
            | DebugInfoError::MissingSymbol { .. }
            | DebugInfoError::MissingStruct { .. }
    ) {
        HeapUnavailable::NotGlibc
    } else {
        HeapUnavailable::Unwalkable
    };
    case(Arc::new(error))
}

/// The error a one-shot look ends with: none, why the heap map is missing, or why it is
/// incomplete.
pub fn verdict(sample: &Sample) -> Result<()> {
    if let Some(why) = sample.heap_unavailable() {
        return Err(Error::Heap(why.clone()));
    }
    match sample.heap_map().and_then(HeapMap::incomplete) {
        Some(note) => Err(Error::HeapIncomplete(note.message.clone())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// The cause the debug info loader gave, as its source, typed, and its message after what it
    /// means for the look.
    fn check(error: DebugInfoError, key: &str) {
        let message = error.to_string();
        let why = unavailable(error);
        assert_eq!(why.key(), key);
        assert_eq!(why.to_string(), format!("heap map unavailable: {message}"));
        let source = why
            .source()
            .and_then(|s| s.downcast_ref::<DebugInfoError>());
        assert_eq!(source.map(ToString::to_string), Some(message));
    }

    #[test]
    fn debug_info_failures_keep_their_cause() {
        let libc = PathBuf::from("/lib/libc.so.6");
        let missing = DebugInfoError::NoDebugInfo {
            libc: libc.clone(),
            build_id: "ab12".to_string(),
            tried: Vec::new(),
            notes: Vec::new(),
        };
        check(missing, "no_debug_info");
        let not_glibc = DebugInfoError::MissingSymbol {
            name: "main_arena".to_string(),
        };
        check(not_glibc, "not_glibc");
        let unknown_layout = DebugInfoError::MissingField {
            strukt: "malloc_state".to_string(),
            field: "top".to_string(),
        };
        check(unknown_layout, "unwalkable");
    }

    #[test]
    fn a_library_not_read_says_why() {
        let why = HeapUnavailable::NotGlibc(Arc::new(LibcUnreadable::NotMapped { pid: 7 }));
        assert!(why.to_string().starts_with(
            "heap map unavailable: process 7 has no glibc libc.so.6 mapped (a static or musl \
             binary?)"
        ));
        let source = why
            .source()
            .and_then(|s| s.downcast_ref::<LibcUnreadable>());
        assert!(matches!(source, Some(LibcUnreadable::NotMapped { pid: 7 })));
        let deleted = LibcUnreadable::Deleted { pid: 7 }.to_string();
        assert!(deleted.contains("process 7 was deleted") && deleted.contains("/proc/7/map_files"));
    }
}
