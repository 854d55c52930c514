"""Held-out users: people the model never trained on, served from a history.

The strong-generalisation protocol of Liang et al. (2018): a seeded share
of the users is taken out of every split before training, so nothing of
theirs is trained on, validated on or tested in the usual splits. At test
time each one's first 80% of interactions ("before" order, `history.py`)
is folded in as history and the rest is scored against the whole corpus,
with the folded-in items excluded from the ranking. This measures what a
history query tower is for: answering a user it has never seen, without
retraining.

The validation split has the same slice, one step earlier in each user's
sequence, as a seen user's validation interactions sit before its test
ones: the first 60% is folded in and the interactions up to the test
fold-in point (80%) are scored. So a setting that matters mainly to new
users (the history length, the id's dropout) can be chosen on validation,
and the validation slice never reads what test scores.

Only users with at least `MIN_INTERACTIONS` interactions are candidates,
so each has at least 4 folded-in items and 1 scored. The choice is seeded
by `data.seed` and made after the split, so the splits of every other user
do not move with the share.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfr_ssl.data import contract, csr, history, stats

HELDOUT = "heldout"
MIN_INTERACTIONS = 5


def hold_out_users(
  prepared: contract.PreparedDataset, share: float, seed: int
) -> contract.PreparedDataset:
  """`prepared` without a seeded share of its users (see the module doc).

  Their interactions move from train, validation and test (in that order,
  each in file order) to `splits["heldout"]`; the training counts and the
  per-user training lists are recounted without them.

  Args:
    prepared: The prepared data (not already holding users out).
    share: Share of the candidate users to hold out, in [0, 0.5].
    seed: Seed of the choice.

  Returns:
    The dataset with a `heldout` split (the same object when share is 0).
  """
  if share <= 0:
    return prepared
  if HELDOUT in prepared.splits:
    raise ValueError("This dataset already holds users out.")
  splits = {name: prepared.splits[name] for name in contract.SPLITS}
  total = np.zeros(prepared.num_queries, np.int64)
  for split in splits.values():
    total += np.bincount(split.query_index, minlength=prepared.num_queries)
  candidates = np.flatnonzero(total >= MIN_INTERACTIONS)
  count = round(share * candidates.shape[0])
  if count == 0:
    return prepared
  rng = np.random.default_rng([seed, 7])
  chosen = np.zeros(prepared.num_queries, bool)
  chosen[rng.choice(candidates, size=count, replace=False)] = True
  kept, moved = {}, []
  for name, split in splits.items():
    out = chosen[split.query_index]
    kept[name] = _rows(split, ~out)
    moved.append(_rows(split, out))
  if len(kept["train"]) == 0:
    raise ValueError("Holding users out left no training interaction.")
  kept[HELDOUT] = _concat(moved)
  train = kept["train"]
  return dataclasses.replace(
    prepared,
    splits=kept,
    item_train_count=stats.item_train_count(
      train.item_index, prepared.num_items
    ),
    train_items_by_query=stats.items_by_query(
      train.query_index, train.item_index, prepared.num_queries
    ),
  )


def _rows(split: contract.Interactions, mask: np.ndarray):
  return contract.Interactions(
    query_index=split.query_index[mask],
    item_index=split.item_index[mask],
    weight=split.weight[mask],
    timestamp=None if split.timestamp is None else split.timestamp[mask],
    prev_item_index=split.prev_item_index[mask],
  )


def _concat(parts: list[contract.Interactions]) -> contract.Interactions:
  has_time = all(p.timestamp is not None for p in parts)
  return contract.Interactions(
    query_index=np.concatenate([p.query_index for p in parts]),
    item_index=np.concatenate([p.item_index for p in parts]),
    weight=np.concatenate([p.weight for p in parts]),
    timestamp=(
      np.concatenate([p.timestamp for p in parts]) if has_time else None
    ),
    prev_item_index=np.concatenate([p.prev_item_index for p in parts]),
  )


@dataclasses.dataclass(frozen=True)
class FoldIn:
  """The held-out users' evaluation: histories in, the rest scored.

  Attributes:
    queries: int64 [U], rows of the query table of the held-out users.
    histories: int32 [U, length], each one's last `length` folded-in
      items, latest first (`history.latest_items`).
    query_of_pair: int64 [P], index into `queries` of each scored pair.
    targets: int32 [P], corpus row of each scored item (a user's item
      scored once even if repeated).
    excluded_items: CSR over `queries`: every folded-in item.
    folded_in: int, folded-in interactions in all.
  """

  queries: np.ndarray
  histories: np.ndarray
  query_of_pair: np.ndarray
  targets: np.ndarray
  excluded_items: tuple[np.ndarray, np.ndarray]
  folded_in: int


def fold_in(
  prepared: contract.PreparedDataset, length: int, split: str = "test"
) -> FoldIn | None:
  """The held-out users' `FoldIn` for `split` (None when no user is held
  out).

  Test: each user's first `floor(0.8 n)` interactions (at least 1, at most
  n - 1) are the history; the others are scored. Validation: the first
  `floor(0.6 n)` (at least 1, at most one fewer than the test fold-in) are
  the history, and the interactions from there up to the test fold-in
  point are scored, so none of test's scored interactions is read.

  Example:
    A user with 10 interactions a..j (in order). Test: a..h are folded in
    (the history, latest first: h, g, ...), i and j are scored.
    Validation: a..f are folded in, g and h are scored.

  Raises:
    ValueError: `split` is neither `test` nor `validation`.
  """
  if split not in ("test", "validation"):
    raise ValueError(
      f"Held-out users are folded in for test or validation, not {split!r}."
    )
  if HELDOUT not in prepared.splits:
    return None
  seq = history.sequences(prepared, (HELDOUT,))
  lengths = seq.lengths()
  queries = np.flatnonzero(lengths > 0)
  n = lengths[queries]
  # Shares in integers: 4n // 5 is floor(0.8 n) without float rounding.
  end = np.clip(4 * n // 5, 1, n - 1)
  if split == "test":
    folded, scored = end, n - end
  else:
    keep = end >= 2  # room for one folded-in and one scored interaction
    queries, n, end = queries[keep], n[keep], end[keep]
    folded = np.clip(3 * n // 5, 1, end - 1)
    scored = end - folded
  starts = seq.indptr[queries]
  # Histories: the folded-in part of each user as its own sequence.
  fold_indptr = np.zeros(queries.shape[0] + 1, np.int64)
  np.cumsum(folded, out=fold_indptr[1:])
  fold_items = seq.items[_ranges(starts, folded)]
  fold_seq = history.Sequences(
    fold_indptr, fold_items, np.arange(fold_items.shape[0])
  )
  user_of_fold = np.repeat(np.arange(queries.shape[0]), folded)
  user_of_pair = np.repeat(np.arange(queries.shape[0]), scored)
  targets = seq.items[_ranges(starts + folded, scored)]
  width = int(prepared.num_items)
  keys = csr.sorted_distinct(user_of_pair * width + targets.astype(np.int64))
  return FoldIn(
    queries=queries.astype(np.int64),
    histories=history.latest_items(fold_seq, length) if length else None,
    query_of_pair=(keys // width).astype(np.int64),
    targets=(keys % width).astype(np.int32),
    excluded_items=csr.from_entries(user_of_fold, fold_items, queries.shape[0]),
    folded_in=int(folded.sum()),
  )


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenated `arange(s, s + l)` for each (s, l)."""
  total = int(lengths.sum())
  offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
  return offsets + np.arange(total)
