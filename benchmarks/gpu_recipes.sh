#!/usr/bin/env bash
# Issue #20's GPU runs in one call of under 10 minutes on one H200: throughput of `vaekit fit` against plain
# loops at batch sizes 64 to 4096 with a profile, the fast paths one by one, the four reference recipes trained
# side by side for SECONDS each (the three unimodal ones and the joint digits model), evaluated, and every tiny
# recipe trained with no host sync in a step. Each step has a time cap, so a slow one costs its own figures only.
#
#   bash benchmarks/gpu_recipes.sh DATA OUT [SECONDS]
#
# SMOKE=1 shrinks everything (tiny recipes, a few steps, 16 test examples, K=10) to check the script on a CPU.
# DATA holds mnist/ (the IDX files), ptb/ (ptb.*.txt) and fsdd/recordings/ (WAVs): on the device machine, copy
# ../shared/data's three folders (39 MB) into an ignored folder of the checkout and carry it. The joint model's
# coherence needs the digit classifiers cached under benchmarks/results/classifiers (a CPU run of
# benchmarks/multimodal_digits.py trains them). OUT gets each run's log and JSON and the profile; the
# checkpoints stay in OUT/runs.
#
# vaekit must be installed (`pip install -e .`). On a machine without a package index, install a wheel of vaekit
# and the missing dependencies with `pip install --no-deps --target SITE`, then run with
# `PYTHONPATH=SITE:$PWD PYTHONSAFEPATH=1`, so that `vaekit` is the installed package (which holds
# vaekit.recipes and vaekit.configs) and `benchmarks` the checkout's (docs/benchmarks.md has the command).
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

MNIST=(--config configs/image/mnist.yaml --data.root "$DATA/mnist")
FSDD=(--config configs/audio/fsdd.yaml --data.root "$DATA/fsdd/recordings")
PTB=(--config configs/text/ptb.yaml --data.root "$DATA/ptb")
DIGITS=(--config configs/multimodal/digits.yaml --data.image_root "$DATA/mnist"
    --data.audio_root "$DATA/fsdd/recordings")
STEPS=(--steps 60 --warmup 15 --repeats 2)
ONCE=(--steps 60 --warmup 15 --repeats 1)
SIZES=(128 64 1024 4096)  # the first is profiled: the recipes' batch
FSDD_SIZES=(64 256 1024)  # 2,700 training clips: 4096 would be one partial batch
if [ "$SMOKE" != 0 ]; then
    MNIST=(--config configs/image/tiny.yaml)
    FSDD=(--config configs/audio/tiny.yaml)
    PTB=(--config configs/text/tiny.yaml)
    DIGITS=(--config configs/multimodal/tiny.yaml)
    STEPS=(--steps 4 --warmup 2 --repeats 1)
    ONCE=("${STEPS[@]}")
    SIZES=(64 32)
    FSDD_SIZES=(32)
fi

stamp "decoding the audio and text caches (in the background, on the host)"
python - "${FSDD[@]}" -- "${PTB[@]}" -- "${DIGITS[@]}" >"$OUT/prepare.log" 2>&1 <<'EOF' &
import sys
from benchmarks.throughput import build
args = " ".join(sys.argv[1:]).split(" -- ")
for recipe in args:
    build(recipe.split()[1], recipe.split()[2:])
EOF
PREPARE=$!

