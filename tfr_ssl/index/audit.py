"""How good and how fast an index is: recall against exact search, speed.

`audit_recall` compares an index's top-k with exact search (a matmul and
`tf.math.top_k`) on sample queries; `benchmark_search` measures queries per
second of both. Both accept our indexes (`index.py`) and plain TFRS top-k
layers built without a query model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

factorized_top_k = tfrs.layers.factorized_top_k

_log = logging.getLogger(__name__)


def _search(searcher, embeddings: tf.Tensor, k: int):
  """(scores, ids) of embeddings from our indexes or plain TFRS layers."""
  if hasattr(searcher, "search"):
    return searcher.search(embeddings, k)
  if getattr(searcher, "query_model", None) is not None:
    raise ValueError(
      "This searcher maps raw features through its query model; audit it "
      "with a searcher built without one."
    )
  return searcher(embeddings, k=k)


def _identifiers(searcher, num_items: int) -> np.ndarray:
  """Identifier of every corpus row (TFRS layers keep them in _identifiers)."""
  ids = getattr(searcher, "_identifiers", None)
  return np.arange(num_items) if ids is None else ids.numpy()


# Exact search scores a [queries, items] matrix: calls take at most this many
# scores (256 MiB of float32), so a million-item corpus is searched 67
# queries at a time instead of holding a 4 GiB matrix for 1000 queries.
_SCORES_PER_CALL = 1 << 26


def queries_per_call(num_items: int, wanted: int = 1000) -> int:
  """Queries per exact-search call that keep its score matrix bounded."""
  return max(1, min(wanted, _SCORES_PER_CALL // max(num_items, 1)))


def query_batches(
  queries: np.ndarray, num_items: int, batch_size: int = 1000
) -> list[tf.Tensor]:
  """Query batches of `batch_size`, fewer per batch for a corpus so large
  that an exact search's score matrix would exceed `_SCORES_PER_CALL`."""
  queries = np.asarray(queries, np.float32)
  step = queries_per_call(num_items, batch_size)
  return [
    tf.constant(queries[i : i + step]) for i in range(0, queries.shape[0], step)
  ]


def exact_top_rows(queries: tf.Tensor, items: tf.Tensor, k: int):
  """Exact top-k (scores, corpus rows) of a query batch: a matmul, top_k."""
  return tf.math.top_k(tf.matmul(queries, items, transpose_b=True), k=k)


def _in_chunks(fn, queries: np.ndarray, num_items: int) -> np.ndarray:
  """`fn(chunk)` ([n, k] ids) over query chunks, concatenated."""
  step = queries_per_call(num_items, len(queries))
  return np.concatenate(
    [
      fn(tf.constant(queries[i : i + step])).numpy()
      for i in range(0, len(queries), step)
    ]
  )


def exact_ids(searcher, queries: np.ndarray, items: np.ndarray, k: int):
  """Identifiers of the exact top-k of every query, [Q, k]."""
  items_t = tf.constant(items)
  rows = _in_chunks(
    lambda q: exact_top_rows(q, items_t, k)[1], queries, items.shape[0]
  )
  return _identifiers(searcher, items.shape[0])[rows]


