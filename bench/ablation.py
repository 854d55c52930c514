"""The evidence table of the SSL study: logQ, SSL (RFM / CFM), id dropout.

Trains every variant below on every dataset, training fraction and seed,
keeps each run's best validation epoch (train.py saves it in WORKDIR/best/;
`train.early_stopping_patience` stops a run that no longer improves), and
evaluates that model on the **test** split with full-corpus exact search
(`workflow.evaluate_run`). Every run is thus compared at its own best epoch,
chosen on validation Recall@10, never on test.

Variants (overrides on top of `Config()`, whose defaults are the
recommended SSL config; whatever a variant does not list keeps its default):

  plain     model.logq=none,      ssl.alpha=0, model.id_dropout=0
  logq      model.logq=streaming, ssl.alpha=0, model.id_dropout=0
  rfm       model.logq=streaming, ssl.masking=rfm
  cfm       model.logq=streaming, ssl.masking=cfm  (the default SSL config)
  cfm_proj  as cfm, ssl.projection_dim=--projection_dim
  iddrop    model.logq=streaming, ssl.alpha=0, model.id_dropout=--id_dropout

Datasets: `synthetic` (the embedded generator), `ml1m` (MovieLens 1M,
random split) and `ml100k` (MovieLens 100K, temporal split). Fractions are
`data.train_fraction` (uniform share of the training split; validation and
test unchanged), seeds are `train.seed` (initialisation, shuffling,
augmentation; the split is fixed). `--set KEY=VALUE` applies to every run,
but a variant's own settings win over it, and the keys the script sets per
run (data.source, data.train_fraction, train.seed, train.epochs, ...) are
refused: use --data, --fractions, --seeds, --epochs instead.

The report gives, per dataset and fraction, the test split sizes, mean ±
sample sd (ddof=1) over seeds of Recall@10/@100 overall and on the head,
tail and cold slices, with a most-popular row (same pairs, same
exclusions), the relative change of the means of each SSL / id-dropout
variant vs `logq`, of the SSL variants vs `iddrop` (the SSL task alone:
both carry id dropout), and of `logq` vs `plain`, the best epochs, and at
the end the study's targets computed from these numbers. A change is marked `~`
when it is within seed noise (the seeds overlap: not every seed of one
variant beats every seed of the other), `*` when it is beyond it (every
seed of one beats every seed of the other) and `?` when a side has fewer
than two seeds (noise unknown). `--plot` draws, per dataset and fraction,
the overall / head / tail Recall@10 and cold Recall@100 of every variant
(mean, sd error bars) beside the most-popular baseline.

Runs live in `--workdir_root/<data>/<variant>-f<fraction>-s<seed>`. A
finished run (train_metrics.json present and training does nothing more)
is not retrained, and its eval/metrics.json is reused when it is a test
evaluation of the current best model; rerunning a command after a crash
resumes from the checkpoints, and adding seeds, variants or datasets only
runs what is new. `--fresh` deletes the planned runs first. `--json` is
rewritten after every run, so a crash keeps what is done.

Usage:
  .venv/bin/python bench/ablation.py [--data=synthetic,ml1m,ml100k]
      [--fractions=1,0.1] [--seeds=0,1,2] [--variants=plain,logq,rfm,cfm,
      cfm_proj,iddrop] [--epochs=10] [--sparse_epochs=30] [--patience=2]
      [--validation_examples=20000] [--projection_dim=64] [--id_dropout=R]
      [--set=KEY=VALUE ...] [--ml1m_dir=DIR] [--ml100k_dir=DIR]
      [--cache_dir=/tmp/ablation_cache] [--workdir_root=/tmp/ablation]
      [--fresh] [--out=REPORT.md] [--json=RESULTS.json] [--plot=PLOT.png]
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import platform
import shlex
import shutil
import sys
import time
from typing import Any

import numpy as np

import tfr_ssl  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow)
from tfr_ssl import atomic, train, workflow
from tfr_ssl.config import Config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATASETS = ("synthetic", "ml1m", "ml100k")
VARIANTS = ("plain", "logq", "rfm", "cfm", "cfm_proj", "iddrop")
LABELS = {
  "plain": "in-batch softmax, no correction",
  "logq": "+ streaming logQ",
  "rfm": "+ logQ + SSL (RFM)",
  "cfm": "+ logQ + SSL (CFM)",
  "cfm_proj": "+ logQ + SSL (CFM) + projection head",
  "iddrop": "+ logQ + id dropout (no SSL)",
}
# (variant, baseline) rows of the relative-change table.
COMPARISONS = (
  ("logq", "plain"),
  ("rfm", "logq"),
  ("cfm", "logq"),
  ("cfm_proj", "logq"),
  ("iddrop", "logq"),
  # The SSL task alone: rfm and cfm carry id dropout, logq does not.
  ("rfm", "iddrop"),
  ("cfm", "iddrop"),
)
# (slice, K) columns of the tables; "overall" is the whole test split.
COLUMNS = tuple(
  (s, k) for s in ("overall", "head", "tail", "cold") for k in (10, 100)
)
# The bars of the plot: (slice, K); cold items are rarely in a top 10.
PLOT_BARS = (("overall", 10), ("head", 10), ("tail", 10), ("cold", 100))
# The keys a variant may change, shown per variant in the report.
VARIANT_KEYS = (
  "model.logq",
  "ssl.alpha",
  "ssl.masking",
  "ssl.projection_dim",
  "model.id_dropout",
)
# Settings every variant shares, shown in the report as they resolve.
SHARED_KEYS = (
  "model.temperature",
  "model.embedding_dim",
  "model.output_dim",
  "ssl.key_mode",
  "ssl.temperature",
  "ssl.batch_size",
  "train.optimizer",
  "train.learning_rate",
  "train.batch_size",
  "train.early_stopping_patience",
  "train.validation_examples",
  "data.split",
)
# Keys the script sets per run: --set must not change them.
RESERVED = {
  "data.source": "--data",
  "data.train_fraction": "--fractions",
  "train.seed": "--seeds",
  "train.epochs": "--epochs / --sparse_epochs",
  "train.early_stopping_patience": "--patience",
  "train.validation_examples": "--validation_examples",
}


def default_data_dir(name: str) -> str:
  shared = os.environ.get(
    "TFR_SSL_SHARED_DATA",
    os.path.join(os.path.dirname(REPO), "shared", "data"),
  )
  return os.path.join(shared, name)


def _csv(text: str) -> list[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--data", default="synthetic", help=f"Comma-separated of {DATASETS}."
  )
  parser.add_argument("--ml1m_dir", default=default_data_dir("ml-1m"))
  parser.add_argument("--ml100k_dir", default=default_data_dir("ml-100k"))
  parser.add_argument(
    "--fractions", default="1,0.1", help="data.train_fraction values."
  )
  parser.add_argument("--seeds", default="0,1,2", help="train.seed values.")
  parser.add_argument(
    "--variants", default=",".join(VARIANTS), help=f"Subset of {VARIANTS}."
  )
  parser.add_argument(
    "--epochs", type=int, default=10, help="Max epochs at fraction 1."
  )
  parser.add_argument(
    "--sparse_epochs", type=int, default=30, help="Max epochs at fraction < 1."
  )
  parser.add_argument(
    "--epochs_by_data",
    default="",
    help="Max epochs at fraction 1 per dataset, overriding --epochs, e.g. "
    "synthetic=3,ml1m=6 (a full-data synthetic epoch is the costly one).",
  )
  parser.add_argument(
    "--patience", type=int, default=2, help="train.early_stopping_patience."
  )
  parser.add_argument("--validation_examples", type=int, default=20_000)
  parser.add_argument(
    "--from_json",
    default="",
    help="Comma-separated --json files of earlier invocations: report their "
    "runs (those of --data, --fractions, --seeds and --variants) without "
    "training or evaluating anything.",
  )
  parser.add_argument(
    "--projection_dim",
    type=int,
    default=64,
    help="ssl.projection_dim of cfm_proj.",
  )
  parser.add_argument(
    "--id_dropout",
    type=float,
    default=None,
    help="model.id_dropout of iddrop (default: Config()'s if > 0, else 0.2).",
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="Config override for every run (repeatable); a variant's own "
    "settings win over it.",
  )
  parser.add_argument("--cache_dir", default="/tmp/ablation_cache")
  parser.add_argument("--workdir_root", default="/tmp/ablation")
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--out", default="", help="Markdown report path.")
  parser.add_argument("--json", default="", help="Raw results path.")
  parser.add_argument("--plot", default="", help="PNG of the slice recalls.")
  args = parser.parse_args(argv)
  args.data = _csv(args.data)
  args.variants = _csv(args.variants)
  args.fractions = [float(f) for f in _csv(args.fractions)]
  args.seeds = [int(s) for s in _csv(args.seeds)]
  for name, given, known in (
    ("datasets", args.data, DATASETS),
    ("variants", args.variants, VARIANTS),
  ):
    unknown = sorted(set(given) - set(known))
    if unknown or not given:
      raise SystemExit(f"Unknown {name} {unknown}: choose from {known}.")
  if not args.seeds or not args.fractions:
    raise SystemExit("--seeds and --fractions must not be empty.")
  if any(not 0 < f <= 1 for f in args.fractions):
    raise SystemExit(f"--fractions must be in (0, 1], got {args.fractions}.")
  # Canonical order, whatever the command line's.
  args.variants = [v for v in VARIANTS if v in args.variants]
  return args


def id_dropout_rate(args: argparse.Namespace) -> float:
  if args.id_dropout is not None:
    return args.id_dropout
  default = Config().model.id_dropout
  return default if default > 0 else 0.2


def variant_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
  streaming = {"model.logq": "streaming"}
  return {
    "plain": {"model.logq": "none", "ssl.alpha": 0.0, "model.id_dropout": 0.0},
    "logq": {**streaming, "ssl.alpha": 0.0, "model.id_dropout": 0.0},
    "rfm": {**streaming, "ssl.masking": "rfm"},
    "cfm": {**streaming, "ssl.masking": "cfm"},
    "cfm_proj": {
      **streaming,
      "ssl.masking": "cfm",
      "ssl.projection_dim": args.projection_dim,
    },
    "iddrop": {
      **streaming,
      "ssl.alpha": 0.0,
      "model.id_dropout": id_dropout_rate(args),
    },
  }


def data_overrides(args: argparse.Namespace, data: str) -> dict[str, Any]:
  if data == "synthetic":
    return {"data.source": "synthetic"}
  if data == "ml1m":
    return {"data.source": "movielens", "data.data_dir": args.ml1m_dir}
  return {
    "data.source": "movielens",
    "data.data_dir": args.ml100k_dir,
    "data.split": "temporal",
  }


def set_overrides(args: argparse.Namespace) -> dict[str, str]:
  overrides = {}
  for item in args.set:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--set expects KEY=VALUE, got {item!r}.")
    if key in RESERVED:
      raise SystemExit(f"--set {key}: use {RESERVED[key]} instead.")
    overrides[key] = value
  return overrides


def shared_overrides(args: argparse.Namespace) -> dict[str, Any]:
  return {
    "data.cache_dir": args.cache_dir,
    "train.early_stopping_patience": args.patience,
    "train.validation_examples": args.validation_examples,
  }


def epochs_for(
  args: argparse.Namespace, fraction: float, data: str = ""
) -> int:
  if fraction < 1.0:
    return args.sparse_epochs
  by_data = dict(
    item.split("=") for item in args.epochs_by_data.split(",") if item
  )
  return int(by_data.get(data, args.epochs))


def run_name(variant: str, fraction: float, seed: int) -> str:
  return f"{variant}-f{fraction:g}-s{seed}"


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
  """Every run: dataset, fraction, seed, variant, overrides, workdir.

  Seed-major within a dataset and fraction, so that a partial benchmark
  already compares every variant on the first seeds.
  """
  variants = variant_overrides(args)
  extra = set_overrides(args)
  runs = []
  for data in args.data:
    for fraction in args.fractions:
      for seed in args.seeds:
        for variant in args.variants:
          overrides = {
            **shared_overrides(args),
            **data_overrides(args, data),
            **extra,
            **variants[variant],
            "data.train_fraction": fraction,
            "train.epochs": epochs_for(args, fraction, data),
            "train.seed": seed,
          }
          runs.append(
            {
              "data": data,
              "variant": variant,
              "fraction": fraction,
              "seed": seed,
              "epochs": epochs_for(args, fraction, data),
              "overrides": overrides,
              "workdir": os.path.join(
                args.workdir_root, data, run_name(variant, fraction, seed)
              ),
            }
          )
  return runs


def config_of(run: dict[str, Any]) -> Config:
  try:
    return Config().override(run["overrides"])
  except ValueError as e:
    raise SystemExit(f"{os.path.basename(run['workdir'])}: {e}") from None


def config_value(config: Config, key: str) -> Any:
  return functools.reduce(getattr, key.split("."), config)


def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _mtime(path: str) -> float | None:
  return os.path.getmtime(path) if os.path.exists(path) else None


def run_one(run: dict[str, Any], fresh: bool) -> dict[str, Any]:
  """Trains (or resumes) one run and evaluates its best model on test."""
  workdir = run["workdir"]
  if fresh and os.path.exists(workdir):
    shutil.rmtree(workdir)
  config = config_of(run)
  summary_path = os.path.join(workdir, "train_metrics.json")
  metrics_path = os.path.join(workdir, workflow.EVAL_DIR, "metrics.json")
  best_json = os.path.join(workdir, train.BEST_DIR, "best.json")
  previous = _read_json(summary_path)
  try:
    summary = train.train_and_evaluate(config, workdir)
  except train.WorkdirError as e:
    raise SystemExit(
      f"{workdir} holds a run with other settings ({e}); use --fresh or "
      "another --workdir_root."
    ) from None
  finished = summary["steps_this_run"] == 0 and previous is not None
  if finished:
    # Keep the summary (and timing) of the invocation that trained it.
    summary = previous
    atomic.write_json(summary_path, summary)
  metrics = _read_json(metrics_path) if finished else None
  metrics_time, best_time = _mtime(metrics_path), _mtime(best_json)
  reused = (
    metrics is not None
    and metrics.get("split") == "test"
    and metrics.get("search", "exact") == "exact"
    # Not a stale evaluation of an earlier best model.
    and (best_time is None or metrics_time >= best_time)
  )
  if not reused:
    metrics = workflow.evaluate_run(workdir, split="test")
  best = train.best_checkpoint(workdir)
  entry = best[1] if best else {}
  return {
    **run,
    "steps": summary["steps"],
    "train_seconds": summary["seconds_this_run"],
    "epochs_run": len(summary["validation"]),
    "best_epoch": entry.get("epoch"),
    "best_step": entry.get("step"),
    "best_validation_recall@10": entry.get("recall@10"),
    "validation": summary["validation"],
    "retrained": not finished,
    "reused_metrics": reused,
    "metrics": metrics,
  }


# ---------------------------------------------------------------- numbers


def recall(metrics: dict[str, Any] | None, slice_name: str, k: int):
  """Recall@k of the whole split or of a slice; None when absent."""
  if not metrics:
    return None
  if slice_name != "overall":
    metrics = metrics.get("slices", {}).get(slice_name, {})
  value = metrics.get(f"recall@{k}")
  return None if value is None else float(value)


def baseline_of(metrics: dict[str, Any]) -> dict[str, Any] | None:
  return (metrics.get("baseline") or {}).get("most_popular")


def values(runs: list[dict], slice_name: str, k: int, baseline=False):
  out = []
  for r in runs:
    m = baseline_of(r["metrics"]) if baseline else r["metrics"]
    v = recall(m, slice_name, k)
    if v is not None:
      out.append(v)
  return np.array(out, dtype=np.float64)


def fmt(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.4f}"


def mean_sd(x: np.ndarray) -> str:
  if x.size == 0:
    return "n/a"
  if x.size == 1:
    return f"{x[0]:.4f}"
  return f"{x.mean():.4f} ± {x.std(ddof=1):.4f}"


def compare(base: np.ndarray, other: np.ndarray) -> dict[str, Any] | None:
  """Relative change of mean(other) vs mean(base), with its noise mark.

  `~`: the seeds overlap (not every seed of one side beats every seed of
  the other); `*`: they do not; `?`: a side has fewer than two seeds.
  None when a side is empty or the base mean is 0.
  """
  if base.size == 0 or other.size == 0 or base.mean() == 0:
    return None
  change = 100.0 * (other.mean() / base.mean() - 1.0)
  if min(base.size, other.size) < 2:
    mark = "?"
  elif other.min() > base.max() or other.max() < base.min():
    mark = "*"
  else:
    mark = "~"
  return {"change": change, "mark": mark}


def fmt_change(c: dict[str, Any] | None) -> str:
  return "n/a" if c is None else f"{c['change']:+.1f}% {c['mark']}"


def beyond(c: dict[str, Any] | None, sign: int) -> bool:
  """The change is beyond seed noise in the direction `sign`."""
  return c is not None and c["mark"] == "*" and c["change"] * sign > 0


class Results:
  """The finished runs, grouped by (data, fraction, variant)."""

  def __init__(self, results: list[dict[str, Any]]):
    self.results = results

  def runs(self, data, fraction, variant=None) -> list[dict[str, Any]]:
    return [
      r
      for r in self.results
      if r["data"] == data
      and r["fraction"] == fraction
      and (variant is None or r["variant"] == variant)
    ]

  def variants(self, data, fraction) -> list[str]:
    present = {r["variant"] for r in self.runs(data, fraction)}
    return [v for v in VARIANTS if v in present]

  def settings(self) -> list[tuple[str, float]]:
    seen = []
    for r in self.results:
      if (r["data"], r["fraction"]) not in seen:
        seen.append((r["data"], r["fraction"]))
    return seen

  def vals(self, data, fraction, variant, slice_name, k) -> np.ndarray:
    return values(self.runs(data, fraction, variant), slice_name, k)

  def change(self, data, fraction, variant, base, slice_name, k):
    return compare(
      self.vals(data, fraction, base, slice_name, k),
      self.vals(data, fraction, variant, slice_name, k),
    )

  def baseline(self, data, fraction, slice_name, k) -> tuple[np.ndarray, bool]:
    """Most-popular values of the runs, and whether they all agree."""
    x = values(self.runs(data, fraction), slice_name, k, baseline=True)
    return x, bool(x.size == 0 or np.allclose(x, x[0]))


# ---------------------------------------------------------------- report


def split_sizes(runs: list[dict[str, Any]]) -> str:
  def sizes(m):
    parts = [
      f"{m.get('num_pairs', 0):,} pairs, {m.get('num_queries', 0):,} "
      f"queries, {m.get('num_items', 0):,} corpus items"
    ]
    for name in ("head", "tail", "cold"):
      row = m.get("slices", {}).get(name)
      if row:
        parts.append(
          f"{name} {row['num_items']:,} items / {row['num_pairs']:,} pairs"
        )
    return "; ".join(parts)

  distinct = {sizes(r["metrics"]) for r in runs}
  text = sizes(runs[0]["metrics"])
  if len(distinct) > 1:
    text += f" (**differs across runs**: {len(distinct)} versions)"
  return text


def metric_table(res: Results, data, fraction) -> list[str]:
  header = ["variant", "seeds"] + [
    f"{s} R@{k}" if s != "overall" else f"R@{k}" for s, k in COLUMNS
  ]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for v in res.variants(data, fraction):
    runs = res.runs(data, fraction, v)
    cells = [mean_sd(values(runs, s, k)) for s, k in COLUMNS]
    lines.append(f"| {v} | {len(runs)} | " + " | ".join(cells) + " |")
  cells, agree = [], True
  for s, k in COLUMNS:
    x, same = res.baseline(data, fraction, s, k)
    agree &= same
    cells.append(
      "n/a" if x.size == 0 else (f"{x[0]:.4f}" if same else mean_sd(x))
    )
  lines.append("| most popular | - | " + " | ".join(cells) + " |")
  if not agree:
    lines.append("")
    lines.append(
      "**The most-popular figures differ across runs** of this dataset "
      "and fraction (they should not: same pairs, same training counts)."
    )
  return lines


def change_table(res: Results, data, fraction) -> list[str]:
  header = ["comparison"] + [
    f"{s} R@{k}" if s != "overall" else f"R@{k}" for s, k in COLUMNS
  ]
  rows = []
  present = set(res.variants(data, fraction))
  for variant, base in COMPARISONS:
    if variant in present and base in present:
      cells = [
        fmt_change(res.change(data, fraction, variant, base, s, k))
        for s, k in COLUMNS
      ]
      rows.append(f"| {variant} vs {base} | " + " | ".join(cells) + " |")
  if not rows:
    return []
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]


def epoch_table(res: Results, data, fraction) -> list[str]:
  lines = [
    "| variant | best epoch per seed | mean best epoch | epochs run per "
    "seed | validation R@10 at best | training loop (mean) |",
    "|---|---|---|---|---|---|",
  ]
  for v in res.variants(data, fraction):
    runs = sorted(res.runs(data, fraction, v), key=lambda r: r["seed"])
    best = [r["best_epoch"] for r in runs]
    known = [b for b in best if b is not None]
    val = np.array(
      [
        r["best_validation_recall@10"]
        for r in runs
        if r["best_validation_recall@10"] is not None
      ]
    )
    lines.append(
      f"| {v} | {', '.join(str(b) for b in best)} | "
      f"{np.mean(known) if known else float('nan'):.1f} | "
      f"{', '.join(str(r['epochs_run']) for r in runs)} | {mean_sd(val)} | "
      f"{np.mean([r['train_seconds'] for r in runs]):.0f} s |"
    )
  return lines


def variant_table(args, runs: list[dict[str, Any]]) -> list[str]:
  """Each variant's effective values of the keys variants change."""
  lines = [
    "| variant | " + " | ".join(f"`{k}`" for k in VARIANT_KEYS) + " |",
    "|" + "---|" * (len(VARIANT_KEYS) + 1),
  ]
  for v in args.variants:
    run = next(r for r in runs if r["variant"] == v)
    config = config_of(run)
    cells = []
    for key in VARIANT_KEYS:
      value = config_value(config, key)
      if key.startswith("ssl.") and key != "ssl.alpha" and not config.ssl.alpha:
        value = "-"  # no SSL task: irrelevant
      cells.append(str(value))
    lines.append(f"| {v} ({LABELS[v]}) | " + " | ".join(cells) + " |")
  return lines


