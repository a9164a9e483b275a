#!/usr/bin/env bash
# The test command of the README: sets up .venv if needed, then runs the whole suite on the CPU.
# Extra arguments go to pytest (e.g. ./run_tests.sh -k sgdrop -x).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
exec python -m pytest "$@"
