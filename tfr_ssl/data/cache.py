"""TFDS storage of prepared datasets, one directory per version.

Layout of one version (`<cache_dir>/<dataset>/<key>/`):

    metadata.json        schema (with its query-item column, if any),
                         item_to_item_source, vocabularies, version,
                         source and config it was built from (small, JSON)
    tfds/tfr_ssl_prepared/<FORMAT_VERSION>/
                         a TFDS dataset written by a GeneratorBasedBuilder

The arrays are stored as column chunks: the features are one sub-dict per
table (`items`, `queries`, `train`, `validation`, `test`, `stats`), and
example i of the single split holds chunk i (up to `CHUNK_VALUES` values) of
every column as a raw-bytes `tfds.features.Tensor` (empty once the column is
exhausted). One split means one decoder to trace when loading. One example
per interaction would cost a proto per row (about 50 s to write and 17k
rows/s to read 1M rows); chunks write and read at memory speed. Feature
columns are stored under positional names (`f0`, `f1`, ...) so any column
name a user's CSV has is safe.

The whole version directory is built in a temporary sibling and renamed into
place (`tfr_ssl.atomic.atomic_dir`), so a crash or a bad input never leaves a
half-written version that a later run would load. Writers of one dataset take
turns (a `flock` on `<cache_dir>/<dataset>/.lock`), and the one holding the
lock removes the temporary siblings of writers that were killed. TFDS's own
temporary folders are made inside the version being built, not in /tmp.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import logging
import os
import re
import shutil
import tempfile

import numpy as np

from tfr_ssl import atomic
from tfr_ssl.data.contract import (
  SPLITS,
  Interactions,
  PreparedDataset,
  Schema,
)

# The TFDS version of the stored form; part of every cache key, so bumping it
# invalidates caches written by older code. 1.1.0: metadata records where
# prev_item_index comes from (`item_to_item_source`, `schema.query_item`).
# 1.2.0: metadata no longer holds a plug-in MI matrix (CFM's dependence is
# computed from the item table, `stats.feature_dependence`).
FORMAT_VERSION = "1.2.0"
BUILDER_NAME = "tfr_ssl_prepared"
CHUNK_VALUES = 1 << 16
METADATA = "metadata.json"
SPLIT = "chunks"


class _QuietTfds(logging.Filter):
  """Drops TFDS's INFO chatter and a deprecation notice of its own decoder.

  The loader logs one summary line per prepare or load instead.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    if "FeatureConnector.dtype` is deprecated" in record.getMessage():
      return False
    from_tfds = "tensorflow_datasets" in (record.pathname or "")
    return not (from_tfds and record.levelno <= logging.INFO)


logging.getLogger("absl").addFilter(_QuietTfds())


def _tables(prepared: PreparedDataset) -> dict[str, dict[str, np.ndarray]]:
  """Split name -> column name -> array, as stored."""
  schema = prepared.schema
  tables = {
    "items": {
      f"f{i}": prepared.items[f.name]
      for i, f in enumerate(schema.item_features)
    },
    "queries": {
      f"f{i}": prepared.queries[f.name]
      for i, f in enumerate(schema.query_features)
    },
    "stats": {
      "item_train_count": prepared.item_train_count,
      "csr_indptr": prepared.train_items_by_query[0],
      "csr_indices": prepared.train_items_by_query[1],
    },
  }
  for name in SPLITS:
    split = prepared.splits[name]
    timestamp = split.timestamp
    tables[name] = {
      "query_index": split.query_index,
      "item_index": split.item_index,
      "weight": split.weight,
      "timestamp": np.zeros(0, np.int64) if timestamp is None else timestamp,
      "prev_item_index": split.prev_item_index,
    }
  return {
    split: {k: np.ascontiguousarray(v) for k, v in columns.items()}
    for split, columns in tables.items()
  }


