//! `cargo xtask bench serve`: how fast `pagealloc serve` answers `/metrics` while it follows
//! ten processes, on loopback. Ten quiet processes (`xtask/bench/held.c`: a heap of thousands of
//! chunks of mixed sizes, a third of them freed, on four threads with their own arenas; then no
//! allocation at all) and `pagealloc serve --comm ... --interval 1s` are started; once /metrics
//! shows all ten, the agent's idle CPU is read over a quiet spell, then each setup (clients ×
//! keep-alive or not × format) makes a fixed number of scrapes, or runs for a fixed time,
//! whichever comes first. Every scrape's latency is timed from the request's first byte sent to
//! the response's last byte read; every response must be a 200, complete (its length as
//! announced, a final newline, the OpenMetrics `# EOF`) and name every process. Side by side:
//! median, p90, p99 and max latency, scrapes/s, the exposition's size, the agent's CPU per scrape
//! (its `/proc/PID/stat` utime + stime over the setup, less its samples at their idle cost), its
//! RSS, and whether sampling kept up; and the floor: the same bytes from the bench's own server
//! (what the clients and loopback cost). Every process started ends with the bench, on error too.
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use pagealloc_testkit::http::{self, Connection, Response};
use pagealloc_testkit::lines::Lines;
use pagealloc_testkit::{exposition, free_port};

use crate::{cargo, compile_workload, load_average, mib, run};

/// Chunks each thread of a workload allocates (a third are freed).
const CHUNKS_PER_THREAD: u32 = 2000;
/// Threads of a workload besides its main thread (each with its own arena).
const THREADS: u32 = 3;
/// `--interval` of the agent.
const INTERVAL_SECONDS: u64 = 1;
/// How long the agent may take to show every process.
const FOLLOW_TIMEOUT: Duration = Duration::from_secs(60);
/// The quiet spell over which the agent's idle CPU is read (its CPU time is counted in clock
/// ticks of 10 ms: a long spell for a small rate).
const IDLE: Duration = Duration::from_secs(10);

/// What a scraper asks for: Prometheus text 0.0.4, or OpenMetrics (what Prometheus itself asks
/// for first).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    OpenMetrics,
}

impl Format {
    fn accept(self) -> &'static str {
        match self {
            Format::Text => "text/plain;version=0.0.4",
            // Prometheus's own scrape Accept header.
            Format::OpenMetrics => {
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            }
        }
    }

    fn label(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::OpenMetrics => "openmetrics",
        }
    }
}

/// One line of the table: who scrapes, how.
#[derive(Clone, Copy)]
struct Setup {
    clients: usize,
    keep_alive: bool,
    format: Format,
}

const SETUPS: [Setup; 5] = [
    Setup {
        clients: 1,
        keep_alive: true,
        format: Format::Text,
    },
    Setup {
        clients: 8,
        keep_alive: true,
        format: Format::Text,
    },
    Setup {
        clients: 1,
        keep_alive: true,
        format: Format::OpenMetrics,
    },
    Setup {
        clients: 8,
        keep_alive: true,
        format: Format::OpenMetrics,
    },
    Setup {
        clients: 1,
        keep_alive: false,
        format: Format::Text,
    },
];

/// Every process the bench started; each is killed (and waited for) when this is dropped, so an
/// error anywhere leaves nothing behind.
#[derive(Default)]
struct Started {
    workloads: Vec<(Child, Option<ChildStdin>)>,
    agent: Option<Child>,
}

