//! Processes: how drover starts, watches, signals and reaps them. Everything between fork and
//! exec lives in `spawn`; every `waitpid` in `reaper`.

pub mod children;
pub mod claim;
pub mod guard;
pub mod identity;
pub mod notify;
pub mod pidfd;
pub mod preload;
pub mod probe;
pub mod reaper;
pub mod rundir;
pub mod signals;
pub mod sockets;
pub mod spawn;
pub mod untrusted;
