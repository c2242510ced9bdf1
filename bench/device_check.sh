#!/usr/bin/env bash
# The GPU checks of dlx, in one run on a machine with one CUDA GPU whose python3 has torch but not dlx's other
# dependencies: they come as wheels in .whl/ (bench/README.md says how they are made). Run from the repository
# root:
#
#     bash bench/device_check.sh                  # on the GPU machine: ~5-7 minutes, at most BUDGET seconds
#     DEVICE=cpu QUICK=1 bash bench/device_check.sh   # a dry run of every step on a CPU machine, tiny sizes
#
# Steps, most telling first, each under its own timeout and skipped once the budget is spent: the device,
# the install, bench/gpu.py at full size (dlx against a hand-written loop and Lightning, bf16), the CUDA tests,
# the self-supervised objectives and sequence models for 3 epochs each, a sweep of 4 trials on 2 workers sharing
# the GPU, the DDP tests over NCCL (they need 2 GPUs: a skip on one),
# and, with what time is left, bench/gpu.py with trainer.compile=true. Everything printed also goes to
# $OUT/log; the summary of the steps comes last.
set -u -o pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$(mktemp -d)}
BUDGET=${BUDGET:-500}    # seconds for the whole script: 9 minutes less a margin
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-}
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}   # dlx's dependencies that the machine lacks
SITE=${SITE:-/tmp/site}  # where they are installed
export OUT REPO WHEELS SITE DEVICE PY PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
SUMMARY=()

# step NAME MAX_SECONDS COMMAND...: runs COMMAND under min(MAX_SECONDS, what the budget has left), notes its exit
# status and time; 124 means it was stopped at its limit
step() {
    local name=$1 max=$2 left=$((BUDGET - SECONDS - 5))
    shift 2
    local limit=$((max < left ? max : left))
    if ((limit < 15)); then
        SUMMARY+=("$(printf '%-12s skipped: the %ss budget is spent' "$name" "$BUDGET")")
        return
    fi
    echo
    echo "=== $name (limit ${limit}s): $*"
    local t0=$SECONDS rc=0
    timeout -k 5 "$limit" bash -c '"$@"' "$name" "$@" || rc=$?  # a bash: the steps are functions
    SUMMARY+=("$(printf '%-12s exit %-3s %4ss' "$name" "$rc" "$((SECONDS - t0))")")
}

device() {
    if [[ $DEVICE == cuda* ]]; then nvidia-smi; fi
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', \
torch.cuda.is_available() and torch.cuda.get_device_name())"
}

install() {
    if [[ -d $WHEELS ]]; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$WHEELS"/*.whl
    else
        echo "no $WHEELS folder: using the packages $PY has"
    fi
    "$PY" -c "import dlx, hydra, mlflow, omegaconf, optuna; print('dlx from', dlx.__file__, '| mlflow', \
mlflow.__version__, '| hydra', hydra.__version__, '| optuna', optuna.__version__)"
}

cuda_tests() {
    # the test files that mark CUDA cases, the DDP ones apart (a step of their own)
    local files
    mapfile -t files < <(grep -l "mark.cuda" tests/test_*.py | grep -v "tests/test_ddp")
    "$PY" -m pytest -q -rs -p no:cacheprovider -m cuda --continue-on-collection-errors "${files[@]}"
}

sweep() {
    # 4 trials, 2 workers, one GPU between them; then what each trial recorded
    local work
    work=$(mktemp -d)
    (cd "$work" && "$PY" -m dlx sweep model=cnn model.width=16 trainer.epochs=2 "trainer.device=$DEVICE" \
        trainer.progress=plain seed=0,1,2,3 hydra/launcher=dlx_local hydra.launcher.n_jobs=2 >"$OUT/sweep.txt" 2>&1)
    local rc=$?
    grep -E "^(trial |sweep |best )" "$OUT/sweep.txt"  # the trials' own output: $OUT/sweep.txt
    ((rc == 0)) || { tail -20 "$OUT/sweep.txt"; return $rc; }
    (cd "$work" && "$PY" - <<'EOF'
from mlflow import MlflowClient

client = MlflowClient("sqlite:///outputs/mlflow.db")
for run in client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time"]):
    where = {k: v for k, v in {**run.data.params, **run.data.tags}.items()
             if any(w in k.lower() for w in ("device", "gpu", "cuda"))}
    print(run.info.run_name, run.info.status, run.data.metrics.get("test/acc"), where)
EOF
    )
}

models() {
    # the objectives and sequence models on the device: SimSiam, SimCLR under bf16, a Transformer and a ViT
    local work args
    work=$(mktemp -d)
    for args in "objective=simsiam model=cnn" "objective=simclr model=cnn trainer.amp=bf16" \
            "dataset=reverse model=transformer" "model=vit trainer.amp=bf16"; do
        echo "--- dlx train $args"
        # shellcheck disable=SC2086 # the words of args are overrides
        (cd "$work" && "$PY" -m dlx train $args trainer.epochs=3 "trainer.device=$DEVICE" trainer.progress=plain \
            2>&1 | grep -E "epoch 3/|test/|knn|output_std|probe|error|Error" | head -12) || return 1
    done
}

ddp() {
    local files=(tests/test_ddp*.py)
    if [[ ! -e ${files[0]} ]]; then
        echo "no tests/test_ddp*.py here"
        return
    fi
    "$PY" -m pytest -q -rs -p no:cacheprovider -k "nccl or cuda" "${files[@]}"
}

export -f device install cuda_tests models sweep ddp

main() {
echo "dlx device check: $(date -u '+%F %T') UTC, commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), \
device $DEVICE, budget ${BUDGET}s, log $OUT/log"
step device 30 device
export PYTHONPATH=$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}
step install 120 install
if [[ -n $QUICK ]]; then
    step gpu.py 240 bash -o pipefail -c '"$@" | tee "$OUT/gpu.txt"' - "$PY" bench/gpu.py --quick --device "$DEVICE"
else
    step gpu.py 240 bash -o pipefail -c '"$@" | tee "$OUT/gpu.txt"' - "$PY" bench/gpu.py
fi
step cuda-tests 120 cuda_tests
step models 80 models
step sweep 100 sweep
step ddp 60 ddp
# torch.compile's first compilation of ResNet-20 (training, evaluation, the last short batch) takes a minute or
# more: only with the time that is left (over 110 s), and not in a dry run (inductor compiles C++ for a CPU)
if [[ -z $QUICK ]] && ((BUDGET - SECONDS > 110)); then
    step gpu.py-comp $((BUDGET - SECONDS - 10)) bash -o pipefail -c '"$@" | tee "$OUT/gpu-compile.txt"' - \
        "$PY" bench/gpu.py --sides hand dlx-compile --repeats 1 --epochs 4
fi

for f in "$OUT"/gpu*.txt; do
    [[ -e $f ]] && { echo; echo "=== $(basename "$f")"; sed -n '/^loop /,$p' "$f"; }
done
echo
echo "=== summary ($SECONDS s of ${BUDGET}s; exit 124: stopped at its limit)"
printf '%s\n' "${SUMMARY[@]}"
! printf '%s\n' "${SUMMARY[@]}" | grep -qv "exit 0 "
}

# a pipeline, not exec > >(tee): the script ends only once tee has written the last line
main 2>&1 | tee -a "$OUT/log"
