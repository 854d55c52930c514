"""Speed of full-corpus evaluation: evaluate_embeddings vs TFRS metrics.

On random unit vectors of a MovieLens-1M-like size (6,040 queries, 3,706
items, 64 dims, 100k held-out pairs, about 130 training items per query)
and on a 20k-item corpus, this times in one run:
  * `evaluate_embeddings` with training-item exclusion and all slices,
  * `evaluate_embeddings` without exclusion (what the TFRS metric computes),
  * `tfrs.metrics.FactorizedTopK` over a `Streaming` index of the items
    (batches of 128 candidates) and over a `BruteForce` index, top-100,
    fed held-out pairs in batches of 1024 inside a `tf.function` (as in
    `model.evaluate`). The TFRS metric scores every pair, not every
    distinct query, and is slow, so it runs on the first `--tfrs_pairs`
    pairs and its time is scaled linearly to all pairs (stated in the
    table).
Both compute Recall@{10, 50, 100}; on the TFRS subset the recalls of the
two paths are printed side by side as a correctness check.

Usage:
  .venv/bin/python bench/eval_bench.py [--tfrs_pairs 8192]
      [--workdir workdir/demo] [--out bench/results/eval.md]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np
import tensorflow as tf

import tfr_ssl  # noqa: F401  (Keras 2 before TensorFlow is used)
from tfr_ssl import atomic
from tfr_ssl.data import csr as eval_csr
from tfr_ssl.evaluation import metrics as evaluate

DIM = 64
KS = (10, 50, 100)
PAIR_BATCH = 1024


def unit(rng, shape):
  x = rng.normal(size=shape)
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def problem(num_queries, num_items, num_pairs, train_per_query, seed=0):
  rng = np.random.default_rng(seed)
  queries, items = unit(rng, (num_queries, DIM)), unit(rng, (num_items, DIM))
  popularity = 1.0 / np.arange(1, num_items + 1) ** 0.9
  popularity /= popularity.sum()
  pairs_query = rng.integers(0, num_queries, num_pairs)
  pairs_item = rng.choice(num_items, num_pairs, p=popularity)
  lengths = rng.poisson(train_per_query, num_queries)
  indptr = np.concatenate([[0], np.cumsum(lengths)])
  indices = rng.choice(num_items, indptr[-1], p=popularity)
  count = np.bincount(indices, minlength=num_items)
  return queries, items, pairs_query, pairs_item, (indptr, indices), count


def timed(fn, repeats=1):
  best, value = np.inf, None
  for _ in range(repeats):
    start = time.perf_counter()
    value = fn()
    best = min(best, time.perf_counter() - start)
  return value, best


def tfrs_recall(layer_name, queries, items, pairs_query, pairs_item):
  """Recall@KS of TFRS FactorizedTopK over the given pairs, and its time."""
  # tensorflow_recommenders is imported after tfr_ssl selected Keras 2.
  import tensorflow_recommenders as tfrs

  top_k = tfrs.layers.factorized_top_k
  if layer_name == "Streaming":
    candidates = top_k.Streaming(k=max(KS)).index_from_dataset(
      tf.data.Dataset.from_tensor_slices(items).batch(128)
    )
  else:
    candidates = top_k.BruteForce(k=max(KS)).index(tf.constant(items))
  metric = tfrs.metrics.FactorizedTopK(candidates=candidates, ks=KS)

  @tf.function
  def update(query_embeddings, item_embeddings):
    metric.update_state(query_embeddings, item_embeddings)

  batches = [
    (
      tf.constant(queries[pairs_query[i : i + PAIR_BATCH]]),
      tf.constant(items[pairs_item[i : i + PAIR_BATCH]]),
    )
    for i in range(0, len(pairs_query), PAIR_BATCH)
  ]
  update(*batches[0])  # trace once, outside the timing
  metric.reset_states()
  start = time.perf_counter()
  for batch in batches:
    update(*batch)
  seconds = time.perf_counter() - start
  return [float(r) for r in metric.result()], seconds


def trained_problem(workdir):
  """The test split of a trained run: its real embeddings, pairs, exclusion."""
  from tfr_ssl.evaluation import embed
  from tfr_ssl.training import train

  model, prepared, _ = train.load_trained_model(workdir)
  test = prepared.splits["test"]
  users, pairs_query = np.unique(test.query_index, return_inverse=True)
  queries = embed.embed_rows(model.query_tower, prepared.queries, users)
  items = embed.embed_rows(model.item_tower, prepared.items)
  exclude = eval_csr.select_csr_rows(prepared.train_items_by_query, users)
  return (
    queries,
    items,
    pairs_query,
    test.item_index,
    exclude,
    prepared.item_train_count,
  )


def run(name, arrays, tfrs_pairs):
  queries, items, pairs_query, pairs_item, exclude, count = arrays
  num_queries, num_items, num_pairs = len(queries), len(items), len(pairs_item)
  ours = {}
  # Warm-up traces the scoring function once.
  evaluate.evaluate_embeddings(
    queries, items, pairs_query[:10], pairs_item[:10]
  )
  full, ours["with exclusion + slices"] = timed(
    lambda: evaluate.evaluate_embeddings(
      queries,
      items,
      pairs_query,
      pairs_item,
      exclude=exclude,
      item_train_count=count,
      ks=KS,
    ),
    repeats=3,
  )
  _, ours["no exclusion"] = timed(
    lambda: evaluate.evaluate_embeddings(
      queries, items, pairs_query, pairs_item, ks=KS
    ),
    repeats=3,
  )
  subset = slice(0, tfrs_pairs)
  check = evaluate.evaluate_embeddings(
    queries, items, pairs_query[subset], pairs_item[subset], ks=KS
  )
  theirs, agreement = {}, {}
  for layer in ("Streaming", "BruteForce"):
    recalls, seconds = tfrs_recall(
      layer, queries, items, pairs_query[subset], pairs_item[subset]
    )
    theirs[layer] = seconds * num_pairs / tfrs_pairs
    agreement[layer] = recalls
    print(name, layer, seconds, recalls, flush=True)
  print(name, ours, flush=True)
  return {
    "name": name,
    "shape": f"{name}: {num_queries:,} queries x {num_items:,} items x "
    f"{items.shape[1]} dims, {num_pairs:,} pairs",
    "ours": ours,
    "theirs": theirs,
    "tfrs_pairs": tfrs_pairs,
    "ours_subset": [check[f"recall@{k}"] for k in KS],
    "agreement": agreement,
    "recall": [full[f"recall@{k}"] for k in KS],
  }


def report(results, command):
  lines = [
    "| corpus | method | seconds for all pairs | vs evaluate_embeddings "
    "(no exclusion) |",
    "|---|---|---|---|",
  ]
  for r in results:
    base = r["ours"]["no exclusion"]
    for method, seconds in r["ours"].items():
      lines.append(
        f"| {r['shape']} | evaluate_embeddings, {method} | {seconds:.2f} "
        f"| {seconds / base:.2f}x |"
      )
    for layer, seconds in r["theirs"].items():
      lines.append(
        f"| {r['shape']} | FactorizedTopK + {layer} (timed on "
        f"{r['tfrs_pairs']:,} pairs, scaled) | {seconds:.1f} "
        f"| {seconds / base:.0f}x |"
      )
  checks = [
    "| corpus | path | recall@10 | recall@50 | recall@100 |",
    "|---|---|---|---|---|",
  ]
  for r in results:
    rows = {"evaluate_embeddings": r["ours_subset"], **r["agreement"]}
    for path, recalls in rows.items():
      checks.append(
        f"| {r['name']} | {path} | "
        + " | ".join(f"{x:.4f}" for x in recalls)
        + " |"
      )
  return f"""# Evaluation benchmark: evaluate_embeddings vs TFRS FactorizedTopK

