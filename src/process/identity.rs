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

/// Resolve `user` (a name or a numeric uid; None: drover's own) and `group` (a name or a numeric
/// gid; None: the user's primary group from its passwd entry).
pub fn resolve(user: Option<&str>, group: Option<&str>) -> Result<Identity, String> {
    let (uid, pw) = match user {
        None => (current().0, None),
        Some(u) => match u.parse::<libc::uid_t>() {
            Ok(uid) => (uid, lookup_user(Key::Uid(uid))?),
            Err(_) => {
                let c = CString::new(u).map_err(|_| format!("user `{u}` contains a NUL byte"))?;
                let p = lookup_user(Key::Name(&c))?
                    .ok_or_else(|| format!("no user `{u}` on this system"))?;
                (p.uid, Some(p))
            }
        },
    };
    let gid = match (group, &pw) {
        (Some(g), _) => match g.parse::<libc::gid_t>() {
            Ok(gid) => gid,
            Err(_) => lookup_group(g)?.ok_or_else(|| format!("no group `{g}` on this system"))?,
        },
        (None, Some(p)) => p.gid,
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
        home: pw.map(|p| p.home),
    })
}

/// Drover's own effective ids.
pub fn current() -> (libc::uid_t, libc::gid_t) {
    // SAFETY: geteuid/getegid cannot fail and have no preconditions.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

enum Key<'a> {
    Name(&'a CStr),
    Uid(libc::uid_t),
}

/// Call a reentrant getpw*_r / getgr*_r with a buffer that grows on ERANGE. `call` gets the
/// buffer and returns the function's result code and whether an entry was found; `what` names
/// the lookup in errors.
fn with_buffer(
    what: &str,
    mut call: impl FnMut(&mut [u8]) -> (libc::c_int, bool),
) -> Result<bool, String> {
    let mut buf = vec![0u8; 4096];
    loop {
        match call(&mut buf) {
            (libc::ERANGE, _) if buf.len() < 1 << 20 => buf.resize(buf.len() * 4, 0),
            (0, found) => return Ok(found),
            (rc, _) => {
                return Err(format!(
                    "looking up the {what} failed: {}",
                    std::io::Error::from_raw_os_error(rc)
                ))
            }
        }
    }
}

fn lookup_user(key: Key) -> Result<Option<Passwd>, String> {
    let mut entry = None;
    with_buffer("user", |buf| {
        // SAFETY: all-zero is a valid passwd; getpw*_r fills it with pointers into `buf`, read
        // below before `buf` is touched again.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut out: *mut libc::passwd = std::ptr::null_mut();
        let (ptr, len) = (buf.as_mut_ptr() as *mut libc::c_char, buf.len());
        // SAFETY: valid pointers and the true length of `buf`.
        let rc = unsafe {
            match key {
                Key::Name(n) => libc::getpwnam_r(n.as_ptr(), &mut pwd, ptr, len, &mut out),
                Key::Uid(u) => libc::getpwuid_r(u, &mut pwd, ptr, len, &mut out),
            }
        };
        if rc == 0 && !out.is_null() {
            // SAFETY: on success the string fields point at NUL-terminated strings in `buf`.
            entry = Some(unsafe {
                Passwd {
                    name: CStr::from_ptr(pwd.pw_name).to_string_lossy().into_owned(),
                    uid: pwd.pw_uid,
                    gid: pwd.pw_gid,
                    home: CStr::from_ptr(pwd.pw_dir).to_string_lossy().into_owned(),
                }
            });
        }
        (rc, !out.is_null())
    })?;
    Ok(entry)
}

fn lookup_group(name: &str) -> Result<Option<libc::gid_t>, String> {
    let cname = CString::new(name).map_err(|_| format!("group `{name}` contains a NUL byte"))?;
    let mut gid = None;
    with_buffer("group", |buf| {
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
        if rc == 0 && !out.is_null() {
            gid = Some(grp.gr_gid);
        }
        (rc, !out.is_null())
    })?;
    Ok(gid)
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
