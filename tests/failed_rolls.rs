//! Rolls that do what the docs say, and failed ones that show where people look: a roll whose
//! replacement cannot start is abandoned, said in one log line (never a "restarting in …" that
//! does not happen), recorded per program in `/status` (`last_roll`), shown by `drover status`
//! (exit 3), `drover top`; `drover ctl restart|reload --wait` waits for the roll and exits 3 when it
//! was abandoned, 0 when it was done. A reload rolls every program even when the file is
//! unchanged (new code).

mod common;
use common::*;
use std::process::{Command, Output};

const TOKEN: &str = "failed-rolls-token-0123456789";

/// Two demo workers whose next start fails (exit 3, as uvicorn does for an app it cannot import)
/// while `{dir}/broken` exists: a bad deploy, without touching drover's file.
const BREAKABLE: &str = "[\"sh\", \"-c\", \"if [ -e {dir}/broken ]; then echo 'SyntaxError: invalid syntax' >&2; exit 3; fi; exec {bin} demo-worker\"]";

/// drover with program `web` of 2 workers running `command`, its token in `keep[0]`.
fn start(command: &str, extra_prog: &str) -> Drover {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, TOKEN).unwrap();
    let mut d = Drover::start(&format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
control_token_file = "{}"
[socket.http]
listen = "127.0.0.1:0"
[program.web]
command = {command}
sockets = ["http"]
workers = 2
stop_timeout = "5s"
backoff = {{ initial = "50ms" }}
{extra_prog}
"#,
        tok.display()
    ));
    d.keep.push(dir);
    d
}

