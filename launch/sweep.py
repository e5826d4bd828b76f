"""The paper's VOC grids as training commands: Table 3 and Table 4.

* Table 3 (``--tables 3``): soft self-labeling with H_CCE on the
  4-neighbourhood, each Potts relaxation (``bl q nq cce cd lq``) at each
  scribble length ratio (``--lengths``, default ``1.0 0.8 0.5 0.3 0``).
* Table 4 (``--tables 4``): ``gd``, ``hard_sl`` and ``soft_sl`` with H_CCE +
  ``--table4_relaxation`` (default ``q``, the P_Q of the paper's sections
  3.2-3.4) on ``nn4``; with ``--dense`` also on the dense neighbourhood (needs
  the dense Potts term).

Stage 1 (pCE, lr 0.007) does not depend on the loss, so it runs once per
scribble length, in ``ROOT/stage1/len<L>``; every stage-2 run (lr 0.0007)
starts from it with ``--config.init_from``. Workdirs:
``ROOT/table3/<relaxation>_len<L>`` and ``ROOT/table4/<method>_<neighborhood>``.

Usage::

  python launch/sweep.py --root runs/voc                 # print the commands
  python launch/sweep.py --root runs/voc --run           # run them in turn
  python launch/sweep.py --tables 4 --dense --variant=batch=16 \\
      -- --config.input.data_dir=/data/tfds

By default (``--dry_run``) it prints one command per line, in an order that
runs every stage 1 before the runs that start from it (pipe them into a job
array or ``launch/slurm.sh``). ``--run`` runs them one after the other and skips
each run whose workdir already holds ``metrics.json``, so a stopped sweep is
resumed by running the same command again (a stopped run resumes from its own
checkpoint). Arguments after ``--`` are appended to every command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys

RELAXATIONS = ("bl", "q", "nq", "cce", "cd", "lq")
LENGTHS = ("1.0", "0.8", "0.5", "0.3", "0")
TABLE4_METHODS = ("gd", "hard_sl", "soft_sl")


def _length_tag(length: str) -> str:
  return f"len{float(length):g}"


def _command(python: str, config: str, variant: str, workdir: str,
             extra: list[str]) -> list[str]:
  return ([python, "-m", "potts_jax.main", f"--config={config}:{variant}",
           f"--workdir={workdir}"] + extra)


def _with(variant: str, more: str) -> str:
  return f"{variant},{more}" if more else variant


def runs(args: argparse.Namespace) -> list[tuple[str, list[str]]]:
  """``[(workdir, command)]`` of the sweep, each stage 1 before its users."""
  out = []
  stage1 = {}

  def first_stage(length):
    tag = _length_tag(length)
    if tag not in stage1:
      workdir = os.path.join(args.root, "stage1", tag)
      stage1[tag] = workdir
      out.append((workdir, _command(
          args.python, args.config,
          _with(f"stage=1,length={length}", args.variant), workdir,
          args.extra)))
    return stage1[tag]

  def second_stage(workdir, variant, length):
    init = first_stage(length)
    out.append((workdir, _command(
        args.python, args.config,
        _with(f"stage=2,{variant},length={length}", args.variant), workdir, [f"--config.init_from={init}"] + args.extra)))

  if "3" in args.tables:
    for length in args.lengths:
      for relaxation in args.relaxations:
        second_stage(
            os.path.join(args.root, "table3",
                         f"{relaxation}_{_length_tag(length)}"),
            f"method=soft_sl,cross_entropy=cce,relaxation={relaxation},"
            "neighborhood=nn4", length)
  if "4" in args.tables:
    neighborhoods = ("nn4", "dense") if args.dense else ("nn4",)
    for neighborhood in neighborhoods:
      for method in TABLE4_METHODS:
        second_stage(
            os.path.join(args.root, "table4", f"{method}_{neighborhood}"),
            f"method={method},cross_entropy=cce,"
            f"relaxation={args.table4_relaxation},"
            f"neighborhood={neighborhood}", "1.0")
  return out


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  extra = []
  if "--" in argv:
    extra = argv[argv.index("--") + 1:]
    argv = argv[:argv.index("--")]
  parser = argparse.ArgumentParser(
      description=__doc__.split("\n")[0],
      epilog="Arguments after -- are appended to every command.")
  parser.add_argument("--root", default="runs/voc",
                      help="the sweep's directory (one workdir per run)")
  parser.add_argument("--config", default="configs/voc.py",
                      help="configs/voc.py or configs/voc_r101.py")
  parser.add_argument("--tables", default="3,4",
                      help="comma-separated: 3, 4")
  parser.add_argument("--lengths", default=",".join(LENGTHS),
                      help="Table 3's scribble length ratios")
  parser.add_argument("--relaxations", default=",".join(RELAXATIONS),
                      help="Table 3's Potts relaxations")
  parser.add_argument("--table4_relaxation", default="q",
                      help="the Potts relaxation of every Table 4 run")
  parser.add_argument("--dense", action="store_true",
                      help="add Table 4's dense-neighbourhood column")
  parser.add_argument("--variant", default="",
                      help="more config variants for every run, e.g. batch=16")
  parser.add_argument("--python", default="python",
                      help="the interpreter in the printed commands")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--dry_run", action="store_true", default=True,
                    help="print the commands (default)")
  mode.add_argument("--run", action="store_true",
                    help="run them in turn, skipping finished workdirs")
  args = parser.parse_args(argv)
  args.extra = extra
  args.tables = [t for t in args.tables.split(",") if t]
  unknown = sorted(set(args.tables) - {"3", "4"})
  if unknown:
    parser.error(f"unknown tables {unknown}; expected 3 and/or 4")
  lengths = {}  # One run per ratio however it is written (1, 1.0).
  for x in filter(None, args.lengths.split(",")):
    try:
      lengths.setdefault(float(x), x)
    except ValueError:
      parser.error(f"--lengths: {x!r} is not a number")
  args.lengths = list(lengths.values())
  args.relaxations = [x for x in args.relaxations.split(",") if x]
  bad = sorted(set(args.relaxations + [args.table4_relaxation])
               - set(RELAXATIONS))
  if bad:
    parser.error(f"unknown relaxations {bad}; expected some of {RELAXATIONS}")

  todo = runs(args)
  if not args.run:
    for _, command in todo:
      print(shlex.join(command))
    return 0
  for i, (workdir, command) in enumerate(todo):
    if os.path.exists(os.path.join(workdir, "metrics.json")):
      print(f"[{i + 1}/{len(todo)}] done, skipped: {workdir}", flush=True)
      continue
    if command[0] == "python":
      command = [sys.executable] + command[1:]
    print(f"[{i + 1}/{len(todo)}] {shlex.join(command)}", flush=True)
    code = subprocess.call(command)
    if code:
      print(f"failed with exit code {code}: {workdir}; run the sweep again "
            "to resume", file=sys.stderr)
      return code
  return 0


if __name__ == "__main__":
  sys.exit(main())
