//! Where `drover status`, `top` and `ctl` find a running drover: the address `--url` names,
//! else `$DROVER_STATUS_URL`, else the `supervisor.status` of the configuration `run` would read
//! (`-c FILE`, `$DROVER_CONFIG`, `./drover.toml`, `/etc/drover/drover.toml`), else the default
//! `http://127.0.0.1:9900`. `ctl` also takes the control token file from that configuration
//! when neither `--token-file` nor `$DROVER_TOKEN` gives one, and only for that file's address.
//!
//! A file found on its own (`./drover.toml` in whatever directory the command runs from) is used
//! only when it belongs to you or root and nobody else can write it: otherwise another local
//! user could name their own listener as the status address and receive the token that `ctl`
//! sends (ssh's `StrictModes` rule). A file named with `-c` or `$DROVER_CONFIG` is the user's
//! choice.

use std::path::{Path, PathBuf};

use crate::config::{self, ListenAddr};

use super::client::DEFAULT_URL;

/// The files `drover run` reads when no `-c` is given (and `$DROVER_CONFIG` is unset), in order.
pub const CONFIG_PATHS: &[&str] = &["./drover.toml", "/etc/drover/drover.toml"];

/// The configuration file `run` would read: `-c`, `$DROVER_CONFIG`, the first of
/// `CONFIG_PATHS` that exists. True when the user named it (`-c` or `$DROVER_CONFIG`).
pub fn config_file(flag: Option<PathBuf>) -> Option<(PathBuf, bool)> {
    if let Some(p) = flag {
        return Some((p, true));
    }
    if let Some(p) = std::env::var_os("DROVER_CONFIG").filter(|p| !p.is_empty()) {
        return Some((p.into(), true));
    }
    CONFIG_PATHS
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .map(|p| (p.to_path_buf(), false))
}

/// A running drover's address, and the token file its configuration names.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub token_file: Option<PathBuf>,
}

/// Where to reach drover. `Err` (exit 2) when the configuration the user named cannot say;
/// a configuration found on its own that cannot be read is reported on stderr and the default
/// asked instead.
pub fn locate(url: Option<String>, config: Option<PathBuf>) -> Result<Target, String> {
    let url = url.or_else(|| {
        std::env::var("DROVER_STATUS_URL")
            .ok()
            .filter(|u| !u.is_empty())
    });
    if let Some(url) = url {
        // an address given outright needs nothing from a file, and gets none of its token
        return Ok(Target {
            url,
            token_file: None,
        });
    }
    let Some((file, named)) = config_file(config) else {
        return Ok(Target {
            url: DEFAULT_URL.into(),
            token_file: None,
        });
    };
    match from_file(&file, !named) {
        Ok(t) => Ok(t),
        Err(e) if named => Err(e),
        Err(e) => {
            eprintln!("drover: {e}; asking {DEFAULT_URL} instead (--url or -c to choose)");
            Ok(Target {
                url: DEFAULT_URL.into(),
                token_file: None,
            })
        }
    }
}

