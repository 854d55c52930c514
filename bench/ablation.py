"""The evidence table of the study: history query tower, item and user SSL.

Trains every variant below on every dataset, training fraction and seed,
keeps each run's best validation epoch (train.py saves it in WORKDIR/best/;
`train.early_stopping_patience` stops a run that no longer improves), and
evaluates that model on the **test** split with full-corpus exact search
(`workflow.evaluate_run`). Every run is thus compared at its own best epoch,
chosen on validation Recall@10, never on test.

Variants (overrides on top of `Config()`; whatever a variant does not list
keeps its default: static logQ, id dropout, `model.history_length` 20,
CFM masking on the corrected dependence, `ssl.alpha` 0.3). "Item SSL" is
`ssl.masking=cfm` at the default `ssl.alpha`; "user SSL" is
`ssl.user_alpha=--user_alpha`:

  idonly         model.history_length=0, ssl.alpha=0, ssl.user_alpha=0
  idonly_item    model.history_length=0, item SSL, ssl.user_alpha=0
  hist           ssl.alpha=0, ssl.user_alpha=0 (the history tower alone)
  hist_item      item SSL, ssl.user_alpha=0
  hist_user      ssl.alpha=0, user SSL
  hist_both      item SSL, user SSL
  hist_item_raw  as hist_item, ssl.dependence=raw_mi (the paper's MI)
  default        nothing: `Config()` as the binaries train it
  plain          model.logq=none, model.history_length=0, ssl.alpha=0,
                 ssl.user_alpha=0, model.id_dropout=0 (not run by default)
  logq           as plain with model.logq=--logq (not run by default)

Every variant but `plain` sets `model.logq=--logq` (static by default,
the config's default), and every variant
but `default` states `ssl.user_alpha` (the user task needs a history, and
its default may change). `default` is what the targets are about.

Datasets: `synthetic` (the embedded generator), `ml1m` (MovieLens 1M,
random split) and `ml100k` (MovieLens 100K, temporal split). Fractions are
`data.train_fraction` (uniform share of the training split; validation and
test unchanged), seeds are `train.seed` (initialisation, shuffling,
augmentation; the split, and so the held-out users, are fixed).
`--set KEY=VALUE` applies to every run, `default` included, but a
variant's own settings win over it, and the keys the script sets per run
(data.source, data.train_fraction, train.seed, train.epochs, ...) are
refused: use --data, --fractions, --seeds, --epochs instead.

The report gives, per dataset and fraction, the test split sizes, mean ±
sample sd (ddof=1) over seeds of Recall@10/@100 overall, on the head, tail
and cold item slices, on the sparse users (`eval.sparse_user_max` training
interactions at most) and on the held-out users (`data.heldout_users`:
never trained on, scored from a folded-in history), each with a
most-popular row (same pairs, same exclusions; `-` where an evaluation has
no such figure), the relative change of the means of: hist vs idonly,
idonly_item vs idonly, hist_item / hist_user / hist_both vs hist,
hist_item_raw vs hist_item, default vs idonly (and logq vs plain), the
best epochs, and at the end the study's targets computed from these
numbers, each met, not met or not measured. A change is marked `~` when it
is within seed noise (the seeds overlap: not every seed of one variant
beats every seed of the other), `*` when it is beyond it (every seed of
one beats every seed of the other) and `?` when a side has fewer than two
seeds (noise unknown). `--plot` draws, per dataset and fraction, the
overall / head / tail Recall@10, cold Recall@100 and sparse / held-out
users' Recall@10 of every variant (mean, sd error bars) beside the
most-popular baseline.

Runs live in `--workdir_root/<data>/<variant>-f<fraction>-s<seed>`. A
finished run (train_metrics.json present and training does nothing more)
is not retrained, and its eval/metrics.json is reused when it is a test
evaluation of the current best model; rerunning a command after a crash
resumes from the checkpoints, and adding seeds, variants or datasets only
runs what is new. `--fresh` deletes the planned runs first. `--json` is
rewritten after every run, so a crash keeps what is done. The report and
the plot are made by `ablation_report.py`.

Usage:
  .venv/bin/python bench/ablation.py [--data=synthetic,ml1m,ml100k]
      [--fractions=1,0.1] [--seeds=0,1,2] [--variants=idonly,idonly_item,
      hist,hist_item,hist_user,hist_both,hist_item_raw,default]
      [--user_alpha=B] [--epochs=10] [--sparse_epochs=30] [--patience=2]
      [--validation_examples=20000] [--set=KEY=VALUE ...]
      [--ml1m_dir=DIR] [--ml100k_dir=DIR] [--cache_dir=/tmp/ablation_cache]
      [--workdir_root=/tmp/ablation] [--fresh] [--out=REPORT.md]
      [--json=RESULTS.json] [--plot=PLOT.png] [--from_json=A.json,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from typing import Any

# bench/ is this script's directory, so its sibling imports as a module.
from ablation_report import (
  DEFAULT_VARIANTS,
  HELDOUT,
  VARIANTS,
  config_of,
  epochs_for,
  fmt,
  plot,
  recall,
  report,
  run_name,
)

import tfr_ssl  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow)
from tfr_ssl import atomic, workflow
from tfr_ssl.config import Config
from tfr_ssl.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DATASETS = ("synthetic", "ml1m", "ml100k")
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


def _add_study_flags(parser: argparse.ArgumentParser) -> None:
  """What runs: datasets, fractions, seeds, variants, epochs, settings."""
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
    "--variants",
    default=",".join(DEFAULT_VARIANTS),
    help=f"Subset of {VARIANTS}.",
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


def _add_output_flags(parser: argparse.ArgumentParser) -> None:
  """Earlier results, variant settings, --set, paths and outputs."""
  parser.add_argument(
    "--from_json",
    default="",
    help="Comma-separated --json files of earlier invocations: report their "
    "runs (those of --data, --fractions, --seeds and --variants) without "
    "training or evaluating anything.",
  )
  parser.add_argument(
    "--user_alpha",
    type=float,
    default=None,
    help="ssl.user_alpha of the user-SSL variants (hist_user, hist_both; "
    "default: Config()'s if > 0, else 0.1).",
  )
  parser.add_argument(
    "--set",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="Config override for every run (repeatable); a variant's own "
    "settings win over it.",
  )
  parser.add_argument(
    "--logq",
    default="static",
    choices=("static", "streaming"),
    help="The logQ correction of every variant but plain.",
  )
  parser.add_argument("--cache_dir", default="/tmp/ablation_cache")
  parser.add_argument("--workdir_root", default="/tmp/ablation")
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--out", default="", help="Markdown report path.")
  parser.add_argument("--json", default="", help="Raw results path.")
  parser.add_argument("--plot", default="", help="PNG of the slice recalls.")


def parse_args(argv: list[str]) -> argparse.Namespace:
  """The command line, its lists split and checked (SystemExit if bad)."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  _add_study_flags(parser)
  _add_output_flags(parser)
  args = parser.parse_args(argv)
  args.data = _csv(args.data)
  args.variants = _csv(args.variants)
  try:
    args.fractions = [float(f) for f in _csv(args.fractions)]
    args.seeds = [int(s) for s in _csv(args.seeds)]
  except ValueError as e:
    raise SystemExit(f"error: --fractions / --seeds: {e}") from None
  for flag, given, known in (
    ("--data", args.data, DATASETS),
    ("--variants", args.variants, VARIANTS),
  ):
    unknown = sorted(set(given) - set(known))
    if unknown or not given:
      raise SystemExit(
        f"error: {flag}: unknown {unknown}: choose from {known}."
      )
  if not args.seeds or not args.fractions:
    raise SystemExit("error: --seeds and --fractions must not be empty.")
  if any(not 0 < f <= 1 for f in args.fractions):
    raise SystemExit(
      f"error: --fractions must be in (0, 1], got {args.fractions}."
    )
  if args.user_alpha is not None and not args.user_alpha > 0:
    raise SystemExit(
      f"error: --user_alpha must be > 0 (the user-SSL weight), got "
      f"{args.user_alpha}."
    )
  # Canonical order, whatever the command line's.
  args.variants = [v for v in VARIANTS if v in args.variants]
  return args


