//! malloc's layout without debug info: the structs from the table of known versions
//! ([`super::table`]), the addresses of malloc's variables from the code of the functions glibc
//! exports that use them ([`super::code`]). Each address is found by a pattern in every function
//! named for it, and those must agree; what was found is checked again at run time
//! ([`verify`]) before a heap map is shown.
//!
//! The patterns (x86-64):
//! - `main_arena`: the address a `lea` puts in a register that is compared with a word read at
//!   `offsetof(malloc_state, next)`: the end of the walk of the arena ring, `ar_ptr =
//!   ar_ptr->next; while (ar_ptr != &main_arena)`, in `mallinfo2`, `malloc_stats` and
//!   `malloc_trim`.
//! - `mp_`: the one base from which a function reads both `n_mmaps` (4 bytes) and `mmapped_mem`
//!   (8) at their offsets in `malloc_par`, in `mallinfo2` and the functions it calls; and both
//!   `max_n_mmaps` and `max_mmapped_mem`, in `malloc_stats`.
//! - `_int_malloc`: what `malloc` calls with `&main_arena` as its first argument (the
//!   single-thread path, `_int_malloc (&main_arena, bytes)`).
//! - where `tcache_init` gets a new thread's tcache: the calls of `_int_malloc` with
//!   `sizeof (tcache_perthread_struct)` as the size, in `malloc` and the functions it calls.
//! - `tcache_key`: the variable whose word `_int_malloc` stores in a chunk's `tcache_entry.key`
//!   (`tcache_put`), in `.bss`.
//!
//! `__malloc_arena_thread_freeres` is neither exported nor called from an exported function
//! that says which call it is: without debug info, live mode does not see an exiting thread's
//! tcache flush (its chunks show as live until the next walk).
use std::path::{Path, PathBuf};

use object::Object;

use super::code::{self, Fact, Held};
use super::debug::{self, MallocLayout, Symbols};
use super::layout::{Libc, Offsets};
use super::table::LayoutTable;
use crate::debuginfo::{DebugInfoError, Library, Reader};
use crate::objects::{ElfFile, ObjectError, Objects};
use crate::proc::memory::Memory;
use crate::state::heap::HeapMap;
use crate::state::pages::Mapping;

/// The most arenas the check follows along the ring (glibc makes at most 8 per CPU).
const MAX_RING: usize = 4096;

/// Why malloc's layout could not be derived from the library's code.
#[derive(Debug, thiserror::Error)]
pub enum DeriveError {
    #[error(transparent)]
    Library(#[from] DebugInfoError),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("{} is a {architecture} library: its code is read on x86-64 only", path.display())]
    Architecture { path: PathBuf, architecture: String },
    #[error("{} has no glibc version banner: its malloc layout is not known", path.display())]
    NoVersion { path: PathBuf },
    #[error("{0}")]
    UnknownVersion(String),
    #[error("{} exports no {function}: it is not a glibc whose code pagealloc can read", path.display())]
    NotExported {
        path: PathBuf,
        function: &'static str,
    },
    #[error(
        "the code of {function} does not match the pattern that finds {variable} ({found}): \
         it is not a glibc build pagealloc can read without debug info"
    )]
    NoMatch {
        variable: &'static str,
        function: String,
        found: String,
    },
    #[error("the functions that use {variable} disagree on where it is ({found})")]
    Disagree {
        variable: &'static str,
        found: String,
    },
}

/// malloc's layout derived from a libc's code, and the library's build-id.
#[derive(Clone, Debug)]
pub struct Derived {
    pub layout: MallocLayout,
    pub build_id: String,
}

