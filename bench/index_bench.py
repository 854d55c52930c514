"""Recall and throughput of the item index: exact vs ScaNN settings.

On synthetic clustered unit vectors (64 dims) of 20k and 100k items, this
compares in one run:
  * exact brute force (`ExactIndex`, a TFRS BruteForce),
  * TFRS's `ScaNN` layer with its defaults (100 leaves, 10 searched,
    AH without the anisotropic threshold, no reordering),
  * `build_searcher` with the config defaults: the index chosen by
    measuring (`tfr_ssl/index/choice.py`; exact search or the fastest ScaNN
    search whose recall@10 reaches the 0.95 floor on held-out queries),
  * ScaNN with reorder fixed at 10,000 (the default before the measured
    choice) and at 1,000, leaves_to_search measured against the floor.
Recall@k is measured against exact search on 2000 audit queries that the
choice did not see; the throughput is batched (1000 queries per call,
k = 100), best of 5 passes. The choice of the default row (every candidate
it measured) is printed under the table.

Two query sets per corpus: `aligned` queries sit around the item clusters
(what a trained two-tower model produces), `off-cluster` queries around
other centres (a harder case for a partitioned index).

`--workdir` runs the same comparison on a trained run instead: its corpus
embedded by the exported item tower, its tuning and audit queries embedded
by the query tower (`workflow.index_inputs`, as `pipelines.build_index`
draws them). Single-query rates (one query per call) are measured next to
the batched ones.

Usage:
  .venv/bin/python bench/index_bench.py [--sizes 20000,100000]
      [--workdir RUN] [--out bench/results/index.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import tensorflow as tf

from tfr_ssl import atomic, workflow
from tfr_ssl.config import IndexConfig
from tfr_ssl.index import audit as index_audit
from tfr_ssl.index import choice as index_choice
from tfr_ssl.index import search as index
from tfr_ssl.training import train

DIM = 64
TUNE_QUERIES = 1000
AUDIT_QUERIES = 2000
RECALL_FLOOR = IndexConfig().recall_floor


def clustered(num, centres, rng, spread):
  x = centres[rng.integers(0, len(centres), num)]
  x = x + spread * rng.normal(size=x.shape)
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def problem(num_items, seed=0):
  rng = np.random.default_rng(seed)
  num_clusters = max(10, int(np.sqrt(num_items)))
  centres = rng.normal(size=(num_clusters, DIM))
  items = clustered(num_items, centres, rng, spread=0.6)
  queries = {
    "aligned": clustered(TUNE_QUERIES + AUDIT_QUERIES, centres, rng, 0.8),
    "off-cluster": clustered(
      TUNE_QUERIES + AUDIT_QUERIES,
      rng.normal(size=(num_clusters, DIM)),
      rng,
      0.8,
    ),
  }
  return items, queries


SINGLE_QUERIES = 200


def measure(name, searcher, build_seconds, items, audit, settings):
  row = {"method": name, "build_s": build_seconds, "settings": settings}
  for k in (10, 100):
    row[f"recall@{k}"] = index_audit.audit_recall(searcher, audit, items, k)
  rates = index_audit.benchmark_search(searcher, audit, items, k=100, repeats=5)
  row.update(rates)
  single = index_audit.benchmark_search(
    searcher, audit[:SINGLE_QUERIES], items, k=100, batch_size=1, repeats=2
  )
  row["single_qps"] = single["index_qps"]
  row["single_speedup"] = single["speedup"]
  print(row, flush=True)
  return row


def timed(fn):
  start = time.perf_counter()
  value = fn()
  return value, time.perf_counter() - start


def run(num_items):
  items, query_sets = problem(num_items)
  return compare(
    items,
    {
      kind: (queries[:TUNE_QUERIES], queries[TUNE_QUERIES:])
      for kind, queries in query_sets.items()
    },
  )


def run_trained(workdir):
  """The comparison on a trained run's embedded corpus and queries."""
  inputs = workflow.index_inputs(workdir, train.read_config(workdir))
  queries = (inputs.tune_queries, inputs.audit_queries)
  return compare(inputs.item_embeddings, {"trained": queries})


def settings_of(searcher):
  """The settings column: ScaNN's knobs, or exact search."""
  s = searcher.settings()
  if s["kind"] == "exact":
    return "exact search"
  return (
    f"{s['num_leaves']} leaves, {s['num_leaves_to_search']} searched, "
    f"T={s['quantization_threshold']}, "
    f"reorder {s['num_reordering_candidates']}"
  )


