"""Ablation of the two techniques: logQ correction and the SSL item task.

Trains, in one run, the variants below on one dataset and evaluates each on
the test split with full-corpus exact search (`workflow.evaluate_run`):

  (a) plain in-batch softmax           model.logq=none,      ssl.alpha=0
  (b) + streaming logQ correction      model.logq=streaming, ssl.alpha=0
  (c) + logQ + SSL with CFM            model.logq=streaming, ssl.alpha=A
  (d) + logQ + SSL with RFM            model.logq=streaming, ssl.alpha=A

and the data-sparsity study: (b) and (c) on a uniform `--sparse_fraction`
of the training split (Yao et al. 2021 report the largest SSL gains there).
Every variant runs once per seed (`train.seed`: initialisation, shuffling
and augmentation; the data split is fixed), and the tables give the mean and
the sample standard deviation over seeds, plus the relative change of the
means against (a) and (b). A change is marked `~` (within seed noise) when
the seeds of the two variants overlap, i.e. not every seed of one variant
beats every seed of the other.

Runs live in `--workdir_root/<data>/<variant>-f<fraction>-e<epochs>-s<seed>`;
a finished run is neither retrained nor re-evaluated (rerunning the command
after a crash resumes from the checkpoints and reuses WORKDIR/eval/), so
adding variants, seeds or sparse epochs to a finished command only runs
what is new. `--fresh` deletes the runs first.

Usage:
  .venv/bin/python bench/ablation.py --data=synthetic --seeds=0,1
      [--epochs=3] [--variants=a,b,c,d] [--one_seed_variants=d] [--alpha=1]
      [--sparse_fraction=0.1] [--sparse_epochs=15,3] [--sparse_seeds=0,1]
      [--set=train.learning_rate=0.003] [--cache_dir=/tmp/ablation_cache]
      [--workdir_root=/tmp/ablation] [--out=/tmp/ablation/synthetic.md]
      [--json=/tmp/ablation/synthetic.json]
  .venv/bin/python bench/ablation.py --data=ml1m --ml1m_dir=../shared/data/ml-1m

The commands behind bench/results/ablation.md are listed there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from typing import Any

import numpy as np

import tfr_ssl  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow)
from tfr_ssl import atomic, train, workflow
from tfr_ssl.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The settings every variant shares (the tuned defaults; see
# bench/results/ablation.md, "Tuning"). --set overrides them.
RECOMMENDED = {
  "train.optimizer": "adam",
  "train.learning_rate": 0.003,
  "model.temperature": 0.05,
}

VARIANTS = {
  "a": ("in-batch softmax", {"model.logq": "none", "ssl.alpha": 0.0}),
  "b": ("+ logQ", {"model.logq": "streaming", "ssl.alpha": 0.0}),
  "c": (
    "+ logQ + SSL (CFM)",
    {"model.logq": "streaming", "ssl.masking": "cfm"},
  ),
  "d": (
    "+ logQ + SSL (RFM)",
    {"model.logq": "streaming", "ssl.masking": "rfm"},
  ),
}
SSL_VARIANTS = ("c", "d")
SPARSE_VARIANTS = ("b", "c")
# (row label, baseline, variant) of the relative-change tables.
COMPARISONS = (
  ("b vs a", "a", "b"),
  ("c vs a", "a", "c"),
  ("c vs b", "b", "c"),
  ("d vs a", "a", "d"),
  ("d vs b", "b", "d"),
  ("d vs c", "c", "d"),
)
OVERALL = ("recall@10", "recall@50", "recall@100", "map@10")
SLICE_METRICS = ("recall@10", "recall@50", "recall@100")


def default_ml1m_dir() -> str:
  shared = os.environ.get(
    "TFR_SSL_SHARED_DATA",
    os.path.join(os.path.dirname(REPO), "shared", "data"),
  )
  return os.path.join(shared, "ml-1m")


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", choices=("synthetic", "ml1m"), required=True)
  parser.add_argument("--ml1m_dir", default=default_ml1m_dir())
  parser.add_argument("--seeds", default="0,1", help="Comma-separated.")
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--variants", default="a,b,c,d", help="Subset of abcd.")
  parser.add_argument("--alpha", type=float, default=1.0, help="SSL weight.")
  parser.add_argument(
    "--sparse_fraction",
    type=float,
    default=0.1,
    help="train_fraction of the sparsity study (0 skips it).",
  )
  parser.add_argument(
    "--sparse_epochs",
    default="0",
    help="Comma-separated epochs of the sparse runs, one study each (0 = "
    "--epochs / --sparse_fraction / 2, i.e. half the steps of a full-data "
    "run).",
  )
  parser.add_argument(
    "--sparse_seeds", default="", help="Seeds of the sparse runs (= --seeds)."
  )
  parser.add_argument(
    "--one_seed_variants",
    default="",
    help="Variants that run only on the first seed (e.g. d), to save time.",
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="Config override for every variant (repeatable).",
  )
  parser.add_argument("--cache_dir", default="/tmp/ablation_cache")
  parser.add_argument("--workdir_root", default="/tmp/ablation")
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--out", default="", help="Markdown report path.")
  parser.add_argument("--json", default="", help="Raw results path.")
  return parser.parse_args(argv)


def shared_overrides(args: argparse.Namespace) -> dict[str, Any]:
  overrides = {
    **RECOMMENDED,
    "data.cache_dir": args.cache_dir,
    "train.epochs": args.epochs,
    # Validation at epoch ends is not used here: keep it small.
    "train.validation_examples": 2000,
    "train.log_every": 100,
    "train.checkpoint_every": 500,
  }
  if args.data == "ml1m":
    overrides.update(
      {"data.source": "movielens", "data.data_dir": args.ml1m_dir}
    )
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--set expects KEY=VALUE, got {item!r}.")
    overrides[key] = value
  return overrides


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Every run of the benchmark: variant, fraction, seed, config overrides."""
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  sparse_seeds = [int(s) for s in args.sparse_seeds.split(",") if s.strip()]
  one_seed = set(args.one_seed_variants.split(","))
  variants = [v for v in args.variants.split(",") if v.strip()]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown:
    raise SystemExit(
      f"Unknown variants {unknown}: choose from {list(VARIANTS)}."
    )
  base = shared_overrides(args)
  runs = []

  def add(variant, fraction, seed, epochs):
    overrides = {**base, **VARIANTS[variant][1], "train.seed": seed}
    overrides["train.epochs"] = epochs
    if variant in SSL_VARIANTS:
      overrides["ssl.alpha"] = args.alpha
    if fraction < 1.0:
      overrides["data.train_fraction"] = fraction
    name = f"{variant}-f{fraction:g}-e{epochs}-s{seed}"
    runs.append(
      {
        "variant": variant,
        "fraction": fraction,
        "epochs": epochs,
        "seed": seed,
        "overrides": overrides,
        "workdir": os.path.join(args.workdir_root, args.data, name),
      }
    )

  for variant in variants:
    for seed in seeds[:1] if variant in one_seed else seeds:
      add(variant, 1.0, seed, args.epochs)
  if args.sparse_fraction > 0:
    half_steps = max(1, round(args.epochs / args.sparse_fraction / 2))
    for epochs in args.sparse_epochs.split(","):
      for variant in SPARSE_VARIANTS:
        if variant in variants:
          for seed in sparse_seeds or seeds:
            add(variant, args.sparse_fraction, seed, int(epochs) or half_steps)
  return runs


