//! glibc malloc: its layouts (from DWARF) and the arena walker.
pub mod layout;
#[cfg(test)]
mod tests;
pub mod walker;
