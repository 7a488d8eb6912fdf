//! Regression tests, with real processes, for three hardening fixes (issue 18, the "trust"
//! work):
//!
//! - reloads asked for during a roll merge into it: afterwards exactly the configured workers
//!   run, one per index, on the last configuration (`Roll::merge`, `supervisor/reconcile.rs`);
//! - a worker drover cannot reap (a ptrace tracer holds its zombie) is given up on
//!   `UNREAPED_AFTER` its SIGKILL, so scale-down, a health recycle and shutdown go on without
//!   it (`Action::Abandon` in `state.rs`);
//! - `prometheus_multiproc_dir` is never followed through a symlink, is created 0700 for the
//!   program's user, and `true` puts it in drover's runtime directory, which goes with drover
//!   (`resources/metrics_dir.rs`, `supervisor/app_metrics.rs`).

mod common;
use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-token-0123456789abcdef";

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Start drover with a token file written first; `TOKEN_FILE` in the config names it.
fn start_with_token(cfg: &str) -> Drover {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, format!("{TOKEN}\n")).unwrap();
    let cfg = cfg.replace("TOKEN_FILE", tok.to_str().unwrap());
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    d
}

/// A temp dir others may pass through (0755), for paths a worker running as nobody must reach.
fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// A process's environment (empty when it is gone).
fn environ(pid: i64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn env_var(pid: i64, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    environ(pid)
        .into_iter()
        .find_map(|e| e.strip_prefix(&prefix).map(String::from))
}

/// Every live (not zombie) process whose environment holds exactly `entry` (`KEY=value`).
fn live_pids_with(entry: &str) -> Vec<i64> {
    let mut pids: Vec<i64> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| alive(*pid) && environ(*pid).iter().any(|e| e == entry))
        .collect();
    pids.sort_unstable();
    pids
}

/// The state letter of /proc/PID/stat (`S`, `t`, `Z`…), None when it is gone.
fn state_letter(pid: i64) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(')')?.1.trim_start().chars().next()
}

fn tracer_pid(pid: i64) -> Option<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))?
        .trim()
        .parse()
        .ok()
}

/// The workers of the first program as (index, pid), sorted by index.
fn workers(v: &serde_json::Value) -> Vec<(u64, i64)> {
    let mut ws: Vec<(u64, i64)> = v["programs"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["index"].as_u64().unwrap(), w["pid"].as_i64().unwrap_or(0)))
        .collect();
    ws.sort_unstable();
    ws
}

fn pid_at(v: &serde_json::Value, index: u64) -> i64 {
    workers(v)
        .into_iter()
        .find(|(i, _)| *i == index)
        .map(|(_, p)| p)
        .unwrap_or_else(|| panic!("no worker at index {index}: {v}"))
}

// ---------------------------------------------------------------------------------------------
// 1. Reloads during a roll

/// The config of the roll test: `GEN` changes on every reload, which rolls the program; `TAG`
/// (the temp dir) finds this test's workers in /proc.
fn gen_cfg(dir: &str, gen: u32) -> String {
    format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"

[program.web]
command = ["sleep", "100000"]
workers = 2
stop_timeout = "2s"
readiness = {{ check = "uptime", min_uptime = "2s" }}
env = {{ TAG = "{dir}", GEN = "{gen}" }}
"#
    )
}

