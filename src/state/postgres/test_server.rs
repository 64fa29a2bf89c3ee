//! A real PostgreSQL server for tests: Debian's `postgresql` binaries, a throwaway cluster in a
//! temp directory, listening on 127.0.0.1 and a free port with a password, gone when dropped
//! or when the test process ends.
//!
//! One file for the library's unit tests (`state::postgres`) and the integration tests'
//! harness (`tests/support/postgres.rs` includes it with `#[path]`), so it names nothing of
//! either crate.

// Each user of the file (the library's tests, every integration test binary) uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The superuser the cluster is created with; its password is in `url()`.
pub const USER: &str = "berth";

/// The watchdog the cluster lives under, from before `initdb` to the end. Its stdin is a
/// pipe from the test process, so it reads end-of-file when the test drops the server or
/// exits in any way (a panic, an abort, a SIGKILL): then it stops the server and removes the
/// cluster, and neither a server a `static` holds nor one whose test was killed is left
/// behind. Lines `start PORT`, `restart PORT` and `stop` do that to the server (`$@`, its
/// command line less the port) and are answered when done.
const WATCHDOG: &str = r#"
root=$1; shift
pid=
while read -r cmd port; do
  case "$cmd" in
    start|restart|stop)
      if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null; wait "$pid"; pid=; fi ;;
  esac
  case "$cmd" in
    start|restart)
      "$@" -p "$port" >>"$root/postgres.log" 2>&1 &
      pid=$! ;;
  esac
  echo "$cmd"
done
if [ -n "$pid" ]; then kill -INT "$pid" 2>/dev/null; wait "$pid"; fi
rm -rf "$root"
"#;

/// A running server. `Drop` stops it and removes its files.
pub struct Postgres {
    port: u16,
    password: String,
    root: PathBuf,
    bin: PathBuf,
    watchdog: Mutex<Option<Watchdog>>,
}

struct Watchdog {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("port", &self.port)
            .field("root", &self.root)
            .finish()
    }
}

