//! Finding the debug file of a libc, in order: the explicit `--debug-file`, the libc itself,
//! `<debug dir>/.build-id/xx/rest.debug`, `.gnu_debuglink`, then debuginfod.
//!
//! A candidate is used only if it is the libc's: same build-id (for build-id paths and
//! downloads; for debug links too when both files have one) or matching CRC (debug links).
//! Candidates that exist but do not match are noted and skipped.
//!
//! A debug file processed by dwz (Fedora's are) keeps the types it shares with other files in
//! a supplementary file named by its `.gnu_debugaltlink`; that one is looked for the same way
//! (at the name given, by build-id, then debuginfod) and must carry the build-id the link gives.
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use object::Object;

use super::debuginfod::{self, Failure};
use super::elf::{self, Library};
use super::{DebugFile, DebugInfoError, DebugOptions, Reader};
use crate::proc::DELETED;

/// The system's directory of separate debug info.
const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// How a candidate must prove it belongs to the libc.
#[derive(Clone, Copy)]
enum Check {
    /// Its build-id note equals the libc's.
    BuildId,
    /// Its CRC32 is the one in the libc's `.gnu_debuglink` (and its build-id, if both files
    /// have one, equals the libc's).
    Crc(u32),
}

/// One search for the debug file of one libc, with what it looked at and why it rejected it.
pub(crate) struct Finder<'f, R: Reader> {
    facts: &'f Library,
    reader: &'f R,
    options: &'f DebugOptions,
    cache_dir: Option<PathBuf>,
    /// `/proc/PID/root` if the libc was named through it.
    proc_root: Option<PathBuf>,
    /// The libc's path inside that root (or its absolute path).
    inner_path: PathBuf,
    /// The extra debug dirs, `/usr/lib/debug`, and the process root's `/usr/lib/debug`.
    debug_dirs: Vec<PathBuf>,
    libc_id: Option<(u64, u64)>,
    tried: Vec<PathBuf>,
    notes: Vec<String>,
    /// The first failure to extract from a file that did belong to the libc.
    extract_error: Option<DebugInfoError>,
    /// The first debuginfod failure other than "not found".
    debuginfod_failure: Option<(String, String)>,
    /// Where downloads go, once decided.
    store_dir: Option<Option<PathBuf>>,
}

/// The debug file, and what the reader read from it.
type Found<L> = (PathBuf, L);

impl<'f, R: Reader> Finder<'f, R> {
    pub fn new(
        facts: &'f Library,
        reader: &'f R,
        options: &'f DebugOptions,
        cache_dir: Option<&Path>,
    ) -> Self {
        let (proc_root, inner_path) = split_proc_root(&facts.path);
        let mut debug_dirs = options.extra_debug_dirs.clone();
        if !options.only_extra_debug_dirs {
            debug_dirs.push(PathBuf::from(SYSTEM_DEBUG_DIR));
            if let Some(root) = &proc_root {
                debug_dirs.push(root.join(SYSTEM_DEBUG_DIR.trim_start_matches('/')));
            }
        }
        Finder {
            facts,
            reader,
            options,
            cache_dir: cache_dir.map(Path::to_path_buf),
            proc_root,
            inner_path,
            debug_dirs,
            libc_id: fs::metadata(&facts.path).ok().map(|m| (m.dev(), m.ino())),
            tried: Vec::new(),
            notes: Vec::new(),
            extract_error: None,
            debuginfod_failure: None,
            store_dir: None,
        }
    }

    /// Searches in order and reads the first file that belongs to the library.
    pub fn find_and_read(mut self) -> Result<Found<R::Layout>, DebugInfoError> {
        if let Some(path) = &self.options.debug_file {
            return self.explicit(path);
        }
        let facts = self.facts;

        if facts.has_dwarf {
            match self.extract(&facts.path, &facts.data) {
                Ok(layout) => return Ok((facts.path.clone(), layout)),
                Err(e) => {
                    log::debug!(
                        "{} carries DWARF, but not malloc's: {e}",
                        facts.path.display()
                    );
                    self.tried.push(facts.path.clone());
                }
            }
        }

        let build_id = facts.build_id_hex();
        if build_id.len() > 2 {
            for dir in self.debug_dirs.clone() {
                let path = build_id_path(&dir, &build_id);
                if let Some(found) = self.try_candidate(&path, Check::BuildId) {
                    return Ok(found);
                }
            }
        }

        if let Some((name, crc)) = &facts.debuglink {
            for path in debuglink_candidates(
                OsStr::from_bytes(name),
                &facts.path,
                &self.inner_path,
                self.proc_root.as_deref(),
                self.options,
            ) {
                if let Some(found) = self.try_candidate(&path, Check::Crc(*crc)) {
                    return Ok(found);
                }
            }
        }

        if !build_id.is_empty()
            && let Some(found) =
                self.debuginfod(&build_id, |f, path| f.try_candidate(path, Check::BuildId))
        {
            return Ok(found);
        }
        Err(self.failure(build_id))
    }