#[test]
fn reloads_during_a_roll_leave_exactly_the_configured_workers_on_the_last_config() {
    let mut d = Drover::start(&gen_cfg("{dir}", 0));
    let dir = d.dir.path().display().to_string();
    let tag = format!("TAG={dir}");
    d.wait_status("2 ready workers", T, |v| all_ready(v, 2));
    let reloads = |d: &Drover| {
        d.messages()
            .iter()
            .filter(|m| m.starts_with("reload: "))
            .count()
    };
    // five reloads, each a new GEN, ~200 ms apart: a worker takes 2 s to be ready, so every
    // reload after the first lands in the roll the first started
    for gen in 1..=5 {
        if gen > 1 {
            assert_eq!(
                d.status()["programs"][0]["rolling"],
                true,
                "reload {gen} is meant to land during a roll"
            );
        }
        let file = d.path("drover.toml");
        let tmp = d.path("drover.toml.new");
        std::fs::write(&tmp, gen_cfg(&dir, gen)).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        d.signal(libc::SIGHUP);
        // one HUP handled before the next is sent: pending signals would coalesce
        wait_until(T, &format!("reload {gen} to be applied"), || {
            (reloads(&d) == gen as usize).then_some(())
        });
        let st = d.wait_status("the program to be rolling", T, |v| {
            v["programs"][0]["rolling"] == true
        });
        assert_eq!(st["last_reload"]["ok"], true, "{}", st["last_reload"]);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !d.logged("reload failed"),
        "every reload applies\n{}",
        d.stderr()
    );
    // the roll that follows the last reload ends, and every worker left is ready
    let done_after_last_reload = |d: &Drover| {
        let m = d.messages();
        let last = m.iter().rposition(|m| m.starts_with("reload: "))?;
        m[last..]
            .iter()
            .any(|m| m.contains("program web: rolling reload done"))
            .then_some(())
    };
    wait_until(T, "the roll after the last reload to end", || {
        done_after_last_reload(&d)
    });
    let st = d.wait_status("no roll, every worker ready", T, |v| {
        let ws = v["programs"][0]["workers"].as_array().unwrap();
        v["programs"][0]["rolling"] == false
            && ws
                .iter()
                .all(|w| w["ready"] == true && w["state"] == "running")
    });
    let ws = workers(&st);
    let merged = d
        .messages()
        .iter()
        .filter(|m| m.contains("after the roll in progress"))
        .count();
    println!("workers after 5 reloads: {ws:?} ({merged} reloads merged into the roll in progress)");
    let indexes: Vec<u64> = ws.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        indexes,
        vec![0, 1],
        "exactly one worker per index for workers = 2\n{st}"
    );
    let mut pids: Vec<i64> = ws.iter().map(|(_, p)| *p).collect();
    pids.sort_unstable();
    assert_eq!(
        live_pids_with(&tag),
        pids,
        "the processes running this program are exactly the ones /status shows"
    );
    for (index, pid) in ws {
        assert_eq!(
            env_var(pid, "GEN").as_deref(),
            Some("5"),
            "worker {index} (pid {pid}) runs the last configuration"
        );
        assert_eq!(
            env_var(pid, "DROVER_WORKER"),
            Some(index.to_string()),
            "pid {pid}"
        );
    }
    d.stop_ok();
}

// ---------------------------------------------------------------------------------------------
// 2. A worker drover cannot reap

/// A python3 process that ptrace-seizes the tracee and then only sleeps. It never waits for
/// it, so once the tracee dies it stays a zombie its real parent (drover) cannot reap until the
/// tracer is gone. Dropping the guard kills the tracee, then the tracer.
struct Tracer {
    child: Option<Child>,
    tracee: i64,
}

const TRACER: &str = r#"
import ctypes, signal, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: never outlive the test
signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # an ignored SIGCHLD would let the tracee be reaped
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
if libc.ptrace(0x4206, int(sys.argv[1]), None, None) != 0:  # PTRACE_SEIZE
    sys.exit("PTRACE_SEIZE pid %s: errno %d" % (sys.argv[1], ctypes.get_errno()))
while True:
    time.sleep(3600)
"#;

