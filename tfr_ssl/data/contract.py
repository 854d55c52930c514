"""The one prepared-dataset form that every source produces.

Ids: each feature has a vocabulary of raw string values. Id 0 is the
out-of-vocabulary bucket and vocabulary entry `v` has id `v + 1`, so an
embedding table for a feature has `len(vocabulary) + 1` rows. Multi-valued
features are stored as a dense `[rows, max_len]` int32 matrix padded with
`PAD = -1` (the encoders mask padding out of the pooled mean).

Rows: items are rows of the corpus (`item_index` in `0..num_items-1`),
queries are rows of the query table (`query_index`). Interactions refer to
both by row, so training streams only integer rows and gathers the feature
tables, which stay in memory as tensors.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

PAD = -1
OOV = 0
CATEGORICAL = "categorical"
MULTI_CATEGORICAL = "multi_categorical"
KINDS = (CATEGORICAL, MULTI_CATEGORICAL)
QUERY = "query"
ITEM = "item"
ROLES = (QUERY, ITEM)
SPLITS = ("train", "validation", "test")
# Where the query of the item-to-item task comes from: a column of the
# interactions naming the query item, or each query's previous item.
FROM_COLUMN = "column"
FROM_PREVIOUS_ITEM = "previous_item"
# Feature names become input names of SavedModel signatures, which keep only
# names of this form (`age group` or `país` fail at export, `item-id` would
# be renamed `item_id`), and the retrieval model's `exclude` signature takes
# one input of its own, and the query tower's `history` input is not a
# column.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
RESERVED_NAMES = ("exclude", "history")


def feature_name_problem(name: str) -> str | None:
  """Why `name` cannot be a feature name, or None when it can."""
  if name in RESERVED_NAMES:
    return (
      f"feature name {name!r} is reserved (the retrieval model's "
      f"{name!r} input); rename the column"
    )
  if not NAME_PATTERN.fullmatch(name):
    shown = name if len(name) <= 60 else name[:57] + "..."
    return (
      f"feature name {shown!r} cannot be a SavedModel input name: use ASCII "
      "letters, digits and '_', starting with a letter (e.g. "
      f"{_suggest(name)!r})"
    )
  return None


def _suggest(name: str) -> str:
  ascii_name = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "feature"
  if not ascii_name[0].isalpha():
    ascii_name = f"f_{ascii_name}"
  return ascii_name[:60]


@dataclasses.dataclass(frozen=True)
class Feature:
  """One categorical feature.

  Attributes:
    name: Column name in the raw data; key in feature dicts.
    kind: `categorical` (one value) or `multi_categorical` (a bag).
    role: `query` or `item`.
  """

  name: str
  kind: str
  role: str

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(
        f"Feature {self.name!r}: kind must be one of {list(KINDS)}, "
        f"got {self.kind!r}."
      )
    if self.role not in ROLES:
      raise ValueError(
        f"Feature {self.name!r}: role must be one of {list(ROLES)}, "
        f"got {self.role!r}."
      )

  @property
  def multi(self) -> bool:
    return self.kind == MULTI_CATEGORICAL


@dataclasses.dataclass(frozen=True)
class Schema:
  """Features and the special columns of a dataset.

  Attributes:
    features: Every feature, query and item, in a fixed order.
    item_id: Name of the item id feature (an item feature, categorical).
    query_id: Name of the query (user) id feature, a query feature.
    query_item: Name of the interactions column holding each interaction's
      query item for the item-to-item task (a corpus item id, or nothing),
      or None: the query is then the previous item of the same query within
      the same split (session logs). Not a feature name: the query item is
      embedded with the corpus item's own features.
  """

  features: tuple[Feature, ...]
  item_id: str
  query_id: str
  query_item: str | None = None

  def __post_init__(self):
    names = [f.name for f in self.features]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
      raise ValueError(f"Schema declares features twice: {dupes}.")
    by_name = {f.name: f for f in self.features}
    for special, role in ((self.item_id, ITEM), (self.query_id, QUERY)):
      feature = by_name.get(special)
      if feature is None or feature.role != role or feature.multi:
        raise ValueError(
          f"Schema: {special!r} must be a categorical {role} feature."
        )
    if self.query_item is not None:
      if not self.query_item:
        raise ValueError("Schema: query_item must be a column name or None.")
      if self.query_item in by_name:
        raise ValueError(
          f"Schema: query_item {self.query_item!r} is also a feature; the "
          "query item column holds corpus item ids, whose features are the "
          "item's own."
        )

  @property
  def item_to_item_source(self) -> str:
    """`column` (the query_item column) or `previous_item`."""
    return FROM_PREVIOUS_ITEM if self.query_item is None else FROM_COLUMN

  @property
  def item_features(self) -> tuple[Feature, ...]:
    return tuple(f for f in self.features if f.role == ITEM)

  @property
  def query_features(self) -> tuple[Feature, ...]:
    return tuple(f for f in self.features if f.role == QUERY)

  def feature(self, name: str) -> Feature:
    for f in self.features:
      if f.name == name:
        return f
    raise KeyError(f"Schema has no feature {name!r}.")

  def to_dict(self) -> dict:
    values = {
      "features": [dataclasses.asdict(f) for f in self.features],
      "item_id": self.item_id,
      "query_id": self.query_id,
    }
    if self.query_item is not None:
      values["query_item"] = self.query_item
    return values

  @classmethod
  def from_dict(cls, values: Mapping) -> Schema:
    return cls(
      features=tuple(Feature(**f) for f in values["features"]),
      item_id=values["item_id"],
      query_id=values["query_id"],
      query_item=values.get("query_item"),
    )


@dataclasses.dataclass
class Interactions:
  """One split of (query, item) pairs, by row.

  Attributes:
    query_index: int32 [n], rows of the query table.
    item_index: int32 [n], rows of the item corpus.
    weight: float32 [n], example weights (1.0 when the data has none).
    timestamp: int64 [n] or None when the data has no timestamps.
    prev_item_index: int32 [n], the query of the item-to-item task, a
      corpus row or PAD (no query item). With a `schema.query_item` column,
      the row of that column's item (PAD where it is empty); otherwise
      (session logs) the query's previous item within the same split (by
      timestamp, else by file order; PAD for its first interaction in the
      split).
  """

  query_index: np.ndarray
  item_index: np.ndarray
  weight: np.ndarray
  timestamp: np.ndarray | None
  prev_item_index: np.ndarray

  def __len__(self) -> int:
    return int(self.item_index.shape[0])


@dataclasses.dataclass
class PreparedDataset:
  """A prepared dataset: schema, id tables, splits and statistics.

  Attributes:
    schema: The features.
    vocabularies: feature name -> raw values; value `v` has id `v + 1`.
    items: item feature name -> int32 [num_items] or [num_items, max_len].
    queries: query feature name -> int32 [num_queries] or [.., max_len].
    splits: `train`, `validation`, `test` -> Interactions.
    item_train_count: int64 [num_items], occurrences in the train split.
    train_items_by_query: CSR of the items each query saw in training:
      (indptr int64 [num_queries + 1], indices int32 [nnz]).
    version: The cache version string this data was stored under.
  """

  schema: Schema
  vocabularies: dict[str, list[str]]
  items: dict[str, np.ndarray]
  queries: dict[str, np.ndarray]
  splits: dict[str, Interactions]
  item_train_count: np.ndarray
  train_items_by_query: tuple[np.ndarray, np.ndarray]
  version: str = ""

  @property
  def num_items(self) -> int:
    return int(self.items[self.schema.item_id].shape[0])

  @property
  def num_queries(self) -> int:
    return int(self.queries[self.schema.query_id].shape[0])

  @property
  def item_to_item_source(self) -> str:
    """Where `prev_item_index` comes from: `column` or `previous_item`."""
    return self.schema.item_to_item_source

  def vocabulary_size(self, name: str) -> int:
    """Embedding rows for `name`: the vocabulary plus the OOV bucket."""
    return len(self.vocabularies[name]) + 1

  def item_keys(self) -> list[str]:
    """Raw item id of every corpus row."""
    vocab = self.vocabularies[self.schema.item_id]
    return [
      vocab[i - 1] if i > 0 else "" for i in self.items[self.schema.item_id]
    ]