    /// The error that ends a search that found nothing usable.
    fn failure(self, build_id: String) -> DebugInfoError {
        if let Some(e) = self.extract_error {
            return e;
        }
        if build_id.is_empty() {
            return DebugInfoError::NoBuildId {
                libc: self.facts.path.clone(),
                tried: self.tried,
            };
        }
        if let Some((url, reason)) = self.debuginfod_failure {
            return DebugInfoError::Debuginfod {
                build_id,
                url,
                reason,
                tried: self.tried,
            };
        }
        DebugInfoError::NoDebugInfo {
            libc: self.facts.path.clone(),
            build_id,
            tried: self.tried,
            notes: self.notes,
        }
    }

    /// `--debug-file`: used as is, unless its build-id says it belongs to another build.
    pub fn explicit(&mut self, path: &Path) -> Result<Found<R::Layout>, DebugInfoError> {
        let unusable = |reason: String| DebugInfoError::UnusableDebugFile {
            path: path.to_path_buf(),
            reason,
        };
        let data = fs::read(path).map_err(|e| unusable(e.to_string()))?;
        let obj = elf::parse(path, &data).map_err(|e| unusable(e.to_string()))?;
        if obj.section_by_name(".debug_info").is_none() {
            return Err(unusable(
                "it has no debug info (no .debug_info section): it is a stripped file, such as \
                 the libc itself, not the libc's debug file"
                    .into(),
            ));
        }
        match (&self.facts.build_id, elf::build_id(&obj)) {
            (Some(expected), Some(found)) if *expected != found => {
                return Err(DebugInfoError::BuildIdMismatch {
                    file: path.to_path_buf(),
                    expected: elf::hex(expected),
                    found: elf::hex(&found),
                });
            }
            (Some(_), None) => log::warn!(
                "{} has no build-id: cannot check that it belongs to {}",
                path.display(),
                self.facts.path.display()
            ),
            _ => {}
        }
        let layout = self.extract(path, &data)?;
        Ok((path.to_path_buf(), layout))
    }

    /// The layout from `path` if it exists, belongs to the libc and has malloc's DWARF.
    fn try_candidate(&mut self, path: &Path, check: Check) -> Option<Found<R::Layout>> {
        let expected = self.facts.build_id.clone();
        let data = self.read_candidate(path, expected.as_deref(), check)?;
        match self.extract(path, &data) {
            Ok(layout) => Some((path.to_path_buf(), layout)),
            Err(e) => {
                self.notes.push(format!("{}: {e}", path.display()));
                self.extract_error.get_or_insert(e);
                None
            }
        }
    }

    /// The bytes of `path` if it exists, is not the libc, and passes `check` against the
    /// build-id `expected`.
    fn read_candidate(
        &mut self,
        path: &Path,
        expected: Option<&[u8]>,
        check: Check,
    ) -> Option<Vec<u8>> {
        if self.tried.iter().any(|p| p == path) {
            return None;
        }
        self.tried.push(path.to_path_buf());
        let meta = fs::metadata(path).ok()?;
        if !meta.is_file() || Some((meta.dev(), meta.ino())) == self.libc_id {
            return None;
        }
        let data = match elf::read_file(path) {
            Ok(data) => data,
            Err(e) => {
                self.notes.push(e.to_string());
                return None;
            }
        };
        let found_id = match elf::parse(path, &data) {
            Ok(obj) => elf::build_id(&obj),
            Err(e) => {
                self.notes.push(e.to_string());
                return None;
            }
        };
        let mismatch = match (check, expected, found_id.as_deref()) {
            (_, Some(e), Some(f)) if e != f => Some(format!("its build-id is {}", elf::hex(f))),
            (Check::BuildId, _, None) => Some("it has no build-id".to_string()),
            (Check::Crc(want), _, _) => {
                let got = crc32fast::hash(&data);
                (got != want)
                    .then(|| format!("its CRC32 is {got:08x}, the debug link wants {want:08x}"))
            }
            _ => None,
        };
        if let Some(why) = mismatch {
            log::info!("skipping {}: {why}", path.display());
            self.notes.push(format!(
                "{} belongs to another build: {why}",
                path.display()
            ));
            return None;
        }
        Some(data)
    }

