//! Where a static function was inlined: the code ranges of its inlined copies (and of its own
//! body, if it has one), from the DWARF of the units that define it. (Live mode probes glibc's
//! own allocation of each thread's tcache there: `tcache_init`, inlined in malloc.c, calls
//! `_int_malloc`, which no public probe sees.)
use std::borrow::Cow;

use gimli::{AttributeValue, EndianSlice, RunTimeEndian, SectionId};
use object::{Object, ObjectSection};

use super::dwarf::DwarfError;

type R<'a> = EndianSlice<'a, RunTimeEndian>;

/// Bounds the entries looked at in a unit (glibc 2.36's malloc.c has about 20,000).
const MAX_ENTRIES: usize = 2_000_000;

/// The link-time address ranges of `function`'s code in the units of `obj` that `home_unit`
/// names: its inlined copies and its out-of-line body.
pub(crate) fn ranges(
    obj: &object::File<'_>,
    function: &[u8],
    home_unit: fn(&[u8]) -> bool,
) -> Result<Vec<(u64, u64)>, DwarfError> {
    let endian = if obj.is_little_endian() {
        RunTimeEndian::Little
    } else {
        RunTimeEndian::Big
    };
    let load = |id: SectionId| -> Result<Cow<'_, [u8]>, DwarfError> {
        match obj.section_by_name(id.name()) {
            Some(section) => section
                .uncompressed_data()
                .map_err(|e| DwarfError(format!("section {}: {e}", id.name()))),
            None => Ok(Cow::Borrowed(&[])),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, endian));
    let mut found = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let name = unit.name.map(|n| n.slice());
        if !name.is_some_and(home_unit) {
            continue;
        }
        found.extend(in_unit(&dwarf, &unit, function)?);
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

fn in_unit(
    dwarf: &gimli::Dwarf<R<'_>>,
    unit: &gimli::Unit<R<'_>>,
    function: &[u8],
) -> Result<Vec<(u64, u64)>, DwarfError> {
    // The function's entries (its abstract instance, or its only one), and every entry that is
    // an instance of another (inlined copies, concrete bodies), with that other.
    let mut named = Vec::new();
    let mut instances = Vec::new();
    let mut entries = unit.entries();
    let mut seen = 0;
    while let Some((_, entry)) = entries.next_dfs()? {
        seen += 1;
        if seen > MAX_ENTRIES {
            return Err(DwarfError("the unit is too large to search".into()));
        }
        let tag = entry.tag();
        if tag == gimli::DW_TAG_subprogram
            && let Some(value) = entry.attr_value(gimli::DW_AT_name)?
            && dwarf
                .attr_string(unit, value)
                .is_ok_and(|s| s.slice() == function)
        {
            named.push(entry.offset());
        }
        if matches!(
            tag,
            gimli::DW_TAG_inlined_subroutine | gimli::DW_TAG_subprogram
        ) && let Some(AttributeValue::UnitRef(origin)) =
            entry.attr_value(gimli::DW_AT_abstract_origin)?
        {
            instances.push((entry.offset(), origin));
        }
    }
    let code = named.iter().copied().chain(
        (instances.iter())
            .filter(|(_, origin)| named.contains(origin))
            .map(|&(instance, _)| instance),
    );
    let mut ranges = Vec::new();
    for offset in code {
        let entry = unit.entry(offset)?;
        let mut found = dwarf.die_ranges(unit, &entry)?;
        while let Some(range) = found.next()? {
            if range.begin < range.end {
                ranges.push((range.begin, range.end));
            }
        }
    }
    Ok(ranges)
}
