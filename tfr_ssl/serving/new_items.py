"""New items for the index without retraining: the daily incremental update.

A two-tower model embeds an item from its features alone, so an item that
appeared after training is indexed by running the *exported* item tower
(`export.load_tower`) over its raw features: no checkpoint, no model
rebuild. `pipelines.build_index --add_items=items.csv` reads such a file
(`read`), merges it into the corpus (`merge`) and indexes the result.

The file has the format of the CSV source's items.csv (data/README.md):
UTF-8, a header row, standard double-quote quoting, cells stripped, blank
lines skipped, `|` between the values of a multi-valued cell. Its columns
must be exactly the model's item features (those of the export manifest's
schema), because a misspelt or missing column would otherwise silently
become an unknown value. Unlike the loader, extra columns are therefore
errors, not ignored.

Values are sent to the tower as raw strings, so a value the model has not
seen (a new id, a new creator) maps to its feature's out-of-vocabulary id
like any unknown serving input. A new item's id is always unknown: it is
embedded from its content features (how its unknown id is embedded is the
model's business, see `features.FeatureEncoder`).

An id that is already in the corpus *replaces* that corpus item: the item
keeps its row (and its trained id embedding, since its id is known) and is
embedded from the file's features instead of the training data's. This is
what a daily feed of "new and changed items" wants; the manifest counts
replaced items apart from added ones.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence

import numpy as np

from tfr_ssl import atomic
from tfr_ssl.data import contract, csv_source
from tfr_ssl.data.errors import DataError
from tfr_ssl.data.files import read_text, require_file
from tfr_ssl.serving import export

ITEMS_FILE = "items.jsonl"


@dataclasses.dataclass(frozen=True)
class NewItems:
  """Items read from an --add_items file.

  Attributes:
    path: The file, as given.
    ids: Raw item ids, in file order.
    raw: feature name -> object array [n] of raw strings, as an exported
      tower takes them (multi-valued: values joined by `|`).
    lines: int64 [n], the file line of each item.
    sha256: Hex digest of the file's bytes.
  """

  path: str
  ids: list[str]
  raw: dict[str, np.ndarray]
  lines: np.ndarray
  sha256: str

  def __len__(self) -> int:
    return len(self.ids)


def read(path: str, schema: contract.Schema) -> NewItems:
  """Reads a CSV of new items with exactly the schema's item feature columns.

  Raises:
    DataError: (naming the file, line and column) a missing file, a missing
      or extra column, a malformed row, an empty id, an id repeated in the
      file.
  """
  features = schema.item_features
  names = [f.name for f in features]
  with open(require_file(path), "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  text = read_text(path, "utf-8", delimiter=",").lstrip("\ufeff")
  try:
    header = [n.strip() for n in next(csv.reader(io.StringIO(text)))]
  except csv.Error as e:
    raise DataError(f"malformed CSV: {e}", path=path, line=1) from None
  extra = [n for n in header if n not in names]
  if extra:
    raise DataError(
      f"not an item feature of this model (the columns must be exactly "
      f"{names})",
      path=path,
      line=1,
      column=extra[0],
    )
  # Missing columns, duplicate columns, rows of the wrong width, quoting
  # errors and a file without rows are reported by the loader's reader.
  cells, lines = csv_source.read_csv(path, names)
  ids = cells[schema.item_id]
  first_line = {}
  for item_id, line in zip(ids, lines, strict=True):
    if not item_id:
      raise DataError(
        "empty id", path=path, line=int(line), column=schema.item_id
      )
    if item_id in first_line:
      raise DataError(
        f"id {item_id!r} is repeated (first on line {first_line[item_id]})",
        path=path,
        line=int(line),
        column=schema.item_id,
      )
    first_line[item_id] = int(line)
  raw = {}
  for feature in features:
    values = cells[feature.name]
    if feature.multi:
      # As the loader reads a bag: values stripped, empty values dropped.
      values = [
        export.MULTI_SEPARATOR.join(
          v.strip() for v in cell.split(csv_source.MULTI_SEPARATOR) if v.strip()
        )
        for cell in values
      ]
    raw[feature.name] = np.array(values, dtype=object)
  return NewItems(path=path, ids=list(ids), raw=raw, lines=lines, sha256=digest)


def merge(
  corpus_ids: Sequence[str],
  corpus_raw: Mapping[str, np.ndarray],
  new: NewItems,
) -> tuple[list[str], dict[str, np.ndarray], dict]:
  """The corpus plus new items: known ids replaced in place, others appended.

  Args:
    corpus_ids: Raw id of each corpus row.
    corpus_raw: feature name -> raw strings [N] of the corpus.
    new: What `read` returned.

  Returns:
    (ids, raw features, the manifest record of the update): the ids and
    features of the merged corpus, corpus rows first.
  """
  row_of = {key: row for row, key in enumerate(corpus_ids)}
  raw = {
    name: np.array(values, dtype=object) for name, values in corpus_raw.items()
  }
  replaced = [i for i, key in enumerate(new.ids) if key in row_of]
  appended = [i for i, key in enumerate(new.ids) if key not in row_of]
  for name in raw:
    values = new.raw[name]
    rows = [row_of[new.ids[i]] for i in replaced]
    raw[name][rows] = values[replaced]
    raw[name] = np.concatenate([raw[name], values[appended]])
  ids = [*corpus_ids, *(new.ids[i] for i in appended)]
  record = {
    "source": os.path.abspath(new.path),
    "sha256": new.sha256,
    "rows": len(new),
    "count": len(appended),
    "replaced": len(replaced),
    "corpus_items": len(corpus_ids),
  }
  return ids, raw, record


def items_jsonl(
  ids: Sequence[str], raw: Mapping[str, np.ndarray], names: Sequence[str]
) -> str:
  """One JSON line {"id", "features"} per item (what `retrieve` shows)."""
  lines = [
    json.dumps({"id": key, "features": {n: str(raw[n][row]) for n in names}})
    for row, key in enumerate(ids)
  ]
  return "\n".join(lines) + "\n"


def write_with_items(index_dir: str, items_text: str, save) -> dict:
  """Writes an index and its items.jsonl into `index_dir` in one rename.

  Args:
    index_dir: The index directory (replaced atomically).
    items_text: The contents of items.jsonl.
    save: Called with a directory; writes the index there (e.g.
      `serving.save_retrieval_model`, which replaces that directory) and
      returns the manifest.

  Returns:
    What `save` returned.
  """
  with atomic.atomic_dir(index_dir) as tmp:
    manifest = save(tmp)
    atomic.write_text(os.path.join(tmp, ITEMS_FILE), items_text)
  return manifest