/// The status address and token file of one configuration file; `strict`: only if it belongs
/// to this user or root and nobody else can write it.
fn from_file(file: &Path, strict: bool) -> Result<Target, String> {
    let shown = file.display().to_string();
    let text = read(file, strict)
        .map_err(|e| format!("cannot read configuration {shown}: {e}"))
        .and_then(|b| config::decode(&shown, &b).map_err(|e| e.to_string()))?;
    let cfg = config::parse(&shown, &text, &|k| std::env::var(k).ok()).map_err(|e| {
        format!(
            "cannot find drover's status address in {}",
            e.to_string().trim_end()
        )
    })?;
    let sup = &cfg.supervisor;
    let url = match &sup.status {
        None => {
            return Err(format!(
                "{shown} sets supervisor.status = \"off\": that drover serves no status endpoint to ask (pass --url if another one does)"
            ))
        }
        Some(ListenAddr::Tcp(a)) if a.port() == 0 => {
            return Err(format!(
                "{shown} sets supervisor.status to port 0, chosen when drover starts: pass --url with the address drover logged (\"status endpoint on ...\")"
            ))
        }
        Some(ListenAddr::Tcp(_)) if sup.tls_cert.is_some() => {
            return Err(format!(
                "{shown} serves the status endpoint over https (supervisor.tls_cert), which this command does not speak; use curl, or a unix: status address for local use"
            ))
        }
        Some(ListenAddr::Tcp(a)) => {
            let mut a = *a;
            if a.ip().is_unspecified() {
                // every address: ask on loopback
                a.set_ip(if a.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            format!("http://{a}")
        }
        Some(ListenAddr::Unix(p)) => format!("unix:{}", beside(file, p).display()),
    };
    Ok(Target {
        url,
        // read as `run` reads it
        token_file: sup.control_token_file.clone(),
    })
}

/// The file's bytes; with `strict`, checked on the open file (no race with a rename).
fn read(file: &Path, strict: bool) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    if strict {
        let md = f.metadata().map_err(|e| e.to_string())?;
        let me = nix::unistd::geteuid().as_raw();
        if md.uid() != 0 && md.uid() != me {
            return Err(format!(
                "it belongs to uid {}, neither you nor root, so it is not trusted to say where drover is (name it with -c if you trust it)",
                md.uid()
            ));
        }
        if md.mode() & 0o022 != 0 {
            return Err(format!(
                "its group or others can write it (mode {:o}), so it is not trusted to say where drover is (name it with -c if you trust it)",
                md.mode() & 0o7777
            ));
        }
    }
    let mut b = vec![];
    f.read_to_end(&mut b).map_err(|e| e.to_string())?;
    Ok(b)
}

/// A relative socket path in a configuration file is relative to the file's directory.
fn beside(file: &Path, p: &Path) -> PathBuf {
    match file.parent() {
        Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// `ctl`'s bearer token: `--token-file`, else `$DROVER_TOKEN`, else the configuration's
/// `control_token_file` (not over a unix socket, where the socket's permissions are the check).
pub fn token(flag: Option<PathBuf>, target: &Target) -> Result<Option<String>, String> {
    if let Some(p) = flag {
        return super::control::read_token(&p).map(Some);
    }
    if let Some(t) = std::env::var("DROVER_TOKEN").ok().filter(|t| !t.is_empty()) {
        return Ok(Some(t));
    }
    match &target.token_file {
        Some(p) if !target.url.starts_with("unix:") => super::control::read_token(p)
            .map(Some)
            .map_err(|e| format!("{e} (named by the configuration's control_token_file; pass --token-file or set $DROVER_TOKEN)")),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: &str) -> Result<Target, String> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drover.toml");
        std::fs::write(&file, text).unwrap();
        from_file(&file, true).map(|t| Target {
            url: t.url.replace(dir.path().to_str().unwrap(), "DIR"),
            token_file: t.token_file.map(|p| {
                p.to_string_lossy()
                    .replace(dir.path().to_str().unwrap(), "DIR")
                    .into()
            }),
        })
    }

    const PROGRAM: &str = "[program.app]\ncommand = \"sleep 1\"\n";

    #[test]
    fn the_status_address_of_a_file() {
        let t = |sup: &str| target(&format!("[supervisor]\n{sup}\n{PROGRAM}"));
        assert_eq!(
            t("status = \"127.0.0.1:9911\"").unwrap().url,
            "http://127.0.0.1:9911"
        );
        assert_eq!(
            t("status = \"0.0.0.0:9911\"").unwrap().url,
            "http://127.0.0.1:9911"
        );
        assert_eq!(
            t("status = \"[::]:9911\"").unwrap().url,
            "http://[::1]:9911"
        );
        assert_eq!(
            t("status = \"unix:/run/d.sock\"").unwrap().url,
            "unix:/run/d.sock"
        );
        assert_eq!(
            t("status = \"unix:d.sock\"").unwrap().url,
            "unix:DIR/d.sock"
        );
        assert_eq!(t("").unwrap().url, DEFAULT_URL, "the default when unset");
        let tok = t("status = \"127.0.0.1:9911\"\ncontrol_token_file = \"token\"").unwrap();
        assert_eq!(tok.token_file, Some(PathBuf::from("token")));
        assert!(t("status = \"off\"")
            .unwrap_err()
            .contains("serves no status endpoint"));
        assert!(t("status = \"127.0.0.1:0\"")
            .unwrap_err()
            .contains("port 0"));
        assert!(target("[supervisor]\nstatus = 3\n")
            .unwrap_err()
            .contains("cannot find drover's status address in"));
    }

    #[test]
    fn a_file_found_on_its_own_must_be_yours_and_yours_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("drover.toml");
        std::fs::write(&file, PROGRAM).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = from_file(&file, true).unwrap_err();
        assert!(e.contains("others can write it (mode 666)"), "{e}");
        assert!(
            from_file(&file, false).is_ok(),
            "named with -c: the user's choice"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(from_file(&file, true).is_ok());
        if nix::unistd::geteuid().is_root() {
            nix::unistd::chown(&file, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
            let e = from_file(&file, true).unwrap_err();
            assert!(
                e.contains("belongs to uid 65534, neither you nor root"),
                "{e}"
            );
        }
    }
}
