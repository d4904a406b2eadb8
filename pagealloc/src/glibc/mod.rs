//! glibc malloc: what makes a C library glibc, the offsets of malloc's structures (from DWARF),
//! and the arena walker.
mod arenas;
mod captures;
mod chain;
mod code;
pub mod debug;
pub mod derive;
pub mod identity;
pub mod layout;
mod lists;
mod mmapped;
mod parts;
pub mod table;
mod tally;
#[cfg(test)]
mod tests;
mod walk;
mod walker;
mod window;

pub use arenas::{ArenaTop, HeapInfo, arena_top, heap_info};
pub use identity::{FLAG_BITS, IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE};
pub use layout::{Libc, Offsets};
pub use parts::Split;
pub use walk::walk;
pub use walker::WalkError;