def run_one(run: dict[str, Any], fresh: bool) -> dict[str, Any]:
  """Trains (or resumes) one run and evaluates it on the test split."""
  if fresh and os.path.exists(run["workdir"]):
    shutil.rmtree(run["workdir"])
  config = Config().override(run["overrides"])
  summary_path = os.path.join(run["workdir"], "train_metrics.json")
  metrics_path = os.path.join(run["workdir"], workflow.EVAL_DIR, "metrics.json")
  previous = _read_json(summary_path)
  summary = train.train_and_evaluate(config, run["workdir"])
  if summary["steps_this_run"] == 0 and previous:
    # Already finished: keep the summary (and timing) of the run that
    # trained it, and its evaluation.
    summary = previous
    atomic.write_json(summary_path, summary)
    metrics = _read_json(metrics_path)
  else:
    metrics = None
  if metrics is None or metrics.get("split") != config.eval.split:
    metrics = workflow.evaluate_run(run["workdir"])
  return {
    **run,
    "steps": summary["steps"],
    "train_seconds": summary["seconds_this_run"],
    "final_logs": summary["final_logs"],
    "validation": summary["validation"],
    "metrics": metrics,
  }


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def metric_of(result: dict[str, Any], name: str) -> float | None:
  """`recall@10` (overall) or `tail/recall@10` (a slice) of one run."""
  metrics = result["metrics"]
  if "/" in name:
    slice_name, metric = name.split("/")
    return metrics["slices"][slice_name][metric]
  return metrics[name]


def setting_of(result: dict[str, Any]) -> tuple[float, int]:
  return (result["fraction"], result["epochs"])


def group(results, variant, setting):
  return [
    r for r in results if r["variant"] == variant and setting_of(r) == setting
  ]


def values(runs, name) -> np.ndarray:
  out = [metric_of(r, name) for r in runs]
  return np.array([v for v in out if v is not None], dtype=np.float64)


def mean_sd(x: np.ndarray) -> str:
  if x.size == 0:
    return "n/a"
  if x.size == 1:
    return f"{x[0]:.4f}"
  return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}"


def within_noise(x: np.ndarray, y: np.ndarray) -> bool:
  """True unless every seed of one side beats every seed of the other."""
  if x.size == 0 or y.size == 0:
    return True
  return not (x.max() < y.min() or y.max() < x.min())


def relative(x: np.ndarray, y: np.ndarray) -> str:
  """Relative change of mean(y) against mean(x), `~` when within noise."""
  if x.size == 0 or y.size == 0 or x.mean() == 0:
    return "n/a"
  change = 100.0 * (y.mean() / x.mean() - 1.0)
  mark = " ~" if within_noise(x, y) else ""
  return f"{change:+.1f}%{mark}"


