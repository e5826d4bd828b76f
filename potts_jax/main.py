r"""Command-line entry point: ``python -m potts_jax.main``.

::

  python -m potts_jax.main --config=configs/demo.py --workdir=/tmp/demo
  python -m potts_jax.main --config=configs/voc.py:method=soft_sl,relaxation=cd \
      --workdir=runs/voc_cd --config.input.batch_size=16

``--config`` is a config file (``get_config(arg)``, the text after ``:`` is
``arg``), ``--config.KEY=VALUE`` overrides any key by its dotted path
(``--config.input.data_dir=DIR``, ``--config.energy.lam=12``; the sections
are listed in ``configs/common.py``). Every host of a multi-host
job runs the same command; ``jax.distributed.initialize()`` is called here
(and nowhere else) when the environment names a cluster
(:func:`potts_jax.multihost.initialize_distributed`). The run writes
``WORKDIR/config.json``, checkpoints, TensorBoard events, the absl log
(``WORKDIR/log.txt``, also on stderr) and ``WORKDIR/metrics.json``; started again on the same
workdir it resumes from its newest checkpoint.
"""

from __future__ import annotations

import json
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from potts_jax import xla_flags
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/NAME.py[:variant,...]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None,
                               "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record: std_logging.LogRecord) -> bool:
  """Drops Orbax's INFO chatter (a dozen lines per save) from the console."""
  return (record.levelno >= std_logging.WARNING
          or f"{os.sep}orbax{os.sep}" not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  # Imports after absl parsed the flags: JAX must not start before
  # prefer_threaded_cpu_loops() (in __main__ below) set XLA_FLAGS.
  import jax  # pylint: disable=g-import-not-at-top
  from potts_jax import checkpointing  # pylint: disable=g-import-not-at-top
  from potts_jax import multihost  # pylint: disable=g-import-not-at-top
  from potts_jax import steps  # pylint: disable=g-import-not-at-top
  from potts_jax import train  # pylint: disable=g-import-not-at-top

  multihost.initialize_distributed()
  config = _CONFIG.value
  workdir = os.path.abspath(_WORKDIR.value)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    log_file = std_logging.FileHandler(os.path.join(workdir, "log.txt"))
    log_file.setFormatter(logging.PythonFormatter())
    logging.get_absl_logger().addHandler(log_file)
  logging.get_absl_handler().addFilter(_quiet_orbax)
  logging.info("potts_jax.main: %s, %d devices (%d processes)", workdir,
               jax.device_count(), jax.process_count())
  try:
    record = train.train_and_evaluate(config, workdir)
  except (FileNotFoundError, ValueError, OSError, steps.NonFiniteError,
          checkpointing.CheckpointWriteError) as e:
    # A dataset that is not prepared, a bad config value, a failed save, a
    # diverged run: one line naming it, and a non-zero exit.
    logging.error("%s", e)
    multihost.stop_after_failure(f"error: {e}")
    sys.exit(f"error: {e}")
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    logging.exception("process %d failed", jax.process_index())
    multihost.stop_after_failure(f"error: {type(e).__name__}: {e}")
  if record:  # Every process prints the same (global) numbers.
    summary = {k: record[k] for k in ("step", "miou", "pixel_accuracy",
                                      "preempted") if k in record}
    for name, stage in record.get("stages", {}).items():
      summary[f"{name}_miou"] = stage["miou"]
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  xla_flags.prefer_threaded_cpu_loops()
  app.run(main)