/// malloc's layout of the libc at `path` (a host path), derived from its code and the table.
pub fn derive(path: &Path) -> Result<Derived, DeriveError> {
    let library = Library::read(path)?;
    debug::MallocReader.check(&library)?;
    let architecture = library.object()?.architecture();
    if architecture != object::Architecture::X86_64 {
        return Err(DeriveError::Architecture {
            path: path.to_path_buf(),
            architecture: format!("{architecture:?}"),
        });
    }
    let version = debug::banner(&library).ok_or_else(|| DeriveError::NoVersion {
        path: path.to_path_buf(),
    })?;
    let table = LayoutTable::builtin().map_err(DeriveError::UnknownVersion)?;
    let structs = table
        .lookup(&version)
        .map_err(DeriveError::UnknownVersion)?
        .clone();
    let mut layout = MallocLayout {
        glibc_version: Some(version.clone()),
        malloc_state: structs.malloc_state,
        malloc_chunk: structs.malloc_chunk,
        heap_info: structs.heap_info,
        malloc_par: structs.malloc_par,
        tcache_perthread_struct: structs.tcache_perthread_struct,
        tcache_entry: structs.tcache_entry,
        symbols: Symbols {
            main_arena: 0,
            mp_: 0,
            tcache_key: None,
            thread_freeres: None,
            int_malloc: None,
            tcache_init: Vec::new(),
            first_load_vaddr: library.first_load_vaddr,
        },
    };
    let elf = Objects::shared().open(path)?;
    let code = Code { elf: &elf, path };
    layout.symbols = code.symbols(&layout)?;
    log::info!(
        "{}: no debug info, malloc's layout derived from the code (glibc {version}); live mode \
         does not see an exiting thread's tcache flush without it",
        path.display()
    );
    Ok(Derived {
        layout,
        build_id: library.build_id_hex(),
    })
}

/// The library's code, read function by function.
struct Code<'e> {
    elf: &'e ElfFile,
    path: &'e Path,
}