impl Tracer {
    /// Seize `pid`; Err when this machine does not let us (no python3, ptrace refused).
    fn seize(pid: i64) -> Result<Tracer, String> {
        if !installed("python3") {
            return Err("python3 is not installed".into());
        }
        let child = Command::new("python3")
            .args(["-c", TRACER, &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn python3: {e}"))?;
        let me = child.id() as i64;
        let mut t = Tracer {
            child: Some(child),
            tracee: pid,
        };
        let end = Instant::now() + T;
        loop {
            if tracer_pid(pid) == Some(me) {
                return Ok(t);
            }
            let c = t.child.as_mut().unwrap();
            if let Ok(Some(st)) = c.try_wait() {
                let mut err = String::new();
                if let Some(mut e) = c.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                t.child = None;
                return Err(format!("the tracer exited ({st}): {}", err.trim()));
            }
            assert!(
                Instant::now() < end,
                "pid {pid} was not seized within {T:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kill the tracer: the tracee's zombie goes back to its real parent to be reaped.
    fn release(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // still traced, so never reaped and its pid not reused: safe to signal
            // SAFETY: kill(2) on a process this test's tracer holds.
            unsafe { libc::kill(self.tracee as i32, libc::SIGKILL) };
            self.release();
        }
    }
}

/// Seize `pid`, or say why this machine cannot run the test.
fn seize_or_skip(pid: i64) -> Option<Tracer> {
    if !is_root() {
        skip("tracing a worker drover started as root needs root");
        return None;
    }
    match Tracer::seize(pid) {
        Ok(t) => Some(t),
        Err(e) => {
            skip(&format!("cannot make an unreapable worker here: {e}"));
            None
        }
    }
}

/// The log line of the slot giving up on `pid`: it names the pid and its /proc state.
fn assert_given_up_on(d: &Drover, pid: i64) {
    let line = d
        .messages()
        .into_iter()
        .find(|m| m.contains(&format!("(pid {pid}) is still not reaped")))
        .unwrap_or_else(|| panic!("no 'still not reaped' line for pid {pid}\n{}", d.stderr()));
    assert!(
        line.contains("state Z"),
        "the line says what /proc shows (a zombie its tracer holds): {line}"
    );
}

/// The tracer goes: the zombie returns to drover, which reaps it and says so.
fn release_and_see_the_late_reap(d: &Drover, tracer: &mut Tracer, pid: i64) {
    tracer.release();
    let want = format!("pid {pid}, a worker drover had given up on, was finally reaped");
    wait_until(T, &want, || d.logged(&want).then_some(()));
}

const TRACED_PROGRAM: &str = r#"command = ["sleep", "100000"]
stop_timeout = "1s"
readiness = { check = "uptime", min_uptime = "100ms" }"#;

#[test]
fn a_worker_its_tracer_holds_is_given_up_on_and_scale_down_goes_on() {
    let mut d = start_with_token(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"10s\"\ncontrol_token_file = \"TOKEN_FILE\"\n\n[program.web]\nworkers = 2\n{TRACED_PROGRAM}\n"
    ));
    let st = d.wait_status("2 ready workers", T, |v| all_ready(v, 2));
    let (keep, pid) = (pid_at(&st, 0), pid_at(&st, 1));
    let Some(mut tracer) = seize_or_skip(pid) else {
        return;
    };
    // scale-down stops the newest: web.1, the traced one. Its TERM stops it in a
    // signal-delivery-stop, its SIGKILL (1 s later) makes it a zombie only the tracer may reap
    let asked = Instant::now();
    let (code, body) = http_req(
        &d.status_addr(),
        "POST",
        "/programs/web/scale",
        b"{\"workers\": 1}",
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let st = d.wait_status(
        "web.1 gone from /status, given up on",
        Duration::from_secs(20),
        |v| workers(v) == vec![(0, keep)],
    );
    println!(
        "traced web.1 gone from /status {:.1}s after the scale-down (stop_timeout 1s + 5s)",
        asked.elapsed().as_secs_f64()
    );
    assert!(all_ready(&st, 1), "web.0 kept serving: {st}");
    assert_eq!(
        state_letter(pid),
        Some('Z'),
        "pid {pid} was killed, and its tracer still holds its zombie"
    );
    assert_given_up_on(&d, pid);
    release_and_see_the_late_reap(&d, &mut tracer, pid);
    d.stop_ok();
}

#[test]
fn a_worker_its_tracer_holds_is_given_up_on_and_a_health_recycle_replaces_it() {
    // the health check fails for a worker once its file `sick.PID` exists
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"10s\"\n\n[program.web]\nworkers = 1\n{TRACED_PROGRAM}\n[program.web.health]\nexec = [\"test\", \"!\", \"-e\", \"{{dir}}/sick.{{pid}}\"]\ninterval = \"200ms\"\nfailures = 1\nhung = false\n"
    ));
    let st = d.wait_status("1 ready worker", T, |v| all_ready(v, 1));
    let pid = pid_at(&st, 0);
    let Some(mut tracer) = seize_or_skip(pid) else {
        return;
    };
    let asked = Instant::now();
    std::fs::write(d.path(&format!("sick.{pid}")), b"").unwrap();
    let st = d.wait_status(
        "web.0 replaced by a new process",
        Duration::from_secs(20),
        |v| {
            let ws = workers(v);
            ws.len() == 1 && ws[0].1 != 0 && ws[0].1 != pid
        },
    );
    println!(
        "traced web.0 replaced {:.1}s after its health check failed (stop_timeout 1s + 5s)",
        asked.elapsed().as_secs_f64()
    );
    let w = &st["programs"][0]["workers"][0];
    assert_eq!(w["index"], 0, "{w}");
    assert_eq!(
        w["last_exit"],
        serde_json::json!({"reason": "health", "unreaped": true}),
        "{w}"
    );
    assert_eq!(state_letter(pid), Some('Z'), "pid {pid}");
    assert_given_up_on(&d, pid);
    // the replacement is a worker like any other
    d.wait_status("the replacement ready", T, |v| all_ready(v, 1));
    release_and_see_the_late_reap(&d, &mut tracer, pid);
    d.stop_ok();
}

#[test]
fn shutdown_with_a_worker_its_tracer_holds_exits_0_without_waiting_for_the_hard_deadline() {
    // the hard deadline is shutdown_timeout + 5 s = 35 s, where drover exited 1
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"30s\"\n\n[program.web]\nworkers = 1\n{TRACED_PROGRAM}\n"
    ));
    let st = d.wait_status("1 ready worker", T, |v| all_ready(v, 1));
    let pid = pid_at(&st, 0);
    let Some(_tracer) = seize_or_skip(pid) else {
        return;
    };
    let asked = Instant::now();
    d.signal(libc::SIGTERM);
    let code = d.wait_exit(Duration::from_secs(20));
    println!(
        "drover exited {code} {:.1}s after TERM with a traced worker (stop_timeout 1s + 5s)",
        asked.elapsed().as_secs_f64()
    );
    assert_eq!(code, 0, "{}", d.stderr());
    assert_given_up_on(&d, pid);
}

