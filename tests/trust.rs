//! Nothing a worker or a preloader says is acted on before the kernel confirms it, and nothing
//! they do blocks the loop (issue 18): a preloader's false claims (drover's own pid, a stranger,
//! pid 0, forged credentials, its own child), a preloader that never answers a fork, the guard
//! and a pid reused after a preloader died, and a flood on NOTIFY_SOCKET. The preloader is
//! `tests/fixtures/fake_preloader.py`, speaking the documented protocol honestly or not.

mod common;
use common::*;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

const FAKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_preloader.py"
);

fn root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn python3() -> bool {
    std::process::Command::new("python3")
        .arg("-c")
        .arg("import socket; socket.recv_fds")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A program whose preloader is the fake, in `modes`; `extra` goes into `[program.api]`.
fn fake_program(modes: &str, env_extra: &str, extra: &str) -> String {
    format!(
        r#"[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "5s"
# a fake preloader lies once per mode before it is honest: that many failures in a row are meant,
# not a preloader that can never load (which makes drover exit)
exhausted_after = 10
[program.api]
command = ["python3", "{FAKE}"]
preload = true
workers = 1
stop_timeout = "2s"
backoff = {{ initial = "50ms", max = "400ms" }}
readiness = {{ check = "uptime", min_uptime = "100ms", timeout = "30s" }}
env = {{ FAKE_MODES = "{modes}", FAKE_STATE = "{{dir}}/fake-state"{env_extra} }}
{extra}
"#
    )
}

fn cgroup_of(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

fn stat_field(pid: i64, n: usize) -> i64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = s.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(n).unwrap().parse().unwrap()
}

/// A process that is not drover's: a stranger a preloader might name.
struct Victim(std::process::Child);

impl Victim {
    fn start() -> Victim {
        let c = std::process::Command::new("sleep")
            .arg("100000")
            .process_group(0)
            .spawn()
            .unwrap();
        Victim(c)
    }
    fn pid(&self) -> i64 {
        self.0.id() as i64
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_preloaders_false_claims_are_refused_and_nothing_is_done_to_the_claimed_process() {
    if !root() || !python3() {
        skip("needs root (forged credentials, cgroups) and python3 with socket.recv_fds");
        return;
    }
    let victim = Victim::start();
    let v = victim.pid();
    let victim_cgroup = cgroup_of(v);
    let modes = "claim-parent,claim-victim,claim-zero,forge-creds,own-child,honest";
    let cfg = fake_program(
        modes,
        &format!(", VICTIM = \"{v}\""),
        // per-worker cgroups where this machine has them: a claim believed is a process moved
        "budget = { memory_hard = \"1GiB\" }",
    );
    let mut d = Drover::start(&cfg);
    let drover_cgroup = cgroup_of(d.pid as i64);
    let st = d.wait_status("the honest preloader's worker ready", T, |v| {
        all_ready(v, 1)
    });
    // nothing was done to what was claimed
    assert!(alive(v), "the stranger was killed");
    assert_eq!(cgroup_of(v), victim_cgroup, "the stranger was moved");
    assert_eq!(cgroup_of(d.pid as i64), drover_cgroup, "drover was moved");
    let me = d.pid;
    for (what, refusal) in [
        (
            "drover's own pid",
            format!("is refused: pid {me} is drover itself"),
        ),
        (
            "a stranger, claimed by the preloader",
            format!("is refused: pid {v} was announced by pid"),
        ),
        (
            "pid 0",
            "is refused: pid 0 is not a process a worker can be".to_string(),
        ),
        (
            "a stranger, with forged credentials",
            format!("is refused: pid {v} is not drover's child"),
        ),
    ] {
        assert!(
            d.logged(&refusal),
            "{what}: no `{refusal}` in the log:\n{}",
            d.stderr()
        );
    }
    let own_child = d
        .messages()
        .iter()
        .filter(|m| m.contains("is refused: pid") && m.contains("is not drover's child"))
        .count();
    assert_eq!(
        own_child, 2,
        "the forged claim and the preloader's own child"
    );
    // the honest worker was accepted: drover's child, leading its own group
    let w = Drover::worker_pids(&st, "api")[0];
    assert_eq!(stat_field(w, 1), d.pid as i64, "its parent is drover");
    assert_eq!(stat_field(w, 2), w, "it leads its own group");
    d.stop_ok();
    assert!(alive(v), "the stranger was killed at shutdown");
    assert!(!alive(w));
}

/// /healthz latencies while `f` runs, one probe every 50 ms.
fn probe_healthz(addr: &str, until: Instant) -> Vec<Duration> {
    let mut lat = vec![];
    while Instant::now() < until {
        let t = Instant::now();
        let ok = http_get(addr, "/healthz").is_some();
        lat.push(if ok {
            t.elapsed()
        } else {
            Duration::from_secs(99)
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    lat
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

#[test]
fn a_preloader_that_never_answers_a_fork_does_not_stop_the_loop() {
    if !python3() {
        skip("needs python3 with socket.recv_fds for the fake preloader");
        return;
    }
    let cfg = format!(
        "{}\n[socket.http]\nlisten = \"127.0.0.1:0\"\n[program.web]\ncommand = [\"{{bin}}\", \"demo-worker\"]\nsockets = [\"http\"]\nreadiness = {{ check = \"uptime\", min_uptime = \"50ms\" }}\n",
        fake_program("hang", "", "")
    );
    let mut d = Drover::start(&cfg);
    let addr = d.status_addr();
    let st = d.wait_status("web ready, the fork of api asked for", T, |v| {
        let web = v["programs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "web");
        web.is_some_and(|p| p["ready_workers"] == 1)
            && v["programs"][0]["preloader"]["state"] == "ready"
    });
    let asked = Instant::now();
    // while the fork hangs: a killed worker of another program is replaced at once
    let old = Drover::worker_pids(&st, "web")[0];
    kill(old, libc::SIGKILL);
    let t = Instant::now();
    d.wait_status("web's worker replaced", Duration::from_secs(5), |v| {
        let p = Drover::worker_pids(v, "web");
        p.len() == 1 && p[0] != old
    });
    let replaced = t.elapsed();
    // and /healthz answers throughout the fork's 10 s
    let lat = probe_healthz(&addr, asked + Duration::from_secs(11));
    let worst = *lat.iter().max().unwrap();
    println!(
        "while a fork hangs: a killed worker replaced in {replaced:?}; /healthz p99 {:?}, max {worst:?} over {} probes",
        p99(lat.clone()),
        lat.len()
    );
    assert!(
        worst < Duration::from_secs(3),
        "/healthz stalled for {worst:?} while a fork hung"
    );
    // the fork's deadline passes: the preloader is killed and retried after a backoff
    wait_until(T, "the fork deadline to be logged", || {
        d.logged("it did not answer a fork request within 10s")
            .then_some(())
    });
    assert!(d.messages().iter().any(|m| m
        .contains("the preloader failed: it did not answer a fork request")
        && m.contains("trying again in")));
    let t = Instant::now();
    d.stop_ok();
    println!("TERM to exit with a fork hanging: {:?}", t.elapsed());
}

/// Run `cmd` (sh) inside the pid and mount namespaces of `ns_pid`.
fn in_ns(ns_pid: i64, cmd: &str) -> std::process::Output {
    std::process::Command::new("nsenter")
        .args(["-t", &ns_pid.to_string(), "-p", "-m", "sh", "-c", cmd])
        .output()
        .unwrap()
}

fn children_of(pid: i64) -> Vec<i64> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The `unshare` process group, killed whatever happens.
struct Namespace(std::process::Child);

impl Drop for Namespace {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test started.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

#[test]
fn the_guard_never_kills_a_process_that_reused_a_reaped_preloaders_pid() {
    if !root() || !python3() || !installed("nsenter") || !installed("unshare") {
        skip("needs root, python3, unshare and nsenter (a pid namespace where pids can be chosen)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = fake_program("honest", "", "").replace("{dir}", dir.path().to_str().unwrap());
    std::fs::write(dir.path().join("drover.toml"), cfg).unwrap();
    // drover is not PID 1 of the namespace (sh is, and outlives drover: the namespace ends with
    // its init), so it runs its guard; pids there are drover's alone, so the test can choose
    // the next one
    let script = format!(
        "cd {d} && {BIN} run -c {d}/drover.toml >{d}/stdout.log 2>{d}/stderr.log & while :; do wait; sleep 0.2; done",
        d = dir.path().display()
    );
    let ns = Namespace(
        std::process::Command::new("unshare")
            .args([
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
                "sh",
                "-c",
                &script,
            ])
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    let sh = wait_until(T, "the namespace's init", || {
        children_of(ns.0.id() as i64).first().copied()
    });
    let drover = wait_until(T, "drover in the namespace", || {
        children_of(sh).first().copied()
    });
    let log = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    let status = wait_until(T, "the status address", || {
        let l = log();
        let i = l.find("status endpoint on ")?;
        let rest = &l[i + "status endpoint on ".len()..];
        Some(rest[..rest.find(|c: char| c.is_whitespace() || c == '"')?].to_string())
    });
    let get = |path: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(&status, path)?).ok()
    };
    let st = wait_until(T, "a ready worker from the preloader", || {
        get("/status").filter(|v| all_ready(v, 1))
    });
    let pre = st["programs"][0]["preloader"]["pid"].as_i64().unwrap();
    let worker = Drover::worker_pids(&st, "api")[0];
    // the preloader dies; drover reaps it and starts another
    assert!(in_ns(sh, &format!("kill -9 {pre}")).status.success());
    wait_until(T, "a new preloader", || {
        get("/status").filter(|v| {
            let p = &v["programs"][0]["preloader"];
            p["state"] == "ready" && p["pid"].as_i64() != Some(pre)
        })
    });
    // a stranger gets the dead preloader's pid, and leads a process group of that number
    let mut got = None;
    for _ in 0..20 {
        let out = in_ns(
            sh,
            &format!(
                "echo {} > /proc/sys/kernel/ns_last_pid; setsid sleep 100000 </dev/null >/dev/null 2>&1 & echo $!",
                pre - 1
            ),
        );
        let pid: i64 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        if pid == pre {
            got = Some(pid);
            break;
        }
        in_ns(sh, &format!("kill -9 {pid}"));
    }
    let Some(stranger) = got else {
        skip("could not place a process at the reused pid (ns_last_pid)");
        return;
    };
    assert!(
        in_ns(sh, &format!("kill -0 {stranger}")).status.success(),
        "the stranger is running before drover is killed"
    );
    // drover is SIGKILLed: the guard kills every group it still holds
    kill(drover, libc::SIGKILL);
    wait_until(T, "the guard to kill drover's worker", || {
        (!in_ns(sh, &format!("kill -0 {worker}")).status.success()).then_some(())
    });
    assert!(
        in_ns(sh, &format!("kill -0 {stranger}")).status.success(),
        "the guard killed a stranger that reused the preloader's pid {pre}\n{}",
        log()
    );
}

/// NOTIFY_SOCKET as a socket address (`@` names the abstract namespace).
fn notify_addr(s: &str) -> std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    match s.strip_prefix('@') {
        Some(a) => std::os::unix::net::SocketAddr::from_abstract_name(a.as_bytes()).unwrap(),
        None => std::os::unix::net::SocketAddr::from_pathname(s).unwrap(),
    }
}

fn cpu_ticks(pid: i32) -> i64 {
    stat_field(pid as i64, 11) + stat_field(pid as i64, 12)
}

#[test]
fn a_notify_flood_from_a_stranger_costs_no_memory_and_delays_no_ready() {
    if !root() {
        skip("needs root to reach the worker's NOTIFY_SOCKET from outside (as any process in the pod could)");
        return;
    }
    // the worker's own process says READY=1 and stays up, as a server does
    let send = "exec python3 -c 'import os,socket,time; a=os.environ[\"NOTIFY_SOCKET\"]; a=\"\\0\"+a[1:] if a[0]==\"@\" else a; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"READY=1\", a); time.sleep(100000)'";
    let script = format!("while [ ! -e {{dir}}/go ]; do sleep 0.01; done; {send}");
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nhistory = \"0s\"\n[program.web]\ncommand = [\"sh\", \"-c\", {}]\nreadiness = {{ check = \"notify\", timeout = \"60s\" }}\n",
        serde_json::to_string(&script).unwrap()
    );
    let d = Drover::start(&cfg);
    let st = d.wait_status("the worker started", T, |v| {
        !Drover::worker_pids(v, "web").is_empty()
    });
    let w = Drover::worker_pids(&st, "web")[0];
    let env = std::fs::read(format!("/proc/{w}/environ")).unwrap();
    let sock = String::from_utf8_lossy(&env)
        .split('\0')
        .find_map(|e| e.strip_prefix("NOTIFY_SOCKET=").map(String::from))
        .expect("the worker got NOTIFY_SOCKET");
    let addr = notify_addr(&sock);
    let rss0 = rss_kib(d.pid);
    // a stranger floods the socket for 10 s from two threads
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let floods: Vec<_> = (0..2)
        .map(|_| {
            let (stop, addr) = (stop.clone(), addr.clone());
            std::thread::spawn(move || {
                let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
                s.set_nonblocking(true).unwrap();
                let mut sent = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.send_to_addr(b"READY=1\nSTATUS=flood", &addr).is_ok() {
                        sent += 1;
                    }
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    // mid-flood the worker says READY=1: it counts at once
    let t = Instant::now();
    std::fs::write(d.path("go"), "").unwrap();
    d.wait_status("ready mid-flood", Duration::from_secs(20), |v| {
        all_ready(v, 1)
    });
    let ready_in = t.elapsed();
    std::thread::sleep(Duration::from_secs(7));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = floods.into_iter().map(|h| h.join().unwrap()).sum();
    // after it: drover is idle at once, and its memory did not grow with the flood
    let c0 = cpu_ticks(d.pid);
    std::thread::sleep(Duration::from_secs(2));
    let after_cpu = cpu_ticks(d.pid) - c0;
    let rss1 = rss_kib(d.pid);
    let metrics = http_get(&d.status_addr(), "/metrics").unwrap();
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("drover_notify_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    println!(
        "notify flood: {sent} datagrams in 10 s, {dropped} dropped and counted; a real READY=1 counted after {ready_in:?}; RSS {rss0} -> {rss1} KiB; CPU in the 2 s after it: {after_cpu} ticks"
    );
    assert!(
        ready_in < Duration::from_secs(3),
        "READY=1 took {ready_in:?} under the flood"
    );
    assert!(
        rss1 < rss0 + 20 * 1024,
        "RSS grew from {rss0} to {rss1} KiB"
    );
    assert!(
        after_cpu < 50,
        "drover still busy after the flood: {after_cpu} ticks in 2 s"
    );
    assert!(dropped > 0, "nothing was counted as dropped:\n{metrics}");
    assert_eq!(
        d.status()["programs"][0]["workers"][0]["status"],
        serde_json::Value::Null,
        "a stranger's STATUS= was taken"
    );
}

/// A TCP socket whose last close waits: unsent data its peer never reads, and SO_LINGER.
/// Returns it with its peer (which must outlive the test's use of it).
fn lingering_socket(secs: i32) -> (std::net::TcpStream, std::net::TcpListener) {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c.set_nonblocking(true).unwrap();
    while c.write(&[b'x'; 65536]).is_ok() {}
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: secs,
    };
    // SAFETY: setsockopt on a socket we own, with a pointer to a local struct and its size.
    unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    (c, l)
}

#[test]
fn an_fd_passed_to_drover_never_blocks_its_loop() {
    if !root() {
        skip("needs root to reach the worker's NOTIFY_SOCKET from outside");
        return;
    }
    let cfg = "[supervisor]\nstatus = \"127.0.0.1:0\"\n[program.web]\ncommand = [\"sleep\", \"100000\"]\nreadiness = { check = \"notify\", timeout = \"60s\" }\n[program.other]\ncommand = [\"sleep\", \"100000\"]\nreadiness = { check = \"uptime\", min_uptime = \"10ms\" }\n";
    let d = Drover::start(cfg);
    let st = d.wait_status("both workers started", T, |v| {
        !Drover::worker_pids(v, "web").is_empty() && !Drover::worker_pids(v, "other").is_empty()
    });
    let w = Drover::worker_pids(&st, "web")[0];
    let env = std::fs::read(format!("/proc/{w}/environ")).unwrap();
    let sock = String::from_utf8_lossy(&env)
        .split('\0')
        .find_map(|e| e.strip_prefix("NOTIFY_SOCKET=").map(String::from))
        .unwrap();
    // a datagram carrying a socket whose last close would wait 20 s
    let (lingering, _peer) = lingering_socket(20);
    let u = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let fds = [std::os::fd::AsRawFd::as_raw_fd(&lingering)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"STATUS=hi")];
    let to = nix::sys::socket::UnixAddr::new(sock.as_str()).unwrap();
    let sent = nix::sys::socket::sendmsg(
        std::os::fd::AsRawFd::as_raw_fd(&u),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        Some(&to),
    );
    drop(lingering); // drover's copy, if it took one, is now the last
    println!("sending a lingering socket to NOTIFY_SOCKET: {sent:?}");
    // the loop still turns: a killed worker of the other program comes back at once
    let old = Drover::worker_pids(&st, "other")[0];
    kill(old, libc::SIGKILL);
    let t = Instant::now();
    d.wait_status(
        "the other program's worker replaced",
        Duration::from_secs(30),
        |v| {
            let p = Drover::worker_pids(v, "other");
            p.len() == 1 && p[0] != old
        },
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the loop was blocked for {:?} by a passed fd",
        t.elapsed()
    );
    assert_eq!(
        http_get_status(&d.status_addr(), "/healthz").map(|r| r.0),
        Some(200)
    );
}

#[test]
fn a_worker_that_leaves_its_process_group_is_still_stopped() {
    if !python3() {
        skip("needs python3");
        return;
    }
    // the worker moves itself into a group a helper made (same session: allowed), and clears
    // its parent-death signal; drover's group signal would reach nobody
    let script = "import ctypes,os,time; ctypes.CDLL(None).prctl(1,0,0,0,0); r,w=os.pipe(); h=os.fork()\nif h==0:\n    os.setpgid(0,0); os.read(r,1); os._exit(0)\nwhile os.getpgid(h)!=h: time.sleep(0.001)\nos.setpgid(0,h); os.write(w,b'x'); os.waitpid(h,0); open(os.environ['MARK'],'w').write(str(os.getpid())); time.sleep(100000)";
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"5s\"\n[program.w]\ncommand = [\"python3\", \"-c\", {}]\nstop_timeout = \"1s\"\nenv = {{ MARK = \"{{dir}}/moved\" }}\nreadiness = {{ check = \"uptime\", min_uptime = \"10ms\" }}\n",
        serde_json::to_string(script).unwrap()
    );
    let mut d = Drover::start(&cfg);
    let pid: i64 = wait_until(T, "the worker to leave its group", || {
        std::fs::read_to_string(d.path("moved")).ok()?.parse().ok()
    });
    assert_ne!(stat_field(pid, 2), pid, "it left its group");
    d.stop_ok();
    wait_until(T, "the escaped worker gone", || (!alive(pid)).then_some(()));
}

#[test]
fn a_process_of_another_program_cannot_make_a_worker_ready() {
    if !root() || !python3() {
        skip("needs root (workers of two users) and python3");
        return;
    }
    // `api` (daemon) never says READY=1; a helper of `evil` (nobody) joins an api worker's
    // process group and says it for it, on evil's own NOTIFY_SOCKET
    let hijack = "import os,socket,time\nfor p in os.listdir('/proc'):\n    if p.isdigit():\n        try:\n            if b'API-MARK' in open('/proc/%s/cmdline' % p,'rb').read() and os.getpgid(int(p))==int(p):\n                c=os.fork()\n                if c==0:\n                    os.setpgid(0,int(p)); socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM).sendto(b'READY=1\\nSTATUS=hijacked',os.environ['NOTIFY_SOCKET']); os._exit(0)\n                os.waitpid(c,0); open(os.environ['MARK'],'a').write(p+'\\n')\n        except OSError: pass\nsocket.socket(socket.AF_UNIX,socket.SOCK_DGRAM).sendto(b'READY=1',os.environ['NOTIFY_SOCKET'])\ntime.sleep(100000)";
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\n[program.api]\ncommand = [\"sh\", \"-c\", \"exec sleep 100000 API-MARK\"]\nuser = \"daemon\"\nreadiness = {{ check = \"notify\", timeout = \"60s\" }}\n[program.evil]\ncommand = [\"/usr/bin/python3\", \"-c\", {}]\nuser = \"nobody\"\nenv = {{ MARK = \"{{dir}}/spoke\" }}\nreadiness = {{ check = \"notify\", timeout = \"60s\" }}\n",
        serde_json::to_string(hijack).unwrap()
    );
    let d = Drover::start(&cfg);
    std::fs::set_permissions(
        d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    // evil's worker says READY=1 for itself after its helper spoke for api: once evil is ready,
    // drover has read the helper's datagram too (one socket, in order)
    let st = d.wait_status("evil ready by its own READY=1", T, |v| {
        v["programs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "evil" && p["ready_workers"] == 1)
    });
    let spoke = std::fs::read_to_string(d.path("spoke")).unwrap_or_default();
    assert!(
        !spoke.is_empty(),
        "evil's helper never spoke for an api worker"
    );
    let api = st["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "api")
        .unwrap();
    assert_eq!(
        api["ready_workers"], 0,
        "another program made api ready: {api}"
    );
    assert_ne!(api["workers"][0]["status"], "hijacked");
}

/// Processes whose command line contains `mark`.
fn marked(mark: &str) -> Vec<i64> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(mark))
        })
        .collect()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn output_pipes_kept_open_by_escaped_helpers_do_not_pile_up() {
    // each worker leaves a helper in a session of its own holding its stdout, and exits at once
    // the helper's own command line carries a mark only this test uses, to clean up after it
    let mark = format!(
        "99999.{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    // the worker exits only once its helper is in a session of its own (else the kill of the
    // worker's group on its exit would take the helper too)
    let script = format!("import os,sys,time\npid=os.fork()\nif pid==0:\n    os.setsid(); os.execvp('sleep', ['sleep', '{mark}'])\nwhile os.getsid(pid)!=pid: time.sleep(0.001)\nsys.exit(1)");
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\non_exhausted = \"stay\"\n[program.w]\ncommand = [\"python3\", \"-c\", {}]\nbackoff = {{ initial = \"10ms\", max = \"20ms\" }}\n",
        serde_json::to_string(&script).unwrap()
    );
    let mut d = Drover::start(&cfg);
    let restarts = |v: &serde_json::Value| {
        v["programs"][0]["workers"][0]["restarts"]
            .as_u64()
            .unwrap_or(0)
    };
    d.wait_status("a few restarts", T, |v| restarts(v) >= 5);
    let fds0 = open_fds(d.pid);
    d.wait_status("200 restarts", Duration::from_secs(120), |v| {
        restarts(v) >= 205
    });
    let fds1 = open_fds(d.pid);
    let keepers = marked(&mark);
    let keepers_n = keepers.len();
    println!(
        "drover's open fds after 5 and 105 restarts: {fds0} -> {fds1}; {} helpers hold pipes",
        keepers.len()
    );
    d.stop_ok();
    for p in keepers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // each pipe is read for 2 s after its worker is reaped, then closed: a bounded number stay
    // open (before: one per restart, for ever)
    assert!(
        keepers_n >= 90,
        "only {keepers_n} helpers escaped: the test shows nothing"
    );
    assert!(
        fds1 < fds0 + keepers_n / 2,
        "drover's fds grew from {fds0} to {fds1} over 100 restarts"
    );
}

/// Workers that exit as fast as they start wake the loop without pause: their output pipes
/// are still each read and closed (before: the loop kept the runtime, no pump was polled, and
/// drover held one pipe per restart: 4,000 fds after 3 s).
#[test]
fn workers_that_exit_as_fast_as_they_start_leave_no_pipes_behind() {
    let mut d = Drover::start(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\non_exhausted = \"stay\"\n[program.c]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\nworkers = 8\nbackoff = { initial = \"10ms\", max = \"10ms\", reset_after = \"1ms\" }\n",
    );
    let restarts = |v: &serde_json::Value| -> u64 {
        v["programs"][0]["workers"].as_array().map_or(0, |ws| {
            ws.iter().filter_map(|w| w["restarts"].as_u64()).sum()
        })
    };
    d.wait_status("2,000 restarts", Duration::from_secs(120), |v| {
        restarts(v) >= 2000
    });
    let fds = open_fds(d.pid);
    d.stop_ok();
    assert!(fds < 300, "drover holds {fds} fds after 2,000 restarts");
}

#[test]
fn an_old_preloader_that_ignores_sigterm_is_killed_at_its_stop_timeout() {
    if !python3() {
        skip("needs python3 with socket.recv_fds for the fake preloader");
        return;
    }
    let cfg = fake_program(
        "honest",
        ", FAKE_IGNORE_TERM = \"1\"",
        "watch = [\"{dir}/code.py\"]",
    );
    let d = Drover::start(&cfg);
    std::fs::write(d.path("code.py"), "0").unwrap();
    let st = d.wait_status("a ready worker", T, |v| all_ready(v, 1));
    let old = st["programs"][0]["preloader"]["pid"].as_i64().unwrap();
    // new code: a new preloader; the old one gets TERM, which it ignores
    std::fs::write(d.path("code.py"), "1").unwrap();
    d.wait_status("a new preloader", T, |v| {
        let p = &v["programs"][0]["preloader"];
        p["state"] == "ready" && p["pid"].as_i64() != Some(old)
    });
    // stop_timeout is 2 s: it is killed then, not kept for ever
    wait_until(Duration::from_secs(20), "the old preloader killed", || {
        (!alive(old)).then_some(())
    });
}

/// The fake preloader's program with a unix status socket (the control API without a token).
fn fake_program_with_control(modes: &str, env_extra: &str, extra: &str) -> String {
    fake_program(modes, env_extra, extra).replace(
        "status = \"127.0.0.1:0\"",
        "status = \"127.0.0.1:0\"\ncontrol_token_file = \"{dir}/token\"",
    )
}

#[test]
fn a_deploy_after_a_preloader_failed_at_boot_loads_the_new_code() {
    if !python3() {
        skip("needs python3 with socket.recv_fds for the fake preloader");
        return;
    }
    // the first preloader cannot load (the database is not up yet); its retry can
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "a-token-of-sixteen-or-more").unwrap();
    let cfg = fake_program_with_control("fail-load,honest", "", "workers = 2")
        .replace("workers = 1\n", "")
        .replace(
            "{dir}/token",
            &dir.path().join("token").display().to_string(),
        );
    let d = Drover::start(&cfg);
    let st = d.wait_status("2 ready workers after the retry", T, |v| all_ready(v, 2));
    let (pre, old) = (
        st["programs"][0]["preloader"]["pid"].as_i64().unwrap(),
        Drover::worker_pids(&st, "api"),
    );
    // a deploy: new code needs a new preloader, and every worker rolls onto it
    let o = std::process::Command::new(BIN)
        .args(["ctl", "--url", &format!("http://{}", d.status_addr())])
        .args(["--token-file", dir.path().join("token").to_str().unwrap()])
        .args(["reload", "--wait"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let st = d.status();
    assert_ne!(
        st["programs"][0]["preloader"]["pid"].as_i64(),
        Some(pre),
        "the deploy forked from the old preloader"
    );
    let now = Drover::worker_pids(&st, "api");
    assert!(now.iter().all(|p| !old.contains(p)), "{old:?} -> {now:?}");
}

#[test]
fn a_crashed_worker_is_replaced_while_new_code_loads() {
    if !python3() {
        skip("needs python3 with socket.recv_fds for the fake preloader");
        return;
    }
    // from its second start the preloader takes until {dir}/load exists to load the app
    let cfg = fake_program(
        "honest",
        ", FAKE_WAIT_FILE = \"{dir}/load\", FAKE_WAIT_FROM = \"1\"",
        "watch = [\"{dir}/code.py\"]\nworkers = 2",
    )
    .replace("workers = 1\n", "");
    let d = Drover::start(&cfg);
    std::fs::write(d.path("code.py"), "0").unwrap();
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "api");
    // new code: a new preloader loads it (slowly); the current one keeps forking
    std::fs::write(d.path("code.py"), "1").unwrap();
    wait_until(T, "the new preloader to start loading", || {
        d.logged("a new preloader started").then_some(())
    });
    kill(old[0], libc::SIGKILL);
    let st = d.wait_status("the crashed worker replaced at once", T, |v| {
        let w = Drover::worker_pids(v, "api");
        all_ready(v, 2) && !w.contains(&old[0])
    });
    assert!(
        Drover::worker_pids(&st, "api").contains(&old[1]),
        "the roll has not begun: the new code is still loading"
    );
    // the new code loads: every worker rolls onto it
    std::fs::write(d.path("load"), "").unwrap();
    d.wait_status("rolled onto the new preloader", T, |v| {
        let w = Drover::worker_pids(v, "api");
        all_ready(v, 2) && v["programs"][0]["rolling"] == false && !w.contains(&old[1])
    });
}

#[test]
fn with_log_inherit_preloaded_workers_write_to_drovers_own_stdout() {
    if !python3() {
        skip("needs python3 with socket.recv_fds for the fake preloader");
        return;
    }
    let cfg = fake_program(
        "honest",
        "",
        "log = \"inherit\"\nwatch = [\"{dir}/code.py\"]",
    );
    let d = Drover::start(&cfg);
    std::fs::write(d.path("code.py"), "0").unwrap();
    let st = d.wait_status("a ready worker", T, |v| all_ready(v, 1));
    let w = Drover::worker_pids(&st, "api")[0];
    let target = |pid: i64| std::fs::read_link(format!("/proc/{pid}/fd/1")).unwrap();
    // no pipe of drover's between them: a preloader replaced later cannot break their stdout
    assert_eq!(
        target(w),
        target(d.pid as i64),
        "the worker's stdout is drover's"
    );
}

#[test]
fn a_program_added_by_a_reload_that_never_starts_does_not_end_drover() {
    let mut d = Drover::start(&demo_web("1", "", ""));
    d.wait_status("web ready", T, |v| all_ready(v, 1));
    let cfg = std::fs::read_to_string(d.path("drover.toml")).unwrap()
        + "[program.newjob]\ncommand = [\"sh\", \"-c\", \"exit 3\"]\nbackoff = { initial = \"10ms\", max = \"20ms\" }\n";
    std::fs::write(d.path("drover.toml"), cfg).unwrap();
    d.signal(libc::SIGHUP);
    wait_until(T, "newjob's crash loop", || {
        d.logged("program newjob: all 1 workers are crash-looping")
            .then_some(())
    });
    let st = d.status();
    assert_eq!(st["state"], "running", "a broken new program ended drover");
    assert!(all_ready(&st, 1), "web still serves");
    d.stop_ok();
}
