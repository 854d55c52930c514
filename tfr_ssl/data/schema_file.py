"""schema.json of the CSV source: parsing and validation.

The file declares every feature (name = column, kind, role), which feature
is the item id and which the query (user) id, and how interactions.csv names
its columns, including the optional query-item column of the item-to-item
task. The exact format is documented in data/README.md. Every mistake is a
DataError that names schema.json and the line of the offending entry.
"""

from __future__ import annotations

import dataclasses
import json
import re

from tfr_ssl.data.contract import (
  KINDS,
  QUERY,
  ROLES,
  Feature,
  Schema,
  feature_name_problem,
)
from tfr_ssl.data.errors import DataError
from tfr_ssl.data.files import read_text

_TOP_KEYS = {"features", "item_id", "query_id", "interactions"}
_FEATURE_KEYS = {"name", "kind", "role"}
_INTERACTION_KEYS = {"query", "item", "weight", "timestamp", "query_item"}


@dataclasses.dataclass(frozen=True)
class CsvSchema:
  """A parsed schema.json.

  Attributes:
    schema: The features.
    query_column: interactions.csv column of the query id.
    item_column: interactions.csv column of the item id.
    weight_column: interactions.csv column of the weight, or None.
    timestamp_column: interactions.csv column of the timestamp, or None.

  The query-item column, if any, is `schema.query_item`.
  """

  schema: Schema
  query_column: str
  item_column: str
  weight_column: str | None
  timestamp_column: str | None

  @property
  def needs_users(self) -> bool:
    """Whether query features other than the id require users.csv."""
    return len(self.schema.query_features) > 1


def _line_of(text: str, *needles: str, start: int = 0) -> int | None:
  """1-based line of the first JSON string literal among `needles`."""
  for needle in needles:
    position = text.find(json.dumps(needle), start)
    if position >= 0:
      return text.count("\n", 0, position) + 1
  return None


