//! Every process drover started and has not reaped yet — workers, steps, exec checks,
//! preloaders — each held by a pidfd. This is the only way drover signals a process: a pid it
//! does not hold is never signalled, and a signal through a pidfd cannot reach whatever later
//! reuses the number. The guard gets a duplicate of each pidfd, so it too can only ever kill
//! what drover started.

use std::collections::HashMap;

use nix::sys::signal::Signal;

use super::guard::Guard;
use super::pidfd::PidFd;

pub struct Children {
    held: HashMap<i32, PidFd>,
    guard: Option<Guard>,
}

impl Children {
    pub fn new(guard: Option<Guard>) -> Children {
        Children {
            held: HashMap::new(),
            guard,
        }
    }

    /// A child drover has just spawned. It cannot have been reaped in between (drover is the
    /// only reaper, and reaps on this thread), so the pidfd is the child's. If no pidfd can be
    /// opened (out of file descriptors), the child is killed at once — by number, which is
    /// still its own, unreaped — and the error says why: drover does not run what it cannot
    /// hold.
    pub fn adopt(&mut self, pid: i32) -> std::io::Result<()> {
        match PidFd::open(pid) {
            Ok(fd) => {
                self.hold(fd);
                Ok(())
            }
            Err(e) => {
                let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                Err(e)
            }
        }
    }

    /// A process proven to be drover's (a preloaded worker whose claim was verified).
    pub fn hold(&mut self, fd: PidFd) {
        if let Some(g) = self.guard.as_mut() {
            g.watch(&fd);
        }
        self.held.insert(fd.pid(), fd);
    }

    pub fn holds(&self, pid: i32) -> bool {
        self.held.contains_key(&pid)
    }

    /// `sig` to the process group `pid` leads. False when drover holds no such child.
    pub fn signal_group(&self, pid: i32, sig: Signal) -> bool {
        match self.held.get(&pid) {
            Some(fd) => {
                let _ = fd.signal_group(sig);
                true
            }
            None => false,
        }
    }

    /// The reaper collected `pid`: what it left in its process group is killed, and it is let go.
    pub fn reaped(&mut self, pid: i32) {
        if let Some(fd) = self.held.remove(&pid) {
            fd.kill_leftovers();
            if let Some(g) = self.guard.as_mut() {
                g.unwatch(pid);
            }
        }
    }

    pub fn guard(&mut self) -> Option<&mut Guard> {
        self.guard.as_mut()
    }

    pub fn guard_pid(&self) -> Option<i32> {
        self.guard.as_ref().map(|g| g.pid)
    }

    /// Retry what the guard has not taken yet (it was stopped or slow). Never waits.
    pub fn flush_guard(&mut self) {
        if let Some(g) = self.guard.as_mut() {
            if g.pending() > 0 {
                g.flush();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