impl Drop for Started {
    fn drop(&mut self) {
        let children = self
            .agent
            .iter_mut()
            .chain(self.workloads.iter_mut().map(|(child, _)| child));
        for child in children {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// What one setup measured.
struct Figures {
    setup: Setup,
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// Smallest and largest exposition, bytes.
    body: (usize, usize),
    /// What the agent did meanwhile; `None` for the floor (the bench's own server).
    agent: Option<Agent>,
}

/// The agent over one setup.
struct Agent {
    /// CPU seconds.
    cpu: f64,
    rss: u64,
    /// What the agent said of its sampling before and after the setup.
    before: Sampling,
    after: Sampling,
}

pub fn serve(root: &Path, processes: usize, scrapes: usize, max_time: Duration) -> Result<()> {
    run(cargo().args(["build", "--release", "--package", "pagealloc"]))?;
    let program = root.join("target/bench/held");
    compile_workload("-O2", &root.join("xtask/bench/held.c"), &program)?;
    // A name of this run alone: nothing else matches it, not even an earlier run's leftovers.
    let comm = format!("srvbench{}", std::process::id());
    let mut started = Started::default();
    for _ in 0..processes {
        let mut child = Command::new(&program)
            .args([
                comm.as_str(),
                &CHUNKS_PER_THREAD.to_string(),
                &THREADS.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a workload")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        started.workloads.push((child, stdin));
        let mut line = String::new();
        BufReader::new(stdout.context("the workload's stdout")?).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("a workload did not start: {line:?}");
        }
    }
    let pids: Vec<u32> = started.workloads.iter().map(|(c, _)| c.id()).collect();
    let address = free_port()?;
    let mut agent = Command::new(root.join("target/release/pagealloc"))
        .args([
            "serve",
            "--comm",
            &format!("^{comm}$"),
            "--interval",
            &format!("{INTERVAL_SECONDS}s"),
        ])
        .arg("--listen")
        .arg(address.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting pagealloc serve")?;
    let mut said = Lines::new(agent.stderr.take().context("the agent's stderr")?);
    let agent_pid = agent.id();
    started.agent = Some(agent);
    let mut agent_failed = |started: &mut Started, what: String| -> anyhow::Error {
        let status = started
            .agent
            .as_mut()
            .and_then(|a| a.try_wait().ok().flatten());
        let status = status.map_or(String::new(), |s| format!(" (the agent ended: {s})"));
        let said = said.rest().join("\n  ");
        anyhow::anyhow!("{what}{status}; pagealloc serve said:\n  {said}")
    };

    // Bounded: every process followed and sampled.
    let deadline = Instant::now() + FOLLOW_TIMEOUT;
    let want = format!("\npagealloc_processes {processes}\n");
    loop {
        if let Some(agent) = started.agent.as_mut()
            && agent.try_wait()?.is_some()
        {
            return Err(agent_failed(&mut started, "pagealloc serve ended".into()));
        }
        if let Ok(response) = scrape_once(address, Format::Text)
            && response.status == 200
            && response.body.contains(&want)
        {
            check(&response, Format::Text, &pids)?;
            break;
        }
        if Instant::now() > deadline {
            let what =
                format!("/metrics did not show {processes} processes within {FOLLOW_TIMEOUT:?}");
            return Err(agent_failed(&mut started, what));
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The agent alone: sampling every process each second, nobody scraping.
    let (cpu_before, before, start) = (
        cpu_seconds(agent_pid)?,
        sampling(address, &pids)?,
        Instant::now(),
    );
    std::thread::sleep(IDLE);
    let (cpu_after, after) = (cpu_seconds(agent_pid)?, sampling(address, &pids)?);
    let idle = Idle {
        wall: start.elapsed().as_secs_f64(),
        cpu: cpu_after - cpu_before,
        samples: after.samples - before.samples,
        rss: rss(agent_pid)?,
    };

    let mut all = Vec::new();
    for setup in SETUPS {
        let figures = measure(setup, address, agent_pid, &pids, scrapes, max_time);
        let figures = figures.map_err(|e| agent_failed(&mut started, format!("{e:#}")))?;
        all.push(figures);
    }
    let peak_rss = status_kib(agent_pid, "VmHWM:")? * 1024;
    // The floor serves a copy of the agent's exposition.
    let exposition = scrape_once(address, Format::Text)?;
    check(&exposition, Format::Text, &pids)?;
    all.extend(floor(exposition.body, &pids, scrapes, max_time)?);

    // The agent ends on SIGTERM, cleanly; then the workloads, as their stdin closes.
    let mut agent = started.agent.take().context("the agent")?;
    // SAFETY: a signal to our own child, which has not been waited for.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let ended = wait_for(&mut agent, Duration::from_secs(10));
    started.agent = Some(agent);
    let ended = ended?;
    for (_, stdin) in &mut started.workloads {
        drop(stdin.take());
    }
    for (child, _) in &mut started.workloads {
        wait_for(child, Duration::from_secs(10))?;
    }
    if !ended.success() {
        return Err(agent_failed(
            &mut started,
            format!("pagealloc serve ended with {ended} on SIGTERM"),
        ));
    }
    report(&comm, address, processes, scrapes, max_time, &idle, &all);
    println!(
        "agent peak RSS {:.1} MiB; every response 200, complete, naming all {processes} \
         processes; the agent ended cleanly on SIGTERM",
        mib(peak_rss)
    );
    Ok(())
}

/// The agent with nobody scraping.
struct Idle {
    wall: f64,
    /// CPU seconds over `wall`.
    cpu: f64,
    samples: f64,
    rss: u64,
}

impl Idle {
    /// The agent's CPU per sample (its discovery of processes included).
    fn per_sample(&self) -> f64 {
        self.cpu / self.samples.max(1.0)
    }
}

fn report(
    comm: &str,
    address: SocketAddr,
    processes: usize,
    scrapes: usize,
    max_time: Duration,
    idle: &Idle,
    all: &[Figures],
) {
    println!(
        "\nbench serve: pagealloc serve --comm '^{comm}$' --interval {INTERVAL_SECONDS}s (walk mode, \
         default CPU budget) on {address}, following {processes} quiet processes ({} threads, \
         {} chunks each, a third freed); load average {}",
        THREADS + 1,
        (THREADS + 1) * CHUNKS_PER_THREAD,
        load_average()
    );
    println!(
        "agent idle over {:.1} s: {} CPU/s ({:.1}% of a core), {:.1} samples/s, {} CPU per \
         sample; RSS {:.1} MiB",
        idle.wall,
        time(idle.cpu / idle.wall),
        idle.cpu / idle.wall * 100.0,
        idle.samples / idle.wall,
        time(idle.per_sample()),
        mib(idle.rss)
    );
    println!(
        "each setup: {scrapes} scrapes or {} s, whichever first; latency: from the request sent to \
         the last byte read\nfloor: the same bytes from the bench's own server; samples: taken \
         during the setup; oldest age: of the\noldest report at the setup's end; CPU/scrape: the \
         agent's utime+stime (/proc/PID/stat, 10 ms ticks)\nover the setup, less its samples at \
         the idle cost per sample, per scrape",
        max_time.as_secs()
    );
    println!(
        "{:<9} {:>7} {:<10} {:<11} {:>7} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>10} \
         {:>9} {:>9} {:>9} {:>10}",
        "server",
        "clients",
        "connection",
        "format",
        "scrapes",
        "time",
        "scrapes/s",
        "median",
        "p90",
        "p99",
        "max",
        "body bytes",
        "CPU/scrape",
        "agent CPU",
        "agent RSS",
        "samples",
        "oldest age"
    );
    for f in all {
        let mut sorted = f.latencies.clone();
        sorted.sort();
        let elapsed = f.elapsed.as_secs_f64();
        let count = sorted.len();
        let body = if f.body.0 == f.body.1 {
            f.body.0.to_string()
        } else {
            format!("{}-{}", f.body.0, f.body.1)
        };
        let agent = match &f.agent {
            Some(a) => {
                let samples = a.after.samples - a.before.samples;
                let per_scrape = (a.cpu - samples * idle.per_sample()).max(0.0) / count as f64;
                [
                    time(per_scrape),
                    format!("{:.0}%", a.cpu / elapsed * 100.0),
                    format!("{:.1} MiB", mib(a.rss)),
                    format!("{samples:.0}"),
                    format!("{:.1} s", a.after.oldest),
                ]
            }
            None => [
                "-".to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        };
        println!(
            "{:<9} {:>7} {:<10} {:<11} {:>7} {:>4.1} s {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>11} \
             {:>10} {:>9} {:>9} {:>9} {:>10}",
            if f.agent.is_some() {
                "pagealloc"
            } else {
                "floor"
            },
            f.setup.clients,
            if f.setup.keep_alive {
                "keep-alive"
            } else {
                "new"
            },
            f.setup.format.label(),
            count,
            elapsed,
            count as f64 / elapsed,
            duration(quantile(&sorted, 0.5)),
            duration(quantile(&sorted, 0.9)),
            duration(quantile(&sorted, 0.99)),
            duration(sorted[count - 1]),
            body,
            agent[0],
            agent[1],
            agent[2],
            agent[3],
            agent[4],
        );
    }
    // Sampling must keep up while the scrapes come: say so when it fell behind.
    let agent: Vec<&Agent> = all.iter().filter_map(|f| f.agent.as_ref()).collect();
    let late = (2 * INTERVAL_SECONDS) as f64;
    let behind = agent.iter().filter(|a| a.after.oldest > late).count();
    if behind > 0 {
        let delayed: f64 = (agent.iter())
            .map(|a| a.after.delayed - a.before.delayed)
            .sum();
        println!(
            "note: sampling fell behind in {behind} of {} setups (the oldest report over {late} s \
             old at the end, up to {:.1} s; pagealloc_samples_delayed_total rose by \
             {delayed:.0}): the scrapes took the cores the samples needed",
            agent.len(),
            agent.iter().map(|a| a.after.oldest).fold(0.0, f64::max)
        );
    }
}

/// Runs one setup: `clients` threads share `scrapes` scrapes, until they are done or `max_time`
/// has passed.
fn measure(
    setup: Setup,
    address: SocketAddr,
    agent_pid: u32,
    pids: &[u32],
    scrapes: usize,
    max_time: Duration,
) -> Result<Figures> {
    let before = sampling(address, pids)?;
    let cpu_before = cpu_seconds(agent_pid)?;
    let mut figures = scrape_all(setup, address, pids, scrapes, max_time)?;
    let cpu = cpu_seconds(agent_pid)? - cpu_before;
    figures.agent = Some(Agent {
        cpu,
        rss: rss(agent_pid)?,
        before,
        after: sampling(address, pids)?,
    });
    Ok(figures)
}

/// The scrapes of one setup, from its clients at once.
fn scrape_all(
    setup: Setup,
    address: SocketAddr,
    pids: &[u32],
    scrapes: usize,
    max_time: Duration,
) -> Result<Figures> {
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let results: Vec<Result<Scraped>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..setup.clients)
            .map(|_| {
                scope.spawn(|| {
                    let scraped = client(setup, address, pids, &next, scrapes, start, max_time);
                    if scraped.is_err() {
                        // The other clients stop too: the bench fails with this error.
                        next.store(scrapes, Ordering::Relaxed);
                    }
                    scraped
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a client panicked"))
            .collect()
    });
    let elapsed = start.elapsed();
    let mut latencies = Vec::with_capacity(scrapes);
    let mut body = (usize::MAX, 0);
    for result in results {
        let scraped = result.with_context(|| {
            format!(
                "{} client(s), {}, {}",
                setup.clients,
                if setup.keep_alive {
                    "keep-alive"
                } else {
                    "a new connection per scrape"
                },
                setup.format.label()
            )
        })?;
        latencies.extend(scraped.latencies);
        body = (body.0.min(scraped.sizes.0), body.1.max(scraped.sizes.1));
    }
    if latencies.is_empty() {
        bail!("no scrape was made");
    }
    Ok(Figures {
        setup,
        latencies,
        elapsed,
        body,
        agent: None,
    })
}

/// The floor: the same exposition served by the bench itself, a thread per connection that
/// answers every request with bytes made beforehand: what the clients and loopback cost.
fn floor(body: String, pids: &[u32], scrapes: usize, max_time: Duration) -> Result<Vec<Figures>> {
    let listener = TcpListener::bind("127.0.0.1:0").context("the floor's server")?;
    let address = listener.local_addr()?;
    let response: Arc<[u8]> = [
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: \
             {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
        body.as_bytes(),
    ]
    .concat()
    .into();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let response = response.clone();
                // Ends when its client hangs up.
                std::thread::spawn(move || answer(stream, &response));
            }
        })
    };
    let mut all = Vec::new();
    for clients in [1, 8] {
        let setup = Setup {
            clients,
            keep_alive: true,
            format: Format::Text,
        };
        match scrape_all(setup, address, pids, scrapes, max_time) {
            Ok(figures) => all.push(figures),
            Err(e) => {
                all.clear();
                stop.store(true, Ordering::Relaxed);
                let _ = TcpStream::connect(address);
                let _ = server.join();
                return Err(e.context("the floor"));
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = TcpStream::connect(address);
    let _ = server.join();
    Ok(all)
}

/// The floor's server on one connection: each request's headers read, `response` written.
fn answer(stream: TcpStream, response: &[u8]) {
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        // The request's head, up to its empty line.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        if writer.write_all(response).is_err() {
            return;
        }
    }
}

/// What one client did: each scrape's latency, and the smallest and largest exposition.
struct Scraped {
    latencies: Vec<Duration>,
    sizes: (usize, usize),
}

/// One client: scrapes while there are scrapes left and time.
fn client(
    setup: Setup,
    address: SocketAddr,
    pids: &[u32],
    next: &AtomicUsize,
    scrapes: usize,
    start: Instant,
    max_time: Duration,
) -> Result<Scraped> {
    let mut latencies = Vec::with_capacity(scrapes / setup.clients + 1);
    let mut sizes = (usize::MAX, 0);
    let mut connection: Option<Connection> = None;
    let request = scrape_request(address, setup.format);
    while next.fetch_add(1, Ordering::Relaxed) < scrapes && start.elapsed() < max_time {
        let began = Instant::now();
        let response = match connection.as_mut() {
            Some(open) if setup.keep_alive => open.send(&request),
            _ => Connection::open(address).and_then(|mut fresh| {
                let response = fresh.send(&request);
                connection = Some(fresh);
                response
            }),
        }
        .map_err(|e| anyhow!(e))?;
        latencies.push(response.done - began);
        check(&response, setup.format, pids)?;
        if response.closed {
            connection = None;
        }
        if !setup.keep_alive {
            connection = None;
        }
        sizes = (
            sizes.0.min(response.body.len()),
            sizes.1.max(response.body.len()),
        );
    }
    Ok(Scraped { latencies, sizes })
}

/// A whole, correct answer: 200, the body complete, every process in it.
fn check(response: &Response, format: Format, pids: &[u32]) -> Result<()> {
    if response.status != 200 {
        bail!(
            "a scrape was answered {}: {:?}",
            response.status,
            response.body.chars().take(200).collect::<String>()
        );
    }
    if !response.body.ends_with('\n') {
        bail!(
            "a scrape's body ({} bytes) does not end with a newline: it ends {:?}",
            response.body.len(),
            tail(&response.body)
        );
    }
    if format == Format::OpenMetrics && !response.body.ends_with("\n# EOF\n") {
        bail!(
            "an OpenMetrics scrape does not end with # EOF: it ends {:?}",
            tail(&response.body)
        );
    }
    for pid in pids {
        if !response.body.contains(&format!("pid=\"{pid}\"")) {
            bail!(
                "a scrape ({} bytes) does not name process {pid}",
                response.body.len()
            );
        }
    }
    Ok(())
}

fn tail(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars[chars.len().saturating_sub(80)..].iter().collect()
}

/// GET /metrics in `format`, as the bench's clients send it.
fn scrape_request(address: SocketAddr, format: Format) -> Vec<u8> {
    let headers = [
        ("User-Agent", "xtask-bench-serve"),
        ("Accept", format.accept()),
    ];
    http::get_request(address, "/metrics", &headers)
}

fn scrape_once(address: SocketAddr, format: Format) -> Result<Response> {
    let response =
        Connection::open(address).and_then(|mut c| c.send(&scrape_request(address, format)));
    response.map_err(|e| anyhow!(e))
}

/// What the agent says of its sampling at one scrape.
#[derive(Clone, Copy)]
struct Sampling {
    /// `pagealloc_samples_total` and `pagealloc_samples_delayed_total`.
    samples: f64,
    delayed: f64,
    /// Seconds since the oldest of the processes' latest samples began.
    oldest: f64,
}

fn sampling(address: SocketAddr, pids: &[u32]) -> Result<Sampling> {
    let response = scrape_once(address, Format::Text)?;
    check(&response, Format::Text, pids)?;
    let series = exposition::parse(&response.body).map_err(|e| anyhow!(e))?;
    let values = |name: &'static str| {
        series
            .iter()
            .filter(move |s| s.name == name)
            .map(|s| s.value)
    };
    let value = |name: &'static str| -> Result<f64> {
        values(name)
            .next()
            .with_context(|| format!("no {name} in /metrics"))
    };
    let taken: Vec<f64> = values("pagealloc_sample_timestamp_seconds").collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs_f64();
    Ok(Sampling {
        samples: value("pagealloc_samples_total")?,
        delayed: value("pagealloc_samples_delayed_total")?,
        oldest: now - taken.iter().copied().fold(f64::INFINITY, f64::min),
    })
}

fn wait_for(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("process {} did not end within {timeout:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// user + system time of a process, all its threads (ended ones too), in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let close = stat.rfind(')').context("a malformed stat")?;
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // From field 3 on: utime and stime are fields 14 and 15.
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("a short stat")?.parse()?) };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

fn rss(pid: u32) -> Result<u64> {
    Ok(status_kib(pid, "VmRSS:")? * 1024)
}

/// A `kB` line of `/proc/PID/status`.
fn status_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn duration(d: Duration) -> String {
    time(d.as_secs_f64())
}

/// Seconds with a unit that keeps three digits.
fn time(seconds: f64) -> String {
    let mut out = String::new();
    let _ = if seconds >= 1.0 {
        write!(out, "{seconds:.2} s")
    } else if seconds >= 1e-3 {
        write!(out, "{:.2} ms", seconds * 1e3)
    } else {
        write!(out, "{:.0} µs", seconds * 1e6)
    };
    out
}
