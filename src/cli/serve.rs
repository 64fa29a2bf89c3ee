//! `berth serve`: runs the proxy until SIGTERM or ctrl-c (the service itself is `crate::run`, in app.rs).

use std::path::Path;
use std::process::ExitCode;

pub fn run(config: &Path) -> ExitCode {
    // Logging starts first so that nothing `serve` reports goes around it.
    let logs = super::init_logging();
    let config = match super::load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let runtime = match super::runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let code = match runtime.block_on(crate::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    };
    // Connections are closed and usage is written: a blocking task still running (a DNS
    // lookup of an unreachable upstream, a read of a cache file) must not hold the exit,
    // which dropping the runtime would wait for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    logs.flush();
    code
}
