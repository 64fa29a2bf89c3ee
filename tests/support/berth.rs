//! The real berth binary as a child process, configured from a YAML string.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use super::{tempdir, wait_for_port, wait_until};

const START_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Berth {
    pub port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
    exit_status: Option<ExitStatus>,
    _dir: tempfile::TempDir,
}

impl Berth {
    /// Reads the port from `server.listen` (e.g. `127.0.0.1:PORT`) in the YAML.
    pub fn start(config_yaml: &str, env: &[(&str, &str)]) -> Berth {
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(config_yaml).expect("berth config is not YAML");
        let listen = doc["server"]["listen"]
            .as_str()
            .expect("berth config needs server.listen; or use Berth::start_on");
        let port = listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in server.listen {listen:?}"));
        Self::start_on(port, config_yaml, env)
    }

    /// `port` must be the one the YAML tells berth to listen on.
    pub fn start_on(port: u16, config_yaml: &str, env: &[(&str, &str)]) -> Berth {
        let dir = tempdir();
        let config_path = dir.path().join("berth.yaml");
        std::fs::write(&config_path, config_yaml).expect("write berth config");
        let mut b = Berth {
            port,
            config_path,
            log_path: dir.path().join("berth.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
            exit_status: None,
            _dir: dir,
        };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open berth log");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn berth");
        self.child = Some(child);
        self.exit_status = None;
        let port = self.port;
        let mut exited = None;
        let up = wait_until(START_TIMEOUT, || {
            if let Some(s) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                exited = Some(s);
                return true;
            }
            wait_for_port(port, Duration::ZERO)
        });
        if let Some(s) = exited {
            panic!("berth exited during startup ({s}); log:\n{}", self.logs());
        }
        if !up {
            panic!(
                "berth not accepting on 127.0.0.1:{port} within {START_TIMEOUT:?}; log:\n{}",
                self.logs()
            );
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("berth not running").id()
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    pub fn sighup(&self) {
        self.signal("HUP");
    }

    pub fn kill9(&self) {
        self.signal("KILL");
    }

    // The crate forbids unsafe, so signals go through kill(1) rather than libc.
    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid());
    }

    /// The exit status if berth exits within `timeout` (or already has).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let Some(child) = self.child.as_mut() else {
            return self.exit_status;
        };
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().expect("try_wait berth");
            status.is_some()
        });
        if status.is_some() {
            self.child = None;
            self.exit_status = status;
        }
        status
    }

    /// Graceful stop (SIGTERM, then SIGKILL after 10 s), then the same config again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.sigterm();
        if self.wait_exit(Duration::from_secs(10)).is_none() {
            self.kill_now();
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// What a finished `berth` CLI run printed.
pub struct CliRun {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the berth CLI to completion with a bound on its run time. The pipes are drained by
/// threads while it runs, so a chatty command cannot block on a full pipe.
pub fn run_cli(
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
    timeout: Duration,
) -> CliRun {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .envs(env.iter().copied())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input.as_bytes()).expect("write stdin");
    }
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout pipe")));
    let err = drain(Box::new(child.stderr.take().expect("stderr pipe")));
    let mut status = None;
    let exited = wait_until(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("berth {args:?} did not exit within {timeout:?}");
    }
    CliRun {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
