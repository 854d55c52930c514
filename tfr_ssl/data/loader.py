"""load / prepare / build: from a DataConfig to a PreparedDataset.

The cache key of a dataset hashes everything its contents depend on: the
source (the synthetic parameters, or the names, sizes and contents of the
raw files), the config fields that shape it (split, fractions, seed, and
min_rating for MovieLens), the storage format version and the source code of
the preparation modules. Any change therefore gets a new version directory
next to the old ones instead of loading stale data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time

from tfr_ssl.config import DataConfig
from tfr_ssl.data import cache, csv_source, heldout, movielens, synthetic
from tfr_ssl.data.assemble import build_prepared
from tfr_ssl.data.contract import PreparedDataset
from tfr_ssl.data.raw import RawData

log = logging.getLogger(__name__)

# Modules whose code decides the prepared contents (pipeline.py does not).
_CODE = (
  "assemble.py",
  "cache.py",
  "contract.py",
  "csv_source.py",
  "encode.py",
  "files.py",
  "movielens.py",
  "raw.py",
  "schema_file.py",
  "splits.py",
  "stats.py",
  "synthetic.py",
)


def _code_hash() -> str:
  digest = hashlib.sha256()
  here = os.path.dirname(os.path.abspath(__file__))
  for name in _CODE:
    with open(os.path.join(here, name), "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()


def _name(config: DataConfig) -> str:
  if config.source == "synthetic":
    return "synthetic"
  base = os.path.basename(os.path.normpath(config.data_dir)) or "data"
  return f"{config.source}-{re.sub(r'[^A-Za-z0-9_.-]', '_', base)}"


def source_files(config: DataConfig) -> list[str]:
  """The raw files a config reads (empty for the synthetic source)."""
  if config.source == "movielens":
    return movielens.files(config.data_dir)
  if config.source == "csv":
    return csv_source.files(config.data_dir)
  if config.source == "synthetic":
    return []
  raise ValueError(f"Unknown data source {config.source!r}.")


def _source(config: DataConfig) -> dict:
  """What the data is, whatever code prepares it: source, files, split."""
  from tfr_ssl.data.files import fingerprint

  key = {
    "source": config.source,
    "split": config.split,
    "validation_fraction": config.validation_fraction,
    "test_fraction": config.test_fraction,
    "train_fraction": config.train_fraction,
    "seed": config.seed,
  }
  if config.source == "synthetic":
    key["synthetic"] = dataclasses.asdict(config.synthetic)
  else:
    key["files"] = fingerprint(source_files(config))
  if config.source == "movielens":
    key["min_rating"] = config.min_rating
  return key


def _digest(key: dict) -> str:
  text = json.dumps(key, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_key(config: DataConfig) -> str:
  """A key of the raw data and how it is split, independent of the code.

  Two configs with the same key describe the same data: a run records it
  (dataset.json) to notice when the files behind it were edited, while a
  change of the preparation code alone (a new `version`) is not an edit.

  Raises:
    DataError: a raw file is missing.
  """
  return _digest(_source(config))


def version(config: DataConfig) -> str:
  """The version string `<dataset>/<key>` of the data a config describes.

  Raises:
    DataError: a raw file is missing.
  """
  key = {
    **_source(config),
    "format": cache.FORMAT_VERSION,
    "code": _code_hash(),
  }
  return f"{_name(config)}/{_digest(key)}"


def cache_path(config: DataConfig, version_string: str | None = None) -> str:
  """The version directory of a config in its cache_dir."""
  version_string = version_string or version(config)
  return os.path.join(os.path.expanduser(config.cache_dir), version_string)


def read_raw(config: DataConfig) -> RawData:
  """Reads the config's source into raw columns."""
  if config.source == "synthetic":
    return synthetic.generate(config.synthetic)
  if config.source == "movielens":
    return movielens.read(config.data_dir, config.min_rating)
  if config.source == "csv":
    return csv_source.read(config.data_dir)
  raise ValueError(f"Unknown data source {config.source!r}.")


def build(config: DataConfig) -> PreparedDataset:
  """Prepares the data in memory, without reading or writing the cache.

  Raises:
    DataError: bad input data.
  """
  return _held_out(
    build_prepared(read_raw(config), config, version(config)), config
  )


def is_cached(config: DataConfig) -> bool:
  """Whether a complete prepared version for `config` is in the cache."""
  return cache.read_metadata(cache_path(config)) is not None


def prepare(config: DataConfig, force: bool = False) -> PreparedDataset:
  """Prepares and caches the data of `config` (unless already cached).

  Args:
    config: The data config.
    force: Rebuild even when the version is cached.

  Returns:
    The prepared dataset.

  Raises:
    DataError: bad input data (nothing is written to the cache then).
  """
  start = time.perf_counter()
  version_string = version(config)
  path = cache_path(config, version_string)
  if not force and cache.read_metadata(path) is not None:
    try:
      prepared = _held_out(cache.load(path), config)
      log.info(
        "Loaded %s from the cache %s in %.2f s.",
        version_string,
        path,
        time.perf_counter() - start,
      )
      return prepared
    except Exception as e:  # A damaged version is rebuilt, not trusted.
      log.warning("Cached %s is unreadable (%s); rebuilding.", path, e)
  prepared = build_prepared(read_raw(config), config, version_string)
  built = time.perf_counter() - start
  cache.save(
    prepared,
    path,
    {
      "config": dataclasses.asdict(config),
      "files": [os.path.abspath(p) for p in source_files(config)],
      "prepare_seconds": round(built, 3),
    },
  )
  log.info(
    "Prepared %s in %.2f s (%.2f s with storage) into %s.",
    version_string,
    built,
    time.perf_counter() - start,
    path,
  )
  return _held_out(prepared, config)


def _held_out(prepared: PreparedDataset, config: DataConfig) -> PreparedDataset:
  """The cached data with `data.heldout_users` applied (`heldout.py`).

  Applied after the cache, not stored in it: the share chooses users of
  one prepared version, so changing it needs no new preparation.
  """
  return heldout.hold_out_users(prepared, config.heldout_users, config.seed)


def load_version(
  config: DataConfig, version_string: str
) -> PreparedDataset | None:
  """The cached version `version_string` in config's cache_dir, or None."""
  path = cache_path(config, version_string)
  if cache.read_metadata(path) is None:
    return None
  try:
    return _held_out(cache.load(path), config)
  except Exception as e:  # A damaged version is not trusted.
    log.warning("Cached %s is unreadable (%s).", path, e)
    return None


def load(config: DataConfig) -> PreparedDataset:
  """The prepared data of `config`: from the cache, else prepared now.

  Raises:
    DataError: bad input data.
  """
  return prepare(config, force=False)
