//! The layout of glibc's malloc, read from the DWARF debug info of the target's C library.
//!
//! A heap walker must know where `struct malloc_state` keeps its bins, how big a
//! `heap_info` is, and where `main_arena` and `mp_` live: none of that is fixed across glibc
//! versions, builds or architectures, so none of it is hard-coded here. Given the host path of
//! a process's `libc.so.6`, [`load`] finds its separate debug info (explicit file, embedded
//! DWARF, `/usr/lib/debug/.build-id`, `.gnu_debuglink`, then debuginfod), extracts the struct
//! layouts and the link-time addresses of the static symbols, and caches the result per
//! build-id as JSON so that later runs do not parse DWARF again. dwz supplementary files
//! (`.gnu_debugaltlink`, as in Fedora's debuginfo) are followed.
//!
//! Submodules: `elf` reads the facts pagealloc needs from the libc ELF, `locate` finds the
//! debug file, `dwarf` extracts the layouts, `cache` stores them and `debuginfod` downloads
//! debug files over HTTP.
mod cache;
mod debuginfod;
mod dwarf;
mod elf;
mod inlined;
mod locate;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The debug info of one libc and what was read from it.
#[derive(Clone, Debug, PartialEq)]
pub struct LibcDebugInfo {
    /// Lowercase hex of the GNU build-id note of the libc (empty if it has none).
    pub build_id: String,
    /// Where the DWARF came from (the libc itself if it carries DWARF). When the layout came
    /// from the cache, the file it was originally extracted from.
    pub debug_file: PathBuf,
    pub layout: MallocLayout,
    /// True if `layout` was read from the cache (no DWARF was parsed).
    pub from_cache: bool,
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

/// One C struct as laid out by the compiler that built the libc.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StructLayout {
    pub name: String,
    pub size: u64,
    /// In declaration order. Members of anonymous struct/union members appear in their place,
    /// with offsets relative to this struct, as C lets code name them.
    pub fields: Vec<Field>,
}

/// One member of a struct.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Field {
    pub name: String,
    pub offset: u64,
    /// Total byte size of the member (the whole array for arrays).
    pub size: u64,
    /// Outermost dimension if the member is an array (`bins[254]` -> 254), None otherwise.
    pub array_len: Option<u64>,
    /// Size of one element for arrays, equal to `size` otherwise.
    pub element_size: u64,
}

impl StructLayout {
    /// The member called `name`; the error names the struct and the member.
    pub fn field(&self, name: &str) -> Result<&Field, DebugInfoError> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| DebugInfoError::MissingField {
                strukt: self.name.clone(),
                field: name.to_string(),
            })
    }

    /// The byte offset of member `name`.
    pub fn offset(&self, name: &str) -> Result<u64, DebugInfoError> {
        self.field(name).map(|f| f.offset)
    }

    /// Whether the struct has a member called `name` (members come and go between versions).
    pub fn has(&self, name: &str) -> bool {
        self.fields.iter().any(|f| f.name == name)
    }
}

/// How [`load`] looks for debug info and where it caches what it read.
#[derive(Clone, Debug, Default)]
pub struct DebugOptions {
    /// `--debug-file`: use this file and skip the search and the layout cache. Nothing but its
    /// build-id ties it to the libc, so what is read from it is never cached.
    pub debug_file: Option<PathBuf>,
    /// None: `$XDG_CACHE_HOME/pagealloc`, else `$HOME/.cache/pagealloc` if `$HOME` exists, else
    /// no cache. Layouts are stored as
    /// `<cache>/layouts/<build-id>.json`, debuginfod downloads as
    /// `<cache>/debuginfod/<build-id>.debug`.
    pub cache_dir: Option<PathBuf>,
    /// False: neither read nor write the layout cache. (Debug files downloaded from debuginfod
    /// are still kept and reused: they are the download's destination, not derived data.)
    pub use_cache: bool,
    /// Searched before `/usr/lib/debug`, each as `<dir>/.build-id/xx/rest.debug` and
    /// `<dir>/<debuglink name>`.
    pub extra_debug_dirs: Vec<PathBuf>,
    /// debuginfod servers. None: the space-separated `DEBUGINFOD_URLS` environment variable.
    /// `Some(vec![])` disables debuginfod.
    pub debuginfod_urls: Option<Vec<String>>,
    /// Connect, response and per-read timeout of debuginfod requests. None: 30 s.
    pub debuginfod_timeout: Option<Duration>,
}

/// What to tell a user whose debug info is missing.
pub const HOW_TO_GET_DEBUG_INFO: &str = "install the debug symbols: on Debian/Ubuntu \
     `apt-get install libc6-dbg`, on Fedora `debuginfo-install glibc`, or set DEBUGINFOD_URLS \
     (e.g. DEBUGINFOD_URLS=https://debuginfod.debian.net); or name the file with --debug-file";

