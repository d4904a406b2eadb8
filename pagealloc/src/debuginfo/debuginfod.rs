//! Debug files from debuginfod servers (`GET <url>/buildid/<build-id>/debuginfo`), stored as
//! `<cache>/debuginfod/<build-id>.debug` and reused on later runs.
use std::env;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cache;

pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The servers to ask: `explicit`, else the space-separated `DEBUGINFOD_URLS`.
pub(crate) fn urls(explicit: Option<&[String]>) -> Vec<String> {
    match explicit {
        Some(urls) => urls.to_vec(),
        None => env::var("DEBUGINFOD_URLS")
            .map(|v| v.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default(),
    }
}

/// Where the download for `build_id` is kept.
pub(crate) fn stored_path(cache_dir: &Path, build_id: &str) -> PathBuf {
    cache_dir
        .join("debuginfod")
        .join(format!("{build_id}.debug"))
}

/// Why a download did not happen.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered 404: it does not know this build-id.
    NotFound { url: String },
    /// Anything else: unreachable, timed out, refused, other HTTP status, disk full.
    Failed { url: String, reason: String },
}

/// Downloads the debug file of `build_id` from the server `base` into `dest` (atomically: a
/// partial download never appears under `dest`).
pub(crate) fn download(
    base: &str,
    build_id: &str,
    dest: &Path,
    timeout: Duration,
) -> Result<(), Failure> {
    let url = format!(
        "{}/buildid/{build_id}/debuginfo",
        base.trim_end_matches('/')
    );
    log::info!("downloading debug info from {url}");
    let failed = |reason: String| Failure::Failed {
        url: url.clone(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(timeout))
        .timeout_recv_response(Some(timeout))
        .timeout_per_read(Some(timeout))
        .user_agent(concat!("pagealloc/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut response = match agent.get(&url).call() {
        Ok(response) => response,
        Err(ureq::Error::StatusCode(404)) => return Err(Failure::NotFound { url }),
        Err(ureq::Error::StatusCode(status)) => {
            return Err(failed(format!("the server answered HTTP {status}")));
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    let mut body = response.body_mut().as_reader();
    cache::write_atomically(dest, |file| io::copy(&mut body, file).map(drop))
        .map_err(|e| failed(format!("storing it in {}: {e}", dest.display())))?;
    Ok(())
}

/// Removes a stored download that turned out to be wrong.
pub(crate) fn discard(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        log::warn!("could not remove {}: {e}", path.display());
    }
}
