#!/usr/bin/env bash
# Create ./.venv with rpu-ray and its test tools. Idempotent: re-runs only when pyproject.toml changed.
# Without an NVIDIA GPU it installs the CPU build of PyTorch, never the multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.rpu-ray-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet)
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] NVIDIA GPU found: installing PyTorch with CUDA"
        "${PIP[@]}" "torch>=2.4"
    else
        echo "[setup] no GPU: installing the CPU build of PyTorch 2.13.0"
        cpu_index=https://download.pytorch.org/whl/cpu
        if curl -sfI --max-time 5 "$cpu_index/" >/dev/null 2>&1; then
            "${PIP[@]}" torch==2.13.0 --index-url "$cpu_index" --extra-index-url https://pypi.org/simple
        else
            # Offline mirrors and local wheel caches (pip's find-links) provide the CPU wheel directly.
            "${PIP[@]}" torch==2.13.0
        fi
    fi
fi
echo "[setup] installing rpu-ray and its dependencies into $VENV"
"${PIP[@]}" -e ".[dev]"
echo "$want" > "$STAMP"
