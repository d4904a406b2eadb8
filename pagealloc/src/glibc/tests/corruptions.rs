//! Corruptions, and what the walker must make of each.

use super::synthetic::*;
use super::walking::*;
use crate::glibc::{FLAG_BITS, IS_MMAPPED, NON_MAIN_ARENA, PREV_INUSE};
use crate::proc::memory::ImageMemory;
use crate::state::heap::HeapMap;

// --- Corruptions and what the walker must make of them ------------------------------------------

/// Applies corruptions to a copy of a synthetic image, noting each, and the ones the walker
/// must report whatever else was changed.
pub(super) struct Mutator<'a> {
    pub(super) syn: &'a Synthetic,
    pub(super) rng: Rng,
    pub(super) memory: ImageMemory,
    pub(super) done: Vec<String>,
    /// (arena, what): corruptions the walker must report if it reaches that arena.
    pub(super) claims: Vec<(usize, String)>,
}

impl<'a> Mutator<'a> {
    pub(super) fn new(syn: &'a Synthetic, seed: u64) -> Self {
        Mutator {
            syn,
            rng: Rng::new(seed),
            memory: syn.memory.clone(),
            done: Vec::new(),
            claims: Vec::new(),
        }
    }

    pub(super) fn set(&mut self, addr: u64, value: u64, what: &str) {
        poke(&mut self.memory, addr, value);
        self.done.push(format!("{what} ({addr:#x}) = {value:#x}"));
    }

    /// Sets the size of the main arena's chunk `n` (flags kept); returns its address.
    pub(super) fn main_size(&mut self, n: usize, size: impl FnOnce(u64) -> u64) -> u64 {
        let o = &glibc().o;
        let c = self.syn.arenas[0].chunks[n];
        let flags = self.old(c.addr + o.chunk_size) & FLAG_BITS;
        let what = format!("size of main arena {:?} chunk {n}", c.kind);
        self.set(c.addr + o.chunk_size, size(c.size) | flags, &what);
        c.addr
    }

    pub(super) fn old(&self, addr: u64) -> u64 {
        peek(&self.syn.memory, addr).unwrap_or(0)
    }

    pub(super) fn any_chunk(&mut self) -> u64 {
        let chunks = self.syn.chunk_addrs();
        self.rng.pick(&chunks)
    }

    /// Values that make sizes and pointers interesting: zero, tiny, unaligned, huge, near the
    /// old value, pointers to other chunks and into malloc_state.
    pub(super) fn interesting(&mut self, old: u64) -> u64 {
        let chunk = self.any_chunk();
        let random = self.rng.word();
        self.rng.pick(&[
            0,
            1,
            8,
            16,
            17,
            24,
            0x21,
            0x30,
            0x31,
            0x38,
            0x1008,
            HEAP_LEN,
            HEAP_LEN + 0x11,
            u64::MAX,
            u64::MAX - 7,
            1 << 63,
            1 << 47,
            0xffff_ffff,
            old ^ PREV_INUSE,
            old ^ 8,
            old.wrapping_add(16),
            old.wrapping_sub(16),
            old.wrapping_mul(2),
            chunk,
            chunk + 8,
            chunk + 16,
            MAIN_ARENA,
            MAIN_ARENA + 0x100,
            random,
            random & 0xffff_fff0,
        ])
    }

    /// 1 to 16 random bytes anywhere in one region.
    pub(super) fn random_bytes(&mut self) {
        let regions = self.syn.regions();
        let (name, start, len) = self.rng.pick(&regions);
        let n = 1 + self.rng.below(16);
        let at = start + self.rng.below(len - n);
        let mut bytes = vec![0u8; n as usize];
        self.rng.fill(&mut bytes);
        poke_bytes(&mut self.memory, at, &bytes);
        self.done
            .push(format!("{name}: {n} random bytes at {at:#x}: {bytes:02x?}"));
    }

    /// An interesting value in a word the walker depends on.
    pub(super) fn key_word(&mut self) {
        let watched = &self.syn.watched;
        let k = watched[self.rng.below(watched.len() as u64) as usize];
        let value = self.interesting(self.old(k.addr));
        self.set(k.addr, value, &format!("{:?}", k.field));
    }

