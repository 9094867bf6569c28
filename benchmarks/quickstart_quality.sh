#!/usr/bin/env bash
# The quick-start models as a user gets them, scored: every tiny recipe trained as shipped (timed, by
# tiny_recipes.sh), then the sample-quality benchmark's outside classifiers on the image and audio models'
# samples and the joint model's cross-modal coherence (benchmarks/multimodal_digits.py).
#
#   OMP_NUM_THREADS=2 bash benchmarks/quickstart_quality.sh OUT ../shared/data
set -euo pipefail
OUT=$(realpath -m "$1")
DATA=$(realpath "$2")
bash benchmarks/tiny_recipes.sh "$OUT"
python -m benchmarks.sample_quality mnist "$OUT/image/checkpoints/last.ckpt" --data "$DATA/mnist" \
    --samplers prior gmm --num 5000
python -m benchmarks.sample_quality fsdd "$OUT/audio/checkpoints/last.ckpt" --data "$DATA/fsdd/recordings" \
    --samplers prior gmm --num 300
python -m benchmarks.multimodal_digits "$OUT/multimodal/checkpoints/last.ckpt" --mnist "$DATA/mnist" \
    --fsdd "$DATA/fsdd/recordings" --iw-samples 10 --num 300 --out "$OUT/multimodal_digits.json" \
    --picture "$OUT/multimodal_audio_to_image.png"
python -c "import json, sys; d = json.load(open(sys.argv[1])); print('coherence', d['evaluate']['coherence'])" \
    "$OUT/multimodal_digits.json"
