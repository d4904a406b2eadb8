//! Finding the debug file of a libc, in order: the explicit `--debug-file`, the libc itself,
//! `<debug dir>/.build-id/xx/rest.debug`, `.gnu_debuglink`, then debuginfod.
//!
//! A candidate is used only if it is the libc's: same build-id (for build-id paths and
//! downloads; for debug links too when both files have one) or matching CRC (debug links).
//! Candidates that exist but do not match are noted and skipped.
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::debuginfod::{self, Failure};
use super::dwarf;
use super::elf::{self, LibcFacts};
use super::{DebugInfoError, DebugOptions, MallocLayout};

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

struct Search<'f> {
    facts: &'f LibcFacts,
    libc_id: Option<(u64, u64)>,
    tried: Vec<PathBuf>,
    notes: Vec<String>,
    /// The first failure to extract from a file that did belong to the libc.
    extract_error: Option<DebugInfoError>,
}

type Found = (PathBuf, MallocLayout);

pub(crate) fn find_and_extract(
    facts: &LibcFacts,
    options: &DebugOptions,
    cache_dir: Option<&Path>,
) -> Result<Found, DebugInfoError> {
    if let Some(path) = &options.debug_file {
        return explicit(facts, path);
    }
    let mut search = Search {
        facts,
        libc_id: fs::metadata(&facts.path).ok().map(|m| (m.dev(), m.ino())),
        tried: Vec::new(),
        notes: Vec::new(),
        extract_error: None,
    };

    if facts.has_dwarf {
        match dwarf::extract_layout(facts, &facts.path, &facts.data) {
            Ok(layout) => return Ok((facts.path.clone(), layout)),
            Err(e) => {
                log::debug!(
                    "{} carries DWARF, but not malloc's: {e}",
                    facts.path.display()
                );
                search.tried.push(facts.path.clone());
            }
        }
    }

    let build_id = facts.build_id_hex();
    let (proc_root, inner_path) = split_proc_root(&facts.path);
    let mut debug_dirs: Vec<PathBuf> = options.extra_debug_dirs.clone();
    debug_dirs.push(PathBuf::from(SYSTEM_DEBUG_DIR));
    if let Some(root) = &proc_root {
        debug_dirs.push(root.join(SYSTEM_DEBUG_DIR.trim_start_matches('/')));
    }

    if build_id.len() > 2 {
        let (head, rest) = build_id.split_at(2);
        for dir in &debug_dirs {
            let path = dir
                .join(".build-id")
                .join(head)
                .join(format!("{rest}.debug"));
            if let Some(found) = search.try_candidate(&path, Check::BuildId) {
                return Ok(found);
            }
        }
    }

    if let Some((name, crc)) = &facts.debuglink {
        for path in debuglink_candidates(
            OsStr::from_bytes(name),
            &facts.path,
            &inner_path,
            proc_root.as_deref(),
            &options.extra_debug_dirs,
        ) {
            if let Some(found) = search.try_candidate(&path, Check::Crc(*crc)) {
                return Ok(found);
            }
        }
    }

    let mut debuginfod_failure = None;
    if !build_id.is_empty() {
        let urls = debuginfod::urls(options.debuginfod_urls.as_deref());
        let store_dir = match cache_dir {
            Some(dir) => Some(dir.to_path_buf()),
            None if !urls.is_empty() => private_temp_dir(),
            None => None,
        };
        if let Some(store_dir) = store_dir {
            let stored = debuginfod::stored_path(&store_dir, &build_id);
            // An earlier download.
            if stored.is_file() {
                if let Some(found) = search.try_candidate(&stored, Check::BuildId) {
                    return Ok(found);
                }
                debuginfod::discard(&stored);
            }
            let timeout = options
                .debuginfod_timeout
                .unwrap_or(debuginfod::DEFAULT_TIMEOUT);
            for url in &urls {
                match debuginfod::download(url, &build_id, &stored, timeout) {
                    Ok(()) => {
                        search.tried.retain(|p| p != &stored);
                        if let Some(found) = search.try_candidate(&stored, Check::BuildId) {
                            return Ok(found);
                        }
                        debuginfod::discard(&stored);
                    }
                    Err(Failure::NotFound { url }) => {
                        search
                            .notes
                            .push(format!("debuginfod server {url}: not found (404)"));
                    }
                    Err(Failure::Failed { url, reason }) => {
                        search
                            .notes
                            .push(format!("debuginfod server {url}: {reason}"));
                        debuginfod_failure.get_or_insert((url, reason));
                    }
                }
            }
        }
    }

    let Search {
        tried,
        notes,
        extract_error,
        ..
    } = search;
    if let Some(e) = extract_error {
        return Err(e);
    }
    if build_id.is_empty() {
        return Err(DebugInfoError::NoBuildId {
            libc: facts.path.clone(),
            tried,
        });
    }
    if let Some((url, reason)) = debuginfod_failure {
        return Err(DebugInfoError::Debuginfod {
            build_id,
            url,
            reason,
            tried,
        });
    }
    Err(DebugInfoError::NoDebugInfo {
        libc: facts.path.clone(),
        build_id,
        tried,
        notes,
    })
}

/// `--debug-file`: used as is, unless its build-id says it belongs to another build.
fn explicit(facts: &LibcFacts, path: &Path) -> Result<Found, DebugInfoError> {
    let data = elf::read_file(path)?;
    let found_id = elf::build_id(&elf::parse(path, &data)?);
    match (&facts.build_id, found_id) {
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
            facts.path.display()
        ),
        _ => {}
    }
    let layout = dwarf::extract_layout(facts, path, &data)?;
    Ok((path.to_path_buf(), layout))
}

impl Search<'_> {
    /// The layout from `path` if it exists, belongs to the libc and has malloc's DWARF.
    fn try_candidate(&mut self, path: &Path, check: Check) -> Option<Found> {
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
        let expected = self.facts.build_id.as_deref();
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
                "{} is not this libc's debug file: {why}",
                path.display()
            ));
            return None;
        }
        match dwarf::extract_layout(self.facts, path, &data) {
            Ok(layout) => Some((path.to_path_buf(), layout)),
            Err(e) => {
                self.notes.push(format!("{}: {e}", path.display()));
                self.extract_error.get_or_insert(e);
                None
            }
        }
    }
}

/// `/proc/PID/root/usr/lib/libc.so.6` -> (`/proc/PID/root`, `/usr/lib/libc.so.6`): a process in
/// another mount namespace has its debug files in its own root. Other paths are their own
/// inner path (made absolute).
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
    extra_dirs: &[PathBuf],
) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = extra_dirs.iter().map(|d| d.join(name)).collect();
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
