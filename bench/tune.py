"""Grid search of training settings on the VALIDATION split.

Every combination of the `--grid` values trains once per seed (with the
best-epoch selection and early stopping of `train.train_and_evaluate`), and
the kept model is scored on the validation split with full-corpus exact
search (`workflow.evaluate_run(split="validation")`): overall, head, tail and
cold recall. The test split is never read. The table is sorted by mean
validation Recall@10; `~` marks a combination whose seeds overlap those of
the best one (within seed noise).

Usage:
  .venv/bin/python bench/tune.py --data=synthetic --seeds=0 \
      --grid=ssl.alpha=0.1,0.3,1 --grid=ssl.temperature=0.1,0.2 \
      [--set=data.train_fraction=0.1] [--epochs=10] [--patience=2] \
      [--out=bench/results/tune_synthetic.md]
  --data takes synthetic, ml1m or ml100k (temporal split), as in
  bench/ablation.py.

Runs live in `--workdir_root/<data>/<name>`; a finished run is reused, so
widening a grid only trains what is new.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

# bench/ is this script's directory, so its sibling imports as a module.
from ablation_report import mean_sd

import tfr_ssl  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow)
from tfr_ssl import atomic, workflow
from tfr_ssl.config import Config
from tfr_ssl.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get(
  "TFR_SSL_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data")
)
DATASETS = {
  "synthetic": {},
  "ml1m": {
    "data.source": "movielens",
    "data.data_dir": os.path.join(SHARED, "ml-1m"),
  },
  "ml100k": {
    "data.source": "movielens",
    "data.data_dir": os.path.join(SHARED, "ml-100k"),
    "data.split": "temporal",
  },
}
COLUMNS = (
  "recall@10",
  "recall@100",
  "head/recall@10",
  "tail/recall@10",
  "tail/recall@100",
  "cold/recall@100",
  "sparse/recall@10",
  "heldout/recall@10",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", choices=sorted(DATASETS), required=True)
  parser.add_argument("--seeds", default="0")
  parser.add_argument(
    "--grid", action="append", default=[], metavar="KEY=V1,V2"
  )
  parser.add_argument("--set", action="append", default=[], metavar="K=V")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--patience", type=int, default=2)
  parser.add_argument("--cache_dir", default="/tmp/ablation_cache")
  parser.add_argument("--workdir_root", default="/tmp/tune")
  parser.add_argument("--out", default="")
  return parser.parse_args(argv)


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
  out = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--{flag} expects KEY=VALUE, got {item!r}.")
    out.append((key, value))
  return out


def metric_of(metrics: dict[str, Any], name: str) -> float | None:
  if "/" in name:
    part, metric = name.split("/")
    if part == "heldout":
      return metrics.get("heldout_users", {}).get(metric)
    if part in metrics.get("user_slices", {}):
      return metrics["user_slices"][part][metric]
    if part not in metrics.get("slices", {}):
      return None
    return metrics["slices"][part][metric]
  return metrics[name]


def run_one(overrides: dict[str, Any], workdir: str) -> dict[str, Any]:
  config = Config().override(overrides)
  summary = train.train_and_evaluate(config, workdir)
  path = os.path.join(workdir, workflow.EVAL_DIR, "metrics.json")
  metrics = None
  if summary["steps_this_run"] == 0 and os.path.exists(path):
    with open(path) as f:
      metrics = json.load(f)
  if metrics is None or metrics.get("split") != "validation":
    metrics = workflow.evaluate_run(workdir, split="validation")
  best = train.best_checkpoint(workdir)
  return {
    "metrics": metrics,
    "best_epoch": best[1]["epoch"] if best else None,
    "epochs_run": len(summary["validation"]),
    "seconds": summary["seconds_this_run"],
  }


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  grid = _pairs(args.grid, "grid")
  base = {
    **DATASETS[args.data],
    "data.cache_dir": args.cache_dir,
    "train.epochs": args.epochs,
    "train.early_stopping_patience": args.patience,
    "train.log_every": 100,
    "train.checkpoint_every": 1000,
    **dict(_pairs(args.set, "set")),
  }
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  keys = [k for k, _ in grid]
  combos = list(itertools.product(*[v.split(",") for _, v in grid]))
  started = time.perf_counter()
  rows = []
  for combo in combos:
    setting = dict(zip(keys, combo, strict=True))
    name = ",".join(f"{k.split('.')[-1]}={v}" for k, v in setting.items())
    runs = []
    for seed in seeds:
      workdir = os.path.join(
        args.workdir_root, args.data, f"{name or 'default'}-s{seed}"
      )
      overrides = {**base, **setting, "train.seed": seed}
      result = run_one(overrides, workdir)
      runs.append(result)
      m = result["metrics"]
      print(
        f"[{name} s{seed}] val recall@10 {m['recall@10']:.4f} "
        f"tail@100 {metric_of(m, 'tail/recall@100'):.4f} "
        f"cold@100 {metric_of(m, 'cold/recall@100') or 0:.4f} best epoch "
        f"{result['best_epoch']} of {result['epochs_run']} "
        f"({result['seconds']:.0f} s)",
        flush=True,
      )
    rows.append((name, runs))
  text = report(args, argv, rows, time.perf_counter() - started)
  print(text)
  if args.out:
    atomic.write_text(args.out, text)


def _values(runs, name) -> np.ndarray:
  out = [metric_of(r["metrics"], name) for r in runs]
  return np.array([v for v in out if v is not None], np.float64)


def report(args, argv, rows, seconds) -> str:
  rows = sorted(rows, key=lambda row: -_values(row[1], "recall@10").mean())
  best = _values(rows[0][1], "recall@10")
  lines = [
    f"## Tuning on {args.data} (validation split)",
    "",
    "Command: `.venv/bin/python bench/tune.py " + " ".join(argv) + "`",
    "",
    f"Machine: {platform.machine()}, {os.cpu_count()} shared cores; wall "
    f"time {seconds / 60:.1f} min. Each run keeps its best validation "
    f"epoch (early stopping patience {args.patience}, at most "
    f"{args.epochs} epochs); scores are full-corpus exact search on the "
    "whole validation split, excluding the query's training items. "
    "`heldout`: the users held out of training, each with the first 60% "
    "of its interactions folded in as history and the next 20% scored.",
    "",
    "| setting | seeds | best epoch | " + " | ".join(COLUMNS) + " |",
    "|" + "---|" * (len(COLUMNS) + 3),
  ]
  # The most-popular ranking of the same validation pairs (the same for
  # every run of a dataset and fraction).
  first = rows[0][1][0]["metrics"]
  baseline = first.get("baseline", {}).get("most_popular")
  if baseline and "heldout_users" in first:
    # The held-out users' most-popular ranking of their own pairs.
    baseline = {
      **baseline,
      "heldout_users": first["heldout_users"]["most_popular"],
    }
  if baseline:
    cells = [
      f"{metric_of(baseline, c):.4f}"
      if metric_of(baseline, c) is not None
      else "-"
      for c in COLUMNS
    ]
    lines.append("| most popular | | | " + " | ".join(cells) + " |")
  for name, runs in rows:
    cells = [mean_sd(_values(runs, c)) for c in COLUMNS]
    x = _values(runs, "recall@10")
    overlap = x.size and not (x.max() < best.min() or best.max() < x.min())
    mark = " ~" if overlap and x is not best and len(best) > 1 else ""
    epochs = np.mean([r["best_epoch"] or 0 for r in runs])
    lines.append(
      f"| {name or 'default'}{mark} | {len(runs)} | {epochs:.1f} | "
      + " | ".join(cells)
      + " |"
    )
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main(sys.argv[1:])
