//! Reading the target's memory without disturbing it.
//!
//! Reading a page that is not resident would fault it in (or swap it in) and change the target's
//! RSS, so [`ProcessMemory`] reads only pages that pagemap marked present and refuses the rest.
//! The walker reads through the [`Memory`] trait, so a captured or synthetic heap image (the fuzz
//! tests) is read exactly like a live process.
use std::io::IoSliceMut;

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;

use crate::state::pages::PageMap;

/// Why bytes could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadError {
    /// Part of the range is not resident (or not mapped): reading it would change the target.
    NotResident,
    /// The kernel refused the read (the process is gone, or the range was unmapped meanwhile).
    Failed,
}

/// A source of the target's bytes.
pub trait Memory: Sync {
    /// Fills `buf` from `addr`, or fails without side effects on the target.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError>;

    /// Whether the page holding `addr` is resident (what residency figures count).
    fn is_resident(&self, addr: u64) -> bool;

    fn page_size(&self) -> u64;

    fn read_u64(&self, addr: u64) -> Result<u64, ReadError> {
        let mut bytes = [0u8; 8];
        self.read(addr, &mut bytes)?;
        Ok(u64::from_ne_bytes(bytes))
    }
}

/// Resident address ranges, sorted and merged, for quick "may I read this?" answers.
#[derive(Clone, Debug, Default)]
pub struct ResidentRanges {
    ranges: Vec<(u64, u64)>,
}

impl ResidentRanges {
    pub fn from_page_map(map: &PageMap) -> Self {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for pages in &map.mappings {
            let mut addr = pages.mapping.start;
            for run in &pages.runs {
                let end = addr + run.pages * map.page_size;
                if run.state.is_resident() {
                    match ranges.last_mut() {
                        Some(last) if last.1 == addr => last.1 = end,
                        _ => ranges.push((addr, end)),
                    }
                }
                addr = end;
            }
        }
        ResidentRanges { ranges }
    }

    /// Whether all of `start..end` is resident.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        self.ranges
            .get(i)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }
}

/// The live target, read with `process_vm_readv`.
pub struct ProcessMemory {
    pid: Pid,
    resident: ResidentRanges,
    page_size: u64,
}

impl ProcessMemory {
    /// Reads through thread `reader` of the process (any of its threads shares its memory).
    pub fn new(reader: i32, map: &PageMap) -> Self {
        ProcessMemory {
            pid: Pid::from_raw(reader),
            resident: ResidentRanges::from_page_map(map),
            page_size: map.page_size,
        }
    }
}

impl Memory for ProcessMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = addr
            .checked_add(buf.len() as u64)
            .ok_or(ReadError::Failed)?;
        if !self.resident.covers(addr, end) {
            return Err(ReadError::NotResident);
        }
        let len = buf.len();
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        match process_vm_readv(self.pid, &mut [IoSliceMut::new(buf)], &remote) {
            Ok(n) if n == len => Ok(()),
            _ => Err(ReadError::Failed),
        }
    }

    fn is_resident(&self, addr: u64) -> bool {
        self.resident.covers(addr, addr + 1)
    }

    fn page_size(&self) -> u64 {
        self.page_size
    }
}

/// A heap image: byte ranges at addresses, all of them resident. Used to feed the walker
/// captured or corrupted heaps.
#[derive(Clone, Debug, Default)]
pub struct ImageMemory {
    pub regions: Vec<(u64, Vec<u8>)>,
}

impl Memory for ImageMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        let end = addr
            .checked_add(buf.len() as u64)
            .ok_or(ReadError::Failed)?;
        for (base, bytes) in &self.regions {
            if addr >= *base && end <= base + bytes.len() as u64 {
                let offset = (addr - base) as usize;
                buf.copy_from_slice(&bytes[offset..offset + buf.len()]);
                return Ok(());
            }
        }
        Err(ReadError::NotResident)
    }

    fn is_resident(&self, addr: u64) -> bool {
        self.regions
            .iter()
            .any(|(base, bytes)| addr >= *base && addr < base + bytes.len() as u64)
    }

    fn page_size(&self) -> u64 {
        4096
    }
}
