r"""``results/camvid_small/RESULTS.md`` and its plots from the sweep's JSON files.

Reads every ``results/camvid_small/<run>_seed<s>.json`` written by
``launch/camvid_small.py`` and ``selection.json``, and writes:

* ``RESULTS.md``: mean ± std (sample std over the seeds present) of test
  mIoU per run, next to the paper's Table 3 / Table 4 numbers, and the
  orderings read from those numbers. Nothing in it depends on the time or
  the machine the script runs on: running it again on the same JSON files
  gives the same bytes (tests/test_camvid_small.py checks it).
* ``miou.png``: the same as a bar plot with the seeds as dots.
* ``pseudo_labels.png`` and ``prediction_change.json`` come from
  ``launch/camvid_small_figures.py`` (they need the sweep's checkpoints);
  the latter is quoted in ``RESULTS.md`` when present.

Usage::

  python launch/camvid_small_report.py [--results results/camvid_small]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "results" / "camvid_small"
sys.path.insert(0, str(REPO / "launch"))
import camvid_small  # pylint: disable=g-import-not-at-top,wrong-import-position
sys.path.insert(0, str(REPO))
from configs.camvid_small import STAGE1_STEPS, STAGE2_STEPS  # pylint: disable=g-import-not-at-top,wrong-import-position

#: run -> (what, the paper's val mIoU on VOC with MobileNetV2, or None).
PAPER = {
    "stage1": ("stage 1: pCE on scribbles", None),
    "pce_continued": ("pCE continued for the stage-2 steps", None),
    "soft_cce_cd": ("soft SL, H_CCE + P_CD", 71.2),
    "gd_cd": ("GD on the regularised loss, P_CD", None),
    "hard_sl_cd": ("hard SL (argmax of the P_CD solution)", None),
    "soft_cce_bl": ("soft SL, H_CCE + P_BL", 67.2),
    "soft_cce_q": ("soft SL, H_CCE + P_Q", 71.1),
    "soft_cce_nq": ("soft SL, H_CCE + P_NQ", 71.1),
    "soft_cce_cce": ("soft SL, H_CCE + P_CCE", 67.4),
    "soft_cce_lq": ("soft SL, H_CCE + P_LQ", 71.2),
    "gd_bl": ("GD on the regularised loss, P_BL", None),
    "soft_ce_cd": ("soft SL, H_CE + P_CD", None),
    "soft_rce_cd": ("soft SL, H_RCE + P_CD", None),
    "soft_cce_q_dense": ("soft SL, H_CCE + dense P_Q", 67.9),
    "soft_cce_cd_adam": ("soft SL, H_CCE + P_CD, 80 Adam solver steps", None),
    "soft_cce_cd_adam180": ("soft SL, H_CCE + P_CD, 180 Adam solver steps "
                            "(the step time of 200 GD steps)", None),
    "full": ("full supervision (upper bound)", None),
}
PAPER_TABLE4 = "Table 4 (NN): GD 67.0, hard SL 69.6, soft SL 71.1"


def load(results: pathlib.Path = RESULTS) -> dict[str, dict[int, dict]]:
  """``{run: {seed: record}}`` of the result files in ``results``."""
  runs: dict[str, dict[int, dict]] = {}
  for path in sorted(results.glob("*_seed*.json")):
    with open(path) as f:
      record = json.load(f)
    runs.setdefault(record["run"], {})[int(record["seed"])] = record
  return runs


def stats(records: dict[int, dict]) -> tuple[float, float, list[float]]:
  """Mean, sample std (0 for one seed) and per-seed test mIoU, in %."""
  values = [100 * records[s]["test_miou"] for s in sorted(records)]
  std = statistics.stdev(values) if len(values) > 1 else 0.0
  return statistics.fmean(values), std, values


FAST = "_lr10x"  # the sweep's suffix of stage-2 runs at lr 0.007
LONG = "_long"  # ... and of the runs with camvid_small.LONG_STEPS stage-2 steps


def orderings(runs) -> list[str]:
  """The issue's orderings, as measured (sentences built from the table),
  for stage 2 at the paper's rate and at 10x (``FAST``)."""
  have = {n: stats(r) for n, r in runs.items() if len(r) == len(
      camvid_small.SEEDS)}
  lines = []

  def beats(a, b):
    (ma, sa, _), (mb, sb, _) = have[a], have[b]
    margin = max(sa, sb)
    verdict = ("beats" if ma - mb > margin else
               "does not beat" if ma <= mb else "is above, within noise of")
    paired = [x - y for x, y in zip(have[a][2], have[b][2])]
    pairing = ("same seed" if any(n.startswith("full") for n in (a, b))
               else "same stage 1")
    return (f"- `{a}` ({ma:.2f}) {verdict} `{b}` ({mb:.2f}): difference "
            f"{ma - mb:+.2f}, larger seed std {margin:.2f}; per seed "
            f"({pairing}) {' / '.join(f'{d:+.2f}' for d in paired)}, "
            f"{sum(d > 0 for d in paired)} of {len(paired)} positive.")

  for x in ("", FAST, LONG):
    pairs = [("soft_cce_cd", "pce_continued"), ("soft_cce_cd", "gd_cd"),
             ("soft_cce_cd", "hard_sl_cd"), ("hard_sl_cd", "gd_cd"),
             ("hard_sl_cd", "pce_continued"), ("soft_cce_cd", "soft_cce_bl"),
             ("soft_cce_cd", "soft_cce_cce"),
             ("soft_cce_cd_adam", "soft_cce_cd"),
             ("soft_cce_cd_adam180", "soft_cce_cd"),
             ("soft_cce_q", "soft_cce_q_dense")]
    for a, b in [(a + x, b + x) for a, b in pairs] + [
        ("soft_cce_cd" + x, "stage1")]:
      if a in have and b in have:
        lines.append(beats(a, b))
    relax = [n + x for n in ("soft_cce_bl", "soft_cce_q", "soft_cce_nq",
                             "soft_cce_cce", "soft_cce_cd", "soft_cce_lq")
             if n + x in have]
    if len(relax) > 1:
      ranked = sorted(relax, key=lambda n: -have[n][0])
      lines.append(f"- Relaxations{x and ' (' + x[1:] + ')'}, best first "
                   "(H_CCE, 4-NN): " + ", ".join(
                       f"{n.split('_')[2].upper()} {have[n][0]:.2f}"
                       for n in ranked)
                   + " (paper: CD = LQ 71.2 > Q = NQ 71.1 > CCE 67.4 > BL "
                   "67.2).")
    ces = [n + x for n in ("soft_cce_cd", "soft_rce_cd", "soft_ce_cd")
           if n + x in have]
    if len(ces) > 1:
      lines.append(f"- Cross-entropies{x and ' (' + x[1:] + ')'} with P_CD, "
                   "best first: " + ", ".join(
                       f"{n.split('_')[1].upper()} {have[n][0]:.2f}"
                       for n in sorted(ces, key=lambda n: -have[n][0]))
                   + " (paper, Fig. 4 with P_Q: CCE > RCE > CE).")
  # The headroom: what labelling every pixel buys at this size and schedule,
  # and what the longer schedule buys.
  for a, b in (("full", "pce_continued" + FAST), ("full", "stage1"),
               ("full" + LONG, "pce_continued" + LONG),
               ("full" + LONG, "full"),
               ("pce_continued" + LONG, "pce_continued" + FAST),
               ("soft_cce_cd" + LONG, "soft_cce_cd" + FAST)):
    if a in have and b in have:
      lines.append(beats(a, b))
  for name in ("full", "full" + LONG):
    if name not in have:
      continue
    full = runs[name]
    iou = {c: statistics.fmean(100 * r["iou"][c] for r in full.values())
           for c in next(iter(full.values()))["iou"]}
    low = [f"{c} {v:.1f}" for c, v in sorted(iou.items(), key=lambda i: i[1])
           if v < 5]
    if low:
      lines.append("- Classes below 5% test IoU even under full supervision "
                   f"(`{name}`, mean over seeds): " + ", ".join(low) + ".")
  if not lines:
    lines.append("- No run has all its seeds yet.")
  return lines


