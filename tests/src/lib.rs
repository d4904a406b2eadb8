//! Helpers for the end-to-end tests: fixture processes that report what they hold, and running
//! the `pagealloc` binary as a user would.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};

/// A running fixture program. Dropping it closes its stdin (it exits) and reaps it.
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
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
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
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
        let stdin = self.stdin.as_mut().expect("fixture stdin open");
        writeln!(stdin, "{command}").expect("fixture takes commands");
        stdin.flush().expect("fixture takes commands");
        self.read_report();
    }

    fn read_report(&mut self) {
        self.report.clear();
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).expect("fixture stdout");
            assert!(
                n > 0,
                "fixture exited before reporting: {:?}",
                self.child.try_wait()
            );
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