// ---------------------------------------------------------------------------------------------
// 3. prometheus_multiproc_dir

/// A worker that writes a metrics file, as prometheus_client does, and keeps running.
const METRICS_WORKER: &str = r#"command = ["sh", "-c", 'touch "$PROMETHEUS_MULTIPROC_DIR/counter_$$.db"; exec sleep 100000']
readiness = { check = "uptime", min_uptime = "100ms" }"#;

fn nobody() -> Option<u32> {
    nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .map(|u| u.uid.as_raw())
}

#[test]
fn a_metrics_dir_that_is_a_symlink_is_refused_and_what_it_points_to_is_kept() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("important.db"), b"keep me").unwrap();
    let link = t.path().join("metrics");
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let mut d = Drover::start(&one_program(&format!(
        "{METRICS_WORKER}\nprometheus_multiproc_dir = \"{}\"",
        link.display()
    )));
    d.keep.push(t);
    let st = d.wait_status("the worker ready", T, |v| all_ready(v, 1));
    assert!(
        victim.join("important.db").exists(),
        "drover deleted a file through a symlink"
    );
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is left as it is"
    );
    let path = link.display().to_string();
    let line = d
        .messages()
        .into_iter()
        .find(|m| m.contains("prometheus_multiproc_dir") && m.contains(&path))
        .unwrap_or_else(|| panic!("no log line names {path}\n{}", d.stderr()));
    assert!(line.contains("symlink"), "{line}");
    assert!(
        line.contains("without PROMETHEUS_MULTIPROC_DIR"),
        "and says what happens next: {line}"
    );
    let pid = pid_at(&st, 0);
    let env = environ(pid);
    assert!(
        !env.iter().any(|e| e
            .to_ascii_uppercase()
            .starts_with("PROMETHEUS_MULTIPROC_DIR=")),
        "the worker starts without it: {env:?}"
    );
    d.stop_ok();
}