def markdown(runs, results: pathlib.Path = RESULTS) -> str:
  """The text of ``RESULTS.md`` (module docstring)."""
  selection = json.loads((results / "selection.json").read_text()) if (
      results / "selection.json").is_file() else None
  out = ["# CamVid small-scale reproduction (Tables 3 and 4)", "",
         "Written by `python launch/camvid_small_report.py` from the JSON "
         "files beside it; do not edit by hand. Runs: "
         "`python launch/camvid_small.py run` (configs/camvid_small.py: "
         "CamVid frames at 120x90, 3% synthetic skeleton scribbles, "
         "DeepLabV3+ on ImageNet MobileNetV2 with a 64-channel decoder, "
         "stage 1 pCE then stage 2 from it, at the paper's stage-2 rate 0.0007 "
         "or, `_lr10x`, at the stage-1 rate 0.007; `_long`: stage 2 for "
         f"{camvid_small.LONG_STEPS} steps instead of {STAGE2_STEPS}, at "
         "0.007). Test mIoU (233 frames, 11 classes, full image) in %, "
         "mean ± sample std over the seeds done; "
         "the paper's numbers are VOC val mIoU with MobileNetV2 (Table 3 "
         "full-length scribbles, Table 4), for the ordering, not the level.",
         ""]
  if selection is not None:
    chosen = selection["chosen"]
    out += [f"Chosen once on val (seed-0 stage 1; {selection['rule']}): "
            f"eta {chosen['eta']:g}, lambda {chosen['lam']:g}, sigma_rgb "
            f"{chosen['sigma_rgb']:g}; labeled fraction of the train pixels "
            f"{100 * selection['train_labeled_fraction']:.2f}%.", ""]
  out += ["| run | what | paper | seeds | test mIoU | per seed | wall / run |",
          "|---|---|---|---|---|---|---|"]
  for name in camvid_small.RUNS:
    what, paper = PAPER[name.removesuffix(FAST).removesuffix(LONG)]
    if name.endswith(FAST):
      what += ", stage 2 at lr 0.007"
    elif name.endswith(LONG):
      what += (f", {STAGE1_STEPS + camvid_small.LONG_STEPS} steps"
               if name.startswith("full") else
               f", stage 2 for {camvid_small.LONG_STEPS} steps at lr 0.007")
    records = runs.get(name, {})
    if records:
      mean, std, values = stats(records)
      wall = statistics.fmean(r["wall_seconds"] for r in records.values())
      cells = (f"{mean:.2f} ± {std:.2f}", " / ".join(f"{v:.2f}"
                                                      for v in values),
               f"{wall / 60:.1f} min")
    else:
      cells = ("not run yet", "", "")
    out.append(f"| `{name}` | {what} | "
               f"{'' if paper is None else f'{paper:.1f}'} | "
               f"{','.join(map(str, sorted(records)))} | " + " | ".join(cells)
               + " |")
  change = results / "prediction_change.json"
  if change.is_file():
    moved = json.loads(change.read_text())
    out += ["", "How far stage 2 moves the network (seed 0): the share of "
            "test pixels whose predicted class differs from stage 1's: "
            + ", ".join(f"`{k}` {100 * v:.1f}%" for k, v in sorted(
                moved["changed_fraction"].items())) + "."]
  out += ["", f"Paper {PAPER_TABLE4}; DN: GD 69.5, hard SL 63.1, soft SL "
          "67.9.", "", "## Orderings, as measured", ""] + orderings(runs)
  out += ["", "![test mIoU per run](miou.png)", "",
          "![pseudo-labels under P_CD and P_BL](pseudo_labels.png)", ""]
  return "\n".join(out)