def targets(res: Results, args) -> list[str]:
  """The study's targets, computed from the tables' numbers."""
  lines = ["## Targets", ""]

  def verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"

  def cfm_logq(data, fraction, s="overall", k=10):
    return res.change(data, fraction, "cfm", "logq", s, k)

  datasets = [d for d in args.data if res.runs(d, 1.0)]
  # (1) Full data: cfm not worse than logq beyond noise anywhere, better
  # beyond noise somewhere.
  if 1.0 in args.fractions and datasets:
    changes = {d: cfm_logq(d, 1.0) for d in datasets}
    known = [c for c in changes.values() if c is not None]
    not_worse = len(known) == len(changes) and not any(
      beyond(c, -1) for c in known
    )
    better = any(beyond(c, +1) for c in known)
    lines.append(
      f"1. Full data, `cfm` vs `logq` Recall@10 not worse beyond noise on "
      f"every dataset and better beyond noise on at least one: "
      f"{verdict(not_worse and better)} ("
      + "; ".join(f"{d}: {fmt_change(c)}" for d, c in changes.items())
      + ")."
    )
  else:
    lines.append("1. Full data: not run.")
  # (2) Sparse data: >= +10 % beyond noise on at least two datasets.
  sparse = [f for f in args.fractions if f < 1.0]
  for fraction in sparse:
    ds = [d for d in args.data if res.runs(d, fraction)]
    changes = {d: cfm_logq(d, fraction) for d in ds}
    hits = [
      d
      for d, c in changes.items()
      if c is not None and c["mark"] == "*" and c["change"] >= 10.0
    ]
    note = "" if len(ds) >= 2 else f"; only {len(ds)} dataset(s) run"
    lines.append(
      f"2. {fraction:g} of the training data, `cfm` vs `logq` Recall@10 "
      f">= +10% beyond noise on at least two datasets: "
      f"{verdict(len(hits) >= 2)} ("
      + "; ".join(f"{d}: {fmt_change(c)}" for d, c in changes.items())
      + f"{note})."
    )
  if not sparse:
    lines.append("2. Sparse data: not run.")
  # (3) Tail lift above head lift.
  items = []
  for data, fraction in res.settings():
    tail = cfm_logq(data, fraction, "tail")
    head = cfm_logq(data, fraction, "head")
    if tail is None or head is None:
      items.append(f"{data} f={fraction:g}: n/a (missed)")
      continue
    ok = tail["change"] > head["change"]
    items.append(
      f"{data} f={fraction:g}: tail {fmt_change(tail)} vs head "
      f"{fmt_change(head)}, {'met' if ok else 'missed'}"
    )
  lines.append(
    "3. Tail lift above head lift (`cfm` vs `logq`, Recall@10 relative "
    "change): " + ("; ".join(items) if items else "nothing to compare") + "."
  )
  # (4) Synthetic cold items: cold R@100 >= half of tail R@100.
  synthetic = [f for f in args.fractions if res.runs("synthetic", f)]
  for fraction in synthetic:
    items = []
    cfm_ok = None
    for v in res.variants("synthetic", fraction):
      cold = res.vals("synthetic", fraction, v, "cold", 100)
      tail = res.vals("synthetic", fraction, v, "tail", 100)
      if cold.size == 0 or tail.size == 0:
        items.append(f"{v}: n/a")
        continue
      ok = cold.mean() >= tail.mean() / 2
      if v == "cfm":
        cfm_ok = ok
      items.append(
        f"{v}: cold {cold.mean():.4f} vs tail/2 {tail.mean() / 2:.4f} "
        f"({'met' if ok else 'missed'})"
      )
    lines.append(
      f"4. Synthetic, f={fraction:g}, `cfm` cold Recall@100 >= half its "
      f"tail Recall@100: {verdict(bool(cfm_ok))} (" + "; ".join(items) + ")."
    )
  if not synthetic:
    lines.append("4. Synthetic: not run.")
  lines += [
    "",
    "`*`: beyond seed noise (every seed of one variant beats every seed of "
    "the other); `~`: within it; `?`: fewer than two seeds, noise unknown "
    "(never counted as beyond noise).",
  ]
  return lines


