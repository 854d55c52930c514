"""What a popularity prior at scoring time would add, on the VALIDATION split.

A cosine two-tower model trained with logQ correction scores an item by
`cos(q, i)` alone: bounded, and taught (by the correction) to leave an
item's popularity out. This measures, on trained runs, how much of the
gap to most-popular a prior added at scoring time closes:

  score(q, i) = cos(q, i) + w * log(1 + n_i),

`n_i` the item's training count (the counts the slices and most-popular
use), for a grid of weights `w` (w = 0 is the model as it is). The prior
is a dot product with one more coordinate (`[q, 1]` against
`[i, w log(1 + n_i)]`), so a served index could hold it unchanged; this
script only measures, it changes no run.

Each run's kept model is scored with full-corpus exact search on the
whole validation split (the test split is never read), next to
most-popular on the same pairs.

Usage:
  .venv/bin/python bench/popularity_prior.py --run=synthetic:RUN_DIR \
      [--run=ml1m:RUN_DIR ...] [--weights=0,0.01,0.03,0.05,0.1] \
      [--out=bench/results/popularity_prior.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

# bench/ is this script's directory, so its sibling imports as a module.
from ablation_report import mean_sd

import tfr_ssl  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow)
from tfr_ssl import atomic, workflow
from tfr_ssl.data import history, query_side
from tfr_ssl.evaluation import embed
from tfr_ssl.evaluation import metrics as evaluate
from tfr_ssl.evaluation import pairs as eval_pairs
from tfr_ssl.training import train

COLUMNS = ("recall@10", "recall@100", "head", "tail")


def prior_metrics(workdir: str, weights: list[float]) -> dict:
  """Validation metrics of one run per prior weight, and most-popular's."""
  model, prepared, config = train.load_trained_model(workdir)
  pairs = eval_pairs.select_pairs(
    prepared, "validation", config.model.task, 0, config.train.seed
  )
  items = embed.embed_rows(model.item_tower, prepared.items)
  table = history.query_table(
    prepared, pairs.task, pairs.split, train.query_history_length(config)
  )
  queries = embed.embed_rows(model.query_tower, table, pairs.queries)
  count = query_side.query_side(pairs.task).item_train_count(prepared)
  prior = np.log1p(count.astype(np.float64)).astype(np.float32)
  queries = np.concatenate([queries, np.ones((len(queries), 1), np.float32)], 1)
  scored = {}
  for weight in weights:
    scored[weight] = evaluate.evaluate_embeddings(
      queries,
      np.concatenate([items, (weight * prior)[:, np.newaxis]], 1),
      pairs_query=pairs.query_of_pair,
      pairs_item=pairs.targets,
      exclude=pairs.excluded_items,
      item_train_count=count,
      ks=config.eval.ks,
      head_fraction=config.eval.head_fraction,
      batch_size=config.eval.batch_size,
    )
  scored["most popular"] = workflow.most_popular_baseline(
    prepared, pairs, config.eval.ks, config.eval.head_fraction
  )
  return scored


def cells(metrics: dict) -> list[float]:
  return [
    metrics["recall@10"],
    metrics["recall@100"],
    metrics["slices"]["head"]["recall@10"],
    metrics["slices"]["tail"]["recall@100"],
  ]


def table(name: str, runs: list[dict], weights: list[float]) -> list[str]:
  lines = [
    f"### {name} ({len(runs)} run{'s' if len(runs) > 1 else ''})",
    "",
    "| prior weight w | recall@10 | vs w = 0 | vs most popular | recall@100 "
    "| head/recall@10 | tail/recall@100 |",
    "|---|---|---|---|---|---|---|",
  ]
  popular = float(np.mean([r["most popular"]["recall@10"] for r in runs]))
  model = float(np.mean([r[0.0]["recall@10"] for r in runs]))
  for key in [*weights, "most popular"]:
    values = np.array([cells(r[key]) for r in runs])
    r10 = float(values[:, 0].mean())
    lines.append(
      f"| {key} | {mean_sd(values[:, 0])} | {r10 / model - 1:+.1%} | "
      f"{r10 / popular - 1:+.1%} | "
      + " | ".join(mean_sd(values[:, i]) for i in (1, 2, 3))
      + " |"
    )
  return lines


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--run",
    action="append",
    required=True,
    help="NAME:WORKDIR of a trained run; repeat a NAME to average seeds.",
  )
  parser.add_argument("--weights", default="0,0.01,0.02,0.03,0.05,0.08,0.12")
  parser.add_argument("--out", default="")
  args = parser.parse_args(argv)
  weights = [float(w) for w in args.weights.split(",")]
  if 0.0 not in weights:
    weights.insert(0, 0.0)
  started = time.perf_counter()
  by_name: dict[str, list[dict]] = {}
  for spec in args.run:
    name, _, workdir = spec.partition(":")
    if not os.path.isdir(workdir):
      sys.exit(f"error: --run={spec}: {workdir!r} is not a directory")
    by_name.setdefault(name, []).append(prior_metrics(workdir, weights))
  lines = [
    "# A popularity prior at scoring time (validation split)",
    "",
    "Command: `.venv/bin/python bench/popularity_prior.py "
    + " ".join(argv)
    + "`",
    "",
    f"Machine: {platform.machine()}, 2 shared cores; "
    f"{(time.perf_counter() - started) / 60:.1f} min. Score "
    "`cos(q, i) + w log(1 + n_i)`, n_i the item's training count; "
    "full-corpus exact search on the whole validation split, the "
    "query's training items excluded; mean ± sd over the runs given.",
    "",
  ]
  for name, runs in by_name.items():
    lines += [*table(name, runs, weights), ""]
  text = "\n".join(lines)
  print(text)
  if args.out:
    atomic.write_text(args.out, text)


if __name__ == "__main__":
  main(sys.argv[1:])
