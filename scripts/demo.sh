#!/usr/bin/env bash
# Set up ./.venv (if needed) and run the main job: `rpu-ray demo` (arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/rpu-ray demo "$@"
