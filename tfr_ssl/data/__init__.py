"""Datasets: sources, preparation (TFDS-cached), statistics and tf.data streams.

Public API:
  load(config) -> PreparedDataset       prepared data, from the cache if there
  prepare(config, force=False)          prepare and cache (force: rebuild)
  build(config)                         prepare in memory, no cache
  describe(prepared) -> dict            counts, popularity skew, cold items,
                                        feature dependence
  main_dataset / item_dataset / corpus_dataset / train_dataset   tf.data
  DataError                             bad input, naming file/line/column

The dataset contract (Schema, Feature, Interactions, PreparedDataset, PAD,
OOV) is in `tfr_ssl.data.contract` and re-exported here.
"""

from tfr_ssl.data.contract import (
  CATEGORICAL,
  ITEM,
  MULTI_CATEGORICAL,
  OOV,
  PAD,
  QUERY,
  SPLITS,
  Feature,
  Interactions,
  PreparedDataset,
  Schema,
)
from tfr_ssl.data.errors import DataError
from tfr_ssl.data.loader import (
  build,
  cache_path,
  is_cached,
  load,
  load_version,
  prepare,
  source_key,
  version,
)
from tfr_ssl.data.pipeline import (
  corpus_dataset,
  item_dataset,
  main_dataset,
  train_dataset,
)
from tfr_ssl.data.stats import describe

__all__ = [
  "CATEGORICAL",
  "ITEM",
  "MULTI_CATEGORICAL",
  "OOV",
  "PAD",
  "QUERY",
  "SPLITS",
  "DataError",
  "Feature",
  "Interactions",
  "PreparedDataset",
  "Schema",
  "build",
  "cache_path",
  "corpus_dataset",
  "describe",
  "is_cached",
  "item_dataset",
  "load",
  "load_version",
  "main_dataset",
  "prepare",
  "source_key",
  "train_dataset",
  "version",
]
