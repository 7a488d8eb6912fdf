#!/usr/bin/env bash
# Build the kf-api image from packaging/docker/Dockerfile with buildah and run it under podman
# (runc) on a machine that cannot pull images: the bases are made locally — the runtime from
# debootstrap (bookworm + python3), the builder from that plus gcc and this machine's Rust
# toolchain — and passed as the Dockerfile's BUILDER_IMAGE / RUNTIME_IMAGE build arguments.
# Everything (storage, containers, cgroups) stays under target/image and is removed at the end,
# except the debootstrap rootfs, kept as a cache.
# Checks: drover is PID 1 and serves the FastAPI app; /readyz is 200; `podman stop` makes it
# exit 0 within the grace period; a one-off as docs/deploy.md writes it (`run IMAGE -- COMMAND`:
# the arguments go to the ENTRYPOINT, `drover run`) ends with the command's exit code.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for t in buildah podman debootstrap runc; do command -v $t >/dev/null || need+=("$t"); done
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "SKIPPED: needs ${need[*]}"; [ -z "${DROVER_SKIP_LOG:-}" ] || echo "verify-image.sh: needs ${need[*]}" >> "$DROVER_SKIP_LOG"; exit 0; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah podman debootstrap runc >/dev/null
fi
TOP=$(readlink -f target)/image
ROOTFS=$TOP/rootfs
ST=$TOP/storage.$$
CG=drover-verify-image-$$
S=(--root "$ST/root" --runroot "$ST/run" --storage-driver vfs)
mkdir -p "$TOP" "$ST"
cleanup() {
  podman "${S[@]}" rm -f -t 0 kf-api-verify >/dev/null 2>&1 || true
  buildah "${S[@]}" rm --all >/dev/null 2>&1 || true
  rm -rf "$ST"
  for h in /sys/fs/cgroup/*/; do [ -d "$h$CG" ] && find "$h$CG" -depth -type d -exec rmdir {} + 2>/dev/null; done
  true
}
trap cleanup EXIT
t0=$(date +%s)
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  MIRROR=$(grep -m1 '^URIs' /etc/apt/sources.list.d/debian.sources 2>/dev/null | awk '{print $2}')
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "${MIRROR:-http://deb.debian.org/debian}" >/dev/null
fi
# this machine reaches the registries through a TLS proxy whose CA only the host trusts: the
# local stand-in bases carry the host's bundle (a real base image would not need this)
HOSTCA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
r=$(buildah "${S[@]}" from scratch)
buildah "${S[@]}" copy "$r" "$ROOTFS" / >/dev/null
buildah "${S[@]}" copy "$r" "$HOSTCA" /etc/ssl/certs/ca-certificates.crt >/dev/null
buildah "${S[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$r"
buildah "${S[@]}" commit -q "$r" localhost/bookworm-python:local >/dev/null
echo "ok: runtime base localhost/bookworm-python from debootstrap ($(( $(date +%s) - t0 ))s)"
TC=$(rustc --print sysroot)
b=$(buildah "${S[@]}" from localhost/bookworm-python:local)
buildah "${S[@]}" run --isolation chroot "$b" -- sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null'
buildah "${S[@]}" copy "$b" "$TC/bin" /usr/local/rust/bin >/dev/null
buildah "${S[@]}" copy "$b" "$TC/lib" /usr/local/rust/lib >/dev/null
buildah "${S[@]}" config --env PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$b"
buildah "${S[@]}" commit -q "$b" localhost/rust-builder:local >/dev/null
echo "ok: builder base localhost/rust-builder ($(rustc --version)) ($(( $(date +%s) - t0 ))s)"
buildah "${S[@]}" bud -q --isolation chroot --network host \
  --build-arg BUILDER_IMAGE=localhost/rust-builder:local --build-arg RUNTIME_IMAGE=localhost/bookworm-python:local \
  -f packaging/docker/Dockerfile -t localhost/kf-api:verify . >/dev/null
echo "ok: image built from packaging/docker/Dockerfile ($(( $(date +%s) - t0 ))s)"
for p in 8000 9900; do
  if python3 -c "import socket,sys; s=socket.socket(); sys.exit(s.connect_ex(('127.0.0.1',$p))!=0)"; then echo "SKIPPED: port $p is busy here"; [ -z "${DROVER_SKIP_LOG:-}" ] || echo "verify-image.sh: port $p is busy here" >> "$DROVER_SKIP_LOG"; exit 0; fi
done
podman "${S[@]}" run -d --name kf-api-verify --runtime runc --cgroup-manager cgroupfs --cgroup-parent "/$CG" \
  --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)" --ulimit nproc=4096:4096 --network host --read-only --tmpfs /tmp -e DROVER_MEMORY=900MiB localhost/kf-api:verify >/dev/null
ok=""
for _ in $(seq 300); do
  if curl -sf -m 2 http://127.0.0.1:9900/readyz >/dev/null 2>&1; then ok=1; break; fi
  sleep 0.2
done
[ -n "$ok" ] || { echo "FAIL: /readyz never 200"; podman "${S[@]}" logs kf-api-verify | tail -20; exit 1; }
body=$(curl -s -m 5 http://127.0.0.1:8000/)
case "$body" in *'"hello":"world"'*) ;; *) echo "FAIL: the app did not answer: $body"; exit 1;; esac
pid1=$(curl -s http://127.0.0.1:9900/status | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["pid"], d["pid1"], len(d["programs"][0]["workers"]), d["budget"]["mode"])')
echo "ok: drover as PID 1 serves FastAPI: $body (status: pid, pid1, workers, budget mode = $pid1)"
s0=$(date +%s.%N)
podman "${S[@]}" stop -t 40 kf-api-verify >/dev/null
code=$(podman "${S[@]}" inspect kf-api-verify --format '{{.State.ExitCode}}')
took=$(awk "BEGIN{printf \"%.2f\", $(date +%s.%N) - $s0}")
[ "$code" = 0 ] || { echo "FAIL: exit code $code after podman stop"; podman "${S[@]}" logs kf-api-verify | tail -20; exit 1; }
echo "ok: podman stop -> exit 0 in ${took}s (grace period 40s)"
# a one-off (docs/deploy.md: `docker compose run --rm api -- COMMAND`): the arguments follow the
# ENTRYPOINT `drover run`, so `-- COMMAND` is drover's one-line mode, a bare command whose exit
# code drover returns; no status port, so it never collides with the service's
set +e
ONEOFF=(run --rm --runtime runc --cgroup-manager cgroupfs --cgroup-parent "/$CG" --ulimit "nofile=$(ulimit -Hn):$(ulimit -Hn)"
  --ulimit nproc=4096:4096 --network none --read-only)
out=$(podman "${S[@]}" "${ONEOFF[@]}" localhost/kf-api:verify -- python3 -c "import main; print('one-off imported the app'); raise SystemExit(3)" 2>&1)
code=$?
case "$out" in *"one-off imported the app"*) ;; *) echo "FAIL: the one-off did not run: $out"; exit 1;; esac
[ "$code" = 3 ] || { echo "FAIL: the one-off exited $code, not its command's 3: $out"; exit 1; }
echo "ok: one-off \`podman run IMAGE -- python3 -c ...\` ran under drover run and exited with the command's code 3"
# another drover command: the entrypoint replaced (docs/deploy.md: --entrypoint drover api check)
out=$(podman "${S[@]}" "${ONEOFF[@]}" --entrypoint drover localhost/kf-api:verify check 2>&1)
code=$?
set -e
[ "$code" = 0 ] && grep -q "is valid" <<<"$out" || { echo "FAIL: --entrypoint drover IMAGE check exited $code: $out"; exit 1; }
echo "ok: \`podman run --entrypoint drover IMAGE check\` checked the image's /etc/drover/drover.toml"
echo "PASS: image built and run under podman/runc in $(( $(date +%s) - t0 ))s"
