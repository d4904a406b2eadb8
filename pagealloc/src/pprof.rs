//! The heap profile in pprof's format: the allocation sites of a [`SitesReport`] as a gzipped
//! `profile.proto` (github.com/google/pprof/proto/profile.proto), the format `go tool pprof`,
//! Parca and Pyroscope read, laid out as Go writes its own heap profiles.
//!
//! Every Location has a Mapping (Pyroscope refuses a profile without): the module its address
//! lies in, or one synthetic mapping for addresses in no file and for the frames pagealloc makes
//! up (the buckets of sites without a stack of their own, and the mark of a truncated stack).
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

use crate::state::sites::{Frame, Module, SiteFigures, SitesReport};

#[cfg(test)]
mod tests;

/// The sample types (type, unit), in the order of every sample's values (see [`values`]).
const SAMPLE_TYPES: [(&str, &str); 5] = [
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
    ("pinned_space", "bytes"),
];
const DEFAULT_SAMPLE_TYPE: &str = "inuse_space";

/// The function names of the synthetic frames.
const OTHER_SITES: &str = "[other sites]";
const STACK_NOT_COPIED: &str = "[stack not copied]";
const LIVE_BEFORE_ATTACH: &str = "[live before attach]";
const NO_SITE: &str = "[no site: malloc's own]";
const TRUNCATED: &str = "[truncated]";
/// The synthetic mapping's file name: pprof does not try to symbolise a file named in brackets.
const SYNTHETIC_MAPPING: &str = "[pagealloc]";

/// The gzipped pprof heap profile of `report`, taken at `taken` after tracing for `duration`.
/// Its values are the estimates (already unsampled, as Go writes them), rounded; the period is
/// the byte sampler's mean.
pub fn heap_profile(report: &SitesReport, taken: SystemTime, duration: Duration) -> Vec<u8> {
    let mut profile = ProfileBuilder::default();
    for site in &report.sites {
        let Some(value) = values(&site.figures) else {
            continue;
        };
        let mut locations: Vec<u64> = (site.frames.iter())
            .map(|frame| profile.frame_location(frame))
            .collect();
        if site.truncated {
            locations.push(profile.synthetic_location(TRUNCATED));
        }
        profile.sample(locations, value);
    }
    for (name, figures) in [
        (OTHER_SITES, &report.other),
        (STACK_NOT_COPIED, &report.unknown),
        (LIVE_BEFORE_ATTACH, &report.before_attach),
        (NO_SITE, &report.unattributed),
    ] {
        if let Some(value) = values(figures) {
            let location = profile.synthetic_location(name);
            profile.sample(vec![location], value);
        }
    }
    let since_epoch = taken
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let bytes = profile
        .finish(report.sampling.sample_bytes, since_epoch, duration)
        .encode_to_vec();
    gzip(&bytes)
}

/// A sample's values, in the order of [`SAMPLE_TYPES`]; none if all are 0 (no sample).
fn values(figures: &SiteFigures) -> Option<[i64; 5]> {
    let values = [
        figures.alloc_objects,
        figures.alloc_bytes,
        figures.inuse_objects,
        figures.inuse_bytes,
        figures.pinned_bytes,
    ]
    // Saturating: the estimates are finite and not negative.
    .map(|estimate| estimate.round() as i64);
    values.iter().any(|&v| v != 0).then_some(values)
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(bytes.len() / 2), Compression::default());
    // Writes into a Vec do not fail: the only error would be running out of memory, which aborts.
    encoder
        .write_all(bytes)
        .and_then(|()| encoder.finish())
        .expect("gzip into memory")
}

fn nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// What a Location stands for: an address of the process, or a frame pagealloc makes up.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum LocationKey {
    Address(u64),
    Synthetic(&'static str),
}

/// A profile being built: its tables, each entry made once (ids are 1-based indices).
struct ProfileBuilder<'a> {
    profile: proto::Profile,
    strings: HashMap<String, i64>,
    mappings: HashMap<&'a Module, u64>,
    synthetic_mapping: Option<u64>,
    locations: HashMap<LocationKey, u64>,
    functions: HashMap<(&'a str, Option<&'a str>), u64>,
}

impl Default for ProfileBuilder<'_> {
    fn default() -> Self {
        let mut builder = ProfileBuilder {
            profile: proto::Profile::default(),
            strings: HashMap::new(),
            mappings: HashMap::new(),
            synthetic_mapping: None,
            locations: HashMap::new(),
            functions: HashMap::new(),
        };
        // pprof requires the string table to begin with "".
        builder.string("");
        builder
    }
}

