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

/// The messages that announce a roll for a watched change.
fn roll_lines(d: &Drover) -> Vec<String> {
    d.messages()
        .into_iter()
        .filter(|m| m.ends_with("; rolling restart"))
        .collect()
}

/// Wait until program `app` runs one ready worker that is not `old`; its pid.
fn replaced(d: &Drover, what: &str, old: i64) -> i64 {
    let st = d.wait_status(what, T, |v| {
        let pids = Drover::worker_pids(v, "app");
        all_ready(v, 1) && v["programs"][0]["rolling"] == false && pids != [old]
    });
    Drover::worker_pids(&st, "app")[0]
}

/// What an app writes under its own directory on every request: a log line, a database page
/// and its journal, a log in a subdirectory. Each file is opened, appended to and closed.
fn app_writes(dir: &Path) {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    for _ in 0..3 {
        for f in ["app.log", "data.db", "data.db-journal", "logs/access.log"] {
            use std::io::Write;
            let mut o = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(f))
                .unwrap();
            o.write_all(b"a request\n").unwrap();
        }
    }
}

#[test]
fn a_one_line_watch_rolls_for_python_files_and_not_for_what_the_app_writes() {
    let src = tempfile::tempdir().unwrap();
    let mut d = Drover::start_args(
        &[
            "run",
            "--workers",
            "1",
            "--status",
            "127.0.0.1:0",
            "--watch",
            src.path().to_str().unwrap(),
            "--",
            "sleep",
            "1000",
        ],
        &[],
        &[],
    );
    let st = d.wait_status("one ready worker", T, |v| all_ready(v, 1));
    let first = Drover::worker_pids(&st, "app")[0];
    // the log and database writes are queued before the code change: had they counted, the roll
    // would name them (or come twice)
    app_writes(src.path());
    std::fs::write(src.path().join("main.py"), "v = 2\n").unwrap();
    let second = replaced(&d, "rolled after main.py changed", first);
    let main_py = src.path().join("main.py");
    assert_eq!(
        roll_lines(&d),
        [format!(
            "program app: {} changed; rolling restart",
            main_py.display()
        )],
        "one roll, naming main.py alone"
    );
    // and again, with the roll behind it
    app_writes(src.path());
    std::fs::create_dir(src.path().join("pkg")).unwrap();
    std::fs::write(src.path().join("pkg/models.py"), "x = 1\n").unwrap();
    replaced(&d, "rolled after pkg/models.py appeared", second);
    let lines = roll_lines(&d);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[1].contains("pkg/models.py changed"), "{lines:?}");
    for l in &lines {
        assert!(!l.contains(".log") && !l.contains(".db"), "{l}");
    }
    d.stop_ok();
}

#[test]
fn watch_include_and_exclude_choose_the_files() {
    let (src, etc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    std::fs::create_dir_all(src.path().join("templates")).unwrap();
    std::fs::create_dir_all(src.path().join("generated")).unwrap();
    let settings = etc.path().join("settings.yaml");
    std::fs::write(&settings, "a: 1\n").unwrap();
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"10s\"\n\n[program.app]\ncommand = [\"sleep\", \"1000\"]\nstop_timeout = \"2s\"\nreadiness = {{ check = \"uptime\", min_uptime = \"100ms\" }}\nwatch = [\"{}\", \"{}\"]\nwatch_include = [\"*.py\", \"templates/*.html\"]\nwatch_exclude = [\"generated\", \"*_test.py\"]\n",
        src.path().display(),
        settings.display()
    ));
    let st = d.wait_status("one ready worker", T, |v| all_ready(v, 1));
    let mut pid = Drover::worker_pids(&st, "app")[0];
    // what counts, each after what must not: a roll names only what counts
    let steps: [(&[&str], &str); 2] = [
        (
            &[
                "generated/models.py",
                "app_test.py",
                "index.html",
                "notes.txt",
            ],
            "templates/index.html",
        ),
        (&["generated/schema.py", "static.css"], "api.py"),
    ];
    for (i, (ignored, counted)) in steps.iter().enumerate() {
        for f in *ignored {
            std::fs::write(src.path().join(f), "x").unwrap();
        }
        std::fs::write(src.path().join(counted), "x").unwrap();
        pid = replaced(&d, &format!("rolled after {counted} changed"), pid);
        let lines = roll_lines(&d);
        assert_eq!(lines.len(), i + 1, "{lines:?}");
        let want = format!(
            "{} changed; rolling restart",
            src.path().join(counted).display()
        );
        assert!(lines[i].ends_with(&want), "{lines:?}");
    }
    // a file named in `watch` itself counts, whatever its name
    std::fs::write(&settings, "a: 2\n").unwrap();
    replaced(&d, "rolled after settings.yaml changed", pid);
    assert!(
        roll_lines(&d)[2].contains("settings.yaml changed"),
        "{:?}",
        roll_lines(&d)
    );
    d.stop_ok();
}

/// A FastAPI app that, like many, logs to a file and keeps an SQLite database beside its code.
const APP: &str = r#"import os, sqlite3
from fastapi import FastAPI

HERE = os.path.dirname(os.path.abspath(__file__))
VERSION = 1
app = FastAPI()
log = open(os.path.join(HERE, "app.log"), "a")
db = sqlite3.connect(os.path.join(HERE, "data.db"), isolation_level=None, check_same_thread=False)
db.execute("create table if not exists hits (pid integer)")


@app.get("/")
def hit():
    db.execute("insert into hits values (?)", (os.getpid(),))
    log.write(f"hit by {os.getpid()}\n")
    log.flush()
    return {"pid": os.getpid(), "version": VERSION}
"#;

#[test]
fn a_fastapi_app_writing_its_log_and_database_is_rolled_only_by_its_code() {
    let Some(py) = fastapi_python() else {
        skip("no Python with fastapi and uvicorn (set DROVER_TEST_PYTHON)");
        return;
    };
    let app = tempfile::tempdir().unwrap();
    let main_py = app.path().join("main.py");
    std::fs::write(&main_py, APP).unwrap();
    let dir = app.path().to_str().unwrap();
    let mut d = Drover::start_args(
        &[
            "run",
            "--workers",
            "2",
            "--bind",
            "127.0.0.1:0",
            "--status",
            "127.0.0.1:0",
            "--watch",
            dir,
            "--",
            &py,
            "-m",
            "uvicorn",
            "main:app",
            "--fd",
            "3",
            "--app-dir",
            dir,
            "--no-access-log",
        ],
        &[],
        &[],
    );
    let addr = d.logged_addr("socket http listening on ");
    let st = d.wait_status("two ready workers", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "app");
    for _ in 0..30 {
        let body = http_get(&addr, "/").expect("GET /");
        assert!(body.contains("\"version\":1"), "{body}");
    }
    let db = std::fs::metadata(app.path().join("data.db")).unwrap().len();
    assert!(db > 0, "the app wrote its database");
    // every request wrote the log and the database; only this rolls the workers
    std::fs::write(&main_py, APP.replace("VERSION = 1", "VERSION = 2")).unwrap();
    d.wait_status("both workers replaced", T, |v| {
        let now = Drover::worker_pids(v, "app");
        all_ready(v, 2)
            && v["programs"][0]["rolling"] == false
            && now.iter().all(|p| !old.contains(p))
    });
    let body = http_get(&addr, "/").expect("GET / after the roll");
    assert!(
        body.contains("\"version\":2"),
        "the new code serves: {body}"
    );
    assert_eq!(
        roll_lines(&d),
        [format!(
            "program app: {} changed; rolling restart",
            main_py.display()
        )],
        "one roll, for main.py"
    );
    d.stop_ok();
}
