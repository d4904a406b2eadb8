//! The thread that reads the ring buffers and hands the events over in the order of their
//! stamps.
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use nix::sys::epoll::{Epoll, EpollEvent, EpollTimeout};
use pagealloc_common::{Event, EventKind};

use super::drain::Drains;
use super::{Batch, monotonic_now};

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
            let mut late = 0;
            for (cpu, ring) in self.rings.iter_mut().enumerate() {
                while let Some(record) = ring.next() {
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
            let vouched = events.partition_point(|event| event.time < complete_before);
            waiting = events.split_off(vouched);
            handed_before = complete_before;
            let batch = Batch {
                events,
                complete_before,
            };
            if send.send(batch).is_err() {
                return;
            }
        }
    }
}