throughput() {  # NAME SECONDS ARGS...: each run capped, so the whole script stays under 10 minutes
    local name=$1 limit=$2
    shift 2
    stamp "throughput $name"
    timeout "$limit" python -m benchmarks.throughput "$@" --out "$OUT/throughput_$name.json" \
        >"$OUT/throughput_$name.log" 2>&1
    echo "exit $?"
    grep -E '^\|' "$OUT/throughput_$name.log"
}
throughput mnist 70 "${MNIST[@]}" "${STEPS[@]}" --batch-sizes "${SIZES[@]}" --profile "$OUT/profile_mnist.txt"
wait "$PREPARE"
throughput fsdd 40 "${FSDD[@]}" "${STEPS[@]}" --batch-sizes "${FSDD_SIZES[@]}"
throughput ptb 40 "${PTB[@]}" "${STEPS[@]}" --batch-sizes "${SIZES[@]}"
# the fast paths one at a time at the recipe's batch (one repeat: the plain loops run before the fit compiles);
# --model.compile true is left out: on 2026-12-04 it gave the eager rate (docs/benchmarks.md)
throughput mnist_cudagraphs 45 "${MNIST[@]}" "${ONCE[@]}" --model.compile reduce-overhead
throughput mnist_foreach_adam 20 "${MNIST[@]}" "${ONCE[@]}" --model.fused_optimizer false
throughput mnist_loader 20 "${MNIST[@]}" "${ONCE[@]}" --data.on_device false
[ -f "$OUT/fit-profile_mnist.txt" ] && head -45 "$OUT/fit-profile_mnist.txt"  # the PyTorchProfiler's file

stamp "fit: the four recipes side by side, $SECONDS_PER_FIT s each"
MAX_TIME=$(printf "00:00:%02d:%02d" $((SECONDS_PER_FIT / 60)) $((SECONDS_PER_FIT % 60)))
fit() {
    local name=$1
    shift
    vaekit fit "$@" --trainer.default_root_dir "$RUNS/$name" --trainer.max_time "$MAX_TIME" \
        --trainer.enable_progress_bar false >"$OUT/fit_$name.log" 2>&1
    echo "fit $name: exit $?; $(ls "$RUNS/$name/checkpoints" | tr '\n' ' ')"
}
fit mnist "${MNIST[@]}" &
fit ptb "${PTB[@]}" &
fit fsdd "${FSDD[@]}" &
fit digits "${DIGITS[@]}" &
wait

stamp "evaluate (test split, importance-weighted NLL), the joint model's coherence, the sync check"
evaluate() {
    local name=$1 k=$2 limit=()
    [ "$SMOKE" = 0 ] || { k=10; limit=(--max-examples 16); }
    timeout 120 vaekit evaluate "$RUNS/$name/checkpoints/last.ckpt" --split test --iw-samples "$k" "${limit[@]}" \
        --out "$OUT/eval_$name.json" >"$OUT/eval_$name.log" 2>&1
    echo "evaluate $name (K=$k): exit $?"
}
evaluate mnist 1000 &
evaluate ptb 500 &
evaluate fsdd 1000 &
(
    timeout 120 python -m benchmarks.multimodal_digits "$RUNS/digits/checkpoints/last.ckpt" --mnist "$DATA/mnist" \
        --fsdd "$DATA/fsdd/recordings" --iw-samples 20 --num 500 --picture "$OUT/digits_audio_to_image.png" \
        --out "$OUT/digits.json" >"$OUT/digits.log" 2>&1
    echo "joint digits: exit $?"
) &
if [ "$SMOKE" = 0 ]; then  # set_sync_debug_mode needs CUDA
    timeout 90 python -m benchmarks.gpu_sync_check configs/image/tiny.yaml configs/audio/tiny.yaml \
        configs/text/tiny.yaml configs/tabular/tiny.yaml configs/multimodal/tiny.yaml >"$OUT/sync_check.log" 2>&1
    echo "sync check: exit $?"
    grep -E "steps without|Error" "$OUT/sync_check.log"
fi
wait
for name in mnist ptb fsdd; do
    python -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], {k: round(v, 3) for k, v in r.items() if isinstance(v, float)})" \
        "$OUT/eval_$name.json" "$name" 2>/dev/null
done
python -c "import json,sys; r=json.load(open(sys.argv[1]))['evaluate']; print('digits', {k: round(v, 3) for k, v in r.items() if isinstance(v, float)})" \
    "$OUT/digits.json" 2>/dev/null
stamp done
