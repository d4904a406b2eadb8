//! The probes: which functions of the C library, which programs on each, and where they go.
use std::path::Path;

use pagealloc_common::{Call, Program};

use super::error::TraceError;
use super::place::{self, Needs};
use crate::objects::{ElfFile, Objects};
pub use crate::state::probes::Placed;

/// How a probed function is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Watch {
    /// Its result (malloc, calloc): caught with one trap per call where the analysis of its
    /// code is sure how, else by a return probe.
    Result,
    /// An outer call (realloc, the memalign family): its entry and its return.
    Outer,
    /// Its argument at entry (free).
    Argument,
}

/// The exported functions probed, in the order their probes are listed. (`aligned_alloc` is
/// `memalign`, `cfree` is `free`: one address each, one probe.)
const PROBED: [(&str, Call, Watch); 8] = [
    ("malloc", Call::Malloc, Watch::Result),
    ("calloc", Call::Calloc, Watch::Result),
    ("realloc", Call::Realloc, Watch::Outer),
    ("memalign", Call::Memalign, Watch::Outer),
    ("valloc", Call::Valloc, Watch::Outer),
    ("pvalloc", Call::Pvalloc, Watch::Outer),
    ("posix_memalign", Call::PosixMemalign, Watch::Outer),
    ("free", Call::Free, Watch::Argument),
];

impl Watch {
    /// The programs on the function (return probes for a result).
    fn programs(self) -> &'static [Program] {
        match self {
            Watch::Result => &[Program::AllocReturn],
            Watch::Outer => &[Program::OuterEntry, Program::OuterReturn],
            Watch::Argument => &[Program::FreeEntry],
        }
    }
}

/// What `program` reads where it is placed on its function's first instructions.
fn needs(program: Program) -> Needs {
    let arguments = match program {
        Program::OuterEntry => 2, // the pointer or `memptr`, and the size
        Program::FreeEntry => 1,
        _ => 0,
    };
    Needs {
        arguments,
        stack: true,
    }
}

/// glibc's internal functions probed, by their link-time addresses (from the debug info).
#[derive(Clone, Debug, Default)]
pub struct Internals {
    /// `__malloc_arena_thread_freeres`: an exiting thread gives its tcache back in it.
    pub thread_freeres: Option<u64>,
    /// `_int_malloc`, and the code of `tcache_init` that calls it for a new thread's tcache.
    pub int_malloc: Option<u64>,
    pub tcache_init: Vec<(u64, u64)>,
}

/// Where each probe goes in `libc` (see [`place`]), malloc's and calloc's results caught with
/// one trap per call where the analysis is sure how.
pub fn plan(libc: &Path, internals: &Internals) -> Result<Vec<Placed>, TraceError> {
    plan_with(libc, internals, true)
}

/// [`plan`], with `one_trap` false: return probes for malloc's and calloc's results.
pub fn plan_with(
    libc: &Path,
    internals: &Internals,
    one_trap: bool,
) -> Result<Vec<Placed>, TraceError> {
    let file = Objects::shared().open(libc)?;
    let mut placed = Vec::new();
    for (function, call, watch) in PROBED {
        let symbol = file
            .dynamic_symbol(function)
            .ok_or_else(|| TraceError::NotExported {
                function: function.to_string(),
                libc: libc.to_path_buf(),
            })?;
        let (address, size) = (symbol.address, symbol.size);
        if one_trap && watch == Watch::Result {
            let code = |at| file.bytes_at(at);
            let returns_first_argument = |at| place::returns_first_argument(&file, at);
            match place::result_points(&code, &returns_first_argument, address, size) {
                Ok(points) => {
                    for point in points {
                        placed.push(Placed {
                            program: Program::AllocResult,
                            function: function.to_string(),
                            offset: point.offset,
                            file_offset: file_offset(&file, address + point.offset, function)?,
                            emulated: true,
                            call: Some(call),
                            depth: point.depth,
                        });
                    }
                    continue;
                }
                Err(why) => log::info!(
                    "{function}'s result caught by a return probe (two traps a call): {why}"
                ),
            }
        }
        for &program in watch.programs() {
            placed.push(at_entry(&file, program, function, address, Some(call))?);
        }
    }
    // After each call of tcache_init's to _int_malloc: a new thread's tcache, in rax.
    if let Some(int_malloc) = internals.int_malloc {
        for &(start, end) in &internals.tcache_init {
            let bytes = file.bytes_at(start);
            let bytes = &bytes[..bytes.len().min(end.saturating_sub(start) as usize)];
            for after in place::after_calls_to(bytes, start, int_malloc) {
                placed.push(Placed {
                    program: Program::TcacheAlloc,
                    function: "tcache_init".into(),
                    offset: after - start,
                    file_offset: file_offset(&file, after, "tcache_init")?,
                    emulated: false,
                    call: Some(Call::TcacheInit),
                    depth: 0,
                });
            }
        }
    }
    if let Some(flush) = internals.thread_freeres {
        let function = "__malloc_arena_thread_freeres";
        for program in [Program::FlushEntry, Program::FlushReturn] {
            placed.push(at_entry(&file, program, function, flush, None)?);
        }
    }
    Ok(placed)
}

/// `program` on the first instruction of the function at `address` that costs it one trap.
fn at_entry(
    file: &ElfFile,
    program: Program,
    function: &str,
    address: u64,
    call: Option<Call>,
) -> Result<Placed, TraceError> {
    let (offset, emulated) = place::placement(file.bytes_at(address), address, needs(program));
    Ok(Placed {
        program,
        function: function.to_string(),
        offset,
        file_offset: file_offset(file, address + offset, function)?,
        emulated,
        call,
        depth: 0,
    })
}

fn file_offset(file: &ElfFile, address: u64, function: &str) -> Result<u64, TraceError> {
    file.file_offset(address)
        .ok_or_else(|| TraceError::NotLoaded {
            function: function.to_string(),
        })
}