def compare(items, query_sets):
  """Every method on `items` for each (tune, audit) query set."""
  num_items = len(items)
  ids = [f"item{i}" for i in range(num_items)]
  rows = []
  for kind, (tune, audit) in query_sets.items():
    out = []
    exact, seconds = timed(
      lambda: index.build_searcher(
        items, ids, IndexConfig(k=100, exact_below=num_items + 1)
      )
    )
    out.append(measure("exact", exact, seconds, items, audit, "-"))

    def tfrs_default():
      layer = index.factorized_top_k.ScaNN(k=100)
      return layer.index(tf.constant(items), tf.constant(ids))

    default, seconds = timed(tfrs_default)
    out.append(
      measure(
        "TFRS ScaNN defaults",
        default,
        seconds,
        items,
        audit,
        "100 leaves, 10 searched, no T, no reorder",
      )
    )
    for name, config in (
      ("default: measured choice", IndexConfig(k=100)),
      ("reorder 10000, leaves measured", IndexConfig(k=100, reorder=10_000)),
      ("reorder 1000, leaves measured", IndexConfig(k=100, reorder=1000)),
    ):
      searcher, seconds = timed(
        lambda c=config, t=tune: index.build_searcher(
          items, ids, c, tune_queries=t
        )
      )
      row = measure(
        name, searcher, seconds, items, audit, settings_of(searcher)
      )
      row["choice"] = searcher.settings()["choice"]
      out.append(row)
    for row in out:
      row.update({"num_items": num_items, "queries": kind})
    rows.extend(out)
  return rows


def choices(rows):
  """The recorded choice of every measured default, as build_index prints
  it."""
  parts = []
  for r in rows:
    if r["method"].startswith("default"):
      parts.append(
        f"{r['num_items']:,} items, {r['queries']} queries:\n\n```\n"
        f"{index_choice.describe(r['choice'])}\n```"
      )
  return "\n\n".join(parts)


def table(rows):
  lines = [
    "| items | queries | method | settings | recall@10 | recall@100 "
    "| queries/s | vs exact | queries/CPU-s | vs exact "
    "| single queries/s | vs exact | build s |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(
      f"| {r['num_items']:,} | {r['queries']} | {r['method']} "
      f"| {r['settings']} | {r['recall@10']:.3f} | {r['recall@100']:.3f} "
      f"| {r['index_qps']:,.0f} | {r['speedup']:.2f}x "
      f"| {r['index_cpu_qps']:,.0f} | {r['cpu_speedup']:.2f}x "
      f"| {r['single_qps']:,.0f} | {r['single_speedup']:.2f}x "
      f"| {r['build_s']:.1f} |"
    )
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="20000,100000")
  parser.add_argument(
    "--workdir", default="", help="A trained, exported run (replaces --sizes)."
  )
  parser.add_argument("--out", default="bench/results/index.md")
  args = parser.parse_args()
  rows = []
  if args.workdir:
    rows.extend(run_trained(args.workdir))
  else:
    for size in (int(s) for s in args.sizes.split(",")):
      rows.extend(run(size))
  command = " ".join(["bench/index_bench.py", *sys.argv[1:]])
  if args.workdir:
    data = (
      "Trained embeddings: the run's corpus through its exported item "
      "tower, tuning and audit queries (users) through its query tower"
    )
  else:
    data = (
      f"Synthetic unit vectors, {DIM} dims, sqrt(N) clusters; "
      f"{TUNE_QUERIES} tuning and {AUDIT_QUERIES} audit queries"
    )
  report = f"""# Index benchmark: recall and throughput

Command: `.venv/bin/python {command}`

Machine: {platform.machine()}, 2 shared cores ({platform.python_version()},
TF {tf.__version__}); throughput figures are noisy (other jobs share the
cores); compare ratios, not absolute rates.

{data}; k = 100; recall
against exact search on the held-out audit queries; the choice (and the
leaves of the fixed-reorder rows) measured on other queries (recall@10
floor {RECALL_FLOOR});
queries/s batched (1000 per call, fewer above 67k items so an exact
search scores at most 2^26 items x queries per call; best of 5 passes) by
wall clock and per
CPU-second of the process (all threads; steadier when other jobs load the
machine); "vs exact" divides by exact search timed in alternating passes of
the same call; single queries/s: one query per call, {SINGLE_QUERIES}
queries, best of 2 passes.

{table(rows)}

## The default's choice

Every candidate `build_searcher` measured for the default row (recall@10
on the half of the tuning queries that the leaves were not tuned on;
batched queries/s, best of alternating passes); `*` marks the winner.

{choices(rows)}
"""
  print(report)
  atomic.write_text(args.out, report)


if __name__ == "__main__":
  main()
