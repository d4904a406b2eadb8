//! ELF files as pagealloc reads them, each parsed once and shared: a library's (or a debug
//! file's, or a program's) build-id and debug link, loaded segments, sections, symbols and
//! dynamic relocations, and the bytes at a link-time address. [`Objects`] hands out one
//! [`ElfFile`] per file (by device and inode) for as long as anyone holds it.
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol, ObjectSymbolTable};
use object::{RelocationTarget, SymbolIndex};

/// Why a file could not be read as an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not an ELF file: {reason}", path.display())]
    NotElf { path: PathBuf, reason: String },
    #[error("reading {}: {source}", path.display())]
    Malformed {
        path: PathBuf,
        #[source]
        source: object::Error,
    },
}

/// A loaded segment (`PT_LOAD`): where it is at link time and in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub address: u64,
    pub file_offset: u64,
    /// Bytes of it in the file (the rest of its memory, if any, is zeros).
    pub file_size: u64,
}

impl Segment {
    fn holds(&self, address: u64) -> bool {
        address >= self.address && address - self.address < self.file_size
    }
}

/// A defined symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub address: u64,
    pub size: u64,
}

/// What the dynamic linker writes at a relocated address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filled {
    /// The address of the symbol of this name (a jump slot, a GLOB_DAT).
    Symbol(String),
    /// This link-time address (RELATIVE), or the variant an IFUNC there picks (IRELATIVE).
    Address(u64),
}

/// A section: its name, link-time address, and where its bytes are in the file (none for
/// `.bss`-like ones).
#[derive(Clone, Debug)]
struct Section {
    name: String,
    address: u64,
    size: u64,
    file_range: Option<(u64, u64)>,
}

/// One ELF file, read and parsed once.
#[derive(Debug)]
pub struct ElfFile {
    path: PathBuf,
    data: Vec<u8>,
    build_id: Option<Vec<u8>>,
    debuglink: Option<(Vec<u8>, u32)>,
    segments: Vec<Segment>,
    sections: Vec<Section>,
    /// Defined dynamic symbols, by address; None if the file has no dynamic symbol table.
    dynamic_symbols: Option<Vec<Symbol>>,
    /// Defined `.symtab` symbols, by address.
    symbols: Vec<Symbol>,
    /// What each dynamic relocation fills, by the address it writes.
    relocations: Vec<(u64, Filled)>,
}

