#!/usr/bin/env bash
# GPU check of triton_kernels and of the engine at the 8B shape; see scripts/gpu_check.py.
# Usage (from anywhere): scripts/gpu_check.sh [--profile first|second|all] [--out runs/gpu_check.md] [--budget-s 300] ...
# Needs one CUDA GPU with torch and triton; installs nothing and needs no network.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [[ -z "${PYTHON:-}" ]]; then
    for cand in python3 python; do
        if command -v "$cand" >/dev/null && "$cand" -c "import torch, triton" 2>/dev/null; then
            PYTHON=$cand
            break
        fi
    done
fi
: "${PYTHON:?no python with torch and triton found (set PYTHON=...)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET
exec "$PYTHON" scripts/gpu_check.py "$@"