    /// Has the reader read the debug file `path`, with its dwz supplementary file if its
    /// `.gnu_debugaltlink` names one.
    fn extract(&mut self, path: &Path, data: &[u8]) -> Result<R::Layout, DebugInfoError> {
        let object = elf::parse(path, data)?;
        let altlink = object
            .gnu_debugaltlink()
            .ok()
            .flatten()
            .map(|(name, id)| (name.to_vec(), id.to_vec()));
        let read = |supplement| {
            let debug = DebugFile {
                path,
                object: &object,
                supplement,
            };
            self.reader.read(self.facts, &debug)
        };
        match altlink {
            None => read(None),
            Some((name, id)) => {
                let (sup_path, sup_data) = self.find_sup(path, &name, &id)?;
                log::debug!("dwz supplementary file {}", sup_path.display());
                let supplement = elf::parse(&sup_path, &sup_data)?;
                read(Some(&supplement))
            }
        }
    }

    /// The dwz supplementary file `name` with build-id `id` that the debug file `debug_path`
    /// refers to: at `name` (relative to the debug file's real directory), by build-id in
    /// the debug dirs, then from debuginfod.
    pub fn find_sup(
        &mut self,
        debug_path: &Path,
        name: &[u8],
        id: &[u8],
    ) -> Result<(PathBuf, Vec<u8>), DebugInfoError> {
        let name_path = Path::new(OsStr::from_bytes(name));
        let mut candidates = Vec::new();
        if let Ok(relative) = name_path.strip_prefix("/") {
            if let Some(root) = &self.proc_root {
                candidates.push(root.join(relative));
            }
            candidates.push(name_path.to_path_buf());
        } else {
            // `.build-id/xx/rest.debug` is usually a symlink: the name is relative to where it
            // points. (Resolved by hand: canonicalize would leave a /proc/PID/root.)
            if let Ok(target) = fs::read_link(debug_path) {
                let real = match (target.strip_prefix("/"), &self.proc_root) {
                    (Ok(relative), Some(root)) => root.join(relative),
                    (Ok(_), None) => target,
                    (Err(_), _) => debug_path.parent().unwrap_or(Path::new("/")).join(target),
                };
                if let Some(dir) = real.parent() {
                    candidates.push(dir.join(name_path));
                }
            }
            if let Some(dir) = debug_path.parent() {
                candidates.push(dir.join(name_path));
            }
        }
        let hex_id = elf::hex(id);
        if hex_id.len() > 2 {
            candidates.extend(self.debug_dirs.iter().map(|d| build_id_path(d, &hex_id)));
        }
        let first_tried = self.tried.len();
        for path in candidates {
            if let Some(data) = self.read_candidate(&path, Some(id), Check::BuildId) {
                return Ok((path, data));
            }
        }
        let from_debuginfod = self.debuginfod(&hex_id, |f, path| {
            f.read_candidate(path, Some(id), Check::BuildId)
                .map(|data| (path.to_path_buf(), data))
        });
        if let Some(found) = from_debuginfod {
            return Ok(found);
        }
        Err(DebugInfoError::NoDebugInfo {
            libc: self.facts.path.clone(),
            build_id: self.facts.build_id_hex(),
            tried: self.tried[first_tried..].to_vec(),
            notes: vec![format!(
                "its debug file {} keeps part of its DWARF in the dwz supplementary file {} \
                 (build-id {hex_id}), which was not found",
                debug_path.display(),
                name_path.display()
            )],
        })
    }

    /// The debuginfod file for `build_id` that `accept` takes: an earlier download, else a
    /// new one from each server in turn.
    fn debuginfod<T>(
        &mut self,
        build_id: &str,
        mut accept: impl FnMut(&mut Self, &Path) -> Option<T>,
    ) -> Option<T> {
        let urls = debuginfod::urls(self.options.debuginfod_urls.as_deref());
        let store_dir = self.store_dir(!urls.is_empty())?;
        let stored = debuginfod::stored_path(&store_dir, build_id);
        if stored.is_file() {
            if let Some(found) = accept(self, &stored) {
                return Some(found);
            }
            debuginfod::discard(&stored);
        }
        let timeout = self
            .options
            .debuginfod_timeout
            .unwrap_or(debuginfod::DEFAULT_TIMEOUT);
        for url in &urls {
            match debuginfod::download(url, build_id, &stored, timeout) {
                Ok(()) => {
                    self.tried.retain(|p| p != &stored);
                    if let Some(found) = accept(self, &stored) {
                        return Some(found);
                    }
                    debuginfod::discard(&stored);
                }
                Err(Failure::NotFound { url }) => {
                    self.notes
                        .push(format!("debuginfod server {url}: not found (404)"));
                }
                Err(Failure::Failed { url, reason }) => {
                    self.notes
                        .push(format!("debuginfod server {url}: {reason}"));
                    self.debuginfod_failure.get_or_insert((url, reason));
                }
            }
        }
        None
    }

