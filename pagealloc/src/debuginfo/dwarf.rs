//! Struct layouts from DWARF and static symbol addresses from `.symtab`.
//!
//! The DWARF of a whole library is large (about 10 MB of `.debug_info` for glibc 2.36), so the
//! walk is lazy: only the sections that names and types need are decompressed, only the
//! top-level DIEs of a unit are visited, and the unit that defines the structs wanted (for
//! glibc: the one compiled from `malloc.c`, which includes `arena.c`) is read first. The other
//! units are read only if it lacks a required struct (e.g. dwz moved the types to partial
//! units).
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use gimli::{
    Abbreviations, AttributeValue, DebugStrOffsetsBase, DebuggingInformationEntry, EndianSlice,
    Operation, RunTimeEndian, SectionId, UnitHeader, UnitOffset,
};
use object::{Object, ObjectSection, ObjectSymbol};

#[cfg(doc)]
use super::DebugInfoError;
use super::{Field, StructLayout};

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// One struct to find: the name it is found under, the DWARF struct tags and the typedef names
/// it may go by.
pub struct Want {
    pub canonical: &'static str,
    pub structs: &'static [&'static str],
    pub typedefs: &'static [&'static str],
    pub required: bool,
}

/// The structs to find, and the compilation units that define them (read first; the others
/// only if a required struct is still missing).
pub struct Wanted {
    pub structs: &'static [Want],
    pub home_unit: fn(&[u8]) -> bool,
}

/// Fills `found[i]` with the address of the first defined symbol of `obj`'s `.symtab` called
/// `names[i]`, where not filled already.
pub(crate) fn scan_symbols(obj: &object::File<'_>, names: &[&[u8]], found: &mut [Option<u64>]) {
    for sym in obj.symbols() {
        if sym.is_undefined() || sym.address() == 0 {
            continue;
        }
        let Ok(name) = sym.name_bytes() else { continue };
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i].get_or_insert(sym.address());
        }
    }
}

/// An extraction failure, turned into [`DebugInfoError::Dwarf`] with the file's path.
#[derive(Debug)]
pub(crate) struct DwarfError(pub String);

impl From<gimli::Error> for DwarfError {
    fn from(e: gimli::Error) -> Self {
        DwarfError(e.to_string())
    }
}

type DResult<T> = Result<T, DwarfError>;

fn fail<T>(msg: impl Into<String>) -> DResult<T> {
    Err(DwarfError(msg.into()))
}

/// The wanted structs found in `obj`'s DWARF (with its dwz supplementary file `sup`, which
/// holds the types and strings that `DW_FORM_GNU_ref_alt`/`strp_alt` point to), by canonical
/// name.
pub(crate) fn extract_structs(
    obj: &object::File<'_>,
    sup: Option<&object::File<'_>>,
    wanted: &Wanted,
) -> DResult<HashMap<&'static str, StructLayout>> {
    let endian = if obj.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let sections = load_sections(obj)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    let sup_sections = sup.map(load_sections).transpose()?;
    let sup_dwarf = sup_sections
        .as_ref()
        .map(|sections| sections.borrow(|s| EndianSlice::new(s, endian)));
    Extractor {
        main: &dwarf,
        sup: sup_dwarf.as_ref(),
        wanted,
    }
    .run()
}

/// The sections names and types need, decompressed; the others empty.
fn load_sections<'o>(obj: &'o object::File<'_>) -> DResult<gimli::DwarfSections<Cow<'o, [u8]>>> {
    let load = |id: SectionId| -> DResult<Cow<'o, [u8]>> {
        let needed = matches!(
            id,
            SectionId::DebugInfo
                | SectionId::DebugAbbrev
                | SectionId::DebugStr
                | SectionId::DebugLineStr
                | SectionId::DebugStrOffsets
        );
        match obj.section_by_name(id.name()) {
            Some(section) if needed => section
                .uncompressed_data()
                .map_err(|e| DwarfError(format!("section {}: {e}", id.name()))),
            _ => Ok(Cow::Borrowed(&[])),
        }
    };
    gimli::DwarfSections::load(load)
}

