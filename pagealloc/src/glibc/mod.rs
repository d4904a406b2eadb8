//! glibc malloc: its layouts (from DWARF) and the arena walker.
pub mod layout;
mod lists;
mod parts;
mod tally;
#[cfg(test)]
mod tests;
pub mod walker;
mod window;