def recall_against(found: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
  """Mean over queries of |found top-k ∩ exact top-k| / k."""
  hits = [
    len(set(a.tolist()) & set(b.tolist()))
    for a, b in zip(found[:, :k], exact_ids, strict=True)
  ]
  return float(np.mean(hits) / k)


def audit_recall(
  searcher: factorized_top_k.TopK,
  query_embeddings: np.ndarray,
  item_embeddings: np.ndarray,
  k: int,
  num_queries: int | None = None,
  seed: int = 0,
) -> float:
  """Recall@k of the index against exact search on (sampled) queries.

  Recall of one query = |index top-k ∩ exact top-k| / k, averaged. Exact ties
  at the k-th score may make a correct index look slightly imperfect.

  Args:
    searcher: The index (from `build_searcher`, or any TFRS top-k layer
      without a query model).
    query_embeddings: float [Q, D].
    item_embeddings: float [N, D], the embeddings the index was built on.
    k: Cut-off (at most N).
    num_queries: Sample this many queries without replacement (None = all).
    seed: Seed of the sample.

  Returns:
    The mean recall in [0, 1].
  """
  queries = sample_queries(query_embeddings, num_queries, seed)
  items = np.asarray(item_embeddings, np.float32)
  k = min(k, items.shape[0])
  exact = exact_ids(searcher, queries, items, k)
  # In chunks too: an exact index (a TFRS BruteForce) scores every item.
  found = _in_chunks(lambda q: _search(searcher, q, k)[1], queries, len(items))
  recall = recall_against(found, exact, k)
  _log.info("Index recall@%d against exact search: %.4f", k, recall)
  return recall


def benchmark_search(
  searcher: factorized_top_k.TopK,
  query_embeddings: np.ndarray,
  item_embeddings: np.ndarray,
  k: int = 100,
  batch_size: int = 1000,
  repeats: int = 3,
) -> dict[str, float]:
  """Queries per second of the index and of exact search, batched.

  Batches hold `batch_size` queries, fewer for a corpus so large that an
  exact search's score matrix would exceed `_SCORES_PER_CALL`.

  Both run as `tf.function`s over the same query batches, in alternating
  passes so that both see the same machine load; the best of `repeats`
  passes counts (after one warm-up pass that traces). Wall-clock rates
  suffer from other jobs on the machine; the rates per CPU-second (all
  threads of this process) measure the work and suffer less.

  Returns:
    `index_qps`, `exact_qps`, `speedup` (index over exact, wall clock) and
    `index_cpu_qps`, `exact_cpu_qps`, `cpu_speedup` (per CPU-second), and
    the `batch_size` used.
  """
  queries = np.asarray(query_embeddings, np.float32)
  items = tf.constant(np.asarray(item_embeddings, np.float32))
  k = min(k, int(items.shape[0]))
  batch_size = queries_per_call(int(items.shape[0]), batch_size)
  batches = query_batches(queries, int(items.shape[0]), batch_size)
  best = best_pass_seconds(
    {
      "index": tf.function(lambda q: _search(searcher, q, k)),
      "exact": tf.function(lambda q: exact_top_rows(q, items, k)),
    },
    batches,
    repeats,
  )
  wall = {name: queries.shape[0] / s.wall for name, s in best.items()}
  cpu = {name: queries.shape[0] / s.cpu for name, s in best.items()}
  return {
    "index_qps": wall["index"],
    "exact_qps": wall["exact"],
    "speedup": wall["index"] / wall["exact"],
    "index_cpu_qps": cpu["index"],
    "exact_cpu_qps": cpu["exact"],
    "cpu_speedup": cpu["index"] / cpu["exact"],
    "batch_size": batch_size,
  }


class PassSeconds(NamedTuple):
  """The best pass of one searcher: wall-clock and CPU seconds."""

  wall: float
  cpu: float


# What `best_pass_seconds` is: functions of a query batch, the batches and
# the passes counted -> the best pass of each function. The index choice
# (`choice.py`) takes another one in tests, so that which candidate is
# fastest does not depend on the machine.
Timer = Callable[
  [Mapping[Hashable, Callable[[tf.Tensor], Any]], Sequence[tf.Tensor], int],
  dict[Hashable, PassSeconds],
]


def best_pass_seconds(
  functions: Mapping[Hashable, Callable[[tf.Tensor], Any]],
  batches: Sequence[tf.Tensor],
  passes: int,
) -> dict[Hashable, PassSeconds]:
  """The best of `passes` timed passes of each function over the batches.

  Passes alternate between the functions (pass 1 of each, then pass 2 of
  each, ...), so a burst of load from another job hits them all alike
  instead of one; the minimum of each is what it costs when undisturbed.
  One untimed pass first traces every `tf.function`. CPU seconds count
  all threads of this process, so they suffer less from other processes
  than wall-clock seconds do.

  Args:
    functions: Name -> function of one query batch returning a tuple
      whose first element is a tensor (searches return (scores, ids)).
    batches: The query batches of one pass.
    passes: Timed passes (at least 1).

  Returns:
    Name -> best `PassSeconds` (wall and CPU minimised separately).
  """
  best = {name: PassSeconds(math.inf, math.inf) for name in functions}
  for attempt in range(passes + 1):
    for name, fn in functions.items():
      wall, cpu = time.perf_counter(), time.process_time()
      for batch in batches:
        fn(batch)[0].numpy()
      if attempt:  # the first pass traces
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best[name] = PassSeconds(
          min(best[name].wall, wall), min(best[name].cpu, cpu)
        )
  return best


def sample_queries(embeddings, num_queries, seed):
  embeddings = np.asarray(embeddings, np.float32)
  if num_queries is None or num_queries >= embeddings.shape[0]:
    return embeddings
  rng = np.random.default_rng(seed)
  return embeddings[rng.choice(embeddings.shape[0], num_queries, False)]
