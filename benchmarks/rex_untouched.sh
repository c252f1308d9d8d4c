#!/usr/bin/env bash
# ReX against rex-xai 0.4.1 on data nobody tuned on, run ONCE after the settings are frozen in a commit: synthetic
# test scenes 512-767 (never used to choose a setting) and 12 photographs bundled with PyPI packages
# (examples/photos.py), with our ReX at its presets (paper, fast, fast on ONNX Runtime) against rex-xai at its
# defaults (N = 20, ONNX Runtime). Each line writes benchmarks/results/rex_untouched_<model>.md, its .json (per-image
# values) and .png.
#
#     bash benchmarks/rex_untouched.sh            # all six lines, in order
#     bash benchmarks/rex_untouched.sh cnn hue    # only these (names below)
#
# Needs rex-xai 0.4.1 in its own environment (python -m venv /tmp/rexxai-venv &&
# /tmp/rexxai-venv/bin/pip install rex-xai==0.4.1), scikit-image and scikit-learn for the photographs, and the models,
# trained with (OMP_NUM_THREADS=2, one at a time):
#   python train.py --config configs/classifier_synthetic.yaml --name quickstart_classifier --wandb false \
#     --model.init_args.backbone_kwargs '{stem_act: relu}' --model.init_args.hflip false --trainer.max_epochs 6 \
#     --trainer.log_every_n_steps 50 --data.init_args.batch_size 64 --data.init_args.n_train 30000 \
#     --data.init_args.n_val 500 --data.init_args.n_test 1000          # quickstart.yaml's classifier stage
#   python train.py --config configs/classifier_synthetic_cnn.yaml --name classifier_synthetic_cnn --wandb false
#   python train.py --config configs/classifier_synthetic_resnet18.yaml --name classifier_synthetic_resnet18 \
#     --wandb false
#   python train.py --config configs/classifier_finegrid.yaml --name classifier_finegrid_short --wandb false \
#     --trainer.callbacks '[]' --data.init_args.n_train 16000 --trainer.max_epochs 3   # shortened recipe
#   python examples/hue_cnn.py --out runs/photo_models/hue_cnn.pt
#
# Run time on 2 CPU cores (AMD EPYC, nothing else running), measured by the one run of 2026-12-08:
#   quickstart_vit   64 scenes, 64 px ViT                        157 s
#   cnn              64 scenes, 64 px small CNN                   74 s
#   resnet18         48 scenes, 64 px ResNet-18                  440 s
#   finegrid_vit     32 scenes, 112 px ViT (14 x 14 grid)        690 s
#   red              12 photographs, 128 px, red vs not red       50 s
#   hue              12 photographs, 128 px, trained warm / cool  62 s
#   in all                                                       about 25 min
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
REXXAI=${REXXAI_PYTHON:-/tmp/rexxai-venv/bin/python}
THREADS=${THREADS:-2}
ROWS='^ours, preset'  # ours, preset paper / ours, preset fast / ours, preset fast, onnx (+ rex-xai N = 20, ONNX)
OUT=benchmarks/results
PHOTOS=runs/photos
COMMON=(--threads "$THREADS" --engines eager,onnx --rows "$ROWS" --rexxai-python "$REXXAI")

run() {  # name, then the benchmark's own arguments
    local name=$1 start=$SECONDS
    shift
    echo "== $name: python benchmarks/rex_vs_rexxai.py $* ${COMMON[*]} --out $OUT/rex_untouched_$name.md"
    if "$PY" benchmarks/rex_vs_rexxai.py "$@" "${COMMON[@]}" --out "$OUT/rex_untouched_$name.md" \
            > "$OUT/rex_untouched_$name.log" 2>&1; then
        echo "   done in $((SECONDS - start)) s"
    else
        echo "   FAILED after $((SECONDS - start)) s: see $OUT/rex_untouched_$name.log"
    fi
}

SELECTED="$*"
want() { [ -z "$SELECTED" ] || [[ " $SELECTED " == *" $1 "* ]]; }

if want red || want hue; then
    "$PY" examples/photos.py "$PHOTOS" || exit 1
fi
want quickstart_vit && run quickstart_vit --ckpt runs/quickstart_classifier/checkpoints/best.ckpt \
    --n-images 64 --first-image 512
want cnn && run cnn --ckpt runs/classifier_synthetic_cnn/checkpoints/best.ckpt --n-images 64 --first-image 512
want resnet18 && run resnet18 --ckpt runs/classifier_synthetic_resnet18/checkpoints/best.ckpt \
    --n-images 48 --first-image 512
want finegrid_vit && run finegrid_vit --ckpt runs/classifier_finegrid_short/checkpoints/best.ckpt \
    --n-images 32 --first-image 512
want red && run red --photos "$PHOTOS" --model examples.colour_model:make_red --img-size 128
want hue && run hue --photos "$PHOTOS" --model runs/photo_models/hue_cnn.pt --img-size 128
exit 0
