"""Raw values -> vocabularies and int32 ids (the contract's id convention).

Id 0 is the OOV bucket, vocabulary entry `v` has id `v + 1`. Vocabularies of
ordinary features are sorted by descending frequency (ties by value), so the
ids are stable for a given input. An id feature (item id, query id) instead
keeps its table's row order: row `r` has id `r + 1`, so the id feature and
the row index agree and every row, even a never-seen item, has its own id.
"""

from __future__ import annotations

import numpy as np

from tfr_ssl.data.contract import OOV, PAD
from tfr_ssl.data.errors import DataError
from tfr_ssl.data.raw import Bags, RawTable


def _missing(values: np.ndarray) -> np.ndarray:
  if values.dtype.kind in "US":
    return values == values.dtype.type("")
  if values.dtype.kind == "O":
    return np.array([v is None or v == "" for v in values], dtype=bool)
  return np.zeros(values.shape, dtype=bool)


def _vocabulary_strings(values: np.ndarray) -> list[str]:
  return [str(v) for v in values.tolist()]


def encode_categorical(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
  """Ids of one categorical column and its vocabulary.

  Args:
    values: 1-D raw values; an empty string is a missing value (id 0).

  Returns:
    (int32 ids [n], vocabulary sorted by descending count then value).
  """
  values = np.asarray(values)
  ids = np.zeros(values.shape[0], dtype=np.int32)
  present = ~_missing(values)
  if not present.any():
    return ids, []
  unique, inverse, counts = np.unique(
    values[present], return_inverse=True, return_counts=True
  )
  order = np.argsort(-counts, kind="stable")
  rank = np.empty_like(order)
  rank[order] = np.arange(order.shape[0])
  ids[present] = (rank[inverse.reshape(-1)] + 1).astype(np.int32)
  return ids, _vocabulary_strings(unique[order])


def encode_bags(bags: Bags) -> tuple[np.ndarray, list[str]]:
  """Dense padded ids of a multi-valued column and its vocabulary.

  An empty bag becomes the single id OOV (0), so every row holds at least
  one id and "has no value" is something the model can learn from.

  Args:
    bags: Flat values and per-row lengths.

  Returns:
    (int32 [rows, max_len] padded with PAD, vocabulary).
  """
  values = np.asarray(bags.values)
  lengths = np.asarray(bags.lengths, dtype=np.int64)
  keep = ~_missing(values)
  if not keep.all():
    rows = np.repeat(np.arange(lengths.shape[0]), lengths)
    lengths = np.bincount(rows[keep], minlength=lengths.shape[0])
    values = values[keep]
  flat_ids, vocab = encode_categorical(values)
  num_rows = lengths.shape[0]
  width = int(max(1, lengths.max(initial=0)))
  dense = np.full((num_rows, width), PAD, dtype=np.int32)
  rows = np.repeat(np.arange(num_rows), lengths)
  starts = np.cumsum(lengths) - lengths
  positions = np.arange(rows.shape[0]) - np.repeat(starts, lengths)
  dense[rows, positions] = flat_ids
  dense[lengths == 0, 0] = OOV
  return dense, vocab


def encode_row_ids(table: RawTable, name: str) -> tuple[np.ndarray, list[str]]:
  """The id feature of a table: row `r` gets id `r + 1`.

  Raises:
    DataError: an empty id, or an id that appears twice (names the line of
      the second occurrence).
  """
  keys = np.asarray(table.columns[name])
  empty = np.flatnonzero(_missing(keys))
  if empty.size:
    raise DataError(
      "empty id", path=table.path, line=table.line(int(empty[0])), column=name
    )
  _, first, counts = np.unique(keys, return_index=True, return_counts=True)
  if (counts > 1).any():
    seen = np.zeros(keys.shape[0], dtype=bool)
    seen[first] = True
    row = int(np.flatnonzero(~seen)[0])
    raise DataError(
      f"duplicate id {str(keys[row])!r}",
      path=table.path,
      line=table.line(row),
      column=name,
    )
  ids = np.arange(1, keys.shape[0] + 1, dtype=np.int32)
  return ids, _vocabulary_strings(keys)


def lookup(table_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
  """Row of each key in `table_keys` (unique), or -1 when absent."""
  table_keys = np.asarray(table_keys)
  keys = np.asarray(keys)
  if (table_keys.dtype.kind in "US") != (keys.dtype.kind in "US"):
    table_keys = table_keys.astype(str)
    keys = keys.astype(str)
  order = np.argsort(table_keys, kind="stable")
  ordered = table_keys[order]
  position = np.searchsorted(ordered, keys)
  position = np.minimum(position, max(ordered.shape[0] - 1, 0))
  found = ordered[position] == keys if ordered.shape[0] else position < 0
  return np.where(found, order[position], -1).astype(np.int64)


def encode_table(
  table: RawTable, features, id_name: str
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
  """Ids of every feature of one table (items or queries).

  Args:
    table: The raw table.
    features: The schema features of this table.
    id_name: The table's id feature (row order vocabulary).

  Returns:
    (feature name -> ids, feature name -> vocabulary).
  """
  ids, vocabularies = {}, {}
  for feature in features:
    column = table.columns[feature.name]
    if feature.name == id_name:
      ids[feature.name], vocabularies[feature.name] = encode_row_ids(
        table, feature.name
      )
    elif feature.multi:
      if not isinstance(column, Bags):
        raise TypeError(f"{feature.name}: multi-valued needs Bags.")
      ids[feature.name], vocabularies[feature.name] = encode_bags(column)
    else:
      ids[feature.name], vocabularies[feature.name] = encode_categorical(column)
  return ids, vocabularies