def report(args, argv, results, seconds, runs_planned) -> str:
  res = Results(results)
  configs = {r["data"]: config_of(r) for r in runs_planned}
  first = config_of(runs_planned[0])
  shared = ", ".join(
    f"`{k}={config_value(first, k)}`" for k in SHARED_KEYS if k != "data.split"
  )
  lines = [
    "# SSL ablation",
    "",
    "Command: `"
    + shlex.join([".venv/bin/python", "bench/ablation.py", *argv])
    + "`",
    "",
    f"Machine: {platform.platform()}, {os.cpu_count()} cores (shared), "
    f"Python {platform.python_version()}. Wall time of this invocation "
    f"{seconds / 60:.1f} min; training loops of the reported runs "
    f"{sum(r['train_seconds'] for r in results) / 60:.1f} min "
    f"({sum(r['retrained'] for r in results)} of {len(results)} runs "
    "trained by this invocation).",
    "",
    f"Shared settings (`Config()` defaults unless overridden): {shared}; "
    f"max epochs {args.epochs} at fraction 1 (per dataset: "
    f"{args.epochs_by_data or 'the same'}) and {args.sparse_epochs} below; "
    f"`--set`: {', '.join(f'`{s}`' for s in args.set) or 'none'} (a "
    "variant's own settings win over `--set`).",
    "",
    "Each run keeps the model of its best validation epoch (validation "
    "Recall@10, `train.early_stopping_patience` epochs without improvement "
    "stop it); that model is evaluated on the **test** split with "
    "full-corpus exact search, excluding each query's training and "
    "validation positives. Cells are mean ± sample sd (ddof=1) over seeds.",
    "",
    "Variants:",
    "",
    *variant_table(args, runs_planned),
    "",
  ]
  for data in args.data:
    cfg = configs[data]
    source = cfg.data.source + (
      f" from `{cfg.data.data_dir}`" if cfg.data.data_dir else ""
    )
    lines += [
      f"## {data}",
      "",
      f"Data: {source}, `data.split={cfg.data.split}`.",
      "",
    ]
    for fraction in args.fractions:
      runs = res.runs(data, fraction)
      if not runs:
        continue
      seeds = sorted({r["seed"] for r in runs})
      lines += [
        f"### {data}, train_fraction = {fraction:g}",
        "",
        f"Max epochs {epochs_for(args, fraction, data)}, patience "
        f"{args.patience}; "
        f"seeds {seeds}; training steps per run "
        f"{min(r['steps'] for r in runs)} to {max(r['steps'] for r in runs)}.",
        "",
        f"Test split: {split_sizes(runs)}.",
        "",
        "Test Recall (R) overall and by slice:",
        "",
        *metric_table(res, data, fraction),
        "",
      ]
      changes = change_table(res, data, fraction)
      if changes:
        lines += [
          "Relative change of the means (`*`: beyond seed noise, every "
          "seed of one variant beats every seed of the other; `~`: within "
          "seed noise, the seeds overlap; `?`: fewer than two seeds):",
          "",
          *changes,
          "",
        ]
      lines += [
        "Best validation epochs (the model evaluated above):",
        "",
        *epoch_table(res, data, fraction),
        "",
      ]
  lines += targets(res, args)
  lines += [
    "",
    "## Per run",
    "",
    "Test R@10, R@100, tail R@10, cold R@100; best epoch; validation "
    "Recall@10 per epoch:",
    "",
  ]
  for r in results:
    m = r["metrics"]
    curve = " ".join(f"{h['recall@10']:.3f}" for h in r["validation"])
    figures = ", ".join(
      fmt(v)
      for v in (
        recall(m, "overall", 10),
        recall(m, "overall", 100),
        recall(m, "tail", 10),
        recall(m, "cold", 100),
      )
    )
    lines.append(
      f"- {r['data']} {run_name(r['variant'], r['fraction'], r['seed'])}: "
      f"{figures}; best epoch {r['best_epoch']}; validation {curve}"
    )
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- plot


