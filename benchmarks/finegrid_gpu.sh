#!/usr/bin/env bash
# The fine-grid benchmark on one GPU, in one go (results: benchmarks/results/salvage_quality_finegrid.md, foundation.md):
#   1. the whole pipeline finegrid.yaml, each stage timed (it shares the GPU with steps 2-3, so its times are upper bounds);
#   2. Salvage (js, guided), Salvage (js, shapley sampler) and ViT-Shapley (mse, shapley) trained for EPOCHS x 200 steps
#      on SURROGATE (the CPU pipeline's surrogate, so the game is the one the CPU tables use);
#   3. benchmarks/salvage_quality.py at full size on the explainers of step 2, then on any EXPLAINERS_200 given;
#   4. with METHODS=1, every registered method on 200 occluded scenes (benchmarks/methods_comparison.py), KernelSHAP and
#      LIME also at 2048 coalitions, in the time left.
# Usage: bash benchmarks/finegrid_gpu.sh SURROGATE_CKPT OUT_DIR
# Environment: EPOCHS (10), MAX_TIME per explainer (00:00:04:30), N_IMAGES (500), N_MASKS (32), DEADLINE in seconds from
# the start for everything (560), PIPELINE (finegrid.yaml; empty to skip), RUN_ROOT (runs_gpu), EXTRA (more train.py
# arguments for every stage), EXPLAINERS_200 ("NAME=CKPT;NAME=CKPT", a second table after the first).
set -u
surrogate=$1
out=$2
root=${RUN_ROOT:-runs_gpu}
deadline=$(( $(date +%s) + ${DEADLINE:-560} ))
read -r -a extra <<< "${EXTRA:-}"
mkdir -p "$out"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} PYTHONUNBUFFERED=1
left() { echo $(( deadline - $(date +%s) )); }
timed() {  # LABEL COMMAND...: run the command, then print its wall time
  local label=$1 t0; shift; t0=$(date +%s%N)
  "$@"; local rc=$?
  echo "$label wall $(( ($(date +%s%N) - t0) / 1000000 )) ms (exit $rc)"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/gpu.txt" 2>&1

if [ -n "${PIPELINE-finegrid.yaml}" ]; then
  timed pipeline timeout "$(left)" python train.py --config "${PIPELINE:-finegrid.yaml}" \
    --wandb false --run_root "$root" "${extra[@]}" > "$out/pipeline.log" 2>&1 &
  pipeline_pid=$!
fi

names=(salvage salvage_shapley_sampler vit_shapley)
flags=("" "--model.init_args.sampler shapley" "--model.init_args.loss mse --model.init_args.sampler shapley")
pids=()
for i in 0 1 2; do
  read -r -a f <<< "${flags[$i]}"
  timed "${names[$i]}" python train.py --config salvage_finegrid.yaml \
    --model.init_args.surrogate_ckpt "$surrogate" --trainer.max_epochs "${EPOCHS:-10}" \
    --trainer.max_time "${MAX_TIME:-00:00:04:30}" --wandb false --run_root "$root" --name "finegrid_long/${names[$i]}" \
    "${f[@]}" "${extra[@]}" > "$out/${names[$i]}.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "explainers trained; $(left) s left"

long=$root/finegrid_long
quality=(--n-images "${N_IMAGES:-500}" --n-masks "${N_MASKS:-32}" --batch-size 50 --metric-batch 8192
         --matmul-precision high)
timeout "$(left)" python -m benchmarks.salvage_quality --surrogate "$surrogate" \
  --explainer "Salvage (js, guided)=$long/salvage/checkpoints/best.ckpt" \
  --explainer "ViT-Shapley (mse, shapley)=$long/vit_shapley/checkpoints/best.ckpt" \
  --explainer "Salvage (js, shapley sampler)=$long/salvage_shapley_sampler/checkpoints/best.ckpt" \
  "${quality[@]}" --out "$out/salvage_quality_finegrid.md" > "$out/quality.log" 2>&1
echo "quality table done; $(left) s left"

if [ -n "${EXPLAINERS_200:-}" ] && [ "$(left)" -gt 10 ]; then
  args=()
  IFS=';' read -r -a items <<< "$EXPLAINERS_200"
  for item in "${items[@]}"; do args+=(--explainer "$item"); done
  timeout "$(left)" python -m benchmarks.salvage_quality --surrogate "$surrogate" "${args[@]}" "${quality[@]}" \
    --out "$out/salvage_quality_finegrid_200.md" > "$out/quality_200.log" 2>&1
fi
if [ -n "${METHODS:-}" ] && [ "$(left)" -gt 10 ]; then
  timeout "$(left)" python benchmarks/methods_comparison.py --data classifier_finegrid \
    --explainer "$long/salvage/checkpoints/best.ckpt" --vit-shapley "$long/vit_shapley/checkpoints/best.ckpt" \
    --limit 200 --data-arg occluders=3 --srg-masks 16 --batch-size 50 \
    --variant kernel_shap.n_samples=2048 --variant lime.n_samples=2048 \
    --out "$root/methods_finegrid" --table "$out/methods_finegrid.md" > "$out/methods.log" 2>&1
fi
[ -n "${pipeline_pid:-}" ] && wait "$pipeline_pid"
echo "all done; $(left) s left"
