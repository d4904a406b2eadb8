//! Unwinding a sampled allocation's stack in user space, as perf's `--call-graph dwarf` and
//! samply do: framehop walks the copied stack bytes with each mapped object's `.eh_frame`
//! (or `.debug_frame`), so code built without frame pointers unwinds fully.
use std::ops::{Deref, Range};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ModuleSectionInfo, Unwinder as _};

use crate::objects::{ElfFile, Objects};
use crate::state::pages::Mapping;
use crate::state::sites::{Module, Stack};
use crate::trace::RawStack;

/// The most frames a stack keeps (innermost first); deeper stacks are marked truncated.
pub const MAX_FRAMES: usize = 128;

/// The public allocation functions, whose frames are dropped from a stack's top (the site is
/// the code that called them).
const ALLOCATOR_FUNCTIONS: &[&str] = &[
    "malloc",
    "calloc",
    "realloc",
    "reallocarray",
    "memalign",
    "aligned_alloc",
    "valloc",
    "pvalloc",
    "posix_memalign",
    "free",
];

/// How often the process's mappings are read again when a stack has an address in none.
const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// One process's unwinder: its executable mappings' call-frame information, loaded as it
/// meets them.
pub struct Unwinder {
    pid: i32,
    unwinder: UnwinderX86_64<SectionBytes>,
    cache: CacheX86_64,
    /// The executable mappings known, by start.
    code: Vec<Code>,
    /// Where the allocation functions' code is.
    allocator: Vec<Range<u64>>,
    loaded_at: Option<Instant>,
}

/// An executable mapping of a file.
struct Code {
    range: Range<u64>,
    module: Arc<Module>,
}

impl Unwinder {
    pub fn new(pid: i32) -> Unwinder {
        Unwinder {
            pid,
            unwinder: UnwinderX86_64::new(),
            cache: CacheX86_64::new(),
            code: Vec::new(),
            allocator: Vec::new(),
            loaded_at: None,
        }
    }

    /// The stack of a sampled allocation, innermost frame first, the allocator's own frames
    /// dropped; None if not a frame is left.
    pub fn unwind(&mut self, raw: &RawStack) -> Option<Stack> {
        let (mut frames, mut truncated) = self.frames(raw);
        let unknown = frames.len() < MAX_FRAMES && truncated;
        if unknown && self.may_reload() {
            // Stopped at an address in no mapping known: a library loaded since, perhaps.
            self.load_mappings();
            (frames, truncated) = self.frames(raw);
        }
        let own = frames
            .iter()
            .position(|address| !self.allocator.iter().any(|f| f.contains(address)))?;
        frames.drain(..own);
        Some(Stack {
            frames: frames.into(),
            truncated,
        })
    }

    /// The module (and the file offset in it) an address lies in.
    pub fn module_of(&self, address: u64) -> Option<(Arc<Module>, u64)> {
        let code = code_at(&self.code, address)?;
        let offset = address - code.module.start + code.module.file_offset;
        Some((code.module.clone(), offset))
    }

    /// The frames framehop finds (lookup addresses), and whether it stopped short of the root.
    fn frames(&mut self, raw: &RawStack) -> (Vec<u64>, bool) {
        if self.loaded_at.is_none() {
            self.load_mappings();
        }
        let top = raw.sp + raw.stack.len() as u64;
        let mut read_stack = |address: u64| {
            if address < raw.sp || address.saturating_add(8) > top {
                return Err(());
            }
            let at = (address - raw.sp) as usize;
            let word = raw.stack.get(at..at + 8).ok_or(())?;
            Ok(u64::from_le_bytes(word.try_into().map_err(|_| ())?))
        };
        let regs = UnwindRegsX86_64::new(raw.ip, raw.sp, raw.bp);
        let mut frames = Vec::new();
        let mut iter = self
            .unwinder
            .iter_frames(raw.ip, regs, &mut self.cache, &mut read_stack);
        loop {
            match iter.next() {
                Ok(Some(frame)) => {
                    let address = frame.address_for_lookup();
                    // Only code of a mapped file: a frame elsewhere (a JIT, a guess from a
                    // register that was no frame pointer) ends the stack, unknown.
                    if frames.len() == MAX_FRAMES || code_at(&self.code, address).is_none() {
                        return (frames, true);
                    }
                    frames.push(address);
                }
                Ok(None) => return (frames, false),
                Err(_) => return (frames, true),
            }
        }
    }

    fn may_reload(&self) -> bool {
        self.loaded_at.is_none_or(|at| at.elapsed() >= RELOAD_EVERY)
    }

