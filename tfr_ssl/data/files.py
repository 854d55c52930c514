"""Reading raw files: existence, decoding, numbers, and content hashes.

Each reader turns a low-level failure into a `DataError` that points at the
file, line and column. Numbers are parsed with one vectorised numpy call; only
when that fails is the column scanned value by value to find the first bad
line, so the common case stays fast and the error case stays precise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

import numpy as np

from tfr_ssl.data.errors import DataError


def require_file(path: str, what: str = "") -> str:
  """Returns `path`, or raises a DataError when it is not a file."""
  if not os.path.isfile(path):
    hint = f" ({what})" if what else ""
    raise DataError(f"file not found{hint}", path=path)
  return path


def read_text(path: str, encoding: str, *, delimiter: str | None = None) -> str:
  """Reads a whole text file, refusing empty and undecodable files.

  Args:
    path: The file.
    encoding: Its expected encoding (e.g. `utf-8`, `iso-8859-1`).
    delimiter: Field delimiter; with it, a decoding error also names the
      column (from the header line) that holds the bad bytes.

  Returns:
    The decoded text, universal newlines applied.

  Raises:
    DataError: the file is missing, empty, or not valid `encoding`.
  """
  require_file(path)
  with open(path, "rb") as f:
    data = f.read()
  if not data.strip():
    raise DataError("file is empty", path=path)
  try:
    text = data.decode(encoding)
  except UnicodeDecodeError as e:
    raise _decode_error(path, data, e, encoding, delimiter) from None
  return text.replace("\r\n", "\n").replace("\r", "\n")


def _decode_error(
  path: str,
  data: bytes,
  error: UnicodeDecodeError,
  encoding: str,
  delimiter: str | None,
) -> DataError:
  line_start = data.rfind(b"\n", 0, error.start) + 1
  line = data.count(b"\n", 0, error.start) + 1
  column = None
  if delimiter:
    header = data.split(b"\n", 1)[0].decode(encoding, errors="replace")
    names = [n.strip() for n in header.split(delimiter)]
    index = data[line_start : error.start].count(delimiter.encode())
    if index < len(names):
      column = names[index]
  return DataError(
    f"bytes {data[error.start : error.end]!r} at character "
    f"{error.start - line_start + 1} are not valid {encoding} text",
    path=path,
    line=line,
    column=column,
  )


def parse_numbers(
  values: Sequence[str],
  dtype: type,
  *,
  path: str,
  lines: np.ndarray,
  column: str,
) -> np.ndarray:
  """Parses strings to numbers, naming the first bad line on failure.

  Args:
    values: The cells of one column.
    dtype: `np.int64` or `np.float64`.
    path: File of the column (for errors).
    lines: 1-based line of each value (for errors).
    column: Column name (for errors).

  Returns:
    A 1-D array of `dtype`.

  Raises:
    DataError: a value that is not a (finite) number of that type.
  """
  kind = "an integer" if dtype is np.int64 else "a number"
  try:
    array = np.array(values, dtype=dtype)
    if array.ndim == 1 and (dtype is np.int64 or np.isfinite(array).all()):
      return array
  except (ValueError, OverflowError):
    pass
  for value, line in zip(values, lines, strict=True):
    try:
      number = dtype(value)
      if dtype is np.float64 and not np.isfinite(number):
        raise ValueError(value)
    except (ValueError, OverflowError):
      raise DataError(
        f"{value!r} is not {kind}", path=path, line=int(line), column=column
      ) from None
  raise DataError(f"not {kind}", path=path, column=column)


def fingerprint(paths: Iterable[str]) -> str:
  """A hash of the files' names, sizes and contents.

  Contents are hashed (not only sizes and modification times), so an edit
  that keeps the size, or a copy with a fresh mtime, is judged by what the
  file holds; hashing runs at disk speed (~1 GB/s).
  """
  digest = hashlib.sha256()
  for path in paths:
    content = hashlib.blake2b()
    with open(path, "rb") as f:
      for block in iter(lambda f=f: f.read(1 << 22), b""):
        content.update(block)
    digest.update(os.path.basename(path).encode())
    digest.update(str(os.path.getsize(path)).encode())
    digest.update(content.digest())
  return digest.hexdigest()
