//! Where a relative path in the configuration points. One rule, applied once when the file is
//! read, so `check`, `run` and a reload all see the same absolute paths:
//!
//! - a relative `cwd` (program or step), `watch` path, unix socket path (`[socket.*] listen`,
//!   `supervisor.status`), `control_token_file`, `tls_cert`, `tls_key` or `env_file` entry is
//!   relative to the directory of the configuration file (in one-line mode, which has no file:
//!   the current directory), wherever drover is started from;
//! - a relative command containing a `/` is relative to the worker's `cwd`, as a shell would see
//!   it after `cd` (`spawn::resolve` joins the two; with no `cwd`, drover's own directory).
//!
//! No I/O: `base` is made absolute by the caller.

use std::path::{Component, Path, PathBuf};

use super::{Config, ListenAddr};

/// Make every relative path in `cfg` relative to `base` (absolute).
pub fn anchor(cfg: &mut Config, base: &Path) {
    let at = |p: &mut PathBuf| *p = join(base, p);
    let s = &mut cfg.supervisor;
    if let Some(ListenAddr::Unix(p)) = &mut s.status {
        at(p);
    }
    for p in [&mut s.control_token_file, &mut s.tls_cert, &mut s.tls_key]
        .into_iter()
        .flatten()
    {
        at(p);
    }
    for f in &mut s.env_file {
        at(&mut f.path);
    }
    for k in &mut cfg.sockets {
        if let ListenAddr::Unix(p) = &mut k.listen {
            at(p);
        }
    }
    for st in &mut cfg.prestart {
        if let Some(c) = &mut st.cwd {
            at(c);
        }
        for f in &mut st.env_file {
            at(&mut f.path);
        }
    }
    for p in &mut cfg.programs {
        if let Some(c) = &mut p.cwd {
            at(c);
        }
        for w in &mut p.watch {
            at(w);
        }
        if let Some(f) = &mut p.log_file {
            at(&mut f.path);
        }
        for f in &mut p.env_file {
            at(&mut f.path);
        }
    }
}

/// `base/p` for a relative `p`, without its `.` components (`./app` is `base/app`). A leading
/// `..` climbs out of `base` (which the caller resolved, so no symlink is skipped that way); a
/// `..` after a name in `p` is kept, for the kernel to follow.
fn join(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    let mut out = base.to_path_buf();
    let mut named = false;
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if !named && out.parent().is_some() => {
                out.pop();
            }
            c => {
                named |= c != Component::ParentDir;
                out.push(c);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_the_files_directorys_absolute_ones_stay() {
        let text = r#"
[supervisor]
status = "unix:run/status.sock"
control_token_file = "secrets/token"
[socket.http]
listen = "unix:./run/http.sock"
[socket.tcp]
listen = "127.0.0.1:0"
[[prestart]]
name = "migrate"
command = ["bin/migrate"]
cwd = "."
[program.api]
command = ["venv/bin/uvicorn", "main:app"]
cwd = "app"
watch = ["app/src", "/abs/lib", "../shared", "app/../x"]
sockets = ["http", "tcp"]
[program.other]
command = ["x"]
cwd = "/srv/other"
"#;
        let mut cfg = crate::config::parse("t.toml", text, &|_| None).unwrap();
        anchor(&mut cfg, Path::new("/etc/proj"));
        let unix = |a: &ListenAddr| match a {
            ListenAddr::Unix(p) => p.display().to_string(),
            ListenAddr::Tcp(a) => a.to_string(),
        };
        assert_eq!(
            unix(cfg.supervisor.status.as_ref().unwrap()),
            "/etc/proj/run/status.sock"
        );
        assert_eq!(
            cfg.supervisor.control_token_file.as_deref(),
            Some(Path::new("/etc/proj/secrets/token"))
        );
        assert_eq!(unix(&cfg.sockets[0].listen), "/etc/proj/run/http.sock");
        assert_eq!(unix(&cfg.sockets[1].listen), "127.0.0.1:0");
        assert_eq!(cfg.prestart[0].cwd.as_deref(), Some(Path::new("/etc/proj")));
        let api = &cfg.programs[0];
        assert_eq!(api.cwd.as_deref(), Some(Path::new("/etc/proj/app")));
        assert_eq!(
            api.watch,
            vec![
                PathBuf::from("/etc/proj/app/src"),
                PathBuf::from("/abs/lib"),
                PathBuf::from("/etc/shared"),
                PathBuf::from("/etc/proj/app/../x"),
            ]
        );
        // the command is left to the worker's cwd, as a shell after `cd` would see it
        assert_eq!(api.command.argv()[0], "venv/bin/uvicorn");
        assert_eq!(
            crate::process::spawn::resolve("venv/bin/uvicorn", None, api.cwd.as_deref()),
            Some(PathBuf::from("/etc/proj/app/venv/bin/uvicorn"))
        );
        assert_eq!(
            cfg.programs[1].cwd.as_deref(),
            Some(Path::new("/srv/other"))
        );
    }
}
