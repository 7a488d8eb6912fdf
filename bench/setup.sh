#!/usr/bin/env bash
# Installs what the benchmark suite measures against, into bench/ only: a venv with the Python
# peers (uvicorn, gunicorn, supervisord, Circus) and the FastAPI app's deps, PM2 in an npm
# folder, wrk and perf from Debian, the C stamp worker; then builds drover --release.
set -euo pipefail
cd "$(dirname "$0")"
export SSL_CERT_FILE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v gcc >/dev/null || need+=(gcc)
command -v npm >/dev/null || need+=(npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    echo "bench/setup.sh: installing ${need[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [[ ! -x .venv/bin/circusd || ! -x .venv/bin/supervisord-dependent-startup ]]; then
    [[ -x .venv/bin/pip ]] || python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
fi
# drover's worker side (drover-uvicorn), from this checkout
.venv/bin/pip install -q --disable-pip-version-check --no-deps --force-reinstall ../python
if [[ ! -x node_modules/.bin/pm2 ]]; then
    npm install --silent --no-audit --no-fund --prefix . pm2@7 >/dev/null
fi
mkdir -p .build
gcc -O2 -o .build/stamp stamp.c
(cd .. && cargo build --release --quiet)
echo "bench/setup.sh: ready"