impl Code<'_> {
    /// The facts of the exported function `name`.
    fn exported(&self, name: &'static str) -> Result<Vec<Fact>, DeriveError> {
        let symbol = self
            .elf
            .dynamic_symbol(name)
            .ok_or_else(|| DeriveError::NotExported {
                path: self.path.to_path_buf(),
                function: name,
            })?;
        let size = (symbol.size > 0).then_some(symbol.size);
        Ok(code::facts(
            self.elf.bytes_at(symbol.address),
            symbol.address,
            size,
        ))
    }

    /// The facts of the exported function `name` and of every function it calls directly.
    fn exported_and_callees(&self, name: &'static str) -> Result<Vec<Fact>, DeriveError> {
        let mut facts = self.exported(name)?;
        for callee in code::callees(&facts) {
            facts.extend(code::facts(self.elf.bytes_at(callee), callee, None));
        }
        Ok(facts)
    }

    fn symbols(&self, layout: &MallocLayout) -> Result<Symbols, DeriveError> {
        let offsets = Offsets::new(layout)?;
        let ring = |facts: &[Fact]| {
            let next = offsets.state_next as i64;
            (facts.iter())
                .filter_map(|fact| match *fact {
                    Fact::Compares(Some(Held::Address(a)), Some(Held::LoadedAt(d)))
                    | Fact::Compares(Some(Held::LoadedAt(d)), Some(Held::Address(a)))
                        if d == next =>
                    {
                        Some(a)
                    }
                    _ => None,
                })
                .collect()
        };
        let main_arena = agreed(
            "main_arena",
            [
                ("mallinfo2", ring(&self.exported("mallinfo2")?)),
                ("malloc_stats", ring(&self.exported("malloc_stats")?)),
                ("malloc_trim", ring(&self.exported("malloc_trim")?)),
            ],
        )?;

        let par = &layout.malloc_par;
        let pair = |facts: &[Fact], int: &str, size: &str| -> Result<Vec<u64>, DeriveError> {
            let (int, size) = (par.offset(int)?, par.offset(size)?);
            let reads = |bytes| {
                (facts.iter()).filter_map(move |fact| match *fact {
                    Fact::Reads { address, bytes: b } if b == bytes => Some(address),
                    _ => None,
                })
            };
            Ok(reads(4)
                .filter_map(|at| at.checked_sub(int))
                .filter(|&base| reads(8).any(|at| at == base + size))
                .collect())
        };
        let mp = agreed(
            "mp_",
            [
                (
                    "mallinfo2",
                    pair(
                        &self.exported_and_callees("mallinfo2")?,
                        "n_mmaps",
                        "mmapped_mem",
                    )?,
                ),
                (
                    "malloc_stats",
                    pair(
                        &self.exported("malloc_stats")?,
                        "max_n_mmaps",
                        "max_mmapped_mem",
                    )?,
                ),
            ],
        )?;

        let malloc = self.exported("malloc")?;
        let int_malloc = agreed(
            "_int_malloc",
            [(
                "malloc",
                (malloc.iter())
                    .filter_map(|fact| match *fact {
                        Fact::Calls {
                            target,
                            first: Some(Held::Address(a)),
                            ..
                        } if a == main_arena => Some(target),
                        _ => None,
                    })
                    .collect(),
            )],
        )?;

        let tcache_size = layout.tcache_perthread_struct.as_ref().map(|t| t.size);
        let tcache_init: Vec<(u64, u64)> = (self.exported_and_callees("malloc")?.iter())
            .filter_map(|fact| match *fact {
                Fact::Calls {
                    at,
                    next,
                    target,
                    second: Some(Held::Constant(size)),
                    ..
                } if target == int_malloc && Some(size) == tcache_size => Some((at, next)),
                _ => None,
            })
            .collect();
        if tcache_init.is_empty() {
            log::info!(
                "no call of _int_malloc for a thread's tcache found in malloc's code: live mode \
                 does not see a new thread's tcache without debug info"
            );
        }

        let tcache_key = self.tcache_key(layout, &offsets, int_malloc)?;
        Ok(Symbols {
            main_arena,
            mp_: mp,
            tcache_key,
            thread_freeres: None,
            int_malloc: Some(int_malloc),
            tcache_init,
            first_load_vaddr: layout.symbols.first_load_vaddr,
        })
    }

    /// `tcache_key` (glibc ≥ 2.34; before, `tcache_entry.key` holds the tcache's address).
    fn tcache_key(
        &self,
        layout: &MallocLayout,
        offsets: &Offsets,
        int_malloc: u64,
    ) -> Result<Option<u64>, DeriveError> {
        let (Some(key), true) = (offsets.tcache_key, has_tcache_key(layout)) else {
            return Ok(None);
        };
        // The store goes through the entry (the user pointer) or through the chunk.
        let displacements = [key as i64, (key + offsets.chunk_fd) as i64];
        let bss = self.elf.section_address_range(".bss");
        let facts = code::facts(self.elf.bytes_at(int_malloc), int_malloc, None);
        let stored = (facts.iter())
            .filter_map(|fact| match *fact {
                Fact::Stores {
                    displacement,
                    value: Some(Held::ValueAt(a)),
                } if displacements.contains(&displacement) => Some(a),
                _ => None,
            })
            .filter(|a| bss.as_ref().is_some_and(|bss| bss.contains(a)))
            .collect();
        agreed("tcache_key", [("_int_malloc", stored)]).map(Some)
    }
}

/// glibc 2.34 made `tcache_key` a random variable of its own.
fn has_tcache_key(layout: &MallocLayout) -> bool {
    let version = layout.glibc_version.as_deref().and_then(|v| {
        let (major, minor) = v.split_once('.')?;
        Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
    });
    version.is_some_and(|v| v >= (2, 34))
}

