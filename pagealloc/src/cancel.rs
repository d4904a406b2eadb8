//! Work under way asked to end early: a signal to end heard while a heap is walked. The request
//! is the whole process's (a signal), so the walk's loops look at one flag of the process
//! rather than one handed down to each of them.
use std::sync::atomic::{AtomicBool, Ordering};

static ASKED: AtomicBool = AtomicBool::new(false);

/// Asks the work under way, and any begun later, to end early.
pub fn ask() {
    ASKED.store(true, Ordering::Relaxed);
}

/// Whether the work under way is to end early (its result is then thrown away:
/// [`crate::Error::Cancelled`]).
pub fn asked() -> bool {
    ASKED.load(Ordering::Relaxed)
}
