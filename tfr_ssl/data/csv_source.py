"""The CSV source: items.csv, interactions.csv, optional users.csv, schema.json.

The format is documented in data/README.md (with a tiny example in
data/example/). Files are UTF-8 with a header row; multi-valued cells list
their values separated by `|`; an empty cell of a categorical feature is a
missing value. Columns that schema.json does not mention are ignored. An
optional query-item column of interactions.csv (`interactions.query_item`)
names the seed item of each item-to-item pair; an empty cell means none.
Such explicit pairs need no user: without a user column every interaction
belongs to the one query `NO_USER`, and only `item_to_item` can train on
the data (`has_users`).
"""

from __future__ import annotations

import csv
import io
import os

import numpy as np

from tfr_ssl.data.errors import DataError
from tfr_ssl.data.files import parse_numbers, read_text, require_file
from tfr_ssl.data.raw import Bags, RawData, RawInteractions, RawTable
from tfr_ssl.data.schema_file import CsvSchema, parse

MULTI_SEPARATOR = "|"
SCHEMA_FILE = "schema.json"
ITEMS_FILE = "items.csv"
INTERACTIONS_FILE = "interactions.csv"
USERS_FILE = "users.csv"
# The query (user) id of every interaction of a file without a user column.
NO_USER = "(no user)"


def has_users(vocabularies: dict, query_id: str) -> bool:
  """Whether the data names its users (False: see `NO_USER`)."""
  return vocabularies[query_id] != [NO_USER]


def files(data_dir: str) -> list[str]:
  """The files the source reads (their contents version the cache)."""
  _check_dir(data_dir)
  names = [SCHEMA_FILE, ITEMS_FILE, INTERACTIONS_FILE]
  paths = [require_file(os.path.join(data_dir, n)) for n in names]
  users = os.path.join(data_dir, USERS_FILE)
  return paths + ([users] if os.path.exists(users) else [])


def _check_dir(data_dir: str) -> None:
  if not data_dir:
    raise DataError(
      "source csv needs --data_dir (a directory with schema.json, items.csv "
      "and interactions.csv)"
    )
  if not os.path.isdir(data_dir):
    raise DataError("directory not found", path=data_dir)


def read_csv(
  path: str, required: list[str], optional: tuple[str, ...] = ()
) -> tuple[dict[str, list[str]], np.ndarray]:
  """The `required` columns of a CSV file, as stripped strings.

  Args:
    path: The file (UTF-8, header row).
    required: Column names that must be in the header.
    optional: Names read as well when the header has them.

  Returns:
    (column name -> cells, int64 1-based line of each row), with the
    optional columns the header has.

  Raises:
    DataError: missing/empty/undecodable file, missing or duplicate column,
      a row with the wrong number of fields, no data rows.
  """
  text = read_text(path, "utf-8", delimiter=",").lstrip("\ufeff")
  reader = csv.reader(io.StringIO(text))
  try:
    header = [name.strip() for name in next(reader)]
    seen = set()
    for name in header:
      if name in seen:
        raise DataError("duplicate column", path=path, line=1, column=name)
      seen.add(name)
    for name in required:
      if name not in seen:
        raise DataError(
          f"missing column (the header has {_names(header)})",
          path=path,
          line=1,
          column=name,
        )
    required = required + [
      name for name in optional if name in seen and name not in required
    ]
    index = [header.index(name) for name in required]
    cells = [[] for _ in required]
    lines = []
    width = len(header)
    start = reader.line_num + 1
    for row in reader:
      if reader.line_num > start:
        _check_quotes(text, start, reader.line_num, path)
      start = reader.line_num + 1
      if not row or (len(row) == 1 and not row[0].strip()):
        continue
      if len(row) != width:
        raise DataError(
          f"expected {width} fields (as in the header), got {len(row)}",
          path=path,
          line=reader.line_num,
          # The first missing column, or the last one for extra fields.
          column=header[min(len(row), width - 1)],
        )
      for column, i in zip(cells, index, strict=True):
        column.append(row[i].strip())
      lines.append(reader.line_num)
  except csv.Error as e:
    _check_quotes(text, start, reader.line_num, path)
    raise DataError(
      f"malformed CSV: {e}", path=path, line=reader.line_num
    ) from None
  if not lines:
    raise DataError("no data rows after the header", path=path, line=1)
  return dict(zip(required, cells, strict=True)), np.array(lines, np.int64)


def _names(header: list[str], limit: int = 20) -> str:
  """The header's names for an error line: at most `limit` of them."""
  shown = [n if len(n) <= 40 else n[:37] + "..." for n in header[:limit]]
  more = len(header) - limit
  return f"{shown}" + (f" and {more} more" if more > 0 else "")


def _check_quotes(text: str, first: int, last: int, path: str) -> None:
  """Refuses a row spanning lines first..last that a quote left open.

  A quoted cell may hold line breaks, so a row over several lines is legal;
  but a quote that is never closed swallows the rest of the file into one
  cell, and the reader only notices at the end. A row that reaches the end
  of the file with an odd number of quotes is that case: report the line
  where the row, and so the open quote, began.
  """
  rows = text.split("\n")
  if last < len(rows) - (1 if text.endswith("\n") else 0):
    return  # the row ended before the end of the file: its quotes closed
  span = "\n".join(rows[first - 1 : last])
  if span.count('"') % 2 == 1:
    raise DataError(
      f"a quoted cell opened on this line is never closed (it runs to the "
      f"end of the file, line {last}); close the quote or remove it",
      path=path,
      line=first,
    )