/// The one address every function found for `variable` (each must find exactly one).
fn agreed<const N: usize>(
    variable: &'static str,
    found: [(&str, Vec<u64>); N],
) -> Result<u64, DeriveError> {
    let mut agreed: Option<u64> = None;
    for (function, mut addresses) in found {
        addresses.sort_unstable();
        addresses.dedup();
        let &[address] = addresses.as_slice() else {
            return Err(DeriveError::NoMatch {
                variable,
                function: function.to_string(),
                found: if addresses.is_empty() {
                    "nothing matched".to_string()
                } else {
                    format!("{} candidates", addresses.len())
                },
            });
        };
        if agreed.is_some_and(|a| a != address) {
            return Err(DeriveError::Disagree {
                variable,
                found: format!(
                    "{function} says {address:#x}, the others {:#x}",
                    agreed.unwrap_or(0)
                ),
            });
        }
        agreed = Some(address);
    }
    agreed.ok_or(DeriveError::NoMatch {
        variable,
        function: "no function".to_string(),
        found: "nothing matched".to_string(),
    })
}

/// Why a layout derived from the code was not trusted with a process's heap.
#[derive(Debug, thiserror::Error)]
#[error(
    "the malloc layout derived from the code (no debug info) failed its check on this process: \
     {0}; the page map alone is shown (install the C library's debug info for the heap map)"
)]
pub struct Unverified(pub String);

/// Checks what was derived against the process's heap, as just walked into `map`: the arena
/// ring returns to `main_arena`, `mp_.sbrk_base` lies in a mapping, each arena's top chunk ends
/// one of its heaps, and `mp_` counts the mmapped chunks found. A check that fails on a heap
/// that changed under the walk may pass on the next (the caller tells them apart).
pub fn verify(
    libc: &Libc,
    memory: &dyn Memory,
    mappings: &[Mapping],
    map: &HeapMap,
) -> Result<(), Unverified> {
    let o = &libc.offsets;
    let read = |address: u64, what: &str| {
        memory
            .read_u64(address)
            .map_err(|e| Unverified(format!("{what} at {address:#x} does not read ({e:?})")))
    };
    let mut arena = libc.main_arena;
    let mut ring = 0;
    loop {
        arena = read(arena + o.state_next, "an arena's next")?;
        ring += 1;
        if arena == libc.main_arena {
            break;
        }
        if ring >= MAX_RING {
            return Err(Unverified(format!(
                "the arena ring from main_arena {:#x} does not return to it within {MAX_RING} \
                 arenas",
                libc.main_arena
            )));
        }
    }
    if ring != map.arenas.len() {
        return Err(Unverified(format!(
            "the arena ring has {ring} arenas, the walk found {}",
            map.arenas.len()
        )));
    }
    let sbrk_base = read(libc.mp + o.mp_sbrk_base, "mp_.sbrk_base")?;
    let mapped = |address: u64| {
        mappings
            .iter()
            .any(|m| m.start <= address && address < m.end)
    };
    if sbrk_base != 0 && !mapped(sbrk_base) {
        return Err(Unverified(format!(
            "mp_.sbrk_base {sbrk_base:#x} is in no mapping"
        )));
    }
    for arena in &map.arenas {
        let top = super::arena_top(memory, o, arena.address).map_err(|e| {
            Unverified(format!(
                "the top of arena {:#x} does not read ({e:?})",
                arena.address
            ))
        })?;
        let end = top.top.saturating_add(top.top_size);
        if top.system_mem > 0 && !arena.heaps.iter().any(|h| h.end == end) {
            return Err(Unverified(format!(
                "the top chunk of arena {:#x} ({:#x}, {} bytes) ends none of its heaps",
                arena.address, top.top, top.top_size
            )));
        }
    }
    let n_mmaps = read(libc.mp + o.mp_n_mmaps, "mp_.n_mmaps")? & u64::from(u32::MAX);
    let mmapped_mem = read(libc.mp + o.mp_mmapped_mem, "mp_.mmapped_mem")?;
    if (n_mmaps, mmapped_mem) != (map.mmapped_chunks, map.mmapped_bytes) {
        return Err(Unverified(format!(
            "mp_ counts {n_mmaps} mmapped chunks of {mmapped_mem} bytes, the walk found {} of {}",
            map.mmapped_chunks, map.mmapped_bytes
        )));
    }
    Ok(())
}