def plot(results: list[dict[str, Any]], path: str) -> None:
  """Grouped bars of test recall by slice, one panel per data x fraction.

  Bars: one per variant (mean over seeds, sd error bars) and a hatched
  grey most-popular bar, for overall / head / tail Recall@10 and cold
  Recall@100. Written atomically (temporary file, then a rename).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  res = Results(results)
  settings = res.settings()
  if not settings:
    return
  data_names = list(dict.fromkeys(d for d, _ in settings))
  fractions = list(dict.fromkeys(f for _, f in settings))
  fig, axes = plt.subplots(
    len(data_names),
    len(fractions),
    figsize=(6.5 * len(fractions), 3.8 * len(data_names)),
    squeeze=False,
  )
  colours = plt.get_cmap("tab10")
  handles = {}
  for row, data in enumerate(data_names):
    for col, fraction in enumerate(fractions):
      ax = axes[row][col]
      variants = res.variants(data, fraction)
      if not variants:
        ax.set_axis_off()
        continue
      base = []
      for s, k in PLOT_BARS:
        vals, _ = res.baseline(data, fraction, s, k)
        base.append(vals.mean() if vals.size else np.nan)
      has_base = not np.all(np.isnan(base))
      bars = len(variants) + int(has_base)
      width = 0.85 / bars
      x = np.arange(len(PLOT_BARS))

      def offset(j, bars=bars, width=width):
        return (j - (bars - 1) / 2) * width

      for i, v in enumerate(variants):
        means, sds = [], []
        for s, k in PLOT_BARS:
          vals = res.vals(data, fraction, v, s, k)
          means.append(vals.mean() if vals.size else np.nan)
          sds.append(vals.std(ddof=1) if vals.size > 1 else 0.0)
        handles[v] = ax.bar(
          x + offset(i),
          means,
          width,
          yerr=sds,
          capsize=2,
          color=colours(VARIANTS.index(v)),
          label=v,
        )
      if has_base:
        handles["most popular"] = ax.bar(
          x + offset(len(variants)),
          base,
          width,
          color="0.8",
          edgecolor="0.3",
          hatch="//",
          label="most popular",
        )
        # A mark on top, so a zero bar is seen as zero, not as missing.
        ax.plot(
          x + offset(len(variants)),
          base,
          linestyle="none",
          marker="_",
          markersize=8,
          color="0.2",
        )
      metrics = res.runs(data, fraction)[0]["metrics"]
      ticks = []
      for s, k in PLOT_BARS:
        entry = metrics if s == "overall" else metrics.get("slices", {}).get(s)
        pairs = f"\n{entry['num_pairs']:,} pairs" if entry else ""
        ticks.append(f"{s} R@{k}{pairs}")
      seeds = len({r["seed"] for r in res.runs(data, fraction)})
      ax.set_title(f"{data}, train_fraction {fraction:g} ({seeds} seeds)")
      ax.set_xticks(x)
      ax.set_xticklabels(ticks)
      ax.set_ylim(bottom=0)
      ax.set_ylabel("test recall")
      ax.grid(axis="y", alpha=0.3)
  fig.legend(
    list(handles.values()),
    list(handles),
    loc="lower center",
    ncol=min(len(handles), 7),
    frameon=False,
  )
  fig.suptitle(
    "Test recall by slice at each run's best validation epoch "
    "(mean ± sd over seeds)"
  )
  fig.tight_layout(rect=(0, 0.06, 1, 0.96))
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=110)
  plt.close(fig)
  atomic.write_bytes(path, buffer.getvalue())


# ---------------------------------------------------------------- main


def check_data_dirs(args: argparse.Namespace) -> None:
  for data, path in (("ml1m", args.ml1m_dir), ("ml100k", args.ml100k_dir)):
    if data in args.data and not os.path.isdir(path):
      raise SystemExit(f"--data={data}: no directory {path}.")


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  if args.from_json:
    report_from_json(args, argv)
    return
  check_data_dirs(args)
  runs = plan(args)
  for run in runs:  # a bad --set fails before anything trains
    config_of(run)
  print(f"{len(runs)} runs under {args.workdir_root}.", flush=True)
  started = time.perf_counter()
  results = []
  for i, run in enumerate(runs):
    t = time.perf_counter()
    result = run_one(run, args.fresh)
    results.append(result)
    m = result["metrics"]
    print(
      f"[{i + 1}/{len(runs)} {run['data']}/"
      f"{os.path.basename(run['workdir'])}] {time.perf_counter() - t:.0f}s "
      f"best epoch {result['best_epoch']} of {result['epochs_run']}, test "
      f"R@10 {fmt(recall(m, 'overall', 10))} R@100 "
      f"{fmt(recall(m, 'overall', 100))}",
      flush=True,
    )
    if args.json:  # after every run, so a crash keeps what is done
      atomic.write_json(
        args.json, {"argv": argv, "args": vars(args), "results": results}
      )
  text = report(args, argv, results, time.perf_counter() - started, runs)
  write_outputs(args, text, results)


def write_outputs(args: argparse.Namespace, text: str, results) -> None:
  """Prints the report and writes it (--out) and the plot (--plot)."""
  print(text)
  if args.out:
    atomic.write_text(args.out, text)
  if args.plot:
    plot(results, args.plot)
    print(f"Plot: {args.plot}")


def report_from_json(args: argparse.Namespace, argv: list[str]) -> None:
  """The report of the runs that earlier invocations recorded."""
  wanted = {
    (data, variant, fraction, seed)
    for data in args.data
    for variant in args.variants
    for fraction in args.fractions
    for seed in args.seeds
  }
  by_workdir = {}
  for path in _csv(args.from_json):
    for result in _read_json(path)["results"]:
      key = (
        result["data"],
        result["variant"],
        result["fraction"],
        result["seed"],
      )
      if key in wanted:
        by_workdir[result["workdir"]] = result
  results = sorted(
    by_workdir.values(),
    key=lambda r: (
      args.data.index(r["data"]),
      args.fractions.index(r["fraction"]),
      r["seed"],
      args.variants.index(r["variant"]),
    ),
  )
  present = {r["variant"] for r in results}
  args.variants = [v for v in args.variants if v in present]
  seconds = sum(r.get("train_seconds", 0.0) for r in results)
  write_outputs(args, report(args, argv, results, seconds, results), results)


if __name__ == "__main__":
  main(sys.argv[1:])
