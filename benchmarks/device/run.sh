#!/usr/bin/env bash
# The device suite's one entry command (benchmarks/device/README.md).
#
#   bash benchmarks/device/run.sh [--dry-run] [--parts abc] [--scale F]
#
# Installs the wheels that benchmarks/device/prepare.py put in .device/wheels
# (no index, no dependencies) into a private target, then runs suite.py with
# the repository on PYTHONPATH. Results go to $OUT (default ./device_out).
# PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
export OUT="${OUT:-device_out}"
mkdir -p "$OUT"
site=""
if compgen -G ".device/wheels/*.whl" >/dev/null && [[ " $* " != *" --dry-run "* ]]; then
  site="$(mktemp -d /tmp/potts_jax_site.XXXX)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target "$site" .device/wheels/*.whl >"$OUT/install.log" 2>&1 || {
    cat "$OUT/install.log"; echo "run.sh: installing .device/wheels failed"; exit 1; }
fi
export PYTHONPATH="$PWD${site:+:$site}${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/device/suite.py --out "$OUT" "$@"