/// One unit, ready to read entries from.
struct UnitCtx<'a> {
    /// The unit is in the supplementary file.
    in_sup: bool,
    header: UnitHeader<R<'a>>,
    abbrevs: Arc<Abbreviations>,
    str_offsets_base: DebugStrOffsetsBase<usize>,
    name: Option<&'a [u8]>,
}

/// What a member's type contributes to a [`Field`].
#[derive(Clone, Copy)]
struct TypeInfo {
    size: u64,
    array_len: Option<u64>,
    element_size: u64,
}

impl TypeInfo {
    fn scalar(size: u64) -> Self {
        TypeInfo {
            size,
            array_len: None,
            element_size: size,
        }
    }
}

/// Typedef/cv chains deeper than this are taken for loops.
const MAX_DEPTH: u32 = 64;

struct Extractor<'d, 'a> {
    main: &'d gimli::Dwarf<R<'a>>,
    sup: Option<&'d gimli::Dwarf<R<'a>>>,
    wanted: &'d Wanted,
}

impl<'d, 'a> Extractor<'d, 'a> {
    fn file(&self, in_sup: bool) -> DResult<&'d gimli::Dwarf<R<'a>>> {
        match (in_sup, self.sup) {
            (false, _) => Ok(self.main),
            (true, Some(sup)) => Ok(sup),
            (true, None) => fail(
                "the debug info refers to a dwz supplementary file (.gnu_debugaltlink) that is \
                 not loaded",
            ),
        }
    }

