//! Helpers for the end-to-end tests: fixture processes that report what they hold, and running
//! the `pagealloc` binary as a user would.
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};

use pagealloc_testkit::lines::Lines;

/// A running fixture program. Dropping it closes its stdin (it exits) and reaps it.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines,
    /// The latest report, `key value` lines up to `ready`.
    pub report: HashMap<String, u64>,
}

impl Fixture {
    /// Starts fixture `path` and waits for its first report.
    pub fn spawn(path: &str, args: &[&str]) -> Fixture {
        Self::spawn_with(Command::new(path).args(args))
    }

    pub fn spawn_with(command: &mut Command) -> Fixture {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("fixture starts");
        let stdin = child.stdin.take();
        let stdout = Lines::new(child.stdout.take().expect("piped stdout"));
        let mut fixture = Fixture {
            child,
            stdin,
            stdout,
            report: HashMap::new(),
        };
        fixture.read_report();
        fixture
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn get(&self, key: &str) -> u64 {
        *self
            .report
            .get(key)
            .unwrap_or_else(|| panic!("fixture did not report {key}: {:?}", self.report))
    }

    /// Sends a command and waits for the report that answers it.
    pub fn command(&mut self, command: &str) {
        self.send(command);
        self.read_report();
    }

    /// Sends a command that is not answered.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("fixture stdin open");
        writeln!(stdin, "{command}").expect("fixture takes commands");
        stdin.flush().expect("fixture takes commands");
    }

    /// The fixture's next report (each line within [`LIMIT`]: a fixture that hangs fails the
    /// test instead of hanging it).
    fn read_report(&mut self) {
        self.report.clear();
        loop {
            let line = match self.stdout.next(LIMIT) {
                Ok(Some(line)) => line,
                Ok(None) => panic!(
                    "fixture exited before reporting: {:?}",
                    self.child.try_wait()
                ),
                Err(silent) => panic!("fixture did not report: {silent}"),
            };
            let line = line.trim_end();
            if line == "ready" {
                return;
            }
            let (key, value) = line.split_once(' ').expect("`key value` lines");
            self.report
                .insert(key.to_string(), value.parse().expect("numeric value"));
        }
    }

    /// Kills the fixture and leaves it unreaped (a zombie) until dropped.
    pub fn kill_leaving_zombie(&mut self) {
        self.child.kill().expect("kill fixture");
        // WNOWAIT: wait for the death without reaping, so the pid stays a zombie.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        assert_eq!(rc, 0, "waitid on the fixture");
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stdin.take();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Path of a fixture binary built by build.rs.
#[macro_export]
macro_rules! fixture_path {
    ($name:literal) => {
        env!(concat!("FIXTURE_", $name))
    };
}

/// The `pagealloc` binary of this build (`cargo xtask test` builds it before the tests).
pub fn pagealloc_bin() -> PathBuf {
    let mut dir = std::env::current_exe().expect("test binary path");
    dir.pop(); // the test binary
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("pagealloc");
    assert!(
        bin.exists(),
        "{} is missing: run the suite with `cargo xtask test`, which builds it first",
        bin.display()
    );
    bin
}

/// Runs `pagealloc ARGS` and returns its output.
pub fn pagealloc(args: &[&str]) -> Output {
    pagealloc_command(args).output().expect("pagealloc runs")
}

pub fn pagealloc_command(args: &[&str]) -> Command {
    let mut command = Command::new(pagealloc_bin());
    command.args(args).env_remove("NO_COLOR");
    command
}

/// `pagealloc snapshot PID --format json` parsed; panics with stderr if it failed.
pub fn snapshot_json(pid: i32, extra: &[&str]) -> serde_json::Value {
    let pid = pid.to_string();
    let mut args = vec!["snapshot", pid.as_str(), "--format", "json"];
    args.extend_from_slice(extra);
    let output = pagealloc(&args);
    assert!(
        output.status.success(),
        "pagealloc {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("valid JSON")
}

/// The fixture's entry in /proc.
pub fn process(pid: i32) -> procfs::process::Process {
    procfs::process::Process::new(pid).expect("the fixture is in /proc")
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Fails a `root_` test run without root: such tests must never pass by skipping.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root; `cargo xtask test` skips root_ tests when not root"
    );
}

/// Swap for the duration of a test, so that paged-out anonymous memory really is swapped.
/// Uses the active swap if there is one; otherwise (root only) adds a swap file and removes it
/// again on drop.
pub struct TempSwap {
    file: Option<PathBuf>,
}

impl TempSwap {
    pub fn ensure() -> TempSwap {
        let swaps = std::fs::read_to_string("/proc/swaps").expect("/proc/swaps");
        if swaps.lines().count() > 1 {
            return TempSwap { file: None };
        }
        let file = std::env::temp_dir().join(format!("pagealloc-test-swap-{}", std::process::id()));
        let run = |program: &str, args: &[&str]| {
            let status = Command::new(program).args(args).status();
            assert!(
                status.is_ok_and(|s| s.success()),
                "{program} {args:?} failed: a swap file is needed to test swapped pages"
            );
        };
        let path = file.to_str().expect("utf-8 temp dir");
        run("fallocate", &["-l", "64M", path]);
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod swap file");
        run("mkswap", &[path]);
        run("swapon", &[path]);
        TempSwap { file: Some(file) }
    }
}

impl Drop for TempSwap {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _ = Command::new("swapoff").arg(&file).status();
            let _ = std::fs::remove_file(&file);
        }
    }
}

