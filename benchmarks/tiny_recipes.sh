#!/usr/bin/env bash
# Wall time of `vaekit fit` on every shipped tiny recipe, as the README's quick start runs them (the README
# promises under a minute each on 2 CPU cores).
#
#   bash benchmarks/tiny_recipes.sh OUT
set -uo pipefail
OUT=$(realpath -m "$1")
mkdir -p "$OUT"
for config in configs/*/tiny.yaml; do
    name=$(basename "$(dirname "$config")")
    start=$(date +%s.%N)
    vaekit fit --config "$config" --trainer.default_root_dir "$OUT/$name" --trainer.enable_progress_bar false \
        >"$OUT/$name.log" 2>&1
    code=$?
    printf "%-10s exit %d  %5.1f s\n" "$name" "$code" "$(echo "$(date +%s.%N) - $start" | bc)"
done
