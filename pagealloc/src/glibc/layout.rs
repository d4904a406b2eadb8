//! The offsets and constants the walker uses, derived from the DWARF layouts (never hard-coded),
//! and the run-time addresses of malloc's static variables in one process.
use super::debug::MallocLayout;
use crate::debuginfo::DebugInfoError;

/// The target's glibc as the walker needs it: where malloc's structures keep each field, and
/// where its static variables are in this process. Resolved once per session: it holds while
/// the libc stays mapped where it is.
#[derive(Clone, Debug)]
pub struct Libc {
    pub offsets: Offsets,
    /// `main_arena`: the first arena of the ring.
    pub main_arena: u64,
    /// `mp_`: malloc's parameters (sbrk_base, mmapped chunk counts, huge page size).
    pub mp: u64,
    /// `tcache_key` (glibc ≥ 2.34): the value tcache entries carry.
    pub tcache_key: Option<u64>,
}

impl Libc {
    /// The addresses of `layout`'s symbols in a process that loaded the libc with `bias` (the
    /// run-time address of its first `PT_LOAD` minus the link-time one).
    pub fn new(layout: &MallocLayout, bias: u64) -> Result<Libc, DebugInfoError> {
        let symbols = &layout.symbols;
        Ok(Libc {
            offsets: Offsets::new(layout)?,
            main_arena: bias.wrapping_add(symbols.main_arena),
            mp: bias.wrapping_add(symbols.mp_),
            tcache_key: symbols.tcache_key.map(|k| bias.wrapping_add(k)),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Offsets {
    /// SIZE_SZ: the size of a chunk's size word.
    pub size_sz: u64,
    /// MALLOC_ALIGNMENT (2 * SIZE_SZ).
    pub alignment: u64,
    /// MINSIZE: the smallest chunk.
    pub min_size: u64,
    /// sizeof(struct malloc_chunk): the part of a free chunk malloc_trim keeps.
    pub chunk_struct_size: u64,
    pub chunk_size: u64,
    pub chunk_fd: u64,
    pub chunk_bk: u64,
    pub state_size: u64,
    pub state_fastbins: u64,
    pub state_fastbin_count: u64,
    pub state_top: u64,
    pub state_bins: u64,
    pub state_bin_count: u64,
    pub state_next: u64,
    pub state_system_mem: u64,
    pub heap_info_size: u64,
    pub heap_info_ar_ptr: u64,
    pub heap_info_prev: u64,
    pub heap_info_size_field: u64,
    pub mp_sbrk_base: u64,
    pub mp_n_mmaps: u64,
    pub mp_mmapped_mem: u64,
    /// `mp_.hp_pagesize` (glibc ≥ 2.35): heaps are 4 huge pages when set.
    pub mp_hp_pagesize: Option<u64>,
    /// Offset of `tcache_entry.key` from the user pointer (glibc ≥ 2.29).
    pub tcache_key: Option<u64>,
    /// glibc ≥ 2.32 protects tcache and fastbin links: stored = (address >> 12) ^ pointer.
    pub safe_linking: bool,
}

/// HEAP_MAX_SIZE on LP64: 2 * DEFAULT_MMAP_THRESHOLD_MAX = 2 * 4 MiB * sizeof(long).
pub fn default_heap_max_size(size_sz: u64) -> u64 {
    2 * 4 * 1024 * 1024 * size_sz
}

impl Offsets {
    /// MALLOC_ALIGNMENT is a power of two: a mask, not a division (this runs for every chunk).
    pub fn aligned(&self, address: u64) -> bool {
        address & (self.alignment - 1) == 0
    }

    /// Where a chunk's header words are below its user pointer (what the probes read):
    /// `chunk2mem` puts the user pointer `offsetof(malloc_chunk, fd)` past the chunk's start.
    pub fn chunk_words(&self) -> pagealloc_common::ChunkWords {
        pagealloc_common::ChunkWords {
            size: self.chunk_fd - self.chunk_size,
            prev_size: self.chunk_fd,
        }
    }

    /// The first chunk at or after `address` whose user pointer is aligned.
    pub fn first_chunk_at(&self, address: u64) -> u64 {
        let header = 2 * self.size_sz;
        (address + header).next_multiple_of(self.alignment) - header
    }

    pub fn new(layout: &MallocLayout) -> Result<Offsets, DebugInfoError> {
        let chunk = &layout.malloc_chunk;
        let state = &layout.malloc_state;
        let heap = &layout.heap_info;
        let mp = &layout.malloc_par;
        let size_sz = chunk.field("mchunk_size")?.size;
        let alignment = 2 * size_sz;
        let fd_nextsize = chunk.offset("fd_nextsize")?;
        // glibc 2.43 removed the fastbins: no list to follow, nothing to recount.
        let fastbins = state.field("fastbinsY").ok();
        let bins = state.field("bins")?;
        let version = layout
            .glibc_version
            .as_deref()
            .and_then(|v| {
                let (major, minor) = v.split_once('.')?;
                Some((major.parse::<u32>().ok()?, minor.parse::<u32>().ok()?))
            })
            .unwrap_or((2, 32));
        Ok(Offsets {
            size_sz,
            alignment,
            // MINSIZE = (offsetof(malloc_chunk, fd_nextsize) + MALLOC_ALIGN_MASK) & ~MASK
            min_size: (fd_nextsize + alignment - 1) & !(alignment - 1),
            chunk_struct_size: chunk.size,
            chunk_size: chunk.offset("mchunk_size")?,
            chunk_fd: chunk.offset("fd")?,
            chunk_bk: chunk.offset("bk")?,
            state_size: state.size,
            state_fastbins: fastbins.map_or(0, |f| f.offset),
            state_fastbin_count: fastbins.and_then(|f| f.array_len).unwrap_or(0),
            state_top: state.offset("top")?,
            state_bins: bins.offset,
            state_bin_count: bins.array_len.unwrap_or(0),
            state_next: state.offset("next")?,
            state_system_mem: state.offset("system_mem")?,
            heap_info_size: heap.size,
            heap_info_ar_ptr: heap.offset("ar_ptr")?,
            heap_info_prev: heap.offset("prev")?,
            heap_info_size_field: heap.offset("size")?,
            mp_sbrk_base: mp.offset("sbrk_base")?,
            mp_n_mmaps: mp.offset("n_mmaps")?,
            mp_mmapped_mem: mp.offset("mmapped_mem")?,
            mp_hp_pagesize: mp.field("hp_pagesize").ok().map(|f| f.offset),
            tcache_key: layout
                .tcache_entry
                .as_ref()
                .and_then(|e| e.field("key").ok())
                .map(|f| f.offset),
            safe_linking: version >= (2, 32),
        })
    }
}
