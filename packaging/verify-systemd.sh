#!/usr/bin/env bash
# Verify drover under a REAL systemd booted as PID 1 in its own namespaces (pid, mount, uts,
# ipc, cgroup; tmpfs on /run, /tmp and /srv), using the shipped systemd/drover.{service,socket}
# and config/systemd.toml as they are, with only ExecStart's paths, the listen port and a short
# WatchdogSec substituted. The app is a stand-in at the config's own paths (/srv/app/.venv/bin/
# uvicorn runs drover's demo worker, alembic says who ran it). Never touches the host's units,
# /tmp or /srv. Checks: socket activation serves, drover.service becomes active (Type=notify),
# the migrate step and the workers run as the config's user, not root, the watchdog does not
# fire over 3 x WatchdogSec, `drover status` and `drover ctl` work as root over the config's
# unix socket (/run/drover/status.sock, the unit's RuntimeDirectory), `systemctl reload` with
# the file unchanged rolls every worker, `drover ctl reload --wait` rolls them again and exits 0,
# journald has drover's PROGRAM/WORKER/PID fields, `systemctl stop` is clean; and what
# docs/deploy.md says of the unit: a secret in its EnvironmentFile= reaches the workers, their
# /tmp is the service's own (PrivateTmp=) and /home is read-only to them (ProtectHome=).
#   usage: packaging/verify-systemd.sh [path/to/drover]     (default: target/debug/drover)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(readlink -f "${1:-target/debug/drover}")
[ -x "$BIN" ] || { echo "FAIL: no drover binary at $BIN (cargo build first)"; exit 1; }
command -v unshare >/dev/null && [ -x /lib/systemd/systemd ] || { echo "SKIPPED: needs unshare and systemd"; [ -z "${DROVER_SKIP_LOG:-}" ] || echo "verify-systemd.sh: needs unshare and systemd" >> "$DROVER_SKIP_LOG"; exit 0; }
APP_USER=$(sed -n 's/^user = "\([^"]*\)".*/\1/p' config/systemd.toml | head -1)
[ -n "$APP_USER" ] || { echo "FAIL: config/systemd.toml names no user: its workers would run as root"; exit 1; }
getent passwd "$APP_USER" >/dev/null && [ -d /srv ] || { echo "SKIPPED: needs the user $APP_USER (config/systemd.toml) and /srv"; [ -z "${DROVER_SKIP_LOG:-}" ] || echo "verify-systemd.sh: needs user $APP_USER and /srv" >> "$DROVER_SKIP_LOG"; exit 0; }

WORK=$(readlink -f target)/systemd-verify.$$
mkdir -p "$WORK"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); WD=2
SOCK=/run/drover/status.sock
# the shipped file, only its port moved off 8000
sed -e "s|^listen = \"127.0.0.1:8000\"|listen = \"127.0.0.1:$PORT\"|" config/systemd.toml > "$WORK/drover.toml"
grep -q "127.0.0.1:$PORT" "$WORK/drover.toml" || { echo "FAIL: config/systemd.toml no longer listens on 127.0.0.1:8000"; exit 1; }
# inside, /tmp is a fresh tmpfs (and the checkout may live under /tmp): binary and config are
# copied into the namespace's /run before that, and the units point there
unit() { sed -e "s|/usr/bin/drover run -c /etc/drover/drover.toml|/run/drover-verify/drover run -c /run/drover-verify/drover.toml|" \
             -e "s|^EnvironmentFile=-/etc/drover/env$|EnvironmentFile=-/run/drover-verify/env|" \
             -e "s|^WatchdogSec=.*|WatchdogSec=${WD}s|" -e "s|^ListenStream=.*|ListenStream=127.0.0.1:$PORT|" \
             -e '/^After=network-online.target/d' -e '/^Wants=network-online.target/d' \
             -e 's|^\[Unit\]|[Unit]\nDefaultDependencies=no|' "systemd/$1"; }
