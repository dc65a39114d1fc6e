# Shared by scripts/gpu_session.sh (first script of a GPU lease) and scripts/gpu_session2.sh (second):
# sourced, not run. Expects ROOT, T0, TOTAL_S, OUT_DIR set; sets PYTHON, WORK, LOGS, DEADLINE and
# defines left / note / pack_logs / machine_info / run_gpu_check.

if [[ -z "${PYTHON:-}" ]]; then
    for cand in python3 python; do
        if command -v "$cand" >/dev/null && "$cand" -c "import torch, numpy" 2>/dev/null; then
            PYTHON=$cand; break
        fi
    done
fi
: "${PYTHON:?no python with torch and numpy found (set PYTHON=...)}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_session.XXXXXX")
LOGS=$WORK/session
mkdir -p "$LOGS"
DEADLINE=$((T0 + TOTAL_S))
left() { echo $((DEADLINE - $(date +%s))); }
note() { echo "[$(basename "$0") +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOGS/session.log" >&2; }

pack_logs() {
    # one file back for every log and report; written again after each stage so a kill keeps the latest
    tar -czf "$OUT_DIR/session.tar.gz.tmp" -C "$WORK" session 2>/dev/null && \
        mv "$OUT_DIR/session.tar.gz.tmp" "$OUT_DIR/session.tar.gz"
}

machine_info() {
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
      "$PYTHON" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
      git -C "$ROOT" log -1 --format='commit %H %s' 2>/dev/null || true; } > "$LOGS/machine.txt" 2>&1
}

# run_gpu_check NAME PROFILE BUDGET_S [flags]: scripts/gpu_check.py with that profile and budget; its
# report is rewritten after every part, copied to $OUT_DIR/NAME.md (a plain file back) and into the logs
run_gpu_check() {
    local name=$1 profile=$2 budget=$3; shift 3
    local smoke=(); [[ ${SMOKE:-0} == 1 ]] && smoke=(--cpu-smoke)
    note "$name: gpu_check --profile $profile, budget ${budget}s"
    # the parts end by themselves within the budget; the timeout is a last resort (20 s later)
    timeout --kill-after=5 $((budget + 20)) "$PYTHON" scripts/gpu_check.py --profile "$profile" --budget-s "$budget" \
        --out "$LOGS/$name.md" "${smoke[@]}" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    cp "$LOGS/$name.md" "$OUT_DIR/$name.md" 2>/dev/null
    note "$name: rc=$rc ($( [[ $rc == 0 ]] && echo 'every check passed' || echo 'FAIL rows or an error: see the report')); $(tail -1 "$LOGS/$name.md" 2>/dev/null)"
    pack_logs
    return $rc
}