def _chunks(array: np.ndarray) -> tuple[int, int]:
  """(number of chunks, rows per chunk) of one column."""
  rows = max(1, CHUNK_VALUES // max(1, int(np.prod(array.shape[1:]))))
  return -(-array.shape[0] // rows), rows


def _examples(tables: dict):
  """(key, example) pairs: example i holds chunk i of every column (empty
  once a column is done)."""
  layout = {
    (table, name): _chunks(array)
    for table, columns in tables.items()
    for name, array in columns.items()
  }
  count = max([1] + [chunks for chunks, _ in layout.values()])
  for chunk in range(count):
    example = {"chunk": chunk}
    for table, columns in tables.items():
      example[table] = {}
      for name, array in columns.items():
        rows = layout[table, name][1]
        example[table][name] = array[chunk * rows : (chunk + 1) * rows]
    yield chunk, example


def _features(tables: dict):
  """The TFDS features: one raw-bytes tensor per column, one dict per table."""
  import tensorflow_datasets as tfds

  return tfds.features.FeaturesDict(
    {
      "chunk": tfds.features.Scalar(np.int64),
      **{
        table: tfds.features.FeaturesDict(
          {
            name: tfds.features.Tensor(
              shape=(None, *array.shape[1:]),
              dtype=array.dtype,
              encoding=tfds.features.Encoding.BYTES,
            )
            for name, array in columns.items()
          }
        )
        for table, columns in tables.items()
      },
    }
  )


def _builder_class(tables: dict):
  """A GeneratorBasedBuilder whose single split is `_examples(tables)`."""
  import tensorflow_datasets as tfds

  features = _features(tables)

  class _Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    name = BUILDER_NAME
    VERSION = tfds.core.Version(FORMAT_VERSION)
    # No code directory (it would only hold download checksums, and looking
    # it up needs a package this environment does not have).
    code_path = None

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        description="A tfr_ssl prepared dataset, stored as column chunks.",
        features=features,
        disable_shuffling=True,
      )

    def _split_generators(self, dl_manager):
      del dl_manager
      return {SPLIT: _examples(tables)}

    def _generate_examples(self):
      raise NotImplementedError  # _split_generators yields the examples

  return _Builder


def _save_tfds(tables: dict, data_dir: str) -> None:
  """Writes `tables` as a TFDS dataset under `data_dir`."""
  import tensorflow_datasets as tfds

  builder = _builder_class(tables)
  downloads = os.path.join(os.path.dirname(data_dir), ".downloads")
  os.makedirs(downloads, exist_ok=True)
  tfds.display_progress_bar(False)
  # TFDS prints a banner to stdout; the caller logs its own summary. It also
  # makes a temporary folder (tempfile.mkdtemp) that it never removes: make
  # it inside the version being built.
  saved_tempdir = tempfile.tempdir
  tempfile.tempdir = downloads
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      builder(data_dir=data_dir).download_and_prepare(
        download_dir=downloads,
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
      )
  finally:
    tempfile.tempdir = saved_tempdir
  shutil.rmtree(downloads, ignore_errors=True)


_STALE = re.compile(r"^\..+\.(tmp|old)-")


@contextlib.contextmanager
def _writer_lock(directory: str):
  """Holds `directory/.lock` (waiting for another writer), then removes the
  temporary siblings killed writers left in `directory`."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, ".lock"), "a+") as handle:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      logging.info("Waiting for another process preparing in %s.", directory)
      fcntl.flock(handle, fcntl.LOCK_EX)
    for name in os.listdir(directory):
      if _STALE.match(name):
        stale = os.path.join(directory, name)
        logging.info("Removing %s, left by a killed preparation.", stale)
        if os.path.isdir(stale):
          shutil.rmtree(stale, ignore_errors=True)
        else:
          with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    yield


def save(prepared: PreparedDataset, path: str, metadata: dict) -> None:
  """Stores `prepared` as the version directory `path`, atomically.

  Args:
    prepared: The dataset.
    path: The version directory; replaced only once complete.
    metadata: Extra JSON-ready facts (source, config) kept in metadata.json.
  """
  with (
    _writer_lock(os.path.dirname(os.path.abspath(path))),
    atomic.atomic_dir(path) as tmp,
  ):
    _save_tfds(_tables(prepared), os.path.join(tmp, "tfds"))
    atomic.write_json(
      os.path.join(tmp, METADATA),
      {
        **metadata,
        "format_version": FORMAT_VERSION,
        "version": prepared.version,
        "schema": prepared.schema.to_dict(),
        "item_to_item_source": prepared.item_to_item_source,
        "vocabularies": prepared.vocabularies,
        "has_timestamps": prepared.splits["train"].timestamp is not None,
      },
    )


def _read_tables(builder) -> dict[str, dict[str, np.ndarray]]:
  import tensorflow_datasets as tfds

  examples = sorted(
    tfds.as_numpy(builder.as_dataset(split=SPLIT, shuffle_files=False)),
    key=lambda e: int(e["chunk"]),
  )
  return {
    table: {
      name: np.concatenate([e[table][name] for e in examples])
      for name in examples[0][table]
    }
    for table in examples[0]
    if table != "chunk"
  }


def load(path: str) -> PreparedDataset:
  """Reads the version directory `path` written by `save`.

  Raises:
    FileNotFoundError: there is no complete version at `path`.
    ValueError: the metadata does not say where `prev_item_index` comes
      from consistently (a version of another format).
  """
  import tensorflow_datasets as tfds

  with open(os.path.join(path, METADATA)) as f:
    metadata = json.load(f)
  builder = tfds.builder_from_directory(
    os.path.join(path, "tfds", BUILDER_NAME, metadata["format_version"])
  )
  tables = _read_tables(builder)
  schema = Schema.from_dict(metadata["schema"])
  if metadata.get("item_to_item_source") != schema.item_to_item_source:
    raise ValueError(
      f"{path}: metadata item_to_item_source "
      f"{metadata.get('item_to_item_source')!r} does not match the schema "
      f"({schema.item_to_item_source!r}); written by other code."
    )
  stats = tables["stats"]
  splits = {}
  for name in SPLITS:
    columns = tables[name]
    splits[name] = Interactions(
      query_index=columns["query_index"],
      item_index=columns["item_index"],
      weight=columns["weight"],
      timestamp=columns["timestamp"] if metadata["has_timestamps"] else None,
      prev_item_index=columns["prev_item_index"],
    )
  return PreparedDataset(
    schema=schema,
    vocabularies=metadata["vocabularies"],
    items={
      f.name: tables["items"][f"f{i}"]
      for i, f in enumerate(schema.item_features)
    },
    queries={
      f.name: tables["queries"][f"f{i}"]
      for i, f in enumerate(schema.query_features)
    },
    splits=splits,
    item_train_count=stats["item_train_count"],
    train_items_by_query=(stats["csr_indptr"], stats["csr_indices"]),
    version=metadata["version"],
  )


def read_metadata(path: str) -> dict | None:
  """metadata.json of a version directory, or None when there is none."""
  try:
    with open(os.path.join(path, METADATA)) as f:
      return json.load(f)
  except (FileNotFoundError, json.JSONDecodeError):
    return None
