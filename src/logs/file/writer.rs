//! A program's file writer thread: formats lines, writes them in batches, rotates by size on a
//! line boundary, counts and marks what it could not write.
//!
//! Rotation: when the next line would take `NAME.log` past `max_size`, `NAME.log.(N-1)` becomes
//! `NAME.log.N` … `NAME.log` becomes `NAME.log.1` and a fresh `NAME.log` is opened (backups = 0:
//! `NAME.log` is truncated). Lines queued meanwhile wait in the queue, so none is lost and none
//! straddles two files. When a rename fails (a worker planted a directory at `NAME.log.1`),
//! `NAME.log` is truncated in place instead, so it stays bounded; the failure is logged once per
//! streak, and the next rotation tries renaming again.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;
use tokio::sync::mpsc;
use tracing::{error, info};

use super::open::{open_dir, open_file};
use super::{Dropped, Entry, Msg, Shared};
use crate::config::log::LogFileCfg;

/// Messages taken before a batch is written.
const BATCH: usize = 512;
/// With no file open (it could not be reopened after a rotation), try again this often.
const RETRY: Duration = Duration::from_secs(1);

struct Target {
    cfg: LogFileCfg,
    dir: OwnedFd,
    name: OsString,
    file: std::fs::File,
    size: u64,
}

struct Writer {
    shared: Arc<Shared>,
    target: Option<Target>,
    /// the configured file while none is open, and when opening it was last tried
    reopen: Option<(LogFileCfg, Instant)>,
    /// formatted lines not yet written, and how many lines they hold
    buf: Vec<u8>,
    lines: u64,
    /// drops not yet told in a marker line, by reason (stalled ones live in `Shared`)
    unmarked: [u64; 4],
    /// markers in `buf`: given back to `unmarked` if the batch fails
    marked: [u64; 4],
    /// a failure streak is logged once: writing, rotating
    write_failing: bool,
    rotate_failing: bool,
    /// the timestamp's date and time down to the second, for the second it was made
    stamp: (u64, String),
}

