//! What the search for debug info needs from a library's ELF file itself: build-id, debug
//! link, first `PT_LOAD`, whether it carries DWARF.
use std::fs;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection, ObjectSegment};

use super::DebugInfoError;

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, DebugInfoError> {
    fs::read(path).map_err(|e| DebugInfoError::io(path, e))
}

/// Parses `data` as an ELF file; anything else is `NotElf`.
pub(crate) fn parse<'d>(path: &Path, data: &'d [u8]) -> Result<object::File<'d>, DebugInfoError> {
    let not_elf = |reason: String| DebugInfoError::NotElf {
        path: path.to_path_buf(),
        reason,
    };
    if !data.starts_with(b"\x7fELF") {
        return Err(not_elf("no ELF magic number".into()));
    }
    let obj = object::File::parse(data).map_err(|e| not_elf(e.to_string()))?;
    if obj.format() != object::BinaryFormat::Elf {
        return Err(not_elf(format!("{:?} file", obj.format())));
    }
    Ok(obj)
}

/// The GNU build-id note's bytes, if the file has one.
pub(crate) fn build_id(obj: &object::File<'_>) -> Option<Vec<u8>> {
    obj.build_id().ok().flatten().map(<[u8]>::to_vec)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A library, read once from its file.
pub struct Library {
    pub path: PathBuf,
    /// The whole file, kept for DWARF it may carry itself.
    pub data: Vec<u8>,
    pub build_id: Option<Vec<u8>>,
    /// `.gnu_debuglink`: file name and CRC32 of the debug file.
    pub debuglink: Option<(Vec<u8>, u32)>,
    pub first_load_vaddr: u64,
    /// The file has a `.debug_info` section.
    pub has_dwarf: bool,
}

impl Library {
    pub fn read(path: &Path) -> Result<Self, DebugInfoError> {
        let data = read_file(path)?;
        let obj = parse(path, &data)?;
        let first_load_vaddr =
            obj.segments()
                .next()
                .map(|s| s.address())
                .ok_or_else(|| DebugInfoError::NotElf {
                    path: path.to_path_buf(),
                    reason: "no PT_LOAD segment: not a loadable program or library".into(),
                })?;
        let build_id = build_id(&obj);
        let debuglink = obj
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, crc)| (name.to_vec(), crc));
        let has_dwarf = obj.section_by_name(".debug_info").is_some();
        drop(obj);
        Ok(Library {
            path: path.to_path_buf(),
            data,
            build_id,
            debuglink,
            first_load_vaddr,
            has_dwarf,
        })
    }

    /// The library parsed (it parsed when read).
    pub fn object(&self) -> Result<object::File<'_>, DebugInfoError> {
        parse(&self.path, &self.data)
    }

    pub fn build_id_hex(&self) -> String {
        self.build_id.as_deref().map(hex).unwrap_or_default()
    }

    /// The NUL-terminated string at link-time address `vaddr` of the library.
    pub fn c_string_at(&self, vaddr: u64) -> Option<String> {
        let obj = object::File::parse(&*self.data).ok()?;
        let section = obj
            .sections()
            .find(|s| s.address() <= vaddr && vaddr < s.address() + s.size())?;
        let data = section.data().ok()?;
        let start = usize::try_from(vaddr - section.address()).ok()?;
        let rest = data.get(start..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        String::from_utf8(rest[..end].to_vec()).ok()
    }
}
