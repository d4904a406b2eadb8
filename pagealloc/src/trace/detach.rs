//! Taking the probes off without waiting for the kernel. Each uprobe's detach waits for a grace
//! period of RCU tasks trace (`uprobe_unregister_sync`, ~0.1 s on 6.18) under a mutex the
//! kernel holds for every uprobe event, attaches included: one at a time, ~2 s for a process's
//! probes, whether closed by us, by threads at once, or by the kernel as the process exits. So
//! a dropped tracer's links go to a child process forked for them: it keeps them while this
//! process closes its own copies (at once: they are not the last), then closes them and exits.
//! This process goes on, or exits, without waiting; the probes are off ~2 s later.
use std::os::fd::RawFd;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};

use aya::programs::uprobe::UProbeLink;

/// The probes attached to a process, detached as above when dropped.
#[derive(Default)]
pub(super) struct Attached(Vec<UProbeLink>);

impl Attached {
    pub(super) fn push(&mut self, link: UProbeLink) {
        self.0.push(link);
    }
}

/// Probes of dropped tracers not yet detached.
static DETACHING: AtomicUsize = AtomicUsize::new(0);

/// Probes of dropped tracers the kernel has not detached yet: a bound for whoever attaches
/// more (each attach waits behind them).
pub fn detaching() -> usize {
    DETACHING.load(Ordering::Acquire)
}

/// What the detaching thread is handed.
enum Handed {
    /// Links to detach here (no child could be forked).
    Links(Vec<UProbeLink>),
    /// A child detaching this many links, to wait for.
    Child { pid: libc::pid_t, links: usize },
}

impl Drop for Attached {
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.0);
        if links.is_empty() {
            return;
        }
        DETACHING.fetch_add(links.len(), Ordering::AcqRel);
        let handed = match hand_to_child(links) {
            Ok((pid, links)) => Handed::Child { pid, links },
            Err(links) => Handed::Links(links),
        };
        match detacher() {
            Some(queue) => {
                if let Err(mpsc::SendError(handed)) = queue.send(handed) {
                    finish(handed)
                }
            }
            None => finish(handed),
        }
    }
}

/// Detaches the links, or waits for the child that does (and reaps it).
fn finish(handed: Handed) {
    let count = match handed {
        Handed::Links(links) => {
            let count = links.len();
            drop(links);
            count
        }
        Handed::Child { pid, links } => {
            let mut status = 0;
            // SAFETY: waits for our own child.
            while unsafe { libc::waitpid(pid, &mut status, 0) } == -1
                && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
            {
            }
            links
        }
    };
    DETACHING.fetch_sub(count, Ordering::AcqRel);
}

/// The queue of the thread that detaches (or waits for the children that do), started when
/// first needed; None if it could not be.
fn detacher() -> Option<&'static Sender<Handed>> {
    static QUEUE: OnceLock<Option<Sender<Handed>>> = OnceLock::new();
    QUEUE
        .get_or_init(|| {
            let (queue, handed) = mpsc::channel::<Handed>();
            std::thread::Builder::new()
                .name("pagealloc-detach".into())
                .spawn(move || handed.into_iter().for_each(finish))
                .ok()?;
            Some(queue)
        })
        .as_ref()
}

/// Forks a child that keeps every BPF link of this process (ours; the others' copies are only
/// references) and closes them once this process has closed its copies of `links`; the child's
/// pid and how many links it detaches. The links back if no child could be made.
fn hand_to_child(links: Vec<UProbeLink>) -> Result<(libc::pid_t, usize), Vec<UProbeLink>> {
    let Some(mut kept) = link_fds() else {
        return Err(links);
    };
    let mut pipe = [0; 2];
    // SAFETY: pipe fills two descriptors.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return Err(links);
    }
    let [parent_gone, parent_alive] = pipe;
    kept.push(parent_gone);
    kept.sort_unstable();
    // SAFETY: the child only makes async-signal-safe calls (see `detach_in_child`).
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe { detach_in_child(&kept, parent_gone) }
    }
    // SAFETY: our own descriptors, each closed once.
    unsafe { libc::close(parent_gone) };
    if pid == -1 {
        unsafe { libc::close(parent_alive) };
        return Err(links);
    }
    let count = links.len();
    // Our copies closed at once (the child's are the last), then the child is let go on.
    drop(links);
    unsafe { libc::close(parent_alive) };
    Ok((pid, count))
}

/// The descriptors of this process that are BPF links.
fn link_fds() -> Option<Vec<RawFd>> {
    let fds = std::fs::read_dir("/proc/self/fd").ok()?;
    let links = fds
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let target = std::fs::read_link(entry.path()).ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            (target.as_os_str() == "anon_inode:bpf_link").then_some(fd)
        })
        .collect();
    Some(links)
}

/// The forked child: closes every descriptor but the links and the pipe's read end (the
/// listening socket, stdout and the rest must not outlive this process), waits for the pipe
/// to close (this process has closed its copies of the links: the child's are the last), then
/// closes the links (each waits for the kernel) and exits. Only async-signal-safe calls: the
/// other threads of the parent may have held locks at the fork.
unsafe fn detach_in_child(kept: &[RawFd], parent_gone: RawFd) -> ! {
    unsafe {
        // A Ctrl-C meant for pagealloc must not end the child before the links are closed.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        let mut from: libc::c_uint = 0;
        for &fd in kept {
            let fd = fd as libc::c_uint;
            if fd > from {
                libc::syscall(libc::SYS_close_range, from, fd - 1, 0);
            }
            from = fd + 1;
        }
        libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
        let mut byte = 0u8;
        while libc::read(parent_gone, (&raw mut byte).cast(), 1) > 0 {}
        for &fd in kept {
            libc::close(fd);
        }
        libc::_exit(0)
    }
}
