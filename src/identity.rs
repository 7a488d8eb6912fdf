//! The user and group a program's workers run as (`user = "app"`, `group = "app"`).
//!
//! Names are looked up once, when the configuration is loaded, with the reentrant libc calls;
//! the forked child only makes the three syscalls that drop privileges (`setgroups`, `setgid`,
//! `setuid`, in that order), after it has joined its cgroup and before it execs.

use std::ffi::{CStr, CString};

/// Who a program's workers run as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    /// from the passwd entry, when there is one: USER/LOGNAME and HOME for the worker
    pub name: Option<String>,
    pub home: Option<String>,
}

struct Passwd {
    name: String,
    uid: libc::uid_t,
    gid: libc::gid_t,
    home: String,
}

/// Resolve `user` (a name or a numeric uid) and optional `group` (a name or a numeric gid).
/// Without `group`, the user's primary group from its passwd entry.
pub fn resolve(user: &str, group: Option<&str>) -> Result<Identity, String> {
    let pw = match user.parse::<libc::uid_t>() {
        Ok(uid) => lookup_user(None, Some(uid))?,
        Err(_) => Some(
            lookup_user(Some(user), None)?
                .ok_or_else(|| format!("no user `{user}` on this system"))?,
        ),
    };
    let uid = match (&pw, user.parse::<libc::uid_t>()) {
        (Some(p), _) => p.uid,
        (None, Ok(uid)) => uid,
        (None, Err(_)) => unreachable!("a named user without an entry was rejected above"),
    };
    let gid = match group {
        Some(g) => match g.parse::<libc::gid_t>() {
            Ok(gid) => gid,
            Err(_) => lookup_group(g)?.ok_or_else(|| format!("no group `{g}` on this system"))?,
        },
        None => match &pw {
            Some(p) => p.gid,
            None => {
                return Err(format!(
                    "uid {uid} has no passwd entry, so it has no primary group: set `group` too"
                ))
            }
        },
    };
    Ok(Identity {
        uid,
        gid,
        name: pw.as_ref().map(|p| p.name.clone()),
        home: pw.map(|p| p.home),
    })
}

/// Drover's own effective ids.
pub fn current() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: geteuid/getegid cannot fail and have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

fn lookup_user(name: Option<&str>, uid: Option<libc::uid_t>) -> Result<Option<Passwd>, String> {
    let cname = match name {
        Some(n) => Some(CString::new(n).map_err(|_| format!("user `{n}` contains a NUL byte"))?),
        None => None,
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid passwd; getpw*_r fills it with pointers into `buf`, which
        // outlives every read below.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: valid pointers and the true length of `buf`.
        let rc = unsafe {
            match (&cname, uid) {
                (Some(n), _) => libc::getpwnam_r(
                    n.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr() as *mut libc::c_char,
                    buf.len(),
                    &mut out,
                ),
                (None, Some(u)) => libc::getpwuid_r(
                    u,
                    &mut pwd,
                    buf.as_mut_ptr() as *mut libc::c_char,
                    buf.len(),
                    &mut out,
                ),
                (None, None) => return Ok(None),
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "looking up the user failed: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if out.is_null() {
            return Ok(None);
        }
        // SAFETY: on success the string fields point at NUL-terminated strings inside `buf`.
        let (name, home) = unsafe {
            (
                CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
                CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned(),
            )
        };
        return Ok(Some(Passwd {
            name,
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
            home,
        }));
    }
}

fn lookup_group(name: &str) -> Result<Option<libc::gid_t>, String> {
    let cname = CString::new(name).map_err(|_| format!("group `{name}` contains a NUL byte"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid group; getgrnam_r fills it with pointers into `buf`.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::group = std::ptr::null_mut();
        // SAFETY: valid pointers and the true length of `buf`.
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr() as *mut libc::c_char,
                buf.len(),
                &mut out,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "looking up the group failed: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        return Ok((!out.is_null()).then_some(grp.gr_gid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_root_by_name_and_number() {
        let by_name = resolve("root", None).unwrap();
        assert_eq!((by_name.uid, by_name.gid), (0, 0));
        assert_eq!(by_name.name.as_deref(), Some("root"));
        let by_number = resolve("0", Some("0")).unwrap();
        assert_eq!((by_number.uid, by_number.gid), (0, 0));
    }

    #[test]
    fn unknown_names_are_errors_that_say_so() {
        let e = resolve("no-such-user-drover", None).unwrap_err();
        assert_eq!(e, "no user `no-such-user-drover` on this system");
        let e = resolve("root", Some("no-such-group-drover")).unwrap_err();
        assert_eq!(e, "no group `no-such-group-drover` on this system");
        let e = resolve("4000000000", None).unwrap_err();
        assert!(e.contains("has no passwd entry"), "{e}");
        assert_eq!(resolve("4000000000", Some("7")).unwrap().gid, 7);
    }
}
