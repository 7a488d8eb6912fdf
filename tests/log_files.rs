//! `[program.NAME.log] file = ...`: real drover, real workers, real files. Rotation keeps whole
//! lines and exactly `backups` old files; a full disk costs counted, marked lines and never a
//! stalled worker; what a worker plants in the log directory is neither followed nor clobbered;
//! reload reopens; lines are on disk when drover exits.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

/// A config with one program `w` running `script` under `sh -c`, `log` (more of its keys, then
/// its `[program.w.log]` table) after it. drover's stdout is JSON lines here (not a terminal).
fn cfg(script: &str, log: &str) -> String {
    format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"

[program.w]
command = ["sh", "-c", '''{script}''']
{log}
"#
    )
}

/// The lines of `path` that are complete (a last line still being written is left out).
fn lines(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete.lines().map(String::from).collect()
}

/// The number a line `TIMESTAMP w.0 | n 00001234 xxx` carries, checking it whole on the way.
fn numbered(line: &str) -> u64 {
    let (stamp, rest) = line.split_once(' ').expect("a timestamp");
    assert!(
        stamp.len() == 24 && stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
        "timestamp of {line:?}"
    );
    let text = rest
        .strip_prefix("w.0 | n ")
        .unwrap_or_else(|| panic!("label of {line:?}"));
    let (n, pad) = text.split_at(8);
    assert_eq!(
        pad,
        format!(" {}", "x".repeat(40)),
        "a whole line: {line:?}"
    );
    n.parse().unwrap()
}

fn printer(count: u64) -> String {
    format!(
        r#"awk 'BEGIN {{ for (i = 0; i < {count}; i++) printf "n %08d %s\n", i, "{}" }}'; exec sleep 1000"#,
        "x".repeat(40)
    )
}

fn metric(d: &Drover, name_labels: &str) -> Option<u64> {
    let body = http_get(&d.status_addr(), "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(name_labels)?.trim().parse().ok())
}

#[test]
fn rotation_keeps_whole_lines_and_exactly_the_backups() {
    let total = 20_000;
    let mut d = Drover::start(&cfg(
        &printer(total),
        "[program.w.log]\nfile = \"{dir}/logs/w.log\"\nmax_size = \"4KiB\"\nbackups = 3\n",
    ));
    let log = d.path("logs/w.log");
    wait_until(T, "the last line in w.log", || {
        lines(&log)
            .last()
            .filter(|l| numbered(l) == total - 1)
            .map(|_| ())
    });
    let files: Vec<PathBuf> = ["w.log.3", "w.log.2", "w.log.1", "w.log"]
        .iter()
        .map(|n| d.path(&format!("logs/{n}")))
        .collect();
    assert!(!d.path("logs/w.log.4").exists(), "only 3 backups are kept");
    let mut all = vec![];
    for f in &files {
        let size = std::fs::metadata(f).unwrap().len();
        assert!(size <= 4096, "{} is {size} bytes", f.display());
        let text = std::fs::read_to_string(f).unwrap();
        assert!(
            text.ends_with('\n'),
            "{} ends on a line boundary",
            f.display()
        );
        all.extend(text.lines().map(numbered));
    }
    // the oldest are gone with the files beyond the backups; everything newer is there, in order
    let first = all[0];
    assert!(first > 0, "older lines were rotated away");
    let want: Vec<u64> = (first..total).collect();
    assert_eq!(all, want, "no line lost or doubled between the kept files");
    let rotations = metric(&d, "drover_log_file_rotations_total{program=\"w\"}").unwrap();
    assert!(rotations >= 100, "{rotations} rotations");
    let bytes = metric(&d, "drover_log_file_bytes_total{program=\"w\"}").unwrap();
    assert!(bytes >= total * 60, "{bytes} bytes written");
    // the lines went to the file, not to drover's stdout
    assert!(!d.stdout().contains("n 00000000"), "stdout: {}", d.stdout());
    d.stop_ok();
}

#[test]
fn lines_are_on_disk_when_drover_exits_and_files_are_private() {
    let mut d = Drover::start(&cfg(
        r#"awk 'BEGIN { for (i = 0; i < 3000; i++) printf "n %08d %s\n", i, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }'"#,
        "restart = \"never\"\n[program.w.log]\nfile = \"{dir}/logs/deep/w.log\"\n",
    ));
    // the worker exits at once; drover, its work done, exits with it
    assert_eq!(d.wait_exit(T), 0, "{}", d.stderr());
    let log = d.path("logs/deep/w.log");
    let got: Vec<u64> = lines(&log).iter().map(|l| numbered(l)).collect();
    assert_eq!(
        got,
        (0..3000).collect::<Vec<_>>(),
        "every line written before exit"
    );
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "a new log file's mode");
    let dmode = std::fs::metadata(d.path("logs/deep")).unwrap().mode() & 0o777;
    assert_eq!(dmode, 0o750, "a created directory's mode");
}

