#!/usr/bin/env bash
# Set up ./.venv (if needed) and run the main job. Until the rPU-VAE driver lands this renders a
# preview of the procedural dSprites factors; it then becomes `rpu-ray demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
exec .venv/bin/rpu-ray data preview dsprites --image-size 32 --out out/dsprites-preview.png "$@"
