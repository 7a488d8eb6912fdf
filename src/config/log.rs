//! The reader for a program's `log`: the word (`log = "capture"` / `"inherit"`) or the table
//! `[program.NAME.log]` with `mode`, `file`, `max_size`, `backups` and `lines`.

use std::path::PathBuf;

use super::keys::LOG_KEYS;
use super::tree::{kind, Ctx, Node, V};
use super::values::fmt_size;
use super::*;

/// Lines each program's ring keeps unless `lines` says otherwise.
pub const DEFAULT_RING_LINES: usize = 1_000;
/// A rotated file's size unless `max_size` says otherwise (supervisord's default).
pub const DEFAULT_MAX_SIZE: u64 = 50 * 1024 * 1024;
/// Old files kept unless `backups` says otherwise (supervisord's default).
pub const DEFAULT_BACKUPS: u32 = 10;
/// The smallest `max_size`: a file must hold at least a few whole lines.
const MIN_MAX_SIZE: u64 = 1024;

/// Where a program's output is written besides its ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFileCfg {
    /// `NAME.log`; rotated files are `NAME.log.1` (newest) … `NAME.log.N`
    pub path: PathBuf,
    /// rotate when the next line would take the file past this many bytes
    pub max_size: u64,
    /// how many rotated files are kept (0: the file is truncated when full)
    pub backups: u32,
}

/// Read `log` into `p.log`, `p.log_file` and `p.log_lines`.
pub(super) fn read(cx: &mut Ctx, w: &str, v: &Node, p: &mut ProgramCfg) {
    let modes = [("capture", LogMode::Capture), ("inherit", LogMode::Inherit)];
    if !matches!(v.v, V::Table(_)) {
        if let V::Str(_) = v.v {
            p.log = cx.choice(w, v, &modes).unwrap_or(p.log);
        } else {
            cx.err(
                &v.span,
                format!("{w}: expected \"capture\", \"inherit\" or a table [{w}] with mode, file, max_size, backups, lines; found {}", kind(v)),
            );
        }
        return;
    }
    let Some(t) = cx.table(w, v) else { return };
    cx.keys(w, t, LOG_KEYS, &[]);
    let (mut path, mut max_size, mut backups) = (None, None, None);
    for (k, span, n) in t {
        let kw = format!("{w}.{k}");
        match k.as_str() {
            "mode" => p.log = cx.choice(&kw, n, &modes).unwrap_or(p.log),
            "file" => path = cx.string(&kw, n).map(|s| (PathBuf::from(s), span.clone())),
            "max_size" => {
                max_size = cx.size(&kw, n).and_then(|s| {
                    if s < MIN_MAX_SIZE {
                        cx.err(
                            &n.span,
                            format!(
                                "{kw}: {} is too small; a file must hold whole lines: at least {}",
                                fmt_size(s),
                                fmt_size(MIN_MAX_SIZE)
                            ),
                        );
                        None
                    } else {
                        Some(s)
                    }
                })
            }
            "backups" => backups = cx.uint(&kw, n, 0, 1_000).map(|b| b as u32),
            "lines" => {
                if let Some(l) = cx.uint(&kw, n, 0, 100_000) {
                    p.log_lines = l as usize;
                }
            }
            _ => {}
        }
    }
    match path {
        Some((path, _)) if p.log == LogMode::Inherit => cx.err(
            &v.span,
            format!("{w}: file = {path:?} with mode = \"inherit\": an inherited output never passes through drover, so nothing would be written to it; use mode = \"capture\""),
        ),
        Some((path, _)) if path.as_os_str().is_empty() || path.ends_with("/") || path.to_string_lossy().ends_with('/') => cx.err(
            &v.span,
            format!("{w}.file: {path:?} names a directory; name the file, e.g. \"/var/log/drover/{}.log\"", p.name),
        ),
        Some((path, _)) => {
            p.log_file = Some(LogFileCfg {
                path,
                max_size: max_size.unwrap_or(DEFAULT_MAX_SIZE),
                backups: backups.unwrap_or(DEFAULT_BACKUPS),
            })
        }
        None if max_size.is_some() || backups.is_some() => cx.err(
            &v.span,
            format!("{w}: max_size and backups rotate a file, and no `file` is set; add file = \"/var/log/drover/{}.log\"", p.name),
        ),
        None => {}
    }
}
