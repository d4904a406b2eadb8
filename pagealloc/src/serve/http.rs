//! The HTTP side of `serve`: `/metrics` (Prometheus text, or OpenMetrics when the scraper asks
//! for it), `/healthz`, and clear answers to everything else. Connections are bounded in number,
//! and a client that is slow to send its request is cut off, so that neither a crowd nor a
//! trickle of bytes can stop the scrapes.
use std::sync::{Arc, RwLock};
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
    registry: prometheus::Registry,
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
        .route("/", get(index))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: pagealloc serves /metrics and /healthz\n",
            )
        })
        .with_state(App {
            published,
            per_arena,
            registry,
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
    let mut families: Vec<MetricFamily> = {
        let published = app.published.read().unwrap_or_else(|e| e.into_inner());
        let reports: Vec<_> = published.reports.values().collect();
        metrics::families(&reports, &published.agent, app.per_arena)
    };
    families.extend(app.registry.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (body, content_type) = if openmetrics::wants_openmetrics(accept) {
        (
            openmetrics::openmetrics_text(&families),
            openmetrics::OPENMETRICS_TYPE.to_string(),
        )
    } else {
        openmetrics::prometheus_text(&families)
    };
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
