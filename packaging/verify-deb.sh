#!/usr/bin/env bash
# Build the .deb with cargo-deb and check what it installs: the binary, both systemd units, the
# default /etc/drover/drover.toml as a conffile, and that the packaged binary accepts the packaged
# config. Installs cargo-deb (crates.io) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install -q cargo-deb --locked
cargo deb -q
DEB=$(ls -t target/debian/drover_*.deb | head -1)
ROOT=$(mktemp -d)
trap 'rm -rf "$ROOT"' EXIT
dpkg-deb -x "$DEB" "$ROOT"
dpkg-deb -e "$DEB" "$ROOT/DEBIAN"
fail() { echo "FAIL: $*"; exit 1; }
for f in usr/bin/drover lib/systemd/system/drover.service lib/systemd/system/drover.socket etc/drover/drover.toml usr/share/doc/drover/README.md; do
  [ -e "$ROOT/$f" ] || fail "$f missing from $DEB"
done
[ -x "$ROOT/usr/bin/drover" ] || fail "usr/bin/drover is not executable"
grep -qx /etc/drover/drover.toml "$ROOT/DEBIAN/conffiles" || fail "/etc/drover/drover.toml is not a conffile"
grep -q '^ExecStart=/usr/bin/drover run -c /etc/drover/drover.toml' "$ROOT/lib/systemd/system/drover.service" || fail "the unit does not run the packaged binary and config"
"$ROOT/usr/bin/drover" check -c "$ROOT/etc/drover/drover.toml" > "$ROOT/check.out" || fail "the packaged config does not pass check: $(cat "$ROOT/check.out")"
echo "PASS: $DEB ($(du -k "$DEB" | cut -f1) KiB; $(dpkg-deb -f "$DEB" Depends)); installs $(dpkg-deb -c "$DEB" | grep -c '^-') files"