    fn run(&self) -> DResult<HashMap<&'static str, StructLayout>> {
        let wanted = self.wanted.structs;
        let mut found = HashMap::new();
        let all_found = |found: &HashMap<&str, StructLayout>| {
            wanted.iter().all(|w| found.contains_key(w.canonical))
        };
        let required_found = |found: &HashMap<&str, StructLayout>| {
            wanted
                .iter()
                .all(|w| !w.required || found.contains_key(w.canonical))
        };
        // Pass 1: the home unit(s) (malloc.c, for glibc). Pass 2: everything else, including the partial units
        // of a dwz supplementary file, only if a required struct is still missing (a glibc
        // without tcache legitimately lacks the optional ones).
        let mut saw_malloc_unit = false;
        let mut passes = vec![(true, false), (false, false)];
        if self.sup.is_some() {
            passes.push((false, true));
        }
        for (malloc_pass, in_sup) in passes {
            if !malloc_pass && saw_malloc_unit && required_found(&found) {
                break;
            }
            let mut units = self.file(in_sup)?.units();
            while let Some(header) = units.next()? {
                let unit = self.unit(in_sup, header)?;
                let is_malloc = unit.name.is_some_and(self.wanted.home_unit);
                if is_malloc != malloc_pass {
                    continue;
                }
                saw_malloc_unit |= is_malloc;
                self.scan_unit(&unit, &mut found)?;
                if all_found(&found) {
                    return Ok(found);
                }
            }
        }
        Ok(found)
    }

    fn unit(&self, in_sup: bool, header: UnitHeader<R<'a>>) -> DResult<UnitCtx<'a>> {
        let abbrevs = self.file(in_sup)?.abbreviations(&header)?;
        let mut unit = UnitCtx {
            in_sup,
            header,
            abbrevs,
            str_offsets_base: DebugStrOffsetsBase(0),
            name: None,
        };
        let mut name_value = None;
        {
            let mut cursor = unit.header.entries(&unit.abbrevs);
            if cursor.next_dfs()?.is_none() {
                return Ok(unit);
            }
            let Some(root) = cursor.current() else {
                return Ok(unit);
            };
            let mut attrs = root.attrs();
            while let Some(attr) = attrs.next()? {
                match (attr.name(), attr.value()) {
                    (gimli::DW_AT_name, value) => name_value = Some(value),
                    (gimli::DW_AT_str_offsets_base, AttributeValue::DebugStrOffsetsBase(base)) => {
                        unit.str_offsets_base = base;
                    }
                    _ => {}
                }
            }
        }
        unit.name = name_value.and_then(|v| self.string(&unit, v));
        Ok(unit)
    }

    /// The unit of the main or supplementary file whose entries contain `offset` (for
    /// references across units).
    fn unit_containing(
        &self,
        in_sup: bool,
        offset: gimli::DebugInfoOffset<usize>,
    ) -> DResult<(UnitCtx<'a>, UnitOffset)> {
        let mut units = self.file(in_sup)?.units();
        while let Some(header) = units.next()? {
            if let Some(unit_offset) = offset.to_unit_offset(&header) {
                return Ok((self.unit(in_sup, header)?, unit_offset));
            }
        }
        fail(format!("reference to <{:#x}> outside every unit", offset.0))
    }

    fn string(&self, unit: &UnitCtx<'a>, value: AttributeValue<R<'a>>) -> Option<&'a [u8]> {
        let file = self.file(unit.in_sup).ok()?;
        let s = match value {
            AttributeValue::String(s) => s,
            AttributeValue::DebugStrRef(o) => file.debug_str.get_str(o).ok()?,
            AttributeValue::DebugStrRefSup(o) if !unit.in_sup => {
                self.sup?.debug_str.get_str(o).ok()?
            }
            AttributeValue::DebugLineStrRef(o) => file.debug_line_str.get_str(o).ok()?,
            AttributeValue::DebugStrOffsetsIndex(i) => {
                let o = file
                    .debug_str_offsets
                    .get_str_offset(unit.header.format(), unit.str_offsets_base, i)
                    .ok()?;
                file.debug_str.get_str(o).ok()?
            }
            _ => return None,
        };
        Some(s.slice())
    }

    fn name(&self, unit: &UnitCtx<'a>, entry: &Entry<'_, '_, 'a>) -> DResult<Option<&'a [u8]>> {
        Ok(entry
            .attr_value(gimli::DW_AT_name)?
            .and_then(|v| self.string(unit, v)))
    }

    /// Looks at the unit's top-level DIEs for the wanted structs and typedefs.
    fn scan_unit(
        &self,
        unit: &UnitCtx<'a>,
        found: &mut HashMap<&'static str, StructLayout>,
    ) -> DResult<()> {
        let mut typedefs: Vec<(&'static str, UnitOffset)> = Vec::new();
        let mut tree = unit.header.entries_tree(&unit.abbrevs, None)?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            let tag = entry.tag();
            if tag != gimli::DW_TAG_structure_type && tag != gimli::DW_TAG_typedef {
                continue;
            }
            let Some(name) = self.name(unit, entry)? else {
                continue;
            };
            for want in self.wanted.structs {
                if found.contains_key(want.canonical) {
                    continue;
                }
                if tag == gimli::DW_TAG_structure_type
                    && want.structs.iter().any(|s| s.as_bytes() == name)
                    && !is_declaration(entry)?
                {
                    let layout = self.struct_layout(unit, entry.offset(), want.canonical)?;
                    found.insert(want.canonical, layout);
                } else if tag == gimli::DW_TAG_typedef
                    && want.typedefs.iter().any(|s| s.as_bytes() == name)
                {
                    typedefs.push((want.canonical, entry.offset()));
                }
            }
        }
        for (canonical, offset) in typedefs {
            if found.contains_key(canonical) {
                continue;
            }
            let (other, offset) = self.strip_qualifiers(unit, offset, 0)?;
            let u = other.as_ref().unwrap_or(unit);
            let entry = u.header.entry(&u.abbrevs, offset)?;
            if entry.tag() == gimli::DW_TAG_structure_type && !is_declaration(&entry)? {
                found.insert(canonical, self.struct_layout(u, offset, canonical)?);
            }
        }
        Ok(())
    }

    /// Where the DW_AT_type `value` points: a DIE of this unit, or of another one.
    fn target(
        &self,
        unit: &UnitCtx<'a>,
        value: AttributeValue<R<'a>>,
    ) -> DResult<(Option<UnitCtx<'a>>, UnitOffset)> {
        match value {
            AttributeValue::UnitRef(offset) => Ok((None, offset)),
            AttributeValue::DebugInfoRef(offset) => match offset.to_unit_offset(&unit.header) {
                Some(offset) => Ok((None, offset)),
                None => {
                    let (other, offset) = self.unit_containing(unit.in_sup, offset)?;
                    Ok((Some(other), offset))
                }
            },
            AttributeValue::DebugInfoRefSup(offset) if !unit.in_sup => {
                let (other, offset) = self.unit_containing(true, offset)?;
                Ok((Some(other), offset))
            }
            AttributeValue::DebugTypesRef(_) => {
                fail("type in a .debug_types type unit, which is not supported")
            }
            other => fail(format!("unexpected DW_AT_type form {other:?}")),
        }
    }

    /// Follows typedefs and cv-qualifiers from the type DIE at `offset`.
    fn strip_qualifiers(
        &self,
        unit: &UnitCtx<'a>,
        offset: UnitOffset,
        depth: u32,
    ) -> DResult<(Option<UnitCtx<'a>>, UnitOffset)> {
        if depth > MAX_DEPTH {
            return fail(format!("type chain too deep at <{:#x}>", offset.0));
        }
        let entry = unit.header.entry(&unit.abbrevs, offset)?;
        if !is_qualifier(entry.tag()) {
            return Ok((None, offset));
        }
        let Some(value) = entry.attr_value(gimli::DW_AT_type)? else {
            return Ok((None, offset));
        };
        let (other, next) = self.target(unit, value)?;
        let (deeper, last) =
            self.strip_qualifiers(other.as_ref().unwrap_or(unit), next, depth + 1)?;
        Ok((deeper.or(other), last))
    }

    fn struct_layout(
        &self,
        unit: &UnitCtx<'a>,
        offset: UnitOffset,
        name: &str,
    ) -> DResult<StructLayout> {
        let entry = unit.header.entry(&unit.abbrevs, offset)?;
        let Some(size) = udata(&entry, gimli::DW_AT_byte_size)? else {
            return fail(format!("struct {name} at <{:#x}> has no size", offset.0));
        };
        let mut fields = Vec::new();
        self.members(unit, offset, 0, &mut fields, 0)
            .map_err(|e| DwarfError(format!("struct {name}: {}", e.0)))?;
        Ok(StructLayout {
            name: name.to_string(),
            size,
            fields,
        })
    }

    /// Appends the members of the struct or union at `offset`, `base` bytes into the outer
    /// struct. Anonymous struct/union members are flattened, as C lets code name their members.
    fn members(
        &self,
        unit: &UnitCtx<'a>,
        offset: UnitOffset,
        base: u64,
        out: &mut Vec<Field>,
        depth: u32,
    ) -> DResult<()> {
        if depth > MAX_DEPTH {
            return fail("anonymous members nested too deep");
        }
        let mut tree = unit.header.entries_tree(&unit.abbrevs, Some(offset))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            let entry = child.entry();
            if entry.tag() != gimli::DW_TAG_member {
                continue;
            }
            let name = self.name(unit, entry)?;
            let at = base + member_offset(unit, entry)?;
            let Some(type_value) = entry.attr_value(gimli::DW_AT_type)? else {
                return fail(format!("member at <{:#x}> has no type", entry.offset().0));
            };
            let (other, type_offset) = self.target(unit, type_value)?;
            let u = other.as_ref().unwrap_or(unit);
            let Some(name) = name else {
                let (inner, aggregate) = self.strip_qualifiers(u, type_offset, 0)?;
                let inner_unit = inner.as_ref().unwrap_or(u);
                self.members(inner_unit, aggregate, at, out, depth + 1)?;
                continue;
            };
            let info = self.type_info(u, type_offset, 0).map_err(|e| {
                DwarfError(format!("member {}: {}", String::from_utf8_lossy(name), e.0))
            })?;
            out.push(Field {
                name: String::from_utf8_lossy(name).into_owned(),
                offset: at,
                size: info.size,
                array_len: info.array_len,
                element_size: info.element_size,
            });
        }
        Ok(())
    }

    /// Size (and array shape) of the type DIE at `offset`.
    fn type_info(&self, unit: &UnitCtx<'a>, offset: UnitOffset, depth: u32) -> DResult<TypeInfo> {
        if depth > MAX_DEPTH {
            return fail(format!("type chain too deep at <{:#x}>", offset.0));
        }
        let entry = unit.header.entry(&unit.abbrevs, offset)?;
        let tag = entry.tag();
        let follow = |value: AttributeValue<R<'a>>| -> DResult<TypeInfo> {
            let (other, next) = self.target(unit, value)?;
            self.type_info(other.as_ref().unwrap_or(unit), next, depth + 1)
        };
        match tag {
            t if is_qualifier(t) => match entry.attr_value(gimli::DW_AT_type)? {
                Some(value) => follow(value),
                None => Ok(TypeInfo::scalar(0)), // void
            },
            gimli::DW_TAG_pointer_type
            | gimli::DW_TAG_reference_type
            | gimli::DW_TAG_rvalue_reference_type
            | gimli::DW_TAG_ptr_to_member_type => Ok(TypeInfo::scalar(
                udata(&entry, gimli::DW_AT_byte_size)?
                    .unwrap_or_else(|| u64::from(unit.header.address_size())),
            )),
            gimli::DW_TAG_array_type => self.array_info(unit, &entry, depth),
            gimli::DW_TAG_base_type
            | gimli::DW_TAG_structure_type
            | gimli::DW_TAG_union_type
            | gimli::DW_TAG_class_type
            | gimli::DW_TAG_enumeration_type
            | gimli::DW_TAG_unspecified_type => {
                if let Some(size) = udata(&entry, gimli::DW_AT_byte_size)? {
                    return Ok(TypeInfo::scalar(size));
                }
                match entry.attr_value(gimli::DW_AT_type)? {
                    // An enum without a size has an underlying type.
                    Some(value) if tag == gimli::DW_TAG_enumeration_type => follow(value),
                    _ => fail(format!(
                        "type at <{:#x}> ({tag}) has no size (incomplete type?)",
                        offset.0
                    )),
                }
            }
            other => fail(format!("unexpected type {other} at <{:#x}>", offset.0)),
        }
    }

    fn array_info(
        &self,
        unit: &UnitCtx<'a>,
        entry: &Entry<'_, '_, 'a>,
        depth: u32,
    ) -> DResult<TypeInfo> {
        let Some(element_type) = entry.attr_value(gimli::DW_AT_type)? else {
            return fail(format!(
                "array at <{:#x}> has no element type",
                entry.offset().0
            ));
        };
        let (other, element_offset) = self.target(unit, element_type)?;
        let element = self.type_info(other.as_ref().unwrap_or(unit), element_offset, depth + 1)?;
        let mut dims = Vec::new();
        let mut tree = unit
            .header
            .entries_tree(&unit.abbrevs, Some(entry.offset()))?;
        let root = tree.root()?;
        let mut children = root.children();
        while let Some(child) = children.next()? {
            if child.entry().tag() == gimli::DW_TAG_subrange_type {
                dims.push(subrange_count(child.entry())?);
            }
        }
        let inner: u64 = dims.iter().skip(1).product::<u64>() * element.size;
        let outer = dims.first().copied().unwrap_or(0);
        let size = match udata(entry, gimli::DW_AT_byte_size)? {
            Some(size) => size,
            None => outer * inner,
        };
        Ok(TypeInfo {
            size,
            array_len: Some(outer),
            element_size: inner,
        })
    }
}

