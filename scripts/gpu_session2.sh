#!/usr/bin/env bash
# The SECOND script of a GPU lease, after scripts/gpu_session.sh (the first: tests and the figures
# that matter) has passed:
#   (b) the rest of the measurements      (scripts/gpu_check.py --profile second: attention and
#                                          attention_cached sweeps, verify/unmask, eager forwards per
#                                          width, the w4a16 matmul at every row count, w4a16 models)
#   (b2) the pulled AR model's drafter    (tricode train --drafter-for: an o_proj LoRA on the frozen
#                                          qwen2.5-coder-0.5b, training/ar_drafter.py; --drafter-s seconds,
#                                          resumes from --drafter-in; skipped when the model is not here)
#   (c) cumulative training               (tricode train --carry-out: continues from --carry-in, saves as it
#                                          goes, so a kill at the limit still leaves a usable state)
#   (d) a quick check of the result       (export; held-out loss; greedy spec == ar and TPF on held-out rows)
#   (e) with --next-edit-s N, INSTEAD of (c) and (d): the next-edit fine-tune of the shipped checkpoint
#       (scripts/gpu_next_edit.sh, N seconds at most): $OUT/ne/next_edit/ (3 shards + meta.tar.gz) and
#       $OUT/ne/session.tar.gz come back instead of the carry state (7 files with the two below)
# Everything that must come back is in $OUT, within the tool's return limit (8 files of <= 16 MiB):
#   $OUT/carry/state-*-of-*.safetensors  (<= 5 files: the state the next lease continues from)
#   $OUT/carry/runs.jsonl                (one line per run, every run so far)
#   $OUT/gpu_check_second.md             (the measurements)
#   $OUT/session.tar.gz                  (every log and report of this script)
#   $OUT/drafter.tar.gz                  (b2 only: drafter/ = the adapter and drafter.json, what goes
#                                          beside the model as <model>.drafter/; state/train_state.pt =
#                                          what --drafter-in continues from; the carry then keeps 4 files)
# The packed data (tricode pack) and the last returned state travel with the code as carried paths.
#
# Usage: scripts/gpu_session2.sh [--out DIR] [--data data/pack] [--carry-in runs/carry] [--preset NAME]
#            [--total-s 420] [--check-s 200] [--drafter-s 0] [--drafter-model qwen2.5-coder-0.5b]
#            [--drafter-in runs/drafter] [--next-edit-s 0] [--cpu-smoke] [-- extra `tricode train` flags]
# --drafter-s N > 0 runs (b2) for at most N s. The model must be on the machine (a registry name or a
# path): the 491 MB GGUF does not travel with the 64 MiB working tree.
# --check-s 0 skips (b): the whole script trains. --cpu-smoke: the same plumbing on a CPU at toy sizes.
# GPU_CHECK_FAIL=PART[:raise|crash|hang] injects a failure into one gpu_check part.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
T0=$(date +%s)

OUT_DIR=${OUT:-runs/gpu_session}
DATA=data/pack
CARRY_IN=runs/carry
PRESET=v2
TOTAL_S=420
CHECK_S=200
DRAFTER_S=0
DRAFTER_MODEL=qwen2.5-coder-0.5b
DRAFTER_IN=runs/drafter
NE_S=0
SMOKE=0
EXTRA=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) OUT_DIR=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --carry-in) CARRY_IN=$2; shift 2 ;;
        --preset) PRESET=$2; shift 2 ;;
        --total-s) TOTAL_S=$2; shift 2 ;;
        --check-s) CHECK_S=$2; shift 2 ;;
        --drafter-s) DRAFTER_S=$2; shift 2 ;;
        --drafter-model) DRAFTER_MODEL=$2; shift 2 ;;
        --drafter-in) DRAFTER_IN=$2; shift 2 ;;
        --next-edit-s) NE_S=$2; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "gpu_session2.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
source scripts/gpu_session_lib.sh
"$PYTHON" -c "import safetensors" 2>/dev/null || note "warning: $PYTHON has no safetensors: training will fail"

if [[ $SMOKE == 1 ]]; then
    PRESET=tiny
    DEVICE=cpu
    TRAIN_SIZE=(--batch 2 --micro-batch 2 --warmup 2 --rewarm 2 --save-every 5)
    DRAFTER_SIZE=(--steps 6 --seq-len 64 --batch 4 --micro-batch 4 --warmup 2 --drafter-rank 4
                  --corpus "$ROOT/engine" --corpus-tokens 20000)
