#!/usr/bin/env bash
# The three reference recipes on one GPU, trained side by side for MINUTES each, then evaluated and scored by
# the sample-quality benchmark; first, Lightning against a plain loop on the GPU (benchmarks/throughput.py).
#
#   bash benchmarks/gpu_recipes.sh DATA OUT [SECONDS]
#
# SMOKE=1 shrinks everything (no throughput run, 16 test examples, K=10, 50 samples) to check the script on a CPU.
# DATA holds mnist/ (the IDX files), ptb/ (ptb.*.txt) and fsdd/recordings/ (WAVs); the scorers' classifiers
# and LM must be cached under benchmarks/results/classifiers (a CPU run of benchmarks/sample_quality.py
# trains them). OUT gets each run's log, evaluation JSON, sample-quality JSON and samples; no checkpoints
# leave OUT/runs.
set -uo pipefail
DATA=$(realpath "$1")
OUT=$(realpath -m "$2")
SECONDS_PER_FIT=${3:-180}
SMOKE=${SMOKE:-0}
RUNS="$OUT/runs"
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 VAEKIT_CACHE="$OUT/cache"
stamp() { echo "[$(date +%T)] $*"; }

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
if [ "$SMOKE" = 0 ]; then
    stamp "throughput: Lightning against a plain loop, MNIST recipe"
    timeout 90 python -m benchmarks.throughput --config configs/image/mnist.yaml --data.root "$DATA/mnist" \
        --steps 300 --warmup 30 --repeats 3 --out "$OUT/throughput_mnist_gpu.json" >"$OUT/throughput.log" 2>&1
    cat "$OUT/throughput_mnist_gpu.json"
fi

stamp "fit: the three recipes side by side, $SECONDS_PER_FIT s each"
MAX_TIME=$(printf "00:00:%02d:%02d" $((SECONDS_PER_FIT / 60)) $((SECONDS_PER_FIT % 60)))
fit() {
    local name=$1
    shift
    vaekit fit "$@" --trainer.default_root_dir "$RUNS/$name" --trainer.max_time "$MAX_TIME" \
        --trainer.enable_progress_bar false >"$OUT/fit_$name.log" 2>&1
    echo "fit $name: exit $?; $(ls "$RUNS/$name/checkpoints" | tr '\n' ' ')"
}
fit mnist --config configs/image/mnist.yaml --data.root "$DATA/mnist" &
fit ptb --config configs/text/ptb.yaml --data.root "$DATA/ptb" &
fit fsdd --config configs/audio/fsdd.yaml --data.root "$DATA/fsdd/recordings" &
wait

stamp "evaluate: test split, importance-weighted NLL"
evaluate() {
    local name=$1 k=$2 limit=()
    [ "$SMOKE" = 0 ] || { k=10; limit=(--max-examples 16); }
    vaekit evaluate "$RUNS/$name/checkpoints/last.ckpt" --split test --iw-samples "$k" "${limit[@]}" \
        --out "$OUT/eval_$name.json" >"$OUT/eval_$name.log" 2>&1
    echo "evaluate $name (K=$k): exit $?"
}
evaluate mnist 1000 &
evaluate ptb 500 &
evaluate fsdd 1000 &
wait

stamp "sample quality"
score() {
    local name=$1 num=$2 data=$3
    [ "$SMOKE" = 0 ] || num=50
    python -m benchmarks.sample_quality "$name" "$RUNS/$name/checkpoints/last.ckpt" --data "$data" --num "$num" \
        --out "$OUT/quality_$name.json" >"$OUT/quality_$name.log" 2>&1
    echo "quality $name: exit $?"
    grep '^|' "$OUT/quality_$name.log"
}
score mnist 5000 "$DATA/mnist" &
score ptb 1000 "$DATA/ptb" &
score fsdd 1000 "$DATA/fsdd/recordings" &
wait
for name in mnist ptb fsdd; do
    python -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], {k: round(v, 3) for k, v in r.items() if isinstance(v, float)})" \
        "$OUT/eval_$name.json" "$name" 2>/dev/null
done
stamp done
