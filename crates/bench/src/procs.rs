//! Server processes for the requests part: started on loopback, measured through `/proc`, and
//! always stopped, on every exit path (a guard whose `Drop` signals and reaps them, a panic
//! included; `setpriv --pdeathsig TERM` where available, so that even a killed benchmark does
//! not leave them behind).

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (bound, read, released; the server binds it right after).
pub fn free_port() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind 127.0.0.1:0: {e}"))?;
    l.local_addr().map_err(|e| e.to_string())
}

/// Starts a server on a free loopback port: `make` builds its command for that address. A
/// port taken by someone else between the check and the bind fails the start; then it is
/// tried again with another port (3 attempts in all).
pub fn start_on_free_port(
    name: &str,
    log: PathBuf,
    mut make: impl FnMut(SocketAddr) -> Result<Command, String>,
) -> Result<Proc, String> {
    let mut last = String::new();
    for _ in 0..3 {
        let addr = free_port()?;
        match Proc::start(name, make(addr)?, addr, log.clone()) {
            Ok(p) => return Ok(p),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The `kill` program (procps or util-linux), to send signals without unsafe code.
fn kill_program() -> PathBuf {
    which("kill").unwrap_or_else(|| PathBuf::from("/bin/kill"))
}

/// Whether `name` is an executable found in `PATH` (or in /usr/sbin, where nginx lives).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A command that receives SIGTERM when the benchmark's main thread dies, however it dies.
pub fn guarded_command(program: &Path) -> Command {
    match which("setpriv") {
        Some(setpriv) => {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "TERM", "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A running server process. Dropping it stops it: SIGTERM, up to 3 s to exit (under valgrind
/// longer), then SIGKILL;
/// child processes it had (nginx workers) are sent SIGKILL if they are still there.
pub struct Proc {
    /// What it is, for messages.
    pub name: String,
    child: Option<Child>,
    /// Its process ID.
    pub pid: u32,
    /// Where its standard error goes.
    pub log: PathBuf,
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// How long it may take to exit after SIGTERM before it is killed.
    pub grace: Duration,
}

impl Proc {
    /// Starts `command` (standard input piped and kept open: closing it tells our own servers
    /// to exit; standard output discarded; standard error to `log`) and waits until `addr`
    /// accepts TCP connections, up to 30 s.
    pub fn start(
        name: &str,
        command: Command,
        addr: SocketAddr,
        log: PathBuf,
    ) -> Result<Proc, String> {
        Proc::start_within(name, command, addr, log, Duration::from_secs(30))
    }

    /// [`Proc::start`], waiting up to `timeout` for it to listen (and as long for it to exit
    /// when stopped: a process under valgrind is slow at both).
    pub fn start_within(
        name: &str,
        mut command: Command,
        addr: SocketAddr,
        log: PathBuf,
        timeout: Duration,
    ) -> Result<Proc, String> {
        let err = fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{name}: cannot start {command:?}: {e}"))?;
        let mut p = Proc {
            name: name.to_string(),
            pid: child.id(),
            child: Some(child),
            log,
            addr,
            grace: if timeout > Duration::from_secs(30) {
                timeout / 2
            } else {
                Duration::from_secs(3)
            },
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = p.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(format!(
                        "{name} exited at start ({status}): {}",
                        p.log_tail()
                    ));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{name} did not listen on {addr} within {} s: {}",
                    timeout.as_secs(),
                    p.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of its standard error.
    pub fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Stops it (as dropping it does) and returns once it has exited.
    pub fn stop(self) {}

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// CPU time (user + system) of this process and its children, nanoseconds.
    pub fn cpu_ns(&self) -> u64 {
        let mut pids = vec![self.pid];
        pids.extend(children(self.pid));
        pids.iter().map(|p| process_cpu_ns(*p)).sum()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let kids = children(self.pid);
        let own = comm(self.pid);
        let _ = Command::new(kill_program())
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + self.grace;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        // nginx workers exit with their master; if one is still there (same command name as
        // its master, seen as its child a moment ago), it is ours: kill it.
        for k in kids {
            if own.is_some() && comm(k) == own {
                let _ = Command::new(kill_program())
                    .args(["-KILL", &k.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

fn comm(pid: u32) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// `(ppid, utime + stime in clock ticks)` from /proc/PID/stat.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// Process IDs whose parent is `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat(*p).is_some_and(|(ppid, _)| ppid == pid))
        .collect()
}

/// CPU time of one process, nanoseconds: the sum over its threads of
/// /proc/PID/task/*/schedstat (nanosecond resolution), or, if that is unavailable,
/// utime + stime from /proc/PID/stat (10 ms ticks; counts exited threads too).
pub fn process_cpu_ns(pid: u32) -> u64 {
    let from_tasks: Option<u64> = fs::read_dir(format!("/proc/{pid}/task")).ok().map(|tasks| {
        tasks
            .flatten()
            .filter_map(|t| fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    });
    match from_tasks {
        Some(ns) if ns > 0 => ns,
        _ => stat(pid).map_or(0, |(_, ticks)| ticks * 10_000_000),
    }
}

/// The `hitless` binary to benchmark: `explicit`, else `hitless` next to this executable
/// (both land in the same target directory), else `$CARGO_TARGET_DIR/release/hitless`.
pub fn find_hitless(explicit: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(format!("--hitless {}: no such file", p.display()))
        };
    }
    let mut tried = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/release/hitless-bench, or target/debug/deps/smoke-... under `cargo test`.
        for dir in exe.ancestors().skip(1).take(2) {
            tried.push(dir.join("hitless"));
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        tried.push(PathBuf::from(t).join("release").join("hitless"));
    }
    tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "the hitless binary was not found (looked at {}): build it with \
             `cargo build --release -p hitless-cli` or pass --hitless PATH",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

/// The Go programs of `crates/bench/go` (the load generator and the seed server's design),
/// built into `out` with the local toolchain only (no module download: they use the standard
/// library alone). Returns `(loadgen, seedserver)`.
pub fn build_go(out: &Path) -> Result<(PathBuf, PathBuf), String> {
    let go = which("go").ok_or("Go is not installed (apt-get install golang-go)")?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go");
    if !src.join("go.mod").is_file() {
        return Err(format!("{}: Go sources not found", src.display()));
    }
    fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut built = Vec::new();
    for name in ["loadgen", "seedserver"] {
        let bin = out.join(name);
        let o = Command::new(&go)
            .current_dir(&src)
            .args(["build", "-o"])
            .arg(&bin)
            .arg(format!("./{name}"))
            .env("GOPATH", out.join("gopath"))
            .env("GOCACHE", out.join("cache"))
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "")
            .env("CGO_ENABLED", "0")
            .output()
            .map_err(|e| format!("go build {name}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "go build {name} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        built.push(bin);
    }
    Ok((built[0].clone(), built[1].clone()))
}

/// Where the Go programs are built: beside this executable (the target directory).
pub fn go_out_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|p| p.join("bench-go")))
        .unwrap_or_else(|| std::env::temp_dir().join("hitless-bench-go"))
}

/// nginx's configuration: one server with `ssl_verify_client on` answering `ok\n`.
///
/// `worker_processes auto` (one per core, 2 here): hitless serve's tokio runtime also runs
/// one worker thread per core, so both may use every core. Access log off (hitless serve does
/// not log requests either); keep-alive connections are never closed for their request count
/// (nginx's default closes them after 1,000 requests, hyper never does).
pub fn nginx_config(
    dir: &Path,
    addr: SocketAddr,
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process on;
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    server {{
        listen {addr} ssl http2;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_client_certificate {ca};
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            default_type text/plain;
            return 200 \"ok\\n\";
        }}
    }}
}}
",
        cert = cert.display(),
        key = key.display(),
        ca = client_ca.display(),
    )
}
