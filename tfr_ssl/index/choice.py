"""Exact search or which ScaNN search: chosen by measuring on the corpus.

`build_searcher` (search.py) builds one ScaNN tree and hands it here with
sample query embeddings. The queries are split in two halves:

  1. tuning: for each reordering depth of `tuning.reorder_ladder`, the
     fewest leaves_to_search whose recall@10 against exact search reaches
     `IndexConfig.recall_floor` (`tuning.fewest_leaves`). Each depth with
     its leaves is one candidate.
  2. held out: every candidate's recall@10 is measured again on queries the
     tuning did not see, and every candidate and exact search are timed on
     them: queries per second of batched searches, the best of 3 passes
     taken in alternating order (`audit.best_pass_seconds`), so a burst of
     load from another process slows one pass of every candidate rather
     than all passes of one.

The winner is the fastest candidate whose held-out recall reaches the
floor, provided it answers at least `MIN_SPEEDUP` times as many queries per
second as exact search; otherwise exact search wins: it is exact, and a
ScaNN index that is not clearly faster is not worth its approximation (so a
small corpus, where a matmul is cheap, keeps exact search).

Settings given explicitly (non-zero `num_leaves`, `leaves_to_search` or
`reorder`) ask for ScaNN: those are used as given, exact search is not a
candidate, and only the settings left at 0 are measured. With all three
given nothing is measured.

The record of the choice (`Choice`, every candidate with its settings,
recall and rates, the winner and the reason) is kept by the index and
written into its manifest (`settings()["choice"]`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfr_ssl.config import IndexConfig
from tfr_ssl.index import audit as index_audit
from tfr_ssl.index import tuning

# ScaNN must answer at least this many times the queries per second of
# exact search to replace it: two timings on a shared machine differ by a
# few percent, and below that gain exact results are worth more.
MIN_SPEEDUP = 1.1
# Timed passes over the held-out queries (after one that traces).
TIMED_PASSES = 3
EXACT = "exact"
SCANN = "scann"


@dataclasses.dataclass
class Candidate:
  """One setting tried, and what it measured.

  Attributes:
    kind: `exact` or `scann`.
    leaves_to_search: ScaNN leaves searched per query (0 for exact).
    reorder: ScaNN candidates re-scored exactly (0 for exact).
    tuning: leaves_to_search -> recall on the tuning queries of every value
      tried for this reordering depth (the last is the one kept).
    recall: Recall@`recall_at` against exact search on the held-out
      queries (1 for exact search).
    qps: Held-out queries per second, batched, wall clock.
    cpu_qps: The same per CPU-second of this process (all threads).
  """

  kind: str
  leaves_to_search: int = 0
  reorder: int = 0
  tuning: dict[str, float] = dataclasses.field(default_factory=dict)
  recall: float = 1.0
  qps: float | None = None
  cpu_qps: float | None = None

  def key(self) -> tuple[str, int, int]:
    """What identifies the candidate: (kind, leaves_to_search, reorder)."""
    return (self.kind, self.leaves_to_search, self.reorder)

  def label(self) -> str:
    if self.kind == EXACT:
      return "exact search"
    return (
      f"ScaNN {self.leaves_to_search} leaves searched, reorder {self.reorder}"
    )


@dataclasses.dataclass
class Choice:
  """How the index was chosen (written to the index manifest).

  Attributes:
    kind: The winner's kind, `exact` or `scann`.
    reason: Why it won, in words.
    recall_floor: `IndexConfig.recall_floor`.
    recall_at: The cut-off of the recall (10, or k when k < 10).
    num_leaves: Leaves of the ScaNN tree tried (0: none built).
    explicit: The ScaNN settings given explicitly (not measured).
    tuning_queries: Queries the leaves were tuned on.
    held_out_queries: Queries the candidates were measured on.
    batch_size: Queries per timed search call.
    passes: Timed passes (the best counts).
    candidates: Every candidate tried, exact search first when it competed.
    winner: Index of the winner in `candidates` (None: nothing measured).
  """

  kind: str
  reason: str
  recall_floor: float
  recall_at: int
  num_leaves: int = 0
  explicit: list[str] = dataclasses.field(default_factory=list)
  tuning_queries: int = 0
  held_out_queries: int = 0
  batch_size: int = 0
  passes: int = 0
  candidates: list[Candidate] = dataclasses.field(default_factory=list)
  winner: int | None = None

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def choose(
  searcher,
  item_embeddings: np.ndarray,
  queries: np.ndarray,
  k: int,
  recall_floor: float,
  leaves_to_search: int = 0,
  reorder: int = 0,
  explicit: list[str] | None = None,
  timer: index_audit.Timer = index_audit.best_pass_seconds,
) -> Choice:
  """Measures the candidates on a built ScaNN searcher and picks one.

  Exact search competes unless `explicit` names a setting. Sets nothing on
  the searcher: the caller applies the winner.

  Args:
    searcher: A built `search.ScaNNIndex` (a `tuning.TunableSearcher`).
    item_embeddings: float [N, D], the indexed embeddings.
    queries: float [Q, D] sample queries, Q >= 2: the first half tunes
      leaves_to_search, the second half is held out.
    k: Results per search (the index's k).
    recall_floor: The recall@`tuning.recall_at(k)` a ScaNN winner needs.
    leaves_to_search: Fixed leaves_to_search (0 = measured).
    reorder: Fixed reordering depth (0 = measured).
    explicit: Names of the settings given explicitly.
    timer: Times the searches (`audit.best_pass_seconds`; tests pass a fake
      so that which candidate is fastest is deterministic).

  Returns:
    The `Choice`, with every candidate measured.
  """
  items = np.asarray(item_embeddings, np.float32)
  queries = np.asarray(queries, np.float32)
  num_items = items.shape[0]
  num_leaves = searcher.get_config()["num_leaves"]
  cut = tuning.recall_at(k)
  half = queries.shape[0] // 2
  tune, held_out = queries[:half], queries[half:]
  tune_exact = index_audit.exact_ids(searcher, tune, items, cut)
  held_exact = index_audit.exact_ids(searcher, held_out, items, cut)
  depths = [reorder] if reorder else tuning.reorder_ladder(num_items, k)
  if leaves_to_search:
    ladder = [leaves_to_search]
  else:
    ladder = tuning.leaves_ladder(num_items, num_leaves, k)
  # Deepest reordering first: a shallower one needs at least as many
  # leaves (its candidates are a subset), so its climb starts there.
  scann = []
  start = 0
  tune_t = tf.constant(tune)
  for depth in sorted(depths, reverse=True):
    tried = tuning.fewest_leaves(
      searcher, tune_t, tune_exact, k, depth, ladder[start:], recall_floor
    )
    leaves = list(tried)[-1]
    start = ladder.index(leaves)
    candidate = Candidate(
      SCANN, leaves, depth, {str(n): r for n, r in tried.items()}
    )
    _, found = searcher.search(tf.constant(held_out), k, leaves, depth)
    candidate.recall = index_audit.recall_against(
      found.numpy(), held_exact, cut
    )
    scann.append(candidate)
  scann.reverse()
  candidates = ([] if explicit else [Candidate(EXACT)]) + scann
  batches = index_audit.query_batches(held_out, num_items)
  items_t = tf.constant(items)
  # One traced search takes the settings as tensors: one trace serves
  # every candidate.
  search = tf.function(
    lambda q, leaves, depth: searcher.search(q, k, leaves, depth)
  )
  # Keyed by (kind, leaves_to_search, reorder), which a fake timer reads.
  functions = {}
  for c in candidates:
    if c.kind == EXACT:
      fn = tf.function(lambda q: index_audit.exact_top_rows(q, items_t, k))
    else:
      fn = functools.partial(
        search,
        leaves=tf.constant(c.leaves_to_search),
        depth=tf.constant(c.reorder),
      )
    functions[c.key()] = fn
  seconds = timer(functions, batches, TIMED_PASSES)
  for c in candidates:
    c.qps = held_out.shape[0] / max(seconds[c.key()].wall, 1e-9)
    c.cpu_qps = held_out.shape[0] / max(seconds[c.key()].cpu, 1e-9)
  winner, reason = _winner(candidates, recall_floor, cut, explicit)
  return Choice(
    kind=candidates[winner].kind,
    reason=reason,
    recall_floor=recall_floor,
    recall_at=cut,
    num_leaves=num_leaves,
    explicit=list(explicit or []),
    tuning_queries=tune.shape[0],
    held_out_queries=held_out.shape[0],
    batch_size=int(batches[0].shape[0]),
    passes=TIMED_PASSES,
    candidates=candidates,
    winner=winner,
  )


def _winner(
  candidates: list[Candidate],
  floor: float,
  cut: int,
  explicit: list[str] | None,
) -> tuple[int, str]:
  """Index of the winning candidate and the reason (see module doc)."""
  enough = [
    i for i, c in enumerate(candidates) if c.kind == SCANN and c.recall >= floor
  ]
  fastest = max(enough, key=lambda i: candidates[i].qps, default=None)
  wanted = f"held-out recall@{cut} >= {floor:g}"
  if candidates[0].kind == EXACT:
    exact_qps = candidates[0].qps
    if fastest is None:
      return 0, f"exact search: no ScaNN candidate reached {wanted}"
    gain = candidates[fastest].qps / exact_qps
    if gain < MIN_SPEEDUP:
      return 0, (
        f"exact search: the fastest ScaNN candidate with {wanted} answered "
        f"only {gain:.2f}x its queries/s (ScaNN needs {MIN_SPEEDUP:g}x)"
      )
    return fastest, (
      f"the fastest candidate with {wanted}: {gain:.2f}x the queries/s of "
      "exact search"
    )
  given = ", ".join(explicit or [])
  if fastest is None:
    best = max(
      range(len(candidates)),
      key=lambda i: (candidates[i].recall, candidates[i].qps),
    )
    return best, (
      f"no candidate reached {wanted}; the most accurate is kept (exact "
      f"search not tried: {given} set explicitly)"
    )
  return fastest, (
    f"the fastest candidate with {wanted} (exact search not tried: {given} "
    "set explicitly)"
  )


def fixed(kind: str, reason: str, recall_floor: float, k: int) -> Choice:
  """The record of an index chosen without measuring (see `Choice`)."""
  return Choice(
    kind=kind,
    reason=reason,
    recall_floor=recall_floor,
    recall_at=tuning.recall_at(k),
  )


def describe(choice: Mapping[str, Any]) -> str:
  """A few lines on a recorded choice (`Choice.to_dict()`): the winner,
  why, and every candidate with its recall and rate."""
  lines = [f"Index choice: {choice['kind']}: {choice['reason']}."]
  cut = choice["recall_at"]
  for i, c in enumerate(choice.get("candidates", [])):
    mark = "*" if i == choice.get("winner") else " "
    rate = f"{c['qps']:,.0f} queries/s"
    label = Candidate(**c).label()
    lines.append(f" {mark} {label}: recall@{cut} {c['recall']:.3f}, {rate}")
  if choice.get("candidates"):
    lines.append(
      f"   ({choice['tuning_queries']} tuning and "
      f"{choice['held_out_queries']} held-out queries; best of "
      f"{choice['passes']} passes, {choice['batch_size']} queries per call)"
    )
  return "\n".join(lines)


def explicit_settings(config: IndexConfig) -> list[str]:
  """The ScaNN settings of an `IndexConfig` given explicitly (non-zero)."""
  return [
    name
    for name in ("num_leaves", "leaves_to_search", "reorder")
    if getattr(config, name)
  ]
