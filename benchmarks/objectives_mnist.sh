#!/usr/bin/env bash
# The MNIST recipe trained by the ELBO and by the IWAE bound (K=5) for the same wall-clock time, then both
# evaluated alike: test NLL by importance sampling (K=IW_SAMPLES) on the first IW_EXAMPLES test images, and the
# ELBO on the whole test set. Usage:
#   OMP_NUM_THREADS=1 benchmarks/objectives_mnist.sh [MNIST_DIR] [RUN_DIR] [MAX_TIME DD:HH:MM:SS]
set -euo pipefail
data=${1:-../shared/data/mnist}
runs=${2:-runs/objectives}
max_time=${3:-00:00:10:00}
iw_samples=${IW_SAMPLES:-1000}
iw_examples=${IW_EXAMPLES:-500}

for objective in elbo iwae; do
    run="$runs/$objective"
    vaekit fit --config configs/image/mnist.yaml --data.root "$data" --trainer.default_root_dir "$run" \
        --trainer.max_time "$max_time" --trainer.enable_progress_bar false \
        --model.objective.name "$objective" --model.objective.samples 5 --posthoc.components 0 \
        --model.default_sampler prior --samples.num 0 2>&1 | grep -E "last.ckpt|error" || true
    ckpt="$run/checkpoints/last.ckpt"
    vaekit evaluate "$ckpt" --split test --iw-samples 1 --out "$run/eval_elbo.json" --overwrite > /dev/null
    vaekit evaluate "$ckpt" --split test --iw-samples "$iw_samples" --batch-size 50 --max-examples "$iw_examples" \
        --out "$run/eval_iw.json" --overwrite > /dev/null
    python - "$run" "$objective" <<'PY'
import json, sys, torch
run, objective = sys.argv[1], sys.argv[2]
elbo, iw = (json.load(open(f"{run}/{name}.json")) for name in ("eval_elbo", "eval_iw"))
step = torch.load(f"{run}/checkpoints/last.ckpt", weights_only=True, mmap=True)["global_step"]
print(f"{objective}: steps {step}, test ELBO {elbo['elbo']:.2f} ({elbo['num_examples']} images), "
      f"IW NLL {iw['nll']:.2f} (K={iw['iw_samples']}, {iw['num_examples']} images), active units {elbo['active_units']}")
PY
done
