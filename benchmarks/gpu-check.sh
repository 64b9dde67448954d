#!/usr/bin/env bash
# The GPU check in one command (docs/gpu-check.md): `pytest -m gpu`, suites/gpu-kernels.toml and
# suites/gpu-quick.toml from this source tree, within 8 minutes on an H200, packed into one archive of
# results/<device-name>/ in $OUT (or --archive-dir). `--dry-run` checks the plan on any machine (CI runs it).
# The logic is in benchmarks/gpu_check.py; this wrapper only picks the Python and adds a last-resort limit
# (the plan's own step limits end the check before it).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec timeout --kill-after=10 540 "$PYTHON" benchmarks/gpu_check.py --python "$PYTHON" "$@"