    /// An interesting value in a random aligned word of a region.
    pub(super) fn any_word(&mut self) {
        let regions = self.syn.regions();
        let (name, start, len) = self.rng.pick(&regions);
        let at = start + self.rng.below(len / 8) * 8;
        let value = self.interesting(self.old(at));
        self.set(at, value, name);
    }

    /// The size words of every chunk of a bin with several: huge (the walk cannot use them; the
    /// bins cross-check adds them up).
    pub(super) fn bin_sizes(&mut self) -> bool {
        let o = &glibc().o;
        let bins: Vec<(usize, u64)> = (self.syn.arenas.iter().enumerate())
            .flat_map(|(a, arena)| {
                (arena.bins.iter())
                    .filter(|(_, list)| list.len() > 1)
                    .map(move |(&b, _)| (a, b))
            })
            .collect();
        if bins.is_empty() {
            return false;
        }
        let (a, bin) = self.rng.pick(&bins);
        let huge = self.rng.pick(&[1 << 63, u64::MAX, 0xffff_ffff_ffff_0000]);
        for &c in &self.syn.arenas[a].bins[&bin] {
            let at = c + o.chunk_size;
            let value = huge | (self.old(at) & FLAG_BITS);
            self.set(at, value, &format!("size of a chunk in bin {bin}"));
        }
        true
    }

    /// A chunk's size word: 0, tiny, unaligned, huge, past the end, one granule off, flags.
    pub(super) fn chunk_size(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let c = arena.chunks[self.rng.below(arena.chunks.len() as u64) as usize];
        let old = self.old(c.addr + o.chunk_size);
        let flags = old & FLAG_BITS;
        let past_end = arena.end - c.addr + o.alignment;
        let value = self.rng.pick(&[
            flags,
            16 | flags,
            o.size_sz | flags,
            (c.size + o.size_sz) | flags,
            (c.size + o.alignment) | flags,
            c.size.saturating_sub(o.alignment) | flags,
            (c.size * 2) | flags,
            past_end | flags,
            u64::MAX,
            (1 << 63) | flags,
            old ^ PREV_INUSE,
            old ^ IS_MMAPPED,
            old ^ NON_MAIN_ARENA,
        ]);
        self.set(
            c.addr + o.chunk_size,
            value,
            &format!("size of {:?} chunk", c.kind),
        );
    }

    /// A fastbin list made cyclic: a chunk's fd back at itself or an earlier chunk.
    pub(super) fn fastbin_cycle(&mut self) -> bool {
        let o = &glibc().o;
        let lists: Vec<(usize, usize)> = (self.syn.arenas.iter().enumerate())
            .flat_map(|(a, arena)| {
                (arena.fastbins.iter().enumerate())
                    .filter(|(_, l)| !l.is_empty())
                    .map(move |(i, _)| (a, i))
            })
            .collect();
        if lists.is_empty() {
            return false;
        }
        let (a, i) = self.rng.pick(&lists);
        let list = &self.syn.arenas[a].fastbins[i];
        let k = self.rng.below(list.len() as u64) as usize;
        let back = list[self.rng.below(k as u64 + 1) as usize];
        let at = list[k] + o.chunk_fd;
        self.set(at, protect(at, back), "fastbin fd (a cycle)");
        let claim = format!("fastbin cycle {:#x} -> {back:#x}", list[k]);
        self.claims.push((a, claim));
        true
    }

