//! The programs loaded into the kernel, with the chunk's layout set in them; the rings and the
//! drains put in place; the probes attached.
use std::num::NonZeroU32;
use std::path::Path;

use aya::maps::PerCpuArray;
use aya::maps::PerCpuValues;
use aya::maps::{ArrayOfMaps, MapData, RingBuf};
use aya::programs::uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope};
use aya::programs::{ProgramError, RawTracePoint, UProbe};
use aya::{Ebpf, EbpfLoader};
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use pagealloc_common::{
    Attach, CHUNK_WORDS, COUNTDOWN_MAP, ChunkWords, EVENTS_MAP, Program, SAMPLING, SCRATCH_MAP,
    STAGED_MAP, Sampling,
};

use super::detach::Attached;
use super::drain::Drains;
use super::error::TraceError;
use super::probes::Placed;

/// The compiled programs of `pagealloc-ebpf`, embedded at build time.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pagealloc"));

/// Loads every [`Program`], with `chunk_words` and `sampling` set in them and room for a ring
/// and a stack record per `possible` CPU.
pub(super) fn load(
    chunk_words: ChunkWords,
    sampling: &Sampling,
    possible: u32,
) -> Result<Ebpf, TraceError> {
    let mut ebpf = EbpfLoader::new()
        .map_max_entries(EVENTS_MAP, possible)
        .map_max_entries(SCRATCH_MAP, possible)
        .override_global(CHUNK_WORDS, &chunk_words, true)
        .override_global(SAMPLING, sampling, true)
        .load(EBPF_OBJECT)
        .map_err(|source| TraceError::Load { source })?;
    for program in Program::ALL {
        let loaded = match program.attach() {
            Attach::Instruction | Attach::Return => kind::<UProbe>(&mut ebpf, program)?.load(),
            Attach::Run => kind::<RawTracePoint>(&mut ebpf, program)?.load(),
        };
        loaded.map_err(|source| TraceError::LoadProgram { program, source })?;
    }
    Ok(ebpf)
}

/// Each CPU's byte sampler starts a gap drawn by `draw` into its first sample.
pub(super) fn seed_countdowns(
    ebpf: &mut Ebpf,
    possible: u32,
    mut draw: impl FnMut() -> i64,
) -> Result<(), TraceError> {
    let mut countdowns: PerCpuArray<_, i64> = ebpf
        .map_mut(COUNTDOWN_MAP)
        .ok_or(TraceError::Missing {
            name: COUNTDOWN_MAP,
        })?
        .try_into()
        .map_err(TraceError::map(COUNTDOWN_MAP))?;
    let values = (0..possible).map(|_| draw()).collect::<Vec<_>>();
    let values = PerCpuValues::try_from(values).map_err(TraceError::io("seeding the sampler"))?;
    countdowns
        .set(0, values, 0)
        .map_err(TraceError::map("seeding the sampler"))
}

/// A ring buffer for each possible CPU, put in the programs' array of rings: `bytes` for the
/// online ones, a page for the others (a VM may list far more CPUs than it has; one brought
/// online later still reports, and what its small ring loses is counted).
pub(super) fn rings(
    ebpf: &mut Ebpf,
    possible: u32,
    online: &[u32],
    bytes: u32,
) -> Result<Vec<RingBuf<MapData>>, TraceError> {
    let mut array: ArrayOfMaps<_> = ebpf
        .map_mut(EVENTS_MAP)
        .ok_or(TraceError::Missing { name: EVENTS_MAP })?
        .try_into()
        .map_err(TraceError::map(EVENTS_MAP))?;
    (0..possible)
        .map(|cpu| {
            let size = if online.contains(&cpu) {
                bytes
            } else {
                procfs::page_size() as u32
            };
            let definition =
                aya_obj::Map::new_from_params(aya::maps::MapType::RingBuf as u32, 0, 0, size, 0);
            let ring = MapData::create(definition, &format!("events{cpu}"), None)
                .map_err(TraceError::map(format!("making CPU {cpu}'s ring buffer")))?;
            array.set(cpu, &ring, 0).map_err(TraceError::map(format!(
                "putting CPU {cpu}'s ring buffer in place"
            )))?;
            RingBuf::try_from(aya::maps::Map::RingBuf(ring)).map_err(TraceError::map(EVENTS_MAP))
        })
        .collect()
}

