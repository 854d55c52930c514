"""Runs the towers over whole tables, and scores a model on a split.

Training, export and evaluation all need "embed the corpus" and "embed the
queries of a split"; this is the one place that does it, in fixed-size
batches of integer ids gathered from the in-memory tables.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping

import numpy as np
import tensorflow as tf

from tfr_ssl import config as config_lib
from tfr_ssl.data import contract, heldout, history, query_side
from tfr_ssl.evaluation import metrics as evaluate
from tfr_ssl.evaluation import pairs as eval_pairs

Tower = Callable[[Mapping[str, tf.Tensor]], tf.Tensor]


# One traced function per tower: validation embeds the corpus every epoch,
# and a fresh tf.function each time would retrace (and warn) every time.
# The towers branch on Python values only, so autograph is off: converting
# their code cost about 3 s of CPU at the first validation of a run.
_TRACED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _traced(tower: Tower):
  if tower not in _TRACED:
    _TRACED[tower] = tf.function(tower, reduce_retracing=True, autograph=False)
  return _TRACED[tower]


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
  call = _traced(tower)
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
  pairs: eval_pairs.EvalPairs | None = None,
  history_length: int = 0,
) -> dict:
  """Full-corpus metrics of a model on one split (see evaluate.py).

  The pairs and exclusions are those of `eval_pairs.select_pairs`: for
  user-to-item the query's positives of the earlier splits are excluded
  (training items on validation, training and validation items on test);
  for item-to-item the seed item itself.

  Args:
    query_tower: Query tower over int ids.
    item_tower: Item tower over int ids.
    prepared: The dataset.
    split: `validation` or `test`.
    eval_config: Cut-offs, head share and batch size.
    task: `user_to_item` (queries are users) or `item_to_item` (the query is
      the previous item).
    max_pairs: Score a seeded sample of whole queries holding about this
      many held-out pairs (0 = all; see eval_pairs.py).
    seed: Seed of that sample.
    item_embeddings: Precomputed corpus embeddings (else computed here).
    pairs: Pairs already selected (e.g. to score a baseline on the same
      ones); replaces split, task, max_pairs and seed.
    history_length: The query tower's history length: users' histories
      at the split (`history.query_table`) are part of its input.

  The slices count the training rows the task trains on
  (`QuerySide.item_train_count`).

  Returns:
    The metrics dict of `evaluate.evaluate_embeddings`, plus `excluded`
    (what the rankings excluded, e.g. `["train", "validation"]`) and
    `protocol` (`eval_pairs.protocol`: the selection rules and counts, and
    the definition of the training counts and of cold items).
  """
  if pairs is None:
    pairs = eval_pairs.select_pairs(prepared, split, task, max_pairs, seed)
  if item_embeddings is None:
    item_embeddings = embed_rows(item_tower, prepared.items)
  side = query_side.query_side(pairs.task)
  table = history.query_table(prepared, pairs.task, pairs.split, history_length)
  query_embeddings = embed_rows(query_tower, table, pairs.queries)
  metrics = evaluate.evaluate_embeddings(
    query_embeddings,
    item_embeddings,
    pairs_query=pairs.query_of_pair,
    pairs_item=pairs.targets,
    exclude=pairs.excluded_items,
    item_train_count=side.item_train_count(prepared),
    ks=eval_config.ks,
    head_fraction=eval_config.head_fraction,
    batch_size=eval_config.batch_size,
    pair_slices=user_slices(prepared, pairs, eval_config),
  )
  metrics["excluded"] = list(pairs.exclusion_sources)
  metrics["protocol"] = eval_pairs.protocol(pairs)
  return metrics


def user_slices(
  prepared: contract.PreparedDataset,
  pairs: eval_pairs.EvalPairs,
  eval_config: config_lib.EvalConfig,
) -> dict[str, np.ndarray] | None:
  """Pair masks by the query user's training interactions (`sparse`:
  at most `eval.sparse_user_max`); None when queries are items."""
  if query_side.query_side(pairs.task).is_item:
    return None
  return history.user_activity(
    prepared, pairs.query_rows, eval_config.sparse_user_max
  )


def evaluate_heldout(
  query_tower: Tower,
  item_embeddings: np.ndarray,
  prepared: contract.PreparedDataset,
  eval_config: config_lib.EvalConfig,
  history_length: int,
  split: str = "test",
) -> dict | None:
  """Held-out users (`heldout.py`): never trained on, each embedded from
  its first 80% of interactions folded in as history (and its features,
  with the id's unknown embedding), the rest scored against the corpus
  with the folded-in items excluded; beside the most-popular ranking of
  the same pairs. For `split="validation"` the first 60% is folded in and
  the next 20% scored. None when the data holds no user out.

  Returns:
    The metrics of `evaluate.evaluate_embeddings` (no item slices' deciles
    needed, they are included), `num_users`, `folded_in`, and
    `most_popular`: the baseline's metrics on the same pairs.
  """
  fold = heldout.fold_in(prepared, history_length, split)
  if fold is None:
    return None
  table = {
    name: values[fold.queries]
    for name, values in query_side.query_side("user_to_item")
    .table(prepared)
    .items()
  }
  if history_length:
    table[history.HISTORY] = fold.histories
  query_embeddings = embed_rows(query_tower, table)
  common = {
    "pairs_query": fold.query_of_pair,
    "pairs_item": fold.targets,
    "exclude": fold.excluded_items,
    "item_train_count": prepared.item_train_count,
    "ks": eval_config.ks,
    "head_fraction": eval_config.head_fraction,
  }
  metrics = evaluate.evaluate_embeddings(
    query_embeddings,
    item_embeddings,
    batch_size=eval_config.batch_size,
    **common,
  )
  metrics["num_users"] = int(fold.queries.shape[0])
  metrics["folded_in"] = fold.folded_in
  metrics["most_popular"] = evaluate.evaluate_most_popular(**common)
  return metrics
