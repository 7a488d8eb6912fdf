//! drover as PID 1, for real, inside `unshare --pid --fork --mount-proc`.

mod common;
use common::*;
use std::time::Duration;

fn unshare_works() -> bool {
    std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn children(pid: i32) -> Vec<i64> {
    let mut out = vec![];
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let p = t.path().join("children");
        out.extend(
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|s| s.parse::<i64>().ok()),
        );
    }
    out
}

/// drover started as PID 1 of a new pid namespace: the Drover and drover's pid outside it, or
/// None (SKIPPED printed) where unshare cannot make one.
fn start_pid1(config: &str) -> Option<(Drover, i64)> {
    if !unshare_works() {
        skip(
            "unshare --pid --fork --mount-proc does not work here (needs root or user namespaces)",
        );
        return None;
    }
    let d = Drover::start_with(
        config,
        &[],
        &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
    );
    // unshare forks drover, which is PID 1 inside; find its pid outside
    let drover = wait_until(T, "drover inside the namespace", || {
        children(d.pid).first().copied()
    });
    Some((d, drover))
}

/// (pid, state, cmdline) of every process whose parent is `ppid`.
fn procs_with_parent(ppid: i64) -> Vec<(i64, char, String)> {
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i64>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.len() > 2 && f[1].parse::<i64>().ok() == Some(ppid) {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .replace('\0', " ");
            v.push((pid, f[0].chars().next().unwrap_or('?'), cmd));
        }
    }
    v
}

#[test]
fn as_pid1_orphans_are_reaped_and_term_exits_0() {
    let Some((mut d, drover)) = start_pid1(
        r#"
[supervisor]
status = "127.0.0.1:0"
[program.spawner]
# 20 double-forked orphans: each subshell exits at once, its sleep is re-parented to PID 1
command = "for i in $(seq 20); do (sleep 0.7 &); done; touch {dir}/forked; exec sleep 1000"
"#,
    ) else {
        return;
    };
    let st = d.wait_status("the status endpoint", T, |v| v["state"] == "running");
    assert_eq!(st["pid"], 1, "drover sees itself as PID 1");
    assert_eq!(st["pid1"], true);
    wait_until(T, "the orphans to be forked", || {
        d.path("forked").exists().then_some(())
    });
    // they were re-parented to drover…
    let orphans = procs_with_parent(drover)
        .into_iter()
        .filter(|(_, _, c)| c.starts_with("sleep 0.7"))
        .count();
    assert!(
        orphans > 0,
        "orphans should be drover's children now: {:?}",
        procs_with_parent(drover)
    );
    // …and once they exit, none stays a zombie
    wait_until(
        T,
        "orphans exited and reaped (no zombie children of drover)",
        || {
            let kids = procs_with_parent(drover);
            let left = kids
                .iter()
                .filter(|(_, s, c)| *s == 'Z' || c.starts_with("sleep 0.7"))
                .count();
            (left == 0).then_some(())
        },
    );
    // SAFETY: TERM to the drover we started (outer pid of the namespace's PID 1).
    unsafe { libc::kill(drover as i32, libc::SIGTERM) };
    assert_eq!(
        d.wait_exit(T),
        0,
        "unshare passes on drover's exit code: {}",
        d.stderr()
    );
}

#[test]
fn as_pid1_a_thousand_short_lived_orphans_leave_no_zombie() {
    let Some((mut d, drover)) = start_pid1(
        r#"
[supervisor]
status = "127.0.0.1:0"
[program.spawner]
# 1,000 orphans that exit at once: each `true` is re-parented to PID 1 as its subshell exits
command = "for i in $(seq 1000); do (true &); done; touch {dir}/forked; exec sleep 1000"
"#,
    ) else {
        return;
    };
    d.wait_status("the status endpoint", T, |v| v["state"] == "running");
    wait_until(
        Duration::from_secs(60),
        "the 1,000 orphans to be forked",
        || d.path("forked").exists().then_some(()),
    );
    wait_until(T, "no zombie among drover's children", || {
        let kids = procs_with_parent(drover);
        let zombies = kids.iter().filter(|(_, s, _)| *s == 'Z').count();
        // all that may be left is the worker itself (sleep 1000)
        (zombies == 0 && !kids.iter().any(|(_, _, c)| c.starts_with("true"))).then_some(())
    });
    let st = d.status();
    assert_eq!(
        st["programs"][0]["workers"][0]["restarts"], 0,
        "the worker itself never exited"
    );
    // SAFETY: TERM to the drover we started (outer pid of the namespace's PID 1).
    unsafe { libc::kill(drover as i32, libc::SIGTERM) };
    assert_eq!(d.wait_exit(T), 0, "{}", d.stderr());
}