unit drover.service > "$WORK/drover.service"
grep -q "^EnvironmentFile=-/run/drover-verify/env$" "$WORK/drover.service" || { echo "FAIL: systemd/drover.service has no EnvironmentFile=-/etc/drover/env"; exit 1; }
unit drover.socket > "$WORK/drover.socket"
cat > "$WORK/boot.sh" <<BOOT
#!/bin/sh
set -e
mount -t tmpfs tmpfs /run
mkdir -p /run/systemd/system /run/drover-verify
cp $WORK/drover.service $WORK/drover.socket /run/systemd/system/
cp $BIN /run/drover-verify/drover
cp $WORK/drover.toml /run/drover-verify/drover.toml
# the unit's EnvironmentFile (/etc/drover/env on a real machine): a secret for the app
(umask 077; echo 'DROVER_VERIFY_SECRET=s3cret-from-env-file' > /run/drover-verify/env)
# the app at the config's paths: uvicorn is drover's demo worker, alembic says who ran it
mount -t tmpfs -o mode=0755 tmpfs /srv
mkdir -p /srv/app/.venv/bin
printf '#!/bin/sh\\nexec /run/drover-verify/drover demo-worker\\n' > /srv/app/.venv/bin/uvicorn
printf '#!/bin/sh\\necho "alembic \$* ran as \$(id -un) in \$(pwd)"\\n' > /srv/app/.venv/bin/alembic
chmod 0755 /srv/app/.venv/bin/uvicorn /srv/app/.venv/bin/alembic
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
case "$body" in *"demo-worker api."*) echo "ok: socket activation served: $body";; *) echo "FAIL: no answer through the activated socket: $body"; exit 1;; esac
wait_for 20 "drover.service active (READY=1)" in_ns systemctl is-active drover.service
echo "ok: drover.service active (Type=notify) $(in_ns systemctl show -p StatusText --value drover.service)"
# capture, then match: `cmd | grep -q` under pipefail fails when grep exits first (SIGPIPE)
journal() { in_ns journalctl --no-pager -u drover.service -o verbose 2>/dev/null || true; }
has_fields() { local j; j=$(journal); grep -q "PROGRAM=api" <<<"$j" && grep -q "WORKER=" <<<"$j" && grep -qE "^ *PID=" <<<"$j"; }
wait_for 10 "journald has drover's PROGRAM/WORKER/PID fields" has_fields
echo "ok: journald entries carry PROGRAM=, WORKER=, PID= fields"
# the step and the workers run as the config's user; drover stays root
migrated() { in_ns journalctl --no-pager -u drover.service 2>/dev/null | grep -q "alembic upgrade head ran as $APP_USER in /srv/app"; }
wait_for 10 "the migrate step ran as $APP_USER" migrated
echo "ok: [[prestart]] migrate ran as $APP_USER (user = \"$APP_USER\" on the step)"
# as root, over the unix socket the unit's RuntimeDirectory holds: no token, nothing on the network
drover() { in_ns /run/drover-verify/drover "$@"; }
out=$(drover status --url "unix:$SOCK") || { echo "FAIL: drover status --url unix:$SOCK exited $?: $out"; exit 1; }
grep -q "api" <<<"$out" || { echo "FAIL: drover status shows no api workers: $out"; exit 1; }
echo "ok: drover status --url unix:$SOCK (exit 0): $(grep -c '^api ' <<<"$out") api workers"
mode=$(in_ns stat -c '%a %U' "$SOCK")
[ "$mode" = "600 root" ] || { echo "FAIL: $SOCK is $mode, not 600 root"; exit 1; }
pids() { drover status --json --url "unix:$SOCK" | python3 -c 'import json,sys; print(" ".join(str(w["pid"]) for w in json.load(sys.stdin)["programs"][0]["workers"]))'; }
old=$(pids)
for p in $old; do
  u=$(in_ns stat -c %U "/proc/$p")
  [ "$u" = "$APP_USER" ] || { echo "FAIL: worker $p runs as $u, not $APP_USER"; exit 1; }
