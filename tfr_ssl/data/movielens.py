"""MovieLens ML-1M and ML-100K, auto-detected from the directory contents.

ML-1M: `ratings.dat` (`UserID::MovieID::Rating[::Timestamp]`; copies with 3
fields have no timestamps), `movies.dat` (`MovieID::Title::Genres`, genres
`|`-separated), `users.dat` (`UserID::Gender::Age::Occupation::Zip`).
ML-100K: `u.data` (tab-separated user, item, rating, timestamp), `u.item`
(`|`-separated, 19 genre flags at the end), `u.user` (`id|age|gender|
occupation|zip`), optional `u.genre` (genre names). All ISO-8859-1.

Item features: movie_id, genres (multi), year, decade, title (multi:
lowercased words of the title without the trailing year). Query features:
user_id, gender, age (ML-1M's age codes; ML-100K ages are bucketed the same
way), occupation, zip_prefix (first character of the zip code). Positives are
ratings >= `min_rating`, with weight 1.
"""

from __future__ import annotations

import os
import re

import numpy as np

from tfr_ssl.data.contract import (
  CATEGORICAL,
  ITEM,
  MULTI_CATEGORICAL,
  QUERY,
  Feature,
  Schema,
)
from tfr_ssl.data.errors import DataError
from tfr_ssl.data.files import read_text, require_file
from tfr_ssl.data.raw import Bags, RawData, RawInteractions, RawTable

ENCODING = "iso-8859-1"
SCHEMA = Schema(
  features=(
    Feature("movie_id", CATEGORICAL, ITEM),
    Feature("genres", MULTI_CATEGORICAL, ITEM),
    Feature("year", CATEGORICAL, ITEM),
    Feature("decade", CATEGORICAL, ITEM),
    Feature("title", MULTI_CATEGORICAL, ITEM),
    Feature("user_id", CATEGORICAL, QUERY),
    Feature("gender", CATEGORICAL, QUERY),
    Feature("age", CATEGORICAL, QUERY),
    Feature("occupation", CATEGORICAL, QUERY),
    Feature("zip_prefix", CATEGORICAL, QUERY),
  ),
  item_id="movie_id",
  query_id="user_id",
)
ML_1M = ("ratings.dat", "movies.dat", "users.dat")
ML_100K = ("u.data", "u.item", "u.user")
GENRES_100K = (
  "unknown",
  "Action",
  "Adventure",
  "Animation",
  "Children's",
  "Comedy",
  "Crime",
  "Documentary",
  "Drama",
  "Fantasy",
  "Film-Noir",
  "Horror",
  "Musical",
  "Mystery",
  "Romance",
  "Sci-Fi",
  "Thriller",
  "War",
  "Western",
)
# ML-1M age codes; ML-100K ages map to the code of their bucket.
AGE_CODES = np.array([1, 18, 25, 35, 45, 50, 56])
_YEAR = re.compile(r"\((\d{4})\)\s*$")
_WORD = re.compile(r"[^\W_]+")


def detect(data_dir: str) -> str:
  """`ml-1m` or `ml-100k`, from the files present in `data_dir`."""
  if not data_dir:
    raise DataError(
      "source movielens needs --data_dir (an ML-1M or ML-100K directory)"
    )
  if not os.path.isdir(data_dir):
    raise DataError("directory not found", path=data_dir)
  if os.path.exists(os.path.join(data_dir, ML_1M[0])):
    return "ml-1m"
  if os.path.exists(os.path.join(data_dir, ML_100K[0])):
    return "ml-100k"
  raise DataError(
    "not a MovieLens directory: expected ratings.dat (ML-1M) or u.data "
    "(ML-100K)",
    path=data_dir,
  )


def files(data_dir: str) -> list[str]:
  """The files the source reads (their contents version the cache)."""
  names = ML_1M if detect(data_dir) == "ml-1m" else ML_100K
  paths = [require_file(os.path.join(data_dir, n)) for n in names]
  genre = os.path.join(data_dir, "u.genre")
  if names is ML_100K and os.path.exists(genre):
    paths.append(genre)
  return paths


def _records(
  path: str, separator: str, names: tuple[str, ...]
) -> tuple[list[list[str]], np.ndarray]:
  """Rows of a small file with exactly `len(names)` fields per line."""
  text = read_text(path, ENCODING)
  rows, lines = [], []
  for number, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    fields = line.split(separator)
    if len(fields) != len(names):
      raise DataError(
        f"expected {len(names)} {separator!r}-separated fields "
        f"({', '.join(names)}), got {len(fields)}",
        path=path,
        line=number,
        column=names[min(len(fields), len(names) - 1)],
      )
    rows.append(fields)
    lines.append(number)
  if not rows:
    raise DataError("file has no rows", path=path)
  return rows, np.array(lines, dtype=np.int64)


