//! The HTTP side of `serve`: `/metrics` (Prometheus text, or OpenMetrics when the scraper asks
//! for it), `/healthz`, and clear answers to everything else. Connections are bounded in number,
//! and a client that is slow to send its request is cut off, so that neither a crowd nor a
//! trickle of bytes can stop the scrapes.
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus::proto::MetricFamily;
use tokio::sync::Semaphore;

use super::sampler::Published;
use crate::error::{Error, Result};
use crate::metrics::{self, openmetrics};

/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 64;
/// A client must send a request's headers within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's headers may take at most this many bytes (431 beyond).
const MAX_HEADER_BYTES: usize = 16 * 1024;

#[derive(Clone)]
struct App {
    published: Arc<RwLock<Published>>,
    per_arena: bool,
    /// The agent's own process metrics, read at every scrape.
    registry: prometheus::Registry,
    /// The processes' part of the exposition in each format, as made for the latest
    /// generation of the reports: scrapes between two samples only copy it.
    cache: Arc<Mutex<[Option<Made>; 2]>>,
}

/// An exposition part, and the generation of the reports it was made from.
type Made = (u64, Arc<str>);

/// The exposition formats, as indices of [`App::cache`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Prometheus = 0,
    OpenMetrics = 1,
}

impl Format {
    fn encode(self, families: &[MetricFamily]) -> String {
        match self {
            Format::Prometheus => openmetrics::prometheus_text(families),
            Format::OpenMetrics => openmetrics::openmetrics_text(families),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus::TEXT_FORMAT,
            Format::OpenMetrics => openmetrics::OPENMETRICS_TYPE,
        }
    }
}

pub async fn serve(
    listener: std::net::TcpListener,
    published: Arc<RwLock<Published>>,
    per_arena: bool,
) -> Result<()> {
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("the listening address", e))?;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| Error::io("preparing the listening socket", e))?;
    let registry = prometheus::Registry::new();
    // The agent's own process_* metrics (CPU, memory, file descriptors).
    if let Err(e) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        log::warn!("the agent's process metrics are unavailable: {e}");
    }
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(health))
        .route("/debug/pprof/heap", get(heap_profile))
        .route("/", get(index))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: pagealloc serves /metrics, /healthz and /debug/pprof/heap?pid=PID\n",
            )
        })
        .with_state(App {
            published,
            per_arena,
            registry,
            cache: Arc::default(),
        });
    eprintln!("pagealloc: serving metrics on http://{address}/metrics");
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut shutdown = std::pin::pin!(shutdown_signal());
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => return Ok(()),
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of file descriptors and the like: the next accept may succeed.
                Err(e) => {
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                log::debug!("connection: {e}");
            }
            drop(permit);
        });
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Alive while the sampling thread runs: metrics that no longer change are not health.
/// `?pid=PID`: that process's allocation sites as a gzipped pprof heap profile, from its last
/// sample (never a walk). The pid may be left out when one process is followed.
async fn heap_profile(
    State(app): State<App>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let asked = (query.as_deref().unwrap_or_default().split('&'))
        .find_map(|pair| pair.strip_prefix("pid="))
        .map(|pid| pid.parse::<i32>());
    let not_found = |why: String| (StatusCode::NOT_FOUND, why + "\n").into_response();
    let (report, pid) = {
        let published = app.published.read().unwrap_or_else(|e| e.into_inner());
        let pid = match asked {
            Some(Ok(pid)) => pid,
            Some(Err(_)) => {
                return (StatusCode::BAD_REQUEST, "pid=PID: a process ID\n").into_response();
            }
            None if published.reports.len() == 1 => *published.reports.keys().next().unwrap_or(&0),
            None => {
                return (
                    StatusCode::BAD_REQUEST,
                    "pid=PID: which process (more than one is followed)\n",
                )
                    .into_response();
            }
        };
        let Some(report) = published.reports.get(&pid) else {
            return not_found(format!(
                "process {pid} is not followed (or not sampled yet)"
            ));
        };
        (report.clone(), pid)
    };
    let Some(sites) = &report.sites else {
        let (mode, why) = report.mode.labels();
        return not_found(format!(
            "process {pid} has no allocation stacks: {mode} mode ({why}); stacks need serve \
             --live with --sample-bytes above 0"
        ));
    };
    let profile = crate::pprof::heap_profile(sites, report.taken, sites.traced(report.taken));
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream".to_string()),
        (
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"heap-{pid}.pb.gz\""),
        ),
    ];
    (headers, profile).into_response()
}

async fn health(State(app): State<App>) -> (StatusCode, &'static str) {
    if app
        .published
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .sampling
    {
        (StatusCode::OK, "ok\n")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the sampling thread stopped\n",
        )
    }
}

async fn index() -> &'static str {
    "pagealloc serve: glibc heap and page metrics of the processes it follows\n\
     /metrics  Prometheus text (OpenMetrics when asked for)\n\
     /healthz  liveness\n"
}

async fn scrape(State(app): State<App>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = if openmetrics::wants_openmetrics(accept) {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    };
    let processes = app.processes(format);
    let agent = format.encode(&app.registry.gather());
    let mut body = String::with_capacity(processes.len() + agent.len() + 8);
    body.push_str(&processes);
    body.push_str(&agent);
    if format == Format::OpenMetrics {
        body.push_str(openmetrics::OPENMETRICS_END);
    }
    ([(header::CONTENT_TYPE, format.content_type())], body).into_response()
}

impl App {
    /// The processes' part of the exposition: made again only when the reports changed.
    fn processes(&self, format: Format) -> Arc<str> {
        let published = self.published.read().unwrap_or_else(|e| e.into_inner());
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((generation, text)) = &cache[format as usize]
            && *generation == published.generation
        {
            return text.clone();
        }
        let reports: Vec<_> = published.reports.values().collect();
        let families = metrics::families(&reports, &published.agent, self.per_arena);
        let text: Arc<str> = format.encode(&families).into();
        cache[format as usize] = Some((published.generation, text.clone()));
        text
    }
}