/// libc's own internal allocations (each thread's tcache_perthread_struct, ...): what a heap may
/// hold live beyond what the fixture knows it holds.
pub const LIBC_INTERNAL_BYTES: u64 = 64 * 1024;

/// A JSON number, or a panic naming the key.
pub fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing or not a number in {v}"))
}

/// A JSON line's event count `key` (live mode).
pub fn events(line: &serde_json::Value, key: &str) -> u64 {
    n(&line["events"], key)
}

/// A JSON line's heap total `key`.
pub fn heap_total(line: &serde_json::Value, key: &str) -> u64 {
    n(&line["heap"]["totals"], key)
}

/// The bytes of each chunk state, as an output gives them (JSON totals, or metrics).
pub struct StateBytes {
    pub live: u64,
    pub tcache: u64,
    pub overhead: u64,
    pub unknown: u64,
    pub top: u64,
    pub fastbin: u64,
    pub bin: u64,
    pub mmapped: u64,
}

/// Where `bytes` disagree with what a quiet fixture reported (its `mallinfo2()` and the bytes
/// it holds), one line each: free to malloc is `fordblks`, the rest of the arenas' memory
/// `uordblks`, mmapped chunks `hblkhd`, nothing unknown, and live what the fixture holds plus
/// at most libc's own.
pub fn bytes_against_mallinfo(report: &HashMap<String, u64>, bytes: &StateBytes) -> Vec<String> {
    let get = |key: &str| {
        *report
            .get(key)
            .unwrap_or_else(|| panic!("fixture did not report {key}"))
    };
    let mut wrong = Vec::new();
    let mut expect = |what: &str, got: u64, want: u64| {
        if got != want {
            wrong.push(format!("{what}: {got}, expected {want}"));
        }
    };
    expect(
        "top + fastbin + bin bytes (fordblks)",
        bytes.top + bytes.fastbin + bytes.bin,
        get("fordblks"),
    );
    expect("fastbin bytes (fsmblks)", bytes.fastbin, get("fsmblks"));
    expect(
        "live + tcache + overhead + unknown bytes (uordblks)",
        bytes.live + bytes.tcache + bytes.overhead + bytes.unknown,
        get("uordblks"),
    );
    expect("unknown bytes", bytes.unknown, 0);
    expect("mmapped bytes (hblkhd)", bytes.mmapped, get("hblkhd"));
    let (live, held) = (bytes.live, get("held_bytes"));
    if live < held || live - held > LIBC_INTERNAL_BYTES {
        wrong.push(format!(
            "live bytes {live} against {held} held: more than libc's own {LIBC_INTERNAL_BYTES}"
        ));
    }
    wrong
}

