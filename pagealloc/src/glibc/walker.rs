//! The walk's view of the target, shared by the parts that find the arenas and heaps
//! ([`super::arenas`]), the mmapped chunks ([`super::mmapped`]) and the walk itself
//! ([`super::walk`]): the process's glibc, memory and mappings, and the notes the walk makes.
use super::Libc;
use super::chain::Chains;
use super::layout::Offsets;
use super::parts::{Parts, Split};
use crate::proc::memory::{Memory, ReadError};
use crate::state::heap::HeapNote;
use crate::state::pages::Mapping;

#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error("cannot read {what} at {address:#x}: {reason}")]
    Unreadable {
        what: &'static str,
        address: u64,
        reason: &'static str,
    },
}

pub(super) fn reason(e: ReadError) -> &'static str {
    match e {
        ReadError::NotResident => "its page is not resident (reading it would change the target)",
        ReadError::Failed => "the read failed (the process may have exited)",
    }
}

pub(super) struct Walker<'a> {
    pub libc: &'a Libc,
    pub offsets: &'a Offsets,
    pub memory: &'a dyn Memory,
    /// The target's mappings: where heaps may lie, and where mmapped chunks are looked for.
    pub mappings: &'a [Mapping],
    pub split: Split,
    pub notes: Vec<HeapNote>,
    /// The value of libc's `tcache_key` (glibc ≥ 2.34): it marks tcache chunks.
    pub tcache_key: Option<u64>,
}

impl<'a> Walker<'a> {
    pub(super) fn new(
        libc: &'a Libc,
        memory: &'a dyn Memory,
        mappings: &'a [Mapping],
        split: Split,
    ) -> Walker<'a> {
        Walker {
            libc,
            offsets: &libc.offsets,
            memory,
            mappings,
            split,
            notes: Vec::new(),
            tcache_key: None,
        }
    }

    pub(super) fn read_u64(&self, what: &'static str, address: u64) -> Result<u64, WalkError> {
        self.memory
            .read_u64(address)
            .map_err(|e| WalkError::Unreadable {
                what,
                address,
                reason: reason(e),
            })
    }

    pub(super) fn note(&mut self, note: HeapNote) {
        if !self.notes.contains(&note) {
            self.notes.push(note);
        }
    }

    /// What following a chain of chunks needs, once `tcache_key` is read.
    pub(super) fn chains(&self) -> Chains<'a> {
        let offsets = self.offsets;
        Chains {
            offsets,
            tcache_key: self.tcache_key,
            // fastbin_index(size) = size / (2 * SIZE_SZ) - 2
            max_fast_chunk: match offsets.state_fastbin_count {
                0 => 0,
                n => (n + 1) * 2 * offsets.size_sz,
            },
        }
    }

    pub(super) fn parts(&self) -> Parts<'a> {
        Parts {
            chains: self.chains(),
            memory: self.memory,
            split: self.split,
        }
    }
}
