"""The one code path from raw columns to a `PreparedDataset`.

Every source (synthetic, MovieLens, CSV) only parses its files into
`RawData`; this module turns raw values into ids, resolves interactions to
corpus and query rows, splits, resolves the `item_to_item` query of each
interaction (the item of the schema's query-item column, else the previous
item within its own split), and counts what the training split holds.
Checks that need the whole data (duplicate ids, an interaction or query item
that is not in the corpus) live here and still name the file and line.
"""

from __future__ import annotations

import os

import numpy as np

from tfr_ssl.config import DataConfig
from tfr_ssl.data import encode, splits, stats
from tfr_ssl.data.contract import (
  PAD,
  Interactions,
  PreparedDataset,
  feature_name_problem,
)
from tfr_ssl.data.errors import DataError
from tfr_ssl.data.raw import RawData, RawTable


def _query_table(raw: RawData) -> RawTable:
  """The query table, or one made of the ids seen in interactions."""
  if raw.queries is not None:
    return raw.queries
  keys = raw.interactions.query_key
  _, first = np.unique(keys, return_index=True)
  return RawTable(
    path=raw.interactions.path,
    columns={raw.schema.query_id: keys[np.sort(first)]},
    lines=None,
  )


def _rows(table: RawTable, id_name: str, raw: RawData, key: str) -> np.ndarray:
  """Table row of every interaction's key; unknown keys are a DataError."""
  interactions = raw.interactions
  keys = getattr(interactions, f"{key}_key")
  rows = encode.lookup(table.columns[id_name], keys)
  unknown = np.flatnonzero(rows < 0)
  if unknown.size:
    row = int(unknown[0])
    what = "item is not in the corpus" if key == "item" else "unknown query"
    raise DataError(
      f"{what}: {str(keys[row])!r} is not an id in "
      f"{os.path.basename(table.path)} ({unknown.size} such rows)",
      path=interactions.path,
      line=interactions.line(row),
      column=getattr(interactions, f"{key}_column"),
    )
  return rows


def _query_item_rows(raw: RawData) -> np.ndarray:
  """Corpus row of every interaction's query item (PAD where empty).

  Raises:
    DataError: a query item that is not an id of the corpus (names the file,
      line and column).
  """
  interactions = raw.interactions
  column = raw.schema.query_item
  keys = interactions.query_item_key
  if keys is None:
    raise ValueError(
      f"The schema declares the query_item column {column!r}, but the source "
      "read no query items."
    )
  rows = encode.lookup(raw.items.columns[raw.schema.item_id], keys)
  empty = np.char.str_len(keys.astype(str)) == 0
  unknown = np.flatnonzero((rows < 0) & ~empty)
  if unknown.size:
    row = int(unknown[0])
    raise DataError(
      f"query item is not in the corpus: {str(keys[row])!r} is not an id in "
      f"{os.path.basename(raw.items.path)} ({unknown.size} such rows)",
      path=interactions.path,
      line=interactions.line(row),
      column=column,
    )
  return np.where(empty, PAD, rows).astype(np.int32)


def _check_weights(train_weight: np.ndarray, interactions) -> None:
  """Refuses a training split whose weights are all 0: nothing to learn."""
  if train_weight.size and not np.any(train_weight > 0):
    raise DataError(
      f"every weight of the {train_weight.size} training interactions is 0, "
      "so the main task would train on nothing; give positive weights",
      path=interactions.path,
      column=getattr(interactions, "weight_column", None),
    )


def _check_input(raw: RawData) -> None:
  """Refuses feature names a SavedModel cannot take, and no interactions."""
  for feature in raw.schema.features:
    problem = feature_name_problem(feature.name)
    if problem:
      raise DataError(problem, path=raw.items.path, column=feature.name)
  if len(raw.interactions) == 0:
    raise DataError("no interactions", path=raw.interactions.path)


def _split_interactions(
  raw: RawData,
  config: DataConfig,
  item_rows: np.ndarray,
  query_rows: np.ndarray,
) -> dict[str, Interactions]:
  """The interactions (as query and corpus rows) of each split.

  Raises:
    DataError: a temporal split without timestamps, a query item that is
      not in the corpus, or training weights that are all 0.
  """
  interactions = raw.interactions
  weight = interactions.weight
  weight = (
    np.ones(len(interactions), np.float32)
    if weight is None
    else weight.astype(np.float32)
  )
  timestamp = interactions.timestamp
  rows = splits.split_rows(
    config.split,
    num_interactions=len(interactions),
    timestamp=timestamp,
    validation_fraction=config.validation_fraction,
    test_fraction=config.test_fraction,
    train_fraction=config.train_fraction,
    seed=config.seed,
    path=interactions.path,
    no_timestamp_reason=interactions.no_timestamp_reason,
  )
  if raw.schema.query_item is not None:
    query_items = _query_item_rows(raw)
    previous = {name: query_items[r] for name, r in rows.items()}
  else:
    # After splitting (and subsampling train), so a previous item never
    # comes from another split.
    previous = splits.previous_items_by_split(
      rows, query_rows, item_rows, timestamp
    )
  _check_weights(weight[rows["train"]], interactions)
  return {
    name: Interactions(
      query_index=query_rows[r].astype(np.int32),
      item_index=item_rows[r].astype(np.int32),
      weight=weight[r],
      timestamp=None if timestamp is None else timestamp[r].astype(np.int64),
      prev_item_index=previous[name],
    )
    for name, r in rows.items()
  }


def build_prepared(
  raw: RawData, config: DataConfig, version: str = ""
) -> PreparedDataset:
  """Prepares raw columns per the data config.

  Args:
    raw: What a source read.
    config: Split kind, fractions and seed.
    version: The cache version the result will be stored under.

  Returns:
    The prepared dataset.

  Raises:
    DataError: duplicate ids, interactions with unknown items, query items
      or queries, no interactions, or a temporal split without timestamps.
  """
  _check_input(raw)
  schema = raw.schema
  items, vocabularies = encode.encode_table(
    raw.items, schema.item_features, schema.item_id
  )
  query_table = _query_table(raw)
  queries, query_vocabularies = encode.encode_table(
    query_table, schema.query_features, schema.query_id
  )
  vocabularies.update(query_vocabularies)
  split_data = _split_interactions(
    raw,
    config,
    # Unknown items are reported before unknown queries.
    item_rows=_rows(raw.items, schema.item_id, raw, "item"),
    query_rows=_rows(query_table, schema.query_id, raw, "query"),
  )
  train = split_data["train"]
  return PreparedDataset(
    schema=schema,
    vocabularies=vocabularies,
    items=items,
    queries=queries,
    splits=split_data,
    item_train_count=stats.item_train_count(train.item_index, len(raw.items)),
    train_items_by_query=stats.items_by_query(
      train.query_index, train.item_index, len(query_table)
    ),
    version=version,
  )
