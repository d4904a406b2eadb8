//! Checks each prerequisite and installs what is missing. Idempotent: a second run only checks.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};

/// The bpf-linker release whose `llvm-NN` features match the nightly toolchains we use.
const BPF_LINKER_VERSION: &str = "^0.13";

pub fn run() -> Result<()> {
    put_cargo_bin_on_path();
    step("rustup", check_rustup)?;
    step(
        "nightly toolchain with rust-src (builds the eBPF programs)",
        nightly,
    )?;
    step(
        "bpf-linker built against the nightly rustc's libLLVM",
        bpf_linker,
    )?;
    step(
        "gcc (builds the test fixtures and the demo workload)",
        || debian_tool("gcc", &["gcc", "libc6-dev"]),
    )?;
    step(
        "dwz (tests debug files that share types through .gnu_debugaltlink)",
        || debian_tool("dwz", &["dwz"]),
    )?;
    step(
        "glibc debug info (libc6-dbg: struct layouts for the heap walker)",
        libc_debug_info,
    )?;
    step(
        "jemalloc and tcmalloc (tests that name an allocator that replaces glibc's malloc)",
        || {
            debian_files(
                &[
                    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
                    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                ],
                &["libjemalloc2", "libtcmalloc-minimal4"],
            )
        },
    )?;
    step(
        "bpftrace (bench overhead: the same probes through bpftrace)",
        || debian_tool("bpftrace", &["bpftrace"]),
    )?;
    step(
        "gdb (bench overhead: heaptrack -p injects itself with gdb)",
        || debian_tool("gdb", &["gdb"]),
    )?;
    step(
        "heaptrack (bench overhead: heaptrack attached at run time)",
        || debian_tool("heaptrack", &["heaptrack"]),
    )?;
    step(
        "prometheus and promtool (the serve tests: a real Prometheus scrapes, promtool checks)",
        || {
            // One Debian package has both.
            let promtool = debian_tool("promtool", &["prometheus"])?;
            match debian_tool("prometheus", &["prometheus"])? {
                Outcome::Present(version) if matches!(promtool, Outcome::Installed(_)) => {
                    Ok(Outcome::Installed(version))
                }
                outcome => Ok(outcome),
            }
        },
    )?;
    step(
        "chromium (the web UI tests drive a headless browser)",
        || debian_tool("/usr/bin/chromium", &["chromium"]),
    )?;
    step(
        "go tool pprof (tests: the real reader of pprof profiles)",
        || debian_command("go", &["version"], &["golang-go"]),
    )?;
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

enum Outcome {
    Present(String),
    Installed(String),
}

fn step(name: &str, check: impl FnOnce() -> Result<Outcome>) -> Result<()> {
    match check().with_context(|| format!("setup: {name}"))? {
        Outcome::Present(detail) => println!("setup: {name}: ok ({detail})"),
        Outcome::Installed(detail) => println!("setup: {name}: installed ({detail})"),
    }
    Ok(())
}

/// cargo-installed tools (bpf-linker) and rustup must be found by the builds we start.
fn put_cargo_bin_on_path() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cargo")));
    if let Some(bin) = cargo_home.map(|c| c.join("bin")) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        if !dirs.contains(&bin) {
            dirs.insert(0, bin);
            let joined = std::env::join_paths(dirs).expect("PATH entries without ':'");
            // SAFETY: xtask is single-threaded here; children inherit the new PATH.
            unsafe { std::env::set_var("PATH", joined) };
        }
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program ARGS` in the terminal; fails if it fails.
fn exec(program: &str, args: &[&str]) -> Result<()> {
    crate::run(Command::new(program).args(args))
}

fn check_rustup() -> Result<Outcome> {
    let version = output("rustup", &["--version"])
        .context("rustup is needed (the eBPF build runs `rustup run nightly cargo`)")?;
    Ok(Outcome::Present(version.trim().to_string()))
}

fn nightly() -> Result<Outcome> {
    let mut installed = false;
    if !output("rustup", &["toolchain", "list"])?.contains("nightly") {
        exec(
            "rustup",
            &[
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
        )?;
        installed = true;
    }
    let components = output(
        "rustup",
        &["component", "list", "--toolchain", "nightly", "--installed"],
    )?;
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        exec(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
        )?;
        installed = true;
    }
    let version = output("rustc", &["+nightly", "--version"])?
        .trim()
        .to_string();
    Ok(if installed {
        Outcome::Installed(version)
    } else {
        Outcome::Present(version)
    })
}

/// The nightly rustc's LLVM: its major version and the shared library file (the SONAME).
fn nightly_llvm() -> Result<(String, PathBuf)> {
    let verbose = output("rustc", &["+nightly", "-vV"])?;
    let major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV names no LLVM version")?
        .to_string();
    let sysroot = output("rustc", &["+nightly", "--print", "sysroot"])?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let prefix = format!("libLLVM.so.{major}");
    let library = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", lib.display()))?;
    Ok((major, library))
}

fn bpf_linker() -> Result<Outcome> {
    let (major, library) = nightly_llvm()?;
    let soname = library.file_name().unwrap().to_owned();
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    let prefix = cache.join(format!("pagealloc/llvm-{major}"));
    let stamp = prefix.join("bpf-linker.built-for");
    let current = std::fs::read_to_string(&stamp).unwrap_or_default();
    let works = output("bpf-linker", &["--version"]).is_ok();
    if works && current == soname.to_string_lossy() {
        return Ok(Outcome::Present(format!(
            "LLVM {major}, {}",
            prefix.display()
        )));
    }
    // bpf-linker links the very libLLVM rustc uses, through symlinks under its own prefix
    // (the SONAME too, so that the binary's rpath resolves it).
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib)?;
    for name in [std::ffi::OsStr::new("libLLVM.so"), &soname] {
        let link = lib.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&library, &link)?;
    }
    crate::run(
        Command::new("cargo")
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ])
            .env("LLVM_PREFIX", &prefix),
    )?;
    std::fs::write(&stamp, soname.to_string_lossy().as_bytes())?;
    Ok(Outcome::Installed(format!(
        "LLVM {major}, {}",
        prefix.display()
    )))
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Installs Debian packages when root on Debian; otherwise says exactly what to run.
fn apt_install(packages: &[&str], reinstall: bool) -> Result<()> {
    let mut args = vec!["install", "-y", "-q"];
    if reinstall {
        args.push("--reinstall");
    }
    args.extend_from_slice(packages);
    let debian = Path::new("/etc/debian_version").exists() && output("apt-get", &["-v"]).is_ok();
    if !debian || !is_root() {
        bail!(
            "missing; install it with `sudo apt-get {}` (or your distribution's equivalent) and \
             run again",
            args.join(" ")
        );
    }
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        exec("apt-get", &["update", "-q"])?;
    }
    exec("apt-get", &args)
}

/// A command from Debian packages: present if `TOOL --version` answers.
fn debian_tool(tool: &str, packages: &[&str]) -> Result<Outcome> {
    debian_command(tool, &["--version"], packages)
}

/// A command from Debian packages: present if `TOOL VERSION_ARGS` answers (`go version`: go
/// has no `--version`).
fn debian_command(tool: &str, version_args: &[&str], packages: &[&str]) -> Result<Outcome> {
    let version = || output(tool, version_args).map(|v| v.lines().next().unwrap_or("").to_string());
    if let Ok(version) = version() {
        return Ok(Outcome::Present(version));
    }
    apt_install(packages, false)?;
    Ok(Outcome::Installed(version()?))
}

/// Files from Debian packages: present if they all exist.
fn debian_files(files: &[&str], packages: &[&str]) -> Result<Outcome> {
    let missing = || files.iter().filter(|f| !Path::new(f).exists()).count();
    if missing() == 0 {
        return Ok(Outcome::Present(files.join(", ")));
    }
    apt_install(packages, true)?;
    if missing() > 0 {
        bail!(
            "{} installed but {} still missing",
            packages.join(" "),
            files.join(" or ")
        );
    }
    Ok(Outcome::Installed(files.join(", ")))
}

/// The debug file of the C library xtask itself runs on (the system's glibc), by build-id.
/// dpkg's word is not enough: a package can be registered with its files gone.
fn libc_debug_info() -> Result<Outcome> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let libc = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libc.so.6"))
        .context("xtask does not run on glibc: pagealloc's heap walker needs a glibc system")?;
    let data = std::fs::read(libc)?;
    let file = object::File::parse(&*data).context("parsing libc")?;
    let build_id = object::Object::build_id(&file)?
        .context("libc has no GNU build-id note")?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let debug = PathBuf::from(format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2],
        &build_id[2..]
    ));
    if debug.exists() {
        return Ok(Outcome::Present(debug.display().to_string()));
    }
    apt_install(&["libc6-dbg"], true)?;
    if !debug.exists() {
        bail!(
            "libc6-dbg is installed but has no {} (does its version match libc6's?)",
            debug.display()
        );
    }
    Ok(Outcome::Installed(debug.display().to_string()))
}