def metric_table(results, setting, variants, names) -> list[str]:
  header = "| variant | seeds | " + " | ".join(names) + " |"
  lines = [header, "|" + "---|" * (len(names) + 2)]
  for v in variants:
    runs = group(results, v, setting)
    if not runs:
      continue
    cells = [mean_sd(values(runs, n)) for n in names]
    label = f"({v}) {VARIANTS[v][0]}"
    lines.append(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")
  return lines


def change_table(results, setting, comparisons, names) -> list[str]:
  lines = [
    "| comparison | " + " | ".join(names) + " |",
    "|" + "---|" * (len(names) + 1),
  ]
  for label, base, other in comparisons:
    x, y = group(results, base, setting), group(results, other, setting)
    if not x or not y:
      continue
    cells = [relative(values(x, n), values(y, n)) for n in names]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return lines if len(lines) > 2 else []


def slice_sizes(results, setting) -> str:
  runs = [r for r in results if setting_of(r) == setting]
  if not runs:
    return ""
  m = runs[0]["metrics"]
  parts = [
    f"{name} {row['num_items']:,} items / {row['num_pairs']:,} test pairs"
    for name, row in m.get("slices", {}).items()
  ]
  return (
    f"{m['num_pairs']:,} test pairs, {m['num_queries']:,} queries, "
    f"{m['num_items']:,} items; " + "; ".join(parts)
  )


def report(args, argv, results, seconds) -> str:
  variants = [v for v in VARIANTS if any(r["variant"] == v for r in results)]
  settings = sorted({setting_of(r) for r in results}, reverse=True)
  slice_names = [
    f"{s}/{m}"
    for s in ("head", "tail", "cold")
    for m in ("recall@10", "recall@100")
  ]
  all_names = list(OVERALL) + slice_names
  shared = shared_overrides(args)
  lines = [
    f"## Ablation on {args.data}",
    "",
    "Command: `.venv/bin/python bench/ablation.py " + " ".join(argv) + "`",
    "",
    f"Machine: {platform.machine()}, {os.cpu_count()} shared cores, Python "
    f"{platform.python_version()}; wall time of this invocation "
    f"{seconds / 60:.1f} min; training loops of all runs "
    f"{sum(r['train_seconds'] for r in results) / 60:.1f} min.",
    "",
    "Shared settings (on top of `Config()` defaults): "
    + ", ".join(f"`{k}={v}`" for k, v in sorted(shared.items()))
    + f"; SSL variants: `ssl.alpha={args.alpha}`.",
    "",
  ]
  for setting in settings:
    fraction, epochs = setting
    runs = [r for r in results if setting_of(r) == setting]
    steps = sorted({r["steps"] for r in runs})
    train_s = np.mean([r["train_seconds"] for r in runs])
    lines += [
      f"### train_fraction = {fraction:g}, {epochs} epochs",
      "",
      f"Test split: {slice_sizes(results, setting)}.",
      f"Training steps per run: {steps}; mean training-loop time per run "
      f"{train_s:.0f} s.",
      "",
      "Mean ± sample standard deviation over seeds:",
      "",
      *metric_table(results, setting, variants, OVERALL),
      "",
      *metric_table(results, setting, variants, slice_names),
      "",
    ]
    changes = change_table(results, setting, COMPARISONS, all_names)
    if changes:
      lines += [
        "Relative change of the means (`~`: within seed noise, i.e. the "
        "seeds of the two variants overlap):",
        "",
        *changes,
        "",
      ]
  lines += [
    "Per-seed test recall@10, recall@100, tail recall@10; then validation "
    "recall@10 at each epoch end (on 2,000 sampled validation pairs):",
    "",
  ]
  for r in results:
    curve = " ".join(f"{h['recall@10']:.3f}" for h in r["validation"])
    lines.append(
      f"- ({r['variant']}) fraction {r['fraction']:g}, {r['epochs']} epochs, "
      f"seed {r['seed']}: "
      f"{metric_of(r, 'recall@10'):.4f}, {metric_of(r, 'recall@100'):.4f}, "
      f"{metric_of(r, 'tail/recall@10'):.4f}; validation {curve}"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  runs = plan(args)
  print(f"{len(runs)} runs:", [os.path.basename(r["workdir"]) for r in runs])
  started = time.perf_counter()
  results = []
  for run in runs:
    t = time.perf_counter()
    result = run_one(run, args.fresh)
    results.append(result)
    print(
      f"[{os.path.basename(run['workdir'])}] {time.perf_counter() - t:.0f}s "
      f"recall@10 {metric_of(result, 'recall@10'):.4f} "
      f"recall@100 {metric_of(result, 'recall@100'):.4f} "
      f"tail recall@10 {metric_of(result, 'tail/recall@10'):.4f}",
      flush=True,
    )
    if args.json:  # after every run, so a crash keeps what is done
      atomic.write_json(args.json, {"args": vars(args), "results": results})
  text = report(args, argv, results, time.perf_counter() - started)
  print(text)
  if args.out:
    atomic.write_text(args.out, text)


if __name__ == "__main__":
  main(sys.argv[1:])
