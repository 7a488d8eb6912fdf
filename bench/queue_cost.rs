//! The cost of one accept-queue read, from drover's own `resources::queue::Reader`, beside the
//! cheapest syscall (getppid: the floor no read can beat). Not a test: `bench/bench.py queue`
//! runs it (`cargo run --release --example queue_cost`) and reports the figures.

use std::os::fd::AsFd;
use std::time::Instant;

use drover::resources::queue::{Kind, Reader};

const N: u32 = 200_000;

fn time(f: &mut dyn FnMut() -> u32) -> f64 {
    let t0 = Instant::now();
    let mut sum = 0u64;
    for _ in 0..N {
        sum += u64::from(f());
    }
    std::hint::black_box(sum);
    t0.elapsed().as_nanos() as f64 / f64::from(N)
}

fn main() {
    // listeners with 10 connections waiting each
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("a TCP listener");
    let addr = tcp.local_addr().expect("its address");
    let _t: Vec<_> = (0..10)
        .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
        .collect();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("c.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).expect("a unix listener");
    let _u: Vec<_> = (0..10)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).expect("connect"))
        .collect();
    let mut r = Reader::default();
    // the connections reach the queue as their handshakes complete
    let end = Instant::now() + std::time::Duration::from_secs(10);
    while r.read(tcp.as_fd(), Kind::Tcp).map(|q| q.len) != Ok(10) {
        assert!(Instant::now() < end, "10 connections never queued");
        std::thread::yield_now();
    }
    let floor = time(&mut || nix::unistd::getppid().as_raw() as u32);
    let tcp_ns = time(&mut || r.read(tcp.as_fd(), Kind::Tcp).map_or(0, |q| q.len));
    let unix_ok = r.read(unix.as_fd(), Kind::Unix).is_ok();
    let unix_ns = time(&mut || r.read(unix.as_fd(), Kind::Unix).map_or(0, |q| q.len));
    println!(
        "QUEUE_COST {{\"tcp_ns\": {tcp_ns:.0}, \"unix_ns\": {unix_ns:.0}, \"unix_reported\": {unix_ok}, \"syscall_floor_ns\": {floor:.0}, \"reads\": {N}}}"
    );
}
