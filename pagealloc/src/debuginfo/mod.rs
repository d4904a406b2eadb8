//! The debug info of a library: found, fetched, cached, and its DWARF read. Generic: what is
//! read from it (glibc's malloc layout, for pagealloc: `crate::glibc::debug`) is a [`Reader`]'s.
//!
//! Given the host path of a library, [`load`] finds its separate debug info (explicit file,
//! embedded DWARF, `/usr/lib/debug/.build-id`, `.gnu_debuglink`, then debuginfod), has the
//! reader read it, and caches the result per build-id as JSON so that later runs do not parse
//! DWARF again. dwz supplementary files (`.gnu_debugaltlink`, as in Fedora's debuginfo) are
//! followed.
//!
//! Submodules: `elf` reads the facts the search needs from the library's ELF, `locate` finds
//! the debug file, `dwarf` extracts struct layouts and symbols, `inlined` finds where a
//! function was inlined, `cache` stores what was read and `debuginfod` downloads debug files
//! over HTTP.
mod cache;
mod debuginfod;
pub(crate) mod dwarf;
pub(crate) mod elf;
pub(crate) mod inlined;
pub(crate) mod locate;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use dwarf::{Want, Wanted};
pub use elf::Library;

/// What a caller reads from a library's debug info: this module finds the debug file (and its
/// dwz supplement), the reader reads it.
pub trait Reader {
    /// What is read, cached per build-id as JSON.
    type Layout: Clone + Serialize + DeserializeOwned;
    /// Whether the library itself is the kind this reads (checked before any search).
    fn check(&self, library: &Library) -> Result<(), DebugInfoError>;
    /// Reads `debug` (which may be the library's own file) of `library`.
    fn read(&self, library: &Library, debug: &DebugFile) -> Result<Self::Layout, DebugInfoError>;
}

/// A debug file found for a library, parsed.
pub struct DebugFile<'d> {
    pub path: &'d Path,
    pub object: &'d object::File<'d>,
    /// The dwz supplementary file its `.gnu_debugaltlink` names, if it names one.
    pub supplement: Option<&'d object::File<'d>>,
}

/// The debug info of one library and what was read from it.
#[derive(Clone, Debug, PartialEq)]
pub struct DebugInfo<L> {
    /// Lowercase hex of the GNU build-id note of the library (empty if it has none).
    pub build_id: String,
    /// Where the DWARF came from (the library itself if it carries DWARF). When the layout
    /// came from the cache, the file it was originally extracted from.
    pub debug_file: PathBuf,
    pub layout: L,
    /// True if `layout` was read from the cache (no DWARF was parsed).
    pub from_cache: bool,
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
    /// `--debug-dir`: search the extra debug dirs alone, neither `/usr/lib/debug` (the
    /// system's, and the process root's) nor the library's own directory.
    pub only_extra_debug_dirs: bool,
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

/// Locates the debug info of `library` (a host path) and has `reader` read it, caching what
/// it read per build-id.
pub fn load<R: Reader>(
    library: &Path,
    options: &DebugOptions,
    reader: &R,
) -> Result<DebugInfo<R::Layout>, DebugInfoError> {
    let library = Library::read(library)?;
    reader.check(&library)?;
    let build_id = library.build_id_hex();
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
        log::debug!("layout of {} from cache", library.path.display());
        return Ok(DebugInfo {
            build_id,
            debug_file: hit.debug_file,
            layout: hit.layout,
            from_cache: true,
        });
    }

    let (debug_file, layout) =
        locate::Finder::new(&library, reader, options, cache_dir.as_deref()).find_and_read()?;
    if let Some(cache) = &layout_cache {
        cache.write(&debug_file, &layout);
    }
    Ok(DebugInfo {
        build_id,
        debug_file,
        layout,
        from_cache: false,
    })
}

/// What `reader` reads of `library` from `debug_file`, with no search and no cache (except for
/// a dwz supplementary file the debug file refers to, looked for as [`load`] does). A debug
/// file whose build-id differs from the library's is refused.
pub fn load_uncached<R: Reader>(
    library: &Path,
    debug_file: &Path,
    reader: &R,
) -> Result<R::Layout, DebugInfoError> {
    let library = Library::read(library)?;
    reader.check(&library)?;
    let options = DebugOptions::default();
    let cache_dir = cache::resolve_dir(None);
    let mut finder = locate::Finder::new(&library, reader, &options, cache_dir.as_deref());
    finder.explicit(debug_file).map(|(_, layout)| layout)
}
