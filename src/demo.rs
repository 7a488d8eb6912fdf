//! `drover demo-worker`: a tiny HTTP/1.1 server on the inherited sockets, fd 3 onwards
//! (systemd-style socket passing). It is how the demo config and the Python-free tests get a real worker.
//!
//! Routes: `/` answers with the worker's name and pid; `/healthz`; `/pid`; `/sleep/MS` answers
//! after MS milliseconds; `/exit/CODE` answers, then exits with CODE (to demonstrate restarts);
//! `/alloc/MB` keeps MB more MiB (memory budgets); `/burn/MS` spins the CPU (quotas, autoscaling).

use std::os::fd::FromRawFd;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX_HEADER: usize = 16 * 1024;

thread_local! {
    /// memory kept by /alloc (the demo worker is single-threaded)
    static HELD: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

pub fn main() -> i32 {
    let fds: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let me = std::process::id() as i32;
    if fds < 1 {
        eprintln!("demo-worker: no listening socket was passed (LISTEN_FDS is not set); run it under `drover run`");
        return 2;
    }
    if let Some(p) = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        if p != me {
            eprintln!(
                "demo-worker: LISTEN_PID={p} is not this process ({me}); the sockets are not ours"
            );
            return 2;
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-worker: cannot start the runtime: {e}");
            return 1;
        }
    };
    let name = format!(
        "{}.{}",
        std::env::var("DROVER_PROGRAM").unwrap_or_else(|_| "demo".into()),
        std::env::var("DROVER_WORKER").unwrap_or_else(|_| "0".into())
    );
    rt.block_on(async move {
        println!(
            "demo-worker {name} (pid {me}) serving on fd 3..{}",
            3 + fds - 1
        );
        let mut servers = tokio::task::JoinSet::new();
        for fd in 3..3 + fds as i32 {
            servers.spawn(serve(fd, name.clone(), me));
        }
        while servers.join_next().await.is_some() {}
        0
    })
}

/// Accept connections on one passed socket, TCP or unix, forever.
async fn serve(fd: i32, name: String, me: i32) {
    // SAFETY: fds 3..3+LISTEN_FDS were handed to us by the supervisor and nothing else owns them.
    let sock = unsafe { socket2::Socket::from_raw_fd(fd) };
    let _ = sock.set_nonblocking(true);
    if sock.local_addr().map(|a| a.is_unix()).unwrap_or(false) {
        let std_l: std::os::unix::net::UnixListener = sock.into();
        let l = tokio::net::UnixListener::from_std(std_l).expect("a unix listener");
        loop {
            if let Ok((s, _)) = l.accept().await {
                tokio::spawn(conn(s, name.clone(), me));
            }
        }
    }
    let std_l: std::net::TcpListener = sock.into();
    let l = tokio::net::TcpListener::from_std(std_l).expect("a TCP listener");
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(conn(s, name.clone(), me));
            }
            Err(e) => {
                eprintln!("demo-worker: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn conn<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, name: String, pid: i32) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut tmp = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEADER {
                let _ = s.write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                return;
            }
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let reqline = lines.next().unwrap_or("");
        let path = reqline.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut body_len = 0usize;
        let mut close = reqline.ends_with("HTTP/1.0");
        for l in lines {
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                body_len = v.trim().parse().unwrap_or(0);
            } else if lower.starts_with("connection:") {
                close = lower.contains("close");
            }
        }
        buf.drain(..end);
        while buf.len() < body_len {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        buf.drain(..body_len);

        let (status, body, exit_after) = route(&path, &name, pid).await;
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nx-worker-pid: {pid}\r\n{}\r\n{body}",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if s.write_all(resp.as_bytes()).await.is_err() {
            return;
        }
        if let Some(code) = exit_after {
            let _ = s.flush().await;
            std::process::exit(code);
        }
        if close {
            return;
        }
    }
}

/// The answer to `path`: status line, body, and the exit code if the worker should exit after it.
async fn route(path: &str, name: &str, pid: i32) -> (&'static str, String, Option<i32>) {
    let (status, body) = if path == "/" {
        (
            "200 OK",
            format!("hello from drover demo-worker {name} pid {pid}\n"),
        )
    } else if path == "/healthz" {
        // DEMO_UNHEALTHY_WORKER=N makes worker N fail its health checks (for demos and tests)
        let sick = std::env::var("DEMO_UNHEALTHY_WORKER")
            .ok()
            .is_some_and(|w| std::env::var("DROVER_WORKER").ok().as_deref() == Some(w.as_str()));
        if sick {
            ("503 Service Unavailable", "unhealthy\n".to_string())
        } else {
            ("200 OK", "ok\n".to_string())
        }
    } else if path == "/pid" {
        ("200 OK", format!("{pid}\n"))
    } else if let Some(ms) = path
        .strip_prefix("/sleep/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
        ("200 OK", format!("slept {ms}ms in pid {pid}\n"))
    } else if let Some(mb) = path
        .strip_prefix("/alloc/")
        .and_then(|m| m.parse::<usize>().ok())
    {
        // keep MB more MiB, touched, for memory budget demos and tests
        let mut v = vec![0u8; mb.min(4096) << 20];
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        let total = HELD.with(|h| {
            h.borrow_mut().push(v);
            h.borrow().iter().map(|b| b.len()).sum::<usize>() >> 20
        });
        ("200 OK", format!("pid {pid} holds {total} MiB\n"))
    } else if let Some(ms) = path
        .strip_prefix("/burn/")
        .and_then(|m| m.parse::<u64>().ok())
    {
        // spin the CPU for MS milliseconds (autoscaling and CPU quota demos)
        let end = std::time::Instant::now() + Duration::from_millis(ms.min(60_000));
        let mut x = 0u64;
        while std::time::Instant::now() < end {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        ("200 OK", format!("pid {pid} burned {ms}ms ({x})\n"))
    } else if let Some(code) = path
        .strip_prefix("/exit/")
        .and_then(|c| c.parse::<i32>().ok())
    {
        return (
            "200 OK",
            format!("pid {pid} exiting with code {code}\n"),
            Some(code),
        );
    } else {
        ("404 Not Found", "not found\n".to_string())
    };
    (status, body, None)
}
