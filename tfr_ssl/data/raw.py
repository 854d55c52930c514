"""Raw columns: what every source returns before the shared preparation.

A source only parses its files into these columns (raw values, not ids);
vocabularies, ids, the history order, splits and statistics are then built by
one code path (`tfr_ssl.data.build`) for every source. Each table remembers
where its rows came from, so that later checks (duplicate ids, unknown items)
still report the file and line.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfr_ssl.data.contract import Schema


@dataclasses.dataclass
class Bags:
  """The cells of a multi-valued column, flattened.

  Attributes:
    values: 1-D array of every value, row after row.
    lengths: int64 [rows], how many values each row has (0 = empty bag).
  """

  values: np.ndarray
  lengths: np.ndarray

  def __len__(self) -> int:
    return int(self.lengths.shape[0])


@dataclasses.dataclass
class RawTable:
  """One table of features, one row per item or per query.

  Attributes:
    path: File the rows came from (for errors).
    columns: feature name -> 1-D array of raw values (categorical; an empty
      string means missing) or `Bags` (multi-valued).
    lines: int64 [rows], 1-based line of each row in `path`; None when the
      rows were generated.
  """

  path: str
  columns: dict[str, np.ndarray | Bags]
  lines: np.ndarray | None = None

  def __len__(self) -> int:
    return len(next(iter(self.columns.values())))

  def line(self, row: int) -> int | None:
    return None if self.lines is None else int(self.lines[row])


@dataclasses.dataclass
class RawInteractions:
  """Interactions as raw keys, in file order.

  Attributes:
    path: File of the interactions (for errors).
    query_key: [n] raw query (user) ids.
    item_key: [n] raw item ids.
    weight: float [n] or None (every weight 1).
    timestamp: int64 [n] seconds, or None when the data has none.
    lines: int64 [n] 1-based line of each row, or None when generated.
    query_column: Name of the query id column (for errors).
    item_column: Name of the item id column (for errors).
    no_timestamp_reason: Why there are no timestamps (for the error of a
      temporal split), e.g. "ratings.dat has 3 fields".
    query_item_key: [n] raw item id of each interaction's item-to-item
      query ("" = none), when the schema declares `query_item`; else None.
  """

  path: str
  query_key: np.ndarray
  item_key: np.ndarray
  weight: np.ndarray | None
  timestamp: np.ndarray | None
  lines: np.ndarray | None
  query_column: str
  item_column: str
  no_timestamp_reason: str = "the data has no timestamp column"
  query_item_key: np.ndarray | None = None

  def __len__(self) -> int:
    return int(self.item_key.shape[0])

  def line(self, row: int) -> int | None:
    return None if self.lines is None else int(self.lines[row])


@dataclasses.dataclass
class RawData:
  """Everything a source read.

  Attributes:
    schema: The features.
    items: The corpus, one row per item, every item feature.
    queries: One row per query with every query feature, or None when the
      source has only query ids (the ids seen in interactions then form
      the query table).
    interactions: The positive (query, item) pairs.
  """

  schema: Schema
  items: RawTable
  queries: RawTable | None
  interactions: RawInteractions
