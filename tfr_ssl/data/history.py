"""Interaction histories: what each user had done before, and nothing after.

The history query tower reads a user's last N items. Where they come from
decides whether an evaluation measures anything, so the rules live here,
in one place, and the tests build data where a leak would change a number.

"Before" is one total order on a user's interactions: by timestamp, then
by split (train, then validation, then test), then by position in the
split (file order; splits keep their rows in file order). With timestamps
that is time order, ties broken by the file. Without timestamps (the
MovieLens copies and CSV logs come without them) it is file order within
a split, and a later split counts as later: every validation interaction
comes after every training one.

  * A **training** example's history (`TrainingHistories`) is drawn from
    the same user's training interactions only: never itself, never a
    validation or test interaction, and never a training row dropped by
    `data.train_fraction` (with less data it would not exist). Which of
    them, `model.training_history` says:
      - `before`: the ones before it. What a temporal split evaluates
        (its held-out interactions come after everything known), and the
        default (`auto`) for one.
      - `others`: the user's latest N training interactions other than
        itself: exactly the history its user is evaluated with, less the
        example's own item. The default for a random split, whose
        held-out interactions are a random sample of the user's: their
        evaluation history is the latest N training items, not the items
        before them. Training on `before` there teaches an order the
        evaluation never asks for: on MovieLens-1M (file order, no
        timestamps) the history tower learned to predict the next rating
        of the file from the ones before it (training loss 3.4 against
        6.2 for the id-only query) and lost three quarters of its
        validation Recall@10 (0.029 against 0.103 at epoch 1), because
        the held-out ratings are not "next" to anything.
  * A **validation** query's history is the user's training interactions;
    a **test** query's, the training and validation ones
    (`latest_items`): what the system knew when the query was asked. With
    a random split this includes training interactions later in time than
    the held-out one, which is what a random split means (the held-out
    interactions are a sample, not a future).
  * A **held-out user** (`heldout.py`) is folded in from the first 80% of
    their own interactions.

Histories are corpus rows, most recent first, padded with `PAD` to N:
column 0 is the latest item. `PAD` columns carry nothing.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfr_ssl.data import contract, query_side

PAD = contract.PAD
# How a training example's history is drawn (`model.training_history`).
BEFORE, OTHERS, AUTO = "before", "others", "auto"
TRAINING_MODES = (AUTO, BEFORE, OTHERS)
# The query input that holds the history (a reserved feature name).
HISTORY = "history"


@dataclasses.dataclass(frozen=True)
class Sequences:
  """Each query's interactions in "before" order (see the module doc).

  Attributes:
    indptr: int64 [Q + 1]; query q's interactions are
      `items[indptr[q]:indptr[q + 1]]`, oldest first.
    items: int32 [nnz], corpus rows.
    source: int64 [nnz], for each entry, its row in the concatenation of
      the splits it was built from (in the order given).
  """

  indptr: np.ndarray
  items: np.ndarray
  source: np.ndarray

  def lengths(self) -> np.ndarray:
    return np.diff(self.indptr)


def sequences(
  prepared: contract.PreparedDataset, split_names: tuple[str, ...]
) -> Sequences:
  """The interactions of `split_names` (in split order) per query, ordered.

  Example:
    Train rows (user, item, time): (0, a, 5), (0, b, 1), (1, c, 2); with
    validation row (0, d, 3): user 0's sequence over train + validation is
    b (1), d (3), a (5).
  """
  parts = [prepared.splits[name] for name in split_names]
  query = np.concatenate([p.query_index for p in parts]).astype(np.int64)
  item = np.concatenate([p.item_index for p in parts]).astype(np.int32)
  rank = np.concatenate(
    [np.full(len(p), r, np.int64) for r, p in enumerate(parts)]
  )
  has_time = all(p.timestamp is not None for p in parts)
  time = (
    np.concatenate([p.timestamp for p in parts]).astype(np.int64)
    if has_time
    else np.zeros(query.shape[0], np.int64)
  )
  position = np.arange(query.shape[0], dtype=np.int64)
  # lexsort: the last key is primary (query, time, split, file order).
  order = np.lexsort((position, rank, time, query))
  indptr = np.zeros(prepared.num_queries + 1, np.int64)
  np.cumsum(np.bincount(query, minlength=prepared.num_queries), out=indptr[1:])
  return Sequences(indptr=indptr, items=item[order], source=order)


def latest_items(seq: Sequences, length: int) -> np.ndarray:
  """int32 [Q, length]: each query's last `length` items, latest first.

  Example:
    A query with items a, b, c (oldest first) and length 2 gives [c, b];
    a query with none gives [PAD, PAD].
  """
  num_queries = seq.indptr.shape[0] - 1
  out = np.full((num_queries, length), PAD, np.int32)
  ends = seq.indptr[1:]
  for column in range(length):
    at = ends - 1 - column
    valid = at >= seq.indptr[:-1]
    out[valid, column] = seq.items[at[valid]]
  return out


def evaluation_histories(
  prepared: contract.PreparedDataset, split: str, length: int
) -> np.ndarray:
  """int32 [Q, length]: each user's history when scoring `split`.

  `validation`: the training interactions; `test`: training and
  validation (see the module doc).
  """
  known = contract.SPLITS[: contract.SPLITS.index(split)]
  if not known:
    raise ValueError(f"split {split!r} has no earlier split to read.")
  return latest_items(sequences(prepared, known), length)


@dataclasses.dataclass(frozen=True)
class TrainingHistories:
  """Where each training row's history is in the ordered training items.

  A training row r of user q at position `position[r]` of the flat
  ordered array `items` has the history `items[start[r]:position[r]]`,
  latest last; the data pipeline gathers the last N of it
  (`gather_rows`), so no [rows, N] matrix is stored.

  Attributes:
    items: int32 [n], the training items in "before" order, by user.
    position: int32 [n], per training row, its own index in `items`.
    start: int32 [n], per training row, its user's first index in `items`.
  """

  items: np.ndarray
  position: np.ndarray
  start: np.ndarray
  end: np.ndarray | None = None

  def rows(
    self, rows: np.ndarray, length: int, mode: str = BEFORE
  ) -> np.ndarray:
    """int32 [len(rows), length]: the histories of training rows `rows`
    (numpy twin of the pipeline's gather, for tests and reports).

    `mode` is `before` (the items before the row) or `others` (the user's
    latest training items other than the row itself; see the module
    doc)."""
    if mode == BEFORE:
      at = self.position[rows][:, None] - 1 - np.arange(length)[None, :]
      valid = at >= self.start[rows][:, None]
      return np.where(valid, self.items[np.maximum(at, 0)], PAD).astype(
        np.int32
      )
    out = np.full((len(rows), length), PAD, np.int32)
    for i, r in enumerate(rows):
      at = np.arange(self.end[r] - 1, self.start[r] - 1, -1)
      at = at[at != self.position[r]][:length]
      out[i, : at.shape[0]] = self.items[at]
    return out


def training_histories(prepared: contract.PreparedDataset) -> TrainingHistories:
  """The `TrainingHistories` of the train split (see the module doc)."""
  seq = sequences(prepared, ("train",))
  n = seq.items.shape[0]
  position = np.empty(n, np.int64)
  position[seq.source] = np.arange(n)
  query = prepared.splits["train"].query_index.astype(np.int64)
  return TrainingHistories(
    items=seq.items,
    position=position.astype(np.int32),
    start=seq.indptr[query].astype(np.int32),
    end=seq.indptr[query + 1].astype(np.int32),
  )


def training_mode(mode: str, split_kind: str) -> str:
  """The training-history mode `model.training_history` resolves to:
  `auto` is `before` for a temporal split and `others` for a random one."""
  if mode not in TRAINING_MODES:
    raise ValueError(f"training history mode must be one of {TRAINING_MODES}")
  if mode != AUTO:
    return mode
  return BEFORE if split_kind == "temporal" else OTHERS


def query_table(
  prepared: contract.PreparedDataset, task: str, split: str, length: int
) -> dict[str, np.ndarray]:
  """The query tower's input table when scoring `split`: one row per
  query row of the task (`QuerySide.table`), with `history` (the users'
  histories at that point, `evaluation_histories`) when `length` > 0 and
  the queries are users."""
  side = query_side.query_side(task)
  table = dict(side.table(prepared))
  if length and not side.is_item:
    table[HISTORY] = evaluation_histories(prepared, split, length)
  return table


def user_activity(
  prepared: contract.PreparedDataset, query_rows: np.ndarray, sparse_max: int
) -> dict[str, np.ndarray]:
  """bool masks over `query_rows` by the user's training interactions:
  `sparse` (at most `sparse_max`, none included) and `active` (more)."""
  train = prepared.splits["train"].query_index
  count = np.bincount(train, minlength=prepared.num_queries)[query_rows]
  return {"sparse": count <= sparse_max, "active": count > sparse_max}
