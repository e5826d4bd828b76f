#!/bin/bash
# Training on a Cloud TPU pod slice: the same command on every TPU VM worker.
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config=configs/voc.py \
#       --workdir=/gcs/BUCKET/runs/voc --config.input.data_dir=/gcs/BUCKET/tfds
#
# Runs `gcloud compute tpus tpu-vm ssh TPU_NAME --zone=ZONE --worker=all
# --command=...` so that every host enters `python -m potts_jax.main ARGS`
# at once; main() calls jax.distributed.initialize(), which finds the pod's
# coordinator and worker id by itself on Cloud TPU.
#
# Environment:
#   POTTS_REPO   the repository's path on the workers (default: ~/potts_jax);
#                copy it there first, e.g. with
#                gcloud compute tpus tpu-vm scp --recurse --worker=all . TPU:~/potts_jax
#   PYTHON       the interpreter on the workers (default: python3)
#   PROJECT      passed as --project when set
#   DRY_RUN=1    print the gcloud command instead of running it
#
# The workdir and input.data_dir must be POSIX paths visible to every worker (a
# gcsfuse mount of a bucket, or a shared disk; gs:// URLs are not
# supported); the global batch must be a multiple of the chips' devices.
# Output goes to POTTS_LOG (default ~/potts_jax.log) on each worker; worker 0's
# is also streamed back.

set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: launch/tpu_pod.sh TPU_NAME ZONE --config=configs/NAME.py[:variant] --workdir=DIR [--config.SECTION.KEY=VALUE ...]" >&2
  exit 2
fi
TPU_NAME="$1"
ZONE="$2"
shift 2

REPO="${POTTS_REPO:-~/potts_jax}"
PYTHON="${PYTHON:-python3}"
LOG="${POTTS_LOG:-~/potts_jax.log}"
ARGS="$(printf '%q ' "$@")"
REMOTE="set -o pipefail; cd $REPO && $PYTHON -m potts_jax.main $ARGS 2>&1 | tee $LOG"

CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all
     --command="$REMOTE")
if [[ -n "${PROJECT:-}" ]]; then
  CMD+=(--project="$PROJECT")
fi

if [[ "${DRY_RUN:-0}" == "1" ]]; then
  printf '%q ' "${CMD[@]}"
  echo
else
  exec "${CMD[@]}"
fi
