//! Layouts cached per build-id as `<cache>/layouts/<build-id>.json`.
//!
//! A build-id names one build of the libc, so its layout never changes: reading it back is
//! always right. A cache file that cannot be read or parsed, or that an older pagealloc wrote
//! in another format, is ignored (and rewritten): the cache can never make a run fail.
use std::env;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bump when what is extracted changes, so that old cache files are recomputed.
const FORMAT: u32 = 3;

/// `explicit`, else `$XDG_CACHE_HOME/pagealloc`, else `$HOME/.cache/pagealloc` when `$HOME` is
/// a directory: a cache is no reason to create a home.
pub(crate) fn resolve_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = explicit {
        return Some(dir.to_path_buf());
    }
    let absolute = |var: &str| {
        env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = absolute("XDG_CACHE_HOME") {
        return Some(xdg.join("pagealloc"));
    }
    let home = absolute("HOME")?;
    if !home.is_dir() {
        log::debug!(
            "no layout cache: HOME ({}) is not a directory",
            home.display()
        );
        return None;
    }
    Some(home.join(".cache").join("pagealloc"))
}

/// What a cache file holds: the layout's fields at top level, and where it came from.
#[derive(Serialize, Deserialize)]
pub(crate) struct Entry<L> {
    pub cache_format: u32,
    pub build_id: String,
    pub debug_file: PathBuf,
    #[serde(flatten)]
    pub layout: L,
}

pub(crate) struct LayoutCache {
    path: PathBuf,
    build_id: String,
}

impl LayoutCache {
    pub fn new(dir: &Path, build_id: &str) -> Self {
        LayoutCache {
            path: dir.join("layouts").join(format!("{build_id}.json")),
            build_id: build_id.to_string(),
        }
    }

    /// The cached entry, or None if there is none usable.
    pub fn read<L: DeserializeOwned>(&self) -> Option<Entry<L>> {
        let text = fs::read(&self.path).ok()?;
        match serde_json::from_slice::<Entry<L>>(&text) {
            Ok(entry) if entry.cache_format == FORMAT && entry.build_id == self.build_id => {
                Some(entry)
            }
            Ok(_) => {
                log::info!("ignoring {}: other format or build-id", self.path.display());
                None
            }
            Err(e) => {
                log::warn!(
                    "ignoring unreadable cache file {}: {e}",
                    self.path.display()
                );
                None
            }
        }
    }

    /// Stores the layout, atomically (temporary file, then rename). Failures are only logged.
    pub fn write<L: Serialize>(&self, debug_file: &Path, layout: &L) {
        let entry = Entry {
            cache_format: FORMAT,
            build_id: self.build_id.clone(),
            // Read back by runs started elsewhere: a relative path would name another file.
            debug_file: std::path::absolute(debug_file).unwrap_or_else(|_| debug_file.into()),
            layout,
        };
        if let Err(e) = write_atomically(&self.path, |f| {
            serde_json::to_writer_pretty(&mut *f, &entry)?;
            f.write_all(b"\n")
        }) {
            log::warn!("could not write cache file {}: {e}", self.path.display());
        }
    }
}

/// Writes `path` through a temporary file in the same directory and a rename, so that readers
/// see the old file or the whole new one.
pub(crate) fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = temp_sibling(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A name next to `path` that no other writer (process or thread) uses.
pub(crate) fn temp_sibling(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}.{nanos}.{n}", std::process::id()));
    path.with_file_name(name)
}
