//! `drover top` in a real pseudo-terminal: it draws the live workers, redraws every second,
//! quits on `q` and gives the terminal back; without a terminal it prints one snapshot.

mod common;
use common::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn top_redraws_in_a_terminal_and_quits_on_q() {
    let d = Drover::start(&demo_web("2", "", ""));
    let st = d.wait_status("2 ready workers", T, |v| all_ready(v, 2));
    let pids = Drover::worker_pids(&st, "web");
    let size = nix::pty::Winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = pty.slave;
    let mut child = Command::new(BIN)
        .args(["top", "--url", &format!("http://{}", d.status_addr())])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let mut reader = master.try_clone().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        // EIO once the child has gone and the last slave fd is closed
        while let Ok(n) = reader.read(&mut b) {
            if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let drain = |screen: &mut String| {
        while let Ok(c) = rx.try_recv() {
            screen.push_str(&String::from_utf8_lossy(&c));
        }
    };
    wait_until(T, "two frames showing both workers and the queue", || {
        drain(&mut screen);
        let frames = screen.matches("\x1b[H\x1b[2J").count();
        let shown = pids.iter().all(|p| screen.contains(&format!(" {p} ")));
        (frames >= 2 && shown && screen.contains("queue 0/")).then_some(())
    });
    assert!(
        screen.starts_with("\x1b[?1049h"),
        "the alternate screen first"
    );
    assert!(screen.contains("(q quits)"), "{screen}");
    // the second frame has CPU % from the change in CPU seconds
    let last = screen.rsplit("\x1b[H\x1b[2J").next().unwrap();
    assert!(
        last.contains("running") && last.contains("2/2 ready"),
        "{last:?}"
    );
    master.write_all(b"q").unwrap();
    let end = Instant::now() + T;
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        assert!(Instant::now() < end, "drover top did not quit on q");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
    wait_until(T, "the terminal restored", || {
        drain(&mut screen);
        screen.ends_with("\x1b[?25h\x1b[?1049l").then_some(())
    });
}

#[test]
fn top_prints_one_snapshot_without_a_terminal() {
    let d = Drover::start(&demo_web("2", "", ""));
    let st = d.wait_status("2 ready workers", T, |v| all_ready(v, 2));
    let out = Command::new(BIN)
        .args(["top", "--url", &format!("http://{}", d.status_addr())])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains('\x1b'),
        "no escape sequences in a pipe: {text:?}"
    );
    assert!(
        text.contains("PROGRAM") && text.contains("2/2 ready"),
        "{text}"
    );
    for p in Drover::worker_pids(&st, "web") {
        assert!(text.contains(&format!(" {p} ")), "pid {p} not in:\n{text}");
    }
    // unreachable: exit 2 with the reason
    let out = Command::new(BIN)
        .args(["top", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach drover"));
}