    /// The cache dir; without one, a private temporary directory if `needed`.
    fn store_dir(&mut self, needed: bool) -> Option<PathBuf> {
        if let Some(dir) = &self.cache_dir {
            return Some(dir.clone());
        }
        if !needed {
            return None;
        }
        self.store_dir.get_or_insert_with(private_temp_dir).clone()
    }
}

fn build_id_path(dir: &Path, build_id: &str) -> PathBuf {
    let (head, rest) = build_id.split_at(2);
    dir.join(".build-id")
        .join(head)
        .join(format!("{rest}.debug"))
}

/// `/proc/PID/root/usr/lib/libc.so.6` -> (`/proc/PID/root`, `/usr/lib/libc.so.6`): a process in
/// another mount namespace has its debug files in its own root. A mapping opened through
/// `/proc/PID/map_files/RANGE` is the file its link names, in that root too. Other paths are
/// their own inner path (made absolute).
fn split_proc_root(path: &Path) -> (Option<PathBuf>, PathBuf) {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let comps: Vec<Component<'_>> = absolute.components().collect();
    if let [
        Component::RootDir,
        Component::Normal(proc),
        Component::Normal(pid),
        Component::Normal(root),
        rest @ ..,
    ] = comps.as_slice()
    {
        let pid_ok =
            *pid == "self" || (!pid.is_empty() && pid.as_bytes().iter().all(u8::is_ascii_digit));
        if *proc == "proc" && *root == "root" && pid_ok {
            let root_dir: PathBuf = comps[..4].iter().collect();
            let mut inner = PathBuf::from("/");
            inner.extend(rest);
            return (Some(root_dir), inner);
        }
        if *proc == "proc" && *root == "map_files" && pid_ok && rest.len() == 1 {
            let root_dir: PathBuf = comps[..3]
                .iter()
                .chain([&Component::Normal("root".as_ref())])
                .collect();
            if let Ok(link) = std::fs::read_link(&absolute) {
                let text = link.to_string_lossy();
                let named = text.strip_suffix(DELETED).unwrap_or(&text);
                return (Some(root_dir), PathBuf::from(named));
            }
        }
    }
    (None, absolute)
}

/// Where a `.gnu_debuglink` name is looked for, as GDB does: the extra debug dirs, the libc's
/// directory, its `.debug/`, and `/usr/lib/debug/<libc's directory>/` (also inside the
/// process's root).
fn debuglink_candidates(
    name: &OsStr,
    libc: &Path,
    inner_libc: &Path,
    proc_root: Option<&Path>,
    options: &DebugOptions,
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (options.extra_debug_dirs.iter())
        .map(|d| d.join(name))
        .collect();
    if options.only_extra_debug_dirs {
        return out;
    }
    let libc = std::path::absolute(libc).unwrap_or_else(|_| libc.to_path_buf());
    if let Some(dir) = libc.parent() {
        out.push(dir.join(name));
        out.push(dir.join(".debug").join(name));
    }
    if let Some(inner_dir) = inner_libc.parent() {
        let relative = inner_dir.strip_prefix("/").unwrap_or(inner_dir);
        out.push(Path::new(SYSTEM_DEBUG_DIR).join(relative).join(name));
        if let Some(root) = proc_root {
            out.push(
                root.join(SYSTEM_DEBUG_DIR.trim_start_matches('/'))
                    .join(relative)
                    .join(name),
            );
        }
    }
    out
}

/// A fresh directory only we can write, for downloads when there is no cache directory.
fn private_temp_dir() -> Option<PathBuf> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "pagealloc-debuginfod-{}-{nanos}",
        std::process::id()
    ));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => Some(dir),
        Err(e) => {
            log::warn!("cannot create {}: {e}", dir.display());
            None
        }
    }
}
