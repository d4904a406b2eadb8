//! The page map: every mapping of the target, page by page, as runs of identical page states.

/// What one page of a mapping is, as far as the kernel tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageState {
    /// Neither resident nor swapped (never touched, reclaimed, or a file page not in memory).
    Absent,
    /// Resident anonymous memory (heap, stacks, private writable pages).
    Anon,
    /// Resident file-backed or shared memory (page cache).
    File,
    /// Resident anonymous page that is part of a transparent huge page or large folio.
    ThpAnon,
    /// Resident file page that is part of a large folio.
    ThpFile,
    /// Swapped out.
    Swapped,
}

impl PageState {
    pub const ALL: [PageState; 6] = [
        PageState::Anon,
        PageState::File,
        PageState::ThpAnon,
        PageState::ThpFile,
        PageState::Swapped,
        PageState::Absent,
    ];

    /// The JSON key and legend label.
    pub fn key(self) -> &'static str {
        match self {
            PageState::Absent => "absent",
            PageState::Anon => "anon",
            PageState::File => "file",
            PageState::ThpAnon => "thp_anon",
            PageState::ThpFile => "thp_file",
            PageState::Swapped => "swapped",
        }
    }

    pub fn is_resident(self) -> bool {
        !matches!(self, PageState::Absent | PageState::Swapped)
    }
}

/// Page counts by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageCounts {
    pub anon: u64,
    pub file: u64,
    pub thp_anon: u64,
    pub thp_file: u64,
    pub swapped: u64,
    pub absent: u64,
}

impl PageCounts {
    pub fn add(&mut self, state: PageState, pages: u64) {
        *self.slot(state) += pages;
    }

    pub fn get(&self, state: PageState) -> u64 {
        let mut copy = *self;
        *copy.slot(state)
    }

    pub fn merge(&mut self, other: &PageCounts) {
        for state in PageState::ALL {
            self.add(state, other.get(state));
        }
    }

    pub fn resident(&self) -> u64 {
        self.anon + self.file + self.thp_anon + self.thp_file
    }

    fn slot(&mut self, state: PageState) -> &mut u64 {
        match state {
            PageState::Absent => &mut self.absent,
            PageState::Anon => &mut self.anon,
            PageState::File => &mut self.file,
            PageState::ThpAnon => &mut self.thp_anon,
            PageState::ThpFile => &mut self.thp_file,
            PageState::Swapped => &mut self.swapped,
        }
    }
}

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: String,
    pub offset: u64,
    /// The pathname column: a file, `[heap]`, `[stack]`, ... or empty for anonymous memory.
    pub path: String,
}

/// A run of consecutive pages in the same state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub state: PageState,
    pub pages: u64,
}

/// A mapping and the state of each of its pages.
#[derive(Clone, Debug)]
pub struct MappingPages {
    pub mapping: Mapping,
    pub counts: PageCounts,
    pub runs: Vec<Run>,
}

impl MappingPages {
    pub fn new(mapping: Mapping) -> Self {
        MappingPages {
            mapping,
            counts: PageCounts::default(),
            runs: Vec::new(),
        }
    }

    pub fn push(&mut self, state: PageState, pages: u64) {
        if pages == 0 {
            return;
        }
        self.counts.add(state, pages);
        match self.runs.last_mut() {
            Some(run) if run.state == state => run.pages += pages,
            _ => self.runs.push(Run { state, pages }),
        }
    }
}

/// What the page map cannot tell, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Limitation {
    /// `/proc/kpageflags` could not be opened (the error): huge pages look like small ones.
    NoPageFlags(String),
    /// pagemap hides frame numbers without CAP_SYS_ADMIN: huge pages look like small ones, and
    /// pages mapped to the zero page like resident ones.
    FramesHidden,
}

impl std::fmt::Display for Limitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limitation::NoPageFlags(error) => write!(
                f,
                "huge pages are not told apart from small ones: /proc/kpageflags cannot be \
                 read ({error}); it and pagemap's frame numbers need root (CAP_SYS_ADMIN)"
            ),
            Limitation::FramesHidden => f.write_str(
                "pages only read, never written (mapped to the kernel's zero page), count as \
                 resident, and huge pages are not told apart from small ones: pagemap hides \
                 frame numbers without CAP_SYS_ADMIN",
            ),
        }
    }
}

/// The whole address space of one process.
#[derive(Clone, Debug)]
pub struct PageMap {
    pub pid: i32,
    pub page_size: u64,
    pub mappings: Vec<MappingPages>,
    pub totals: PageCounts,
    /// What could not be known (for instance huge pages without root), said once, with the reason.
    pub limitations: Vec<Limitation>,
}

/// Resident address ranges, sorted and merged, for quick "may I read this?" answers.
#[derive(Clone, Debug, Default)]
pub struct ResidentRanges {
    ranges: Vec<(u64, u64)>,
}

impl ResidentRanges {
    /// Whether all of `start..end` is resident.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        self.ranges
            .get(i)
            .is_some_and(|&(s, e)| s <= start && end <= e)
    }

    /// The resident parts of `start..end`.
    pub fn within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let i = self.ranges.partition_point(|r| r.1 <= start);
        (self.ranges[i..].iter())
            .take_while(|r| r.0 < end)
            .map(|&(s, e)| (s.max(start), e.min(end)))
            .collect()
    }
}

impl PageMap {
    /// The resident address ranges of the whole process.
    pub fn resident_ranges(&self) -> ResidentRanges {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for pages in &self.mappings {
            let mut addr = pages.mapping.start;
            for run in &pages.runs {
                let end = addr + run.pages * self.page_size;
                if run.state.is_resident() {
                    match ranges.last_mut() {
                        Some(last) if last.1 == addr => last.1 = end,
                        _ => ranges.push((addr, end)),
                    }
                }
                addr = end;
            }
        }
        ResidentRanges { ranges }
    }
}
