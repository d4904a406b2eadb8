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
use crate::web::{self, api::ApiError, api::Query};

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
        .merge(web_routes())
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: pagealloc serves its web view at /, /api/..., /metrics, /healthz \
                 and /debug/pprof/heap?pid=PID\n",
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

/// `?pid=PID`: that process's allocation sites as a gzipped pprof heap profile, from its last
/// sample (never a walk). The pid may be left out when one process is followed.
async fn heap_profile(
    State(app): State<App>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let (report, pid) = {
        let published = app.published.read().unwrap_or_else(|e| e.into_inner());
        let pid = match chosen_pid(&published, &Query::parse(query.as_deref())) {
            Ok(pid) => pid,
            Err(refusal) => return refusal.into_response(),
        };
        (published.reports[&pid].clone(), pid)
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

fn not_found(why: String) -> Response {
    (StatusCode::NOT_FOUND, why + "\n").into_response()
}

/// The process a request names with `pid=`, which must have a report; the pid may be left
/// out when one process is followed. Else the status and the words that say what is wrong.
fn chosen_pid(
    published: &Published,
    query: &Query,
) -> std::result::Result<i32, (StatusCode, String)> {
    let refuse = |status, why: &str| Err((status, format!("{why}\n")));
    let pid = match query.number("pid") {
        Ok(Some(pid)) => i32::try_from(pid).unwrap_or(-1),
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "pid=PID: a process ID"),
        Ok(None) if published.reports.len() == 1 => *published.reports.keys().next().unwrap_or(&0),
        Ok(None) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "pid=PID: which process (more than one is followed)",
            );
        }
    };
    if !published.reports.contains_key(&pid) {
        return refuse(
            StatusCode::NOT_FOUND,
            &format!("process {pid} is not followed (or not sampled yet)"),
        );
    }
    Ok(pid)
}

/// The web view's page, its files and its JSON, compressed for clients that take gzip.
fn web_routes() -> Router<App> {
    let document = |kind: Document| {
        get(
            move |State(app): State<App>,
                  axum::extract::RawQuery(query): axum::extract::RawQuery| {
                answer(app, kind, query)
            },
        )
    };
    let asset = |content_type: &'static str, body: fn() -> String| {
        get(move || async move { ui_answer(content_type, body()) })
    };
    Router::new()
        .route("/", asset("text/html; charset=utf-8", web::served_page))
        .route(
            "/app.js",
            asset("text/javascript; charset=utf-8", || web::SCRIPT.to_string()),
        )
        .route(
            "/app.css",
            asset("text/css; charset=utf-8", || web::STYLE.to_string()),
        )
        .route("/api/processes", document(Document::Processes))
        .route("/api/process", document(Document::Process))
        .route("/api/heap-map", document(Document::HeapMap))
        .route("/api/heap-map/at", document(Document::HeapAt))
        .route("/api/pages", document(Document::Pages))
        .route("/api/history", document(Document::History))
        .route("/api/sites", document(Document::Sites))
        .layer(tower_http::compression::CompressionLayer::new())
}

/// The JSON documents of the web view (see [`web::api`]).
#[derive(Clone, Copy)]
enum Document {
    Processes,
    Process,
    HeapMap,
    HeapAt,
    Pages,
    History,
    Sites,
}

/// A web view answer: what it is, under the page's security policy, never cached.
fn ui_answer(content_type: &'static str, body: String) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (
            header::CONTENT_SECURITY_POLICY,
            web::CONTENT_SECURITY_POLICY,
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    (headers, body).into_response()
}

async fn answer(app: App, kind: Document, query: Option<String>) -> Response {
    const JSON: &str = "application/json";
    let query_text = query.unwrap_or_default();
    let query = Query::parse(Some(&query_text));
    // What the answer needs, copied out under the lock; made after it is let go.
    let (report, view_sample, timeline, interval) = {
        let published = app.published.read().unwrap_or_else(|e| e.into_inner());
        if let Document::Processes = kind {
            let body = web::api::processes(
                published.reports.values(),
                published.interval,
                published.generation,
            );
            return ui_answer(JSON, body);
        }
        let pid = match chosen_pid(&published, &query) {
            Ok(pid) => pid,
            Err(refusal) => return refusal.into_response(),
        };
        let view = published.views.get(&pid);
        let Some(sample) = view.and_then(|v| v.sample.clone()) else {
            return not_found(format!("process {pid} is not sampled yet"));
        };
        let timeline = matches!(kind, Document::History)
            .then(|| view.map(|v| v.timeline.clone()).unwrap_or_default());
        (
            published.reports[&pid].clone(),
            sample,
            timeline,
            published.interval,
        )
    };
    let made = tokio::task::spawn_blocking(move || {
        let query = Query::parse(Some(&query_text));
        match kind {
            Document::Processes => unreachable!("answered above"),
            Document::Process => Ok(web::api::process(&report, &view_sample)),
            Document::HeapMap => web::api::heap_map(&view_sample, &query),
            Document::HeapAt => web::api::heap_at(&view_sample, &query),
            Document::Pages => web::api::pages(&view_sample, &query),
            Document::History => Ok(web::api::history(&timeline.unwrap_or_default(), interval)),
            Document::Sites => web::api::sites(&view_sample, &query),
        }
    })
    .await;
    match made {
        Ok(Ok(body)) => ui_answer(JSON, body),
        Ok(Err(ApiError::BadRequest(why))) => (StatusCode::BAD_REQUEST, why + "\n").into_response(),
        Ok(Err(ApiError::NotFound(why))) => not_found(why),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Alive while the sampling thread runs: metrics that no longer change are not health.
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