    /// A bin made cyclic, or short, or pointing at a chunk in use.
    pub(super) fn bin_links(&mut self) -> bool {
        let o = &glibc().o;
        let bins: Vec<(usize, u64)> = (self.syn.arenas.iter().enumerate())
            .flat_map(|(a, arena)| arena.bins.keys().map(move |&b| (a, b)))
            .collect();
        if bins.is_empty() {
            return false;
        }
        let (a, bin) = self.rng.pick(&bins);
        let arena = &self.syn.arenas[a];
        let list = &arena.bins[&bin];
        let k = self.rng.below(list.len() as u64) as usize;
        let live = (arena.chunks.iter())
            .find(|c| c.kind == Kind::Live && c.addr > list[k])
            .map_or(0, |c| c.addr);
        let earlier = list[self.rng.below(k as u64 + 1) as usize];
        let to = self
            .rng
            .pick(&[list[k], earlier, bin_at(arena.state, bin), live]);
        self.set(
            list[k] + o.chunk_fd,
            to,
            &format!("fd of a chunk in bin {bin}"),
        );
        true
    }

    /// The arena ring: next set to 0, unaligned, itself, a chunk, garbage.
    pub(super) fn next_ring(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let chunk = self.any_chunk();
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            arena.state,
            arena.state + 8,
            arena.state + 16,
            MAIN_ARENA + 0x200,
            chunk,
            chunk + 16,
            LIBC_DATA,
            random,
            random & !15,
        ]);
        self.set(
            arena.state + o.state_next,
            value,
            &format!("arena {a}'s next"),
        );
    }

    /// A second arena's heap_info: garbage, a cycle, sizes.
    pub(super) fn heap_info(&mut self) -> bool {
        let g = glibc();
        let o = &g.o;
        if self.syn.arenas.len() < 2 {
            return false;
        }
        let (field, at) = self.rng.pick(&[
            ("heap_info.ar_ptr", ARENA2_HEAP + o.heap_info_ar_ptr),
            ("heap_info.prev", ARENA2_HEAP + o.heap_info_prev),
            ("heap_info.size", ARENA2_HEAP + o.heap_info_size_field),
        ]);
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            ARENA2_HEAP,
            ARENA2_HEAP - g.heap_max,
            ARENA2_HEAP + g.heap_max,
            ARENA2_HEAP + 8,
            o.heap_info_size,
            o.heap_info_size + 0x100,
            HEAP_LEN / 2,
            HEAP_LEN + 0x1000,
            g.heap_max,
            g.heap_max + 1,
            MAIN_ARENA,
            random,
        ]);
        self.set(at, value, field);
        true
    }

    /// A whole heap's bytes random (arena 2's heap_info and malloc_state kept or not).
    pub(super) fn whole_segment(&mut self) {
        let (arena, name, start, len) = if self.syn.arenas.len() > 1 && self.rng.percent(50) {
            let keep = if self.rng.percent(50) {
                self.syn.arenas[1].first - ARENA2_HEAP
            } else {
                0
            };
            (1, "arena 2's heap", ARENA2_HEAP + keep, HEAP_LEN - keep)
        } else {
            (0, "main heap", MAIN_HEAP, HEAP_LEN)
        };
        let mut bytes = vec![0u8; len as usize];
        self.rng.fill(&mut bytes);
        poke_bytes(&mut self.memory, start, &bytes);
        self.done
            .push(format!("{name} from {start:#x}: {len} random bytes"));
        // A random size word is a valid one with odds of 2^-40: the first chunk cannot be read.
        self.claims.push((arena, format!("{name}: random bytes")));
    }

    /// mp_: sbrk_base, the mmap counts, hp_pagesize.
    pub(super) fn mp_field(&mut self) {
        let o = &glibc().o;
        let top = self.syn.arenas[0].top;
        let mut fields = vec![
            ("mp_.sbrk_base", MP + o.mp_sbrk_base),
            ("mp_.n_mmaps", MP + o.mp_n_mmaps),
            ("mp_.mmapped_mem", MP + o.mp_mmapped_mem),
        ];
        if let Some(off) = o.mp_hp_pagesize {
            fields.push(("mp_.hp_pagesize", MP + off));
        }
        let (field, at) = self.rng.pick(&fields);
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            1,
            8,
            top,
            top + 16,
            MAIN_HEAP + 8,
            MAIN_HEAP + 0x10,
            MAIN_HEAP - 0x1000,
            2 << 20,
            1 << 40,
            1 << 62,
            u64::MAX,
            random,
        ]);
        self.set(at, value, field);
    }

    /// An arena's top pointer: 0, on another chunk, mid-chunk, unaligned, outside.
    pub(super) fn top_pointer(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let chunk = arena.chunks[self.rng.below(arena.chunks.len() as u64) as usize].addr;
        let random = self.rng.word();
        let value = self.rng.pick(&[
            0,
            chunk,
            chunk + 8,
            chunk + 16,
            arena.top + 8,
            arena.top + 16,
            arena.start,
            arena.start - 0x1000,
            arena.end,
            MAIN_ARENA,
            u64::MAX,
            u64::MAX - 7,
            random,
        ]);
        self.set(
            arena.state + o.state_top,
            value,
            &format!("arena {a}'s top"),
        );
    }

    /// A fastbinsY head or a bin's fd/bk in malloc_state.
    pub(super) fn list_head(&mut self) {
        let o = &glibc().o;
        let a = self.rng.below(self.syn.arenas.len() as u64) as usize;
        let arena = &self.syn.arenas[a];
        let at = if self.rng.percent(50) {
            arena.state + o.state_fastbins + self.rng.below(o.state_fastbin_count) * o.size_sz
        } else {
            arena.state + o.state_bins + self.rng.below(o.state_bin_count) * o.size_sz
        };
        let chunk = arena.chunks[self.rng.below(arena.chunks.len() as u64) as usize].addr;
        let value = self
            .rng
            .pick(&[0, chunk, chunk + 16, chunk + 8, arena.top, 1]);
        self.set(at, value, &format!("arena {a}'s list head"));
    }

    /// The mmapped chunk's header.
    pub(super) fn mmap_header(&mut self) -> bool {
        let o = &glibc().o;
        if self.syn.mmapped.is_empty() {
            return false;
        }
        let page = glibc().page;
        let at = MMAP_CHUNK + self.rng.pick(&[o.chunk_size - o.size_sz, o.chunk_size]);
        let value = self.rng.pick(&[
            0,
            16,
            page | IS_MMAPPED,
            (MMAP_LEN + page) | IS_MMAPPED,
            MMAP_LEN,
            MMAP_LEN | IS_MMAPPED | PREV_INUSE,
            MMAP_LEN | IS_MMAPPED | NON_MAIN_ARENA,
            (u64::MAX - page + 1) | IS_MMAPPED,
            u64::MAX,
        ]);
        self.set(at, value, "mmapped chunk header");
        true
    }

    /// One of the targeted corruptions.
    pub(super) fn targeted(&mut self) {
        loop {
            let done = match self.rng.below(12) {
                0 | 1 => {
                    self.chunk_size();
                    true
                }
                2 => self.fastbin_cycle(),
                3 => self.bin_links(),
                4 => {
                    self.next_ring();
                    true
                }
                5 => self.heap_info(),
                6 => {
                    self.mp_field();
                    true
                }
                7 => {
                    self.top_pointer();
                    true
                }
                8 => {
                    self.list_head();
                    true
                }
                9 => self.mmap_header(),
                10 => self.bin_sizes(),
                _ => {
                    self.key_word();
                    true
                }
            };
            if done {
                return;
            }
        }
    }
}

