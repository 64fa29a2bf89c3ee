//! Shared integration-test harness: ports, temp dirs, hashing, bounded readiness waits.
// Each test binary includes this module and uses only a subset of it.
#![allow(dead_code)]

pub mod berth;
pub mod docker;
pub mod fake;
pub mod image;
pub mod postgres;
pub mod registry;
pub mod token;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago. The tiny race between dropping
/// the probe socket and the child binding it is accepted for test use.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-test-")
        .tempdir()
        .expect("create temp dir")
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// True once something accepts TCP on 127.0.0.1:`port`, false after `timeout`.
pub fn wait_for_port(port: u16, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    })
}

/// Polls `ready` every 25 ms until it holds or `timeout` passes. This is the one
/// place that sleeps: it is only used for conditions with no push notification.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