#[test]
fn as_pid1_a_crash_looping_program_exits_1_by_default() {
    if !unshare_works() {
        skip("unshare --pid --fork --mount-proc does not work here");
        return;
    }
    let mut d = Drover::start_with(
        // it serves once (ready after 200 ms), then fails at once every time: a crash loop of an
        // app that did start (one that never did is a deployment error, PID 1 or not)
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nexhausted_after = 3\n[program.bad]\ncommand = \"if [ -e {dir}/served ]; then exit 1; fi; touch {dir}/served; sleep 1; exit 1\"\nreadiness = { check = \"uptime\", min_uptime = \"200ms\" }\nbackoff = { initial = \"10ms\", max = \"40ms\" }\n",
        &[],
        &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"],
    );
    // no on_exhausted set: as PID 1 the default is exit, so Kubernetes sees CrashLoopBackOff
    assert_eq!(d.wait_exit(T), 1, "{}", d.stderr());
    assert!(d.logged("on_exhausted = \"exit\""), "{}", d.stderr());
}

#[test]
fn as_pid1_a_sigkilled_drover_leaves_no_worker_grandchild_or_port() {
    let Some((mut d, drover)) = start_pid1(
        r#"
[supervisor]
status = "127.0.0.1:0"
[socket.http]
listen = "127.0.0.1:0"
[program.web]
sockets = ["http"]
workers = 2
# each worker leaves a grandchild in a session of its own
command = "setsid sleep 4711 & exec {bin} demo-worker"
"#,
    ) else {
        return;
    };
    d.wait_status("2 ready workers", T, |v| {
        v["programs"][0]["ready_workers"] == 2
    });
    let http = d.logged_addr("socket http listening on ");
    let mut everyone = vec![];
    let mut stack = vec![drover];
    while let Some(p) = stack.pop() {
        let kids = children(p as i32);
        everyone.extend(&kids);
        stack.extend(kids);
    }
    assert!(
        everyone.len() >= 4,
        "2 workers and 2 grandchildren: {everyone:?}"
    );
    // SAFETY: SIGKILL to the drover we started (outer pid of the namespace's PID 1).
    unsafe { libc::kill(drover as i32, libc::SIGKILL) };
    d.wait_exit(T);
    wait_until(T, "every process of the namespace gone", || {
        everyone.iter().all(|p| !alive(*p)).then_some(())
    });
    wait_until(T, "the port free", || port_free(&http).then_some(()));
}

const UNSHARE: &[&str] = &["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"];

/// `drover run -- COMMAND` as PID 1 of a new namespace (a container's `ENTRYPOINT ["drover",
/// "run", "--"]`): None (SKIPPED) where unshare cannot make one.
fn init(command: &[&str]) -> Option<Drover> {
    if !unshare_works() {
        skip("unshare --pid --fork --mount-proc does not work here");
        return None;
    }
    let args: Vec<&str> = ["run", "--"].iter().chain(command).copied().collect();
    Some(Drover::start_args(&args, &[], UNSHARE))
}

#[test]
fn as_pid1_a_one_line_init_exits_with_its_childs_code() {
    // (the child's command, drover's exit code): its code, or 128 + the signal that killed it
    let cases: [(&[&str], i32); 3] = [
        (&["sh", "-c", "exit 3"], 3),
        (&["sh", "-c", "kill -9 $$"], 137),
        (&["true"], 0),
    ];
    for (command, want) in cases {
        let Some(mut d) = init(command) else { return };
        let t0 = std::time::Instant::now();
        assert_eq!(d.wait_exit(T), want, "{command:?}: {}", d.stderr());
        println!(
            "FIGURE init {command:?}: exit {want} after {:.0?} from start",
            t0.elapsed()
        );
    }
}

#[test]
fn as_pid1_term_reaches_the_one_line_childs_group() {
    let Some(mut d) = init(&[
        "sh",
        "-c",
        "trap 'echo term > got-term; exit 0' TERM; touch up; while :; do sleep 0.05; done",
    ]) else {
        return;
    };
    // the child runs in drover's temp dir (its cwd)
    wait_until(T, "the child to start", || {
        d.path("up").exists().then_some(())
    });
    let drover = wait_until(T, "drover inside the namespace", || {
        children(d.pid).first().copied()
    });
    // SAFETY: TERM to the drover we started (outer pid of the namespace's PID 1).
    unsafe { libc::kill(drover as i32, libc::SIGTERM) };
    assert_eq!(d.wait_exit(T), 0, "a clean shutdown: {}", d.stderr());
    assert_eq!(
        std::fs::read_to_string(d.path("got-term")).unwrap_or_default(),
        "term\n",
        "the child got TERM and ended on its own terms"
    );
}
