#!/bin/bash
# Multi-node training with Lightning's SLURM support: srun starts one task per GPU, Lightning reads SLURM_* itself.
# Usage: sbatch --nodes 2 scripts/slurm_train.sh classifier_pet.yaml --trainer.num_nodes 2 [more overrides]
#SBATCH --job-name=explain-train
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --signal=SIGUSR1@90
set -euo pipefail
config=${1:?usage: sbatch scripts/slurm_train.sh CONFIG [overrides...]}
shift
# Lightning's SLURM plugin requeues the job on SIGUSR1 (time limit) after saving a checkpoint; --ckpt_path last resumes.
srun python train.py --config "$config" \
    --trainer.devices "${SLURM_NTASKS_PER_NODE}" --trainer.strategy ddp --ckpt_path last "$@"
