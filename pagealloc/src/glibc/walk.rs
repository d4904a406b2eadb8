//! Walks every arena of a glibc process: the arena ring and every heap of every arena
//! ([`super::arenas`]), every chunk by its size word ([`super::chain`], in parts on several
//! threads for large heaps: [`super::parts`]), then the fastbins and the bins
//! ([`super::lists`]) and the mmapped chunks ([`super::mmapped`]).
//!
//! The target may be running: every pointer, size and alignment is checked, every loop is
//! bounded, a spot that looks inconsistent is read again once, and what stays inconsistent is
//! counted as `unknown`, never guessed. The heap is read through a window that slides with the
//! walk ([`super::window`]).
use std::time::Instant;

use super::Libc;
use super::arenas::ArenaHeader;
use super::captures::Kepts;
use super::layout::default_heap_max_size;
use super::lists::{self, Heads};
use super::parts::{ArenaHeaps, HeapsWalked, Split};
use super::walker::{WalkError, Walker};
use crate::proc::memory::Memory;
use crate::state::heap::{
    AddressRange, Arena, HeapFigures, HeapGeometry, HeapMap, HeapNote, MmappedChunk, Segment,
};
use crate::state::pages::Mapping;

/// An arena walked, its lists followed.
struct Finished {
    arena: Arena,
    segments: Vec<Segment>,
    notes: Vec<HeapNote>,
    /// The chunks the lists were followed through: freed off the caller's time, at the end.
    kept: (Kepts, Kepts),
}

/// Walks the heaps of the process whose glibc is `libc`, reading its memory from `memory`.
pub fn walk(
    libc: &Libc,
    memory: &dyn Memory,
    mappings: &[Mapping],
    split: Split,
) -> Result<HeapMap, WalkError> {
    Walker::new(libc, memory, mappings, split).walk()
}

/// What glibc's `mp_` tells of the heaps before they are walked.
struct MallocParams {
    /// Where the main arena's heap begins.
    sbrk_base: u64,
    /// The mmapped chunks glibc counts and their bytes (`mp_.n_mmaps`, `mp_.mmapped_mem`).
    mmapped: (u64, u64),
    /// How large a heap of an arena other than the main one can be (HEAP_MAX_SIZE).
    heap_max: u64,
}

/// The walk's finds of every arena, gathered in arena order.
struct Gathered {
    arenas: Vec<Arena>,
    segments: Vec<Segment>,
    /// The chunks each arena's lists were followed through, to free.
    kept: Vec<(Kepts, Kepts)>,
}