/// Mode 0700, owned by `uid`; a worker running as `uid` wrote its file there.
fn assert_private_and_written(dir: &Path, uid: u32, pid: i64) {
    let md = std::fs::symlink_metadata(dir).unwrap();
    assert!(md.is_dir(), "{}", dir.display());
    assert_eq!(
        md.mode() & 0o7777,
        0o700,
        "{} is private to the program's user",
        dir.display()
    );
    assert_eq!(
        md.uid(),
        uid,
        "{} belongs to the program's user",
        dir.display()
    );
    let file = dir.join(format!("counter_{pid}.db"));
    wait_until(
        T,
        &format!("the worker to write {}", file.display()),
        || file.exists().then_some(()),
    );
    assert_eq!(std::fs::metadata(&file).unwrap().uid(), uid);
}

#[test]
fn a_metrics_dir_drover_creates_is_0700_and_belongs_to_the_program_user() {
    let Some(uid) = nobody().filter(|_| is_root()) else {
        skip("needs root and a user named nobody");
        return;
    };
    let base = open_tempdir();
    let dir = base.path().join("metrics");
    let mut d = Drover::start(&one_program(&format!(
        "{METRICS_WORKER}\nuser = \"nobody\"\nprometheus_multiproc_dir = \"{}\"",
        dir.display()
    )));
    d.keep.push(base);
    let st = d.wait_status("the worker ready", T, |v| all_ready(v, 1));
    let pid = pid_at(&st, 0);
    assert_eq!(
        env_var(pid, "PROMETHEUS_MULTIPROC_DIR"),
        Some(dir.display().to_string())
    );
    assert_private_and_written(&dir, uid, pid);
    d.stop_ok();
}

/// `prometheus_multiproc_dir = true`: a directory for the program's user in drover's runtime
/// directory, which goes with drover however it ends.
fn an_automatic_metrics_dir_goes_with_drover(killed: bool) {
    let Some(uid) = nobody().filter(|_| is_root()) else {
        skip("needs root and a user named nobody");
        return;
    };
    let base = open_tempdir();
    let mut d = Drover::start_with(
        &one_program(&format!(
            "{METRICS_WORKER}\nuser = \"nobody\"\nprometheus_multiproc_dir = true"
        )),
        &[("RUNTIME_DIRECTORY", base.path().to_str().unwrap())],
        &[],
    );
    let st = d.wait_status("the worker ready", T, |v| all_ready(v, 1));
    let pid = pid_at(&st, 0);
    let dir = env_var(pid, "PROMETHEUS_MULTIPROC_DIR").expect("PROMETHEUS_MULTIPROC_DIR");
    let dir = Path::new(&dir);
    let rundir = dir.parent().unwrap().to_path_buf();
    assert_eq!(rundir.parent(), Some(base.path()), "{}", dir.display());
    assert!(
        rundir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("drover-"),
        "{}",
        dir.display()
    );
    assert_private_and_written(dir, uid, pid);
    if killed {
        d.signal(libc::SIGKILL);
        d.wait_exit(T);
        wait_until(T, "the guard to remove the runtime directory", || {
            (!rundir.exists()).then_some(())
        });
    } else {
        d.stop_ok();
        assert!(
            !rundir.exists(),
            "{} removed before drover exits",
            rundir.display()
        );
    }
}

#[test]
fn an_automatic_metrics_dir_is_private_and_removed_when_drover_exits() {
    an_automatic_metrics_dir_goes_with_drover(false);
}

#[test]
fn an_automatic_metrics_dir_is_removed_by_the_guard_when_drover_is_killed() {
    an_automatic_metrics_dir_goes_with_drover(true);
}