    /// Reads the process's executable mappings of files, and adds those not known yet.
    fn load_mappings(&mut self) {
        self.loaded_at = Some(Instant::now());
        let Ok(maps) = crate::proc::maps_of(self.pid) else {
            return;
        };
        let code = (maps.iter()).filter(|m| m.perms.contains('x') && m.path.starts_with('/'));
        for mapping in code {
            if self.code.iter().any(|c| c.range.start == mapping.start) {
                continue;
            }
            let file = PathBuf::from(format!(
                "/proc/{}/map_files/{:x}-{:x}",
                self.pid, mapping.start, mapping.end
            ));
            match Objects::shared().open(&file) {
                Ok(elf) => self.add(mapping, elf),
                Err(e) => log::debug!("no unwinding through {}: {e}", mapping.path),
            }
        }
    }

    fn add(&mut self, mapping: &Mapping, elf: Arc<ElfFile>) {
        // The link-time address the mapping's start has: the segment holding its file offset.
        let Some(svma) = (elf.segments().iter())
            .find(|s| {
                s.file_offset <= mapping.offset && mapping.offset < s.file_offset + s.file_size
            })
            .map(|s| s.address + (mapping.offset - s.file_offset))
        else {
            return;
        };
        let base_avma = mapping.start.wrapping_sub(svma);
        if elf.dynamic_symbol("malloc").is_some() {
            for name in ALLOCATOR_FUNCTIONS {
                if let Some(symbol) = elf.dynamic_symbol(name) {
                    let start = base_avma.wrapping_add(symbol.address);
                    self.allocator.push(start..start + symbol.size.max(1));
                }
            }
        }
        let module = Arc::new(Module {
            path: mapping.path.clone(),
            build_id: elf.build_id().map(hex),
            start: mapping.start,
            end: mapping.end,
            file_offset: mapping.offset,
        });
        self.unwinder.add_module(framehop::Module::new(
            mapping.path.clone(),
            mapping.start..mapping.end,
            base_avma,
            Sections(elf),
        ));
        let at = self.code.partition_point(|c| c.range.start < mapping.start);
        self.code.insert(
            at,
            Code {
                range: mapping.start..mapping.end,
                module,
            },
        );
    }
}

/// The executable mapping `address` lies in, of those known (by start).
fn code_at(code: &[Code], address: u64) -> Option<&Code> {
    let at = code.partition_point(|c| c.range.start <= address);
    code[..at].last().filter(|c| c.range.contains(&address))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A section's bytes, inside the file's one copy.
pub struct SectionBytes {
    file: Arc<ElfFile>,
    range: Range<usize>,
}

impl Deref for SectionBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.file.data()[self.range.clone()]
    }
}

/// The sections framehop asks for, from the file.
struct Sections(Arc<ElfFile>);

impl ModuleSectionInfo<SectionBytes> for Sections {
    fn base_svma(&self) -> u64 {
        0
    }

    fn section_svma_range(&mut self, name: &[u8]) -> Option<Range<u64>> {
        let name = std::str::from_utf8(name).ok()?;
        self.0.section_address_range(name)
    }

    fn section_data(&mut self, name: &[u8]) -> Option<SectionBytes> {
        let name = std::str::from_utf8(name).ok()?;
        let range = self.0.section_file_range(name)?;
        Some(SectionBytes {
            file: self.0.clone(),
            range,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Unwinder;
    use crate::trace::RawStack;

    /// Where this test binary's code is: an address inside a function of its own.
    #[inline(never)]
    fn own_code() -> u64 {
        own_code as fn() -> u64 as usize as u64 + 4
    }

    /// A stack stopped at malloc's first instruction, whose return address is `returns_to`.
    fn at_malloc(returns_to: u64) -> RawStack {
        let stack = [returns_to.to_le_bytes(), [0; 8]].concat();
        RawStack {
            time: 0,
            tid: 0,
            ip: libc::malloc as unsafe extern "C" fn(usize) -> *mut libc::c_void as usize as u64,
            sp: 0x7000_0000,
            bp: 0,
            stack,
        }
    }

    /// The allocator's own frame is dropped; the caller's stays, and the stack, cut short past
    /// the bytes copied, is marked truncated.
    #[test]
    fn malloc_is_dropped_and_a_short_copy_is_truncated() {
        let mut unwinder = Unwinder::new(std::process::id() as i32);
        let stack = unwinder
            .unwind(&at_malloc(own_code()))
            .expect("a frame left");
        assert_eq!(&stack.frames[..], &[own_code() - 1]);
        assert!(stack.truncated);
    }

    /// A return address in no mapped code (a JIT's, or garbage) ends the stack there: nothing
    /// is invented past it.
    #[test]
    fn a_return_address_in_no_mapped_code_ends_the_stack() {
        let mut unwinder = Unwinder::new(std::process::id() as i32);
        assert_eq!(unwinder.unwind(&at_malloc(0xdead_0000_0000)), None);
    }
}
