//! Compiles the C fixtures into OUT_DIR and tells the tests where they are (FIXTURE_<NAME>).
use std::path::Path;
use std::process::Command;

fn main() {
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    println!("cargo:rerun-if-changed=fixtures");
    for entry in std::fs::read_dir("fixtures").expect("tests/fixtures exists") {
        let path = entry.expect("readable fixtures dir").path();
        if path.extension().is_none_or(|e| e != "c") {
            continue;
        }
        let name = path.file_stem().unwrap().to_str().unwrap().to_string();
        if name == "sites" {
            compile_sites(&out, &path);
            continue;
        }
        compile(&out, &path, &name, &[]);
        if name == "pages" {
            // A static program: no libc.so.6 to read a heap through.
            compile(&out, &path, "pages_static", &["-static"]);
        }
    }
}

/// The stacks fixture: built as distributions build their code (-O2, no frame pointers),
/// against a shared library built the same way.
fn compile_sites(out: &str, source: &Path) {
    let built = ["-O2", "-fomit-frame-pointer"];
    let library = Path::new(out).join("libsites.so");
    compile_and_link(
        out,
        Path::new("fixtures/sites/libsites.c"),
        "libsites.so",
        &[&built[..], &["-fPIC", "-shared"]].concat(),
        &[],
    );
    let rpath = format!("-Wl,-rpath,{out}");
    let link = [library.to_str().unwrap(), &rpath];
    compile_and_link(out, source, "sites", &built, &link);
}

fn compile(out: &str, source: &Path, name: &str, extra: &[&str]) {
    compile_and_link(out, source, name, extra, &[]);
}

/// Builds `source` into `out/name` with `extra` flags, linked with `link` (after the source);
/// its path is in FIXTURE_<NAME> (dots as underscores).
fn compile_and_link(out: &str, source: &Path, name: &str, extra: &[&str], link: &[&str]) {
    let binary = Path::new(out).join(name);
    // -fno-builtin-*: gcc would otherwise remove malloc/free pairs the fixtures rely on.
    let status = Command::new("gcc")
        .args(["-O1", "-g", "-Wall", "-Werror", "-pthread"])
        .args(["-fno-builtin-malloc", "-fno-builtin-free"])
        .args(["-fno-builtin-calloc", "-fno-builtin-realloc"])
        .args(extra)
        .arg("-o")
        .arg(&binary)
        .arg(source)
        .args(link)
        .status()
        .expect("gcc is needed to build the test fixtures (cargo xtask setup installs it)");
    assert!(status.success(), "gcc failed on {}", source.display());
    println!(
        "cargo:rustc-env=FIXTURE_{}={}",
        name.to_uppercase().replace('.', "_"),
        binary.display()
    );
}