done
echo "ok: workers $old run as $APP_USER; drover as $(in_ns stat -c %U /proc/$(in_ns systemctl show -p MainPID --value drover.service))"
# what the unit means for the app (docs/deploy.md): the EnvironmentFile's secret is in every
# worker's environment; /tmp is the service's own (a unix socket there is invisible to nginx);
# /home is mounted read-only for it
in_ns touch /tmp/outside-the-service
for p in $old; do
  in_ns cat "/proc/$p/environ" | tr '\0' '\n' | grep -qx "DROVER_VERIFY_SECRET=s3cret-from-env-file" \
    || { echo "FAIL: worker $p has no DROVER_VERIFY_SECRET from the unit's EnvironmentFile="; exit 1; }
  ! in_ns test -e "/proc/$p/root/tmp/outside-the-service" || { echo "FAIL: worker $p sees the machine's /tmp (PrivateTmp=)"; exit 1; }
  in_ns awk '$5 == "/home" { top = $6 } END { split(top, o, ","); print o[1] }' "/proc/$p/mountinfo" | grep -qx ro \
    || { echo "FAIL: /home is not read-only for worker $p (ProtectHome=read-only)"; exit 1; }
done
echo "ok: the workers have the EnvironmentFile's secret, a /tmp of the service's own, /home read-only"
sleep $((3 * WD + 1))
[ "$(in_ns systemctl show -p NRestarts --value drover.service)" = 0 ] && [ "$(in_ns systemctl is-active drover.service)" = active ] \
  || { echo "FAIL: the watchdog fired"; in_ns journalctl --no-pager -u drover.service | tail; exit 1; }
echo "ok: no watchdog restart over $((3 * WD + 1))s with WatchdogSec=${WD}s"
# `git pull && systemctl reload drover`: the file is unchanged, every worker rolls onto new code
conf="/proc/$SD/root/run/drover-verify/drover.toml"
sum=$(md5sum < "$conf")
rolled_from() { # the old pids: none of them runs, and no roll is in progress
  local now st; now=$(pids); st=$(drover status --json --url "unix:$SOCK")
  [ -n "$now" ] || return 1
  for p in $1; do case " $now " in *" $p "*) return 1;; esac; done
  grep -q '"rolling":false' <<<"$st"
}
r0=$(date +%s.%N)
in_ns systemctl reload drover.service
wait_for 30 "systemctl reload (the file unchanged) rolled the workers" rolled_from "$old"
[ "$(md5sum < "$conf")" = "$sum" ] || { echo "FAIL: the file changed"; exit 1; }
echo "ok: systemctl reload with the file unchanged rolled every worker ($old -> $(pids)) in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $r0}")s"
old=$(pids)
r0=$(date +%s.%N)
out=$(drover ctl --url "unix:$SOCK" reload --wait) || { echo "FAIL: drover ctl reload --wait exited $?: $out"; exit 1; }
grep -q "rolling reload done" <<<"$out" || { echo "FAIL: ctl reload --wait did not report the roll: $out"; exit 1; }
rolled_from "$old" || { echo "FAIL: ctl reload --wait returned before the workers rolled ($old -> $(pids))"; exit 1; }
echo "ok: drover ctl --url unix:$SOCK reload --wait: exit 0 once rolled ($old -> $(pids)) in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $r0}")s: $(tail -1 <<<"$out")"
in_ns systemctl stop drover.service drover.socket
res=$(in_ns systemctl show -p Result --value drover.service); st=$(in_ns systemctl show -p ExecMainStatus --value drover.service)
[ "$res" = success ] && [ "$st" = 0 ] || { echo "FAIL: stop was not clean (Result=$res ExecMainStatus=$st)"; exit 1; }
echo "ok: systemctl stop: Result=success, exit 0"
echo "PASS: drover under a real systemd ($(/lib/systemd/systemd --version | head -1)) in $(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $t0}")s"
