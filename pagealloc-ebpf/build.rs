//! The eBPF build needs `bpf-linker`; rebuild when it changes (`cargo xtask setup` installs it).
fn main() {
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
