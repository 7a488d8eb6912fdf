//! Reading the env files the configuration names (`config::env_file`, parsed by
//! `config::dotenv`) when the file is loaded: by `check`, by `run`, and again on every reload,
//! so a program whose files changed counts as changed. The supervisor's files are read once and
//! come first for every program and step; then each one's own, in order; `env` goes on top.
//!
//! A missing file is a positioned error unless it is optional (`-path`); a malformed line names
//! the file and its line, never its text. A file is opened without blocking (a FIFO or a device
//! named by mistake must not stop a reload on the loop thread) and must be a regular file of at
//! most `MAX_BYTES`. When drover is root, the file sets the environment of processes others may
//! not control (`LD_PRELOAD`, `PATH`), so it must be as safe as the configuration: owned by
//! root, by drover's user or by the one user everything it applies to runs as, and writable by
//! nobody else (sshd's StrictModes rule, as for the metrics directory).

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};

use crate::config::{dotenv, Config, EnvFile, FileEnv, Problem, ReadFile};

/// Larger than any environment a process can be given (`ARG_MAX`, 2 MiB, holds argv too).
const MAX_BYTES: u64 = 1 << 20;

/// Who reads the files: their owner and mode are checked only when drover is root.
struct Reader<'a> {
    euid: u32,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
}

/// Read every env file of `cfg` into its programs' and steps' `file_env`; every problem found,
/// positioned at the `env_file` entry. `lookup` is drover's own environment.
pub(super) fn load(cfg: &mut Config, lookup: &dyn Fn(&str) -> Option<String>) -> Vec<Problem> {
    let euid = nix::unistd::geteuid().as_raw();
    let mut r = Reader {
        euid,
        lookup,
        problems: vec![],
    };
    let uid = |id: &Option<crate::process::identity::Identity>| id.as_ref().map_or(euid, |i| i.uid);
    let mut everyone: Vec<u32> = cfg.prestart.iter().map(|s| uid(&s.identity)).collect();
    everyone.extend(cfg.programs.iter().map(|p| uid(&p.identity)));
    let common = FileEnv::default();
    let common = r.read_all(
        "[supervisor]",
        &cfg.supervisor.env_file,
        common,
        &everyone,
        "every program and step",
    );
    for s in &mut cfg.prestart {
        let what = format!("[[prestart]] {}", s.name);
        let whom = format!("pre-start step {}", s.name);
        s.file_env = r.read_all(
            &what,
            &s.env_file,
            common.clone(),
            &[uid(&s.identity)],
            &whom,
        );
    }
    for p in &mut cfg.programs {
        let what = format!("[program.{}]", p.name);
        let whom = format!("program {}'s workers", p.name);
        p.file_env = r.read_all(
            &what,
            &p.env_file,
            common.clone(),
            &[uid(&p.identity)],
            &whom,
        );
    }
    r.problems
}

impl Reader<'_> {
    /// `files` read in order after what `env` holds already.
    fn read_all(
        &mut self,
        what: &str,
        files: &[EnvFile],
        mut env: FileEnv,
        users: &[u32],
        whom: &str,
    ) -> FileEnv {
        for f in files {
            match self.read_one(f, &env.vars, users, whom) {
                Ok(Some(vars)) => {
                    env.files.push(ReadFile {
                        path: f.path.clone(),
                        keys: Some(vars.iter().map(|(k, _)| k.clone()).collect()),
                    });
                    env.vars.extend(vars);
                }
                Ok(None) => env.files.push(ReadFile {
                    path: f.path.clone(),
                    keys: None,
                }),
                Err(e) => self.problems.push(Problem {
                    line: f.line,
                    col: f.col,
                    message: format!("{what} env_file {}{e}", f.path.display()),
                }),
            }
        }
        env
    }

    /// One file's variables; `None`: optional and not there. The error follows the path
    /// (`: no such file`, `:3: …`).
    fn read_one(
        &self,
        f: &EnvFile,
        before: &[(String, String)],
        users: &[u32],
        whom: &str,
    ) -> Result<Option<Vec<(String, String)>>, String> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&f.path);
        let file = match file {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && f.optional => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!(
                    ": no such file (write \"-{}\" if it may be missing)",
                    f.written
                ))
            }
            Err(e) => return Err(format!(": cannot open it: {e}")),
        };
        let md = file.metadata().map_err(|e| format!(": {e}"))?;
        if !md.is_file() {
            return Err(": not a regular file".into());
        }
        if md.len() > MAX_BYTES {
            return Err(format!(
                ": {} bytes, more than an environment can hold ({MAX_BYTES} at most)",
                md.len()
            ));
        }
        if self.euid == 0 {
            self.check_owner(&md, users, whom)?;
        }
        let mut bytes = Vec::with_capacity(md.len() as usize);
        file.take(MAX_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!(": {e}"))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let line = e.as_bytes()[..e.utf8_error().valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            format!(":{line}: not UTF-8 text")
        })?;
        let lookup = |k: &str| {
            before
                .iter()
                .rev()
                .find(|(bk, _)| bk == k)
                .map(|(_, v)| v.clone())
                .or_else(|| (self.lookup)(k))
        };
        dotenv::parse(&text, &lookup)
            .map(Some)
            .map_err(|e| format!(":{}: {}", e.line, e.message))
    }

    /// Writable only by root, drover's user, or the one user everything it applies to runs as.
    fn check_owner(&self, md: &std::fs::Metadata, users: &[u32], whom: &str) -> Result<(), String> {
        let mode = md.mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(format!(
                ": writable by its group or others (mode {mode:o}), who could set the environment (LD_PRELOAD, PATH) of {whom}; `chmod go-w` it"
            ));
        }
        let owner = md.uid();
        let only = users.first().filter(|u| users.iter().all(|x| x == *u));
        if owner == 0 || owner == self.euid || only == Some(&owner) {
            return Ok(());
        }
        Err(format!(
            ": belongs to uid {owner}, who could set the environment (LD_PRELOAD, PATH) of {whom} (running as {}); chown it to root",
            describe(users)
        ))
    }
}

/// `uid 0` or `uids 0, 33`.
fn describe(users: &[u32]) -> String {
    let mut u: Vec<u32> = users.to_vec();
    u.sort_unstable();
    u.dedup();
    let list: Vec<String> = u.iter().map(u32::to_string).collect();
    format!(
        "uid{} {}",
        if u.len() == 1 { "" } else { "s" },
        list.join(", ")
    )
}
