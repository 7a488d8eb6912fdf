//! The user and group a program's workers run as (`user = "app"`, `group = "app"`).
//!
//! Names are looked up once, when the configuration is planned (nix's reentrant look-ups);
//! the forked child only makes the three syscalls that drop privileges (`setgroups`, `setgid`,
//! `setuid`, in that order), after it has joined its cgroup and before it execs.

use nix::unistd::{getegid, geteuid, Group, Uid, User};

/// Who a program's workers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// from the passwd entry, when there is one: USER/LOGNAME and HOME for the worker
    pub name: Option<String>,
    pub home: Option<String>,
}

/// Resolve `user` (a name or a numeric uid; None: drover's own) and `group` (a name or a numeric
/// gid; None: the user's primary group from its passwd entry).
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Identity, String> {
    let lookup = |e: nix::Error| format!("looking up the user failed: {e}");
    let (uid, pw) = match user {
        None => (current().0, None),
        Some(u) => match u.parse::<libc::uid_t>() {
            Ok(uid) => (uid, User::from_uid(Uid::from_raw(uid)).map_err(lookup)?),
            Err(_) => {
                let p = User::from_name(u)
                    .map_err(lookup)?
                    .ok_or_else(|| format!("no user `{u}` on this system"))?;
                (p.uid.as_raw(), Some(p))
            }
        },
    };
    let gid = match (group, &pw) {
        (Some(g), _) => match g.parse::<libc::gid_t>() {
            Ok(gid) => gid,
            Err(_) => Group::from_name(g)
                .map_err(|e| format!("looking up the group failed: {e}"))?
                .ok_or_else(|| format!("no group `{g}` on this system"))?
                .gid
                .as_raw(),
        },
        (None, Some(p)) => p.gid.as_raw(),
        (None, None) => {
            return Err(format!(
                "uid {uid} has no passwd entry, so it has no primary group: set `group` too"
            ))
        }
    };
    Ok(Identity {
        uid,
        gid,
        name: pw.as_ref().map(|p| p.name.clone()),
        home: pw.map(|p| p.dir.display().to_string()),
    })
}

impl Identity {
    /// What a process started as this user is told of it, as systemd does for `User=`: its own
    /// USER, LOGNAME and HOME, not drover's.
    pub fn env(&self) -> Vec<(&'static str, &str)> {
        let mut v = vec![];
        if let Some(n) = &self.name {
            v.push(("USER", n.as_str()));
            v.push(("LOGNAME", n.as_str()));
        }
        if let Some(h) = &self.home {
            v.push(("HOME", h.as_str()));
        }
        v
    }
}

/// Drover's own effective ids.
pub fn current() -> (libc::uid_t, libc::gid_t) {
    (geteuid().as_raw(), getegid().as_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_by_name_and_number() {
        let by_name = resolve(Some("root"), None).unwrap();
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert_eq!(by_name.name.as_deref(), Some("root"));
        let by_number = resolve(Some("0"), Some("0")).unwrap();
        assert_eq!((by_number.uid, by_number.gid), (0, 0));
    }

    #[test]
    fn unknown_names_are_errors_that_say_so() {
        let e = resolve(Some("no-such-user-drover"), None).unwrap_err();
        assert_eq!(e, "no user `no-such-user-drover` on this system");
        let e = resolve(Some("root"), Some("no-such-group-drover")).unwrap_err();
        assert_eq!(e, "no group `no-such-group-drover` on this system");
        let e = resolve(Some("4000000000"), None).unwrap_err();
        assert!(e.contains("has no passwd entry"), "{e}");
        assert_eq!(resolve(Some("4000000000"), Some("7")).unwrap().gid, 7);
    }
}