#[test]
fn a_full_disk_drops_counted_marked_lines_and_never_stalls_the_worker() {
    let d0 = tempfile::tempdir().unwrap();
    let mnt = d0.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&mnt)
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        return skip("cannot mount a 64 KiB tmpfs (needs root)");
    }
    let _unmount = Undo("umount", &["-l"], mnt.clone());
    let (beat, script) = beating_printer(d0.path());
    let mut d = Drover::start(&cfg(
        &script,
        &format!(
            "[program.w.log]\nfile = \"{}/w.log\"\nmax_size = \"1MiB\"\nbackups = 1\n",
            mnt.display()
        ),
    ));
    let reason = "drover_log_file_lines_dropped_total{program=\"w\",reason=\"disk_full\"}";
    wait_until(T, "lines dropped for a full disk", || {
        metric(&d, reason).filter(|&n| n > 0)
    });
    assert!(d.logged("cannot write"), "{}", d.stderr());
    // the worker goes on printing while its lines are dropped
    let beat_now = || -> u64 {
        std::fs::read_to_string(&beat)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let (b0, dropped0) = (beat_now(), metric(&d, reason).unwrap());
    wait_until(
        T,
        "the worker printing 200 more lines on a full disk",
        || (beat_now() >= b0 + 200).then_some(()),
    );
    wait_until(T, "more lines dropped while the disk stays full", || {
        metric(&d, reason).filter(|&n| n > dropped0)
    });
    let full = std::fs::metadata(mnt.join("w.log")).unwrap().len();
    assert!(full <= 64 * 1024, "{full}");
    // room again: the next line written is the marker
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(grown.success());
    let marker = wait_until(T, "a marker line once the disk has room", || {
        lines(&mnt.join("w.log"))
            .into_iter()
            .find(|l| l.contains("[drover: ") && l.contains("lines dropped: the disk was full]"))
    });
    assert!(marker.contains(" drover | [drover: "), "{marker}");
    // whole lines on both sides of the gap
    for l in lines(&mnt.join("w.log")) {
        if !l.contains("[drover: ") {
            numbered(&l);
        }
    }
    d.stop_ok();
}

#[test]
fn a_symlink_planted_at_the_log_is_not_followed() {
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "precious\n").unwrap();
    let script = r#"i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.05; done"#;
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("w.log")).unwrap();
    let mut d = Drover::start(&cfg(
        script,
        &format!(
            "[program.w.log]\nfile = \"{}/w.log\"\n",
            dir.path().display()
        ),
    ));
    wait_until(T, "the error naming the file", || {
        d.logged("cannot open its log file").then_some(())
    });
    let msg = d
        .messages()
        .into_iter()
        .find(|m| m.contains("cannot open its log file"))
        .unwrap();
    assert!(msg.contains("w.log is a symlink"), "{msg}");
    assert!(msg.contains("go to drover's stdout instead"), "{msg}");
    wait_until(T, "the worker's lines on drover's stdout", || {
        d.stdout().contains(r#""line":"tick 3""#).then_some(())
    });
    assert_eq!(
        std::fs::read_to_string(outside.path()).unwrap(),
        "precious\n"
    );
    d.stop_ok();
}