impl Postgres {
    /// Creates a cluster and starts it; panics (with the server's log) if it does not come up.
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let root = tempfile::Builder::new()
            .prefix("berth-pg-")
            .tempdir()
            .expect("create a temp dir for PostgreSQL")
            .keep();
        let user = ServerUser::find();
        let mut server = Postgres {
            port: 0,
            password: format!("pg-canary-{}", random_hex()),
            root: root.clone(),
            bin: bin.clone(),
            watchdog: Mutex::new(None),
        };
        // First the watchdog: from here on, however the test ends, the directory goes.
        server.spawn_watchdog(&user);
        std::fs::create_dir(root.join("sock")).expect("create the socket dir");
        let pwfile = root.join("pw");
        std::fs::write(&pwfile, format!("{}\n", server.password)).expect("write the password file");
        // Only the server's user (and root) may look inside: the password file is there.
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod the cluster's directory");
        user.own(&root);
        user.own(&root.join("sock"));
        user.own(&pwfile);
        let out = user
            .command(&bin.join("initdb"))
            .current_dir(&root)
            .arg("-D")
            .arg(root.join("data"))
            .args(["-U", USER, "-E", "UTF8", "--locale=C", "--no-sync"])
            // The tests connect over TCP with the password (so a URL carrying one is what
            // they exercise); the harness itself uses the socket, which only it can reach.
            .args(["--auth-host=scram-sha-256", "--auth-local=trust"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb (apt-get install postgresql)");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&pwfile);
        // free_port() races with other tests binding ports; a lost race is a bind failure in
        // the log and is worth another port.
        for attempt in 1..=3 {
            server.port = free_port();
            server.tell(&format!("start {}", server.port));
            match server.wait_ready() {
                Ok(()) => {
                    server.psql("postgres", "CREATE DATABASE berth");
                    return server;
                }
                Err(log) if attempt < 3 && log.contains("could not bind") => {
                    server.tell("stop");
                    let _ = std::fs::remove_file(root.join("postgres.log"));
                }
                Err(log) => panic!("PostgreSQL did not start:\n{log}"),
            }
        }
        unreachable!("the loop returns or panics")
    }

    fn spawn_watchdog(&mut self, user: &ServerUser) {
        let mut server = user.command(&self.bin.join("postgres"));
        server
            .arg("-D")
            .arg(self.root.join("data"))
            .arg("-k")
            .arg(self.root.join("sock"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A throwaway cluster: durability buys nothing and costs the tests time.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=32MB"])
            .args(["-c", "max_connections=300"]);
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(&self.root)
            .arg(server.get_program())
            .args(server.get_args())
            .current_dir(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sh for PostgreSQL");
        let stdin = child.stdin.take().expect("watchdog stdin");
        let stdout = BufReader::new(child.stdout.take().expect("watchdog stdout"));
        *self.watchdog.lock().unwrap() = Some(Watchdog {
            child,
            stdin,
            stdout,
        });
    }

    /// Sends the watchdog `line` and waits for it to be done.
    fn tell(&self, line: &str) {
        let mut w = self.watchdog.lock().unwrap();
        let w = w.as_mut().expect("the watchdog is running");
        w.stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| w.stdin.flush())
            .expect("write to the watchdog");
        let mut answer = String::new();
        w.stdout
            .read_line(&mut answer)
            .expect("read the watchdog's answer");
        let verb = line.split(' ').next().unwrap_or_default();
        assert_eq!(answer.trim(), verb, "the watchdog did not {line:?}");
    }

    /// Waits until the server answers a query; the log when it does not.
    fn wait_ready(&self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ok = self
                .psql_command("postgres", "SELECT 1")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            let log = self.logs();
            if log.contains("could not bind") || Instant::now() >= deadline {
                return Err(log);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password (every URL carries it; tests look for it where it must not be).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL of the database `berth`, made at start.
    pub fn url(&self) -> String {
        self.url_for("berth")
    }

    /// The URL of database `db` (TCP, with the password, TLS off).
    pub fn url_for(&self, db: &str) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{db}?sslmode=disable",
            self.password, self.port
        )
    }

    /// Creates database `name` (letters, digits, `_`) and returns its URL.
    pub fn fresh_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database name {name:?}: use [a-z0-9_]"
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url_for(name)
    }

    /// Runs `sql` in database `db` as the superuser over the socket; panics when it fails.
    /// The rows, one a line, columns separated by `|`.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .psql_command(db, sql)
            .output()
            .expect("run psql (apt-get install postgresql)");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn psql_command(&self, db: &str, sql: &str) -> Command {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h")
            .arg(self.root.join("sock"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", USER, "-d", db, "-X", "-A", "-t", "-q"])
            .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
            .stdin(Stdio::null());
        c
    }

    /// Stops the server (fast shutdown: every connection is cut) and starts it again on the
    /// same port with the same data; returns once it answers.
    pub fn restart(&self) {
        self.tell(&format!("restart {}", self.port));
        if let Err(log) = self.wait_ready() {
            panic!("PostgreSQL did not come back:\n{log}");
        }
    }

    /// The server's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.root.join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let w = self.watchdog.get_mut().map(Option::take);
        if let Ok(Some(Watchdog {
            mut child,
            stdin,
            stdout,
        })) = w
        {
            // End-of-file on its stdin: the watchdog stops the server and removes the cluster.
            drop(stdin);
            drop(stdout);
            let _ = child.wait();
        }
    }
}

/// Who the server runs as. initdb and postgres refuse to run as root (a server reachable
/// over the network must not own the machine), and these tests often run as root in
/// containers and CI: then the cluster belongs to the `postgres` user the Debian package
/// creates and the binaries run under `setpriv` (util-linux, no PAM or login shell as `su`
/// and `runuser` would involve). As anyone else they run as that user.
enum ServerUser {
    Me,
    Other { uid: u32, gid: u32 },
}

impl ServerUser {
    fn find() -> ServerUser {
        let me = std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .expect("stat /proc/self");
        if me != 0 {
            return ServerUser::Me;
        }
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let entry = passwd
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 3 && f[0] == "postgres").then(|| (f[2].parse(), f[3].parse()))
            })
            .expect("no user postgres to run PostgreSQL as (apt-get install postgresql)");
        match entry {
            (Ok(uid), Ok(gid)) => ServerUser::Other { uid, gid },
            _ => panic!("user postgres in /etc/passwd has no numeric uid/gid"),
        }
    }

    fn own(&self, path: &Path) {
        if let ServerUser::Other { uid, gid } = self {
            std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        }
    }

    fn command(&self, program: &Path) -> Command {
        match self {
            ServerUser::Me => Command::new(program),
            ServerUser::Other { uid, gid } => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(program);
                c
            }
        }
    }
}

/// Where the server binaries are: Debian's package keeps them out of `PATH`, under
/// `/usr/lib/postgresql/<version>/bin` (the newest is taken); `BERTH_TEST_PG_BIN` overrides.
fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BERTH_TEST_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    // Elsewhere they are usually on PATH.
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .find(|d| d.join("initdb").exists() && d.join("postgres").exists())
        })
        .expect(
            "no PostgreSQL server binaries (apt-get install postgresql, or set BERTH_TEST_PG_BIN)",
        )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

fn random_hex() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 12];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("random bytes");
    b.iter().map(|x| format!("{x:02x}")).collect()
}