def bar_plot(runs, path: pathlib.Path) -> None:
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  names = [n for n in camvid_small.RUNS if n in runs]
  labels = [n.replace(FAST, " 10x").replace(LONG, " long") for n in names]
  fig = Figure(figsize=(8, 3.6))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  for i, name in enumerate(names):
    mean, std, values = stats(runs[name])
    ax.bar(i, mean, yerr=std, color="tab:blue" if name.startswith("soft")
           else "tab:gray", capsize=3)
    ax.plot([i] * len(values), values, "k.", markersize=4)
  ax.set_xticks(range(len(names)), labels, rotation=60, ha="right",
                fontsize=7)
  ax.set_ylabel("test mIoU (%)")
  if names:
    low = min(min(stats(runs[n])[2]) for n in names)
    ax.set_ylim(max(0.0, low - 5), None)
  fig.tight_layout()
  fig.savefig(path, dpi=110, metadata={"Software": None})


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--results", default=str(RESULTS))
  args = parser.parse_args(argv)
  results = pathlib.Path(args.results)
  runs = load(results)
  (results / "RESULTS.md").write_text(markdown(runs, results))
  bar_plot(runs, results / "miou.png")
  print(f"wrote {results / 'RESULTS.md'} ({sum(map(len, runs.values()))} "
        "runs)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
