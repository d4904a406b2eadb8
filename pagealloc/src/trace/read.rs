//! The thread that reads the ring buffers and hands the events over in the order of their
//! stamps.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use nix::sys::epoll::{Epoll, EpollEvent, EpollTimeout};
use pagealloc_common::{Event, EventKind, SAMPLED_BYTES, SAMPLED_PAGE, STACK_HEADER, STACK_MISSED};

use super::drain::Drains;
use super::{Batch, RawStack, monotonic_now};

/// Events the probes wrote but the reader could not hand over in their place: stranded on a
/// CPU taken offline, or arriving after a batch that vouched for their time (which the marks
/// rule out: kept as a check). They count as lost.
#[derive(Debug, Default)]
pub(super) struct ReaderLosses {
    pub(super) count: AtomicU64,
    /// When the last was found (CLOCK_MONOTONIC, ns).
    pub(super) last: AtomicU64,
}

impl ReaderLosses {
    fn add(&self, events: u64) {
        if events > 0 {
            // The time first: whoever sees the count grow sees when, or later.
            self.last.store(monotonic_now(), Ordering::Relaxed);
            self.count.fetch_add(events, Ordering::Release);
        }
    }
}

/// The thread that reads the ring buffers.
pub(super) struct Reader {
    pub(super) rings: Vec<RingBuf<MapData>>,
    pub(super) wake_ups: Epoll,
    pub(super) drains: Drains,
    pub(super) losses: Arc<ReaderLosses>,
}

impl Reader {
    /// Reads the ring buffers until `stop`: waits for a wake-up or `poll`, has every CPU write
    /// out what it gathered and a mark, then takes everything there is. Each ring is in its
    /// CPU's order (but for an event written past a staging area another probe held); the
    /// events of all are handed over in the order of their stamps, as far as every CPU's last
    /// mark read vouches for them (the rest wait for the next round).
    pub(super) fn run(mut self, send: mpsc::Sender<Batch>, stop: &AtomicBool, poll: Duration) {
        let timeout = EpollTimeout::try_from(poll).unwrap_or(EpollTimeout::MAX);
        let mut woken = [EpollEvent::empty(); 8];
        let mut waiting: Vec<Event> = Vec::new();
        let mut waiting_stacks: Vec<RawStack> = Vec::new();
        let mut handed_before = 0;
        while !stop.load(Ordering::Relaxed) {
            let _ = self.wake_ups.wait(&mut woken, timeout);
            match self.drains.run(monotonic_now()) {
                Ok(stranded) => self.losses.add(stranded),
                Err(e) => {
                    // Events would wait unseen: stop, and live mode says the reader stopped.
                    log::error!("draining the probes' staging areas: {e}");
                    return;
                }
            }
            let mut events = std::mem::take(&mut waiting);
            let mut stacks = std::mem::take(&mut waiting_stacks);
            let mut late = 0;
            for (cpu, ring) in self.rings.iter_mut().enumerate() {
                while let Some(record) = ring.next() {
                    if let Some((event, stack)) = stack_record(&record) {
                        if event.time >= handed_before {
                            events.push(event);
                            stacks.push(stack);
                        } else if !self.drains.was_stranded(cpu, event.time) {
                            late += 1;
                        }
                        continue;
                    }
                    for bytes in record.chunks_exact(size_of::<Event>()) {
                        // SAFETY: the programs write whole `Event`s; the copy is unaligned-safe.
                        let event =
                            unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) };
                        if event.kind == EventKind::Mark as u8 {
                            self.drains.mark_read(cpu, event.time);
                        } else if event.time >= handed_before {
                            events.push(event);
                        } else if !self.drains.was_stranded(cpu, event.time) {
                            late += 1;
                        }
                    }
                }
            }
            if late > 0 {
                log::debug!("{late} events arrived after their time was vouched for: lost");
            }
            self.losses.add(late);
            let complete_before = self.drains.vouched_before().max(handed_before);
            // Runs already in order, merged (a stable sort finds them).
            events.sort_by_key(|event| event.time);
            stacks.sort_by_key(|stack| stack.time);
            let vouched = events.partition_point(|event| event.time < complete_before);
            waiting = events.split_off(vouched);
            let vouched = stacks.partition_point(|stack| stack.time < complete_before);
            waiting_stacks = stacks.split_off(vouched);
            handed_before = complete_before;
            let batch = Batch {
                events,
                stacks,
                complete_before,
            };
            if send.send(batch).is_err() {
                return;
            }
        }
    }
}

/// The event and stack of a record a probe wrote for a sampled allocation (its event's
/// `sampled` says so; an event of a batch record carries those bits only with
/// `STACK_MISSED`).
fn stack_record(record: &[u8]) -> Option<(Event, RawStack)> {
    if record.len() < STACK_HEADER {
        return None;
    }
    // SAFETY: the record begins with a whole `Event`; the copy is unaligned-safe.
    let event = unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<Event>()) };
    if event.sampled & (SAMPLED_BYTES | SAMPLED_PAGE) == 0 || event.sampled & STACK_MISSED != 0 {
        return None;
    }
    let word = |at: usize| {
        let at = size_of::<Event>() + at * 8;
        u64::from_le_bytes(record[at..at + 8].try_into().unwrap_or_default())
    };
    let stack_len = (word(3) as usize).min(record.len() - STACK_HEADER);
    let stack = RawStack {
        time: event.time,
        tid: event.tid,
        ip: word(0),
        sp: word(1),
        bp: word(2),
        stack: record[STACK_HEADER..STACK_HEADER + stack_len].to_vec(),
    };
    Some((event, stack))
}