impl Walker<'_> {
    fn walk(&mut self) -> Result<HeapMap, WalkError> {
        let params = self.malloc_params()?;
        self.tcache_key = self.read_tcache_key()?;
        let headers = self.arenas()?;
        let (to_walk, heap_notes) = self.heaps_to_walk(&headers, &params);
        let started = Instant::now();
        let walked = self.parts().walk_heaps(&to_walk);
        log::debug!(
            "heaps of {} arenas walked in {:?}",
            headers.len(),
            started.elapsed()
        );
        let finished = self.finish_arenas(&headers, &to_walk, walked);
        let Gathered {
            arenas,
            segments,
            kept,
        } = self.gather(finished, heap_notes);

        let mmapped = self.mmapped_chunks_freeing(&segments, params.mmapped, kept);
        let mmapped_bytes: u64 = mmapped.iter().map(|c| c.bytes).sum();
        let counted_after = self.mmapped_counted();
        self.check_mmapped(
            (mmapped.len() as u64, mmapped_bytes),
            params.mmapped,
            counted_after.ok(),
        );
        let mut totals = HeapFigures::default();
        for arena in &arenas {
            totals.add(&arena.figures);
        }
        let o = self.offsets;
        let mut map = HeapMap {
            arenas,
            geometry: HeapGeometry {
                chunk_header: o.chunk_fd,
                alignment: o.alignment,
                heap_max: params.heap_max,
                main_growth_max: default_heap_max_size(o.size_sz),
            },
            mmapped_chunks: mmapped.len() as u64,
            mmapped_bytes,
            totals,
            notes: std::mem::take(&mut self.notes),
            mmapped,
            segments,
        };
        map.set_pinned(self.memory.page_size());
        Ok(map)
    }

    /// Reads `mp_`: the main heap's start, the mmapped chunks counted, the heaps' largest size.
    fn malloc_params(&mut self) -> Result<MallocParams, WalkError> {
        let o = self.offsets;
        let mp = self.libc.mp;
        let sbrk_base = self.read_u64("mp_.sbrk_base", mp + o.mp_sbrk_base)?;
        let mmapped = self.mmapped_counted()?;
        let hp_pagesize = match o.mp_hp_pagesize {
            Some(off) => self.read_u64("mp_.hp_pagesize", mp + off)?,
            None => 0,
        };
        // Heaps are 4 huge pages when the hugetlb tunable is set: a power of two, at most 1 GiB.
        let heap_max = match hp_pagesize {
            0 => default_heap_max_size(o.size_sz),
            p if p.is_power_of_two() && p <= 1 << 30 => 4 * p,
            p => {
                self.note(HeapNote::inconsistent(format!(
                    "mp_.hp_pagesize {p:#x} is corrupt: assuming no huge pages"
                )));
                default_heap_max_size(o.size_sz)
            }
        };
        Ok(MallocParams {
            sbrk_base,
            mmapped,
            heap_max,
        })
    }

    /// The value of libc's `tcache_key`, which marks tcache chunks; None (and a note) for a
    /// glibc without one.
    fn read_tcache_key(&mut self) -> Result<Option<u64>, WalkError> {
        match self.libc.tcache_key {
            Some(addr) => self.read_u64("tcache_key", addr).map(Some),
            None => {
                self.note(HeapNote::limitation(
                    "this glibc has no tcache_key: tcache chunks are counted as live".into(),
                ));
                Ok(None)
            }
        }
    }

    /// Every arena's heaps, found first so that their parts are walked as one pool; with the
    /// notes about each arena's heaps, which still come before what its walk finds.
    fn heaps_to_walk(
        &mut self,
        headers: &[ArenaHeader],
        params: &MallocParams,
    ) -> (Vec<ArenaHeaps>, Vec<Vec<HeapNote>>) {
        let mut heap_notes = Vec::with_capacity(headers.len());
        let to_walk = (headers.iter())
            .map(|header| {
                let before = self.notes.len();
                let main = header.address == self.libc.main_arena;
                let heaps = if main {
                    self.main_heap(header, params.sbrk_base)
                } else {
                    self.arena_heaps(header, params.heap_max)
                };
                // What system_mem has of the main arena beyond the heaps found.
                let unwalked = if main {
                    self.unwalked(header, &heaps)
                } else {
                    0
                };
                heap_notes.push(self.notes.split_off(before));
                ArenaHeaps {
                    heaps,
                    main,
                    top: header.top,
                    unwalked,
                }
            })
            .collect();
        (to_walk, heap_notes)
    }

    /// The lists of several arenas side by side; an arena with more than its share of the
    /// chunks kept follows its own on every thread.
    fn finish_arenas(
        &self,
        headers: &[ArenaHeader],
        to_walk: &[ArenaHeaps],
        walked: Vec<HeapsWalked>,
    ) -> Vec<Finished> {
        let threads = self.split.threads.max(1);
        let kept = |w: &HeapsWalked| {
            let runs = w.fast.runs.iter().chain(&w.bin.runs);
            runs.map(|(_, run)| run.len()).sum::<usize>()
        };
        let all_kept: usize = walked.iter().map(kept).sum();
        crate::parallel::map(
            headers.iter().zip(to_walk).zip(walked).collect(),
            threads,
            |((header, heaps), walked)| {
                let own = if kept(&walked) * threads > all_kept {
                    threads
                } else {
                    1
                };
                self.finish_arena(header, heaps, walked, own)
            },
        )
    }

    /// The arenas finished, in order: each arena's notes (about its heaps, then from its walk)
    /// noted, its segments and the chunks it kept put together.
    fn gather(&mut self, finished: Vec<Finished>, heap_notes: Vec<Vec<HeapNote>>) -> Gathered {
        let mut gathered = Gathered {
            arenas: Vec::with_capacity(finished.len()),
            segments: Vec::new(),
            kept: Vec::with_capacity(finished.len()),
        };
        for (finished, notes) in finished.into_iter().zip(heap_notes) {
            for note in notes.into_iter().chain(finished.notes) {
                self.note(note);
            }
            gathered.arenas.push(finished.arena);
            gathered.segments.extend(finished.segments);
            gathered.kept.push(finished.kept);
        }
        gathered
    }

    /// The mmapped chunks (as [`Walker::mmapped_chunks`]), the chunks `kept` freed meanwhile:
    /// freeing millions of captures takes milliseconds, beside the search rather than after it.
    fn mmapped_chunks_freeing(
        &self,
        segments: &[Segment],
        expected: (u64, u64),
        kept: Vec<(Kepts, Kepts)>,
    ) -> Vec<MmappedChunk> {
        let started = Instant::now();
        let mmapped = std::thread::scope(|scope| {
            scope.spawn(move || drop(kept));
            self.mmapped_chunks(segments, expected)
        });
        log::debug!("mmapped chunks looked for in {:?}", started.elapsed());
        mmapped
    }

    /// The mmapped chunks glibc counts and their bytes (`mp_.n_mmaps`, `mp_.mmapped_mem`).
    fn mmapped_counted(&self) -> Result<(u64, u64), WalkError> {
        let (o, mp) = (self.offsets, self.libc.mp);
        let n_mmaps = self.read_u64("mp_.n_mmaps", mp + o.mp_n_mmaps)? & 0xffff_ffff;
        let mmapped_mem = self.read_u64("mp_.mmapped_mem", mp + o.mp_mmapped_mem)?;
        Ok((n_mmaps, mmapped_mem))
    }

    /// Notes it if the mmapped chunks found, (count, bytes), are not what glibc counted before
    /// the search. If glibc still counts the same after it (`counted_after`), the target did
    /// not change them meanwhile (it is stopped, or quiet): the figures are known to be
    /// incomplete, and a look again would find the same.
    fn check_mmapped(
        &mut self,
        found: (u64, u64),
        counted: (u64, u64),
        counted_after: Option<(u64, u64)>,
    ) {
        if found == counted {
            return;
        }
        let (found_chunks, found_bytes) = found;
        let (chunks, bytes) = counted;
        let note = if counted_after == Some(counted) {
            HeapNote::incomplete(format!(
                "the mmapped figures are incomplete: found {found_chunks} mmapped chunks of \
                 {found_bytes} bytes, glibc counts {chunks} of {bytes} (mp_.n_mmaps, \
                 mp_.mmapped_mem), unchanged during the search: the first page of a chunk is \
                 not resident (swapped out, or given back), or memory looked like a chunk"
            ))
        } else {
            HeapNote::inconsistent(format!(
                "found {found_chunks} mmapped chunks of {found_bytes} bytes, glibc counts \
                 {chunks} of {bytes} (mp_.n_mmaps, mp_.mmapped_mem), which changed during the \
                 search: the target changed its mmapped chunks during the snapshot"
            ))
        };
        self.note(note);
    }

    /// Follows an arena's fastbins and bins, its heaps walked, through the chunks the walk kept
    /// that they can hold, and recounts the fastbin chunks, on `threads` threads.
    fn finish_arena(
        &self,
        header: &ArenaHeader,
        heaps: &ArenaHeaps,
        walked: HeapsWalked,
        threads: usize,
    ) -> Finished {
        let o = self.offsets;
        if header.never_initialised() {
            // An empty heap: its all-zero bins are no lists to follow.
            let arena = Arena {
                address: header.address,
                main: heaps.main,
                heaps: Vec::new(),
                figures: HeapFigures::default(),
            };
            return Finished {
                arena,
                segments: walked.segments,
                notes: Vec::new(),
                kept: (
                    Kepts::new(walked.fast, threads),
                    Kepts::new(walked.bin, threads),
                ),
            };
        }
        let page_shift = self.memory.page_size().trailing_zeros();
        let HeapsWalked {
            mut segments,
            mut figures,
            notes,
            fast,
            bin,
        } = walked;
        let started = Instant::now();
        let (fast, bin) = (Kepts::new(fast, threads), Kepts::new(bin, threads));
        let resolved = started.elapsed();
        let mut notes: Vec<HeapNote> = (notes.into_iter())
            .map(|(_, note)| HeapNote::inconsistent(note))
            .collect();
        figures.system_bytes = header.system_mem;
        figures.unknown_bytes += heaps.unwalked;
        let heads = Heads {
            arena: header.address,
            fastbins: &header.fastbins,
            bins_address: header.bins_address,
            bins: &header.bins,
        };
        let lists = lists::follow(o, &heads, &fast, &bin, threads);
        let followed = started.elapsed();
        notes.extend(lists.broken.iter().cloned().map(HeapNote::inconsistent));
        let largest_fastbin = lists::recount_fastbins(
            o,
            &fast,
            &lists.on_fastbin,
            &mut segments,
            page_shift,
            threads,
            &mut figures,
        );
        if lists.broken.is_empty()
            && (lists.bin_chunks, lists.bin_bytes) != (figures.bin_chunks, figures.bin_bytes)
        {
            notes.push(HeapNote::inconsistent(format!(
                "arena {:#x}: the bins hold {} chunks of {} bytes, the walk found {} free chunks \
                 of {} bytes: the target changed during the snapshot",
                header.address,
                lists.bin_chunks,
                lists.bin_bytes,
                figures.bin_chunks,
                figures.bin_bytes
            )));
        }
        log::debug!(
            "arena {:#x}: {} fast and {} bin chunks kept, their links resolved in {:?}; \
             fastbins and bins followed in {:?}, fastbin chunks recounted in {:?}",
            header.address,
            fast.len,
            bin.len,
            resolved,
            followed - resolved,
            started.elapsed() - followed
        );
        // From the chunks kept, not from the walk's running maximum: parts walked from a wrong
        // guess and taken back may have counted a larger one.
        figures.largest_free_bytes = largest_fastbin.max(lists.largest_bin);
        figures.finish();
        let arena = Arena {
            address: header.address,
            main: heaps.main,
            heaps: (heaps.heaps.iter())
                .map(|&(start, end, _)| AddressRange { start, end })
                .collect(),
            figures,
        };
        Finished {
            arena,
            segments,
            notes,
            kept: (fast, bin),
        }
    }
}
