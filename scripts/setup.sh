#!/usr/bin/env bash
# Create ./.venv with rpu-ray and its test tools. Idempotent: re-runs only when pyproject.toml changed.
# Without an NVIDIA GPU it installs the CPU build of PyTorch, never the multi-GB CUDA build.
# PYTHON=/path/to/python3.x picks the interpreter (default: python3; needs >= 3.10 and venv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.rpu-ray-setup
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "[setup] rpu-ray needs Python >= 3.10; $PY is $("$PY" -V 2>&1). Set PYTHON=/path/to/python3.x" >&2
    exit 1
fi
# Python's hashlib rather than sha256sum, which macOS lacks.
want=$("$PY" -c 'import hashlib, sys; print(hashlib.sha256(b"".join(open(p, "rb").read() for p in sys.argv[1:])).hexdigest())' \
    pyproject.toml scripts/setup.sh)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    exit 0
fi
if [ ! -x "$VENV/bin/python" ] && ! "$PY" -m venv "$VENV"; then
    echo "[setup] '$PY -m venv' failed; on Debian/Ubuntu install python3-venv (apt install python3-venv)" >&2
    exit 1
fi
PIP=("$VENV/bin/python" -m pip install --quiet)
# Editable installs from pyproject.toml alone need pip >= 21.3.
"$VENV/bin/python" -c 'import pip, sys; sys.exit(tuple(map(int, pip.__version__.split(".")[:2])) < (21, 3))' \
    || "${PIP[@]}" --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "[setup] NVIDIA GPU found: installing PyTorch with CUDA"
        "${PIP[@]}" "torch>=2.4"
    else
        echo "[setup] no GPU: installing the CPU build of PyTorch 2.13.0"
        cpu_index=https://download.pytorch.org/whl/cpu
        if "$VENV/bin/python" -c "import urllib.request as u; u.urlopen('$cpu_index/', timeout=5)" 2>/dev/null; then
            "${PIP[@]}" torch==2.13.0 --index-url "$cpu_index" --extra-index-url https://pypi.org/simple
        else
            # PyTorch's CPU index is unreachable: offline mirrors and local wheel caches (pip's
            # find-links) provide the CPU wheel. Plain PyPI would resolve to the CUDA build on
            # Linux x86_64, so say so rather than download gigabytes silently.
            echo "[setup] $cpu_index unreachable: installing torch==2.13.0 from pip's configured" \
                 "index; where that is plain PyPI on Linux x86_64, it is the CUDA build"
            "${PIP[@]}" torch==2.13.0
        fi
    fi
fi
echo "[setup] installing rpu-ray and its dependencies into $VENV"
"${PIP[@]}" -e ".[dev]"
echo "$want" > "$STAMP"
