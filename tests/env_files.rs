//! `env_file`: dotenv files reach workers and steps with python-dotenv's quoting rules, in order
//! (the supervisor's files, the program's, then `env`), are re-read on reload, and their values
//! are never shown (they hold secrets). Every check reads a real worker's /proc/PID/environ.

mod common;
use common::*;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

fn environ(pid: i64) -> HashMap<String, String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .filter_map(|v| {
            let s = String::from_utf8_lossy(v).into_owned();
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// `drover check -c FILE` from another directory than the file's: (exit code, stdout, stderr).
fn check(file: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .current_dir("/")
        .env_remove("DROVER_CONFIG")
        .args(["check", "-c"])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const SLEEPER: &str = "command = [\"sh\", \"-c\", \"exec sleep 100000\"]";

#[test]
fn env_files_reach_workers_with_the_quoting_rules_in_order_under_env() {
    let conf = tempfile::tempdir().unwrap();
    // the supervisor's file: every rule of the format
    std::fs::write(
        conf.path().join("common.env"),
        r#"# a comment line

export EXPORTED=yes
PLAIN = plain value   # a trailing comment
HASH=a#b
SINGLE='literal ${FROM_DROVER} \n $HOME'
DOUBLE="tab\there \"quoted\" back\\slash"
NEWLINE="one\ntwo"
MULTI="first
second"
EXPANDED=${FROM_DROVER}-${EXPORTED}
DEFAULTED=${NOT_SET_ANYWHERE:-fallback}
QUOTED_EXPANSION="<${PLAIN}>"
OVERRIDDEN=by-the-supervisor-file
BY_ENV=by-a-file
"#,
    )
    .unwrap();
    // the program's file comes after it, and `env` over both
    std::fs::write(
        conf.path().join("api.env"),
        "OVERRIDDEN=by-the-program-file\nSEES_EARLIER=${OVERRIDDEN}+${EXPORTED}\n",
    )
    .unwrap();
    let out = conf.path().join("step.out");
    std::fs::write(
        conf.path().join("drover.toml"),
        format!(
            r#"[supervisor]
status = "127.0.0.1:0"
env_file = ["common.env", "-absent.env"]
[[prestart]]
name = "migrate"
command = ["sh", "-c", "printf '%s|%s' \"$EXPANDED\" \"$STEP_ONLY\" > {out}"]
env_file = ["-step.env"]
[program.api]
{SLEEPER}
env_file = ["api.env"]
env = {{ BY_ENV = "by-env" }}
"#,
            out = out.display()
        ),
    )
    .unwrap();
    std::fs::write(conf.path().join("step.env"), "STEP_ONLY='for the step'\n").unwrap();
    let file = conf.path().join("drover.toml");
    // drover runs in another directory: relative env files are the config file's directory's
    let d = Drover::start_args(
        &["run", "-c", file.to_str().unwrap()],
        &[("FROM_DROVER", "outer")],
        &[],
    );
    let st = d.wait_status("api running", T, |v| {
        Drover::worker_pids(v, "api").len() == 1
    });
    let env = environ(Drover::worker_pids(&st, "api")[0]);
    let want = [
        ("EXPORTED", "yes"),
        ("PLAIN", "plain value"),
        ("HASH", "a#b"),
        ("SINGLE", "literal ${FROM_DROVER} \\n $HOME"),
        ("DOUBLE", "tab\there \"quoted\" back\\slash"),
        ("NEWLINE", "one\ntwo"),
        ("MULTI", "first\nsecond"),
        ("EXPANDED", "outer-yes"),
        ("DEFAULTED", "fallback"),
        ("QUOTED_EXPANSION", "<plain value>"),
        ("OVERRIDDEN", "by-the-program-file"),
        ("SEES_EARLIER", "by-the-program-file+yes"),
        ("BY_ENV", "by-env"),
        ("FROM_DROVER", "outer"),
    ];
    for (k, v) in want {
        assert_eq!(
            env.get(k).map(String::as_str),
            Some(v),
            "{k} in the worker's environment"
        );
    }
    assert!(
        !env.contains_key("STEP_ONLY"),
        "a step's file is the step's only"
    );
    // the step got the supervisor's files and its own
    assert_eq!(
        std::fs::read_to_string(&out).unwrap(),
        "outer-yes|for the step"
    );
}

#[test]
fn a_missing_env_file_is_a_positioned_error_unless_it_starts_with_a_dash() {
    let conf = tempfile::tempdir().unwrap();
    let file = conf.path().join("drover.toml");
    let text = format!("[program.api]\n{SLEEPER}\nenv_file = [\".env\", \"-.env.local\"]\n");
    std::fs::write(&file, &text).unwrap();
    let (code, _, err) = check(&file);
    assert_eq!(code, 2, "{err}");
    let env = conf.path().join(".env");
    assert!(
        err.contains(&format!(
            "drover.toml:3:13: [program.api] env_file {}: no such file",
            env.display()
        )),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
    // `drover run` refuses it the same way, before anything starts
    let mut d = Drover::start_args(&["run", "-c", file.to_str().unwrap()], &[], &[]);
    assert_eq!(d.wait_exit(T), 2, "{}", d.stderr());
    assert!(d.stderr().contains("drover.toml:3:13:"), "{}", d.stderr());
    // optional: both may be missing
    std::fs::write(&file, text.replace("\".env\"", "\"-.env\"")).unwrap();
    let (code, out, err) = check(&file);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{} (optional, not there)", env.display())),
        "{out}"
    );
}

#[test]
fn a_malformed_line_is_an_error_naming_the_env_file_and_its_line() {
    let conf = tempfile::tempdir().unwrap();
    let env = conf.path().join("app.env");
    std::fs::write(&env, "A=1\n# fine\nB=\"never closed\nC=3\n").unwrap();
    let file = conf.path().join("drover.toml");
    std::fs::write(
        &file,
        format!("[supervisor]\nenv_file = [\"app.env\"]\n[program.api]\n{SLEEPER}\n"),
    )
    .unwrap();
    let (code, _, err) = check(&file);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "drover.toml:2:13: [supervisor] env_file {}:3: a double quote that is never closed",
            env.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("never closed\nC"),
        "the line's text is not quoted"
    );
}

#[test]
fn a_reload_after_editing_an_env_file_rolls_the_program_onto_the_new_value() {
    // a job (restart = "never") rolls on reload only when its settings changed: an edited env
    // file must count as a change
    let conf = tempfile::tempdir().unwrap();
    let dir = conf.path();
    std::fs::write(dir.join("job.env"), "VERSION=one\n").unwrap();
    let file = dir.join("drover.toml");
    std::fs::write(
        &file,
        format!("[supervisor]\nstatus = \"127.0.0.1:0\"\n[program.job]\n{SLEEPER}\nrestart = \"never\"\nenv_file = [\"job.env\"]\n"),
    )
    .unwrap();
    let d = Drover::start_args(&["run", "-c", file.to_str().unwrap()], &[], &[]);
    let st = d.wait_status("the job ready", T, |v| {
        v["programs"][0]["workers"][0]["ready"] == true
    });
    let first = Drover::worker_pids(&st, "job")[0];
    assert_eq!(environ(first)["VERSION"], "one");
    // a reload with nothing changed leaves the job alone
    d.signal(libc::SIGHUP);
    let st = d.wait_status("the first reload", T, |v| v["last_reload"]["ok"] == true);
    assert!(
        st["last_reload"]["message"]
            .as_str()
            .unwrap()
            .contains("no program's settings changed"),
        "{}",
        st["last_reload"]
    );
    assert_eq!(Drover::worker_pids(&st, "job"), vec![first]);
    // the file changes: the job rolls, and the new worker has the new value
    std::fs::write(dir.join("job.env"), "VERSION=two\n").unwrap();
    d.signal(libc::SIGHUP);
    let st = d.wait_status("a new ready worker", T, |v| {
        v["programs"][0]["rolling"] == false
            && Drover::worker_pids(v, "job").len() == 1
            && Drover::worker_pids(v, "job")[0] != first
            && v["programs"][0]["workers"][0]["ready"] == true
    });
    assert!(
        st["last_reload"]["message"]
            .as_str()
            .unwrap()
            .contains("job rolling"),
        "{}",
        st["last_reload"]
    );
    let second = Drover::worker_pids(&st, "job")[0];
    assert_eq!(environ(second)["VERSION"], "two");
    wait_until(T, "the old worker to be gone", || {
        (!alive(first)).then_some(())
    });
}

#[test]
fn env_file_values_never_appear_in_status_the_log_or_check() {
    let secret = "s3cr3t-from-env-file-4d2a";
    let conf = tempfile::tempdir().unwrap();
    let env = conf.path().join("secrets.env");
    std::fs::write(
        &env,
        format!("API_KEY={secret}\nDSN=\"postgres://u:{secret}@db/x\"\n"),
    )
    .unwrap();
    let file = conf.path().join("drover.toml");
    std::fs::write(
        &file,
        "[supervisor]\nstatus = \"127.0.0.1:0\"\n[program.w]\ncommand = [\"sh\", \"-c\", \"echo started; exec sleep 100000\"]\nenv_file = [\"secrets.env\"]\n",
    )
    .unwrap();
    let d = Drover::start_args(&["run", "-c", file.to_str().unwrap()], &[], &[]);
    let st = d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let pid = Drover::worker_pids(&st, "w")[0];
    assert_eq!(environ(pid)["API_KEY"], secret, "the worker got it");
    // a broken edit whose malformed line holds the secret: the reload error is logged and
    // published, and must not quote it
    std::fs::write(&env, format!("API_KEY={secret}\n{secret}\n")).unwrap();
    d.signal(libc::SIGHUP);
    let st = d.wait_status("the failed reload", T, |v| v["last_reload"]["ok"] == false);
    let msg = st["last_reload"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("secrets.env:2:"), "{msg}");
    let addr = d.status_addr();
    let mut seen = String::new();
    for path in [
        "/status", "/metrics", "/", "/readyz", "/healthz", "/history",
    ] {
        seen += &http_get(&addr, path).unwrap_or_default();
    }
    std::fs::write(&env, format!("API_KEY={secret}\n")).unwrap();
    let (code, out, err) = check(&file);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("secrets.env (API_KEY)"),
        "the file and its keys are shown: {out}"
    );
    seen += &out;
    seen += &err;
    // and a check of a broken file
    std::fs::write(&env, format!("A=\"{secret}\"{secret}\n")).unwrap();
    let (code, out, err) = check(&file);
    assert_eq!(code, 2);
    seen += &out;
    seen += &err;
    seen += &d.stderr();
    seen += &d.stdout();
    assert!(seen.contains("started"), "the worker's own output is there");
    assert!(seen.contains("secrets.env"), "the file is named");
    assert!(
        !seen.contains(secret),
        "an env file's value leaked:\n{seen}"
    );
}

#[test]
fn as_root_an_env_file_others_can_write_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("ownership of env files is checked only when drover runs as root");
        return;
    }
    let conf = tempfile::tempdir().unwrap();
    let env = conf.path().join("app.env");
    std::fs::write(&env, "A=1\n").unwrap();
    let file = conf.path().join("drover.toml");
    std::fs::write(
        &file,
        format!("[program.api]\n{SLEEPER}\nenv_file = [\"app.env\"]\n"),
    )
    .unwrap();
    assert_eq!(check(&file).0, 0, "root's own 0644 file is fine");
    // owned by another user, for workers that run as root
    std::os::unix::fs::chown(&env, Some(65534), None).unwrap();
    let (code, _, err) = check(&file);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("drover.toml:3:13:") && err.contains("belongs to uid 65534"),
        "{err}"
    );
    // the workers' own user may own it
    std::fs::write(
        &file,
        format!("[program.api]\n{SLEEPER}\nuser = \"65534\"\nenv_file = [\"app.env\"]\n"),
    )
    .unwrap();
    let (code, _, err) = check(&file);
    assert_eq!(code, 0, "{err}");
    // but nobody else may write it
    std::fs::set_permissions(&env, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (code, _, err) = check(&file);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("writable by its group or others (mode 666)"),
        "{err}"
    );
}