type Entry<'abbrev, 'unit, 'a> = DebuggingInformationEntry<'abbrev, 'unit, R<'a>>;

fn is_qualifier(tag: gimli::DwTag) -> bool {
    matches!(
        tag,
        gimli::DW_TAG_typedef
            | gimli::DW_TAG_const_type
            | gimli::DW_TAG_volatile_type
            | gimli::DW_TAG_restrict_type
            | gimli::DW_TAG_atomic_type
            | gimli::DW_TAG_immutable_type
    )
}

fn is_declaration(entry: &Entry<'_, '_, '_>) -> DResult<bool> {
    Ok(matches!(
        entry.attr_value(gimli::DW_AT_declaration)?,
        Some(AttributeValue::Flag(true))
    ))
}

fn udata(entry: &Entry<'_, '_, '_>, name: gimli::DwAt) -> DResult<Option<u64>> {
    Ok(entry.attr_value(name)?.and_then(|v| v.udata_value()))
}

/// An array bound. The fixed-size forms say nothing of signedness: GCC writes `bins[254]`'s
/// upper bound 253 as DW_FORM_data1 0xfd, which gimli's `sdata_value` sign-extends to -3. So
/// they are read as unsigned, except all-ones in 4 or 8 bytes: the -1 that older compilers
/// write as the upper bound of a zero-length array.
fn bound(entry: &Entry<'_, '_, '_>, name: gimli::DwAt) -> DResult<Option<i64>> {
    Ok(entry.attr_value(name)?.and_then(|v| match v {
        AttributeValue::Data1(d) => Some(i64::from(d)),
        AttributeValue::Data2(d) => Some(i64::from(d)),
        AttributeValue::Data4(u32::MAX) | AttributeValue::Data8(u64::MAX) => Some(-1),
        AttributeValue::Data4(d) => Some(i64::from(d)),
        AttributeValue::Data8(d) => i64::try_from(d).ok(),
        other => other.sdata_value(),
    }))
}