def user_alpha(args: argparse.Namespace) -> float:
  """The user-SSL weight of hist_user and hist_both."""
  if args.user_alpha is not None:
    return args.user_alpha
  default = Config().ssl.user_alpha
  return default if default > 0 else 0.1


def variant_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
  """Each variant's own settings (they win over --set)."""
  streaming = {"model.logq": args.logq}
  # The user task needs a history: every id-only variant turns it off.
  id_only = {**streaming, "model.history_length": 0, "ssl.user_alpha": 0.0}
  no_item = {"ssl.alpha": 0.0}
  # ssl.alpha keeps its default (or --set's) value.
  item = {"ssl.masking": "cfm"}
  no_user = {"ssl.user_alpha": 0.0}
  user = {"ssl.user_alpha": user_alpha(args)}
  return {
    "plain": {
      **id_only,
      **no_item,
      "model.logq": "none",
      "model.id_dropout": 0.0,
    },
    "logq": {**id_only, **no_item, "model.id_dropout": 0.0},
    "idonly": {**id_only, **no_item},
    "idonly_item": {**id_only, **item},
    "hist": {**streaming, **no_item, **no_user},
    "hist_item": {**streaming, **item, **no_user},
    "hist_user": {**streaming, **no_item, **user},
    "hist_both": {**streaming, **item, **user},
    "hist_item_raw": {
      **streaming,
      **item,
      **no_user,
      "ssl.dependence": "raw_mi",
    },
    "default": {},
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
      raise SystemExit(f"error: --set expects KEY=VALUE, got {item!r}.")
    if key in RESERVED:
      raise SystemExit(f"error: --set {key}: use {RESERVED[key]} instead.")
    overrides[key] = value
  return overrides


def shared_overrides(args: argparse.Namespace) -> dict[str, Any]:
  return {
    "data.cache_dir": args.cache_dir,
    "train.early_stopping_patience": args.patience,
    "train.validation_examples": args.validation_examples,
  }


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
      f"error: {workdir} holds a run with other settings ({e}); use "
      "--fresh or another --workdir_root."
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


# ---------------------------------------------------------------- main


def check_data_dirs(args: argparse.Namespace) -> None:
  for data, path in (("ml1m", args.ml1m_dir), ("ml100k", args.ml100k_dir)):
    if data in args.data and not os.path.isdir(path):
      raise SystemExit(f"error: --data={data}: no directory {path}.")


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
      f"{fmt(recall(m, 'overall', 100))}, held-out users R@10 "
      f"{fmt(recall(m, HELDOUT, 10))}",
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


def _recorded_results(path: str) -> list[dict[str, Any]]:
  """The `results` of a --json file; SystemExit naming it if unreadable."""
  try:
    recorded = _read_json(path)
  except (OSError, ValueError) as e:
    raise SystemExit(f"error: --from_json {path}: {e}") from None
  if recorded is None:
    raise SystemExit(f"error: --from_json {path}: no such file.")
  if not isinstance(recorded, dict) or "results" not in recorded:
    raise SystemExit(
      f"error: --from_json {path}: no `results` list (not a --json file)."
    )
  return recorded["results"]


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
    for result in _recorded_results(path):
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
