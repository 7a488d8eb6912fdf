//! Relative paths in a configuration file are the file's directory's: `cwd`, unix socket paths,
//! `watch`; a relative command with a `/` is the worker's `cwd`'s, as a shell after `cd` would
//! see it. So a file starts the same from any working directory, and `check` and `run` agree.

mod common;
use common::*;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

/// `proj/drover.toml` with a relative `cwd` (`app`), a relative command (`bin/serve`, in
/// `proj/app/`) and a relative unix socket (`run/http.sock`); the command notes the directory
/// it started in and execs the demo worker.
fn project(root: &Path) {
    let app = root.join("proj/app");
    std::fs::create_dir_all(app.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("proj/run")).unwrap();
    let serve = app.join("bin/serve");
    std::fs::write(
        &serve,
        format!("#!/bin/sh\npwd > started-in\nexec {BIN} \"$@\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&serve, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        root.join("proj/drover.toml"),
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[socket.http]
listen = "unix:run/http.sock"
[program.web]
command = ["bin/serve", "demo-worker"]
cwd = "app"
sockets = ["http"]
stop_timeout = "5s"
"#,
    )
    .unwrap();
}

#[test]
fn a_file_elsewhere_with_a_relative_cwd_and_command_starts_from_any_directory() {
    let root = tempfile::tempdir().unwrap();
    project(root.path());
    let proj = root.path().join("proj");
    let sock = proj.join("run/http.sock");
    // from a temp dir of drover's own, given the file by a path relative to it
    let rel = format!(
        "../{}/proj/drover.toml",
        root.path().file_name().unwrap().to_str().unwrap()
    );
    // and from the file's own directory (where a relative cwd was joined twice at spawn:
    // proj/app/app/bin/serve)
    let cd = format!("cd {} && exec \"$0\" \"$@\"", proj.display());
    let starts: [Box<dyn Fn() -> Drover>; 2] = [
        Box::new(move || Drover::start_args(&["run", "-c", &rel], &[], &[])),
        Box::new(move || {
            Drover::start_args(&["run", "-c", "drover.toml"], &[], &["sh", "-c", &cd])
        }),
    ];
    for start in starts {
        let _ = std::fs::remove_file(proj.join("app/started-in"));
        let mut d = start();
        d.wait_status("the worker ready", T, |v| all_ready(v, 1));
        // the worker started in proj/app, from proj/app/bin/serve
        let started = std::fs::read_to_string(proj.join("app/started-in")).unwrap();
        assert_eq!(started.trim(), proj.join("app").to_str().unwrap());
        // the socket is proj/run/http.sock, and the worker answers on it
        assert!(
            d.logged(&format!("socket http listening on unix:{}", sock.display())),
            "{}",
            d.stderr()
        );
        let body = wait_until(T, "an answer through the socket", || {
            use std::io::{Read, Write};
            let mut c = std::os::unix::net::UnixStream::connect(&sock).ok()?;
            c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
            let mut b = String::new();
            c.read_to_string(&mut b).ok()?;
            b.contains("demo-worker web.0").then_some(b)
        });
        assert!(body.contains("200 OK"), "{body}");
        d.stop_ok();
    }
}

#[test]
fn check_and_run_agree_on_relative_paths() {
    let root = tempfile::tempdir().unwrap();
    project(root.path());
    let file = root.path().join("proj/drover.toml");
    let check = |cwd: &Path| {
        let out = Command::new(BIN)
            .current_dir(cwd)
            .arg("check")
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // from anywhere: the same absolute paths, and nothing to warn about
    for cwd in [Path::new("/"), root.path()] {
        let out = check(cwd);
        assert!(!out.contains("warnings:"), "from {}: {out}", cwd.display());
        assert!(
            out.contains(&format!(
                "unix:{}",
                root.path().join("proj/run/http.sock").display()
            )),
            "{out}"
        );
        assert!(out.contains("command  bin/serve demo-worker"), "{out}");
    }
    // a command that is not where the cwd says: check says so, naming where it looked
    std::fs::remove_file(root.path().join("proj/app/bin/serve")).unwrap();
    let out = check(Path::new("/"));
    let looked = root.path().join("proj/app/bin/serve");
    assert!(
        out.contains(&format!(
            "program web: {} does not exist here",
            looked.display()
        )),
        "{out}"
    );
}
