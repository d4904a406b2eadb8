//! glibc's malloc as its debug info describes it: the struct layouts and the link-time
//! addresses of malloc's static variables and of the internals live mode probes, read through
//! [`crate::debuginfo`] (which finds, fetches and caches the debug file) and cached per
//! build-id.
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::identity::{self, SYMBOLS, TCACHE_INIT, WANTED, is_malloc_unit_name};
use crate::debuginfo::{
    self, DebugFile, DebugInfo, DebugInfoError, DebugOptions, Library, StructLayout, dwarf, inlined,
};

/// Reads [`MallocLayout`]s for [`debuginfo::load`].
pub(crate) struct MallocReader;

impl debuginfo::Reader for MallocReader {
    type Layout = MallocLayout;

    fn check(&self, library: &Library) -> Result<(), DebugInfoError> {
        identity::check_elf(&library.object()?).map_err(|reason| DebugInfoError::NotGlibc {
            path: library.path.clone(),
            reason,
        })
    }

    fn read(&self, library: &Library, debug: &DebugFile) -> Result<MallocLayout, DebugInfoError> {
        extract_layout(library, debug)
    }
}

/// Locates the debug info of `libc` (a host path) and reads malloc's layout from it, or from
/// the cache.
pub fn load(
    libc: &Path,
    options: &DebugOptions,
) -> Result<DebugInfo<MallocLayout>, DebugInfoError> {
    debuginfo::load(libc, options, &MallocReader)
}

/// The layout of `libc` read from `debug_file`, with no search and no cache (see
/// [`debuginfo::load_uncached`]).
pub fn load_uncached(libc: &Path, debug_file: &Path) -> Result<MallocLayout, DebugInfoError> {
    debuginfo::load_uncached(libc, debug_file, &MallocReader)
}

/// Everything a heap walker needs to know about one build of glibc's malloc.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MallocLayout {
    /// The glibc release, e.g. "2.36", from the banner string in the libc's `.rodata`.
    pub glibc_version: Option<String>,
    pub malloc_state: StructLayout,
    pub malloc_chunk: StructLayout,
    pub heap_info: StructLayout,
    pub malloc_par: StructLayout,
    /// Absent in glibc built without tcache (before 2.26, or `--disable-experimental-malloc`).
    pub tcache_perthread_struct: Option<StructLayout>,
    pub tcache_entry: Option<StructLayout>,
    pub symbols: Symbols,
}

/// Link-time virtual addresses (`st_value`) in the libc ELF: add the load bias
/// (runtime address of the first `PT_LOAD` minus `first_load_vaddr`) to get runtime addresses.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Symbols {
    pub main_arena: u64,
    pub mp_: u64,
    /// The tcache double-free key (glibc >= 2.34).
    pub tcache_key: Option<u64>,
    /// `__malloc_arena_thread_freeres`: an exiting thread gives its tcache back in it.
    pub thread_freeres: Option<u64>,
    /// `_int_malloc`: where `tcache_init` gets a new thread's tcache.
    pub int_malloc: Option<u64>,
    /// The code of `tcache_init` (inlined where malloc starts a thread's tcache), as link-time
    /// address ranges.
    pub tcache_init: Vec<(u64, u64)>,
    /// `p_vaddr` of the libc's first `PT_LOAD` segment.
    pub first_load_vaddr: u64,
}

/// The version in the libc's banner ("GNU C Library ... version 2.36."), if it has one.
pub(super) fn banner(facts: &Library) -> Option<String> {
    use object::{Object, ObjectSection};
    let obj = facts.object().ok()?;
    let rodata = obj.section_by_name(".rodata")?;
    identity::banner_version(rodata.data().ok()?)
}

/// The layout of the libc `facts`, from its debug file `debug` (which may be the libc itself).
fn extract_layout(facts: &Library, debug: &DebugFile) -> Result<MallocLayout, DebugInfoError> {
    let (path, obj) = (debug.path, debug.object);
    // Symbols first: they are cheap, and their absence says "not glibc's malloc" at once.
    let syms = find_symbols(obj, facts)?;
    let mut structs = dwarf::extract_structs(obj, debug.supplement, &WANTED).map_err(|e| {
        DebugInfoError::Dwarf {
            path: path.to_path_buf(),
            message: e.0,
        }
    })?;
    let mut take = |name: &str| {
        structs
            .remove(name)
            .ok_or_else(|| DebugInfoError::MissingStruct {
                name: name.to_string(),
            })
    };
    let mut symbols = syms.symbols;
    // Only live mode needs it, and it does without: not finding it is no error.
    symbols.tcache_init =
        inlined::ranges(obj, TCACHE_INIT, is_malloc_unit_name).unwrap_or_else(|e| {
            log::debug!(
                "tcache_init's code not found in {}: {}",
                path.display(),
                e.0
            );
            Vec::new()
        });
    let glibc_version = banner(facts).or_else(|| {
        syms.libc_version
            .and_then(|addr| facts.c_string_at(addr))
            .filter(|v| v.starts_with(|c: char| c.is_ascii_digit()))
    });
    Ok(MallocLayout {
        glibc_version,
        malloc_state: take("malloc_state")?,
        malloc_chunk: take("malloc_chunk")?,
        heap_info: take("heap_info")?,
        malloc_par: take("malloc_par")?,
        tcache_perthread_struct: take("tcache_perthread_struct").ok(),
        tcache_entry: take("tcache_entry").ok(),
        symbols,
    })
}

struct FoundSymbols {
    symbols: Symbols,
    /// Address of `__libc_version`, a fallback for the version banner.
    libc_version: Option<u64>,
}

/// The [`SYMBOLS`] from the debug file's `.symtab`, falling back to the libc's own `.symtab` if
/// it was not stripped.
fn find_symbols(obj: &object::File<'_>, facts: &Library) -> Result<FoundSymbols, DebugInfoError> {
    let mut found: [Option<u64>; SYMBOLS.len()] = [None; SYMBOLS.len()];
    dwarf::scan_symbols(obj, &SYMBOLS, &mut found);
    if (found[0].is_none() || found[1].is_none())
        && let Ok(libc) = facts.object()
    {
        dwarf::scan_symbols(&libc, &SYMBOLS, &mut found);
    }
    let missing = |name: &str| DebugInfoError::MissingSymbol {
        name: name.to_string(),
    };
    Ok(FoundSymbols {
        symbols: Symbols {
            main_arena: found[0].ok_or_else(|| missing("main_arena"))?,
            mp_: found[1].ok_or_else(|| missing("mp_"))?,
            tcache_key: found[2],
            thread_freeres: found[4],
            int_malloc: found[5],
            tcache_init: Vec::new(),
            first_load_vaddr: facts.first_load_vaddr,
        },
        libc_version: found[3],
    })
}
