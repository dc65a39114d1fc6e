#!/usr/bin/env bash
# The FIRST script of a GPU lease (about 4 minutes): the checks of the newest code and the few figures
# that matter, so that a failure leaves time to fix it and run this again within the lease.
#   scripts/gpu_check.py --profile first: pytest on named test files (the CUDA-graph runner and its
#   bookkeeping, w4a16 and scales first, then every compiled-kernel check, then the engine's CUDA
#   tests), attention_cached at the decode shapes (error checked), the CUDA-graph runner vs eager per
#   step shape on the 8B shape (replay checked against eager, then ms per step, AR tok/s), the w4a16
#   matmul at 1 and 32 rows (error checked). Each part has its own deadline and (but the tests) its
#   own process; the report is rewritten after every part.
# Then scripts/gpu_session2.sh (the second script: the rest of the measurements and training).
# What comes back in $OUT: gpu_check_first.md (the report) and session.tar.gz (every log).
#
# Usage: scripts/gpu_session.sh [--out DIR] [--total-s 240] [--cpu-smoke] [-- extra gpu_check.py flags]
# --cpu-smoke: the same plumbing on a CPU (toy shapes, TRITON_INTERPRET=1, a CPU stand-in for CUDA graphs).
# GPU_CHECK_FAIL=PART[:raise|crash|hang] injects a failure into one part (see scripts/gpu_check.py).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
T0=$(date +%s)

OUT_DIR=${OUT:-runs/gpu_session}
TOTAL_S=240
SMOKE=0
EXTRA=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) OUT_DIR=$2; shift 2 ;;
        --total-s) TOTAL_S=$2; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        --) shift; EXTRA=("$@"); break ;;
        *) echo "gpu_session.sh: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
source scripts/gpu_session_lib.sh

note "start: first script, out $OUT_DIR, budget ${TOTAL_S}s, python $PYTHON"
machine_info
pack_logs
run_gpu_check gpu_check_first first $(( $(left) - 10 )) "${EXTRA[@]}"
RC=$?
note "end: $(ls "$OUT_DIR" | tr '\n' ' ')"
pack_logs
exit $RC