/// A heap map (`heap` of the JSON of snapshot or of a watch line) against what a quiet fixture
/// reported: its `mallinfo2()` and the chunks it holds ([`bytes_against_mallinfo`], and the
/// counts only the JSON has). Err says which figure disagrees.
pub fn heap_matches_mallinfo(
    report: &HashMap<String, u64>,
    heap: &serde_json::Value,
) -> Result<(), String> {
    let get = |key: &str| {
        *report
            .get(key)
            .unwrap_or_else(|| panic!("fixture did not report {key}"))
    };
    let arenas = heap["arenas"].as_array().ok_or("no heap.arenas")?;
    let totals = &heap["totals"];
    let mut wrong = bytes_against_mallinfo(
        report,
        &StateBytes {
            live: n(totals, "live_bytes"),
            tcache: n(totals, "tcache_bytes"),
            overhead: n(totals, "overhead_bytes"),
            unknown: n(totals, "unknown_bytes"),
            top: n(totals, "top_bytes"),
            fastbin: n(totals, "fastbin_bytes"),
            bin: n(totals, "bin_bytes"),
            mmapped: n(heap, "mmapped_bytes"),
        },
    );
    let mut expect = |what: &str, got: u64, want: u64| {
        if got != want {
            wrong.push(format!("{what}: {got}, expected {want}"));
        }
    };
    let notes = heap["notes"].as_array().map_or(0, Vec::len);
    expect("notes", notes as u64, 0);
    for key in [
        "system_bytes",
        "live_bytes",
        "bin_bytes",
        "tcache_chunks",
        "unknown_bytes",
    ] {
        let sum = arenas.iter().map(|a| n(a, key)).sum::<u64>();
        expect(&format!("Σ arenas' {key}"), sum, n(totals, key));
    }
    expect("system_bytes", n(totals, "system_bytes"), get("arena"));
    expect("fastbin_chunks", n(totals, "fastbin_chunks"), get("smblks"));
    // ordblks counts every bin chunk plus one top per arena.
    expect(
        "bin chunks + arenas",
        n(totals, "bin_chunks") + arenas.len() as u64,
        get("ordblks"),
    );
    expect("mmapped_chunks", n(heap, "mmapped_chunks"), get("hblks"));
    expect(
        "mmapped_chunks",
        n(heap, "mmapped_chunks"),
        get("mmapped_chunks"),
    );
    expect(
        "mmapped_bytes",
        n(heap, "mmapped_bytes"),
        get("mmapped_bytes"),
    );
    if n(totals, "live_chunks") < get("held_chunks") {
        wrong.push(format!(
            "live_chunks {} < {} held",
            n(totals, "live_chunks"),
            get("held_chunks")
        ));
    }
    match wrong.is_empty() {
        true => Ok(()),
        false => Err(wrong.join("; ")),
    }
}