Command: `.venv/bin/python {command}`

Machine: {platform.machine()}, 2 cores shared with other jobs
({platform.python_version()}, TF {tf.__version__}); times are wall clock,
evaluate_embeddings best of 3 after a warm-up trace.

The first two corpora are random unit vectors (recall is near chance; only
time matters there), Zipf item popularity, about 130 training items per
query for the exclusion; "trained" rows are the test split of a trained run
(`--workdir`), with its real embeddings and training items.
evaluate_embeddings scores each distinct query once and reads every K off
one top-100; FactorizedTopK scores every held-out pair (batches of
{PAIR_BATCH} inside a tf.function) and cannot exclude training items. The
TFRS rows were timed on the first pairs only and scaled linearly to all
pairs.

{chr(10).join(lines)}

Correctness check on the TFRS subset (no exclusion, same pairs):

{chr(10).join(checks)}

A difference of a pair or two comes from TFRS's score-based check, not from
evaluate_embeddings: FactorizedTopK recomputes the positive's score with an
element-wise sum, whose rounding can land just below the same item's matmul
score inside the top-k list, so an item ranked inside the top K counts as a
miss there (seen on such a pair: rank 9, matmul score 0.34295917, recomputed
0.3429591).
"""


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--tfrs_pairs", type=int, default=8192)
  parser.add_argument("--out", default="bench/results/eval.md")
  parser.add_argument(
    "--workdir",
    action="append",
    default=[],
    help="Also time a trained run's test split (repeatable).",
  )
  args = parser.parse_args()
  results = [
    run("ml-1m-like", problem(6040, 3706, 100_000, 130), args.tfrs_pairs),
    run("20k items", problem(6040, 20_000, 100_000, 130), args.tfrs_pairs),
  ]
  for workdir in args.workdir:
    results.append(
      run(f"trained {workdir}", trained_problem(workdir), args.tfrs_pairs)
    )
  command = " ".join(["bench/eval_bench.py", *sys.argv[1:]])
  text = report(results, command)
  print(text)
  atomic.write_text(args.out, text)


if __name__ == "__main__":
  main()
