#!/usr/bin/env bash
# The next-edit stage of a GPU lease: fine-tune the shipped embedded checkpoint (engine/embedded) on FIM
# samples mixed with next-edit samples (training/next_edit.py: edit pairs made from the corpus files, in
# the daemon's next-edit prompt format; none from the packages the next-edit eval is made of), within a
# budget, and write the checkpoint to $OUT. Run alone, or as stage (e) of scripts/gpu_session2.sh
# (--next-edit-s).
#   1. data: DATA's train_<seq>.npy when there is one (prepared here with `tricode train
#      --next-edit-share`, carried), else prepared now from this machine's corpus (--max-files of it,
#      the init's tokenizer), on the CPU
#   2. the fine-tune: `tricode train --init INIT` (all weights trainable, the drafter LoRA left out),
#      its schedule fitted to the time left (--steps 0); the resume state is saved as it goes (--work)
#   3. the checkpoint, in files that come back (8 files of <= 16 MiB a lease): $OUT/next_edit/
#      model-0000N-of-00003.safetensors (fp16) and meta.tar.gz (config, index, tokenizer, training.json
#      with the held-out loss: the held-out split holds next-edit samples at the same share, the data
#      report); a stage cut by its timeout still exports the last saved state. Put it together with
#        mkdir m && tar xzf OUT/next_edit/meta.tar.gz -C m && cp OUT/next_edit/model-*.safetensors m/
# Usage: scripts/gpu_next_edit.sh [--out DIR] [--init engine/embedded] [--data DIR] [--share 0.3]
#            [--max-files 1500] [--roots DIR] [--total-s 300] [--cpu-smoke] [-- extra `tricode train` flags]
# --roots: the corpus is the .py files under DIR (default: this python's stdlib and site-packages).
# --cpu-smoke: the same plumbing on the CPU at toy sizes (40 files, 2 steps of batch 1).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
T0=$(date +%s)

OUT_DIR=${OUT:-runs/gpu_next_edit}
INIT=engine/embedded
DATA=
SHARE=0.3
MAX_FILES=1500
ROOTS=
TOTAL_S=300
SMOKE=0
EXTRA=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) OUT_DIR=$2; shift 2 ;;
        --init) INIT=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --share) SHARE=$2; shift 2 ;;
        --max-files) MAX_FILES=$2; shift 2 ;;
        --roots) ROOTS=$2; shift 2 ;;
        --total-s) TOTAL_S=$2; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "gpu_next_edit.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
source scripts/gpu_session_lib.sh
if [[ ! -f $INIT/config.json ]]; then
    note "next-edit stage skipped: no checkpoint at $INIT (config.json missing)"; exit 2
fi
PRESET=$("$PYTHON" -c "import json, sys; print(json.load(open(sys.argv[1]))['train_config']['preset'])" \
         "$INIT/training.json" 2>/dev/null || echo small)
if [[ $SMOKE == 1 ]]; then
    DEVICE=cpu
    MAX_FILES=40
    SIZE=(--steps 2 --warmup 1 --batch 1 --micro-batch 1 --lr 1e-4)
else
    DEVICE=cuda
    SIZE=(--steps 0 --warmup 40 --lr 2e-4)       # --steps 0: the schedule fitted to the budget
fi
[[ -z $DATA ]] && DATA=$WORK/next_edit_data
note "start: next-edit stage, init $INIT (preset $PRESET), data $DATA, share $SHARE, budget ${TOTAL_S}s"
machine_info

if [[ ! -f $DATA/train_1024.npy ]]; then
    note "data: preparing $DATA from this machine's corpus (max $MAX_FILES files, share $SHARE)"
    timeout $(( $(left) / 2 )) "$PYTHON" -c "
import sys
from training.fim import prepare_data
rep = prepare_data(sys.argv[1], seq_len=1024, tokenizer=sys.argv[2] + '/tokenizer.json', max_files=int(sys.argv[3]),
                   next_edit_share=float(sys.argv[4]), roots=[sys.argv[5]] if sys.argv[5] else None,
                   log=lambda m: print(m, file=sys.stderr))
print('next-edit samples: train', rep['train']['next_edit'], 'of', rep['train']['next_edit'] + rep['train']['fim'] + rep['train']['plain'],
      'kinds', rep['train']['next_edit_kinds'])
" "$DATA" "$INIT" "$MAX_FILES" "$SHARE" "$ROOTS" > "$LOGS/next_edit_data.log" 2>&1
    note "data: rc=$? $(tail -1 "$LOGS/next_edit_data.log")"
    cp "$DATA/data_report.json" "$LOGS/next_edit_data_report.json" 2>/dev/null
fi
if [[ ! -f $DATA/train_1024.npy ]]; then
    note "next-edit stage: no data, nothing trained (see next_edit_data.log)"; pack_logs; exit 1
fi

MODEL=$WORK/next_edit_model
TRAIN_S=$(( $(left) - 30 ))
MINUTES=$(awk "BEGIN { printf \"%.2f\", ($TRAIN_S - 25) / 60 }")
note "fine-tune: ${TRAIN_S}s (schedule fitted to $MINUTES min)"
timeout --signal=TERM "$TRAIN_S" "$PYTHON" -m training.commands train --device "$DEVICE" --preset "$PRESET" \
    --init "$INIT" --data-dir "$DATA" --work "$WORK/next_edit_train" --out "$MODEL" \
    --shards 3 --minutes "$MINUTES" --fresh "${SIZE[@]}" "${EXTRA[@]}" > "$LOGS/next_edit_train.log" 2>&1
RC=$?
note "fine-tune: rc=$RC $(grep -E 'held-out|written|Error|error' "$LOGS/next_edit_train.log" | tail -2 | tr '\n' ' ')"
if [[ ! -f $MODEL/config.json && -f $WORK/next_edit_train/train_state.pt ]]; then
    note "export of the last saved state (the run was cut at rc=$RC)"
    "$PYTHON" -c "
import sys; from pathlib import Path
from training.train import export
export(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), shards=3)" \
        "$WORK/next_edit_train/train_state.pt" "$DATA" "$MODEL" >> "$LOGS/next_edit_train.log" 2>&1
    note "export rc=$?"
fi
if [[ -f $MODEL/config.json ]]; then
    mkdir -p "$OUT_DIR/next_edit"
    cp "$MODEL"/model-*.safetensors "$OUT_DIR/next_edit/"
    cp "$DATA/data_report.json" "$MODEL/next_edit_data_report.json" 2>/dev/null
    tar -czf "$OUT_DIR/next_edit/meta.tar.gz" -C "$MODEL" --exclude 'model-*.safetensors' .
    note "checkpoint: $(ls "$OUT_DIR/next_edit" | tr '\n' ' ')"
fi
pack_logs
[[ -f $MODEL/config.json ]] || exit 1
exit 0