pub(super) fn spawn(shared: Arc<Shared>, mut rx: mpsc::Receiver<Msg>) {
    let name = format!("drover-log-{}", shared.program);
    let mut w = Writer {
        shared,
        target: None,
        reopen: None,
        buf: Vec::with_capacity(64 * 1024),
        lines: 0,
        unmarked: [0; 4],
        marked: [0; 4],
        write_failing: false,
        rotate_failing: false,
        stamp: (u64::MAX, String::new()),
    };
    // the name is cut to what the kernel keeps (15 bytes); the thread runs for drover's life
    let spawned = std::thread::Builder::new().name(name).spawn(move || {
        let mut acks = vec![];
        while let Some(first) = rx.blocking_recv() {
            w.configure();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(m) = next {
                match m {
                    Msg::Line(e) => w.add(e),
                    Msg::Wake => {}
                    Msg::Flush(ack) => acks.push(ack),
                }
                taken += 1;
                next = if taken < BATCH {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            w.write_batch();
            for ack in acks.drain(..) {
                let _ = ack.send(());
            }
        }
    });
    if let Err(e) = spawned {
        error!("cannot start a log file writer thread: {e}; that program's lines go to drover's stdout");
    }
}

impl Writer {
    /// Act on the configuration the registry asked for last, if it has not been yet.
    fn configure(&mut self) {
        let (want, asked) = {
            let w = self.shared.want.lock().unwrap_or_else(|e| e.into_inner());
            (w.0.clone(), w.1)
        };
        let shared = self.shared.clone();
        let (m, cv) = &shared.done;
        if *m.lock().unwrap_or_else(|e| e.into_inner()) >= asked {
            return;
        }
        self.write_batch();
        let program = self.shared.program.clone();
        match want {
            None => {
                if let Some(t) = self.target.take() {
                    info!("program {program}: its lines go to drover's stdout again, no longer to {}", t.cfg.path.display());
                }
                self.reopen = None;
                self.shared.open.store(false, Ordering::Release);
            }
            Some(cfg) => match open(&cfg) {
                Ok(t) => {
                    self.target = Some(t);
                    self.reopen = None;
                    self.shared.open.store(true, Ordering::Release);
                }
                Err(e) => match &self.target {
                    Some(t) => error!("program {program}: cannot open its log file: {e}; its lines go on to {} as before (fix it and reload)", t.cfg.path.display()),
                    None => {
                        error!("program {program}: cannot open its log file: {e}; its lines go to drover's stdout instead (fix it and reload)");
                        self.shared.open.store(false, Ordering::Release);
                    }
                },
            },
        }
        *m.lock().unwrap_or_else(|e| e.into_inner()) = asked;
        cv.notify_all();
    }

    fn add(&mut self, e: Entry) {
        if self.target.is_none() && !self.try_reopen() {
            self.unmarked[Dropped::Unwritable as usize] += 1;
            self.shared.stats.count(Dropped::Unwritable, 1);
            return;
        }
        self.mark_drops(e.at);
        let start = self.buf.len();
        self.format(&e);
        self.lines += 1;
        self.fit(start, true);
    }

    /// Make room for the line at `buf[start..]` (a program's line, or a marker: `counted`
    /// false): rotate first when it would take the file past its size.
    fn fit(&mut self, start: usize, counted: bool) {
        let Some(t) = &self.target else { return };
        let len = (self.buf.len() - start) as u64;
        let before = t.size + start as u64;
        if before == 0 || before + len <= t.cfg.max_size {
            return;
        }
        let line = self.buf.split_off(start);
        let counted = u64::from(counted);
        self.lines -= counted;
        self.write_batch();
        self.rotate();
        self.buf.extend_from_slice(&line);
        self.lines += counted;
    }

    /// Marker lines for drops not yet told, before the next line.
    fn mark_drops(&mut self, at: SystemTime) {
        let stalled = self.shared.unmarked.swap(0, Ordering::Relaxed);
        self.unmarked[Dropped::Stalled as usize] += stalled;
        if self.unmarked.iter().all(|&n| n == 0) {
            return;
        }
        for why in Dropped::ALL {
            let n = std::mem::take(&mut self.unmarked[why as usize]);
            if n == 0 {
                continue;
            }
            self.marked[why as usize] += n;
            let start = self.buf.len();
            self.stamp(at);
            let _ = writeln!(
                self.buf,
                " drover | [drover: {n} line{} dropped: {}]",
                if n == 1 { "" } else { "s" },
                why.why()
            );
            self.fit(start, false);
        }
    }

    fn format(&mut self, e: &Entry) {
        self.stamp(e.at);
        let l = &e.line;
        let text = l.text.strip_suffix(b"\r").unwrap_or(&l.text);
        self.buf.push(b' ');
        self.buf.extend_from_slice(l.source.label.as_bytes());
        self.buf.extend_from_slice(b" | ");
        self.buf.extend_from_slice(text);
        if l.split {
            self.buf.extend_from_slice(b" [line continues]");
        }
        self.buf.push(b'\n');
    }

    /// `2026-12-05T07:20:01.123Z` into `buf`.
    fn stamp(&mut self, at: SystemTime) {
        let d = at.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        if self.stamp.0 != d.as_secs() {
            let full = crate::logs::rfc3339_at(d);
            self.stamp = (d.as_secs(), full[..19].to_string());
        }
        self.buf.extend_from_slice(self.stamp.1.as_bytes());
        let _ = write!(self.buf, ".{:03}Z", d.subsec_millis());
    }

    /// Write what is batched. A failed write is undone (the file truncated back to where it
    /// was, so no partial line stays), its lines counted as dropped and marked later.
    fn write_batch(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let program = self.shared.program.clone();
        let Some(t) = &mut self.target else {
            // a rotation could not open a fresh file: what was batched for it is lost, and told
            self.unmark();
            self.unmarked[Dropped::Unwritable as usize] += self.lines;
            self.shared.stats.count(Dropped::Unwritable, self.lines);
            self.buf.clear();
            self.lines = 0;
            return;
        };
        match t.file.write_all(&self.buf) {
            Ok(()) => {
                t.size += self.buf.len() as u64;
                self.shared
                    .stats
                    .bytes
                    .fetch_add(self.buf.len() as u64, Ordering::Relaxed);
                self.marked = [0; 4];
                if self.write_failing {
                    info!(
                        "program {program}: writing {} works again",
                        t.cfg.path.display()
                    );
                    self.write_failing = false;
                }
            }
            Err(e) => {
                let _ = nix::unistd::ftruncate(t.file.as_fd(), t.size as i64);
                let why = match e.raw_os_error().map(Errno::from_raw) {
                    Some(Errno::ENOSPC | Errno::EDQUOT) => Dropped::DiskFull,
                    _ => Dropped::IoError,
                };
                let (lines, failing) = (self.lines, self.write_failing);
                let path = t.cfg.path.display().to_string();
                self.unmark();
                self.unmarked[why as usize] += lines;
                self.shared.stats.count(why, lines);
                if !failing {
                    error!("program {program}: cannot write {path}: {e}; its lines are dropped and counted (drover_log_file_lines_dropped_total) until writing works again, then a marker line says how many");
                    self.write_failing = true;
                }
            }
        }
        self.buf.clear();
        self.lines = 0;
        // the writer moved: pumps may wait for the queue again
        self.shared.stalled.store(false, Ordering::Release);
    }

    /// The markers batched were not written: their drops are still to be told.
    fn unmark(&mut self) {
        for (u, m) in self.unmarked.iter_mut().zip(self.marked.iter_mut()) {
            *u += std::mem::take(m);
        }
    }

    fn rotate(&mut self) {
        let program = self.shared.program.clone();
        let Some(t) = &mut self.target else { return };
        if t.cfg.backups == 0 {
            match nix::unistd::ftruncate(t.file.as_fd(), 0) {
                Ok(()) => {
                    t.size = 0;
                    self.shared.stats.rotations.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => error!(
                    "program {program}: cannot truncate {}: {e}",
                    t.cfg.path.display()
                ),
            }
            return;
        }
        match shift(t) {
            Ok(()) => {
                self.shared.stats.rotations.fetch_add(1, Ordering::Relaxed);
                self.rotate_failing = false;
                let shown = t.cfg.path.clone();
                match open_file(&t.dir, &t.name, &shown) {
                    Ok((file, size)) => {
                        t.file = file;
                        t.size = size;
                    }
                    Err(e) => {
                        error!("program {program}: rotated, but cannot open a fresh log file: {e}; its lines are dropped and counted until it opens (tried every second)");
                        self.reopen = Some((t.cfg.clone(), Instant::now()));
                        self.target = None;
                    }
                }
            }
            Err(e) => {
                if !self.rotate_failing {
                    error!("program {program}: cannot rotate {}: {e}; truncating it in place instead so it stays within max_size (tried again at each rotation; said once until it works)", t.cfg.path.display());
                    self.rotate_failing = true;
                }
                match nix::unistd::ftruncate(t.file.as_fd(), 0) {
                    Ok(()) => t.size = 0,
                    Err(e) => error!(
                        "program {program}: cannot truncate {}: {e}",
                        t.cfg.path.display()
                    ),
                }
            }
        }
    }

    /// No file open since a rotation could not open a fresh one: try again, at most every
    /// `RETRY`.
    fn try_reopen(&mut self) -> bool {
        let Some((cfg, tried)) = &mut self.reopen else {
            return false;
        };
        if tried.elapsed() < RETRY {
            return false;
        }
        *tried = Instant::now();
        match open(cfg) {
            Ok(t) => {
                info!(
                    "program {}: {} is open again",
                    self.shared.program,
                    cfg.path.display()
                );
                self.target = Some(t);
                self.reopen = None;
                true
            }
            Err(_) => false,
        }
    }
}

/// `NAME.log.(N-1)` → `NAME.log.N` … `NAME.log` → `NAME.log.1`, relative to the directory fd.
fn shift(t: &Target) -> Result<(), String> {
    let numbered = |i: u32| {
        let mut n = t.name.clone();
        n.push(format!(".{i}"));
        n
    };
    let rename = |from: &OsString, to: &OsString| {
        nix::fcntl::renameat(&t.dir, from.as_os_str(), &t.dir, to.as_os_str())
    };
    for i in (1..t.cfg.backups).rev() {
        // only drover's own files move: a directory a worker made there stays where it is
        let st = nix::sys::stat::fstatat(
            &t.dir,
            numbered(i).as_os_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        if st.is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR) {
            return Err(format!("{:?} is a directory, not drover's", numbered(i)));
        }
        match rename(&numbered(i), &numbered(i + 1)) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => {
                return Err(format!(
                    "renaming {:?} to {:?}: {e}",
                    numbered(i),
                    numbered(i + 1)
                ))
            }
        }
    }
    rename(&t.name, &numbered(1)).map_err(|e| format!("renaming it to {:?}: {e}", numbered(1)))
}

fn open(cfg: &LogFileCfg) -> Result<Target, String> {
    let dir: PathBuf = cfg.path.parent().map(PathBuf::from).unwrap_or_default();
    let name = cfg
        .path
        .file_name()
        .ok_or_else(|| format!("{} names no file", cfg.path.display()))?
        .to_owned();
    let dirfd = open_dir(&dir).map_err(|e| format!("{}: {e}", cfg.path.display()))?;
    let (file, size) = open_file(&dirfd, &name, &cfg.path)?;
    Ok(Target {
        cfg: cfg.clone(),
        dir: dirfd,
        name,
        file,
        size,
    })
}
