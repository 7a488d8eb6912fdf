//! `drover check` on files: every malformed file in tests/bad_configs exits 2 with the
//! positioned message its first line expects (never a panic); every file in config/ passes.

mod common;
use common::{skip, BIN};
use std::process::Command;

#[test]
fn malformed_configs_exit_2_with_a_positioned_message() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bad_configs");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 15, "the corpus has {} files", files.len());
    let mut wrong = vec![];
    for f in files {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        let expect = text
            .lines()
            .next()
            .unwrap()
            .strip_prefix("# expect: ")
            .expect("first line: # expect: …")
            .trim();
        let out = Command::new(BIN)
            .current_dir(dir)
            .arg("check")
            .arg("-c")
            .arg(f.file_name().unwrap())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2)
            || !err.contains(expect)
            || !err.contains("nothing was started")
            || err.contains("panicked")
        {
            wrong.push(format!(
                "{} (exit {:?}):\n  expected: {expect}\n  got: {err}",
                f.display(),
                out.status.code()
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn every_problem_in_a_file_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("many.toml");
    std::fs::write(&p, "[supervisor]\nshutdown_timeout = \"soon\"\n[program.a]\ncomand = \"x\"\n[program.b]\ncommand = \"y\"\nworkers = -1\n").unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(err.contains("4 problems found"), "{err}");
    for pos in [
        "many.toml:2:20",
        "many.toml:3:1",
        "many.toml:4:1",
        "many.toml:7:11",
    ] {
        assert!(err.contains(pos), "{pos} missing in:\n{err}");
    }
}

#[test]
fn every_shipped_config_passes_check() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    // container.toml reads its token file from DROVER_TOKEN_FILE, as its pod spec sets it
    let secrets = tempfile::tempdir().unwrap();
    let token = secrets.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut n = 0;
    for f in std::fs::read_dir(dir).unwrap().flatten() {
        let out = Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(f.path())
            .env("DROVER_TOKEN_FILE", &token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            f.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let plan = String::from_utf8_lossy(&out.stdout);
        assert!(
            plan.contains("programs (") && plan.contains("is valid"),
            "{plan}"
        );
        n += 1;
    }
    assert!(n >= 4, "config/ holds the demo and one example per use");
}

/// The README's configuration block ("every key") is a file `drover check` accepts as it is,
/// once what it names exists on the machine: `$DATABASE_URL`, the user `www-data` and the token
/// file — the one thing changed here is that file's path, to a token this test writes.
#[test]
fn the_readme_configuration_block_passes_check() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("\n## Configuration\n")
        .nth(1)
        .and_then(|section| section.split("```toml\n").nth(1))
        .and_then(|b| b.split("\n```").next())
        .expect("README.md: a ```toml block under ## Configuration");
    let known = Command::new("id").args(["-u", "www-data"]).output();
    if !known.is_ok_and(|o| o.status.success()) {
        skip("no user www-data here (the README's block runs its workers and step as it)");
        return;
    }
    const TOKEN_FILE: &str = "/run/secrets/drover-token";
    assert!(block.contains(TOKEN_FILE), "{block}");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("drover-token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let file = dir.path().join("drover.toml");
    std::fs::write(&file, block.replace(TOKEN_FILE, token.to_str().unwrap())).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&file)
        .env("DATABASE_URL", "postgresql://app@db.internal/app")
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "drover check on the README's configuration block (exit {:?}):\n{}{plan}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    for what in [
        "control API: on",
        "pre-start steps (1)",
        "programs (2)",
        "2. queue          after api is ready",
        "api autoscale",
    ] {
        assert!(plan.contains(what), "{what} missing in:\n{plan}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let out = Command::new(BIN).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(BIN)
        .args(["check", "-c", "/nonexistent/drover.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot read configuration /nonexistent/drover.toml"));
}

/// What `drover check` prints for a setting chosen from a list is the file's word for it (or
/// plain words), never the Rust name of the value (`restart Always`, `log format Auto`).
#[test]
fn check_speaks_in_words_not_rust_names() {
    const RUST_NAMES: [&str; 18] = [
        "Always",
        "OnFailure",
        "Never",
        "Capture",
        "Inherit",
        "Auto",
        "Text",
        "Json",
        "Journald",
        "Cgroup",
        "Sample",
        "Off",
        "Exit",
        "Stay",
        "Listening",
        "Uptime",
        "Exec",
        "Notify",
    ];
    let dir = tempfile::tempdir().unwrap();
    // every value of every listed setting the shipped files do not already use
    let extra = [
        "[supervisor]\nlog_format = \"text\"\n[budget]\nmode = \"sample\"\nmemory = \"1GiB\"\n[program.a]\ncommand = \"true\"\nrestart = \"on-failure\"\nlog = \"capture\"\n",
        "[supervisor]\nlog_format = \"journald\"\n[budget]\nmode = \"off\"\n[program.a]\ncommand = \"true\"\nrestart = \"never\"\nlog = \"inherit\"\n",
        "[supervisor]\nlog_format = \"json\"\n[budget]\nmode = \"cgroup\"\n[program.a]\ncommand = \"true\"\n",
    ];
    let mut files: Vec<std::path::PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
    for (i, text) in extra.iter().enumerate() {
        let f = dir.path().join(format!("extra{i}.toml"));
        std::fs::write(&f, text).unwrap();
        files.push(f);
    }
    for f in files {
        let out = Command::new(BIN)
            .arg("check")
            .arg("-c")
            .arg(&f)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("programs ("), "{}: {text}", f.display());
        let rust: Vec<&str> = text
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|w| RUST_NAMES.contains(w))
            .collect();
        assert!(
            rust.is_empty(),
            "{}: Rust names {rust:?} in\n{text}",
            f.display()
        );
    }
}

