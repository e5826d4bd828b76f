#!/bin/bash
# Multi-GPU / multi-node training under Slurm: the same command on every task.
#
#   sbatch --nodes=2 --gpus-per-node=4 launch/slurm.sh \
#       --config=configs/voc.py --workdir=runs/voc
#
# Every Slurm task runs `python -m potts_jax.main "$@"`; main() calls
# jax.distributed.initialize(), which reads the job from Slurm's variables
# (coordinator = first node, SLURM_NTASKS processes, SLURM_PROCID).
#
# Modes (POTTS_TASKS_PER=gpu by default):
#   gpu   one process per GPU (--ntasks-per-node = GPUs per node); JAX gives
#         each process the GPU of its SLURM_LOCALID.
#   node  one process per node driving all its GPUs; JAX_LOCAL_DEVICE_IDS is
#         set to every GPU of the node (otherwise JAX would take only GPU 0).
#
# The global batch (--config.input.batch_size, 12 in the paper) must be a
# multiple of the total number of GPUs: 12 suits 1, 2, 3, 4, 6 or 12 GPUs; on
# 8 or 16 use the variant batch=16 (total_steps follows) or batch=8.
# The workdir must be on a file system every node sees (checkpoints, metrics).
# A preempted job (SIGTERM) saves a checkpoint; resubmitting the same command
# resumes it (--requeue works too).
#
#SBATCH --job-name=potts_jax
#SBATCH --nodes=1
#SBATCH --gpus-per-node=4
#SBATCH --ntasks-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=48:00:00
#SBATCH --signal=TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out

set -euo pipefail

if [[ $# -eq 0 ]]; then
  echo "usage: sbatch [sbatch options] launch/slurm.sh --config=configs/NAME.py[:variant] --workdir=DIR [--config.SECTION.KEY=VALUE ...]" >&2
  exit 2
fi

# Run from the repository (sbatch copies this script elsewhere).
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON="${PYTHON:-python}"
MODE="${POTTS_TASKS_PER:-gpu}"

# GPUs per node: from Slurm (--gpus-per-node, "4" or "a100:4"), else counted.
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-}}"
GPUS_PER_NODE="${GPUS_PER_NODE##*:}"
if [[ -z "$GPUS_PER_NODE" ]] && command -v nvidia-smi >/dev/null; then
  GPUS_PER_NODE="$(nvidia-smi -L | wc -l)"
fi

SRUN_ARGS=()
case "$MODE" in
  gpu)
    if [[ -n "$GPUS_PER_NODE" ]]; then
      SRUN_ARGS+=(--ntasks-per-node="$GPUS_PER_NODE")
    fi  # else sbatch's --ntasks-per-node
    ;;
  node)
    export JAX_LOCAL_DEVICE_IDS
    JAX_LOCAL_DEVICE_IDS="$(seq -s, 0 $((${GPUS_PER_NODE:-1} - 1)))"
    SRUN_ARGS+=(--ntasks-per-node=1)
    ;;
  *)
    echo "POTTS_TASKS_PER must be gpu or node, got $MODE" >&2
    exit 2
    ;;
esac

echo "potts_jax: $SLURM_JOB_NUM_NODES node(s), mode $MODE, $PYTHON -m potts_jax.main $*"
# --kill-on-bad-exit: one failed process ends the step instead of hanging
# the others in a collective.
exec srun --kill-on-bad-exit=1 "${SRUN_ARGS[@]}" \
  "$PYTHON" -m potts_jax.main "$@"
