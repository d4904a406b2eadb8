//! `pagealloc serve`: Prometheus metrics for one or many processes. A sampling thread follows
//! each selected process (walk mode unless `--live`) within a CPU budget and publishes a small
//! report per sample; the HTTP server answers `/metrics` from those reports alone, so a scrape
//! costs the same whatever the heaps.
mod attach;
mod http;
pub mod sampler;
pub mod select;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock, mpsc};
use std::time::Duration;

use crate::debuginfo::DebugOptions;
use crate::error::{Error, Result};
use crate::live::LiveOptions;
use sampler::Published;
pub use select::Selection;

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub selection: Selection,
    pub listen: SocketAddr,
    pub interval: Duration,
    /// Live mode's options, when asked for (`--live`); walk mode otherwise.
    pub live: Option<LiveOptions>,
    pub max_rate: u64,
    /// The per-arena family too.
    pub per_arena: bool,
    /// The CPU the agent allows itself, in cores.
    pub cpu_budget: f64,
    pub debug: DebugOptions,
}

pub fn run(options: ServeOptions) -> Result<()> {
    options.selection.check()?;
    let listener = std::net::TcpListener::bind(options.listen).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::AddrInUse {
            " (another exporter listens there: choose another address with --listen)"
        } else {
            ""
        };
        Error::io(format!("listening on {}{hint}", options.listen), e)
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::io("preparing the listening socket", e))?;
    let published = Arc::new(RwLock::new(Published {
        agent: crate::metrics::AgentFigures {
            cpu_budget: options.cpu_budget,
            ..Default::default()
        },
        sampling: true,
        interval: match options.live {
            Some(_) => options.interval.min(sampler::LIVE_INTERVAL),
            None => options.interval,
        },
        ..Default::default()
    }));
    let (stop, wakes) = mpsc::channel();
    let per_arena = options.per_arena;
    let sampler = {
        let (published, stop) = (published.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || sampler::run(options, published, (stop, wakes)))
            .map_err(|e| Error::io("starting the sampling thread", e))?
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the HTTP server", e))?;
    let served = runtime.block_on(http::serve(listener, published, per_arena));
    let _ = stop.send(attach::Wake::Stop);
    let _ = sampler.join();
    served
}
