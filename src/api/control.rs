//! Control requests from the HTTP API (or `drover ctl`) to the supervisor loop. The API never
//! touches worker state: it sends a `Request` with a oneshot for the answer.

use std::path::Path;

use tokio::sync::oneshot;

#[derive(Debug)]
pub enum Command {
    /// rolling restart of one program
    Restart {
        program: String,
    },
    /// re-read the configuration file and apply it
    Reload,
    Scale {
        program: String,
        workers: u32,
    },
    /// stop every worker of a program (scale to 0)
    Stop {
        program: String,
    },
}

/// Why the loop refused a command. The HTTP layer maps each to its status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// no such program
    #[error("{0}")]
    NotFound(String),
    /// the program is busy with something that must finish first (a roll)
    #[error("{0}")]
    Busy(String),
    /// the request cannot be applied (below min_ready, an invalid configuration on reload)
    #[error("{0}")]
    Invalid(String),
    /// drover cannot take commands now (steps running, shutting down)
    #[error("{0}")]
    Unavailable(String),
}

/// What the loop answers: what it did, or why it did nothing.
pub type Reply = Result<String, Refused>;

pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Reply>,
}

/// Read a bearer token file: one line, surrounding whitespace ignored, never empty.
pub fn read_token(path: &Path) -> Result<String, String> {
    let t = std::fs::read_to_string(path)
        .map_err(|e| format!("control token file {}: {e}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        return Err(format!("control token file {} is empty", path.display()));
    }
    if t.len() < 16 {
        return Err(format!("control token in {} is shorter than 16 characters; use a random one (e.g. `openssl rand -hex 32`)", path.display()));
    }
    Ok(t)
}

/// Compare without an early exit, so the time taken says nothing about where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"secret-token-123", b"secret-token-123"));
        assert!(!constant_time_eq(b"secret-token-123", b"secret-token-124"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
        // lengths that differ by a multiple of 256 must not collide
        assert!(!constant_time_eq(&[0u8; 256], b""));
    }
}
