#!/usr/bin/env bash
# Every shipped config, on real data where it names one, through fit (a few steps) and every command,
# from the .ckpt and from the exported folder. Run from the repository root with vaekit installed:
#   bash benchmarks/every_config_real_data.sh ../shared/data /tmp/every-config
set -u
DATA=${1:-../shared/data}; OUT=${2:-/tmp/every-config}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rm -rf "$OUT"; mkdir -p "$OUT"
declare -A ROOT=( [image/tiny]=demo:image [image/mnist]=$DATA/mnist [text/tiny]=demo:text \
  [text/ptb]=$DATA/ptb [audio/tiny]=demo:audio [audio/fsdd]=$DATA/fsdd/recordings \
  [multimodal/tiny]="demo:image --data.audio_root demo:audio" \
  [multimodal/digits]="$DATA/mnist --data.audio_root $DATA/fsdd/recordings" \
  [tabular/tiny]=demo:tabular [tabular/adbench]=$DATA/adbench/6_cardio.npz )
# A joint recipe takes one root per modality: its first is given as --data.image_root.
declare -A FLAG=( [multimodal/tiny]=--data.image_root [multimodal/digits]=--data.image_root )
fail=0
for cfg in image/tiny image/mnist text/tiny text/ptb audio/tiny audio/fsdd multimodal/tiny multimodal/digits tabular/tiny tabular/adbench; do
  run=$OUT/${cfg/\//-}
  vaekit fit --config configs/$cfg.yaml ${FLAG[$cfg]:---data.root} ${ROOT[$cfg]} --trainer.default_root_dir $run \
    --trainer.max_steps 5 --trainer.max_epochs 100 --trainer.limit_val_batches 2 --samples.num 2 \
    --trainer.enable_progress_bar false > $run.fit.log 2>&1 || { echo "$cfg fit FAILED"; fail=1; continue; }
  vaekit export $run/checkpoints/last.ckpt --out $run/exported --num 2 > $run.export.log 2>&1 || { echo "$cfg export FAILED"; fail=1; }
  for model in $run/checkpoints/last.ckpt $run/exported; do
    tag=$(basename $model)
    for cmd in "sample --num 3 --out $run/$tag-s" "reconstruct --num 2 --out $run/$tag-r" \
      "interpolate --steps 3 --out $run/$tag-i" "traverse --dims 0 1 --steps 3 --out $run/$tag-t" \
      "evaluate --iw-samples 5 --max-examples 16 --out $run/$tag-e.json" \
      "encode --max-examples 16 --out $run/$tag-z.npz" "score --max-examples 16 --out $run/$tag-sc.csv" \
      ${FLAG[$cfg]:+"translate --from audio --to image --num 2 --out $run/$tag-tr"} \
      ${FLAG[$cfg]:+"translate --from image --to audio --num 2 --out $run/$tag-tr2"}; do
      set -- $cmd
      vaekit $1 $model ${@:2} > $run.$tag.$1.log 2>&1 || { echo "$cfg $tag $1 FAILED"; fail=1; }
    done
  done
  echo "$cfg: ckpt nll $(python -c "import json;print(round(json.load(open('$run/last.ckpt-e.json'))['nll'],3))") exported nll $(python -c "import json;print(round(json.load(open('$run/exported-e.json'))['nll'],3))")"
done
echo "fail=$fail"
exit $fail
