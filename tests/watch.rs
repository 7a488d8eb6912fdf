//! The dev runner's file watching: every program watching a changed directory rolls, and an
//! overflowed inotify queue (changes lost) rolls every watching program.

mod common;
use common::*;

use std::path::Path;

/// Two programs of one `sleep` worker each, ready after 100 ms up, watching the given paths.
fn two_programs(a_watch: &Path, b_watch: &Path) -> String {
    let program = |name: &str, path: &Path| {
        format!(
            "[program.{name}]\ncommand = [\"sleep\", \"1000\"]\nworkers = 1\nstop_timeout = \"2s\"\nreadiness = {{ check = \"uptime\", min_uptime = \"100ms\" }}\nwatch = [\"{}\"]\n",
            path.display()
        )
    };
    format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"10s\"\n\n{}\n{}",
        program("a", a_watch),
        program("b", b_watch)
    )
}

fn ready(v: &serde_json::Value) -> bool {
    v["programs"].as_array().is_some_and(|ps| {
        ps.len() == 2
            && ps.iter().all(|p| {
                p["ready_workers"] == 1
                    && p["rolling"] == false
                    && p["workers"].as_array().unwrap().len() == 1
            })
    })
}

/// Wait until every program runs one ready worker that is none of `old`.
fn rolled(d: &Drover, what: &str, old: &[i64]) {
    d.wait_status(what, T, |v| {
        ready(v)
            && ["a", "b"].iter().all(|p| {
                let pids = Drover::worker_pids(v, p);
                pids.len() == 1 && !old.contains(&pids[0])
            })
    });
}

#[test]
fn two_programs_watching_one_directory_both_roll() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = Drover::start(&two_programs(dir.path(), dir.path()));
    let st = d.wait_status("both ready", T, ready);
    let old = [Drover::worker_pids(&st, "a"), Drover::worker_pids(&st, "b")].concat();
    std::fs::write(dir.path().join("app.py"), "v = 2\n").unwrap();
    rolled(&d, "both programs rolled after one change", &old);
    d.stop_ok();
}

/// Restores a sysctl when dropped.
struct Sysctl(&'static str, String);

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0, &self.1);
    }
}

#[test]
fn an_overflowed_queue_rolls_every_watching_program() {
    const QUEUE: &str = "/proc/sys/fs/inotify/max_queued_events";
    let Ok(was) = std::fs::read_to_string(QUEUE) else {
        skip("no /proc/sys/fs/inotify/max_queued_events here");
        return;
    };
    // an inotify instance takes its queue size from this when it is created: drover's, 16 events
    let mut small = Some(Sysctl(QUEUE, was.trim().to_string()));
    if std::fs::write(QUEUE, "16").is_err() {
        skip("cannot lower fs.inotify.max_queued_events (needs root)");
        return;
    }
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut d = Drover::start(&two_programs(da.path(), db.path()));
    let st = d.wait_status("both ready", T, ready);
    small.take(); // drover's instance exists (workers start after the watch): restore the limit
    let old = [Drover::worker_pids(&st, "a"), Drover::worker_pids(&st, "b")].concat();
    // drover stopped, a burst of changes in a's directory only: far more than 16 events queue
    d.signal(libc::SIGSTOP);
    for i in 0..100 {
        std::fs::write(da.path().join(format!("f{i}.py")), "x").unwrap();
    }
    d.signal(libc::SIGCONT);
    // b's directory never changed, but what was lost could have been b's: b rolls too
    rolled(&d, "both programs rolled after the overflow", &old);
    assert!(
        d.logged("the inotify queue overflowed"),
        "the overflow is said in the log"
    );
    d.stop_ok();
}
