"""The one error type for bad input data.

Every problem in a user's files (a missing column, a malformed row, an item
that is not in the corpus, undecodable bytes) is reported as a `DataError`
that names the file, the line and the column, so the user can open the file
at the right place instead of reading a TensorFlow stack trace.
"""

from __future__ import annotations

# An error quotes at most this much of the input (a 2-million-column header
# once made a 23 MB error line).
MAX_CHARS = 500


def bounded(text: str, limit: int = MAX_CHARS) -> str:
  """`text`, cut to `limit` characters with a note of how many were cut."""
  if len(text) <= limit:
    return text
  return f"{text[:limit]}... ({len(text) - limit} more characters)"


class DataError(ValueError):
  """Bad input data, located in its file.

  Args:
    message: What is wrong, in the user's terms.
    path: The file at fault (None when the problem is not in one file).
    line: 1-based line number in `path`, when known.
    column: Name of the column (or JSON key) at fault, when known.

  Example:
    >>> str(DataError("not a number", path="x.csv", line=3, column="weight"))
    "x.csv, line 3, column 'weight': not a number"
  """

  def __init__(
    self,
    message: str,
    *,
    path: str | None = None,
    line: int | None = None,
    column: str | None = None,
  ):
    self.path = path
    self.line = line
    self.column = column
    message = bounded(message)
    self.reason = message
    where = [part for part in (path,) if part]
    if line is not None:
      where.append(f"line {line}")
    if column is not None:
      where.append(f"column {bounded(repr(column), 100)}")
    super().__init__(f"{', '.join(where)}: {message}" if where else message)
