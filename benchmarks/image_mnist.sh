#!/usr/bin/env bash
# The MNIST reference recipe end to end: train, evaluate, and write the sample and reconstruction
# grids shown in docs/benchmarks.md. Usage: benchmarks/image_mnist.sh [MNIST_DIR] [RUN_DIR] [MAX_TIME]
#   MAX_TIME (DD:HH:MM:SS) bounds training by wall clock; leave empty to train the recipe's 200 epochs.
#   IW_EXAMPLES bounds the importance-weighted evaluation (empty: the whole test set).
set -euo pipefail
data=${1:-../shared/data/mnist}
run=${2:-runs/mnist}
max_time=${3:-}
iw_samples=${IW_SAMPLES:-5000}
iw_examples=${IW_EXAMPLES:-}

vaekit fit --config configs/image/mnist.yaml --data.root "$data" --trainer.default_root_dir "$run" \
    ${max_time:+--trainer.max_time "$max_time"}
ckpt="$run/checkpoints/last.ckpt"
# The bound on the whole test set (one sample per example is an unbiased ELBO estimate).
vaekit evaluate "$ckpt" --split test --iw-samples 1 --out "$run/eval_elbo_full.json"
# The importance-weighted NLL (K=IW_SAMPLES), on the first IW_EXAMPLES test images if set.
vaekit evaluate "$ckpt" --split test --iw-samples "$iw_samples" --batch-size 50 \
    ${iw_examples:+--max-examples "$iw_examples"} --out "$run/eval_iw.json"
vaekit sample "$ckpt" --num 64 --seed 0 --out "$run/samples"
vaekit reconstruct "$ckpt" --num 32 --out "$run/reconstructions"
vaekit encode "$ckpt" --split test --out "$run/latents.npz" --plot "$run/latents.png"
