//! glibc malloc: its layouts (from DWARF) and the arena walker.
pub mod layout;
pub mod walker;