def _string(value, text: str, path: str, key: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise DataError(
      f"must be a non-empty string, got {value!r}",
      path=path,
      line=_line_of(text, key),
      column=key,
    )
  return value


def parse(path: str) -> CsvSchema:
  """Reads and validates schema.json.

  Raises:
    DataError: invalid JSON, unknown keys, a missing or unknown kind/role, an
      id that is not a categorical feature of the right role, an ambiguous
      query-item column (also another interactions column, or a feature).
  """
  text = read_text(path, "utf-8")
  values = _top_level(text, path)
  features = _features(values["features"], text, path)
  try:
    schema = Schema(
      features=tuple(features),
      item_id=_string(values["item_id"], text, path, "item_id"),
      query_id=_string(values["query_id"], text, path, "query_id"),
    )
  except ValueError as e:
    raise DataError(str(e), path=path) from None
  names = _interaction_columns(
    values.get("interactions", {}), schema, text, path
  )
  query_item = names["query_item"]
  if query_item is not None:
    _check_query_item(query_item, names, features, text, path)
    schema = dataclasses.replace(schema, query_item=query_item)
  return CsvSchema(
    schema=schema,
    query_column=names["query"],
    item_column=names["item"],
    weight_column=names["weight"],
    timestamp_column=names["timestamp"],
  )


def _top_level(text: str, path: str) -> dict:
  """The JSON object, with only known keys and every required one."""
  try:
    values = json.loads(text)
  except json.JSONDecodeError as e:
    raise DataError(
      f"invalid JSON: {e.msg} (character {e.colno})", path=path, line=e.lineno
    ) from None
  if not isinstance(values, dict):
    raise DataError("must be a JSON object", path=path, line=1)
  unknown = sorted(set(values) - _TOP_KEYS)
  if unknown:
    raise DataError(
      f"unknown key (expected {sorted(_TOP_KEYS)})",
      path=path,
      line=_line_of(text, unknown[0]),
      column=unknown[0],
    )
  for key in ("features", "item_id", "query_id"):
    if key not in values:
      raise DataError(f"missing required key {key!r}", path=path)
  return values


def _features(entries, text: str, path: str) -> list[Feature]:
  """The `features` list, each entry validated."""
  if not isinstance(entries, list) or not entries:
    raise DataError(
      "'features' must be a non-empty list",
      path=path,
      line=_line_of(text, "features"),
      column="features",
    )
  return [_feature(entry, text, path) for entry in entries]


def _interaction_columns(
  columns, schema: Schema, text: str, path: str
) -> dict[str, str | None]:
  """interactions.csv column of each `_INTERACTION_KEYS` key (None: none).

  The query and item columns default to the id features' names.
  """
  if not isinstance(columns, dict):
    raise DataError(
      "'interactions' must be an object",
      path=path,
      line=_line_of(text, "interactions"),
      column="interactions",
    )
  unknown = sorted(set(columns) - _INTERACTION_KEYS)
  if unknown:
    raise DataError(
      f"unknown key in 'interactions' (expected {sorted(_INTERACTION_KEYS)})",
      path=path,
      line=_line_of(text, unknown[0]),
      column=unknown[0],
    )
  names = {
    "query": _string(
      columns.get("query", schema.query_id), text, path, "query"
    ),
    "item": _string(columns.get("item", schema.item_id), text, path, "item"),
  }
  for key in ("weight", "timestamp", "query_item"):
    value = columns.get(key)
    names[key] = None if value is None else _string(value, text, path, key)
  return names


def _check_query_item(
  column: str, names: dict, features: list[Feature], text: str, path: str
) -> None:
  """Refuses a query-item column that has another meaning as well.

  The column names the seed item of an item-to-item pair; it must be its own
  column of interactions.csv, not the interacted item, the user, the weight
  or the time, and not a feature (its features are the seed item's own).
  """
  line = _line_of(text, "query_item")
  for key in ("item", "query", "weight", "timestamp"):
    if names[key] == column:
      raise DataError(
        f"ambiguous schema: interactions.query_item {column!r} is also the "
        f"interactions.{key} column; the query item (the seed of an "
        "item-to-item pair) needs a column of its own",
        path=path,
        line=line,
        column="query_item",
      )
  if any(f.name == column for f in features):
    raise DataError(
      f"ambiguous schema: interactions.query_item {column!r} is also declared "
      "as a feature; the query item is a corpus item id, embedded with that "
      "item's own features, so it cannot be a feature as well",
      path=path,
      line=line,
      column="query_item",
    )


def _feature(entry, text: str, path: str) -> Feature:
  if not isinstance(entry, dict):
    raise DataError(
      f"each feature must be an object with {sorted(_FEATURE_KEYS)}, got "
      f"{entry!r}",
      path=path,
      line=_line_of(text, "features"),
      column="features",
    )
  name = entry.get("name")
  start, where = 0, None
  if isinstance(name, str):
    found = re.search(r'"name"\s*:\s*' + re.escape(json.dumps(name)), text)
    if found:
      start = found.start()
      where = text.count("\n", 0, start) + 1
  unknown = sorted(set(entry) - _FEATURE_KEYS)
  if unknown:
    raise DataError(
      f"unknown key in feature {name!r} (expected {sorted(_FEATURE_KEYS)})",
      path=path,
      line=_line_of(text, unknown[0], start=start) or where,
      column=unknown[0],
    )
  name = _string(name, text, path, "name")
  problem = feature_name_problem(name)
  if problem:
    raise DataError(problem, path=path, line=where, column="name")
  kind = entry.get("kind")
  if kind not in KINDS:
    raise DataError(
      f"feature {name!r}: kind must be one of {list(KINDS)}, got {kind!r}",
      path=path,
      line=(
        _line_of(text, kind, start=start) if isinstance(kind, str) else None
      )
      or where,
      column="kind",
    )
  role = entry.get("role")
  if role not in ROLES:
    raise DataError(
      f"feature {name!r}: role must be one of {list(ROLES)} ({QUERY!r} "
      f"features are columns of users.csv), got {role!r}",
      path=path,
      line=(
        _line_of(text, role, start=start) if isinstance(role, str) else None
      )
      or where,
      column="role",
    )
  return Feature(name=name, kind=kind, role=role)