/// A pseudo-terminal with a program running in it as in a terminal window: the terminal is its
/// controlling terminal (so it gets SIGWINCH when the window changes size) and its stdin,
/// stdout and stderr; what it writes is collected.
pub struct Pty {
    master: std::os::fd::OwnedFd,
    child: Child,
    output: std::sync::Arc<(std::sync::Mutex<Vec<u8>>, std::sync::Condvar)>,
    /// Reads the terminal until the program has closed it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Pty {
    /// Starts `command` in a terminal of `columns` × `rows`.
    pub fn spawn(command: &mut Command, columns: u16, rows: u16) -> Pty {
        use std::os::fd::{FromRawFd, OwnedFd};
        use std::os::unix::process::CommandExt;
        let (mut master, mut slave) = (0, 0);
        let size = winsize(columns, rows);
        // SAFETY: openpty fills two descriptors that we own from here on.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let stdio = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
        command
            .stdin(stdio(&slave))
            .stdout(stdio(&slave))
            .stderr(stdio(&slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("the program starts in the terminal");
        drop(slave);
        let output =
            std::sync::Arc::new((std::sync::Mutex::new(Vec::new()), std::sync::Condvar::new()));
        let reader = std::fs::File::from(master.try_clone().expect("dup the terminal"));
        let collected = output.clone();
        let reader = std::thread::spawn(move || {
            use std::io::Read;
            let mut reader = reader;
            let mut buffer = [0u8; 65536];
            // Ends with EIO once the program and its children have closed the terminal.
            while let Ok(n) = reader.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                let (bytes, grew) = &*collected;
                bytes.lock().unwrap().extend_from_slice(&buffer[..n]);
                grew.notify_all();
            }
        });
        Pty {
            master,
            child,
            output,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Changes the window's size (the program gets SIGWINCH).
    pub fn resize(&self, columns: u16, rows: u16) {
        use std::os::fd::AsRawFd;
        let size = winsize(columns, rows);
        // SAFETY: TIOCSWINSZ reads a winsize.
        let rc = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }

    /// Everything written so far.
    pub fn output(&self) -> Vec<u8> {
        self.output.0.lock().unwrap().clone()
    }

    /// Waits (up to `limit`) until what was written satisfies `done`; the output then.
    pub fn wait_for(&self, limit: std::time::Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let (bytes, grew) = &*self.output;
        let (bytes, _) = grew
            .wait_timeout_while(bytes.lock().unwrap(), limit, |b| !done(b))
            .unwrap();
        assert!(
            done(&bytes),
            "the terminal never showed what was awaited; it shows:\n{}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.clone()
    }

    /// Sends `signal` to the program and waits for it to exit (up to `limit`).
    pub fn signal_and_wait(
        &mut self,
        signal: i32,
        limit: std::time::Duration,
    ) -> std::process::ExitStatus {
        unsafe { libc::kill(self.pid(), signal) };
        self.wait(limit)
    }

    /// Waits for the program to exit (up to `limit`, then kills it and fails), and for all it
    /// wrote to be read.
    pub fn wait(&mut self, limit: std::time::Duration) -> std::process::ExitStatus {
        if !exits_within(self.pid(), limit) {
            let _ = self.child.kill();
            panic!("the program did not exit within {limit:?}");
        }
        let status = self.child.wait().expect("wait for the program");
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the terminal's reader");
        }
        status
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn winsize(columns: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The screens a program drew with "cursor home" (`ESC [ H`), each as its lines with the
/// escape sequences taken out: what a person sees.
pub fn screens(output: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(output);
    text.split("\x1b[H")
        .skip(1)
        .map(|screen| {
            // Up to the end of the frame: "erase below".
            let screen = screen.split("\x1b[J").next().unwrap_or("");
            // The terminal turns each newline into CR LF: lines end at LF, CRs are not seen.
            screen.split('\n').map(visible).collect()
        })
        .collect()
}

/// `text` without its escape sequences (CSI `ESC [ ... letter`) and carriage returns.
pub fn visible(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().filter(|&c| c != '\r');
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether process `pid` (a child of ours) exits within `limit`: waits on its pidfd.
pub fn exits_within(pid: i32, limit: std::time::Duration) -> bool {
    // SAFETY: pidfd_open returns a new descriptor or -1; poll reads one pollfd.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let ready = libc::poll(&mut poll, 1, limit.as_millis().min(i32::MAX as u128) as i32);
        libc::close(fd);
        ready == 1
    }
}

/// `pagealloc watch PID ARGS` writing JSON lines, read by a thread of their own so that a test
/// waiting for one fails after [`LIMIT`] instead of hanging.
pub struct Watch {
    pub child: Child,
    lines: Lines,
}

/// How long a test waits for any one line (never reached when it works).
pub const LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

impl Watch {
    /// `pagealloc watch PID --format json ARGS`, the overhead guard out of reach unless ARGS
    /// set `--max-rate`.
    pub fn json(pid: i32, args: &[&str]) -> Watch {
        let mut all = vec!["--format", "json"];
        if !args.contains(&"--max-rate") {
            all.extend_from_slice(&["--max-rate", "1000000000000"]);
        }
        all.extend_from_slice(args);
        Watch::start(pid, &all)
    }

    pub fn start(pid: i32, args: &[&str]) -> Watch {
        let pid = pid.to_string();
        let mut all = vec!["watch", pid.as_str()];
        all.extend_from_slice(args);
        let mut child = pagealloc_command(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("watch starts");
        let lines = Lines::new(child.stdout.take().unwrap());
        Watch { child, lines }
    }

    /// The next line, parsed.
    pub fn line(&mut self) -> serde_json::Value {
        match self.next_line() {
            Some(line) => line,
            None => {
                let _ = self.child.kill();
                let output = self.child.wait_with_output_stderr();
                panic!("watch ended early: {output}");
            }
        }
    }

    /// Every line left, parsed, up to the end of watch's output (each within [`LIMIT`]).
    pub fn rest(&mut self) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| self.next_line()).collect()
    }

    /// The next line within [`LIMIT`], parsed; `None` once watch's output ends.
    fn next_line(&mut self) -> Option<serde_json::Value> {
        match self.lines.next(LIMIT) {
            Ok(line) => line.as_deref().map(parse_line),
            Err(silent) => {
                let _ = self.child.kill();
                panic!("watch neither wrote nor ended: {silent}");
            }
        }
    }

    /// The next line of a sample begun after `after` that satisfies `wanted` (within
    /// [`LIMIT`]).
    pub fn line_after(
        &mut self,
        after: std::time::SystemTime,
        wanted: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let line = self.line();
            if started(&line) >= after && wanted(&line) {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such line within {LIMIT:?}; the last: {line}"
            );
        }
    }
}

/// A line of watch's NDJSON.
fn parse_line(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// What a child wrote to its stderr, once it has exited.
pub trait StderrOf {
    fn wait_with_output_stderr(&mut self) -> String;
}

impl StderrOf for Child {
    fn wait_with_output_stderr(&mut self) -> String {
        use std::io::Read;
        let _ = self.wait();
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// When a watch line's sample began.
pub fn started(line: &serde_json::Value) -> std::time::SystemTime {
    humantime::parse_rfc3339(line["time"].as_str().expect("time")).expect("RFC 3339 time")
}

/// A directory of its own under the temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("pagealloc-test-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fixture under a name of its own (a symlink in a fresh directory): its processes' comm is
/// the name they were exec'd by, unlike any other process's, for `--comm`. The directory, the
/// name and the path to exec.
pub fn fixture_named(fixture: &str, prefix: &str) -> (TempDir, String, PathBuf) {
    let dir = TempDir::new("comm");
    let name = format!("{prefix}{}", std::process::id());
    let exe = dir.0.join(&name);
    std::os::unix::fs::symlink(fixture, &exe).expect("a symlink to the fixture");
    (dir, name, exe)
}

/// `pagealloc serve` run by the tests: started on a free port, scraped, its stderr collected.
pub mod serve {
    use std::io::{BufRead, BufReader};
    use std::net::SocketAddr;
    use std::process::{Child, Stdio};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use pagealloc_testkit::exposition::{self, Series};
    use pagealloc_testkit::http::get;

    use crate::pagealloc_command;

    /// How long any one awaited condition may take (never reached when it works).
    pub const WAIT: Duration = Duration::from_secs(60);

    /// Polls `check` until it gives a value, for at most `limit`; fails with `what` and the last
    /// reason it gave otherwise. The pause between polls only paces them.
    pub fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(20);
        loop {
            match check() {
                Ok(value) => return value,
                Err(why) if Instant::now() >= deadline => {
                    panic!("{what}: not within {limit:?}; the last look: {why}")
                }
                Err(_) => {}
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    pub fn free_port() -> u16 {
        pagealloc_testkit::free_port()
            .expect("an ephemeral port")
            .port()
    }

    pub struct Metrics {
        pub text: String,
        pub series: Vec<Series>,
    }

    impl Metrics {
        pub fn parse(text: String) -> Metrics {
            let series = exposition::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            Metrics { text, series }
        }

        pub fn all<'a>(&'a self, name: &'a str, labels: &'a [(&str, &str)]) -> Vec<&'a Series> {
            let matches = |s: &&Series| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|have| have == v))
            };
            self.series.iter().filter(matches).collect()
        }

        /// The one sample of `name` with these labels (among others), if there is one.
        pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
            let found = self.all(name, labels);
            assert!(
                found.len() <= 1,
                "{} samples of {name} {labels:?}: {found:?}",
                found.len()
            );
            found.first().map(|s| s.value)
        }

        pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            self.get(name, labels)
                .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
        }

        /// A byte or count figure: a whole number.
        pub fn int(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
            let value = self.value(name, labels);
            assert!(
                value >= 0.0 && value.fract() == 0.0,
                "{name} {labels:?} = {value}"
            );
            value as u64
        }
    }

    /// A child process, killed and reaped on drop (a failing test leaves nothing running).
    pub struct Running(pub Child);

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// What a child writes to stderr, collected by a thread as it comes; true once it closed it.
    pub type Collected = Arc<Mutex<(String, bool)>>;

    pub fn collect_stderr(child: &mut Child) -> Collected {
        let collected: Collected = Arc::default();
        let stderr = BufReader::new(child.stderr.take().expect("piped stderr"));
        let shared = collected.clone();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut text = shared.lock().unwrap();
                text.0.push_str(&line);
                text.0.push('\n');
            }
            shared.lock().unwrap().1 = true;
        });
        collected
    }

    /// All a child wrote to stderr, once it has exited (within [`WAIT`]).
    pub fn all_of(collected: &Collected) -> String {
        poll("the end of stderr", WAIT, || {
            let (text, ended) = &*collected.lock().unwrap();
            match ended {
                true => Ok(text.clone()),
                false => Err(text.clone()),
            }
        })
    }

    /// `pagealloc serve ARGS --listen 127.0.0.1:PORT`, listening.
    pub struct Serve {
        pub child: Running,
        pub address: SocketAddr,
        pub stderr: Collected,
    }

    impl Serve {
        /// Starts serve on a free port and waits until it listens; another port is tried if the
        /// one chosen was taken meanwhile.
        pub fn start(args: &[&str]) -> Serve {
            for attempt in 1.. {
                let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                let listen = address.to_string();
                let mut all = vec!["serve"];
                all.extend_from_slice(args);
                all.extend_from_slice(&["--listen", &listen]);
                let (child, stderr) = spawn_serve(&all);
                let mut serve = Serve {
                    child,
                    address,
                    stderr,
                };
                let listening = format!("serving metrics on http://{address}/metrics");
                let exited = poll("pagealloc serve listening", WAIT, || {
                    if serve.stderr().contains(&listening) {
                        return Ok(None);
                    }
                    match serve.child.0.try_wait().expect("wait on serve") {
                        Some(status) => Ok(Some(status)),
                        None => Err(serve.stderr()),
                    }
                });
                let Some(status) = exited else {
                    return serve;
                };
                let stderr = all_of(&serve.stderr);
                assert!(
                    stderr.contains("--listen") && attempt < 3,
                    "pagealloc {all:?} ended ({status}): {stderr}"
                );
            }
            unreachable!()
        }

        pub fn stderr(&self) -> String {
            self.stderr.lock().unwrap().0.clone()
        }

        pub fn running(&mut self) -> bool {
            self.child.0.try_wait().expect("wait on serve").is_none()
        }

        /// `/metrics` in Prometheus text, parsed.
        pub fn metrics(&self) -> Metrics {
            let response = get(self.address, "/metrics", &[])
                .unwrap_or_else(|e| panic!("scraping {}: {e}", self.address));
            assert_eq!(response.status, 200, "{response:?}");
            Metrics::parse(response.body)
        }

        /// Scrapes until `ready` accepts what is served (within [`WAIT`]); that scrape.
        pub fn metrics_when(
            &self,
            what: &str,
            ready: impl Fn(&Metrics) -> Result<(), String>,
        ) -> Metrics {
            poll(what, WAIT, || {
                let metrics = self.metrics();
                ready(&metrics).map(|()| metrics)
            })
        }
    }

    /// `pagealloc ARGS` started, its stderr collected as it comes.
    pub fn spawn_serve(args: &[&str]) -> (Running, Collected) {
        let mut child = pagealloc_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pagealloc serve starts");
        let stderr = collect_stderr(&mut child);
        (Running(child), stderr)
    }
}
