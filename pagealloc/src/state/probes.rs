//! Where live mode's probes go in a C library: what the planner decided, for the loader to
//! attach and for `pagealloc probes` to show.
use pagealloc_common::{Call, Program, result_cookie};

/// Where a probe goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub program: Program,
    pub function: String,
    /// Bytes from the function's start.
    pub offset: u64,
    /// Where that is in the library's file (what uprobes are attached by).
    pub file_offset: u64,
    /// Whether the instruction there is emulated (one trap) or single-stepped.
    pub emulated: bool,
    /// The attach cookie: the call the program reports.
    pub call: Option<Call>,
    /// `alloc_result`: how far below its value at the function's entry the stack pointer is
    /// there, in bytes (the program works out from it where the call returns to); else 0.
    pub depth: u64,
}

impl Placed {
    /// A return probe (the kernel takes the return address where it sits).
    pub fn returns(&self) -> bool {
        self.program.is_return()
    }

    /// What the program is attached with.
    pub fn cookie(&self) -> Option<u64> {
        let call = self.call?;
        Some(if self.program == Program::AllocResult {
            result_cookie(call, self.depth)
        } else {
            call as u64
        })
    }
}
