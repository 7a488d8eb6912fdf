#!/usr/bin/env bash
# Verify drover under a REAL systemd booted as PID 1 in its own namespaces (pid, mount, uts,
# ipc, cgroup; tmpfs on /run and /tmp), using the shipped systemd/drover.{service,socket} with
# only ExecStart's paths, the listen port and a short WatchdogSec substituted. Never touches the
# host's units or /tmp. Checks: socket activation serves, drover.service becomes active
# (Type=notify), the watchdog does not fire over 3 x WatchdogSec, `systemctl reload` rolls the
# workers, journald has drover's PROGRAM/WORKER/PID fields, `systemctl stop` is clean.
#   usage: packaging/verify-systemd.sh [path/to/drover]     (default: target/debug/drover)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(readlink -f "${1:-target/debug/drover}")
[ -x "$BIN" ] || { echo "FAIL: no drover binary at $BIN (cargo build first)"; exit 1; }
command -v unshare >/dev/null && [ -x /lib/systemd/systemd ] || { echo "SKIPPED: needs unshare and systemd"; [ -z "${DROVER_SKIP_LOG:-}" ] || echo "verify-systemd.sh: needs unshare and systemd" >> "$DROVER_SKIP_LOG"; exit 0; }

WORK=$(readlink -f target)/systemd-verify.$$
mkdir -p "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); SPORT=$(free_port); WD=2
cat > "$WORK/drover.toml" <<CFG
[supervisor]
status = "127.0.0.1:$SPORT"
shutdown_timeout = "10s"
[socket.http]
listen = "127.0.0.1:$PORT"
[program.web]
command = ["/run/drover-verify/drover", "demo-worker"]
sockets = ["http"]
workers = 2
env = { VERSION = "1" }
CFG
# inside, /tmp is a fresh tmpfs (and the checkout may live under /tmp): binary and config are
# copied into the namespace's /run before that, and the units point there
unit() { sed -e "s|/usr/bin/drover run -c /etc/drover/drover.toml|/run/drover-verify/drover run -c /run/drover-verify/drover.toml|" \
             -e "s|^WatchdogSec=.*|WatchdogSec=${WD}s|" -e "s|^ListenStream=.*|ListenStream=127.0.0.1:$PORT|" \
             -e '/^After=network-online.target/d' -e '/^Wants=network-online.target/d' \
             -e 's|^\[Unit\]|[Unit]\nDefaultDependencies=no|' "systemd/$1"; }
unit drover.service > "$WORK/drover.service"
unit drover.socket > "$WORK/drover.socket"
cat > "$WORK/boot.sh" <<BOOT
#!/bin/sh
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system /run/drover-verify
cp $WORK/drover.service $WORK/drover.socket /run/systemd/system/
cp $BIN /run/drover-verify/drover
cp $WORK/drover.toml /run/drover-verify/drover.toml
cat > /run/systemd/system/drover-verify.target <<T
[Unit]
DefaultDependencies=no
Wants=systemd-journald.socket systemd-journald.service drover.socket
T
mount -t tmpfs tmpfs /tmp
exec /lib/systemd/systemd --system --unit=drover-verify.target
BOOT
chmod +x "$WORK/boot.sh"
unshare --pid --fork --mount --uts --ipc --cgroup --mount-proc --propagation private "$WORK/boot.sh" > "$WORK/systemd.log" 2>&1 &
UNSHARE=$!
SD=""
cleanup() {
  [ -n "$SD" ] && kill -9 "$SD" 2>/dev/null || true
  kill -9 "$UNSHARE" 2>/dev/null || true
  wait "$UNSHARE" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
for _ in $(seq 100); do SD=$(pgrep -P "$UNSHARE" -f /lib/systemd/systemd || true); [ -n "$SD" ] && break; sleep 0.1; done
[ -n "$SD" ] || { echo "FAIL: systemd did not start"; cat "$WORK/systemd.log"; exit 1; }
in_ns() { nsenter -t "$SD" -m -p -u -i -C "$@"; }
wait_for() { # seconds, description, command...
  local n=$1 what=$2; shift 2
  for _ in $(seq $((n * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "FAIL: $what"; in_ns systemctl --no-pager status drover.service drover.socket 2>&1 | tail -30; exit 1
}
t0=$(date +%s.%N)
wait_for 20 "drover.socket active" in_ns systemctl is-active drover.socket
echo "ok: drover.socket listening on 127.0.0.1:$PORT (systemd owns the port)"
body=$(curl -s -m 20 "http://127.0.0.1:$PORT/")
case "$body" in *"demo-worker web."*) echo "ok: socket activation served: $body";; *) echo "FAIL: no answer through the activated socket: $body"; exit 1;; esac
wait_for 20 "drover.service active (READY=1)" in_ns systemctl is-active drover.service
echo "ok: drover.service active (Type=notify) $(in_ns systemctl show -p StatusText --value drover.service)"
# capture, then match: `cmd | grep -q` under pipefail fails when grep exits first (SIGPIPE)
journal() { in_ns journalctl --no-pager -u drover.service -o verbose 2>/dev/null || true; }
has_fields() { local j; j=$(journal); grep -q "PROGRAM=web" <<<"$j" && grep -q "WORKER=" <<<"$j" && grep -qE "^ *PID=" <<<"$j"; }
wait_for 10 "journald has drover's PROGRAM/WORKER/PID fields" has_fields
echo "ok: journald entries carry PROGRAM=, WORKER=, PID= fields"
sleep $((3 * WD + 1))
[ "$(in_ns systemctl show -p NRestarts --value drover.service)" = 0 ] && [ "$(in_ns systemctl is-active drover.service)" = active ] \
  || { echo "FAIL: the watchdog fired"; in_ns journalctl --no-pager -u drover.service | tail; exit 1; }
echo "ok: no watchdog restart over $((3 * WD + 1))s with WatchdogSec=${WD}s"
pids() { curl -s "http://127.0.0.1:$SPORT/status" | python3 -c 'import json,sys; print(" ".join(str(w["pid"]) for w in json.load(sys.stdin)["programs"][0]["workers"]))'; }
old=$(pids)
sed -i 's/VERSION = "1"/VERSION = "2"/' "/proc/$SD/root/run/drover-verify/drover.toml"
r0=$(date +%s.%N)
in_ns systemctl reload drover.service
rolled() {
  local now st; now=$(pids); st=$(curl -s "http://127.0.0.1:$SPORT/status")
  [ -n "$now" ] || return 1
  for p in $old; do case " $now " in *" $p "*) return 1;; esac; done
  grep -q '"rolling":false' <<<"$st"
}
wait_for 30 "systemctl reload rolled the workers" rolled
echo "ok: systemctl reload rolled the workers ($old -> $(pids)) in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $r0}")s"
in_ns systemctl stop drover.service drover.socket
res=$(in_ns systemctl show -p Result --value drover.service); st=$(in_ns systemctl show -p ExecMainStatus --value drover.service)
[ "$res" = success ] && [ "$st" = 0 ] || { echo "FAIL: stop was not clean (Result=$res ExecMainStatus=$st)"; exit 1; }
echo "ok: systemctl stop: Result=success, exit 0"
echo "PASS: drover under a real systemd ($(/lib/systemd/systemd --version | head -1)) in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $t0}")s"