impl<'a> ProfileBuilder<'a> {
    fn finish(mut self, sample_bytes: u64, taken: Duration, duration: Duration) -> proto::Profile {
        self.profile.sample_type = (SAMPLE_TYPES.iter())
            .map(|&(kind, unit)| self.value_type(kind, unit))
            .collect();
        self.profile.default_sample_type = self.string(DEFAULT_SAMPLE_TYPE);
        self.profile.period_type = Some(self.value_type("space", "bytes"));
        self.profile.period = i64::try_from(sample_bytes).unwrap_or(i64::MAX);
        self.profile.time_nanos = nanos(taken);
        self.profile.duration_nanos = nanos(duration);
        self.profile
    }

    /// A sample at `locations` (innermost first).
    fn sample(&mut self, locations: Vec<u64>, value: [i64; 5]) {
        self.profile.sample.push(proto::Sample {
            location_id: locations,
            value: value.to_vec(),
        });
    }

    fn frame_location(&mut self, frame: &'a Frame) -> u64 {
        let key = LocationKey::Address(frame.address);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let mapping_id = match &frame.module {
            Some(module) => self.mapping(module),
            None => self.synthetic_mapping(),
        };
        let line: Vec<proto::Line> = (frame.lines.iter())
            .map(|line| proto::Line {
                function_id: self.function(&line.function, line.file.as_deref()),
                line: line.line.map_or(0, i64::from),
            })
            .collect();
        self.location(key, mapping_id, frame.address, line)
    }

    /// The location of a frame pagealloc makes up, a function of that name.
    fn synthetic_location(&mut self, name: &'static str) -> u64 {
        let key = LocationKey::Synthetic(name);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let mapping_id = self.synthetic_mapping();
        let line = vec![proto::Line {
            function_id: self.function(name, None),
            line: 0,
        }];
        self.location(key, mapping_id, 0, line)
    }

    fn location(
        &mut self,
        key: LocationKey,
        mapping_id: u64,
        address: u64,
        line: Vec<proto::Line>,
    ) -> u64 {
        // What the mapping's locations carry: pprof symbolises a mapping without functions.
        let functions = &self.profile.function;
        let mapping = &mut self.profile.mapping[mapping_id as usize - 1];
        mapping.has_functions |= !line.is_empty();
        mapping.has_filenames |=
            (line.iter()).any(|l| functions[l.function_id as usize - 1].filename != 0);
        mapping.has_line_numbers |= line.iter().any(|l| l.line != 0);
        mapping.has_inline_frames |= line.len() > 1;
        let id = self.profile.location.len() as u64 + 1;
        self.profile.location.push(proto::Location {
            id,
            mapping_id,
            address,
            line,
        });
        self.locations.insert(key, id);
        id
    }

    fn mapping(&mut self, module: &'a Module) -> u64 {
        if let Some(&id) = self.mappings.get(module) {
            return id;
        }
        let filename = self.string(&module.path);
        let build_id = module.build_id.as_deref().map_or(0, |id| self.string(id));
        let id = self.push_mapping(proto::Mapping {
            memory_start: module.start,
            memory_limit: module.end,
            file_offset: module.file_offset,
            filename,
            build_id,
            ..proto::Mapping::default()
        });
        self.mappings.insert(module, id);
        id
    }

    fn synthetic_mapping(&mut self) -> u64 {
        if let Some(id) = self.synthetic_mapping {
            return id;
        }
        let filename = self.string(SYNTHETIC_MAPPING);
        let id = self.push_mapping(proto::Mapping {
            filename,
            ..proto::Mapping::default()
        });
        self.synthetic_mapping = Some(id);
        id
    }

    fn push_mapping(&mut self, mapping: proto::Mapping) -> u64 {
        let id = self.profile.mapping.len() as u64 + 1;
        self.profile.mapping.push(proto::Mapping { id, ..mapping });
        id
    }

    fn function(&mut self, name: &'a str, file: Option<&'a str>) -> u64 {
        if let Some(&id) = self.functions.get(&(name, file)) {
            return id;
        }
        let id = self.profile.function.len() as u64 + 1;
        let name_index = self.string(name);
        let filename = file.map_or(0, |file| self.string(file));
        self.profile.function.push(proto::Function {
            id,
            name: name_index,
            system_name: name_index,
            filename,
        });
        self.functions.insert((name, file), id);
        id
    }

    fn value_type(&mut self, kind: &str, unit: &str) -> proto::ValueType {
        proto::ValueType {
            r#type: self.string(kind),
            unit: self.string(unit),
        }
    }

    /// The index of `text` in the string table, added if new.
    fn string(&mut self, text: &str) -> i64 {
        if let Some(&index) = self.strings.get(text) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(text.to_string());
        self.strings.insert(text.to_string(), index);
        index
    }
}

/// The messages of profile.proto that pagealloc writes, with the fields it sets (their numbers
/// as there; strings are indices into `string_table`).
mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Innermost first.
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        /// Innermost first: the last is the function the ones before were inlined into.
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
    }
}
