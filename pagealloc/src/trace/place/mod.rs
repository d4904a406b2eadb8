//! Where in the C library each probe goes: what a placement is, whatever the architecture; the
//! analysis of the code itself is the target architecture's (`x86_64`).
//!
//! A probe on an instruction the kernel can emulate costs one trap; on any other instruction
//! the kernel also single-steps a copy of it out of line, which costs several times more
//! (`../shared/design.md` §2). So each probe goes on the first emulated instruction of its
//! function that still sees what the probe reads: the argument registers for an entry probe,
//! the stack pointer unchanged for a return probe (the kernel takes the return address from the
//! top of the stack); when none comes early enough, on the function's first instruction.
//!
//! A function's result can also be caught with one trap instead of a return probe's two:
//! `result_points` finds emulated instructions on the function's return paths where the result
//! is already final in the return register, such that every call passes exactly one of them
//! with its result.
#[cfg(target_arch = "x86_64")]
mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::{after_calls_to, placement, result_points, returns_first_argument};

/// What a probe must still see where it is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Needs {
    /// Argument registers read (the first ones, in order; 0 to 2 of them).
    pub arguments: usize,
    /// The stack pointer as at entry (return probes, and entry probes that compare stacks).
    pub stack: bool,
}

/// A place where a function's result is final in its return register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResultPoint {
    /// Bytes from the function's start.
    pub offset: u64,
    /// How far below its value at the function's entry the stack pointer is there, in bytes.
    pub depth: u64,
}

/// Why `result_points` is not sure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsure(pub String);

impl std::fmt::Display for Unsure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn unsure<T>(why: impl Into<String>) -> Result<T, Unsure> {
    Err(Unsure(why.into()))
}

/// Functions that return their first argument (C11 7.24.2, 7.24.6.1): a tail call of one
/// returns what the caller passed it.
const RETURN_FIRST_ARGUMENT: [&str; 3] = ["memset", "memcpy", "memmove"];
