#!/usr/bin/env bash
# Set up ./.venv (if needed) and run the test suite. `--slow` runs only the slow end-to-end tests;
# any other argument goes to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
if [ "${1:-}" = "--slow" ]; then
    shift
    exec .venv/bin/python -m pytest -m slow "$@"
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