/// A case's outcome: Err(why) on failure. The message starts with a category and a colon.
pub(super) type Verdict = Result<(), String>;

/// What the walker must do with a corrupted image, beyond what it must always do.
pub(super) struct Expect {
    /// Corruptions it must report (a note, unknown bytes, or an error).
    pub(super) must_report: Vec<String>,
    /// Whether an error is acceptable: only an arena ring leading to unreadable memory gives one.
    pub(super) error_ok: bool,
}

/// Tells from the words a corruption changed what the walker must report. Where several words
/// changed, only what holds whatever the others are is claimed: the first changed size word of
/// an arena whose extent is intact is surely read; the other rules need a single change.
pub(super) fn expect(syn: &Synthetic, after: &ImageMemory, claims: &[(usize, String)]) -> Expect {
    let g = glibc();
    let o = &g.o;
    let before = &syn.memory;
    let changed: Vec<Field> = (syn.watched.iter())
        .filter(|k| k.read(before) != k.read(after))
        .map(|k| k.field)
        .collect();
    let is = |key: Field| changed.contains(&key);
    let only = |key: Field| changed == [key];
    let old = |addr: u64| peek(before, addr).unwrap_or(0);
    let new = |addr: u64| peek(after, addr).unwrap_or(0);
    // Arena 2 may not be reached, or its heap not found, if these changed.
    let reached = |a: usize| a == 0 || !is(Field::Next(0)) && !is(Field::HpPagesize);
    let mut must: Vec<String> = (claims.iter())
        .filter(|(a, _)| reached(*a))
        .map(|(_, claim)| claim.clone())
        .collect();
    let mut report = |cond: bool, why: String| {
        if cond {
            must.push(why);
        }
    };
    let sbrk_base = new(MP + o.mp_sbrk_base);

    for (a, arena) in syn.arenas.iter().enumerate() {
        if !reached(a) {
            continue;
        }
        let top_size = arena.top + o.chunk_size;
        let top_key = Field::Size {
            arena: a,
            chunk: arena.chunks.len() - 1,
        };
        let extent_kept = !is(Field::Top(a))
            && (old(top_size) & !FLAG_BITS) == (new(top_size) & !FLAG_BITS)
            && if a == 0 {
                !is(Field::SbrkBase)
            } else {
                !is(Field::ArPtr) && !is(Field::HeapPrev) && !is(Field::HeapSize)
            };
        let boundaries = arena.boundaries();
        let first_changed = (arena.chunks.iter().enumerate())
            .filter(|(_, c)| c.kind != Kind::Top)
            .find(|(_, c)| old(c.addr + o.chunk_size) != new(c.addr + o.chunk_size));
        if let (true, Some((i, c))) = (extent_kept, first_changed) {
            let (was, now) = (old(c.addr + o.chunk_size), new(c.addr + o.chunk_size));
            let size = now & !FLAG_BITS;
            if size != was & !FLAG_BITS {
                let lands = c
                    .addr
                    .checked_add(size)
                    .is_some_and(|e| boundaries.contains(&e));
                report(
                    size == 0 || size == 2 * o.size_sz || !lands,
                    format!(
                        "the size of chunk {:#x} became {now:#x}: it does not end on a chunk",
                        c.addr
                    ),
                );
            } else if (was ^ now) & PREV_INUSE != 0 && i > 0 && changed.len() == 1 {
                report(
                    true,
                    format!(
                        "chunk {:#x}'s PREV_INUSE flipped: the chunk before it changed state \
                         but not its list",
                        c.addr
                    ),
                );
            }
        }
        if only(top_key) {
            let (was, now) = (old(top_size), new(top_size));
            let size = now & !FLAG_BITS;
            if a == 0 {
                report(
                    size < o.min_size,
                    format!("top's size {now:#x} is too small"),
                );
            } else {
                report(
                    size != was & !FLAG_BITS,
                    format!("arena {a}'s top size {now:#x}: top no longer ends its heap"),
                );
            }
            report(
                (was ^ now) & PREV_INUSE != 0,
                "top's PREV_INUSE flipped".into(),
            );
        }
        if only(Field::Top(a)) {
            let top = new(arena.state + o.state_top);
            if a == 0 {
                let readable = top
                    .checked_add(o.chunk_size)
                    .and_then(|at| peek(after, at))
                    .is_some();
                report(
                    top == 0 || !readable || top < sbrk_base,
                    format!("main_arena.top = {top:#x}"),
                );
            } else {
                report(
                    top & !(g.heap_max - 1) != arena.start,
                    format!("arena {a}'s top {top:#x} is outside its heap"),
                );
            }
        }
        if only(Field::Next(a)) {
            let next = new(arena.state + o.state_next);
            let fine = if a == 0 {
                // A ring of the main arena alone is a valid ring.
                next == MAIN_ARENA || syn.arenas.get(1).is_some_and(|x| x.state == next)
            } else {
                next == MAIN_ARENA
            };
            report(!fine, format!("arena {a}'s next = {next:#x}"));
        }
        for (index, list) in arena.fastbins.iter().enumerate() {
            let head = arena.state + o.state_fastbins + index as u64 * o.size_sz;
            if only(Field::FastbinHead { arena: a, index }) {
                let to = new(head);
                report(
                    to != 0 && !arena.in_use_at(to),
                    format!("fastbinsY[{index}] = {to:#x}, not a chunk in use"),
                );
            }
            for (k, &c) in list.iter().enumerate() {
                let chunk = arena.chunks.iter().position(|x| x.addr == c).unwrap();
                if only(Field::FastFd { arena: a, chunk }) {
                    let at = c + o.chunk_fd;
                    let to = protect(at, new(at));
                    report(
                        to != 0 && (list[..=k].contains(&to) || !arena.in_use_at(to)),
                        format!("fastbin chunk {c:#x} links to {to:#x}: a cycle or not a chunk"),
                    );
                }
            }
        }
        for (chunk, c) in arena.chunks.iter().enumerate() {
            if let Kind::Bin(bin) = c.kind {
                report(
                    only(Field::ChunkFd { arena: a, chunk }),
                    format!("the fd of chunk {:#x} in bin {bin} changed", c.addr),
                );
            }
        }
        for bin in 1..=o.state_bin_count / 2 {
            report(
                only(Field::BinFd { arena: a, bin }),
                format!("bin {bin}'s fd changed"),
            );
        }
        if a == 1 {
            report(only(Field::ArPtr), "heap_info.ar_ptr changed".into());
            let size = new(ARENA2_HEAP + o.heap_info_size_field);
            report(
                only(Field::HeapSize) && (size < o.heap_info_size || size > g.heap_max),
                format!("heap_info.size = {size:#x}"),
            );
            let prev = new(ARENA2_HEAP + o.heap_info_prev);
            report(
                only(Field::HeapPrev) && prev != 0,
                format!("heap_info.prev = {prev:#x}"),
            );
        }
    }
    report(
        only(Field::SbrkBase) && (sbrk_base == 0 || sbrk_base > syn.arenas[0].top),
        format!("mp_.sbrk_base = {sbrk_base:#x}"),
    );
    for key in [
        Field::NMmaps,
        Field::MmappedMem,
        Field::MmapPrevSize,
        Field::MmapSize,
    ] {
        report(only(key), format!("{key:?} changed"));
    }
    Expect {
        must_report: must,
        error_ok: is(Field::Next(0)) || is(Field::Next(1)),
    }
}