#[derive(Debug, thiserror::Error)]
pub enum DebugInfoError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an ELF file pagealloc can read: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    /// `--debug-file` names a file that holds no usable debug info: missing, unreadable, not
    /// ELF, or stripped.
    #[error(
        "the debug file {} cannot be used: {reason}. To read glibc's heap, {HOW_TO_GET_DEBUG_INFO}",
        path.display()
    )]
    UnusableDebugFile { path: PathBuf, reason: String },
    #[error(
        "{} has no GNU build-id note, so its debug info cannot be looked up by build-id, and \
         none was found through .gnu_debuglink{}; pass the debug file with --debug-file",
        libc.display(), tried_list(tried)
    )]
    NoBuildId { libc: PathBuf, tried: Vec<PathBuf> },
    #[error("{} is not glibc: {reason}", path.display())]
    NotGlibc { path: PathBuf, reason: String },
    #[error("{}", no_debug_info_message(libc, build_id, tried, notes))]
    NoDebugInfo {
        libc: PathBuf,
        build_id: String,
        /// Every file looked at, in order.
        tried: Vec<PathBuf>,
        /// Why candidates that exist were rejected, and what debuginfod said.
        notes: Vec<String>,
    },
    #[error(
        "debug file {} has build-id {found}, but the libc has {expected}: it belongs to another \
         build of glibc",
        file.display()
    )]
    BuildIdMismatch {
        file: PathBuf,
        expected: String,
        found: String,
    },
    #[error("malformed DWARF in {}: {message}", path.display())]
    Dwarf { path: PathBuf, message: String },
    #[error(
        "the debug info has no complete definition of struct {name}: it is not glibc's, or \
         glibc was built without it"
    )]
    MissingStruct { name: String },
    #[error("struct {strukt} has no member {field} in this glibc's debug info")]
    MissingField { strukt: String, field: String },
    #[error("the debug info's symbol table has no symbol {name}: it is not glibc's malloc")]
    MissingSymbol { name: String },
    #[error(
        "downloading the debug info of build-id {build_id} from {url} failed: {reason}{}; \
         otherwise {HOW_TO_GET_DEBUG_INFO}",
        tried_list(tried)
    )]
    Debuginfod {
        build_id: String,
        url: String,
        reason: String,
        /// Local files looked at before debuginfod.
        tried: Vec<PathBuf>,
    },
}

impl DebugInfoError {
    /// True when the libc is fine but its debug info could not be had (`NoDebugInfo`, a
    /// debuginfod download that failed with nothing found locally, or a `--debug-file` without
    /// debug info): installing the debug symbols fixes it. The CLI maps it to its own exit code.
    pub fn is_missing_debug_info(&self) -> bool {
        matches!(
            self,
            DebugInfoError::NoDebugInfo { .. }
                | DebugInfoError::Debuginfod { .. }
                | DebugInfoError::UnusableDebugFile { .. }
        )
    }

    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        DebugInfoError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

fn tried_list(tried: &[PathBuf]) -> String {
    if tried.is_empty() {
        return String::new();
    }
    let mut s = String::from(" (looked at ");
    for (i, p) in tried.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = write!(s, "{}", p.display());
    }
    s.push(')');
    s
}

fn no_debug_info_message(
    libc: &Path,
    build_id: &str,
    tried: &[PathBuf],
    notes: &[String],
) -> String {
    let mut s = format!(
        "no debug info found for {} (build-id {build_id}){}",
        libc.display(),
        tried_list(tried)
    );
    for note in notes {
        let _ = write!(s, "; {note}");
    }
    let _ = write!(s, ". To read glibc's heap, {HOW_TO_GET_DEBUG_INFO}");
    s
}

/// Locate the debug info of `libc` (a host path), read or compute the layout, caching it per
/// build-id.
pub fn load(libc: &Path, options: &DebugOptions) -> Result<LibcDebugInfo, DebugInfoError> {
    let facts = elf::LibcFacts::read(libc)?;
    facts.check_glibc()?;
    let build_id = facts.build_id_hex();
    let cache_dir = cache::resolve_dir(options.cache_dir.as_deref());

    // Only layouts from files found by their build-id or debug link are cached: an explicit
    // debug file may be any file that carries the build-id, and a layout from it would be
    // used by every later run.
    let layout_cache = match (&cache_dir, &options.debug_file) {
        (Some(dir), None) if options.use_cache && !build_id.is_empty() => {
            Some(cache::LayoutCache::new(dir, &build_id))
        }
        _ => None,
    };
    let hit = layout_cache.as_ref().and_then(cache::LayoutCache::read);
    if let Some(hit) = hit {
        log::debug!("malloc layout of {} from cache", libc.display());
        return Ok(LibcDebugInfo {
            build_id,
            debug_file: hit.debug_file,
            layout: hit.layout,
            from_cache: true,
        });
    }

    let (debug_file, layout) =
        locate::Finder::new(&facts, options, cache_dir.as_deref()).find_and_extract()?;
    if let Some(cache) = &layout_cache {
        cache.write(&debug_file, &layout);
    }
    Ok(LibcDebugInfo {
        build_id,
        debug_file,
        layout,
        from_cache: false,
    })
}

/// The layout of `libc` read from `debug_file`, with no search and no cache (except for a dwz
/// supplementary file the debug file refers to, looked for as [`load`] does). A debug file
/// whose build-id differs from the libc's is refused.
pub fn load_uncached(libc: &Path, debug_file: &Path) -> Result<MallocLayout, DebugInfoError> {
    let facts = elf::LibcFacts::read(libc)?;
    facts.check_glibc()?;
    let options = DebugOptions::default();
    let cache_dir = cache::resolve_dir(None);
    let mut finder = locate::Finder::new(&facts, &options, cache_dir.as_deref());
    finder.explicit(debug_file).map(|(_, layout)| layout)
}