#[test]
fn a_symlink_planted_at_a_backup_is_replaced_not_followed() {
    let outside = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(outside.path(), "precious\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(outside.path(), dir.path().join("w.log.1")).unwrap();
    let mut d = Drover::start(&cfg(
        &printer(2000),
        &format!(
            "[program.w.log]\nfile = \"{}/w.log\"\nmax_size = \"4KiB\"\nbackups = 3\n",
            dir.path().display()
        ),
    ));
    wait_until(T, "the last line in w.log", || {
        lines(&dir.path().join("w.log"))
            .last()
            .filter(|l| numbered(l) == 1999)
            .map(|_| ())
    });
    let b1 = std::fs::symlink_metadata(dir.path().join("w.log.1")).unwrap();
    assert!(b1.file_type().is_file(), "w.log.1 is drover's own file now");
    assert_eq!(
        std::fs::read_to_string(outside.path()).unwrap(),
        "precious\n"
    );
    d.stop_ok();
}

#[test]
fn a_directory_planted_at_a_backup_still_bounds_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let planted = dir.path().join("w.log.1");
    std::fs::create_dir(&planted).unwrap();
    std::fs::write(planted.join("mine"), "worker's\n").unwrap();
    let mut d = Drover::start(&cfg(
        &printer(5000),
        &format!(
            "[program.w.log]\nfile = \"{}/w.log\"\nmax_size = \"4KiB\"\nbackups = 3\n",
            dir.path().display()
        ),
    ));
    let log = dir.path().join("w.log");
    wait_until(T, "the last line in w.log", || {
        lines(&log)
            .last()
            .filter(|l| numbered(l) == 4999)
            .map(|_| ())
    });
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 4096, "w.log stays bounded: {size} bytes");
    let said = d
        .messages()
        .iter()
        .filter(|m| m.contains("cannot rotate"))
        .count();
    assert_eq!(said, 1, "said once per failure streak\n{}", d.stderr());
    assert!(planted.is_dir(), "the planted directory is left alone");
    assert_eq!(
        std::fs::read_to_string(planted.join("mine")).unwrap(),
        "worker's\n"
    );
    // what is in w.log is whole lines
    for l in lines(&log) {
        numbered(&l);
    }
    d.stop_ok();
}

#[test]
fn reload_reopens_a_moved_file_follows_a_new_path_and_keeps_the_old_on_error() {
    let script = r#"i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.02; done"#;
    let mut d = Drover::start(&cfg(script, "[program.w.log]\nfile = \"{dir}/a.log\"\n"));
    let a = d.path("a.log");
    wait_until(T, "lines in a.log", || {
        lines(&a)
            .iter()
            .any(|l| l.contains("w.0 | tick 2"))
            .then_some(())
    });
    // logrotate without copytruncate: the file is moved away, then drover told to reload
    std::fs::rename(&a, d.path("a.log.old")).unwrap();
    d.signal(libc::SIGHUP);
    wait_until(T, "a fresh a.log after the reload", || {
        lines(&a)
            .iter()
            .any(|l| l.contains(" | tick "))
            .then_some(())
    });
    // a new path
    let conf = d.path("drover.toml");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("a.log", "b.log");
    std::fs::write(&conf, text).unwrap();
    d.signal(libc::SIGHUP);
    let b = d.path("b.log");
    wait_until(T, "lines in b.log after the reload", || {
        lines(&b)
            .iter()
            .any(|l| l.contains(" | tick "))
            .then_some(())
    });
    // a new path that cannot be opened: the old file goes on, and the log says so
    std::fs::create_dir(d.path("c.log")).unwrap();
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("b.log", "c.log");
    std::fs::write(&conf, text).unwrap();
    d.signal(libc::SIGHUP);
    wait_until(T, "the error naming c.log", || {
        d.messages()
            .into_iter()
            .find(|m| m.contains("c.log is a directory"))
    });
    let n = lines(&b).len();
    wait_until(T, "more lines in b.log", || {
        (lines(&b).len() > n + 3).then_some(())
    });
    assert!(
        d.logged("b.log as before (fix it and reload)"),
        "{}",
        d.stderr()
    );
    d.stop_ok();
}