def _bags(cells: list[str]) -> Bags:
  split = [
    [v.strip() for v in cell.split(MULTI_SEPARATOR) if v.strip()]
    for cell in cells
  ]
  return Bags(
    np.array([v for bag in split for v in bag], dtype=str),
    np.array([len(bag) for bag in split], dtype=np.int64),
  )


def _table(path: str, features) -> RawTable:
  names = [f.name for f in features]
  cells, lines = read_csv(path, names)
  columns = {}
  for feature in features:
    values = cells[feature.name]
    columns[feature.name] = (
      _bags(values) if feature.multi else np.array(values, dtype=str)
    )
  return RawTable(path=path, columns=columns, lines=lines)


def _timestamps(values: list[str], path: str, lines, column: str):
  """Integer seconds from numbers, or from ISO 8601 dates/datetimes.

  A column holds one form or the other: "100" could be a second count or the
  year 100, so a mix is refused rather than guessed.
  """
  try:
    numbers = np.array(values, dtype=np.float64)
    if np.isfinite(numbers).all():
      return numbers.astype(np.int64)
  except ValueError:
    pass
  cells = np.array(values, dtype=str)
  numeric = np.char.isdigit(np.char.lstrip(cells, "+-"))
  if numeric.any():
    row = int(np.flatnonzero(numeric)[0])
    raise DataError(
      f"{values[row]!r} is a number but other timestamps are dates; use "
      "one form (seconds, or ISO 8601 dates) for the whole column",
      path=path,
      line=int(lines[row]),
      column=column,
    )
  try:
    dates = np.array(values, dtype="datetime64[s]")
    if not np.isnat(dates).any():
      return dates.astype(np.int64)
  except ValueError:
    pass
  for value, line in zip(values, lines, strict=True):
    try:
      if not np.isnat(np.datetime64(value, "s")):
        continue
    except ValueError:
      pass
    raise DataError(
      f"{value!r} is not a timestamp (a number of seconds or an ISO 8601 "
      "date like 2020-01-31 or 2020-01-31T12:00:00)",
      path=path,
      line=int(line),
      column=column,
    )
  raise DataError("unreadable timestamps", path=path, column=column)


def _interactions(path: str, spec: CsvSchema) -> tuple[RawInteractions, bool]:
  """The interactions, and whether the file has a user column."""
  query_item = spec.schema.query_item
  required = [spec.item_column]
  required += [
    c for c in (spec.weight_column, spec.timestamp_column, query_item) if c
  ]
  # Explicit (query item, item) pairs need no user: the column is optional.
  users = () if query_item else (spec.query_column,)
  cells, lines = read_csv(
    path, [*users, *required], optional=(spec.query_column,)
  )
  named = spec.query_column in cells
  if not named:
    if spec.needs_users:
      raise DataError(
        f"missing column: the query features of {USERS_FILE} are joined to "
        "the interactions by this user column",
        path=path,
        line=1,
        column=spec.query_column,
      )
    cells[spec.query_column] = [NO_USER] * len(lines)
  for column in (spec.query_column, spec.item_column):
    empty = [i for i, v in enumerate(cells[column]) if not v]
    if empty:
      raise DataError(
        "empty id", path=path, line=int(lines[empty[0]]), column=column
      )
  weight = None
  if spec.weight_column:
    weight = _weights(cells[spec.weight_column], path, lines, spec)
  timestamp = None
  if spec.timestamp_column:
    timestamp = _timestamps(
      cells[spec.timestamp_column], path, lines, spec.timestamp_column
    )
  raw = RawInteractions(
    path=path,
    query_key=np.array(cells[spec.query_column], dtype=str),
    item_key=np.array(cells[spec.item_column], dtype=str),
    weight=weight,
    timestamp=timestamp,
    lines=lines,
    query_column=spec.query_column,
    item_column=spec.item_column,
    no_timestamp_reason=(
      "schema.json declares no interactions.timestamp column"
    ),
    # Raw item ids ("" = no query item), resolved to corpus rows by build.py.
    query_item_key=(
      None if query_item is None else np.array(cells[query_item], dtype=str)
    ),
  )
  return raw, named


def _weights(values, path: str, lines, spec: CsvSchema) -> np.ndarray:
  """The weight column: numbers, none negative, not all zero."""
  column = spec.weight_column
  weight = parse_numbers(
    values, np.float64, path=path, lines=lines, column=column
  )
  negative = np.flatnonzero(weight < 0)
  if negative.size:
    raise DataError(
      f"weight {weight[negative[0]]} is negative",
      path=path,
      line=int(lines[negative[0]]),
      column=column,
    )
  if not np.any(weight > 0):
    raise DataError(
      f"every weight is 0 ({weight.size} rows), so the main task would "
      "train on nothing; give positive weights",
      path=path,
      column=column,
    )
  return weight


def read(data_dir: str) -> RawData:
  """Reads a CSV dataset directory.

  Raises:
    DataError: any problem in schema.json or the CSV files.
  """
  _check_dir(data_dir)
  spec = parse(require_file(os.path.join(data_dir, SCHEMA_FILE)))
  schema = spec.schema
  items = _table(
    require_file(os.path.join(data_dir, ITEMS_FILE)), schema.item_features
  )
  interactions, named = _interactions(
    require_file(os.path.join(data_dir, INTERACTIONS_FILE)), spec
  )
  users_path = os.path.join(data_dir, USERS_FILE)
  queries = None
  if spec.needs_users:
    require_file(
      users_path,
      "schema.json declares query features besides the query id, which are "
      "columns of users.csv",
    )
  # Without user ids in the interactions, users.csv has nothing to join.
  if named and os.path.exists(users_path):
    queries = _table(users_path, schema.query_features)
  return RawData(
    schema=schema, items=items, queries=queries, interactions=interactions
  )
