#!/usr/bin/env bash
# Issue #20's GPU runs in one call (about 10 minutes on one H200): no host sync in a step, throughput of
# `vaekit fit` against plain loops at batch sizes 64 to 4096 with a profile, the fast paths one by one, then the
# three reference recipes trained side by side for SECONDS each, evaluated and scored by the sample-quality
# benchmark.
#
#   bash benchmarks/gpu_recipes.sh DATA OUT [SECONDS]
#
# SMOKE=1 shrinks everything (tiny recipes, a few steps, 16 test examples, K=10, 50 samples) to check the
# script on a CPU. DATA holds mnist/ (the IDX files), ptb/ (ptb.*.txt) and fsdd/recordings/ (WAVs): on the
# device machine, copy ../shared/data's three folders (39 MB) into an ignored folder of the checkout and carry
# it. The scorers' classifiers and LM must be cached under benchmarks/results/classifiers (a CPU run of
# benchmarks/sample_quality.py trains them). OUT gets each run's log and JSON, the profile and samples; no
# checkpoints leave OUT/runs.
set -uo pipefail
DATA=$(realpath "$1")
OUT=$(realpath -m "$2")
SECONDS_PER_FIT=${3:-180}
SMOKE=${SMOKE:-0}
RUNS="$OUT/runs"
mkdir -p "$RUNS"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4 VAEKIT_CACHE="$OUT/cache"
stamp() { echo "[$(date +%T)] $*"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no GPU (smoke run)"

if [ "$SMOKE" = 0 ]; then
    stamp "no host sync in a training step (torch.cuda.set_sync_debug_mode error)"
    python -m benchmarks.gpu_sync_check configs/image/tiny.yaml configs/audio/tiny.yaml configs/text/tiny.yaml \
        configs/multimodal/tiny.yaml 2>&1 | tee "$OUT/sync_check.log" | grep -E "steps without|Error"
    STEPS=(--steps 60 --warmup 15 --repeats 2)
    MNIST=(--config configs/image/mnist.yaml --data.root "$DATA/mnist")
    FSDD=(--config configs/audio/fsdd.yaml --data.root "$DATA/fsdd/recordings")
    PTB=(--config configs/text/ptb.yaml --data.root "$DATA/ptb")
    SIZES=(64 128 1024 4096)
else
    STEPS=(--steps 4 --warmup 2 --repeats 1)
    MNIST=(--config configs/image/tiny.yaml)
    FSDD=(--config configs/audio/tiny.yaml)
    PTB=(--config configs/text/tiny.yaml)
    SIZES=(32 64)
fi
throughput() {  # NAME SECONDS ARGS...: each run bounded, so the whole script stays near 10 minutes
    local name=$1 limit=$2
    shift 2
    stamp "throughput $name"
    timeout "$limit" python -m benchmarks.throughput "$@" "${STEPS[@]}" --out "$OUT/throughput_$name.json" \
        >"$OUT/throughput_$name.log" 2>&1
    echo "exit $?"
    grep '^|' "$OUT/throughput_$name.log"
}
throughput mnist 120 "${MNIST[@]}" --batch-sizes "${SIZES[@]}" --profile "$OUT/profile_mnist.txt"
throughput fsdd 60 "${FSDD[@]}" --batch-sizes "${SIZES[@]:1:2}"
throughput ptb 60 "${PTB[@]}" --batch-sizes "${SIZES[@]:1:2}"
throughput mnist_compile 60 "${MNIST[@]}" --model.compile true
throughput mnist_cudagraphs 60 "${MNIST[@]}" --model.compile reduce-overhead
throughput mnist_fused_adam 40 "${MNIST[@]}" --model.fused_optimizer true
throughput mnist_loader 40 "${MNIST[@]}" --data.on_device false
[ -f "$OUT/fit-profile_mnist.txt" ] && head -60 "$OUT/fit-profile_mnist.txt"  # the PyTorchProfiler writes fit-NAME.txt

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