#[test]
fn an_unopenable_file_sends_the_lines_to_stdout_and_says_so() {
    let script = r#"i=0; while true; do echo "tick $i"; i=$((i+1)); sleep 0.05; done"#;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("w.log")).unwrap();
    let mut d = Drover::start(&cfg(
        script,
        &format!(
            "[program.w.log]\nfile = \"{}/w.log\"\n",
            dir.path().display()
        ),
    ));
    wait_until(T, "the worker's lines on drover's stdout", || {
        d.stdout().contains(r#""line":"tick 2""#).then_some(())
    });
    let msg = d
        .messages()
        .into_iter()
        .find(|m| m.contains("cannot open its log file"))
        .unwrap_or_else(|| panic!("{}", d.stderr()));
    assert!(msg.contains("w.log is a directory"), "{msg}");
    assert!(msg.contains("(fix it and reload)"), "{msg}");
    d.stop_ok();
}

#[test]
fn check_says_where_the_lines_go() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("drover.toml");
    std::fs::write(
        &conf,
        cfg(
            "sleep 1000",
            "[program.w.log]\nfile = \"/var/log/drover/w.log\"\nmax_size = \"4KiB\"\nbackups = 3\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(&conf)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("capture: each line through drover to /var/log/drover/w.log (rotated at 4KiB, 3 old files kept), not to drover's stdout"),
        "{text}"
    );
}

/// A frozen file system (`fsfreeze` on a loop-mounted ext4 image): writes hang, as on a dead
/// disk or NFS server. The worker goes on; its lines are dropped as `stalled`, then marked.
#[test]
fn a_stalled_disk_drops_counted_marked_lines_and_never_stalls_the_worker() {
    let d0 = tempfile::tempdir().unwrap();
    let (img, mnt) = (d0.path().join("img"), d0.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        std::process::Command::new(cmd)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    if !run("mkfs.ext4", &["-q".as_ref(), img.as_os_str()])
        || !run(
            "mount",
            &[
                "-o".as_ref(),
                "loop".as_ref(),
                img.as_os_str(),
                mnt.as_os_str(),
            ],
        )
    {
        return skip("cannot make and loop-mount an ext4 image (needs root, mkfs.ext4)");
    }
    let _unmount = Undo("umount", &[], mnt.clone());
    let (beat, script) = beating_printer(d0.path());
    let mut d = Drover::start(&cfg(
        &script,
        &format!("[program.w.log]\nfile = \"{}/w.log\"\n", mnt.display()),
    ));
    let log = mnt.join("w.log");
    wait_until(T, "lines in w.log", || {
        (!lines(&log).is_empty()).then_some(())
    });
    if !run("fsfreeze", &["-f".as_ref(), mnt.as_os_str()]) {
        return skip("cannot freeze the file system (fsfreeze)");
    }
    // thawed before drover is stopped, and before the unmount
    let thaw = Undo("fsfreeze", &["-u"], mnt.clone());
    let reason = "drover_log_file_lines_dropped_total{program=\"w\",reason=\"stalled\"}";
    wait_until(T, "lines dropped for a stalled disk", || {
        metric(&d, reason).filter(|&n| n > 0)
    });
    let beat_now = || -> u64 {
        std::fs::read_to_string(&beat)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    let b0 = beat_now();
    wait_until(
        T,
        "the worker printing 300 more lines on a stalled disk",
        || (beat_now() >= b0 + 300).then_some(()),
    );
    drop(thaw);
    let marker = wait_until(T, "a marker line once the disk moves again", || {
        lines(&log).into_iter().find(|l| l.contains("[drover: "))
    });
    assert!(
        marker.contains("lines dropped: the disk made no progress for 500ms]"),
        "{marker}"
    );
    d.stop_ok();
}

/// A worker that prints numbered lines every 2 ms and writes its count to a heartbeat file after
/// each: the heartbeat advancing shows the worker is not stalled. Returns (heartbeat, script).
fn beating_printer(dir: &std::path::Path) -> (PathBuf, String) {
    let beat = dir.join("beat");
    let script = format!(
        r#"i=0; while true; do echo "n $(printf %08d $i) {pad}"; i=$((i+1)); echo $i > {beat}; sleep 0.002; done"#,
        pad = "x".repeat(40),
        beat = beat.display()
    );
    (beat, script)
}

/// Runs `program args path` when dropped, however the test ends: a mount undone, a file system
/// thawed.
struct Undo(&'static str, &'static [&'static str], PathBuf);

impl Drop for Undo {
    fn drop(&mut self) {
        let _ = std::process::Command::new(self.0)
            .args(self.1)
            .arg(&self.2)
            .status();
    }
}