/// `drover check` exits 2 on everything `drover run` refuses to start with before anything
/// starts: a control token it would not accept, TLS files it cannot load. Both say the same.
#[test]
fn check_exits_2_where_run_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short-token");
    std::fs::write(&short, "tooshort\n").unwrap();
    let good = dir.path().join("good-token");
    std::fs::write(&good, "0123456789abcdef0123456789abcdef\n").unwrap();
    let file = |name: &str, supervisor: &str| {
        let f = dir.path().join(name);
        let text = format!(
            "[supervisor]\nstatus = \"127.0.0.1:0\"\n{supervisor}\n[program.w]\ncommand = [\"sleep\", \"1000\"]\n"
        );
        std::fs::write(&f, text).unwrap();
        f
    };
    let run = |args: &[&std::ffi::OsStr]| Command::new(BIN).args(args).output().unwrap();
    let cases = [
        (
            file(
                "short.toml",
                &format!("control_token_file = \"{}\"", short.display()),
            ),
            "shorter than 16 characters",
        ),
        (
            file(
                "missing.toml",
                &format!(
                    "control_token_file = \"{}\"",
                    dir.path().join("absent").display()
                ),
            ),
            "absent",
        ),
        (
            file(
                "tls.toml",
                "tls_cert = \"/nonexistent/tls.crt\"\ntls_key = \"/nonexistent/tls.key\"",
            ),
            "tls",
        ),
    ];
    for (f, says) in &cases {
        let check = run(&["check".as_ref(), "-c".as_ref(), f.as_os_str()]);
        let err = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(2), "check {}: {err}", f.display());
        assert!(err.contains(says), "check {}: {err}", f.display());
        assert!(err.contains("would refuse to start"), "{err}");
        // and run does refuse, with nothing started
        let out = run(&["run".as_ref(), "-c".as_ref(), f.as_os_str()]);
        let run_err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "run {}: {run_err}", f.display());
        assert!(run_err.contains(says), "run {}: {run_err}", f.display());
    }
    // a token run accepts passes check
    let ok = file(
        "good.toml",
        &format!("control_token_file = \"{}\"", good.display()),
    );
    let check = run(&["check".as_ref(), "-c".as_ref(), ok.as_os_str()]);
    assert_eq!(
        check.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
