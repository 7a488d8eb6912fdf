//! drover's own log to the journal without a send on the thread that logs: each event becomes one
//! datagram of the journal's native protocol (<https://systemd.io/JOURNAL_NATIVE_PROTOCOL/>),
//! queued like a stderr line (`writer.rs`) and sent by the `drover-log` thread. A stalled journald
//! blocks only that thread; what does not fit in the queue is dropped and counted, and a datagram
//! says how many.
//!
//! Fields: `MESSAGE`, `PRIORITY` (error 3, warn 4, info 5, debug 6, trace 7), `SYSLOG_IDENTIFIER=drover`,
//! `TARGET`, `CODE_FILE`, `CODE_LINE`, and the event's own fields upper-cased without a prefix
//! (`PROGRAM=`, `WORKER=`, `PID=`, `STEP=`), so `journalctl PROGRAM=api WORKER=0` works.

use std::fmt;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};

use super::writer::{self, Sink};

/// Where journald listens for native-protocol datagrams.
pub const SOCKET: &str = "/run/systemd/journal/socket";
/// Another socket path in place of `SOCKET`, for tests that stand in for journald.
pub const SOCKET_ENV: &str = "DROVER_JOURNAL_SOCKET";

/// The journal's socket, written to only by the writer thread.
pub struct Journal {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Journal {
    /// Check that something listens on the journal's socket (journald discards an empty
    /// datagram), so drover can fall back to stderr at start when nothing does.
    pub fn connect() -> io::Result<Journal> {
        let path = std::env::var_os(SOCKET_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(SOCKET));
        let sock = UnixDatagram::unbound()?;
        sock.send_to(&[], &path)?;
        Ok(Journal { sock, path })
    }

    /// A datagram too large for the socket goes as a sealed memfd (the protocol's way).
    fn send_memfd(&self, payload: &[u8]) -> io::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, SealFlag};
        use nix::sys::memfd::{memfd_create, MFdFlags};
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        let fd = memfd_create(
            "drover-journal",
            MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
        )?;
        let mut file = std::fs::File::from(fd);
        file.write_all(payload)?;
        let seals = SealFlag::F_SEAL_SHRINK
            | SealFlag::F_SEAL_GROW
            | SealFlag::F_SEAL_WRITE
            | SealFlag::F_SEAL_SEAL;
        fcntl(&file, FcntlArg::F_ADD_SEALS(seals))?;
        let addr = UnixAddr::new(&self.path)?;
        let fds = [file.as_raw_fd()];
        sendmsg(
            self.sock.as_raw_fd(),
            &[],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&addr),
        )?;
        Ok(())
    }
}

impl Sink for Journal {
    fn write(&mut self, entry: &[u8]) -> io::Result<()> {
        match self.sock.send_to(entry, &self.path) {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => self.send_memfd(entry),
            Err(e) => Err(e),
        }
    }

    fn marker(&mut self, n: u64) -> Vec<u8> {
        let mut d = Vec::with_capacity(256);
        put(&mut d, "PRIORITY", b"4");
        put(&mut d, "SYSLOG_IDENTIFIER", b"drover");
        put(&mut d, "DROPPED", n.to_string().as_bytes());
        let msg = format!("{n} log line(s) dropped: the journal was not taking them (journald stalled or its socket full)");
        put(&mut d, "MESSAGE", msg.as_bytes());
        d
    }
}

/// The subscriber layer that turns each event into a datagram and queues it.
pub struct Layer;

impl<S: Subscriber> tracing_subscriber::Layer<S> for Layer {
    fn on_event(&self, event: &Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        let mut d = Vec::with_capacity(256);
        put(&mut d, "PRIORITY", &[priority(*meta.level())]);
        put(&mut d, "SYSLOG_IDENTIFIER", b"drover");
        put(&mut d, "TARGET", meta.target().as_bytes());
        if let Some(file) = meta.file() {
            put(&mut d, "CODE_FILE", file.as_bytes());
        }
        if let Some(line) = meta.line() {
            put(&mut d, "CODE_LINE", line.to_string().as_bytes());
        }
        event.record(&mut Fields(&mut d));
        writer::send(d);
    }
}

fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => b'3',
        Level::WARN => b'4',
        Level::INFO => b'5',
        Level::DEBUG => b'6',
        Level::TRACE => b'7',
    }
}

/// The event's fields, `message` as MESSAGE, the others by their own names.
struct Fields<'a>(&'a mut Vec<u8>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        put(self.0, &name(field.name()), value.as_bytes());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        put(self.0, &name(field.name()), format!("{value:?}").as_bytes());
    }
}

/// A field name as the journal accepts it: upper case, letters, digits and `_`, not starting
/// with `_` (those are trusted fields only journald sets); `.` becomes `_`.
fn name(field: &str) -> String {
    field
        .chars()
        .map(|c| if c == '.' { '_' } else { c })
        .skip_while(|&c| c == '_')
        .filter(|c| *c == '_' || c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// `KEY=VALUE\n`, or `KEY\n<u64 LE length><VALUE>\n` when the value holds a newline.
fn put(d: &mut Vec<u8>, key: &str, value: &[u8]) {
    if key.is_empty() {
        return;
    }
    d.extend_from_slice(key.as_bytes());
    if value.contains(&b'\n') {
        d.push(b'\n');
        d.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        d.push(b'=');
    }
    d.extend_from_slice(value);
    d.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_binary_safe_fields() {
        let mut d = vec![];
        put(&mut d, "MESSAGE", b"worker api.0 started");
        put(&mut d, "MESSAGE", b"two\nlines");
        let mut want = b"MESSAGE=worker api.0 started\nMESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(d, want);
    }

    #[test]
    fn field_names_are_the_journals() {
        let cases = [
            ("program", "PROGRAM"),
            ("message", "MESSAGE"),
            ("_private", "PRIVATE"),
            ("a.b-c", "A_BC"),
            ("__", ""),
        ];
        for (field, want) in cases {
            assert_eq!(name(field), want, "{field}");
        }
    }

    #[test]
    fn the_marker_is_a_warning_with_its_count() {
        let mut j = Journal {
            sock: UnixDatagram::unbound().unwrap(),
            path: PathBuf::from("/nonexistent"),
        };
        let m = String::from_utf8(j.marker(7)).unwrap();
        assert!(m.contains("PRIORITY=4\n"), "{m}");
        assert!(m.contains("DROPPED=7\n"), "{m}");
        assert!(m.contains("MESSAGE=7 log line(s) dropped"), "{m}");
    }
}
