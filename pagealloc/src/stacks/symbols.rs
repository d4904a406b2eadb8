//! Symbolising the sites' addresses with blazesym: ELF symbols, DWARF lines and inlined
//! functions, the debug files of `/usr/lib/debug` (by debug link and build-id). Each address is
//! looked up once per process; the frames keep their module and offset either way.
use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use blazesym::symbolize::source::{Process, Source};
use blazesym::symbolize::{CodeInfo, Input, Symbolized, Symbolizer};

use super::Unwinder;
use crate::state::sites::{Frame, Line};

/// One process's symbols, as far as they were looked up. (A blazesym `Symbolizer` is made
/// for each look-up of new addresses: it is not `Send`, and a monitor moves between threads;
/// the frames found are kept here, so a warm process looks nothing up.)
pub struct Symbols {
    pid: Option<NonZeroU32>,
    frames: HashMap<u64, Arc<Frame>>,
}

impl Symbols {
    pub fn new(pid: i32) -> Symbols {
        Symbols {
            pid: u32::try_from(pid).ok().and_then(NonZeroU32::new),
            frames: HashMap::new(),
        }
    }

    /// Looks up the addresses not seen before (their modules as `unwinder` knows them).
    pub fn resolve(&mut self, addresses: impl Iterator<Item = u64>, unwinder: &Unwinder) {
        let mut new: Vec<u64> = addresses.filter(|a| !self.frames.contains_key(a)).collect();
        if new.is_empty() {
            return;
        }
        new.sort_unstable();
        new.dedup();
        let symbolizer = Symbolizer::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            .enable_demangling(true)
            .build();
        let symbolized = match self.pid {
            Some(pid) => {
                let source = Source::Process(Process::new(pid.get().into()));
                symbolizer
                    .symbolize(&source, Input::AbsAddr(&new))
                    .unwrap_or_else(|e| {
                        log::debug!("symbolising {} addresses: {e}", new.len());
                        Vec::new()
                    })
            }
            None => Vec::new(),
        };
        for (at, &address) in new.iter().enumerate() {
            let lines = match symbolized.get(at) {
                Some(Symbolized::Sym(sym)) => {
                    // Innermost first: the inlined functions (blazesym lists them outermost
                    // first), then the function whose code it is.
                    let mut lines: Vec<Line> = (sym.inlined.iter().rev())
                        .map(|inlined| line(&inlined.name, inlined.code_info.as_ref()))
                        .collect();
                    // The function's own line is where its code called the first inlined one.
                    lines.push(line(&sym.name, sym.code_info.as_deref()));
                    lines
                }
                _ => Vec::new(),
            };
            let (module, file_offset) = unwinder
                .module_of(address)
                .map_or((None, 0), |(module, offset)| (Some(module), offset));
            let frame = Frame {
                address,
                module,
                file_offset,
                lines,
            };
            self.frames.insert(address, Arc::new(frame));
        }
    }

    /// The frame of an address (looked up first with [`Symbols::resolve`]; bare otherwise).
    pub fn frame(&self, address: u64) -> Arc<Frame> {
        self.frames.get(&address).cloned().unwrap_or_else(|| {
            Arc::new(Frame {
                address,
                ..Frame::default()
            })
        })
    }
}

fn line(function: &str, code: Option<&CodeInfo<'_>>) -> Line {
    Line {
        function: function.to_string(),
        file: code.map(|c| c.to_path().display().to_string()),
        line: code.and_then(|c| c.line),
    }
}
