//! Where in the C library each probe goes: what a placement is, whatever the architecture; the
//! analysis of the code itself is the target architecture's (`x86_64`).
//!
//! A probe on an instruction the kernel can emulate costs one trap; on any other instruction
//! the kernel also single-steps a copy of it out of line, which costs several times more (the
//! README's overhead bench). So each probe goes on the first emulated instruction of its
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

/// Why `result_points` is not sure (its caller then keeps the return probe). An `at` is an
/// address in the library, an `offset` or a `result` (where the result was defined) is from the
/// function's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsure {
    #[error("the function's size is not known")]
    SizeUnknown,
    #[error("too many paths to follow")]
    TooManyPaths,
    // The code cannot be followed.
    #[error("no instruction decodes at {at:#x}")]
    Undecodable { at: u64 },
    #[error("the code runs past the function's end")]
    PastTheEnd,
    #[error("a jump out of the function at {at:#x} (a tail call: its return is not seen)")]
    JumpOut { at: u64 },
    #[error("an indirect jump at {at:#x}")]
    IndirectJump { at: u64 },
    #[error("an instruction that leaves the straight line at {at:#x}")]
    OffTheStraightLine { at: u64 },
    // The stack pointer is not where a probe needs it.
    #[error("the stack pointer at the return at {at:#x} is not where it was at entry")]
    StackMovedAtReturn { at: u64 },
    #[error("the stack pointer at +{offset:#x} is not known")]
    StackUnknown { offset: u64 },
    // No points to choose.
    #[error("the return at +{offset:#x} returns something not traced to one instruction")]
    UntracedReturn { offset: u64 },
    #[error("no return with a result")]
    NoResult,
    #[error("no emulated instruction on every path of the result of +{result:#x} with it final")]
    NoPoint { result: u64 },
    #[error(
        "where the paths of the result of +{result:#x} merge with another's, no point serves both"
    )]
    NoSharedPoint { result: u64 },
    #[error("the point at +{offset:#x} is on a cycle")]
    PointOnCycle { offset: u64 },
    // The points chosen fail the proof.
    #[error("a path passes two points with a result in rax")]
    TwoPoints,
    #[error("a point where rax holds no result")]
    NoResultAtPoint,
    #[error("a path to the return at {at:#x} passes no point")]
    ReturnPassesNoPoint { at: u64 },
    #[error("a path to the return at {at:#x} returns something else than its point reported")]
    ReturnsOtherThanReported { at: u64 },
}

/// Functions that return their first argument (C11 7.24.2, 7.24.6.1): a tail call of one
/// returns what the caller passed it.
const RETURN_FIRST_ARGUMENT: [&str; 3] = ["memset", "memcpy", "memmove"];

#[cfg(test)]
mod tests {
    use super::Unsure;

    #[test]
    fn unsure_says_where_in_hex() {
        assert_eq!(
            Unsure::JumpOut { at: 0x1f }.to_string(),
            "a jump out of the function at 0x1f (a tail call: its return is not seen)"
        );
        assert_eq!(
            Unsure::StackUnknown { offset: 0x2a }.to_string(),
            "the stack pointer at +0x2a is not known"
        );
    }
}
