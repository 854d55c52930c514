"""Runs the towers over whole tables, and scores a model on a split.

Training, export and evaluation all need "embed the corpus" and "embed the
queries of a split"; this is the one place that does it, in fixed-size
batches of integer ids gathered from the in-memory tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from tfr_ssl import config as config_lib
from tfr_ssl import evaluate
from tfr_ssl.data import contract

Tower = Callable[[Mapping[str, tf.Tensor]], tf.Tensor]


def embed_rows(
  tower: Tower,
  table: Mapping[str, np.ndarray],
  rows: np.ndarray | None = None,
  batch_size: int = 4096,
) -> np.ndarray:
  """Embeds rows of a feature table.

  Args:
    tower: Maps a dict of int id tensors to [B, D] embeddings.
    table: feature name -> int32 [R] or [R, L] ids (a PreparedDataset's
      `items` or `queries`).
    rows: Rows to embed (default: all, in order).
    batch_size: Rows per tower call.

  Returns:
    float32 [len(rows), D].
  """
  if rows is None:
    rows = np.arange(next(iter(table.values())).shape[0])
  call = tf.function(tower, reduce_retracing=True)
  out = []
  for start in range(0, len(rows), batch_size):
    chunk = rows[start : start + batch_size]
    batch = {name: tf.constant(ids[chunk]) for name, ids in table.items()}
    out.append(call(batch).numpy())
  if not out:
    return np.zeros((0, 0), np.float32)
  return np.concatenate(out).astype(np.float32)


def evaluate_model(
  query_tower: Tower,
  item_tower: Tower,
  prepared: contract.PreparedDataset,
  split: str,
  eval_config: config_lib.EvalConfig,
  task: str = "user_to_item",
  max_pairs: int = 0,
  seed: int = 0,
  item_embeddings: np.ndarray | None = None,
) -> dict:
  """Full-corpus metrics of a model on one split (see evaluate.py).

  Args:
    query_tower: Query tower over int ids.
    item_tower: Item tower over int ids.
    prepared: The dataset.
    split: `validation` or `test`.
    eval_config: Cut-offs, head share and batch size.
    task: `user_to_item` (queries are users; items seen in training are
      excluded) or `item_to_item` (the query is the previous item; the seed
      item itself is excluded).
    max_pairs: Score a uniform sample of this many held-out pairs (0 = all).
    seed: Seed of that sample.
    item_embeddings: Precomputed corpus embeddings (else computed here).

  Returns:
    The metrics dict of `evaluate.evaluate_embeddings`.
  """
  pairs = prepared.splits[split]
  pair_rows = np.arange(len(pairs))
  if task == "item_to_item":
    pair_rows = pair_rows[pairs.prev_item_index >= 0]
  if max_pairs and len(pair_rows) > max_pairs:
    rng = np.random.default_rng(seed)
    pair_rows = np.sort(rng.choice(pair_rows, max_pairs, replace=False))
  if item_embeddings is None:
    item_embeddings = embed_rows(item_tower, prepared.items)
  targets = pairs.item_index[pair_rows]
  if task == "item_to_item":
    seeds = pairs.prev_item_index[pair_rows]
    queries, query_of_pair = np.unique(seeds, return_inverse=True)
    query_embeddings = embed_rows(query_tower, prepared.items, queries)
    # Each seed item excludes itself from its own ranking.
    exclude = (np.arange(len(queries) + 1, dtype=np.int64), queries)
  else:
    queries, query_of_pair = np.unique(
      pairs.query_index[pair_rows], return_inverse=True
    )
    query_embeddings = embed_rows(query_tower, prepared.queries, queries)
    exclude = evaluate.select_csr_rows(prepared.train_items_by_query, queries)
  return evaluate.evaluate_embeddings(
    query_embeddings,
    item_embeddings,
    pairs_query=query_of_pair,
    pairs_item=targets,
    exclude=exclude,
    item_train_count=prepared.item_train_count,
    ks=eval_config.ks,
    head_fraction=eval_config.head_fraction,
    batch_size=eval_config.batch_size,
  )
