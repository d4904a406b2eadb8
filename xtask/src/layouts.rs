//! `cargo xtask layouts`: the table of malloc's struct layouts per glibc version
//! (`pagealloc/src/glibc/layouts.json`), read from the DWARF of real builds. pagealloc reads it
//! when a libc's debug info is out of reach; its tests check the entries against the DWARF again.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use pagealloc::debuginfo::Library;
use pagealloc::glibc::debug;
use pagealloc::glibc::table::{Build, LayoutTable};

/// Where the table is checked in.
pub const TABLE: &str = "pagealloc/src/glibc/layouts.json";

/// The system's C library (libc6) and the directory of its debug files (libc6-dbg).
const SYSTEM_LIBC: &str = "/usr/lib/x86_64-linux-gnu/libc.so.6";
const SYSTEM_DEBUG_DIR: &str = "/usr/lib/debug";

/// One build of glibc whose DWARF gives an entry of the table.
struct Source {
    /// The distribution's package version.
    package: String,
    libc: PathBuf,
    /// The directory with its debug file at `.build-id/xx/rest.debug`.
    debug_dir: PathBuf,
}

/// Writes the table from the DWARF of the system's glibc and of the other builds given as
/// `PACKAGE LIBC DEBUG_DIR` triples.
pub fn generate(root: &Path, extra: &[String]) -> Result<()> {
    if !extra.len().is_multiple_of(3) {
        bail!("the other builds are given as PACKAGE LIBC DEBUG_DIR, three arguments each");
    }
    let mut sources = vec![Source {
        package: system_package()?,
        libc: PathBuf::from(SYSTEM_LIBC),
        debug_dir: PathBuf::from(SYSTEM_DEBUG_DIR),
    }];
    sources.extend(extra.chunks(3).map(|build| Source {
        package: build[0].clone(),
        libc: PathBuf::from(&build[1]),
        debug_dir: PathBuf::from(&build[2]),
    }));
    let mut layouts = Vec::new();
    for source in &sources {
        let library = Library::read(&source.libc)
            .with_context(|| format!("reading {}", source.libc.display()))?;
        let build_id = library.build_id_hex();
        let debug_file = by_build_id(&source.debug_dir, &build_id);
        let layout = debug::load_uncached(&source.libc, &debug_file)
            .with_context(|| format!("reading malloc's layout from {}", debug_file.display()))?;
        println!(
            "layouts: {} (glibc {}, build-id {build_id}) from {}",
            source.package,
            layout.glibc_version.as_deref().unwrap_or("?"),
            debug_file.display()
        );
        let build = Build {
            package: source.package.clone(),
            build_id,
        };
        layouts.push((build, layout));
    }
    let table = LayoutTable::generate(&layouts).map_err(anyhow::Error::msg)?;
    let path = root.join(TABLE);
    let json = serde_json::to_string_pretty(&table)? + "\n";
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    println!(
        "layouts: {} written: glibc {}",
        path.display(),
        table.covered().join(", ")
    );
    Ok(())
}

/// `<dir>/.build-id/xx/rest.debug`.
fn by_build_id(dir: &Path, build_id: &str) -> PathBuf {
    let (head, rest) = build_id.split_at(2.min(build_id.len()));
    dir.join(".build-id")
        .join(head)
        .join(format!("{rest}.debug"))
}

/// The version of the installed libc6 package, which must match its libc6-dbg.
fn system_package() -> Result<String> {
    let query = |package: &str| -> Result<String> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", package])
            .output()
            .context("running dpkg-query")?;
        if !out.status.success() {
            bail!("{package} is not installed (cargo xtask setup installs it)");
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let (libc, dbg) = (query("libc6")?, query("libc6-dbg")?);
    if libc != dbg {
        bail!("libc6 is {libc} but libc6-dbg is {dbg}: their build-ids differ");
    }
    Ok(libc)
}