/// Walks a corrupted image and judges the outcome.
pub(super) fn judge(
    syn: &Synthetic,
    memory: &ImageMemory,
    expect: &Expect,
    done: &[String],
) -> Verdict {
    let context = format!("[{:?}; {}]", syn.spec, done.join("; "));
    judged_walk(syn, memory, expect, &context).map(|_| ())
}

/// Walks `memory` and checks what every case must satisfy: no panic, no hang, an error only
/// where `expect` allows one, every heap byte counted once, and what must be reported reported.
/// The map, unless the walk ended in an allowed error.
pub(super) fn judged_walk(
    syn: &Synthetic,
    memory: &ImageMemory,
    expect: &Expect,
    context: &str,
) -> Result<Option<HeapMap>, String> {
    let map = match run_walk(syn, memory) {
        Err(why) => return Err(format!("{why} {context}")),
        Ok(Err(error)) if !expect.error_ok => {
            return Err(format!("unexpected error: {error} {context}"));
        }
        Ok(Err(_)) => return Ok(None),
        Ok(Ok(map)) => map,
    };
    check_accounting(&map).map_err(|e| format!("accounting: {e} {context}"))?;
    if !expect.must_report.is_empty() && map.notes.is_empty() && map.totals.unknown_bytes == 0 {
        return Err(format!(
            "silent: {} {context}",
            expect.must_report.join("; ")
        ));
    }
    Ok(Some(map))
}
