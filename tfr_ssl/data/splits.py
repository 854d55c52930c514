"""Histories and train/validation/test splits, by interaction row.

Random split: a seeded permutation of all interactions; the first
`test_fraction` of it is test, the next `validation_fraction` validation, the
rest train. Temporal split: one global time cutoff per boundary. Interactions
are ordered by (timestamp, file order) and cut at the quantiles, so every
validation interaction happens at or after every training one, and every test
interaction at or after every validation one (a "predict the future"
protocol; ties at a cutoff are broken by file order). Within each split rows
keep their file order.

`train_fraction` then keeps a uniform, seeded subsample of the training split
only; validation and test are untouched, so runs at different fractions are
scored on the same pairs.

Previous items (the queries of the `item_to_item` task in session-log mode)
are computed within each split, once its rows are final
(`previous_items_by_split`): a training interaction's previous item is an
earlier training interaction of the same query, never a held-out one, and a
test interaction looks only at earlier test interactions. Computing them over
the whole history before splitting would leak held-out items into training
queries (and training items into test queries) under a random split.
"""

from __future__ import annotations

import numpy as np

from tfr_ssl import config as config_lib
from tfr_ssl.data.contract import PAD
from tfr_ssl.data.errors import DataError


def previous_items(
  query_rows: np.ndarray,
  item_rows: np.ndarray,
  timestamp: np.ndarray | None,
) -> np.ndarray:
  """Each interaction's previous item among the given interactions.

  History order is by timestamp, ties (or no timestamps) by the order of the
  arrays (file order when they are a split's rows, which stay sorted). Only
  the given interactions count: pass one split's rows to get previous items
  within that split (`previous_items_by_split`).

  Args:
    query_rows: int [n] query row of each interaction.
    item_rows: int [n] item row of each interaction.
    timestamp: int64 [n] or None.

  Returns:
    int32 [n]: the item row of the query's previous interaction, PAD for the
    first interaction of each query.
  """
  n = query_rows.shape[0]
  times = np.zeros(n, dtype=np.int64) if timestamp is None else timestamp
  # lexsort's last key is the primary one: query, then time, then file order.
  order = np.lexsort((np.arange(n), times, query_rows))
  sorted_query = query_rows[order]
  previous = np.full(n, PAD, dtype=np.int32)
  same_query = sorted_query[1:] == sorted_query[:-1]
  shifted = np.where(same_query, item_rows[order][:-1], PAD)
  previous[order[1:]] = shifted
  return previous


def check_fractions(
  validation_fraction: float, test_fraction: float, train_fraction: float
) -> None:
  """Raises ValueError for fractions that leave no valid split."""
  config_lib.check_split_fractions(
    validation_fraction, test_fraction, train_fraction
  )


def _sizes(n: int, validation_fraction: float, test_fraction: float):
  num_test = round(n * test_fraction)
  num_validation = round(n * validation_fraction)
  return n - num_validation - num_test, num_validation, num_test


def random_split(
  n: int, validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
  """Split name -> sorted int64 rows, by a seeded permutation."""
  num_train, num_validation, _ = _sizes(n, validation_fraction, test_fraction)
  permutation = np.random.default_rng(seed).permutation(n)
  return {
    "train": np.sort(permutation[:num_train]),
    "validation": np.sort(permutation[num_train : num_train + num_validation]),
    "test": np.sort(permutation[num_train + num_validation :]),
  }


def temporal_split(
  timestamp: np.ndarray, validation_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
  """Split name -> sorted int64 rows, by global time quantiles."""
  n = timestamp.shape[0]
  num_train, num_validation, _ = _sizes(n, validation_fraction, test_fraction)
  order = np.lexsort((np.arange(n), timestamp))
  return {
    "train": np.sort(order[:num_train]),
    "validation": np.sort(order[num_train : num_train + num_validation]),
    "test": np.sort(order[num_train + num_validation :]),
  }


def keep_fraction(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """A uniform seeded subsample of `rows` (at least one row if any)."""
  if fraction >= 1.0 or rows.shape[0] == 0:
    return rows
  size = max(1, round(rows.shape[0] * fraction))
  # A stream separate from the split's, so the split does not depend on it.
  rng = np.random.default_rng([seed, 1])
  return np.sort(rng.choice(rows, size=size, replace=False))


def split_rows(
  kind: str,
  *,
  num_interactions: int,
  timestamp: np.ndarray | None,
  validation_fraction: float,
  test_fraction: float,
  train_fraction: float,
  seed: int,
  path: str = "",
  no_timestamp_reason: str = "",
) -> dict[str, np.ndarray]:
  """Rows of each split per the data config.

  Args:
    kind: `random` or `temporal`.
    num_interactions: Number of interactions.
    timestamp: int64 [n] or None.
    validation_fraction: Share held out for validation.
    test_fraction: Share held out for test.
    train_fraction: Share of the training split that is kept.
    seed: Seed of the random split and of the subsample.
    path: File of the interactions (for the error).
    no_timestamp_reason: Why there are no timestamps (for the error).

  Raises:
    DataError: a temporal split of data without timestamps.
    ValueError: fractions out of range, or an unknown kind.
  """
  check_fractions(validation_fraction, test_fraction, train_fraction)
  if kind == "random":
    rows = random_split(
      num_interactions, validation_fraction, test_fraction, seed
    )
  elif kind == "temporal":
    if timestamp is None:
      raise DataError(
        "a temporal split needs timestamps, but "
        f"{no_timestamp_reason or 'the data has none'}; use a random split "
        "(data.split=random) or data with timestamps",
        path=path or None,
      )
    rows = temporal_split(timestamp, validation_fraction, test_fraction)
  else:
    raise ValueError(f"Unknown split {kind!r}: use random or temporal.")
  rows["train"] = keep_fraction(rows["train"], train_fraction, seed)
  return rows


def previous_items_by_split(
  rows: dict[str, np.ndarray],
  query_rows: np.ndarray,
  item_rows: np.ndarray,
  timestamp: np.ndarray | None,
) -> dict[str, np.ndarray]:
  """Previous items computed within each split (no cross-split leakage).

  Args:
    rows: split name -> sorted interaction rows of the split (the kept
      training rows after `train_fraction`, so a dropped training row is
      nobody's previous item).
    query_rows: int [n] query row of every interaction.
    item_rows: int [n] item row of every interaction.
    timestamp: int64 [n] or None.

  Returns:
    split name -> int32 [len(rows[name])]: for each row of the split, the
    item row of the same query's previous interaction in that split, PAD for
    the query's first interaction in the split.
  """
  return {
    name: previous_items(
      query_rows[r], item_rows[r], None if timestamp is None else timestamp[r]
    )
    for name, r in rows.items()
  }
