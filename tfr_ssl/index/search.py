"""The item index: exact or ScaNN search, built for a corpus.

`build_searcher` indexes the corpus with exact search (`tfrs.layers.
factorized_top_k.BruteForce`) or ScaNN, chosen by measuring on the corpus
at hand (`choice.py`): given sample queries, it keeps the fastest ScaNN
search whose recall@10 against exact search reaches
`IndexConfig.recall_floor` on held-out queries, and exact search when no
ScaNN search is both that accurate and clearly faster. Corpora below
`IndexConfig.exact_below` items use exact search without measuring.

TFRS's own `ScaNN` layer builds `tree + score_ah` with the anisotropic
quantization threshold left unset (plain reconstruction loss) and no exact
reordering unless asked; it cannot set the threshold at all. `ScaNNIndex`
therefore builds the searcher with `scann_ops.builder` directly:

  * tree: about sqrt(N) leaves, the balance between centroid scoring
    (grows with leaves) and leaf scanning (grows with N / leaves);
  * leaves_to_search: measured (`tuning.py`); without sample queries 20%
    of the leaves. Either way at least 20 corpus points per requested
    neighbour are searched;
  * score_ah with 2 dimensions per 4-bit block and the anisotropic threshold
    T (0.2 is ScaNN's suggestion for unit-norm data): the quantizer
    penalises the error parallel to the datapoint, the part that changes
    inner products, so top scores are ranked better;
  * reorder: the best quantized candidates are re-scored exactly, so
    returned scores are exact inner products. How many is measured too;
    without sample queries 10 x k (at 20k-1M items 1,000 candidates for
    k = 100 kept the recall of 10,000 at up to 5x the throughput,
    bench/results/index.md and index_1m.md).

leaves_to_search and the reordering depth are search-time settings of one
tree, so the measurement builds the tree once. The audit against exact
search and the speed benchmark are `audit.py`. The served model (query
tower + index) is written and loaded by `serving/retrieval.py`.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from tfr_ssl.config import IndexConfig
from tfr_ssl.index import audit as index_audit
from tfr_ssl.index import choice as index_choice
from tfr_ssl.index import tuning as index_tuning

factorized_top_k = tfrs.layers.factorized_top_k

# Without sample queries: the share of the leaves searched, and the
# reordering depth as a multiple of k.
DEFAULT_LEAVES_FRACTION = 0.2
DEFAULT_REORDER_PER_RESULT = 10


class ExactIndex(factorized_top_k.BruteForce):
  """Exact top-k: `tfrs` BruteForce plus the index interface used here.

  Args:
    query_model: Optional model mapping raw query features to embeddings.
    k: Default number of neighbours.
    name: Layer name.

  Example:
    >>> index = ExactIndex(k=10).index(item_embeddings, item_ids)
    >>> scores, ids = index.search(query_embeddings, 10)
  """

  def search(self, embeddings: tf.Tensor, k: int | tf.Tensor):
    """Top-k (scores, identifiers) of query *embeddings* (no query model)."""
    scores = tf.matmul(embeddings, self._candidates, transpose_b=True)
    values, rows = tf.math.top_k(scores, k=k)
    return values, tf.gather(self._identifiers, rows)

  @property
  def identifiers(self) -> np.ndarray:
    return self._identifiers.numpy()

  @property
  def num_items(self) -> int:
    return int(self._candidates.shape[0])

  @property
  def dim(self) -> int:
    return int(self._candidates.shape[1])

  # How the index was chosen (`choice.Choice`), set by `build_searcher`.
  choice: index_choice.Choice | None = None

  def settings(self) -> dict[str, Any]:
    return {
      "kind": "exact",
      "num_items": self.num_items,
      **_choice_record(self.choice),
    }

  def get_config(self) -> dict[str, Any]:
    return {"k": self._k, "name": self.name}

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> ExactIndex:
    return cls(**config)


class ScaNNIndex(factorized_top_k.TopK):
  """ScaNN tree + anisotropic AH + exact reordering, as a TFRS top-k layer.

  Unlike `tfrs.layers.factorized_top_k.ScaNN`, this sets the anisotropic
  quantization threshold and always reorders. The searcher lives in a
  `ScannState` module, so the layer saves in a SavedModel (with
  `namespace_whitelist=["Scann"]`) and loads after `import scann`.

  Args:
    query_model: Optional model mapping raw query features to embeddings.
    k: Default number of neighbours.
    num_leaves: Leaves of the partitioning tree.
    num_leaves_to_search: Leaves scored exhaustively per query.
    dimensions_per_block: Dimensions per 4-bit AH block (2 = accurate).
    quantization_threshold: Anisotropic threshold T; NaN turns it off.
    num_reordering_candidates: AH candidates re-scored exactly.
    training_iterations: k-means iterations of the tree.
    parallelize_batch_searches: Search a batch of queries on a thread pool.
    name: Layer name.

  Example:
    >>> index = ScaNNIndex(k=100, num_leaves=300, num_leaves_to_search=30,
    ...                    num_reordering_candidates=1000)
    >>> index.index(item_embeddings, item_ids)
    >>> scores, ids = index.search(query_embeddings, 100)
  """

  def __init__(
    self,
    query_model: tf.keras.Model | None = None,
    k: int = 10,
    num_leaves: int = 100,
    num_leaves_to_search: int = 10,
    dimensions_per_block: int = 2,
    quantization_threshold: float = 0.2,
    num_reordering_candidates: int = 1000,
    training_iterations: int = 12,
    parallelize_batch_searches: bool = True,
    name: str | None = None,
  ):
    super().__init__(k=k, name=name)
    self.query_model = query_model
    self._num_leaves = num_leaves
    self._num_leaves_to_search = num_leaves_to_search
    # How the settings were chosen (`choice.Choice`), set by build_searcher.
    self.choice: index_choice.Choice | None = None
    self._dimensions_per_block = dimensions_per_block
    self._quantization_threshold = quantization_threshold
    self._num_reordering_candidates = num_reordering_candidates
    self._training_iterations = training_iterations
    self._parallelize = parallelize_batch_searches
    self._serialized_searcher = None
    self._identifiers = None
    self._shape = None

  def index(
    self, candidates: tf.Tensor, identifiers: tf.Tensor | None = None
  ) -> ScaNNIndex:
    from scann.scann_ops.py import scann_ops

    candidates = tf.convert_to_tensor(candidates, tf.float32)
    if len(candidates.shape) != 2:
      raise ValueError(f"Candidates must be 2-D, got {candidates.shape}.")
    num_items = int(candidates.shape[0])
    if identifiers is None:
      identifiers = tf.range(num_items)
    identifiers = tf.convert_to_tensor(identifiers)
    if identifiers.shape[0] != num_items:
      raise ValueError(
        f"{num_items} candidates but {identifiers.shape[0]} identifiers."
      )
    builder = (
      scann_ops.builder(candidates, self._k, "dot_product")
      .tree(
        num_leaves=self._num_leaves,
        num_leaves_to_search=self._num_leaves_to_search,
        training_sample_size=num_items,
        training_iterations=self._training_iterations,
      )
      .score_ah(
        self._dimensions_per_block,
        anisotropic_quantization_threshold=self._quantization_threshold,
      )
      .reorder(self._num_reordering_candidates)
    )
    # A unique shared name keeps two indexes in one process apart.
    searcher = builder.build(shared_name=f"{self.name}/{uuid.uuid4()}")
    self._serialized_searcher = searcher.serialize_to_module()
    self._identifiers = self.add_weight(
      name="identifiers",
      shape=identifiers.shape,
      dtype=identifiers.dtype,
      initializer=tf.keras.initializers.Constant(
        tf.zeros((), identifiers.dtype)
      ),
      trainable=False,
    )
    self._identifiers.assign(identifiers)
    self._shape = (num_items, int(candidates.shape[1]))
    self._reset_tf_function_cache()
    return self

  def search(
    self,
    embeddings: tf.Tensor,
    k: int | tf.Tensor,
    leaves_to_search: int | None = None,
    reorder: int | None = None,
  ):
    """Top-k (scores, identifiers) of query *embeddings* (no query model).

    Rows with fewer than k candidates in the searched leaves are padded with
    NaN scores (and row 0's identifier); `save_retrieval_model` turns those
    into -inf and "".

    Args:
      embeddings: float [B, D] query embeddings.
      k: Results per query.
      leaves_to_search: Overrides the layer's leaves_to_search for this
        call (ScaNN's search-time setting; the tree is not rebuilt).
      reorder: Overrides the layer's reordering depth for this call.
    """
    from scann.scann_ops.py import scann_ops

    if self._serialized_searcher is None:
      raise ValueError("Call `index` before searching.")
    searcher = scann_ops.searcher_from_module(self._serialized_searcher)
    if leaves_to_search is None:
      leaves_to_search = self._num_leaves_to_search
    if reorder is None:
      reorder = self._num_reordering_candidates
    # Reordering must see at least the k results it is asked for.
    pre_reorder = tf.maximum(k, reorder)
    search = (
      searcher.search_batched_parallel
      if self._parallelize
      else searcher.search_batched
    )
    result = search(
      embeddings,
      final_num_neighbors=k,
      pre_reorder_num_neighbors=pre_reorder,
      leaves_to_search=leaves_to_search,
    )
    return result.distances, tf.gather(self._identifiers, result.indices)

  def call(self, queries, k: int | None = None):
    k = k if k is not None else self._k
    if self.query_model is not None:
      queries = self.query_model(queries)
    return self.search(queries, k)

  def is_exact(self) -> bool:
    return False

  @property
  def num_leaves_to_search(self) -> int:
    return self._num_leaves_to_search

  @num_leaves_to_search.setter
  def num_leaves_to_search(self, value: int) -> None:
    """Changes the leaves searched per query without rebuilding the tree."""
    self._num_leaves_to_search = int(min(max(1, value), self._num_leaves))
    self._reset_tf_function_cache()

  @property
  def num_reordering_candidates(self) -> int:
    return self._num_reordering_candidates

  @num_reordering_candidates.setter
  def num_reordering_candidates(self, value: int) -> None:
    """Changes the candidates re-scored exactly (a search-time setting)."""
    self._num_reordering_candidates = int(max(1, value))
    self._reset_tf_function_cache()

  @property
  def identifiers(self) -> np.ndarray:
    return self._identifiers.numpy()

  @property
  def num_items(self) -> int:
    return self._shape[0]

  @property
  def dim(self) -> int:
    return self._shape[1]

  def settings(self) -> dict[str, Any]:
    return {
      "kind": "scann",
      "num_items": self.num_items,
      "num_leaves": self._num_leaves,
      "num_leaves_to_search": self._num_leaves_to_search,
      "dimensions_per_block": self._dimensions_per_block,
      "quantization_threshold": self._quantization_threshold,
      "num_reordering_candidates": self._num_reordering_candidates,
      "training_iterations": self._training_iterations,
      **_choice_record(self.choice),
    }

  def get_config(self) -> dict[str, Any]:
    return {
      "k": self._k,
      "num_leaves": self._num_leaves,
      "num_leaves_to_search": self._num_leaves_to_search,
      "dimensions_per_block": self._dimensions_per_block,
      "quantization_threshold": self._quantization_threshold,
      "num_reordering_candidates": self._num_reordering_candidates,
      "training_iterations": self._training_iterations,
      "parallelize_batch_searches": self._parallelize,
      "name": self.name,
    }

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> ScaNNIndex:
    return cls(**config)


def _choice_record(choice: index_choice.Choice | None) -> dict[str, Any]:
  """The `choice` entry of an index's settings (none if it has no record)."""
  return {} if choice is None else {"choice": choice.to_dict()}


def scann_settings(num_items: int, config: IndexConfig) -> dict[str, Any]:
  """ScaNN constructor arguments for a corpus of `num_items` (see module doc).

  These are the settings used without sample queries; with them,
  `build_searcher` measures the ones left at 0 on the built tree.

  Args:
    num_items: Corpus size N.
    config: Index settings; zeros ask for the automatic choice.

  Returns:
    Keyword arguments of `ScaNNIndex` (without `query_model`).
  """
  num_leaves = config.num_leaves or max(1, round(math.sqrt(num_items)))
  num_leaves = min(num_leaves, num_items)
  k = min(config.k, num_items)
  leaves_to_search = config.leaves_to_search
  if not leaves_to_search:
    leaves_to_search = max(
      math.ceil(DEFAULT_LEAVES_FRACTION * num_leaves),
      index_tuning.min_leaves(num_items, num_leaves, k),
    )
  reorder = config.reorder
  if not reorder:
    # The deepest tried value within 10 x k (k itself on a tiny corpus).
    ladder = index_tuning.reorder_ladder(num_items, k) or [k]
    reorder = max(
      [r for r in ladder if r <= DEFAULT_REORDER_PER_RESULT * k] or ladder[:1]
    )
  return {
    "k": k,
    "num_leaves": num_leaves,
    "num_leaves_to_search": min(max(1, leaves_to_search), num_leaves),
    "dimensions_per_block": 2,
    "quantization_threshold": config.quantization_threshold,
    "num_reordering_candidates": min(max(reorder, k), num_items),
  }


def use_exact_search(num_items: int, config: IndexConfig) -> bool:
  """Whether exact search is used without measuring anything.

  Below `config.exact_below` items a matmul is fast enough and exact.
  Above it, ScaNN pays off only while the candidates it re-scores exactly
  are a small part of the corpus: re-scoring half of it or more costs
  about as much as scoring all of it, plus the tree search on top. That is
  the explicit `config.reorder` or, when it is measured (0), the shallowest
  depth that would be tried (k).
  """
  reorder = config.reorder or min(config.k, num_items)
  return num_items < config.exact_below or 2 * reorder >= num_items


def build_searcher(
  item_embeddings: np.ndarray,
  item_ids: Sequence[str] | np.ndarray,
  config: IndexConfig,
  query_model: tf.keras.Model | None = None,
  tune_queries: np.ndarray | None = None,
  timer: index_audit.Timer = index_audit.best_pass_seconds,
) -> ExactIndex | ScaNNIndex:
  """Indexes the corpus with exact search or ScaNN, chosen by measuring.

  Exact search when `use_exact_search`; otherwise a ScaNN tree is built
  and, given `tune_queries`, the settings left at 0 in `config`
  (leaves_to_search, reorder) are measured on them against
  `config.recall_floor`, exact search competing unless a ScaNN setting
  was given explicitly (`choice.choose`). Without queries, the defaults of
  `scann_settings`. How the index was chosen is in its `choice` (and its
  `settings()`).

  Args:
    item_embeddings: float [N, D], item tower outputs by corpus row.
    item_ids: N raw item ids (strings), returned by searches.
    config: Index settings.
    query_model: Optional model from raw query features to embeddings; the
      returned layer then accepts raw features like any TFRS top-k layer.
    tune_queries: Optional float [Q, D] sample of query embeddings; up to
      `config.audit_queries` of them are used, half to tune and half to
      measure the candidates. Audit the result on other queries
      (`audit.audit_recall`).
    timer: Times the candidates' searches (tests pass a fake one).

  Returns:
    An `ExactIndex` (a TFRS BruteForce) or a `ScaNNIndex`, already indexed.

  Raises:
    ValueError: mismatched or malformed embeddings and ids.
  """
  embeddings = np.asarray(item_embeddings, np.float32)
  if embeddings.ndim != 2 or embeddings.shape[0] == 0:
    raise ValueError(
      f"item_embeddings must be a non-empty [N, D] matrix, got shape "
      f"{embeddings.shape}."
    )
  if not np.all(np.isfinite(embeddings)):
    raise ValueError("item_embeddings contains NaN or infinite values.")
  ids = np.asarray([str(i) for i in item_ids], dtype=object)
  if ids.shape[0] != embeddings.shape[0]:
    raise ValueError(
      f"{embeddings.shape[0]} item embeddings but {ids.shape[0]} item ids."
    )
  unique, counts = np.unique(ids.astype(str), return_counts=True)
  if unique.shape[0] != ids.shape[0]:
    raise ValueError(
      f"item_ids must be unique; {unique[counts > 1][:5].tolist()} repeat."
    )
  num_items = embeddings.shape[0]
  k = min(config.k, num_items)
  ids_t = tf.constant(ids, tf.string)

  def exact(record: index_choice.Choice) -> ExactIndex:
    layer = ExactIndex(query_model=query_model, k=k)
    layer.index(tf.constant(embeddings), ids_t)
    layer.choice = record
    return layer

  if use_exact_search(num_items, config):
    if num_items < config.exact_below:
      why = (
        f"{num_items:,} items, fewer than exact_below ({config.exact_below:,})"
      )
    else:
      why = (
        f"re-scoring {config.reorder or k:,} candidates is half of the "
        f"{num_items:,} items or more"
      )
    return exact(
      index_choice.fixed(
        index_choice.EXACT,
        f"exact search without measuring: {why}",
        config.recall_floor,
        k,
      )
    )
  layer = ScaNNIndex(
    query_model=query_model, **scann_settings(num_items, config)
  )
  layer.index(tf.constant(embeddings), ids_t)
  explicit = index_choice.explicit_settings(config)
  measured = config.leaves_to_search == 0 or config.reorder == 0
  queries = None
  if tune_queries is not None and measured:
    # Seed 1: a default audit (seed 0) of the same array samples others.
    queries = index_audit.sample_queries(
      tune_queries, config.audit_queries, seed=1
    )
  if queries is None or queries.shape[0] < 2:
    if not measured:
      why = "num_leaves, leaves_to_search and reorder set explicitly"
    else:
      why = "no sample queries to measure on: the defaults"
    layer.choice = index_choice.fixed(
      index_choice.SCANN, why, config.recall_floor, k
    )
    return layer
  record = index_choice.choose(
    layer,
    embeddings,
    queries,
    k,
    config.recall_floor,
    # Explicit values as the layer clamped them (0 = measured).
    leaves_to_search=config.leaves_to_search and layer.num_leaves_to_search,
    reorder=config.reorder and layer.num_reordering_candidates,
    explicit=explicit,
    timer=timer,
  )
  if record.kind == index_choice.EXACT:
    return exact(record)
  winner = record.candidates[record.winner]
  layer.num_leaves_to_search = winner.leaves_to_search
  layer.num_reordering_candidates = winner.reorder
  layer.choice = record
  return layer