def _integers(
  values: list[str], path: str, lines: np.ndarray, column: str
) -> np.ndarray:
  try:
    return np.array([int(v) for v in values], dtype=np.int64)
  except ValueError:
    for value, line in zip(values, lines, strict=True):
      if not value.strip().lstrip("-").isdigit():
        raise DataError(
          f"{value!r} is not an integer",
          path=path,
          line=int(line),
          column=column,
        ) from None
    raise


def _numeric_table(
  path: str, separator: str, names: tuple[str, ...], allowed: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
  """A large all-numeric file as float64 [rows, fields] and line numbers.

  One `split` and one numpy conversion parse the whole file; only when that
  fails is it re-read line by line to name the first bad line and field.
  """
  text = read_text(path, ENCODING)
  first = text.lstrip("\n").split("\n", 1)[0]
  width = first.count(separator) + 1
  if width not in allowed:
    expected = " or ".join(str(a) for a in allowed)
    raise DataError(
      f"expected {expected} {separator!r}-separated fields "
      f"({', '.join(names)}), got {width}",
      path=path,
      line=text.split("\n").index(first) + 1,
    )
  body = text.strip("\n")
  if "\n\n" not in body and not text.startswith("\n"):
    tokens = body.replace(separator, " ").split()
    rows = body.count("\n") + 1
    if len(tokens) == rows * width:
      try:
        table = np.array(tokens, dtype=np.float64).reshape(rows, width)
        if np.isfinite(table).all():
          return table, np.arange(1, rows + 1, dtype=np.int64)
      except ValueError:
        pass
  values, lines = [], []
  for number, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    fields = line.split(separator)
    if len(fields) != width:
      raise DataError(
        f"expected {width} {separator!r}-separated fields like line 1, "
        f"got {len(fields)}",
        path=path,
        line=number,
      )
    for name, field in zip(names, fields, strict=False):
      try:
        if not np.isfinite(float(field)):
          raise ValueError(field)
      except ValueError:
        raise DataError(
          f"{field!r} is not a number", path=path, line=number, column=name
        ) from None
    values.append([float(f) for f in fields])
    lines.append(number)
  return np.array(values, dtype=np.float64), np.array(lines, dtype=np.int64)


def _integral(table: np.ndarray, lines, path: str, names) -> None:
  """Id and timestamp columns must hold integers."""
  for column, name in enumerate(names):
    if name == "rating" or column >= table.shape[1]:
      continue
    bad = np.flatnonzero(table[:, column] != np.round(table[:, column]))
    if bad.size:
      raise DataError(
        f"{table[bad[0], column].item()!r} is not an integer",
        path=path,
        line=int(lines[bad[0]]),
        column=name,
      )


def _ratings(
  path: str, separator: str, min_rating: float, allowed: tuple[int, ...]
) -> RawInteractions:
  names = ("user_id", "movie_id", "rating", "timestamp")
  table, lines = _numeric_table(path, separator, names, allowed)
  _integral(table, lines, path, names)
  positive = table[:, 2] >= min_rating
  if not positive.any():
    raise DataError(
      f"no rating is >= min_rating={min_rating}: no positives", path=path
    )
  table, lines = table[positive], lines[positive]
  has_time = table.shape[1] == 4
  return RawInteractions(
    path=path,
    query_key=table[:, 0].astype(np.int64),
    item_key=table[:, 1].astype(np.int64),
    weight=None,
    timestamp=table[:, 3].astype(np.int64) if has_time else None,
    lines=lines,
    query_column="user_id",
    item_column="movie_id",
    no_timestamp_reason=(
      f"{os.path.basename(path)} has 3 fields "
      "(UserID::MovieID::Rating) and no Timestamp"
    ),
  )


def _title_features(titles: list[str]) -> tuple[np.ndarray, Bags]:
  """(year per title or "", bag of lowercased title words)."""
  years, words, lengths = [], [], []
  for title in titles:
    match = _YEAR.search(title)
    years.append(match.group(1) if match else "")
    tokens = _WORD.findall(_YEAR.sub("", title).lower())
    words.extend(tokens)
    lengths.append(len(tokens))
  return np.array(years), Bags(np.array(words, dtype=str), np.array(lengths))


def _decades(years: np.ndarray) -> np.ndarray:
  return np.array([f"{y[:3]}0s" if y else "" for y in years.tolist()])


def _bags(cells: list[list[str]]) -> Bags:
  values = [v for cell in cells for v in cell]
  return Bags(
    np.array(values, dtype=str), np.array([len(c) for c in cells], np.int64)
  )


def _items_1m(path: str) -> RawTable:
  names = ("movie_id", "title", "genres")
  rows, lines = _records(path, "::", names)
  movie_id = _integers([r[0] for r in rows], path, lines, "movie_id")
  years, title = _title_features([r[1] for r in rows])
  genres = _bags([[g for g in r[2].strip().split("|") if g] for r in rows])
  return RawTable(
    path=path,
    columns={
      "movie_id": movie_id,
      "genres": genres,
      "year": years,
      "decade": _decades(years),
      "title": title,
    },
    lines=lines,
  )


def _items_100k(path: str, genre_path: str) -> RawTable:
  genre_names = list(GENRES_100K)
  if os.path.exists(genre_path):
    rows, _ = _records(genre_path, "|", ("genre", "index"))
    genre_names = [r[0] for r in rows]
  names = ("movie_id", "title", "release_date", "video_release_date", "url")
  names += tuple(f"genre:{g}" for g in genre_names)
  rows, lines = _records(path, "|", names)
  movie_id = _integers([r[0] for r in rows], path, lines, "movie_id")
  years, title = _title_features([r[1] for r in rows])
  # Fall back on the release date (dd-Mon-yyyy) for titles without a year.
  for i, row in enumerate(rows):
    if not years[i] and row[2][-4:].isdigit():
      years[i] = row[2][-4:]
  genres = []
  for row, line in zip(rows, lines, strict=True):
    flags = row[5:]
    for name, flag in zip(genre_names, flags, strict=True):
      if flag not in ("0", "1"):
        raise DataError(
          f"genre flag must be 0 or 1, got {flag!r}",
          path=path,
          line=int(line),
          column=f"genre:{name}",
        )
    genres.append(
      [g for g, f in zip(genre_names, flags, strict=True) if f == "1"]
    )
  return RawTable(
    path=path,
    columns={
      "movie_id": movie_id,
      "genres": _bags(genres),
      "year": years,
      "decade": _decades(years),
      "title": title,
    },
    lines=lines,
  )


def _users(path: str, names: tuple[str, ...]) -> RawTable:
  separator = "::" if path.endswith(".dat") else "|"
  rows, lines = _records(path, separator, names)
  columns = {n: [r[i].strip() for r in rows] for i, n in enumerate(names)}
  user_id = _integers(columns["user_id"], path, lines, "user_id")
  if "age_code" in columns:
    age = np.array(columns["age_code"])
  else:
    years = _integers(columns["age"], path, lines, "age")
    codes = AGE_CODES[np.searchsorted(AGE_CODES, years, side="right") - 1]
    age = np.where(years < AGE_CODES[1], "1", codes.astype(str))
  return RawTable(
    path=path,
    columns={
      "user_id": user_id,
      "gender": np.array(columns["gender"]),
      "age": age,
      "occupation": np.array(columns["occupation"]),
      "zip_prefix": np.array([z[:1] for z in columns["zip"]]),
    },
    lines=lines,
  )


def read(data_dir: str, min_rating: float) -> RawData:
  """Reads an ML-1M or ML-100K directory.

  Args:
    data_dir: The directory (auto-detected format).
    min_rating: Ratings at or above it are positives.

  Returns:
    Raw columns for the shared preparation.

  Raises:
    DataError: a missing file, a malformed line, no positives.
  """
  if detect(data_dir) == "ml-1m":
    ratings, movies, users = (os.path.join(data_dir, n) for n in ML_1M)
    for path in (ratings, movies, users):
      require_file(path)
    interactions = _ratings(ratings, "::", min_rating, (3, 4))
    items = _items_1m(movies)
    queries = _users(
      users, ("user_id", "gender", "age_code", "occupation", "zip")
    )
  else:
    ratings, movies, users = (os.path.join(data_dir, n) for n in ML_100K)
    for path in (ratings, movies, users):
      require_file(path)
    interactions = _ratings(ratings, "\t", min_rating, (4,))
    items = _items_100k(movies, os.path.join(data_dir, "u.genre"))
    queries = _users(users, ("user_id", "age", "gender", "occupation", "zip"))
  return RawData(
    schema=SCHEMA, items=items, queries=queries, interactions=interactions
  )