else
    DEVICE=cuda
    TRAIN_SIZE=()
    # rank 16: the resume state (LoRA + AdamW moments, ~8 MiB) and the adapter come back in one file
    DRAFTER_SIZE=(--steps 1500 --seq-len 512 --batch 32 --warmup 50 --drafter-rank 16 --lr 1e-3
                  --corpus-tokens 8000000)
fi
CARRY_FILES=5
[[ $DRAFTER_S -gt 0 ]] && CARRY_FILES=4    # 8 files come back: the drafter's tar takes one
note "start: second script, out $OUT_DIR, data $DATA, carry-in $CARRY_IN, preset $PRESET, budget ${TOTAL_S}s, python $PYTHON"
machine_info

# What the state may weigh: it must come back (8 files, 64 MiB together, with runs.jsonl and the logs)
# and travel up again next time with everything else in the working tree (64 MiB): the tree as it
# arrived here, less the state it brought (replaced next time), less a margin.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then   # here: what would travel (not ignored) + the pack
    TREE=$( { git ls-files -z -co --exclude-standard; find "$DATA" -type f -not -name '*.npy' -print0; } \
           | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
else                                                            # there: everything that arrived but the state
    TREE=$(find . -type f -not -path './.git/*' -not -path "./${CARRY_IN#./}/*" -not -path "./${OUT_DIR#$ROOT/}/*" \
           -not -name '*.npy' -printf '%s\n' | awk '{s += $1} END {print s + 0}')
fi
DRAFTER_MIB=0
[[ $DRAFTER_S -gt 0 ]] && DRAFTER_MIB=14    # what the drafter's tar may weigh (rank 16: ~11 MiB)
ROOM_MIB=$(awk "BEGIN { r = 64 - $TREE / 1048576 - 1 - $DRAFTER_MIB; if (r > 62) r = 62; printf \"%.1f\", r }")
note "working tree here ${TREE} bytes without the state: the state may take ${ROOM_MIB} MiB"
echo "tree_bytes=$TREE room_mib=$ROOM_MIB" >> "$LOGS/machine.txt"

# the data: decompress the pack while (b) runs (CPU work, the GPU is busy elsewhere)
"$PYTHON" -c "import sys; from training.datapack import ensure_unpacked; ensure_unpacked(sys.argv[1])" "$DATA" \
    > "$LOGS/unpack.log" 2>&1 &
UNPACK=$!

# (b) the rest of the measurements
CHECK_BUDGET=$(( CHECK_S < $(left) - 60 ? CHECK_S : $(left) - 60 ))
if [[ $CHECK_S -le 0 ]]; then
    note "(b) gpu_check skipped (--check-s 0)"
elif [[ $CHECK_BUDGET -ge 30 ]]; then
    run_gpu_check gpu_check_second second "$CHECK_BUDGET"
else
    note "(b) gpu_check skipped: only $(left)s left"
fi
pack_logs

# (b2) the pulled AR model's drafter: resumable, its state and adapter written as it goes (a budget stop
# still writes the drafter so far); everything in one tar that --drafter-in continues from next time
if [[ $DRAFTER_S -gt 0 ]]; then
    D_BUDGET=$(( DRAFTER_S < $(left) - 90 ? DRAFTER_S : $(left) - 90 ))
    D_PATH=$("$PYTHON" -c "import sys; from registry.models import resolve; print(resolve(sys.argv[1]))" \
             "$DRAFTER_MODEL" 2>"$LOGS/drafter_resolve.log")
    if [[ -z $D_PATH ]]; then
        note "(b2) drafter skipped: $(tail -1 "$LOGS/drafter_resolve.log")"
    elif [[ $D_BUDGET -lt 40 ]]; then
        note "(b2) drafter skipped: only $(left)s left"
    else
        mkdir -p "$WORK/drafter/state"
        if [[ -f $DRAFTER_IN/state/train_state.pt ]]; then
            cp "$DRAFTER_IN/state/train_state.pt" "$WORK/drafter/state/"
        elif [[ -f $DRAFTER_IN.tar.gz ]]; then
            tar -xzf "$DRAFTER_IN.tar.gz" -C "$WORK" drafter/state/train_state.pt 2>/dev/null \
                || note "(b2) $DRAFTER_IN.tar.gz holds no state: starting afresh"
        fi
        note "(b2) drafter for $D_PATH, budget ${D_BUDGET}s"
        # --minutes leaves ~30 s for the held-out loss and writing the adapter
        timeout --signal=TERM "$D_BUDGET" "$PYTHON" -m training.commands train --device "$DEVICE" \
            --drafter-for "$D_PATH" --work "$WORK/drafter/state" --data-dir "$WORK/drafter_data" \
            --out "$WORK/drafter/drafter" --minutes "$(awk "BEGIN { print ($D_BUDGET - 30) / 60 }")" \
            "${DRAFTER_SIZE[@]}" > "$LOGS/drafter.log" 2>&1
        D_RC=$?
        rm -f "$WORK"/drafter/state/*.tmp
        tar -czf "$OUT_DIR/drafter.tar.gz" -C "$WORK" drafter
        note "(b2) drafter rc=$D_RC ($( [[ $D_RC == 0 ]] && echo 'all steps done' || echo 'stopped by its budget: continue with --drafter-in' )); $(grep -E 'held-out|written|Error|error' "$LOGS/drafter.log" | tail -2 | tr '\n' ' ')"
    fi
    pack_logs
fi

# (e) the next-edit fine-tune instead of (c) and (d)
if [[ $NE_S -gt 0 ]]; then
    kill "$UNPACK" 2>/dev/null; wait "$UNPACK" 2>/dev/null
    NE_BUDGET=$(( NE_S < $(left) - 10 ? NE_S : $(left) - 10 ))
    NE_SMOKE=(); [[ $SMOKE == 1 ]] && NE_SMOKE=(--cpu-smoke)
    note "(e) next-edit fine-tune, ${NE_BUDGET}s (cumulative training (c) and its check (d) not run)"
    PYTHON=$PYTHON bash scripts/gpu_next_edit.sh --out "$OUT_DIR/ne" --total-s "$NE_BUDGET" "${NE_SMOKE[@]}" \
        > "$LOGS/next_edit_stage.log" 2>&1
    note "(e) rc=$? $(grep 'checkpoint:' "$LOGS/next_edit_stage.log" | tail -1)"
    pack_logs
    ls -la "$OUT_DIR" "$OUT_DIR/ne/next_edit" 2>/dev/null
    exit 0
fi

# (c) training with what is left, minus the export and check at the end
wait $UNPACK
UNPACK_RC=$?
note "data: unpack rc=$UNPACK_RC $(tail -1 "$LOGS/unpack.log")"
CARRY_ARGS=()
if compgen -G "$CARRY_IN/state-*-of-*.safetensors" > /dev/null; then
    CARRY_ARGS=(--carry-in "$CARRY_IN")
else
    note "(c) no state in $CARRY_IN: this is run 1, training starts from random weights"
fi
TAIL_S=60
[[ $SMOKE == 1 ]] && TAIL_S=40
TRAIN_S=$(( $(left) - TAIL_S ))
if [[ $UNPACK_RC -ne 0 ]]; then
    note "(c) training skipped: the data pack could not be unpacked (see unpack.log)"
elif [[ $TRAIN_S -lt 20 ]]; then
    note "(c) training skipped: only $(left)s left"
else
    STOP_AT=$(( $(date +%s) + TRAIN_S - 20 ))   # ~20 s for the held-out loss and the last save
    note "(c) training until $(date -u -d @$STOP_AT +%H:%M:%S) UTC (hard stop after ${TRAIN_S}s)"
    timeout --signal=TERM "$TRAIN_S" "$PYTHON" -m training.commands train --device "$DEVICE" --preset "$PRESET" \
        --data-dir "$DATA" "${CARRY_ARGS[@]}" --carry-out "$OUT_DIR/carry" --stop-at "$STOP_AT" \
        --carry-files "$CARRY_FILES" --carry-file-mib 16 --carry-total-mib "$ROOM_MIB" "${TRAIN_SIZE[@]}" "${EXTRA[@]}" > "$LOGS/train.log" 2>&1
    note "(c) training rc=$? $(grep -E 'done:|error|Error' "$LOGS/train.log" | tail -2 | tr '\n' ' ')"
fi
pack_logs

# (d) quick check: export the state, greedy spec == ar and TPF on held-out rows
if compgen -G "$OUT_DIR/carry/state-*-of-*.safetensors" > /dev/null && [[ $(left) -gt 10 ]]; then
    timeout $(( $(left) > 15 ? $(left) - 5 : 10 )) "$PYTHON" -m training.commands export --carry "$OUT_DIR/carry" \
        --data-dir "$DATA" --out "$WORK/model" --check 8 --device "$DEVICE" > "$LOGS/check.log" 2>&1
    note "(d) check rc=$? $(tail -1 "$LOGS/check.log")"
fi
rm -f "$OUT_DIR"/carry/*.tmp
note "end: $(ls "$OUT_DIR" "$OUT_DIR/carry" 2>/dev/null | tr '\n' ' ')"
pack_logs
ls -la "$OUT_DIR" "$OUT_DIR/carry" 2>/dev/null
exit 0
