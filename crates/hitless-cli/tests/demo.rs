//! `hitless demo`: the whole system runs and its summary proves every claim; the live view
//! renders in a real terminal (tmux).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{hitless_bin, run_bounded};

/// The number after `label` on its summary line (`  label: N...`).
fn summary_number(summary: &str, label: &str) -> u64 {
    let line = summary
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no `{label}` line in the summary:\n{summary}"));
    let value = line.split_once(':').unwrap().1.trim();
    value
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("`{label}` is not a number: {line}"))
}

#[test]
fn demo_without_tui_passes_every_check() {
    let mut cmd = Command::new(hitless_bin());
    cmd.args(["demo", "--duration", "30s", "--no-tui"]);
    cmd.env("NO_COLOR", "1");
    let ran = run_bounded(cmd, b"", Duration::from_secs(180));
    let out = &ran.stdout;
    assert!(ran.success(), "demo failed:\n{out}\n{}", ran.stderr);
    let summary = &out[out.find("hitless demo summary").expect("no summary")..];
    assert!(
        summary_number(summary, "server rotations") >= 5,
        "{summary}"
    );
    assert!(
        summary_number(summary, "client rotations") >= 5,
        "{summary}"
    );
    assert_eq!(summary_number(summary, "CA rotations"), 1, "{summary}");
    assert_eq!(
        summary_number(summary, "revocations refused"),
        1,
        "{summary}"
    );
    assert!(summary.contains("bad writes refused: 2/2"), "{summary}");
    assert_eq!(summary_number(summary, "failed handshakes"), 0, "{summary}");
    assert_eq!(summary_number(summary, "failed requests"), 0, "{summary}");
    assert!(summary_number(summary, "requests ok") > 0, "{summary}");
    // Requests, not only handshakes: the rate of all of them and their latency percentiles.
    assert!(summary_number(summary, "requests/s") > 0, "{summary}");
    let latency = summary
        .lines()
        .find(|l| l.trim_start().starts_with("request latency:"))
        .unwrap_or_else(|| panic!("no request latency line:\n{summary}"));
    for p in ["p50 ", "p90 ", "p99 ", "p99.9 ", "max "] {
        assert!(latency.contains(p), "no {p}in {latency}");
    }
    assert!(summary.contains(", 0 lost,"), "{summary}");
    assert!(summary.contains("result: PASS"), "{summary}");
    // Every probe run passed: "probes: N run, N passed, M attacks refused".
    let probes = summary
        .lines()
        .find(|l| l.contains("probes:") && l.contains("run,"))
        .unwrap();
    let numbers: Vec<u64> = probes
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert!(numbers[0] >= 1 && numbers[0] == numbers[1], "{probes}");
}

/// Runs tmux on a private socket, so only our own server is touched.
fn tmux(socket: &str, args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-L")
        .arg(socket)
        .args(args)
        .output()
        .expect("tmux must be installed for this test (.ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TmuxGuard(String);

impl Drop for TmuxGuard {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-L")
            .arg(&self.0)
            .arg("kill-server")
            .output();
    }
}

#[test]
fn live_view_renders_in_a_terminal() {
    let socket = format!("hitless-demo-test-{}", std::process::id());
    let _guard = TmuxGuard(socket.clone());
    let command = format!("exec {} demo --duration 40s", hitless_bin());
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "demo",
            "-x",
            "140",
            "-y",
            "45",
            &command,
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut screen = String::new();
    let rate_ok = |screen: &str| {
        screen.lines().any(|l| {
            l.split("handshakes/s").nth(1).is_some_and(|rest| {
                rest.split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<f64>().ok())
                    .is_some_and(|n| n > 0.0)
            })
        })
    };
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        screen = tmux(&socket, &["capture-pane", "-p", "-t", "demo"]);
        if rate_ok(&screen) {
            break;
        }
    }
    for heading in [
        "hitless demo",
        "Identities",
        "Trust bundle",
        "Traffic",
        "Probes",
        "Events",
    ] {
        assert!(
            screen.contains(heading),
            "no `{heading}` on the screen:\n{screen}"
        );
    }
    assert!(
        rate_ok(&screen),
        "no non-zero handshake rate on the screen:\n{screen}"
    );
    assert!(screen.contains("failed handshakes 0"), "{screen}");
    assert!(screen.contains("requests/s"), "{screen}");
    assert!(screen.contains("latency last second"), "{screen}");
    // q ends it cleanly.
    let pid: u32 = tmux(
        &socket,
        &["display-message", "-p", "-t", "demo", "#{pane_pid}"],
    )
    .trim()
    .parse()
    .expect("the pane's PID");
    tmux(&socket, &["send-keys", "-t", "demo", "q"]);
    let deadline = Instant::now() + END_AFTER_TERMINAL_LOSS;
    while running(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!running(pid), "q did not end the demo");
}

/// Runs a demo in a pseudo-terminal of its own (Python's `os.openpty`; the demo is no session
/// leader there, so no SIGHUP comes: only end of input and I/O errors say the terminal is
/// gone), waits for the live view, closes the terminal, and reports as JSON what became of the
/// demo and of every child it was seen with.
const PTY_HARNESS: &str = r#"
import fcntl, json, os, select, struct, subprocess, sys, termios, time

exe, duration, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None

def children(pid):
    found = set()
    for name in os.listdir("/proc"):
        fields = stat(name) if name.isdigit() else None
        if fields and int(fields[1]) == pid:
            found.add(int(name))
    return found

