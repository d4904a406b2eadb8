//! Reading the target's memory without disturbing it.
//!
//! Reading a page that is not resident would fault it in (or swap it in) and change the target's
//! RSS, so [`ProcessMemory`] reads only pages that pagemap marked present and refuses the rest.
//! The walker reads through the [`Memory`] trait, so a captured or synthetic heap image (the fuzz
//! tests) is read exactly like a live process.
use std::io::IoSliceMut;

use nix::sys::uio::{RemoteIoVec, process_vm_readv};
use nix::unistd::Pid;

use crate::state::pages::{PageMap, ResidentRanges};

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

    /// Reads `out.len() / addrs.len()` bytes at each of `addrs` into consecutive parts of `out`
    /// and says which were read: many small reads, for the cost of a few system calls where
    /// the source allows it.
    fn read_each(&self, addrs: &[u64], out: &mut [u8]) -> Vec<bool> {
        let len = out.len() / addrs.len().max(1);
        (addrs.iter().zip(out.chunks_exact_mut(len.max(1))))
            .map(|(&addr, buf)| self.read(addr, buf).is_ok())
            .collect()
    }

    /// The resident parts of `start..end`, page-aligned, in address order.
    fn resident_runs(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let page = self.page_size();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut addr = start & !(page - 1);
        while addr < end {
            if self.is_resident(addr) {
                match runs.last_mut() {
                    Some(last) if last.1 == addr => last.1 = addr + page,
                    _ => runs.push((addr, addr + page)),
                }
            }
            addr += page;
        }
        runs
    }
}

/// Remote pieces per `process_vm_readv` call: the kernel takes at most IOV_MAX (1024).
const IOV_MAX: usize = 1024;

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
            resident: map.resident_ranges(),
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

    /// One `process_vm_readv` per IOV_MAX resident pieces. The kernel stops at the first piece
    /// it cannot read: that one is marked unread and the call goes on after it.
    fn read_each(&self, addrs: &[u64], out: &mut [u8]) -> Vec<bool> {
        let len = out.len() / addrs.len().max(1);
        let mut read = vec![false; addrs.len()];
        if len == 0 {
            return read;
        }
        let mut pending: Vec<usize> = (0..addrs.len())
            .filter(|&i| {
                let addr = addrs[i];
                addr.checked_add(len as u64)
                    .is_some_and(|end| self.resident.covers(addr, end))
            })
            .collect();
        let mut scratch = Vec::new();
        while !pending.is_empty() {
            let batch = &pending[..pending.len().min(IOV_MAX)];
            let remote: Vec<RemoteIoVec> = (batch.iter())
                .map(|&i| RemoteIoVec {
                    base: addrs[i] as usize,
                    len,
                })
                .collect();
            scratch.resize(batch.len() * len, 0);
            let done = process_vm_readv(self.pid, &mut [IoSliceMut::new(&mut scratch)], &remote)
                .map_or(0, |n| n / len);
            for (piece, &i) in scratch.chunks_exact(len).zip(&batch[..done]) {
                out[i * len..(i + 1) * len].copy_from_slice(piece);
                read[i] = true;
            }
            // The piece the kernel stopped at stays unread; the rest is tried again.
            let tried = (done + 1).min(batch.len());
            pending.drain(..tried);
        }
        read
    }

    fn resident_runs(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.resident.within(start, end)
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroUsize;

    use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, munmap};

    use super::{Memory, ProcessMemory};
    use crate::proc::Target;
    use crate::proc::pagemap::PageReader;

    /// Pieces on resident pages are read, in more than one system call's worth; a piece on a
    /// page never touched is refused, and does not stop the pieces after it.
    #[test]
    fn read_each_reads_resident_pieces_only() {
        let page = 4096;
        let len = NonZeroUsize::new(3 * page).unwrap();
        let flags = MapFlags::MAP_PRIVATE;
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh private mapping, unmapped at the end of the test.
        let region = unsafe { mmap_anonymous(None, len, prot, flags) }.unwrap();
        let base = region.as_ptr() as u64;
        for p in [0, 2] {
            for word in 0..page / 8 {
                let at = base + (p * page + word * 8) as u64;
                // SAFETY: inside the mapping, aligned.
                unsafe { *(at as *mut u64) = at };
            }
        }
        let pid = std::process::id() as i32;
        let target = Target::open(pid).unwrap();
        let map = PageReader::open(&target)
            .unwrap()
            .read_mappings(&target, target.maps().unwrap())
            .unwrap();
        let memory = ProcessMemory::new(pid, &map);
        let untouched = base + page as u64;
        let mut addrs: Vec<u64> = (0..2500)
            .map(|i| base + (i % 2) * 2 * page as u64 + (i * 8) % page as u64)
            .collect();
        addrs.insert(1300, untouched);
        let mut out = vec![0u8; addrs.len() * 8];
        let read = memory.read_each(&addrs, &mut out);
        for (i, &addr) in addrs.iter().enumerate() {
            let value = u64::from_ne_bytes(out[i * 8..i * 8 + 8].try_into().unwrap());
            if addr == untouched {
                assert!(!read[i], "the untouched page was read");
            } else {
                assert!(
                    read[i] && value == addr,
                    "piece {i} at {addr:#x}: {value:#x}"
                );
            }
        }
        // SAFETY: mapped above, no reference into it remains.
        unsafe { munmap(region, 3 * page) }.unwrap();
    }
}