impl ElfFile {
    /// Reads and parses the file at `path` (without the cache: see [`Objects::open`]).
    pub fn read(path: &Path) -> Result<ElfFile, ObjectError> {
        let data = std::fs::read(path).map_err(|source| ObjectError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        ElfFile::parse(path, data)
    }

    /// Parses `data`, the contents of the file at `path`.
    pub fn parse(path: &Path, data: Vec<u8>) -> Result<ElfFile, ObjectError> {
        let not_elf = |reason: String| ObjectError::NotElf {
            path: path.to_path_buf(),
            reason,
        };
        if !data.starts_with(b"\x7fELF") {
            return Err(not_elf("no ELF magic number".into()));
        }
        let malformed = |source| ObjectError::Malformed {
            path: path.to_path_buf(),
            source,
        };
        let file = object::File::parse(&*data).map_err(malformed)?;
        if file.format() != object::BinaryFormat::Elf {
            return Err(not_elf(format!("{:?} file", file.format())));
        }
        let dynamic_symbols = file
            .dynamic_symbol_table()
            .map(|table| defined(table.symbols()));
        let symbols = defined(file.symbols());
        let relocations = dynamic_relocations(&file);
        let segments = file
            .segments()
            .map(|segment| {
                let (file_offset, file_size) = segment.file_range();
                Segment {
                    address: segment.address(),
                    file_offset,
                    file_size,
                }
            })
            .collect();
        let sections = file
            .sections()
            .filter_map(|section| {
                Some(Section {
                    name: section.name().ok()?.to_string(),
                    address: section.address(),
                    size: section.size(),
                    file_range: section.file_range(),
                })
            })
            .collect();
        let build_id = file.build_id().ok().flatten().map(<[u8]>::to_vec);
        let debuglink = file
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (name.to_vec(), crc));
        drop(file);
        Ok(ElfFile {
            path: path.to_path_buf(),
            data,
            build_id,
            debuglink,
            segments,
            sections,
            dynamic_symbols,
            symbols,
            relocations,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file (for the DWARF it may carry).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The GNU build-id note's bytes.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// `.gnu_debuglink`: the debug file's name and CRC32.
    pub fn debuglink(&self) -> Option<(&[u8], u32)> {
        self.debuglink
            .as_ref()
            .map(|(name, crc)| (name.as_slice(), *crc))
    }

    /// The loaded segments, in the file's order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Where link-time `address` is in the file, if a loaded segment has it there.
    pub fn file_offset(&self, address: u64) -> Option<u64> {
        let segment = self.segments.iter().find(|s| s.holds(address))?;
        Some(address - segment.address + segment.file_offset)
    }

    /// The bytes from link-time `address` to the end of its segment in the file (empty if no
    /// loaded segment has it there).
    pub fn bytes_at(&self, address: u64) -> &[u8] {
        let bytes = self
            .segments
            .iter()
            .find(|s| s.holds(address))
            .and_then(|s| {
                let from = address - s.address + s.file_offset;
                self.data
                    .get(from as usize..(s.file_offset + s.file_size) as usize)
            });
        bytes.unwrap_or_else(|| {
            log::debug!("{address:#x} is not in {}", self.path.display());
            &[]
        })
    }

    /// The contents of the section `name`, if it has any in the file.
    pub fn section(&self, name: &str) -> Option<&[u8]> {
        self.section_file_range(name).map(|range| &self.data[range])
    }

    /// The link-time addresses of the section `name`.
    pub fn section_address_range(&self, name: &str) -> Option<std::ops::Range<u64>> {
        let section = self.sections.iter().find(|s| s.name == name)?;
        Some(section.address..section.address + section.size)
    }

    /// Where the section `name`'s bytes are in [`ElfFile::data`].
    pub fn section_file_range(&self, name: &str) -> Option<std::ops::Range<usize>> {
        let section = self.sections.iter().find(|s| s.name == name)?;
        let (offset, size) = section.file_range?;
        let range = offset as usize..(offset + size) as usize;
        self.data.get(range.clone()).map(|_| range)
    }

    /// Whether the file has a section `name` (`.debug_info`: it carries its DWARF itself).
    pub fn has_section(&self, name: &str) -> bool {
        self.sections.iter().any(|s| s.name == name)
    }

    /// The NUL-terminated string at link-time `address` (in any section with bytes in the file).
    pub fn c_string_at(&self, address: u64) -> Option<&str> {
        let section = self.sections.iter().find(|s| {
            s.file_range.is_some() && address >= s.address && address - s.address < s.size
        })?;
        let start = section.file_range?.0 + (address - section.address);
        let rest = self.data.get(start as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    /// Whether the file has a dynamic symbol table (a statically linked program has none).
    pub fn has_dynamic_symbols(&self) -> bool {
        self.dynamic_symbols.is_some()
    }

    /// The defined dynamic (exported) symbol `name`.
    pub fn dynamic_symbol(&self, name: &str) -> Option<&Symbol> {
        self.dynamic_symbols
            .as_deref()?
            .iter()
            .find(|s| s.name == name)
    }

    /// The defined dynamic symbols at `address` (aliases share one: `free` and `cfree`).
    pub fn dynamic_symbols_at(&self, address: u64) -> &[Symbol] {
        at_address(self.dynamic_symbols.as_deref().unwrap_or(&[]), address)
    }

    /// The defined `.symtab` symbol `name` (a stripped file has none).
    pub fn symbol(&self, name: &str) -> Option<&Symbol> {
        self.symbols.iter().find(|s| s.name == name)
    }

    /// The defined `.symtab` symbols at `address`.
    pub fn symbols_at(&self, address: u64) -> &[Symbol] {
        at_address(&self.symbols, address)
    }

    /// What the dynamic linker writes at `address` (a PLT entry's jump slot, say).
    pub fn relocation_at(&self, address: u64) -> Option<&Filled> {
        let at = self.relocations.partition_point(|&(a, _)| a < address);
        self.relocations
            .get(at)
            .filter(|&&(a, _)| a == address)
            .map(|(_, filled)| filled)
    }
}

/// The defined ones of `symbols`, by address.
fn defined<'d>(symbols: impl Iterator<Item = object::Symbol<'d, 'd>>) -> Vec<Symbol> {
    let mut defined: Vec<Symbol> = symbols
        .filter(|symbol| !symbol.is_undefined() && symbol.address() != 0)
        .filter_map(|symbol| {
            Some(Symbol {
                name: symbol.name().ok()?.to_string(),
                address: symbol.address(),
                size: symbol.size(),
            })
        })
        .collect();
    defined.sort_by_key(|s| s.address);
    defined
}

/// What each dynamic relocation of `file` fills, by the address it writes.
fn dynamic_relocations(file: &object::File) -> Vec<(u64, Filled)> {
    let table = file.dynamic_symbol_table();
    let symbol_name = |index: SymbolIndex| {
        let symbol = table.as_ref()?.symbol_by_index(index).ok()?;
        Some(symbol.name().ok()?.to_string())
    };
    let mut relocations: Vec<(u64, Filled)> = file
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .filter_map(|(at, relocation)| {
            let filled = match relocation.target() {
                RelocationTarget::Symbol(index) => Filled::Symbol(symbol_name(index)?),
                RelocationTarget::Absolute => Filled::Address(relocation.addend() as u64),
                _ => return None,
            };
            Some((at, filled))
        })
        .collect();
    relocations.sort_by_key(|&(at, _)| at);
    relocations
}

/// The run of `symbols` (sorted by address) at `address`.
fn at_address(symbols: &[Symbol], address: u64) -> &[Symbol] {
    let from = symbols.partition_point(|s| s.address < address);
    let to = symbols.partition_point(|s| s.address <= address);
    &symbols[from..to]
}

/// A file as the kernel knows it: the same file under another path (`/proc/PID/root/...`, a
/// link) is the same one.
type FileId = (u64, u64);

/// The ELF files in use, one [`ElfFile`] each while anyone holds it.
#[derive(Debug, Default)]
pub struct Objects {
    files: Mutex<HashMap<FileId, Weak<ElfFile>>>,
}

impl Objects {
    /// The process's one cache.
    pub fn shared() -> &'static Objects {
        static SHARED: OnceLock<Objects> = OnceLock::new();
        SHARED.get_or_init(Objects::default)
    }

    /// The file at `path`, parsed once for all who hold it at the same time.
    pub fn open(&self, path: &Path) -> Result<Arc<ElfFile>, ObjectError> {
        let metadata = std::fs::metadata(path).map_err(|source| ObjectError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let id = (metadata.dev(), metadata.ino());
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = files.get(&id).and_then(Weak::upgrade) {
            return Ok(file);
        }
        // Parsed under the lock: two callers asking for one file parse it once.
        let file = Arc::new(ElfFile::read(path)?);
        files.retain(|_, held| held.strong_count() > 0);
        files.insert(id, Arc::downgrade(&file));
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{ElfFile, Filled, Objects};

    /// This test's own executable: an ELF file that is surely there.
    fn this_program() -> std::path::PathBuf {
        std::env::current_exe().unwrap()
    }

    #[test]
    fn one_parse_per_file_while_it_is_held() {
        let objects = Objects::default();
        let first = objects.open(&this_program()).unwrap();
        // The same file by another path (a link) is the same one.
        let again = objects.open("/proc/self/exe".as_ref()).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        drop((first, again));
        // Let go of, it is not kept.
        let files = objects.files.lock().unwrap();
        assert!(files.values().all(|held| held.upgrade().is_none()));
    }

    #[test]
    fn code_is_found_by_its_symbol() {
        let file = ElfFile::read(&this_program()).unwrap();
        let function = file
            .symbols
            .iter()
            .find(|s| s.size > 0 && file.file_offset(s.address).is_some())
            .expect("a function with code in the file");
        let offset = file.file_offset(function.address).unwrap() as usize;
        assert_eq!(
            &file.bytes_at(function.address)[..8],
            &file.data()[offset..offset + 8]
        );
        assert!(
            file.symbols_at(function.address)
                .iter()
                .any(|s| s.name == function.name)
        );
        assert_eq!(file.symbol(&function.name), Some(function));
        assert!(file.bytes_at(u64::MAX - 1).is_empty());
    }

    #[test]
    fn what_each_relocation_fills_is_found_by_its_address() {
        let file = ElfFile::read(&this_program()).unwrap();
        // This program takes malloc from the C library: the dynamic linker fills in its address.
        assert!(
            file.relocations
                .iter()
                .any(|(_, filled)| *filled == Filled::Symbol("malloc".into()))
        );
        for (at, filled) in &file.relocations {
            assert_eq!(file.relocation_at(*at), Some(filled));
        }
        let unrelocated = file.relocations.last().unwrap().0 + 8;
        assert_eq!(file.relocation_at(unrelocated), None);
    }

    #[test]
    fn not_an_elf_file() {
        let error = ElfFile::parse("x".as_ref(), b"#!/bin/sh\n".to_vec()).unwrap_err();
        assert!(
            matches!(error, super::ObjectError::NotElf { .. }),
            "{error}"
        );
    }
}
