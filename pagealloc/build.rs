//! Builds the eBPF programs with the nightly toolchain and `bpf-linker` (see `cargo xtask setup`)
//! and leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! aya-build passes every line the eBPF crate's cargo prints on as a `cargo:warning`, which a
//! user reads as ~30 warnings on every fresh build. They are caught here: shown as warnings only
//! if the build fails, and otherwise as plain lines that cargo shows under `-vv`.
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;

use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "pagealloc-ebpf")
        .ok_or_else(|| anyhow!("pagealloc-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    let out_dir = std::env::var("OUT_DIR").context("cargo sets OUT_DIR")?;
    let log = std::path::Path::new(&out_dir).join("ebpf-build.log");
    let result = with_stdout_to(&log, || {
        aya_build::build_ebpf(
            [aya_build::Package {
                name: ebpf.name.as_str(),
                root_dir: root_dir.as_str(),
                ..Default::default()
            }],
            aya_build::Toolchain::default(),
        )
    })?;
    let failed = result.is_err();
    let mut stdout = std::io::stdout().lock();
    for line in BufReader::new(File::open(&log)?).lines() {
        let line = line?;
        match line.strip_prefix("cargo:warning=") {
            Some(message) if !failed => writeln!(stdout, "ebpf: {message}")?,
            // Directives (rerun-if-changed, ...), and on failure everything, as they were.
            _ => writeln!(stdout, "{line}")?,
        }
    }
    result
}

/// Runs `f` with this process's standard output going to `path`.
fn with_stdout_to<T>(path: &std::path::Path, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    std::io::stdout().flush()?;
    // SAFETY: plain descriptor calls on descriptors this process owns; stdout is restored below.
    let saved = unsafe { libc::dup(1) };
    if saved < 0 || unsafe { libc::dup2(file.as_raw_fd(), 1) } < 0 {
        return Err(std::io::Error::last_os_error()).context("redirecting the build's output");
    }
    let result = f();
    std::io::stdout().flush()?;
    // SAFETY: `saved` is the original stdout, duplicated above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    Ok(result)
}
