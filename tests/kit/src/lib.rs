//! What the end-to-end tests (`pagealloc-tests`) and the benchmarks (`xtask`) both need, in one
//! place: an HTTP/1.1 client that checks every byte of an answer ([`http`]), the Prometheus
//! exposition parsed ([`exposition`]), a child's output read line by line with timeouts
//! ([`lines`]), busy loops competing for the CPUs ([`hogs`]), a headless Chromium driven through
//! the DevTools protocol for the web UI's tests ([`browser`]), and free loopback ports. No dependency on pagealloc
//! itself: the xtask builds before the eBPF toolchain is set up.
pub mod browser;
pub mod exposition;
pub mod hogs;
pub mod http;
pub mod lines;

use std::net::{SocketAddr, TcpListener};

/// An address on loopback that nothing listens on now (another process may still take it
/// before the caller does).
pub fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}