/// Wakes the reader when a program forces it (a ring an eighth full). Edge-triggered: a ring
/// with events in it does not wake the reader by itself, or it would wake for nearly every event
/// of a busy process.
pub(super) fn wake_ups(rings: &[RingBuf<MapData>]) -> Result<Epoll, TraceError> {
    let failed = |e: nix::Error| TraceError::io("waiting for the ring buffers")(e.into());
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(failed)?;
    for ring in rings {
        let wanted = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLET, 0);
        epoll.add(ring, wanted).map_err(failed)?;
    }
    Ok(epoll)
}

/// The drain program (run through `BPF_PROG_TEST_RUN`, never attached) and the staging areas,
/// tried once on `cpu`.
pub(super) fn drains(ebpf: &mut Ebpf, cpu: u32) -> Result<Drains, TraceError> {
    let program = Program::Drain;
    let fd = kind::<RawTracePoint>(ebpf, program)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|source| TraceError::ProgramKind { program, source })?;
    let staged = ebpf
        .take_map(STAGED_MAP)
        .ok_or(TraceError::Missing { name: STAGED_MAP })?
        .try_into()
        .map_err(TraceError::map(STAGED_MAP))?;
    Drains::new(fd, staged, cpu).map_err(|source| TraceError::Drain { cpu, source })
}

/// Attaches each probe of `placed` to `libc`, for process `pid` only. A failure detaches
/// those attached before it.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    placed: &[Placed],
    libc: &Path,
    pid: NonZeroU32,
) -> Result<Attached, TraceError> {
    let mut attached = Attached::default();
    for p in placed {
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(p.file_offset),
            cookie: p.cookie(),
        };
        let attach_error = |source| TraceError::Attach {
            program: p.program,
            function: p.function.clone(),
            offset: p.offset,
            source,
        };
        let program = kind::<UProbe>(ebpf, p.program)?;
        let link = program
            .attach(point, libc, UProbeScope::OneProcess(pid))
            .and_then(|id| program.take_link(id))
            .map_err(attach_error)?;
        attached.push(link);
        log::debug!(
            "probe {} on {}+{} ({})",
            p.program.name(),
            p.function,
            p.offset,
            if p.emulated {
                "emulated"
            } else {
                "single-stepped"
            }
        );
    }
    Ok(attached)
}

/// `program`, as the kind `P` it is.
fn kind<'e, P>(ebpf: &'e mut Ebpf, program: Program) -> Result<&'e mut P, TraceError>
where
    &'e mut P: TryFrom<&'e mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(program.name())
        .ok_or(TraceError::Missing {
            name: program.name(),
        })?
        .try_into()
        .map_err(|source| TraceError::ProgramKind { program, source })
}

#[cfg(test)]
mod tests {
    use aya_obj::ProgramSection;
    use pagealloc_common::{Attach, Program};

    /// The embedded object has each listed program, of the kind its attachment needs (read
    /// without loading: no privileges needed).
    #[test]
    fn the_object_has_every_program() {
        let object = aya_obj::Object::parse(super::EBPF_OBJECT).unwrap();
        for program in Program::ALL {
            let section = &object.programs[program.name()].section;
            let kind_fits = match program.attach() {
                Attach::Instruction => matches!(section, ProgramSection::UProbe { .. }),
                Attach::Return => matches!(section, ProgramSection::URetProbe { .. }),
                Attach::Run => matches!(section, ProgramSection::RawTracePoint),
            };
            assert!(kind_fits, "{}: {section:?}", program.name());
        }
        assert_eq!(object.programs.len(), Program::ALL.len());
    }
}
