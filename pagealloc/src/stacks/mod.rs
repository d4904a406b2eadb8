//! Sampled allocations' stacks: unwound from the registers and stack bytes the probes copied,
//! with the mapped objects' call-frame information ([`unwind`]), and their addresses symbolised
//! ([`symbols`]).
pub mod symbols;
pub mod unwind;

pub use symbols::Symbols;
pub use unwind::Unwinder;