/// Number of elements of a DW_TAG_subrange_type; 0 for flexible or variable-length arrays.
fn subrange_count(entry: &Entry<'_, '_, '_>) -> DResult<u64> {
    if let Some(count) = udata(entry, gimli::DW_AT_count)? {
        return Ok(count);
    }
    let Some(upper) = bound(entry, gimli::DW_AT_upper_bound)? else {
        return Ok(0);
    };
    let lower = bound(entry, gimli::DW_AT_lower_bound)?.unwrap_or(0);
    Ok(u64::try_from(upper - lower + 1).unwrap_or(0))
}

/// Byte offset of a member in its struct: a constant, or (DWARF 2 style) a location
/// expression of DW_OP_plus_uconst; 0 for union members, which have none.
fn member_offset(unit: &UnitCtx<'_>, entry: &Entry<'_, '_, '_>) -> DResult<u64> {
    let location = match entry.attr_value(gimli::DW_AT_data_member_location)? {
        // DWARF 2 has no exprloc form: GCC's -gdwarf-2 -gstrict-dwarf writes a block.
        Some(AttributeValue::Block(block)) => {
            Some(AttributeValue::Exprloc(gimli::Expression(block)))
        }
        other => other,
    };
    match location {
        Some(AttributeValue::Exprloc(expr)) => {
            let mut ops = expr.operations(unit.header.encoding());
            let mut offset = 0u64;
            while let Some(op) = ops.next()? {
                match op {
                    Operation::PlusConstant { value } => offset += value,
                    Operation::UnsignedConstant { value } => offset = value,
                    other => {
                        return fail(format!(
                            "member at <{:#x}>: unsupported location {other:?}",
                            entry.offset().0
                        ));
                    }
                }
            }
            Ok(offset)
        }
        Some(value) => value.udata_value().map_or_else(
            || {
                fail(format!(
                    "member at <{:#x}>: unsupported location {value:?}",
                    entry.offset().0
                ))
            },
            Ok,
        ),
        // A bitfield placed by DW_AT_data_bit_offset: the byte that holds its first bit.
        None => Ok(udata(entry, gimli::DW_AT_data_bit_offset)?.map_or(0, |bits| bits / 8)),
    }
}
