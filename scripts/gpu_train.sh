#!/usr/bin/env bash
# Train the embedded model on a CUDA GPU from packed data carried in $DATA (train_1024.npy or its .xz).
# Usage: scripts/gpu_train.sh OUT_DIR [extra `tricode train` flags]
# Needs only torch, numpy, safetensors and tokenizers (no network, nothing installed).
set -euo pipefail
OUT=${1:?usage: scripts/gpu_train.sh OUT_DIR [flags]}
shift
DATA=${DATA:-data/gpu}
if [ ! -f "$DATA/train_1024.npy" ]; then
    python3 -c "import lzma, sys; open(sys.argv[1] + '/train_1024.npy', 'wb').write(lzma.decompress(open(sys.argv[1] + '/train_1024.npy.xz', 'rb').read()))" "$DATA"
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
PYTHONPATH=. python3 -m training.commands train --device cuda --data-dir "$DATA" --work "$OUT/work" \
    --out "$OUT/model" --shards 3 "$@"