def alive(pid):
    fields = stat(pid)
    return fields is not None and fields[0] != "Z"

master, slave = os.openpty()
fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 140, 0, 0))
demo = subprocess.Popen([exe, "demo", "--duration", duration], stdin=slave, stdout=slave,
                        stderr=slave, close_fds=True, start_new_session=True)
os.close(slave)
screen, kids, up_at = b"", set(), None
deadline = time.time() + 120
while time.time() < deadline and (up_at is None or time.time() - up_at < 3):
    ready, _, _ = select.select([master], [], [], 0.2)
    if ready:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        screen += chunk
    kids |= children(demo.pid)
    if up_at is None and b"handshakes/s" in screen:
        up_at = time.time()
report = {"view_shown": up_at is not None}
os.close(master)
closed = time.time()
while time.time() - closed < timeout:
    pid, status, usage = os.wait4(demo.pid, os.WNOHANG)
    if pid:
        report.update(exited=True, seconds=round(time.time() - closed, 2), status=status)
        break
    kids |= children(demo.pid)
    time.sleep(0.1)
else:
    before = stat(demo.pid)
    time.sleep(2)
    after = stat(demo.pid)
    ticks = lambda f: int(f[11]) + int(f[12])
    report.update(exited=False,
                  cpu_share=(ticks(after) - ticks(before)) / os.sysconf("SC_CLK_TCK") / 2)
    demo.kill()
    demo.wait()
deadline = time.time() + 10
while time.time() < deadline and any(alive(k) for k in kids):
    time.sleep(0.1)
report["children_left"] = sorted(k for k in kids if alive(k))
for k in report["children_left"]:
    os.kill(k, 9)
print(json.dumps(report))
"#;

/// How long a demo whose terminal closed may take to end: it stops its tasks and server
/// (seconds), far less than the `--duration` it was given.
const END_AFTER_TERMINAL_LOSS: Duration = Duration::from_secs(60);

#[test]
fn demo_ends_when_its_terminal_closes() {
    let mut cmd = Command::new("python3");
    cmd.arg("-c")
        .arg(PTY_HARNESS)
        .arg(hitless_bin())
        .arg("600s")
        .arg(END_AFTER_TERMINAL_LOSS.as_secs().to_string());
    let ran = run_bounded(cmd, b"", Duration::from_secs(300));
    assert!(
        ran.success(),
        "the pty harness failed (python3 is needed for this test)\n{}",
        ran.stderr
    );
    let report: serde_json::Value = serde_json::from_str(ran.stdout.trim())
        .unwrap_or_else(|e| panic!("harness output is not JSON ({e}): {}", ran.stdout));
    assert_eq!(
        report["view_shown"], true,
        "the live view never showed: {report}"
    );
    assert_eq!(
        report["exited"], true,
        "the demo was still running {END_AFTER_TERMINAL_LOSS:?} after its terminal closed \
         (CPU share over 2 s: {}): {report}",
        report["cpu_share"]
    );
    assert_eq!(
        report["children_left"],
        serde_json::json!([]),
        "processes left behind: {report}"
    );
}

fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Alive and not a zombie (a process whose parent is gone may stay a zombie until reaped).
fn running(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|f| f[0] != "Z")
}

/// CPU time (user + system) of `pid` in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let f = proc_stat(pid)?;
    Some(f[11].parse::<u64>().ok()? + f[12].parse::<u64>().ok()?)
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter(|child| {
                    proc_stat(*child).is_some_and(|f| f[1].parse::<u32>().ok() == Some(pid))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn demo_ends_when_its_tmux_pane_is_killed() {
    // A killed pane (or a dropped SSH session) sends SIGHUP and closes the terminal.
    let socket = format!("hitless-demo-hangup-{}", std::process::id());
    let guard = TmuxGuard(socket.clone());
    let command = format!("exec {} demo --duration 600s", hitless_bin());
    tmux(
        &socket,
        &[
            "new-session",
            "-d",
            "-s",
            "demo",
            "-x",
            "140",
            "-y",
            "45",
            &command,
        ],
    );
    let pid: u32 = tmux(
        &socket,
        &["display-message", "-p", "-t", "demo", "#{pane_pid}"],
    )
    .trim()
    .parse()
    .expect("the pane's PID");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut kids = Vec::new();
    loop {
        let screen = tmux(&socket, &["capture-pane", "-p", "-t", "demo"]);
        kids.extend(children_of(pid));
        if screen.contains("handshakes/s") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live view never showed:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    kids.extend(children_of(pid));
    drop(guard); // tmux kill-server: the pane and its terminal are gone.

    let closed = Instant::now();
    while running(pid) && closed.elapsed() < END_AFTER_TERMINAL_LOSS {
        kids.extend(children_of(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    if running(pid) {
        let before = cpu_ticks(pid);
        std::thread::sleep(Duration::from_secs(2));
        let after = cpu_ticks(pid);
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        panic!(
            "the demo was still running {END_AFTER_TERMINAL_LOSS:?} after its pane was killed \
             (CPU ticks over 2 s: {before:?} -> {after:?})"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while kids.iter().any(|k| running(*k)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<u32> = kids.into_iter().filter(|k| running(*k)).collect();
    for k in &left {
        let _ = Command::new("kill").arg("-9").arg(k.to_string()).status();
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