/// `drover ARGS…` against this drover's status endpoint.
fn drover(d: &Drover, args: &[&str]) -> Output {
    let url = format!("http://{}", d.status_addr());
    let tok = d.keep[0].path().join("token");
    let mut full: Vec<&str> = vec![args[0], "--url", &url];
    if args[0] == "ctl" {
        full.extend(["--token-file", tok.to_str().unwrap()]);
    }
    full.extend(&args[1..]);
    Command::new(BIN).args(&full).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn last_roll(v: &serde_json::Value) -> &serde_json::Value {
    &v["programs"][0]["last_roll"]
}

#[test]
fn an_abandoned_restart_is_recorded_shown_and_ctl_wait_exits_3() {
    let mut d = start(BREAKABLE, "");
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "web");
    std::fs::write(d.path("broken"), "").unwrap();

    let o = drover(&d, &["ctl", "restart", "web", "--wait"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rolling restart of web abandoned: the replacement for web.0 did not become ready (pid ")
            && err.contains("exited with exit code 3 after")
            && err.contains("the old workers keep serving"),
        "{}",
        text(&o)
    );

    // recorded per program: when, why, which worker, the old workers kept
    let st = d.status();
    let last = last_roll(&st);
    assert_eq!(last["outcome"], "abandoned", "{last}");
    assert_eq!(last["reason"], "restart");
    assert_eq!(last["worker"], 0);
    assert_eq!(last["old_workers_kept"], true);
    assert!(last["ended_at"].as_u64().unwrap() > 1_600_000_000, "{last}");
    assert!(
        last["why"].as_str().unwrap().contains("exit code 3"),
        "{last}"
    );
    assert_eq!(st["programs"][0]["rolling"], false);
    assert_eq!(
        Drover::worker_pids(&st, "web"),
        old,
        "the old workers serve"
    );
    let http = d.logged_addr("socket http listening on ");
    assert!(http_get(&http, "/").unwrap().contains("demo-worker web."));

    // one line says it; nothing announces a restart of the replacement that never happens
    let m = d.messages();
    assert_eq!(
        m.iter()
            .filter(|m| m.contains("rolling restart of web abandoned"))
            .count(),
        1,
        "{m:#?}"
    );
    assert!(
        !m.iter().any(|m| m.contains("restarting in")),
        "a restart announced that did not happen: {m:#?}"
    );

    // drover status: the line, and exit 3 (ready, but the last roll was abandoned)
    let o = drover(&d, &["status"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // a container healthcheck: serving is healthy, whatever the last deploy did
    let hc = drover(&d, &["status", "--quiet", "--ready"]);
    assert_eq!(hc.status.code(), Some(0), "{}", text(&hc));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("roll web")
            && out.contains("ABANDONED")
            && out.contains("the old workers keep serving"),
        "{}",
        text(&o)
    );
    // drover top (one snapshot: stdout is not a terminal)
    let o = drover(&d, &["top"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("LAST ROLL ABANDONED: the replacement for web.0"),
        "{}",
        text(&o)
    );

    // fixed: the same restart is done, ctl --wait says so with 0, status goes back to 0
    std::fs::remove_file(d.path("broken")).unwrap();
    let o = drover(&d, &["ctl", "restart", "web", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("web: rolling restart: ")
            && out.contains(" of 2 replaced")
            && out.contains("program web: rolling restart done in")
            && out.contains("(2 of 2 workers replaced)"),
        "progress, then the end: {}",
        text(&o)
    );
    let st = d.status();
    assert_eq!(last_roll(&st)["outcome"], "done");
    assert!(Drover::worker_pids(&st, "web")
        .iter()
        .all(|p| !old.contains(p)));
    let o = drover(&d, &["status", "--quiet"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    d.stop_ok();
}

#[test]
fn ctl_reload_wait_rolls_an_unchanged_file_and_exits_3_on_a_broken_app() {
    let mut d = start(BREAKABLE, "");
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "web");
    // the file is unchanged: every worker is replaced anyway (new code)
    let o = drover(&d, &["ctl", "reload", "--wait"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no program's settings changed; web rolling"),
        "{}",
        text(&o)
    );
    let st = d.status();
    assert!(all_ready(&st, 2), "{st}");
    let new = Drover::worker_pids(&st, "web");
    assert!(new.iter().all(|p| !old.contains(p)), "{old:?} -> {new:?}");
    assert_eq!(last_roll(&st)["reason"], "reload");
    assert_eq!(last_roll(&st)["outcome"], "done");
    assert_eq!(last_roll(&st)["replaced"], 2);

    // a broken app: the reload's roll is abandoned, the README's last_reload says it too
    std::fs::write(d.path("broken"), "").unwrap();
    let o = drover(&d, &["ctl", "reload", "--wait"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    let st = d.status();
    assert_eq!(last_roll(&st)["outcome"], "abandoned");
    assert_eq!(st["last_reload"]["ok"], false, "{}", st["last_reload"]);
    assert!(
        st["last_reload"]["message"]
            .as_str()
            .unwrap()
            .contains("the old workers keep serving"),
        "{}",
        st["last_reload"]
    );
    assert_eq!(Drover::worker_pids(&st, "web"), new);
    d.stop_ok();
}

#[test]
fn a_syntax_error_saved_in_watch_mode_shows_an_abandoned_roll() {
    let app = tempfile::tempdir().unwrap();
    let src = app.path().join("app.sh");
    std::fs::write(&src, "GREETING=one\n").unwrap();
    let mut d = start(
        &format!(
            "[\"sh\", \"-c\", \". {}/app.sh && exec {{bin}} demo-worker\"]",
            app.path().display()
        ),
        &format!(
            "watch = [\"{}\"]\nwatch_include = [\"*.sh\"]",
            app.path().display()
        ),
    );
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "web");
    // saved with a syntax error: sh cannot read it, the replacement exits 2
    std::fs::write(&src, "GREETING=(one\n").unwrap();
    let st = d.wait_status("the watch roll to be abandoned", T, |v| {
        last_roll(v)["outcome"] == "abandoned"
    });
    let last = last_roll(&st);
    assert_eq!(last["reason"], "restart", "{last}");
    assert!(
        last["message"].as_str().unwrap().contains(
            "rolling restart of web abandoned: the replacement for web.0 did not become ready"
        ),
        "{last}"
    );
    assert!(
        last["why"].as_str().unwrap().contains("exit code 2"),
        "{last}"
    );
    assert_eq!(
        Drover::worker_pids(&st, "web"),
        old,
        "the old workers serve"
    );
    // fixed and saved again: rolled, and the record says done
    std::fs::write(&src, "GREETING=two\n").unwrap();
    d.wait_status("the fixed code rolled", T, |v| {
        last_roll(v)["outcome"] == "done"
            && all_ready(v, 2)
            && Drover::worker_pids(v, "web")
                .iter()
                .all(|p| !old.contains(p))
    });
    d.keep.push(app);
    d.stop_ok();
}
